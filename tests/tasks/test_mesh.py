"""node.tasks.mesh: the pure mesh task core, alone and inside four real PBFT replicas."""

from __future__ import annotations

import pytest
from meshkit import SIGNERS, Log, members, result, submit, tick

from consensus.messages import Request
from node.tasks.mesh import MeshConfig, MeshTasks, rendezvous_order
from node.tasks.meshapp import MeshTaskApp, bound_replica
from node.tasks.meshops import (
    decode_result,
    result_op,
    sign_result,
    sign_submit,
    sign_tick,
    submit_op,
    tick_op,
)

FOUR = ("node0", "node1", "node2", "node3")


def test_exactly_once_acceptance_under_duplicate_results():
    log = Log(members(*FOUR))
    assert log.submit("t")["ok"]
    who = log.core.status("t")["assignee"]
    first = log.do(result("t", 1, who, b"A"))
    assert first == {"ok": True, "task": "t", "accepted": True}
    replay = log.do(result("t", 1, who, b"A"))
    changed = log.do(result("t", 1, who, b"B"))  # the executor changes its mind: too late
    assert not replay["ok"] and replay["reason"].startswith("duplicate")
    assert not changed["ok"] and changed["reason"].startswith("duplicate")
    other = next(n for n in FOUR if n != who)
    late = log.do(result("t", 1, other, b"C"))
    assert late["reason"].startswith("task already has an accepted result")
    st = log.core.status("t")
    assert st["state"] == "done" and st["accepted"]["output"] == b"A"
    assert st["accepted"]["node"] == who and st["accepted"]["seq"] == 2
    assert [r[3][:9] for r in st["rejected"]] == ["duplicate", "duplicate", "task alre"]
    log.advance(10)  # deadlines no longer matter once accepted
    assert log.core.status("t")["accepted"]["output"] == b"A"


def test_unassigned_executor_and_bad_signatures_are_rejected_with_reasons():
    log = Log(members(*FOUR))
    log.submit("t")
    who = log.core.status("t")["assignee"]
    other = next(n for n in FOUR if n != who)
    refused = log.do(result("t", 1, other))
    assert refused["reason"] == f"not assigned: attempt 1 is assigned to {who}"
    forged = result_op("t", 1, who, SIGNERS[other].sign(b"whatever"), output=b"x")
    assert log.do(forged)["reason"] == "bad signature"
    assert log.do(result("t", 1, "node5"))["reason"] == "node5 is not a member"
    assert log.do(result("t", 2, who))["reason"].startswith("not assigned: attempt 2")
    assert log.do(result("nope", 1, who))["reason"] == "unknown task nope"
    assert log.do(b"\x01garbage")["reason"].startswith("malformed")
    assert log.do(submit("t"))["reason"] == "duplicate task id t"
    st = log.core.status("t")
    assert st["state"] == "assigned" and st["accepted"] is None
    assert [r[1] for r in st["rejected"]] == [other, who, "node5", who]
    assert log.do(result("t", 1, who))["accepted"]


def test_reassignment_on_deadline_to_the_next_member_in_rendezvous_order():
    log = Log(members(*FOUR))
    log.submit("t", deadline_ticks=2, max_attempts=4)
    first = log.core.status("t")["assignee"]
    log.advance(1)
    assert log.core.status("t")["attempt"] == 1  # not due yet
    log.advance(1)
    st = log.core.status("t")
    assert st["attempt"] == 2 and st["assignee"] != first
    assert st["history"] == [[1, first, st["assigned_seq"], "deadline: no valid result by clock 2"]]
    # the first executor's late result is refused; the new one is accepted
    late = log.do(result("t", 1, first))
    assert late["reason"] == f"stale attempt 1: attempt 2 is assigned to {st['assignee']}"
    assert log.do(result("t", 2, st["assignee"]))["accepted"]
    # the missed deadline cost the first executor reputation, the success paid the second
    assert log.core.rep[first] == 2 and log.core.rep[st["assignee"]] == 5


def test_task_expires_after_max_attempts_and_reassignment_visits_each_member():
    log = Log(members(*FOUR))
    log.submit("t", deadline_ticks=1, max_attempts=4)
    log.advance(4)
    st = log.core.status("t")
    assert st["state"] == "expired" and st["accepted"] is None
    assert sorted(h[1] for h in st["history"]) == sorted(FOUR)  # next member each time
    assert log.do(result("t", 4, st["history"][-1][1]))["reason"] == "task is expired"


