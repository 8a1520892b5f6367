"""node.driver: four replicas over real libp2p transports on loopback, sqlite storage.

Signing uses in-process keys here (the HSM path is covered by the process tests); the
transport, storage, codec and pump are the real ones.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair

from consensus import certificate
from consensus.messages import batch_digest, decode_message
from consensus.replica import Config, Replica
from identity.did import peer_id_from_public_key
from identity.soft import SoftSigner
from node.driver import CHANNEL, ConsensusDriver
from node.storage import Storage, verify_audit_chain
from node.transport.host import LibP2PTransport


def decided_value(certificate: bytes) -> bytes:
    return batch_digest(decode_message(certificate).batch)


def key_pair(seed: bytes) -> KeyPair:
    priv = Ed25519PrivateKey.from_bytes(seed)
    return KeyPair(priv, priv.get_public_key())


async def pump(transport: LibP2PTransport, driver: ConsensusDriver) -> None:
    async for msg in transport.inbound:
        if msg.channel == CHANNEL:
            driver.on_frame(msg.peer_id, msg.payload)


async def test_four_replicas_decide_identically_over_libp2p(tmp_path):
    seeds = [bytes([i + 1]) * 32 for i in range(4)]
    signers = [SoftSigner(s) for s in seeds]
    members = {peer_id_from_public_key(s.public_key): s.public_key for s in signers}
    transports = [LibP2PTransport(key_pair(s), ["/ip4/127.0.0.1/tcp/0"], [CHANNEL])
                  for s in seeds]
    stores = [Storage(tmp_path / f"n{i}.db", digest_of=decided_value) for i in range(4)]
    drivers = []
    executed = [0, 0, 0, 0]
    target = {"seq": None}
    all_executed = trio.Event()

    def on_decision(i: int, decision) -> None:
        executed[i] = decision.seq
        if target["seq"] is not None and min(executed) >= target["seq"]:
            all_executed.set()

    for i, (signer, t, store) in enumerate(zip(signers, transports, stores, strict=True)):
        assert t.peer_id == peer_id_from_public_key(signer.public_key)
        replica = Replica(t.peer_id, members, config=Config(view_timeout=200))
        drivers.append(ConsensusDriver(
            replica, persist=store.append_records,
            sign_all=lambda datas, s=signer: [s.sign(d) for d in datas],
            send=t.send, tick_s=0.01, on_decision=lambda d, i=i: on_decision(i, d)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for t, d in zip(transports, drivers, strict=True):
                await nursery.start(t.run)
                await nursery.start(d.run)
                nursery.start_soon(pump, t, d)
            for t in transports:
                for other in transports:
                    if other is not t:
                        t.add_peer_addrs(other.peer_id, [other.listen_addrs()[0].split("/p2p/")[0]])
            decisions = []
            for i in range(20):  # proposals from every replica, primary or not
                decisions.append(await drivers[i % 4].propose(b"op-%d" % i))
            # Large operations: frames far above yamux's 256 KiB initial window. (Frames
            # of 2 MiB, two 1 MiB operations in one batch, stall py-libp2p 0.8.1's
            # yamux now and then: README, Known limits.)
            big = [bytes([k]) * (450 * 1024) for k in range(2)]
            async with trio.open_nursery() as inner:
                for k, op in enumerate(big):
                    async def submit(op=op, k=k):
                        decisions.append(await drivers[k % 4].propose(op))
                    inner.start_soon(submit)
            assert not any(d.send_errors for d in drivers)
            for d in decisions:
                batch = certificate.verify(d.certificate, members)
                assert batch == d.batch
            # Every replica executes the same log, whoever proposed.
            last = target["seq"] = max(d.seq for d in decisions)
            if min(executed) < last:
                await all_executed.wait()
            nursery.cancel_scope.cancel()
    logs = [[(e.seq, e.entry_hash) for e in s.audit_entries(1, last)] for s in stores]
    assert all(log == logs[0] for log in logs) and len(logs[0]) == last
    for s in stores:
        verify_audit_chain(s.audit_entries(), decided_value)
    ops = [r.op for d in decisions for r in d.batch.requests]
    assert set(ops) >= {b"op-%d" % i for i in range(20)} | set(big)


ME, PEER = SoftSigner(bytes([7]) * 32), SoftSigner(bytes([8]) * 32)


def offline(members_of: tuple[SoftSigner, ...] = (ME, PEER),
            send=lambda peer, channel, data: True) -> tuple[Replica, ConsensusDriver]:
    """ME's replica (member set: ``members_of``) and its driver, not running: the test
    carries out the replica's effects by hand (:func:`drain`)."""
    members = {peer_id_from_public_key(s.public_key): s.public_key for s in members_of}
    replica = Replica(peer_id_from_public_key(ME.public_key), members)
    driver = ConsensusDriver(replica, persist=lambda records: None,
                             sign_all=lambda datas: [ME.sign(d) for d in datas],
                             send=send, tick_s=0.01)
    return replica, driver


