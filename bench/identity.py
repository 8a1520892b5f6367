"""Identity benchmark: HSM sign latency and keygen, record verification, registry ingest.

    python bench/identity.py [--json] [--signs 2000] [--keys 10] [--sizes 10000,100000]

Figures (printed as a table, or one JSON object with --json):
* ``hsm_sign_ms`` p50/p99: one Ed25519 signature (64-byte message) through SoftHSM via
  python-pkcs11, the node's real signing path (embedded token in a temporary directory).
* ``hsm_keygen_ms`` p50/max: one persistent Ed25519 key pair generated inside the token.
* ``record_verify_ms`` p50/p99: ``Registry.verify_record`` of one encoded identity record
  (decode + key-state lookup + Ed25519 verify) against a registry of the largest size.
* ``ingest_per_s`` for each size: identities per second through ``Registry.ingest_batch``
  (each identity = inception event + identity record, both bytes, signatures verified),
  sequential and with a 2-thread pool (libsodium releases the GIL).

Targets (issue 2): record verify p99 <= 2 ms; ingest >= 10,000 identities/s.
Identities are made with in-process PyNaCl keys from fixed seeds (test data only: a node
never holds keys in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# This file is named like the package it measures: keep bench/ off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from identity import records  # noqa: E402
from identity.registry import Registry  # noqa: E402
from identity.soft import SoftSigner  # noqa: E402

NOW = 1_800_000_000  # fixed Unix time (seconds) so runs are comparable


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def bench_hsm(signs: int, keys: int) -> dict:
    from identity.pkcs11 import Token
    from identity.softhsm import provision_embedded

    with tempfile.TemporaryDirectory(prefix="meshnode-bench-") as tmp:
        cfg = provision_embedded(Path(tmp))
        with Token.open(cfg) as token:
            keygen = []
            for i in range(keys):
                t0 = time.perf_counter()
                signer = token.generate_keypair(f"bench-{i}")
                keygen.append((time.perf_counter() - t0) * 1e3)
            msg = bytes(64)
            for _ in range(50):  # warm-up
                signer.sign(msg)
            lat = []
            for i in range(signs):
                m = i.to_bytes(8, "big") + msg[8:]
                t0 = time.perf_counter()
                signer.sign(m)
                lat.append((time.perf_counter() - t0) * 1e3)
    return {
        "hsm_sign_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": signs},
        "hsm_keygen_ms": {"p50": percentile(keygen, 50), "max": max(keygen), "n": keys},
    }


def make_identities(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``n`` (inception bytes, record bytes) pairs from deterministic in-memory keys."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        current, nxt = SoftSigner(rng.randbytes(32)), SoftSigner(rng.randbytes(32))
        icp = records.incept(current, nxt.public_key, issued_at=NOW)
        rec = records.issue_record(
            current, icp.identifier, version=1, listen_addrs=["/ip4/127.0.0.1/tcp/4001"],
            issued_at=NOW, expires_at=NOW + 86_400,
        )
        out.append((icp.to_bytes(), rec.to_bytes()))
    return out


def bench_ingest(identities: list[tuple[bytes, bytes]], threads: int) -> tuple[float, Registry]:
    items = [b for pair in identities for b in pair]
    registry = Registry()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    t0 = time.perf_counter()
    results = registry.ingest_batch(items, now=NOW, parallel_map=pool.map if pool else map)
    elapsed = time.perf_counter() - t0
    if pool:
        pool.shutdown()
    failed = [r for r in results if r is not None]
    if failed or len(registry) != len(identities):
        raise SystemExit(f"ingest refused {len(failed)} items: {failed[:3]}")
    return len(identities) / elapsed, registry


def bench_verify(registry: Registry, identities: list[tuple[bytes, bytes]], n: int) -> dict:
    sample = identities[:: max(1, len(identities) // n)][:n]
    lat = []
    for _, rec in sample:
        t0 = time.perf_counter()
        registry.verify_record(rec, now=NOW)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--signs", type=int, default=2000, help="HSM signatures to time")
    ap.add_argument("--keys", type=int, default=10, help="HSM key pairs to generate")
    ap.add_argument("--sizes", default="10000,100000", help="registry sizes, comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    out: dict = {"python": sys.version.split()[0]}
    out.update(bench_hsm(args.signs, args.keys))
    identities = make_identities(max(sizes), args.seed)
    out["ingest_per_s"] = {}
    registry = None
    for size in sizes:
        seq, _ = bench_ingest(identities[:size], 1)
        par, registry = bench_ingest(identities[:size], 2)
        out["ingest_per_s"][str(size)] = {"sequential": round(seq), "threads_2": round(par)}
    out["record_verify_ms"] = bench_verify(registry, identities, 10_000)
    out["targets"] = {
        "record_verify_p99_ms<=2": out["record_verify_ms"]["p99"] <= 2.0,
        "ingest_per_s>=10000": all(
            v["threads_2"] >= 10_000 for v in out["ingest_per_s"].values()
        ),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_table(out)
    return 0


def _print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="identity benchmark")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("HSM sign p50 / p99", "{p50:.3f} / {p99:.3f} ms".format(**out["hsm_sign_ms"]))
    t.add_row("HSM keygen p50 / max", "{p50:.1f} / {max:.1f} ms".format(**out["hsm_keygen_ms"]))
    t.add_row("record verify p50 / p99",
              "{p50:.3f} / {p99:.3f} ms".format(**out["record_verify_ms"]))
    for size, v in out["ingest_per_s"].items():
        t.add_row(f"ingest {int(size):,} identities",
                  f"{v['sequential']:,}/s (1 thread), {v['threads_2']:,}/s (2 threads)")
    for name, ok in out["targets"].items():
        t.add_row(f"target {name}", "met" if ok else "MISSED")
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
