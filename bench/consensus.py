"""PBFT core benchmark: decisions/s, operations/s, CPU ms and messages per decision.

Runs ``n`` replicas of :class:`consensus.replica.Replica` in one process with real Ed25519
signatures (:class:`identity.soft.SoftSigner`) and a lossless, zero-latency in-memory
network (no network model: this measures the protocol core). Requests are submitted at
the primary, which broadcasts them (part of the protocol cost). Verification is memoised
across replicas by default, as the simulator does (``--no-verify-cache``: every replica
verifies every signature itself, which is what each real node pays).

    python bench/consensus.py [--json] [--sizes 4,16,64,100] [--no-verify-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

# run as a script, this file would shadow the ``consensus`` package it measures
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from consensus.replica import Config, Replica  # noqa: E402
from identity.signer import verify_signature  # noqa: E402
from identity.soft import SoftSigner  # noqa: E402


class Cluster:
    def __init__(self, n: int, cfg: Config, cache: bool) -> None:
        self.ids = [f"r{i:03d}" for i in range(n)]
        self.signers = {i: SoftSigner(hashlib.sha256(i.encode()).digest()) for i in self.ids}
        members = {i: s.public_key for i, s in self.signers.items()}
        self.memo: dict[tuple[bytes, bytes, bytes], bool] = {}
        verify = self._cached if cache else verify_signature
        self.replicas = {i: Replica(i, members, config=cfg, verify=verify) for i in self.ids}
        self.queue: deque[tuple[str, str, Any]] = deque()
        self.messages = 0
        self.signatures = 0
        self.decided = 0

    def _cached(self, pk: bytes, data: bytes, sig: bytes) -> bool:
        key = (pk, sig, data)
        ok = self.memo.get(key)
        if ok is None:
            ok = self.memo[key] = verify_signature(pk, data, sig)
        return ok

    def pump(self, i: str) -> None:
        r = self.replicas[i]
        while r.has_ready():
            rd = r.ready()
            for sr in rd.sign_requests:  # the sign-request round trip, as a node does it
                r.signed(sr.id, self.signers[i].sign(sr.data))
                self.signatures += 1
            for out in rd.messages:
                for dst in out.to:
                    self.queue.append((i, dst, out.msg))
            if i == self.ids[-1]:
                self.decided += len(rd.committed)
            r.advance(rd)

    def settle(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            self.messages += 1
            self.replicas[dst].step(msg, sender=src)
            self.pump(dst)

    def tick(self) -> None:
        for i in self.ids:
            self.replicas[i].tick()
            self.pump(i)
        self.settle()


def run(n: int, batch: int, decisions: int, cache: bool) -> dict[str, Any]:
    cfg = Config(batch_size=batch, batch_timeout=1, max_inflight=4, window=128,
                 checkpoint_interval=32)
    c = Cluster(n, cfg, cache)
    primary = c.replicas[c.ids[0]].primary(0)
    ops = decisions * batch
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(ops):
        c.replicas[primary].propose(b"op-%d" % k)
        c.pump(primary)
        if (k + 1) % batch == 0:
            c.settle()
    while c.decided < decisions:
        c.tick()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "n": n, "batch_size": batch, "decisions": c.decided, "operations": ops,
        "decisions_per_s": round(c.decided / wall, 2), "operations_per_s": round(ops / wall, 1),
        "cpu_ms_per_decision": round(1000 * cpu / c.decided, 2),
        "messages_per_decision": round(c.messages / c.decided, 1),
        "signatures_per_decision": round(c.signatures / c.decided, 1),
        "verify_cache": cache,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="emit JSON lines")
    ap.add_argument("--sizes", default="4,16,64,100")
    ap.add_argument("--no-verify-cache", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        decisions = 20 if n <= 16 else 4
        for batch in (1, 64):
            rows.append(run(n, batch, decisions, not args.no_verify_cache))
            row = rows[-1]
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"n={row['n']:>3} batch={row['batch_size']:>2}: "
                      f"{row['decisions_per_s']:>8} decisions/s "
                      f"{row['operations_per_s']:>9} ops/s "
                      f"{row['cpu_ms_per_decision']:>8} CPU ms/decision "
                      f"{row['messages_per_decision']:>8} msgs/decision", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
