"""Hypothesis over random schedules of committed mesh task operations.

Each example drives a committed log of submits, results (from the assignee, from other
members, from non-members, replayed, forged, stale), ticks (current, stale, future,
forged) and member-set changes into a :class:`MeshTasks` core and checks after every
operation that no task ever has more than one accepted result, that an accepted result
never changes and came from the member assigned to that attempt, and that the derived
load matches the open tasks. At the end the same log, replayed into a fresh core and
into one restored from a snapshot taken half-way, gives identical snapshots
(determinism).
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from meshkit import SIGNERS, members, result, submit, tick

from node.tasks.mesh import ASSIGNED, MeshConfig, MeshTasks
from node.tasks.meshops import result_op, tick_op

NODES = sorted(SIGNERS)[:5]
OUTSIDER = sorted(SIGNERS)[6]
TASK_IDS = [f"t{i}" for i in range(6)]


def _step(data, core: MeshTasks, m, log: list[bytes]):
    kind = data.draw(st.sampled_from(
        ["submit", "result", "result", "result", "tick", "tick", "tick", "members", "replay"]))
    if kind == "submit":
        return submit(data.draw(st.sampled_from(TASK_IDS)),
                      by=data.draw(st.sampled_from([*m.ids, OUTSIDER])),
                      at=max(0, core.clock - data.draw(st.sampled_from([0, 0, 1, 3]))),
                      deadline_ticks=data.draw(st.integers(1, 4)),
                      max_attempts=data.draw(st.integers(1, 4))), m
    if kind == "result":
        tid = data.draw(st.sampled_from(TASK_IDS))
        status = core.status(tid)
        assignee = status["assignee"] if status else None
        attempt = status["attempt"] if status else 1
        node = data.draw(st.sampled_from([assignee or NODES[0]] * 5 + [*NODES, OUTSIDER]))
        attempt = max(0, attempt + data.draw(st.sampled_from([0, 0, 0, -1, 1])))
        ok, retry = data.draw(st.booleans()), data.draw(st.booleans())
        if data.draw(st.integers(0, 9)) == 0:
            return result_op(tid, attempt, node, SIGNERS[node].sign(b"forged"), ok=ok), m
        return result(tid, attempt, node, data.draw(st.binary(max_size=3)), ok=ok,
                      retry=retry, error="e"), m
    if kind == "tick":
        node = data.draw(st.sampled_from([*NODES, OUTSIDER]))
        clock = max(0, core.clock + data.draw(st.sampled_from([0, 0, 0, -1, 1])))
        if data.draw(st.integers(0, 9)) == 0:
            return tick_op(node, clock, bytes(64)), m
        return tick(node, clock), m
    if kind == "members":
        chosen = data.draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=5,
                                    unique=True))
        return tick(chosen[0], core.clock), members(*chosen)
    if not log:
        return tick(NODES[0], core.clock), m
    return data.draw(st.sampled_from(log)), m


def _check(core: MeshTasks, m, accepted_before: dict) -> None:
    load: dict[str, int] = {}
    for tid, t in core.tasks.items():
        wins = [h for h in t.history if h[3] == "result accepted"]
        assert len(wins) <= 1, (tid, t.history)
        if t.accepted is not None:
            assert len(wins) == 1 and wins[0][:2] == [t.accepted["attempt"], t.accepted["node"]]
            key = (tid, t.submitted_seq)  # an id may be reused once its task was pruned
            assert accepted_before.setdefault(key, t.accepted) == t.accepted  # never changes
            assert t.state in ("done", "failed") and t.assignee is None
        else:
            assert (tid, t.submitted_seq) not in accepted_before and not wins
        if t.state == ASSIGNED:
            assert t.assignee in m and 1 <= t.attempt <= t.max_attempts
            load[t.assignee] = load.get(t.assignee, 0) + 1
        else:
            assert t.assignee is None
    assert core.load() == dict(sorted(load.items()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_at_most_one_accepted_result_and_deterministic_replay(data):
    cfg = MeshConfig(submit_window=2, retain_ticks=4)  # pruning happens within a run
    core = MeshTasks(cfg)
    m = members(*NODES[:4])
    log: list[bytes] = []
    committed: list[tuple[int, bytes, object]] = []
    accepted: dict = {}
    n_steps = data.draw(st.integers(1, 80))
    half_snapshot = None
    for seq in range(1, n_steps + 1):
        op, m = _step(data, core, m, log)
        core.apply_op(seq, op, m)
        log.append(op)
        committed.append((seq, op, m))
        _check(core, m, accepted)
        if seq == n_steps // 2:
            half_snapshot = core.snapshot()
    event(f"accepted results: {min(len(accepted), 3)}+")
    event(f"reassigned: {any(len(t.history) > 1 for t in core.tasks.values())}")
    fresh = MeshTasks(cfg)
    for seq, op, mm in committed:
        fresh.apply_op(seq, op, mm)
    assert fresh.snapshot() == core.snapshot()
    if half_snapshot is not None:
        resumed = MeshTasks(cfg)
        resumed.restore(half_snapshot)
        for seq, op, mm in committed[n_steps // 2:]:
            resumed.apply_op(seq, op, mm)
        assert resumed.snapshot() == core.snapshot()
        assert resumed.load() == core.load()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["result", "tick"]), min_size=1, max_size=60),
       st.integers(1, 3))
def test_every_task_ends_with_one_accepted_result_when_assignees_answer(schedule, deadline):
    """Live executors that answer (some late, after a reassignment): every task ends
    with exactly one accepted result, from the member assigned at that point."""
    core = MeshTasks()
    m = members(*NODES[:4])
    seq = 0

    def do(op):
        nonlocal seq
        seq += 1
        core.apply_op(seq, op, m)

    for i in range(5):
        do(submit(f"t{i}", deadline_ticks=deadline, max_attempts=64))
    pending = list(range(5))
    for step in schedule:
        if step == "tick":
            for n in m.ids[:2]:
                do(tick(n, core.clock))
        elif pending:
            st_ = core.status(f"t{pending.pop(0)}")
            do(result(st_["id"], st_["attempt"], st_["assignee"]))
    while core.open_count():
        for t in core.assigned_to(m.ids[0]) + [s for n in m.ids[1:]
                                                for s in core.assigned_to(n)]:
            do(result(t["id"], t["attempt"], core.status(t["id"])["assignee"]))
    for i in range(5):
        s = core.status(f"t{i}")
        assert s["state"] == "done" and s["accepted"] is not None
        assert [h[3] for h in s["history"]].count("result accepted") == 1
