"""Normal case (TOCS 4.2): agreement for n = 4 .. 100, batching, de-duplication, and the
driver contract (sign requests, persist before send)."""

from __future__ import annotations

import pytest
from pbft_harness import Net

from consensus.effects import Ready
from consensus.messages import Batch, Prepare, PrePrepare, Request, batch_digest, encode_message
from consensus.replica import Config, Replica
from consensus.state import DUPLICATE


def ops(k: int, tag: str = "op") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(k)]


@pytest.mark.parametrize("n", [4, 7, 10, 31, 100])
def test_normal_case(n: int) -> None:
    net = Net(n, seed=n, config=Config(batch_size=8))
    want = ops(24)
    for k, op in enumerate(want):
        net.propose(net.ids[k % n], op)
    net.run(40, until=lambda: net.all_decided(want))
    net.check_safety()
    assert all(r.view == 0 and not r.in_view_change for r in net.replicas.values())
    assert len(net.decided[net.ids[-1]]) == 3  # 24 requests in batches of 8
    assert all(not r.drops for r in net.replicas.values())


def test_batch_timeout_cuts_partial_batches() -> None:
    net = Net(4, seed=1, config=Config(batch_size=100, batch_timeout=3))
    net.propose("r000", b"a")
    net.propose("r001", b"b")
    net.run(2)
    assert not net.decided["r002"]
    net.run(5, until=lambda: net.all_decided([b"a", b"b"]))
    assert len(net.decided["r002"]) == 1


def test_duplicate_requests_execute_once() -> None:
    net = Net(4, seed=2, config=Config(batch_size=1))
    net.propose("r000", b"x", client="alice", rid=1)
    net.run(5, until=lambda: net.all_decided([b"x"]))
    net.propose("r000", b"x", client="alice", rid=1)   # a retransmission
    net.propose("r000", b"y", client="alice", rid=2)
    net.run(10, until=lambda: net.all_decided([b"y"]))
    done = [r for d in net.decided["r003"].values() for r in d.batch.requests]
    assert [r.key for r in done] == [("r000", "alice", 1), ("r000", "alice", 2)]
    # the same signed request smuggled into a batch twice executes once
    r = net.replicas["r003"]
    req = net.signed_request("r001", b"z", client="bob", rid=7)
    state = r.state
    results = state.execute(state.last_seq + 1, Batch(0, "r000", (req, req)))
    assert results[0] != DUPLICATE and results[1] == DUPLICATE
    assert state.is_duplicate(req)


def test_client_ids_are_local_to_the_member_that_signs_for_them() -> None:
    """Another member submitting the same (client, rid) neither pre-empts nor replaces
    the request: the de-duplication key is (origin, client, rid)."""
    net = Net(4, seed=5, config=Config(batch_size=1))
    net.propose("r001", b"mine", client="alice", rid=1)
    net.propose("r000", b"theirs", client="alice", rid=1)
    net.run(10, until=lambda: net.all_decided([b"mine", b"theirs"]))
    got = {r.key: r.op for d in net.decided["r002"].values() for r in d.batch.requests}
    assert got == {("r001", "alice", 1): b"mine", ("r000", "alice", 1): b"theirs"}


def test_forged_requests_are_dropped_and_counted() -> None:
    """A member relaying a request in another member's name (no valid signature by that
    origin), or a primary batching one, gets nothing executed: the REQUEST is dropped as
    ``bad-request-signature`` and so is the PRE-PREPARE that carries it."""
    net = Net(4, seed=6, config=Config(batch_size=1))
    real = net.signed_request("r001", b"real", client="alice", rid=1)
    forged = Request("alice", 1, b"forged", "r001", real.sig)       # op changed
    unsigned = Request("alice", 2, b"unsigned", "r001")
    for req in (forged, unsigned):
        net.replicas["r002"].step(req, sender="r003")
    assert net.replicas["r002"].drops["r003"] == {"bad-request-signature": 2}
    assert not net.replicas["r002"].pending
    primary = net.replicas["r002"].primary(0)
    batch = Batch(0, primary, (forged,))
    pp = net.sign(primary, PrePrepare(0, 1, batch_digest(batch), primary, batch=batch))
    net.replicas["r002"].step(pp, sender=primary)
    assert net.replicas["r002"].drops[primary] == {"bad-request-signature": 1}
    assert 1 not in net.replicas["r002"].slots or net.replicas["r002"].slots[1].pp is None
    # the real one still executes, once
    net.replicas["r002"].step(real, sender="r003")
    net.run(10, until=lambda: net.all_decided([b"real"], who=["r002"]))


