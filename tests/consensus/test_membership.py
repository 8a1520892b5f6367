"""Membership changes by committed, quorum-endorsed operations, effective at a checkpoint
boundary; n, f and quorums follow the member set."""

from __future__ import annotations

import dataclasses

import pytest
from pbft_harness import Net

from consensus.certificate import (
    CertificateError,
    NotAMember,
    NotEnoughSigners,
    verify,
    verify_membership,
)
from consensus.membership import (
    MEMBERS_CLIENT,
    REJECTED,
    endorsement_bytes,
    member_op,
)
from consensus.messages import Member
from consensus.quorum import Membership
from consensus.replica import Config

CFG = Config(checkpoint_interval=4, window=8, batch_size=1, view_timeout=20,
             resend_interval=4)


def endorse(net: Net, action: str, member: str, key: bytes, by: list[str]) -> bytes:
    members = net.replicas[by[0]].state.members
    data = endorsement_bytes(members, action, member, key)
    return member_op(action, member, key, {m: net.signers[m].sign(data) for m in by})


def fill(net: Net, k: int, tag: str, who: list[str] | None = None) -> list[bytes]:
    who = who or net.ids[:4]
    want = [f"{tag}{i}".encode() for i in range(k)]
    for i, op in enumerate(want):
        net.propose(who[i % len(who)], op)
    net.run(400, until=lambda: net.all_decided(want, who=who))
    return want


def test_add_then_remove_a_member() -> None:
    net = Net(4, seed=1, config=CFG)
    newcomer = net.add_node("r004")
    op = endorse(net, "add", "r004", newcomer.public_key, ["r000", "r001", "r002"])
    net.propose("r000", op, client=MEMBERS_CLIENT, rid=1)
    fill(net, 24, "a")
    net.run(40)
    for i in net.ids:
        r = net.replicas[i]
        assert r.members.n == 5 and r.members.quorum == 4, i
    joined = net.replicas["r004"]
    assert joined.last_executed == net.replicas["r000"].last_executed
    last = net.decided["r000"][max(net.decided["r000"])]
    assert last.members.n == 5
    verify(last.certificate, last.members)
    # the newcomer votes now: it signs commits that end up in certificates
    fill(net, 8, "b")
    signers = {c.sender for d in net.decided["r001"].values() for c in d.certificate.commits}
    assert "r004" in signers
    # remove r003 with endorsements from a quorum (4) of the five
    key3 = net.members["r003"]
    op = endorse(net, "remove", "r003", key3, ["r000", "r001", "r002", "r004"])
    net.propose("r001", op, client=MEMBERS_CLIENT, rid=2)
    stay = ["r000", "r001", "r002", "r004"]
    # a request by r003 that only one backup pooled (the primary never saw it): once r003
    # is removed no batch may carry it, so that backup must forget it, not time out on it
    backup = next(i for i in stay if i != net.replicas[i].primary(net.replicas[i].view))
    orphan = net.signed_request("r003", b"orphan", client="r003", rid=99)
    net.replicas[backup].step(orphan, sender="r003")
    assert orphan.key in net.replicas[backup].pending
    fill(net, 24, "c", who=stay)
    net.run(40)
    for i in stay:
        r = net.replicas[i]
        assert r.members.ids == tuple(stay) and r.members.quorum == 3
    assert not net.replicas["r003"].voting
    with pytest.raises(ValueError, match="not a member"):
        net.replicas["r003"].propose(b"too late")
    net.crash("r003")                    # the removed member is not needed any more
    net.run(200)                         # idle: nobody may be waiting for anything
    assert orphan.key not in net.replicas[backup].pending
    assert {(net.replicas[i].view, net.replicas[i].in_view_change) for i in stay} == \
        {(net.replicas["r000"].view, False)}
    late = net.signed_request("r003", b"late", client="r003", rid=100)
    net.replicas[backup].step(late, sender="r000")         # relayed by a member
    assert net.replicas[backup].drops["r000"] == {"bad-request-signature": 1}
    fill(net, 8, "d", who=stay)
    net.check_safety()


