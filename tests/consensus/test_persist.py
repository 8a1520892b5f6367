"""Persistence: restart from records mid-protocol; never contradict what was signed."""

from __future__ import annotations

import dataclasses

from pbft_harness import Net

from consensus.messages import Prepare, PrePrepare, batch_digest
from consensus.persist import restore
from consensus.replica import Config

CFG = Config(checkpoint_interval=4, window=8, batch_size=2, view_timeout=20,
             resend_interval=4, max_inflight=8)



def decide_without_the_first_primary(net: Net, tag: str, k: int
                                     ) -> tuple[str, list[str], list[bytes]]:
    """Crash view 0's primary and have the others decide ``k`` ops (a view change);
    returns (that primary, the live replicas, the ops)."""
    p0 = net.replicas["r000"].primary(0)
    net.crash(p0)
    alive = [i for i in net.ids if i != p0]
    want = [f"{tag}{i}".encode() for i in range(k)]
    for i, op in enumerate(want):
        net.propose(alive[i % 3], op)
    net.run(300, until=lambda: net.all_decided(want, who=alive))
    return p0, alive, want

def test_crash_and_restart_mid_protocol() -> None:
    net = Net(4, seed=1, config=CFG)
    victim = next(i for i in net.ids if i != net.replicas["r000"].primary(0))
    want = [f"x{k}".encode() for k in range(30)]
    for k, op in enumerate(want[:15]):
        net.propose(net.ids[k % 4], op)
    net.run(3)
    net.crash(victim)
    net.run(5)
    net.restart(victim)
    for k, op in enumerate(want[15:]):
        net.propose(net.ids[k % 4], op)
    net.run(300, until=lambda: net.all_decided(want))
    net.check_safety()
    assert net.replicas[victim].state.digest() == net.replicas[net.ids[0]].state.digest() \
        or net.replicas[victim].last_executed != net.replicas[net.ids[0]].last_executed


def test_restart_of_every_replica_keeps_state() -> None:
    net = Net(4, seed=2, config=CFG)
    want = [f"y{k}".encode() for k in range(11)]
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4], op)
    net.run(100, until=lambda: net.all_decided(want))
    before = {i: (r.last_executed, r.low, r.view, r.state.digest())
              for i, r in net.replicas.items()}
    for i in net.ids:
        net.crash(i)
        net.restart(i)
    after = {i: (r.last_executed, r.low, r.view, r.state.digest())
             for i, r in net.replicas.items()}
    assert after == before
    net.propose("r001", b"after")
    net.run(100, until=lambda: net.all_decided([b"after"]))
    net.check_safety()


def test_no_equivocation_after_restart() -> None:
    """A backup prepared digest A at (v, n) and crashed; the (Byzantine) primary then
    sends it B for the same (v, n). The restarted backup must not PREPARE B, while a
    replica that forgot its records does (the check catches what it claims to)."""
    assert _prepares_b_after_restart(keep_records=True) is False
    assert _prepares_b_after_restart(keep_records=False) is True


def _prepares_b_after_restart(keep_records: bool) -> bool:
    net = Net(4, seed=3, config=CFG)
    p = net.replicas["r000"].primary(0)
    backup = next(i for i in net.ids if i != p)
    net.propose(p, b"A")
    net.run(2, until=lambda: bool(net.decided[backup]))
    pp_a = next(m.data for m in net.storage[p] if m.kind == "msg")
    assert pp_a
    # rebuild the backup from its records, after dropping its decided/prepared knowledge
    # so that slot 1 is still open (the crash happened right after it sent PREPARE)
    recs = [r for r in net.storage[backup] if r.kind == "msg" and keep_records]
    back = restore(backup, net.members, recs, config=CFG, verify=net.verify)
    back.ready()
    batch_b = dataclasses.replace(
        next(d.batch for d in net.decided[backup].values()), requests=())
    pp_b = PrePrepare(0, 1, batch_digest(batch_b), p, batch=batch_b)
    pp_b = dataclasses.replace(pp_b, sig=net.signers[p].sign(pp_b.signing_bytes()))
    back.step(pp_b, sender=p)
    rd = back.ready()
    wanted = Prepare(0, 1, pp_b.digest, backup).signing_bytes()
    return any(sr.data == wanted for sr in rd.sign_requests)


def test_restarted_primary_does_not_reuse_sequence_numbers() -> None:
    net = Net(4, seed=4, config=CFG)
    p = net.replicas["r000"].primary(0)
    for k in range(6):
        net.propose(p, f"z{k}".encode())
    net.run(2)
    used = net.replicas[p].next_seq
    assert used > 1
    net.crash(p)
    net.restart(p)
    assert net.replicas[p].next_seq >= used