def test_a_non_member_cannot_propose() -> None:
    net = Net(4, seed=7)
    net.add_node("newcomer")
    with pytest.raises(ValueError, match="not a member"):
        net.replicas["newcomer"].propose(b"x")


def test_sign_request_round_trip_and_persist_before_send() -> None:
    net = Net(4, seed=4)
    primary = net.replicas["r000"].primary(0)
    r = net.replicas[primary]
    req = r.propose(b"op")
    rd: Ready = r.ready()     # the request is signed, persisted and sent first
    assert [s.data for s in rd.sign_requests] == [req.signing_bytes()] and not rd.messages
    r.advance(rd)
    r.signed(rd.sign_requests[0].id, net.signers[primary].sign(req.signing_bytes()))
    rd = r.ready()
    sent = [o.msg for o in rd.messages]
    assert [type(m) for m in sent] == [Request] and sent[0].key == req.key
    assert [p.kind for p in rd.persist] == ["request"]
    r.advance(rd)
    r.tick()
    rd = r.ready()
    assert rd.sign_requests and not any(isinstance(o.msg, PrePrepare) for o in rd.messages)
    sr = rd.sign_requests[0]
    r.advance(rd)
    r.signed(sr.id, net.signers[primary].sign(sr.data))
    rd2 = r.ready()
    pps = [o.msg for o in rd2.messages if isinstance(o.msg, PrePrepare)]
    assert len(pps) == 1 and pps[0].signing_bytes() == sr.data
    assert encode_message(pps[0]) in [p.data for p in rd2.persist if p.kind == "msg"]
    r.signed(sr.id, bytes(64))     # unknown / repeated ids are ignored
    assert not r.ready().messages


def test_every_sent_signed_message_was_persisted_first() -> None:
    net = Net(4, seed=5)
    persisted: dict[str, set[bytes]] = {i: set() for i in net.ids}
    orig = net.pump

    def pump(i: str) -> None:
        r = net.replicas[i]
        while r.has_ready():
            rd = r.ready()
            persisted[i].update(p.data for p in rd.persist)
            for o in rd.messages:
                if hasattr(o.msg, "sig"):
                    assert encode_message(o.msg) in persisted[i], o.msg
            r._ready = rd  # hand back to the real pump
            orig(i)

    net.pump = pump  # type: ignore[method-assign]
    for k in range(10):
        net.propose(net.ids[k % 4], f"p{k}".encode())
    net.run(30, until=lambda: net.all_decided([f"p{k}".encode() for k in range(10)]))


def test_bad_input_is_dropped_and_counted_never_raises() -> None:
    net = Net(4, seed=6)
    r: Replica = net.replicas["r001"]
    p = Prepare(0, 1, bytes(32), "r002", bytes(64))
    r.step(p, sender="r002")                      # forged signature
    r.step(object(), sender="r003")               # not a message
    r.step(Prepare(0, 10**6, bytes(32), "r002", bytes(64)), sender="r002")  # out of window
    r.step(Prepare(0, 1, bytes(32), "mallory", bytes(64)), sender="mallory")
    assert r.drops["r002"] == {"bad-signature": 1, "out-of-window": 1}
    assert r.drops["r003"] == {"unknown-type": 1}
    assert r.drops["mallory"] == {"not-member": 1}