def test_unendorsed_change_is_rejected_deterministically() -> None:
    net = Net(4, seed=2, config=CFG)
    newcomer = net.add_node("r004")
    op = endorse(net, "add", "r004", newcomer.public_key, ["r000", "r001"])  # 2 < quorum
    net.propose("r000", op, client=MEMBERS_CLIENT, rid=1)
    net.run(20, until=lambda: all(net.decided[i] for i in net.ids[:4]))
    results = {i: next(iter(net.decided[i].values())).results for i in net.ids[:4]}
    assert len(set(results.values())) == 1
    assert next(iter(results.values()))[0].startswith(REJECTED)
    fill(net, 16, "x")
    assert all(net.replicas[i].members.n == 4 for i in net.ids)
    assert net.replicas["r004"].sent_count < 50   # an observer only asks for state


def test_certificates_after_a_change_need_the_new_member_set() -> None:
    net = Net(4, seed=3, config=CFG)
    newcomer = net.add_node("r004")
    op = endorse(net, "add", "r004", newcomer.public_key, ["r001", "r002", "r003"])
    net.propose("r000", op, client=MEMBERS_CLIENT, rid=1)
    fill(net, 30, "m")
    late = [d for d in net.decided["r002"].values() if d.members.n == 5]
    assert late
    for d in late:
        verify(d.certificate, d.members)
        if any(c.sender == "r004" for c in d.certificate.commits):
            try:
                verify(d.certificate, net.members)
            except (NotAMember, NotEnoughSigners):
                continue
            raise AssertionError("old member set accepted a new-member certificate")


def test_a_lagging_replica_catches_up_across_a_completed_change() -> None:
    """r003 is down while r004 joins and while the new set takes checkpoints that only
    it can certify (quorum 4 of 5 without r003 needs r004). Restarted, r003 must verify
    the chain of committed changes (each new set certified by the previous one at its
    boundary checkpoint) to accept the newer checkpoint, then catch up and vote again."""
    net = Net(4, seed=4, config=CFG)
    net.crash("r003")
    newcomer = net.add_node("r004")
    op = endorse(net, "add", "r004", newcomer.public_key, ["r000", "r001", "r002"])
    net.propose("r000", op, client=MEMBERS_CLIENT, rid=1)
    up = ["r000", "r001", "r002"]
    fill(net, 30, "a", who=up)
    net.run(40)
    assert all(net.replicas[i].members.n == 5 and net.replicas[i].low > 16
               for i in (*up, "r004"))
    net.restart("r003")
    net.crash("r002")                    # now r003 is needed for every quorum (4 of 5)
    later = fill(net, 8, "b", who=["r000", "r001", "r003", "r004"])
    r3 = net.replicas["r003"]
    assert r3.members.n == 5 and r3.voting
    assert net.all_decided(later, who=["r003"])
    net.check_safety()
    # the chain survives a restart of the replica that learnt it by state transfer
    net.crash("r003")
    net.restart("r003")
    assert net.replicas["r003"].member_chain == r3.member_chain != []


def test_membership_proofs_verify_only_with_the_previous_set() -> None:
    net = Net(4, seed=5, config=CFG)
    newcomer = net.add_node("r004")
    op = endorse(net, "add", "r004", newcomer.public_key, ["r000", "r001", "r002"])
    net.propose("r000", op, client=MEMBERS_CLIENT, rid=1)
    fill(net, 24, "p")
    chain = net.replicas["r001"].member_chain
    assert len(chain) == 1
    mp = chain[0]
    old = Membership.of({i: k for i, k in net.members.items() if i != "r004"})
    new = verify_membership(mp, old)
    assert new.ids == ("r000", "r001", "r002", "r003", "r004")
    evil = Member("r005", net.members["r001"])
    tampered = [
        dataclasses.replace(mp, members=(*mp.members, evil)),          # digest mismatch
        dataclasses.replace(mp, members=mp.members[::-1]),             # not canonical
        dataclasses.replace(mp, body_digest=bytes(32)),
    ]
    for bad in tampered:
        with pytest.raises(CertificateError):
            verify_membership(bad, old)
    with pytest.raises(CertificateError):
        verify_membership(mp, new)      # the new set did not sign its own boundary
