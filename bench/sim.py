"""Simulator benchmarks: engine throughput and the real costs the CPU model uses.

Run: ``python bench/sim.py`` (add ``--quick`` for a fast pass). Prints:

* raw engine events/s (a trivial self-rescheduling callback: heap + dispatch only);
* full-stack events/s for a trivial workload (ping-pong through network, CPU queue,
  timers and the process adapter, no crypto), with and without trace hashing;
* measured costs: PyNaCl Ed25519 sign and verify, canonical msgpack encode/decode fixed
  cost and per-byte slope, sqlite WAL append (``synchronous=NORMAL``);
* wall time of the self-test echo workload at 100 nodes for 60 virtual seconds.

Timing is wall-clock and machine-dependent; nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sim import calibrate  # noqa: E402
from sim.cpu import CostModel  # noqa: E402
from sim.engine import Engine  # noqa: E402
from sim.network import Constant, NetworkConfig  # noqa: E402
from sim.process import BaseProcess  # noqa: E402
from sim.scenario import RunSpec, Timeline  # noqa: E402
from sim.workloads.echo import EchoWorkload  # noqa: E402
from sim.world import World  # noqa: E402


def raw_engine(events: int) -> float:
    """Events per second of the bare engine loop."""
    eng = Engine(1)
    left = [events]

    def tick() -> None:
        left[0] -= 1
        if left[0] > 0:
            eng.schedule(0.001, tick)

    for _ in range(100):  # a heap of ~100 live events, like a busy simulation
        eng.schedule(0.0, tick)
    t0 = time.perf_counter()
    n = eng.run()
    return n / (time.perf_counter() - t0)


class _PingPong(BaseProcess):
    def on_start(self, ctx):
        if ctx.node_id % 2 == 0:
            ctx.send(ctx.node_id + 1, b"ping")

    def on_message(self, ctx, sender, payload):
        ctx.send(sender, payload)


def full_stack(virtual_s: float, trace: bool) -> tuple[float, int]:
    """(events per second, events) for 50 ping-pong pairs through the whole stack."""
    eng = Engine(1, trace=trace)
    world = World(eng, 100, network=NetworkConfig(latency=Constant(0.001), jitter_s=0.0005),
                  costs=CostModel())
    for i in range(100):
        world.attach(i, _PingPong())
    world.start()
    t0 = time.perf_counter()
    n = world.run(virtual_s)
    return n / (time.perf_counter() - t0), n


def sqlite_append(count: int) -> float:
    """Seconds per appended record (WAL, synchronous=NORMAL, one commit per record)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "x.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE r (kind TEXT, seq INTEGER, data BLOB)")
        blob = bytes(300)
        t0 = time.perf_counter()
        for i in range(count):
            db.execute("INSERT INTO r VALUES (?, ?, ?)", ("msg", i, blob))
        dt = time.perf_counter() - t0
        db.close()
    return dt / count


def echo_wall(nodes: int, virtual_s: float) -> tuple[float, int]:
    """(wall seconds, events) of the echo self-test at ``nodes`` nodes."""
    from sim import runner

    spec = RunSpec(nodes=nodes, byzantine=frozenset(), seed=1, duration_s=virtual_s,
                   workload="selftest-echo", network=NetworkConfig(), costs=CostModel(),
                   timeline=Timeline())
    t0 = time.perf_counter()
    result = runner.run(spec, EchoWorkload())
    return time.perf_counter() - t0, result.events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    scale = 10 if quick else 1
    print(f"raw engine:               {raw_engine(1_000_000 // scale):>12,.0f} events/s")
    for trace in (False, True):
        rate, n = full_stack(20.0 / scale, trace)
        label = "full stack, trace on: " if trace else "full stack, trace off:"
        print(f"{label}   {rate:>12,.0f} events/s ({n:,} events)")
    for name, value in calibrate.measure(quick).items():
        unit = "ns" if name.endswith("byte_s") else "us"
        shown = value * (1e9 if unit == "ns" else 1e6)
        print(f"{name:<26}{shown:>12.3f} {unit}")
    print(f"{'sqlite_wal_append_s':<26}{sqlite_append(5000 // scale) * 1e6:>12.3f} us")
    wall, events = echo_wall(100, 60.0 / scale)
    print(f"echo self-test 100 nodes, {60 / scale:g}s virtual: {wall:.2f}s wall, "
          f"{events:,} events")


if __name__ == "__main__":
    main()
