"""The default ``sim run``: every target of the mesh in one command, phase by phase.

Theory of operation
-------------------
``sim run --nodes 100 --byzantine 0.33`` (no ``--workload``, no ``--scenario``) runs the
*suite*: one independent simulation per target family, each with the real cores and the
same seed, node count, Byzantine fraction, network flags and cost model:

=============  ===========  =========================================================
phase          workload     what it checks
=============  ===========  =========================================================
consensus      pbft         commit latency with the Byzantine nodes silent (the
                            default strategy), ``--duration`` long (default 60 s);
                            ``--partition``/``--crash``/``--adversary``/``--load``
                            apply here
partition      pbft         the mesh split 80/20 from 3 s to 9 s of a 20 s run:
                            the majority keeps committing and every honest node
                            converges after the heal. Byzantine nodes equivocate as
                            primaries and vote for their lies (a *silent* third
                            leaves no side of any partition a quorum, for any BFT
                            protocol; see sim/scenarios/partition-heal.toml)
discovery      discovery    Kademlia routing tables converge, lookups succeed (30 s)
identity       identity     10,000 identities enrolled and verified (25 s run) by 10
                            honest verifiers drawn from the seed: each verifier
                            handles all 10,000, so its queueing (the latency) is what
                            it would be if every node verified everything
tasks          tasks        ``min(nodes, 50)`` members, 200 mesh tasks submitted over
                            10 s: each has exactly one accepted result (26 s run)
=============  ===========  =========================================================

Phases share nothing, so they run in parallel worker processes (``--jobs``, default:
the machine's CPUs, at most one per phase); each is deterministic on its own, so the
report does not depend on how they were scheduled: everything but ``wall_s`` is the
same for the same arguments. The report merges the phases' targets into one table (each
row names its phase), sums safety violations, and takes the JSON latency fields from
the phase that measures them (``commit_latency_s`` from *consensus*, and so on); each
phase's own report is under ``phases``. The partition phase reports only its partition
targets: commit latency there includes operations submitted on the minority side,
which wait for the heal by design (the consensus phase measures commit latency).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import os
import queue as queue_mod
import time
from collections.abc import Callable
from typing import Any

from sim.invariants import Violation
from sim.report import LatencyRecorder, Target, exit_code
from sim.scenario import RunSpec

__all__ = ["PHASES", "PhaseResult", "phase_args", "run_suite", "suite_report"]

#: Phase names in report order.
PHASES = ("consensus", "partition", "discovery", "identity", "tasks")
#: Measured single-core seconds at 100 nodes (README), to start the longest phases first.
_COST = {"consensus": 42, "partition": 31, "tasks": 18, "identity": 10, "discovery": 4}
TASKS_NODES = 50
IDENTITY_VERIFIERS = 10


@dataclasses.dataclass
class PhaseResult:
    """One phase's outcome (picklable: it crosses a process boundary)."""

    name: str
    spec: RunSpec
    targets: list[Target]
    violations: list[Violation]
    report: dict[str, Any]
    latencies: dict[str, LatencyRecorder]
    decisions: list[tuple[float, int, int]] | None
    events: int
    wall_s: float


