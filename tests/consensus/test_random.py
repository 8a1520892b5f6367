"""Random schedules (Hypothesis): drop / duplicate / reorder / delay, crashes, up to f
Byzantine replicas of mixed strategies and (in some schedules) a membership change: a
node joins, or a Byzantine member is removed. Safety always; liveness (every honest
replica, a newcomer included, executes every operation) once the network turns
synchronous. A deliberately broken replica shows the checks catch what they claim."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbft_harness import STRATEGIES, Net

from consensus.membership import MEMBERS_CLIENT, endorsement_bytes, member_op
from consensus.quorum import faults
from consensus.replica import Config, Replica

CFG = Config(checkpoint_interval=4, window=8, batch_size=3, view_timeout=10,
             resend_interval=4, max_inflight=4)


class BrokenReplica(Replica):
    """Prepares after f + 1 PREPAREs and commits after f + 1 COMMITs: unsafe."""

    def _prepared_quorum(self) -> int:
        return self.members.weak

    def _commit_quorum(self) -> int:
        return self.members.weak


def scenario(seed: int, n: int, *, byz: dict[str, str] | None = None, ticks: int = 120,
             replica_cls: type[Replica] = Replica, check_liveness: bool = True) -> Net:
    rng = random.Random(seed)
    f = (n - 1) // 3
    if byz is None:
        byz = {f"r{i:03d}": rng.choice(STRATEGIES) for i in rng.sample(range(n), rng.randint(0, f))}
    net = Net(n, seed=seed, config=CFG, byzantine=byz, inline_sign=rng.random() < 0.5,
              wire=rng.random() < 0.2, replica_cls=replica_cls)
    net.drop = rng.choice([0.0, 0.05, 0.2, 0.4])
    net.dup = rng.choice([0.0, 0.1])
    net.max_delay = rng.choice([0, 1, 3, 8])
    want: list[bytes] = []
    change_at = rng.randrange(ticks // 2) if rng.random() < 0.4 else -1
    for t in range(ticks):
        live = [i for i in net.honest if i not in net.down and net.replicas[i].voting]
        if rng.random() < 0.2 and live:
            want.append(f"op{len(want)}".encode())
            net.propose(rng.choice(live), want[-1], client="c", rid=len(want))
        if t == change_at and live:
            f = change_members(net, rng, live, byz)
        if rng.random() < 0.02:
            i = rng.choice(net.honest)
            if i in net.down:
                net.restart(i)
            elif len(net.down) + len(byz) < f:
                net.crash(i)
        net.tick()
        net.check_safety()
    if not check_liveness:
        return net
    for i in sorted(net.down):
        net.restart(i)
    net.drop, net.dup, net.max_delay = 0.0, 0.0, 1
    net.run(50)
    voters = [i for i in net.honest if net.replicas[i].voting]  # (observers only listen)
    for k, op in enumerate(want):  # the client retransmits what a crash may have lost
        if not net.all_decided([op]):
            net.propose(voters[k % len(voters)], op, client="c", rid=k + 1)
    net.run(4000, until=lambda: net.all_decided(want))
    net.check_safety()
    net.check_no_equivocation()
    check_primaries_agree(net)
    return net


def change_members(net: Net, rng: random.Random, live: list[str], byz: dict[str, str]) -> int:
    """Propose one quorum-endorsed membership change: add a new (honest) node, or remove
    a Byzantine member when that keeps f. Returns the f the crash budget may use from
    now on (the smaller of the old and the new set's)."""
    members = net.replicas[live[0]].state.members
    if byz and members.n >= 7 and rng.random() < 0.5:
        action, who = "remove", sorted(byz)[0]
        key = net.members[who]
    else:
        action, who = "add", f"r{len(net.ids):03d}"
        key = net.add_node(who).public_key
    data = endorsement_bytes(members, action, who, key)
    by = list(members.ids[: members.quorum])
    op = member_op(action, who, key, {m: net.signers[m].sign(data) for m in by})
    net.propose(rng.choice(live), op, client=MEMBERS_CLIENT, rid=1)
    return min(faults(members.n), faults(members.n + (1 if action == "add" else -1)))


def check_primaries_agree(net: Net) -> None:
    """Live honest replicas running the same view name the same primary for it."""
    seen: dict[int, set[str]] = {}
    for i in net.honest:
        r = net.replicas[i]
        if i not in net.down and not r.in_view_change:
            seen.setdefault(r.view, set()).add(r.primary(r.view))
    assert all(len(p) == 1 for p in seen.values()), seen


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.integers(0, 2**32))
def test_random_schedules_n4(seed: int) -> None:
    scenario(seed, 4)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.integers(0, 2**32))
def test_random_schedules_n7(seed: int) -> None:
    scenario(seed, 7, ticks=80)


def test_broken_replica_is_caught_deterministically() -> None:
    """An equivocating primary splits the honest replicas; correct quorums refuse to
    decide either side, f + 1 quorums decide both and the safety check fails."""
    p = Net(4, seed=9, config=CFG).replicas["r000"].primary(0)

    def run(cls: type[Replica]) -> Net:
        net = Net(4, seed=9, config=CFG, byzantine={p: "equivocate"}, replica_cls=cls)
        for k in range(3):
            net.propose(net.honest[k], f"b{k}".encode())
        net.run(3)
        return net

    run(Replica).check_safety()
    with pytest.raises(AssertionError, match="safety violated"):
        run(BrokenReplica).check_safety()


def test_broken_replica_is_caught_by_random_schedules() -> None:
    caught = 0
    for seed in range(12):
        p = Net(4, seed=seed, config=CFG).replicas["r000"].primary(0)
        try:
            scenario(seed, 4, byz={p: "equivocate"}, ticks=40, replica_cls=BrokenReplica,
                     check_liveness=False)
        except AssertionError as exc:
            assert "safety violated" in str(exc) or "invalid certificate" in str(exc)
            caught += 1
    assert caught >= 3
