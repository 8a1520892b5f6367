"""Task engine benchmarks: local throughput, mesh core cost, mesh latency (to be wired).

* **local throughput**: ``--tasks`` no-op tasks through a real :class:`TaskEngine` on a
  sqlite file (WAL, ``synchronous=FULL`` unless ``--synchronous normal``) with
  ``--concurrency`` 16, submitted by ``--submitters`` concurrent callers. Every task
  costs three durable state changes (queued, running, succeeded), grouped into shared
  transactions by the engine's writer. Reports the durable-accept rate (submits/s) and
  end-to-end tasks/s (first submit to last success).
* **mesh core**: committed operations/s through the pure :class:`MeshTasks` core
  (submit + signed result per task, with signature verification), for ``--members``.
* **mesh latency on a 4-node loopback testnet**: :func:`mesh_latency_4node_loopback`,
  finished by the lead once the mesh service is wired into the node.

Usage: ``python bench/tasks.py [--tasks 5000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds files named like the packages (identity.py, consensus.py): keep it off
# the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import trio  # noqa: E402

from identity.soft import SoftSigner  # noqa: E402
from node.tasks.api import HandlerRegistry  # noqa: E402
from node.tasks.engine import TaskEngine  # noqa: E402
from node.tasks.mesh import MeshTasks  # noqa: E402
from node.tasks.meshops import result_op, result_signing_bytes, sign_submit  # noqa: E402
from node.tasks.store import TaskStore  # noqa: E402


async def _noop(ctx) -> bytes:
    return b""


def local_throughput(tasks: int, concurrency: int, submitters: int, synchronous: str,
                     directory: Path) -> dict:
    """Run ``tasks`` no-op tasks; returns rates in tasks per second."""
    db = directory / f"bench-{os.getpid()}-{time.monotonic_ns()}.db"
    store = TaskStore(db, synchronous=synchronous)
    reg = HandlerRegistry()
    reg.register("noop", _noop)
    engine = TaskEngine(store, reg, concurrency=concurrency)
    ids: list[str] = []
    out: dict = {}

    async def submitter(n: int) -> None:
        for _ in range(n):
            ids.append(await engine.submit("noop", b"", deadline_s=600))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            t0 = time.perf_counter()
            async with trio.open_nursery() as subs:
                per, extra = divmod(tasks, submitters)
                for i in range(submitters):
                    subs.start_soon(submitter, per + (i < extra))
            t1 = time.perf_counter()
            for tid in ids:
                await engine.wait(tid)
            t2 = time.perf_counter()
            out.update(submit_per_s=tasks / (t1 - t0), tasks_per_s=tasks / (t2 - t0),
                       seconds=t2 - t0)
            nursery.cancel_scope.cancel()

    trio.run(main)
    counts = store.counts()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert counts["succeeded"] == tasks, counts
    return {"tasks": tasks, "concurrency": concurrency, "submitters": submitters,
            "synchronous": synchronous, **{k: round(v, 3) for k, v in out.items()}}


def mesh_core(tasks: int, members: int) -> dict:
    """Submit + one signed result per task through the pure core (ops/s)."""
    from consensus.quorum import Membership

    signers = {f"m{i:03d}": SoftSigner(bytes([i % 251 + 1]) * 32) for i in range(members)}
    m = Membership.of({k: s.public_key for k, s in signers.items()})
    core = MeshTasks()
    first = m.ids[0]
    submits = [sign_submit(signers[first], f"t{i}", "noop", by=first, at=0, deadline_ticks=10)
               for i in range(tasks)]
    t0 = time.perf_counter()
    seq = 0
    for op in submits:
        seq += 1
        core.apply_op(seq, op, m)
    t1 = time.perf_counter()
    results = []
    for i in range(tasks):
        st = core.status(f"t{i}")
        who = st["assignee"]
        sig = signers[who].sign(result_signing_bytes(f"t{i}", 1, who, True, False, b"", ""))
        results.append(result_op(f"t{i}", 1, who, sig))
    t2 = time.perf_counter()
    for op in results:
        seq += 1
        core.apply_op(seq, op, m)
    t3 = time.perf_counter()
    assert all(core.status(f"t{i}")["state"] == "done" for i in range(tasks))
    return {"tasks": tasks, "members": members,
            "submit_ops_per_s": round(tasks / (t1 - t0)),
            "result_ops_per_s": round(tasks / (t3 - t2)),
            "snapshot_bytes": len(core.snapshot())}


def mesh_latency_4node_loopback(tasks: int = 50) -> dict:
    """Mesh task latency on a real 4-node loopback testnet (processes, libp2p, SoftHSM):
    ``tasks`` built-in ``echo`` tasks submitted one after another on node 1 with
    ``mesh`` and ``wait`` (the ``task.submit`` control call), each timed from submit
    until its accepted result is committed (submit op, assignment, execution on the
    assigned node, signed result op: at least two consensus decisions). Returns p50/p99
    in milliseconds."""
    import signal
    import subprocess

    from node.control import call
    from node.testnet import create

    with tempfile.TemporaryDirectory(prefix="meshnode-tasks-") as tmp:
        root = create(Path(tmp) / "tn", 4, base_port=0)
        procs = []
        try:
            for k in range(1, 5):
                p = subprocess.Popen(
                    [sys.executable, "-m", "node.cli", "--log-level", "warning", "start",
                     "--home", str(root / f"node{k}")],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                procs.append(p)
                if not any(line.startswith("listen") for line in p.stdout):
                    raise SystemExit(f"node{k} failed to start")
            socks = [root / f"node{k}" / "control.sock" for k in range(1, 5)]
            for s in socks:
                call(s, "wait", {"peers": 3, "timeout_ms": 60_000}, timeout_s=90)
            lat = []
            for i in range(tasks + 3):  # the first three warm the path up
                t0 = time.perf_counter()
                st = call(socks[0], "task.submit", {"type": "echo", "input": b"%d" % i,
                                                    "mesh": True, "wait": True},
                          timeout_s=120)
                if st["state"] != "done":
                    raise SystemExit(f"mesh task {st['id']} ended {st['state']}")
                if i >= 3:
                    lat.append((time.perf_counter() - t0) * 1e3)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)
    lat.sort()
    pick = lambda q: lat[min(len(lat), max(1, round(q / 100 * len(lat)))) - 1]  # noqa: E731
    return {"tasks": len(lat), "p50_ms": round(pick(50), 1), "p99_ms": round(pick(99), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--submitters", type=int, default=64)
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full")
    ap.add_argument("--members", type=int, default=50, help="mesh core member count")
    ap.add_argument("--dir", type=Path, default=None, help="directory for the sqlite file")
    ap.add_argument("--mesh-tasks", type=int, default=50,
                    help="mesh tasks timed on a 4-node loopback testnet (0 skips it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        local = local_throughput(args.tasks, args.concurrency, args.submitters,
                                 args.synchronous, Path(d))
    core = mesh_core(min(args.tasks, 2000), args.members)
    mesh = mesh_latency_4node_loopback(args.mesh_tasks) if args.mesh_tasks else None
    report = {"local": local, "mesh_core": core, "mesh_latency_4node_loopback": mesh}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"local engine: {local['tasks_per_s']:.0f} tasks/s end to end "
          f"({local['submit_per_s']:.0f} durable submits/s), concurrency "
          f"{local['concurrency']}, {local['submitters']} submitters, "
          f"synchronous={local['synchronous']}")
    print(f"mesh core ({core['members']} members): {core['submit_ops_per_s']} submits/s, "
          f"{core['result_ops_per_s']} signed results/s (apply, incl. verification)")
    if mesh:
        print(f"mesh task latency, 4-node loopback testnet: p50 {mesh['p50_ms']} ms, "
              f"p99 {mesh['p99_ms']} ms ({mesh['tasks']} tasks, submit to accepted result)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
