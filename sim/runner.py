"""Run one :class:`~sim.scenario.RunSpec` with a workload and build its report.

This is the glue the CLI and the tests share: build the engine, the world and its
network, apply the timeline (partitions, cuts, crashes), let the workload attach its
processes, wrap generic adversaries, run to ``duration_s`` and collect the results.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from sim import adversary
from sim.engine import Engine
from sim.invariants import Violation
from sim.report import LatencyRecorder, Target, exit_code
from sim.scenario import RunSpec
from sim.workloads import Workload, WorkloadResults
from sim.world import World

__all__ = ["REPORT_LATENCIES", "RunResult", "report_dict", "run"]

#: Latency fields every JSON report has (count 0 when the workload does not measure it).
REPORT_LATENCIES = ("commit_latency_s", "discovery_latency_s", "identity_verify_latency_s")


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`run`. ``wall_s`` is the only non-deterministic field."""

    spec: RunSpec
    world: World
    results: WorkloadResults
    violations: list[Violation]
    events: int
    wall_s: float
    trace_digest: str | None

    @property
    def targets(self) -> list[Target]:
        return self.results.targets

    @property
    def exit_code(self) -> int:
        return exit_code(self.targets, self.violations)


def build_world(spec: RunSpec, workload: Workload, *, trace: bool = False) -> World:
    """Engine + world + timeline + workload processes + generic adversaries, ready to run.

    Raises ``ValueError`` for adversary names neither the workload nor
    :mod:`sim.adversary` knows, or bad adversary parameters."""
    known = set(workload.adversaries) | adversary.GENERIC
    for adv in spec.timeline.adversaries:
        if adv.strategy not in known:
            raise ValueError(
                f"unknown adversary strategy {adv.strategy!r} "
                f"(this workload knows: {', '.join(sorted(known))})"
            )
    engine = Engine(spec.seed, trace=trace)
    world = World(engine, spec.nodes, network=spec.network, costs=spec.costs,
                  honest=spec.honest)
    for item in spec.timeline.partitions:
        world.network.schedule(item)
    for crash in spec.timeline.crashes:
        for node in sorted(crash.nodes):
            world.schedule_crash(node, crash.at_s, crash.restart_s)
    workload.setup(world, spec)
    adversary.wrap(world, spec.byzantine, spec.timeline.adversaries)
    return world


def run(
    spec: RunSpec, workload: Workload, *, trace: bool = False,
    on_progress: Callable[[float], None] | None = None,
    decisions: list[tuple[float, int, int]] | None = None,
) -> RunResult:
    """Simulate ``spec`` for ``spec.duration_s`` virtual seconds. With ``decisions`` a
    list, every honest decision is appended as ``(time_s, node, seq)`` (for plots).
    Exceptions from the protocol code propagate (a crash of the simulated code is a
    bug, not a result)."""
    wall0 = time.perf_counter()
    world = build_world(spec, workload, trace=trace)
    if decisions is not None:
        honest = spec.honest

        def keep(node: int, time_s: float, seq: int, *rest: Any) -> None:
            if node in honest:
                decisions.append((time_s, node, seq))

        world.subscribe("decided", keep)
    world.start()
    events = world.run(spec.duration_s, on_progress=on_progress)
    if on_progress is not None:
        on_progress(world.engine.now)
    results = workload.results()
    digest = world.engine.trace_digest() if trace else None
    return RunResult(spec, world, results, list(world.invariants.violations), events,
                     time.perf_counter() - wall0, digest)


def _summary(recorder: LatencyRecorder | None) -> dict[str, Any]:
    if recorder is None:
        return {"p50": None, "p95": None, "p99": None, "max": None, "count": 0,
                "unfinished": 0}
    return recorder.summary()


def report_dict(result: RunResult) -> dict[str, Any]:
    """The JSON report: everything but ``wall_s`` is identical for the same spec."""
    world, res = result.world, result.results
    first = next((v for v in result.violations if v.safety), None)
    report: dict[str, Any] = {
        "config": result.spec.describe(),
        "safety_violations": sum(1 for v in result.violations if v.safety),
        "first_safety_violation": dataclasses.asdict(first) if first else None,
        "liveness_violations": [v.one_line() for v in result.violations if not v.safety],
        "decisions": res.decisions,
        "targets": [t.as_dict() for t in res.targets],
        "exit_code": result.exit_code,
        "events": result.events,
        "virtual_s": world.engine.now,
        "network": dataclasses.asdict(world.network.stats),
        "cpu_busy_max_s": max(h.cpu.busy_total for h in world.hosts),
        "workload_extra": res.extra,
        "wall_s": result.wall_s,
    }
    for name in REPORT_LATENCIES:
        report[name] = _summary(res.latencies.get(name))
    report["other_latencies_s"] = {
        k: v.summary() for k, v in sorted(res.latencies.items()) if k not in REPORT_LATENCIES
    }
    return report