def test_retryable_failure_report_reassigns_and_final_failure_is_accepted():
    log = Log(members(*FOUR))
    log.submit("t", max_attempts=2)
    a = log.core.status("t")["assignee"]
    r = log.do(result("t", 1, a, b"", ok=False, retry=True, error="disk full"))
    assert r["ok"] and not r["accepted"] and r["attempt"] == 2
    b = log.core.status("t")["assignee"]
    assert b != a
    r = log.do(result("t", 2, b, b"", ok=False, retry=True, error="bad input"))
    assert r["accepted"]  # no attempts left: the failure is the accepted result
    st = log.core.status("t")
    assert st["state"] == "failed" and st["reason"] == "bad input"


def test_clock_needs_f_plus_one_distinct_members_and_ignores_forgeries():
    log = Log(members(*FOUR))  # f = 1: two distinct ticks move the clock
    assert not log.do(tick("node0", 0))["advanced"]
    assert not log.do(tick("node0", 0))["advanced"]  # the same member twice
    forged = tick_op("node1", 0, SIGNERS["node1"].sign(b"not the tick bytes"))
    assert log.do(forged) == {"ok": False, "reason": "bad signature"}
    assert log.do(tick("node1", 5))["reason"] == "tick for clock 5 ahead of 0"
    assert log.do(tick("node6", 0))["reason"] == "node6 is not a member"
    assert log.do(tick("node1", 0))["advanced"] and log.core.clock == 1
    assert log.do(tick("node2", 0))["stale"]


def test_assignment_avoids_dead_members_and_follows_load():
    log = Log(members(*FOUR))
    for i in range(12):  # only node0..node2 tick: node3 stops being live
        log.advance(1) if i else None
        for n in ("node0", "node1", "node2"):
            log.do(tick(n, log.core.clock))
    assert log.core.live_members(log.m) == ["node0", "node1", "node2"]
    for i in range(30):
        log.submit(f"x{i}", deadline_ticks=50)
    load = log.core.load()
    assert set(load) == {"node0", "node1", "node2"} and sum(load.values()) == 30
    assert max(load.values()) - min(load.values()) <= 6  # load lowers the weight


def test_member_leaving_loses_its_assignments():
    log = Log(members(*FOUR))
    for i in range(8):
        log.submit(f"t{i}", deadline_ticks=100)
    victim = log.core.status("t0")["assignee"]
    log.m = members(*[n for n in FOUR if n != victim])
    log.do(tick(log.m.ids[0], 0))
    for i in range(8):
        st = log.core.status(f"t{i}")
        assert st["assignee"] != victim and st["assignee"] in log.m
    assert victim not in log.core.load()
    assert log.core.status("t0")["history"][0][3] == "executor left the member set"


def test_rendezvous_order_is_weighted_and_stable():
    weights = {f"m{i}": 1 for i in range(5)}
    wins = {m: 0 for m in weights}
    heavy = dict(weights, m0=4)
    heavy_wins = {m: 0 for m in weights}
    for k in range(2000):
        wins[rendezvous_order(f"task{k}", weights)[0]] += 1
        heavy_wins[rendezvous_order(f"task{k}", heavy)[0]] += 1
    assert all(300 <= w <= 500 for w in wins.values()), wins
    assert 900 <= heavy_wins["m0"] <= 1300, heavy_wins  # 4/8 of the tasks
    # raising m0's weight only moves tasks *to* m0 (consistent hashing)
    for k in range(200):
        a, b = rendezvous_order(f"task{k}", weights)[0], rendezvous_order(f"task{k}", heavy)[0]
        assert b == a or b == "m0"


def test_snapshot_restore_round_trip_continues_identically():
    log = Log(members(*FOUR))
    for i in range(5):
        log.submit(f"t{i}", deadline_ticks=2)
    log.advance(2)
    copy = MeshTasks()
    copy.restore(log.core.snapshot())
    assert copy.snapshot() == log.core.snapshot() and copy.load() == log.core.load()
    twin = Log(log.m, copy)
    twin.seq = log.seq
    for lg in (log, twin):
        lg.advance(3)
        lg.do(result("t1", 2, lg.core.status("t1")["assignee"] or "node0"))
    assert copy.snapshot() == log.core.snapshot()
    with pytest.raises(ValueError):
        copy.restore(b"junk")