def phase_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The ``sim run`` arguments of phase ``name`` (see the module doc). Raises
    ``ValueError`` for a phase name that does not exist."""
    out = copy.copy(args)
    for field in ("partition", "crash", "adversary", "param"):
        setattr(out, field, list(getattr(args, field) or []))
    if name == "consensus":
        out.workload = "pbft"
        return out
    out.partition, out.crash, out.adversary, out.load, out.param = [], [], [], None, []
    n = args.nodes if args.nodes is not None else 100
    if name == "partition":
        out.workload, out.duration = "pbft", "20s"
        cut = n - max(1, n // 5)
        out.partition = [f"3s-9s:0-{cut - 1}|{cut}-{n - 1}"] if n >= 2 else []
        out.adversary = ["equivocating-primary"] if (args.byzantine or 0) > 0 else []
    elif name == "discovery":
        out.workload, out.duration = "discovery", "30s"
    elif name == "identity":
        out.workload, out.duration = "identity", "25s"
        out.param = [f"verifiers={IDENTITY_VERIFIERS}"]
    elif name == "tasks":
        out.workload, out.duration, out.nodes = "tasks", "26s", min(n, TASKS_NODES)
        out.param = ["tasks=200", "submit_from=2s", "submit_over=10s", "drain=10s"]
    else:
        raise ValueError(f"unknown phase {name!r} (phases: {', '.join(PHASES)})")
    return out


def _run_phase(name: str, args: argparse.Namespace, progress: Any, plot: bool) -> PhaseResult:
    from sim import cli, runner
    from sim.workloads import load_workload

    spec = cli.build_spec(phase_args(args, name))
    decisions: list[tuple[float, int, int]] | None = [] if plot else None
    last = [0.0]

    def on_progress(now: float) -> None:
        if progress is not None and now - last[0] >= 0.25:
            last[0] = now
            progress.put((name, now))

    result = runner.run(spec, load_workload(spec.workload), on_progress=on_progress,
                        decisions=decisions)
    if progress is not None:
        progress.put((name, spec.duration_s))
    targets = [t for t in result.targets if _keep(name, t)]
    for t in targets:
        t.phase = name
    return PhaseResult(name, spec, targets, list(result.violations),
                       runner.report_dict(result), dict(result.results.latencies), decisions,
                       result.events, result.wall_s)


def _keep(phase: str, target: Target) -> bool:
    # The partition phase measures the partition targets; its commit latency (operations
    # submitted on the minority side wait for the heal) is the consensus phase's business.
    return phase != "partition" or target.name.startswith("partition")


def _worker(job: tuple[str, argparse.Namespace, bool]) -> PhaseResult:
    return _run_phase(job[0], job[1], _PROGRESS, job[2])


_PROGRESS: Any = None


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def durations(args: argparse.Namespace) -> dict[str, float]:
    """Virtual seconds each phase simulates (for progress bars). Checks every phase's
    arguments and workload first: raises ``ValueError`` (bad arguments) or
    :class:`sim.workloads.WorkloadMissing` before anything runs."""
    from sim import cli
    from sim.workloads import load_workload

    specs = {name: cli.build_spec(phase_args(args, name)) for name in PHASES}
    for spec in specs.values():
        load_workload(spec.workload)
    return {name: spec.duration_s for name, spec in specs.items()}


def run_suite(
    args: argparse.Namespace, *, jobs: int | None = None, plot: bool = False,
    on_progress: Callable[[str, float], None] | None = None,
) -> tuple[list[PhaseResult], float]:
    """Run every phase; returns the results in :data:`PHASES` order and the wall time
    (seconds). ``jobs``: worker processes (default ``os.cpu_count()``; 1 runs in this
    process). Raises ``ValueError`` for bad arguments (checked before anything runs);
    exceptions from a phase propagate."""
    wall0 = time.perf_counter()
    durations(args)  # validates every phase's arguments up front
    order = sorted(PHASES, key=lambda p: -_COST[p])
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(order)))
    results: dict[str, PhaseResult] = {}
    if jobs == 1:
        for name in order:
            results[name] = _run_phase(name, args, _Direct(on_progress), plot)
    else:
        ctx = multiprocessing.get_context("fork")
        progress = ctx.Queue()
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(progress,)) as pool:
            pending = pool.map_async(_worker, [(name, args, plot) for name in order],
                                     chunksize=1)
            while not pending.ready():
                _drain(progress, on_progress, timeout=0.2)
            for res in pending.get():
                results[res.name] = res
            _drain(progress, on_progress, timeout=0.0)
    return [results[p] for p in PHASES], time.perf_counter() - wall0


class _Direct:
    def __init__(self, callback: Callable[[str, float], None] | None) -> None:
        self.callback = callback

    def put(self, item: tuple[str, float]) -> None:
        if self.callback is not None:
            self.callback(*item)


def _drain(progress: Any, callback: Callable[[str, float], None] | None,
           timeout: float) -> None:
    try:
        item = progress.get(timeout=timeout) if timeout else progress.get_nowait()
        while True:
            if callback is not None:
                callback(*item)
            item = progress.get_nowait()
    except queue_mod.Empty:
        return


def suite_targets(results: list[PhaseResult]) -> tuple[list[Target], list[Violation]]:
    """All phases' targets (phase-prefixed names) and violations, in phase order."""
    return ([t for r in results for t in r.targets],
            [v for r in results for v in r.violations])


def suite_report(results: list[PhaseResult], wall_s: float) -> dict[str, Any]:
    """The JSON report of a suite run (see the module doc and :mod:`sim.runner`)."""
    by = {r.name: r.report for r in results}
    targets, violations = suite_targets(results)
    cons = by["consensus"]
    config = dict(cons["config"])
    config["workload"] = "suite"
    config["phases"] = {r.name: r.report["config"] for r in results}
    first = next((v for v in violations if v.safety), None)
    return {
        "config": config,
        "safety_violations": sum(r.report["safety_violations"] for r in results),
        "first_safety_violation": dataclasses.asdict(first) if first else None,
        "liveness_violations": [v.one_line() for v in violations if not v.safety],
        "decisions": cons["decisions"],
        "commit_latency_s": cons["commit_latency_s"],
        "discovery_latency_s": by["discovery"]["discovery_latency_s"],
        "identity_verify_latency_s": by["identity"]["identity_verify_latency_s"],
        "targets": [t.as_dict() for t in targets],
        "exit_code": exit_code(targets, violations),
        "phases": {r.name: {k: v for k, v in r.report.items() if k != "wall_s"}
                   for r in results},
        "wall_s": wall_s,
    }