def test_compacted_records_restore() -> None:
    """Records at or below the newest stable checkpoint may be deleted by the driver."""
    net = Net(4, seed=5, config=CFG)
    want = [f"w{k}".encode() for k in range(21)]
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4], op)
    net.run(100, until=lambda: net.all_decided(want))
    r = net.replicas["r002"]
    stable = max(x.seq for x in net.storage["r002"] if x.kind == "stable")
    kept = [x for x in net.storage["r002"]
            if x.seq > stable or (x.kind == "stable" and x.seq == stable)
            or x.kind in ("viewchange", "view")]
    back = restore("r002", net.members, kept, config=CFG, verify=net.verify)
    assert (back.last_executed, back.low) == (r.last_executed, r.low)
    assert back.state.digest() == r.state.digest()


def test_compacted_records_restore_after_a_view_change() -> None:
    net = Net(4, seed=6, config=CFG)
    p0, alive, want = decide_without_the_first_primary(net, "v", 14)
    p1 = net.replicas[alive[0]].primary(net.replicas[alive[0]].view)
    r = net.replicas[p1]
    assert r.view >= 1 and r.low > 0
    stable = max(x.seq for x in net.storage[p1] if x.kind == "stable")
    kept = [x for x in net.storage[p1]
            if x.seq > stable or (x.kind == "stable" and x.seq == stable)
            or x.kind in ("viewchange", "view")]
    back = restore(p1, net.members, kept, config=CFG, verify=net.verify)
    assert (back.view, back.in_view_change, back.last_executed) == (r.view, False,
                                                                    r.last_executed)
    assert back.next_seq >= r.next_seq


def test_restarted_primary_rejoins_the_view_it_missed() -> None:
    """The primary of view 0 crashes; the others change view, charge it in committed
    state and take a stable checkpoint. Restarted, it must compute the same primary for
    the running view, accept its NEW-VIEW and be part of the next quorum: with a
    second replica down, nothing commits without it."""
    net = Net(4, seed=7, config=CFG)
    p0, alive, want = decide_without_the_first_primary(net, "m", 10)
    ref = net.replicas[alive[0]]
    assert ref.view >= 1 and ref.low > 0 and ref.state.reputation.failures.get(p0)
    net.restart(p0)
    me = net.replicas[p0]
    assert me.primary(ref.view) == ref.primary(ref.view)
    other = next(i for i in alive if i not in (ref.me, ref.primary(ref.view)))
    net.crash(other)
    more = [f"n{k}".encode() for k in range(5)]
    for k, op in enumerate(more):
        net.propose(p0 if k % 2 else ref.me, op)
    net.run(300, until=lambda: net.all_decided(more))
    net.check_safety()
    assert (me.view, me.in_view_change) == (ref.view, False)
    assert me.view_primary == ref.view_primary


def test_the_pinned_primary_of_the_running_view_survives_a_restart() -> None:
    net = Net(4, seed=8, config=CFG)
    p0, alive, want = decide_without_the_first_primary(net, "q", 6)
    for i in alive:
        r = net.replicas[i]
        pin = r.view_primary
        assert pin is not None and pin[0] == r.view
        back = restore(i, net.members, net.storage[i], config=CFG, verify=net.verify)
        assert (back.view, back.in_view_change, back.view_primary) == (r.view, False, pin)


def test_default_request_ids_continue_after_their_records_are_deleted() -> None:
    """Drivers may delete a "request" record once it is decided; after a restart the
    default client's ids continue after the executed ones (from the client table), so a
    new operation is not mistaken for a duplicate (review finding)."""
    net = Net(4, seed=21)
    net.propose("r001", b"first")
    net.run(20, until=lambda: net.all_decided([b"first"]))
    net.storage["r001"] = [x for x in net.storage["r001"] if x.kind != "request"]
    net.crash("r001")
    net.restart("r001")
    req = net.propose("r001", b"second")
    assert req.key == ("r001", "r001", 2)
    net.run(20, until=lambda: net.all_decided([b"second"]))


def test_pooled_requests_signed_with_a_replaced_key_are_dropped() -> None:
    """A member set change that keeps a member's id but not its key (removed, then added
    with a new key) drops that member's pooled requests: a batch carrying them would not
    verify, and pooled requests are not verified again (review finding)."""
    from consensus.quorum import Membership

    net = Net(4, seed=22)
    r = net.replicas["r002"]
    old = r.window_members
    req = net.signed_request("r001", b"old key", client="c", rid=1)
    keep = net.signed_request("r003", b"same key", client="c", rid=1)
    for q in (req, keep):
        r.step(q, sender=q.origin)
    assert {req.key, keep.key} <= set(r.pending)
    r.window_members = Membership.of({**old.as_dict(), "r001": bytes(range(32))})
    r._evict_non_members(old)
    assert req.key not in r.pending and keep.key in r.pending