def test_app_routes_task_ops_and_delegates_the_rest():
    class Other:
        def __init__(self):
            self.seen = []

        def apply(self, seq, requests):
            self.seen += [r.op for r in requests]
            return [b"other:" + r.op for r in requests]

        def snapshot(self):
            return b"".join(self.seen)

        def restore(self, snap):
            self.seen = [snap]

    m = members(*FOUR)
    app = MeshTaskApp(lambda: m, other=Other())
    reqs = [Request("c", 1, b"hello"), Request("c", 2, submit("t")),
            Request("c", 3, b"\x81\xa1t\xa9task.oops")]
    out = app.apply(1, reqs)
    assert out[0] == b"other:hello" and decode_result(out[1])["ok"]
    assert decode_result(out[2])["reason"].startswith("malformed")
    again = MeshTaskApp(lambda: m, other=Other())
    again.restore(app.snapshot())
    assert again.core.snapshot() == app.core.snapshot() and again.other.seen == [b"hello"]
    alone = MeshTaskApp(lambda: m)
    assert decode_result(alone.apply(1, [Request("c", 1, b"x")])[0])["reason"] == \
        "not a task operation"


def test_four_pbft_replicas_agree_on_assignment_and_acceptance():
    from pbft_harness import Net

    net = Net(4, seed=3, inline_sign=True, replica_cls=bound_replica(),
              app_factory=lambda: MeshTaskApp(lambda: None))  # bound by bound_replica
    apps = {i: r.state.app for i, r in net.replicas.items()}
    sub = sign_submit(net.signers["r000"], "job", "echo", b"in", by="r000", at=0,
                      deadline_ticks=2)
    net.propose("r000", sub)
    net.run(400, until=lambda: net.all_decided([sub]))
    assignees = {apps[i].core.status("job")["assignee"] for i in net.ids}
    assert len(assignees) == 1
    first = assignees.pop()
    # the assignee is silent: every member ticks until the task moves on
    ops = []
    for clock in range(2):
        for i in net.ids:
            op = sign_tick(net.signers[i], i, clock)
            ops.append(op)
            net.propose(i, op)
        net.run(400, until=lambda: net.all_decided(ops))
    statuses = [apps[i].core.status("job") for i in net.ids]
    assert all(s == statuses[0] for s in statuses) and statuses[0]["attempt"] == 2
    second = statuses[0]["assignee"]
    assert second != first
    good = sign_result(net.signers[second], "job", 2, second, output=b"OUT")
    late = sign_result(net.signers[first], "job", 1, first, output=b"LATE")
    net.propose(first, late)
    net.propose(second, good)
    net.propose("r002", good)  # a duplicate through another replica
    net.run(400, until=lambda: net.all_decided([good, late]))
    snaps = {apps[i].snapshot() for i in net.ids}
    assert len(snaps) == 1
    # a replica restarted from its persisted records re-executes the log (through the
    # bound app) and reaches the same mesh task state
    net.crash("r003")
    net.restart("r003")
    assert net.replicas["r003"].state.app.snapshot() in snaps
    st = apps["r001"].core.status("job")
    assert st["state"] == "done" and st["accepted"]["output"] == b"OUT"
    assert any(r[3].startswith("stale attempt 1") for r in st["rejected"])
    net.check_safety()



def test_submissions_must_be_signed_by_a_member_and_recent():
    log = Log(members(*FOUR))
    assert log.do(submit("a", by="node5"))["reason"] == "node5 is not a member"
    forged = submit_op("a", "echo", b"in", deadline_ticks=3, max_attempts=5, by="node0",
                       at=0, sig=SIGNERS["node1"].sign(b"x"))
    assert log.do(forged)["reason"] == "bad signature"
    assert log.do(submit("a", at=1))["reason"] == "submission at clock 1 ahead of 0"
    log.advance(61)
    assert log.do(submit("a", at=0))["reason"] == "stale submission (clock 0, now 61)"
    assert log.do(submit("a", at=1))["ok"]
    assert log.core.status("a")["by"] == "node0"


def test_closed_tasks_are_pruned_and_their_submission_cannot_be_replayed():
    core = MeshTasks(MeshConfig(submit_window=2, retain_ticks=5))
    log = Log(members(*FOUR), core)
    op = submit("t", at=0, deadline_ticks=50)
    log.do(op)
    log.do(result("t", 1, core.status("t")["assignee"]))
    log.advance(4)
    assert core.status("t")["state"] == "done"
    log.advance(1)
    assert core.status("t") is None and core.tasks == {}  # pruned at closed + 5
    assert log.do(op)["reason"].startswith("stale submission")
    with pytest.raises(ValueError):
        MeshConfig(submit_window=10, retain_ticks=10)