async def drain(replica: Replica, driver: ConsensusDriver) -> None:
    while replica.has_ready():
        await driver._carry_out(replica.ready())


async def propose_noting(driver: ConsensusDriver, error: type, failures: list[str]) -> None:
    try:
        await driver.propose(b"op")
    except error as exc:
        failures.append(str(exc))


async def test_propose_refuses_what_the_mesh_could_never_decide():
    """A non-member (it cannot sign requests) and an operation above the codec's 1 MiB
    get a one-line ProposeError at once, not a request that waits forever."""
    from consensus.wire import MAX_OP_BYTES
    from node.driver import NotAMemberError, ProposeError

    _replica, member = offline((ME,))
    with pytest.raises(ProposeError, match="at most 1048576 bytes"):
        await member.propose(b"x" * (MAX_OP_BYTES + 1))
    _replica, outsider = offline((PEER,))
    with pytest.raises(NotAMemberError, match="not a member"):
        await outsider.propose(b"op")


async def test_a_send_the_transport_refuses_is_counted_not_fatal():
    """A frame over the transport's limit is a local fault: the driver logs and counts
    it (``send_errors``) and keeps pumping; it must not take the node down."""
    def refuse(peer: str, channel: str, data: bytes) -> bool:
        raise ValueError(f"frame of {len(data)} bytes over 10")

    replica, driver = offline(send=refuse)
    replica.propose(b"op")
    await drain(replica, driver)
    assert driver.send_errors == {"Request": 1}


async def test_a_waiting_operation_fails_when_the_node_leaves_the_member_set():
    """Removed from the member set, the replica drops this node's pooled requests; the
    driver then fails the waiting proposals with NotAMemberError instead of hanging."""
    from consensus.quorum import Membership
    from node.driver import NotAMemberError

    replica, driver = offline()
    failures: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(propose_noting, driver, NotAMemberError, failures)
            await trio.testing.wait_all_tasks_blocked()
            # a membership change took effect without this node
            replica.window_members = Membership.of(
                {peer_id_from_public_key(PEER.public_key): PEER.public_key})
            await drain(replica, driver)
    assert failures and "left the member set" in failures[0]


async def test_an_operation_executed_inside_a_snapshot_does_not_wait_forever():
    """A node that fell behind installs a snapshot that already executed its request: no
    Decision is emitted for it, so the driver ends the wait with a ProposeError saying
    so (instead of waiting forever)."""
    from consensus.state import _Client
    from node.driver import ProposeError

    replica, driver = offline()
    failures: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(propose_noting, driver, ProposeError, failures)
            await trio.testing.wait_all_tasks_blocked()
            await drain(replica, driver)
            assert not failures  # pooled, not executed: still waiting
            # what installing a snapshot that contains the request does to the state
            (req,) = replica.pending.values()
            restored = _Client()
            restored.record(req.rid, b"")
            replica.state.clients[(req.origin, req.client)] = restored
            await driver._carry_out(replica.ready())
    assert failures and "state transfer" in failures[0]
