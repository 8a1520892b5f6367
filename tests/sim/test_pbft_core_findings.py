"""CONSENSUS-CORE FINDINGS (for the consensus owner): minimal reproductions.

These tests document behaviour of ``consensus/`` found while wiring it into the
simulator. Open findings are ``xfail(strict=True)``: when the core is fixed they start
passing, pytest reports XPASS as a failure, and the marker should then be removed.
"""

from __future__ import annotations

from consensus.leader import Reputation
from consensus.messages import Batch
from consensus.quorum import Membership
from sim import runner
from sim.cli import _parser, build_spec
from sim.workloads import pbft_process
from sim.workloads.pbft import PbftWorkload

MEMBERS = Membership.of({f"n{i:03d}": bytes([i]) * 32 for i in range(4)})


def test_reputation_primary_of_a_view_is_stable_while_the_view_runs():
    # View 0's primary failed; view 1 is running and commits its first batch. At the
    # next stable checkpoint every replica adopts this reputation (Replica.primary reads
    # stable_reputation), and the primary of the *current* view 1 changes under it:
    # the old and the new primary both pre-prepare the same sequence numbers in view 1,
    # honest replicas split their PREPAREs, and the view dies (another view change,
    # which charges another member, and so on at every checkpoint).
    rep = Reputation()
    p1 = rep.primary(1, MEMBERS)
    rep.on_batch(1, Batch(1, p1, (), ()), MEMBERS)  # charges the primary of view 0
    assert rep.primary(1, MEMBERS) == p1


def test_in_the_simulator_no_replica_sees_its_current_view_change_primary():
    # Regression test: this failed with the core of 2026-11-21 ~08:50 (the primary of
    # the current view changed at the first stable checkpoint after a view change; 26
    # view changes in a 100-node minute). Replica.primary now fixes a view's primary
    # the first time the replica asks.
    # n = 4, the primary of view 0 is silent; after the view change to view 1 the
    # first stable checkpoint (every 8 sequence numbers) changes primary(1).
    flips: list[tuple[float, int, int, str, str]] = []
    seen: dict[int, tuple[int, str]] = {}
    orig = pbft_process.PbftProcess.drain

    def drain(self, ctx, replica=None):
        orig(self, ctx, replica)
        r = self.replica
        if r is None or r.in_view_change:
            return
        now = (r.view, r.primary(r.view))
        old = seen.get(self.node)
        if old is not None and old[0] == now[0] and old[1] != now[1]:
            flips.append((ctx.now, self.node, r.view, old[1], now[1]))
        seen[self.node] = now

    args = _parser().parse_args(["run", "--nodes", "4", "--duration", "8s", "--latency",
                                 "50ms", "--no-progress"])
    spec = build_spec(args)
    ids = [f"n{i:03d}" for i in range(4)]
    first = ids.index(Reputation().primary(0, Membership.of({i: bytes(32) for i in ids})))
    import dataclasses

    spec = dataclasses.replace(spec, byzantine=frozenset({first}))
    pbft_process.PbftProcess.drain = drain
    try:
        runner.run(spec, PbftWorkload())
    finally:
        pbft_process.PbftProcess.drain = orig
    assert flips == []


def test_a_restarted_primary_rejoins_the_current_view():
    # n = 4, no Byzantine nodes. The primary of view 0 crashes at 2 s (the others move
    # to view 1) and restarts at 4 s. Six seconds later it should be back in the normal
    # case. Observed (core of ~09:20 UTC): it restores a VIEW-CHANGE for view 1, stays
    # in_view_change, and its primary(1) differs from the one the others pinned when
    # they entered view 1 (it asks only after the stable reputation charged view 0's
    # primary), so it rejects their NEW-VIEW as "not-primary". It keeps up only by state
    # transfer; with a third of the members silent that one replica would stall every
    # quorum.
    ids = [f"n{i:03d}" for i in range(4)]
    first = ids.index(Reputation().primary(0, Membership.of({i: bytes(32) for i in ids})))
    args = _parser().parse_args(["run", "--nodes", "4", "--duration", "10s", "--latency",
                                 "50ms", "--no-progress", "--crash", f"{first}@2s-4s"])
    result = runner.run(build_spec(args), PbftWorkload())
    reps = [result.world.hosts[i].process.replica for i in range(4)]
    others = [r for i, r in enumerate(reps) if i != first]
    me = reps[first]
    assert (me.view, me.in_view_change) == (others[0].view, False)
    assert me.primary(me.view) == others[0].primary(others[0].view)
