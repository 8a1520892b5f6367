"""Cluster benchmark: a real N-node loopback testnet (processes, libp2p, SoftHSM, sqlite).

    python bench/cluster.py [--nodes 4,7] [--ops 200] [--clients 16] [--json]

For each size: ``meshnode testnet`` homes, one ``meshnode start`` process per node,
then
* ``commit_latency_ms`` p50/p99: ``--ops`` operations proposed one after another (each
  waits for its decision) through the control socket of one node, measured at the
  client: propose -> executed at that node, commit certificate written;
* ``ops_per_s``: ``--ops`` operations from ``--clients`` concurrent clients spread over
  all nodes, divided by the wall time until the last one is decided.

Goal (issue 4): p50 <= 10 ms for 4 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from node.control import call  # noqa: E402
from node.testnet import create  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered), max(1, round(q / 100 * len(ordered)))) - 1]


def run_cluster(n: int, ops: int, clients: int, workdir: Path) -> dict:
    root = create(workdir / f"tn{n}", n, base_port=0)
    procs = []
    try:
        for k in range(1, n + 1):
            p = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "--log-level", "warning", "start",
                 "--home", str(root / f"node{k}")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            if not any(line.startswith("listen") for line in p.stdout):
                raise SystemExit(f"node{k} failed to start")
        socks = [root / f"node{k}" / "control.sock" for k in range(1, n + 1)]
        for s in socks:
            call(s, "wait", {"peers": n - 1, "timeout_ms": 60_000}, timeout_s=90)
        for i in range(10):  # warm-up: connections, streams, first view
            call(socks[0], "propose", {"op": b"warm-%d" % i})
        lat = []
        for i in range(ops):
            t0 = time.perf_counter()
            call(socks[0], "propose", {"op": b"seq-%d" % i})
            lat.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: call(socks[i % n], "propose", {"op": b"par-%d" % i},
                                         timeout_s=120), range(ops)))
        elapsed = time.perf_counter() - t0
        return {"nodes": n, "commit_latency_ms": {"p50": round(percentile(lat, 50), 2),
                                                  "p99": round(percentile(lat, 99), 2),
                                                  "n": len(lat)},
                "ops_per_s": round(ops / elapsed, 1), "clients": clients}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="4,7", help="cluster sizes, comma-separated")
    ap.add_argument("--ops", type=int, default=200, help="operations per measurement")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="meshnode-cluster-") as tmp:
        for n in [int(x) for x in args.nodes.split(",") if x]:
            results.append(run_cluster(n, args.ops, args.clients, Path(tmp)))
    if args.json:
        print(json.dumps({"clusters": results}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="loopback cluster benchmark")
    for col in ("nodes", "commit p50", "commit p99", "ops/s", "goal p50 <= 10 ms (4 nodes)"):
        t.add_column(col, justify="right")
    for r in results:
        lat = r["commit_latency_ms"]
        goal = ("met" if lat["p50"] <= 10 else "MISSED") if r["nodes"] == 4 else "-"
        t.add_row(str(r["nodes"]), f"{lat['p50']:.1f} ms", f"{lat['p99']:.1f} ms",
                  f"{r['ops_per_s']:.0f} ({r['clients']} clients)", goal)
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
