"""Reputation-aware primary selection and equivocation evidence (committed state only)."""

from __future__ import annotations

import dataclasses

from pbft_harness import Net

from consensus.evidence import equivocator, make_evidence
from consensus.leader import PENALTY_SEQS, Reputation, round_robin
from consensus.messages import Batch, Prepare
from consensus.quorum import Membership
from consensus.replica import Config


def members(n: int) -> Membership:
    return Membership.of({f"r{i:03d}": bytes([i]) * 32 for i in range(n)})


def test_every_candidate_leads_once_per_round_in_a_shuffled_order() -> None:
    m, rep = members(10), Reputation()
    for rnd in range(3):
        leaders = [rep.primary(v, m) for v in range(rnd * 10, rnd * 10 + 10)]
        assert sorted(leaders) == list(m.ids)
    assert [rep.primary(v, m) for v in range(10)] != [round_robin(v, m) for v in range(10)]


def test_failed_views_are_charged_from_the_committed_log_and_skipped() -> None:
    m, rep = members(10), Reputation()
    genesis = rep.copy()
    rep.on_batch(1, Batch(0, rep.primary(0, m)), m)
    assert not rep.failures
    failed = [genesis.primary(w, m) for w in (0, 1, 2)]
    rep.on_batch(2, Batch(3, genesis.primary(3, m)), m)   # views 0..2 ended
    assert sorted(rep.failures) == sorted(set(failed))
    # the running view 3 (and earlier ones) keep their primaries; later views skip them
    assert [rep.primary(v, m) for v in range(4)] == [genesis.primary(v, m) for v in range(4)]
    for v in range(4, 100):
        assert rep.primary(v, m) not in failed
    assert Reputation.from_wire(rep.wire()) == rep
    rep.on_batch(2 + PENALTY_SEQS, Batch(3, "x"), m)        # penalties expire ...
    assert rep.primary(4, m) not in failed                 # ... for views not yet frozen
    rep.on_batch(3 + PENALTY_SEQS, Batch(4, "x"), m)        # view 3 ended, view 4 runs
    assert rep.schedule(5)[1] == (genesis.primary(3, m),)


def test_at_most_f_members_are_skipped() -> None:
    m, rep = members(7), Reputation()
    rep.on_batch(1, Batch(6, "x"), m)                      # views 0..5 ended: 6 charged
    assert len(set(rep.failures)) >= 3 and len(rep.schedule(7)[1]) == m.f
    assert len({rep.primary(v, m) for v in range(10, 15)}) == m.n - m.f  # one round


def test_executing_a_view_never_changes_its_primary() -> None:
    """The primary of a view is frozen before the view starts (consensus.leader): the
    views a new-view batch ends (and its own view) keep their primaries."""
    m, rep = members(10), Reputation()
    seq, last = 0, -1
    for view in (0, 2, 3, 7, 8):
        views = range(last + 1, view + 1)
        before = [rep.primary(v, m) for v in views]
        for _ in range(3):
            seq += 1
            rep.on_batch(seq, Batch(view, before[-1]), m)
            assert [rep.primary(v, m) for v in views] == before
        last = view


def test_reputation_avoids_paying_a_timeout_per_faulty_primary() -> None:
    """Ten silent members that round robin would make primaries of views 0..9."""
    ticks = {}
    for rep in (False, True):
        cfg = Config(view_timeout=10, max_view_timeout=80, reputation=rep)
        net = Net(31, seed=1, config=cfg, inline_sign=True,
                  byzantine={f"r{i:03d}": "silent" for i in range(10)})
        want = [f"o{k}".encode() for k in range(5)]
        for k, op in enumerate(want):
            net.propose(net.honest[k], op)
        ticks[rep] = net.run(2000, until=lambda: net.all_decided(want))  # noqa: B023
        net.check_safety()
    assert ticks[False] >= 10 + 20 + 40 + 80 * 7
    assert ticks[True] < ticks[False] / 5


def test_equivocation_evidence_is_committed_and_charged() -> None:
    net = Net(4, seed=5, config=Config(view_timeout=10, resend_interval=4),
              byzantine={"r003": "garbage-votes"})
    want = [f"g{k}".encode() for k in range(12)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % 3], op)
    net.run(200, until=lambda: net.all_decided(want))
    net.run(5)   # the primary proposes pending evidence even without requests
    net.check_safety()
    evid = [e for d in net.decided["r000"].values() for e in d.batch.evidence]
    assert evid and all(equivocator(e, net.replicas["r000"].members) == "r003" for e in evid)
    assert net.replicas["r001"].state.reputation.failures.get("r003", 0) >= 1


def test_evidence_needs_two_valid_conflicting_signatures() -> None:
    net = Net(4, seed=6)
    m = net.replicas["r000"].members
    s = net.signers["r001"]

    def signed(d: bytes, view: int = 0) -> Prepare:
        p = Prepare(view, 1, d, "r001")
        return dataclasses.replace(p, sig=s.sign(p.signing_bytes()))

    a, b = signed(bytes(32)), signed(b"\x01" * 32)
    assert equivocator(make_evidence(a, b), m) == "r001"
    assert equivocator(make_evidence(a, a), m) is None                      # no conflict
    assert equivocator(make_evidence(a, signed(b"\x01" * 32, 1)), m) is None  # other view
    forged = dataclasses.replace(b, sig=bytes(64))
    assert equivocator(make_evidence(a, forged), m) is None


def test_primary_that_splits_the_backups_is_caught_in_the_view_change() -> None:
    """The equivocating primary sends batch A to half the backups and B to the others;
    the minority sees the majority's pre-prepare inside a prepared certificate during the
    view change: equivocation evidence, committed, charged."""
    cfg = Config(checkpoint_interval=4, window=8, batch_size=2, view_timeout=10,
                 resend_interval=4)
    p = Net(7, seed=8, config=cfg).replicas["r000"].primary(0)
    net = Net(7, seed=8, config=cfg, byzantine={p: "equivocate"})
    want = [f"s{k}".encode() for k in range(6)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % 6], op)
    net.run(400, until=lambda: net.all_decided(want))
    net.run(20)
    net.check_safety()
    culprits = {equivocator(e, net.replicas[net.honest[0]].members)
                for d in net.decided[net.honest[0]].values() for e in d.batch.evidence}
    assert culprits == {p}
