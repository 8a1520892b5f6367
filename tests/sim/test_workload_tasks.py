"""The task workload: MeshTaskApp replicated by real PBFT replicas on the simulator."""

from __future__ import annotations

import dataclasses

from sim import runner
from sim.cli import _parser, build_spec
from sim.workloads.tasks import TaskProcess, TasksWorkload


def run(argv: list[str], byzantine: set[int] | None = None):
    args = _parser().parse_args(["run", "--no-progress", "--workload", "tasks", *argv])
    spec = build_spec(args)
    if byzantine is not None:
        spec = dataclasses.replace(spec, byzantine=frozenset(byzantine))
    wl = TasksWorkload()
    result = runner.run(spec, wl)
    rep = runner.report_dict(result)
    rep.pop("wall_s")
    return rep, wl, result


BASE = ["--nodes", "7", "--duration", "30s", "--latency", "50ms", "--seed", "4",
        "--param", "tasks=50", "--param", "submit_over=10s"]


def accepted_everywhere(result, wl):
    out = {}
    for n in sorted(result.spec.honest):
        proc = result.world.hosts[n].process
        assert isinstance(proc, TaskProcess)
        out[n] = {tid: proc.core.status(tid)["accepted"] for tid in sorted(proc.core.tasks)}
    return out


def test_every_task_has_exactly_one_accepted_result_despite_a_crash():
    rep, wl, result = run([*BASE, "--crash", "3@5s-15s"])
    check = rep["workload_extra"]["tasks"]
    assert check["tasks_committed"] == 50 and check["violations"] == 0
    assert check["states"] == {"done": 50} and check["disagreements"] == 0
    assert rep["safety_violations"] == 0 and rep["exit_code"] == 0
    assert rep["workload_extra"]["restarts"] == 1
    # the crashed member's attempts moved on after their deadline
    assert check["reassigned"] >= 1
    # every honest node, the restarted one included, holds the same accepted results
    acc = accepted_everywhere(result, wl)
    first = acc[0]
    assert len(first) == 50 and all(a is not None for a in first.values())
    assert all(other == first for other in acc.values())
    lat = rep["other_latencies_s"]["task_assign_to_result_s"]
    assert lat["count"] == 50 and lat["unfinished"] == 0 and lat["p50"] < 1.0


def test_silent_byzantine_member_tasks_are_reassigned():
    rep, wl, result = run(BASE, byzantine={5})
    check = rep["workload_extra"]["tasks"]
    assert check["violations"] == 0 and check["tasks_committed"] == 50
    assert check["accepted_from_byzantine"] == 0 and check["reassigned"] >= 1
    core = result.world.hosts[0].process.core
    moved = [t for t in core.tasks.values() if t.attempt > 1]
    assert all(t.history[0][1] == "n005" for t in moved)


def test_same_seed_same_report():
    argv = [*BASE[:-4], "--param", "tasks=15", "--param", "submit_over=3s",
            "--duration", "12s", "--crash", "2@3s-6s"]
    a, _, _ = run(argv)
    b, _, _ = run(argv)
    assert a == b and a["workload_extra"]["tasks"]["violations"] == 0
