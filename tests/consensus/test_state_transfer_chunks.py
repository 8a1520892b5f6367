"""Chunked state transfer (TOCS 2002, 6.2): snapshots above the codec's 1 MiB field and
4 MiB message limits travel as a verified manifest plus 256 KiB chunks; STATE-REPLYs
carry only as many commit certificates as fit one message."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from pbft_harness import Net

from consensus.checkpoint import INLINE_SNAPSHOT_BYTES, MAX_OUTSTANDING_CHUNKS, REPLY_BUDGET
from consensus.messages import (
    MessageDecodeError,
    Request,
    SnapshotChunk,
    SnapshotChunkRequest,
    SnapshotManifest,
    SnapshotManifestRequest,
    StateReply,
    StateRequest,
    decode_message,
    encode_message,
)
from consensus.replica import Config
from consensus.state import CHUNK_BYTES, chunk_count, snapshot_parts, state_digest
from identity.canonical import MAX_MESSAGE_BYTES

CFG = Config(checkpoint_interval=4, window=8, batch_size=1, view_timeout=20,
             resend_interval=4, max_inflight=8)
BLOB = 256 * 1024 + 1000  # application bytes each "grow" op adds (not chunk aligned)


class GrowingApp:
    """Each ``grow...`` op appends BLOB deterministic pseudo-random bytes derived from the
    op (other ops append themselves): the application state grows by ~256 KiB per
    request while the requests stay tiny."""

    def __init__(self) -> None:
        self.data = bytearray()

    def apply(self, seq: int, requests: Sequence[Request]) -> list[bytes]:
        for r in requests:
            if r.op.startswith(b"grow"):
                self.data += random.Random(r.op).randbytes(BLOB)
            else:
                self.data += r.op
        return [b"ok" for _ in requests]

    def snapshot(self) -> bytes:
        return bytes(self.data)

    def restore(self, snapshot: bytes) -> None:
        self.data = bytearray(snapshot)


def grow(net: Net, k: int, proposers: list[str]) -> list[bytes]:
    want = [f"grow{i}".encode() for i in range(k)]
    for i, op in enumerate(want):
        net.propose(proposers[i % len(proposers)], op)
    return want


def count(net: Net) -> Counter[str]:
    """Count messages by type (a keep-everything filter)."""
    seen: Counter[str] = Counter()

    def f(src: str, dst: str, msg: Any) -> bool:
        seen[type(msg).__name__] += 1
        if isinstance(msg, StateReply):
            seen["reply-bytes-max"] = max(seen["reply-bytes-max"], len(encode_message(msg)))
            seen["inline-snapshots"] += bool(msg.snapshot)
        return True

    net.filters.append(f)
    return seen


def build_big_state(seed: int, lag: str, k: int = 14) -> tuple[Net, list[str]]:
    """Four replicas with a ~3.5 MiB application state; ``lag`` was down throughout."""
    net = Net(4, seed=seed, config=CFG, wire=True, app_factory=GrowingApp)
    net.crash(lag)
    others = [i for i in net.ids if i != lag]
    want = grow(net, k, others)
    net.run(300, until=lambda: net.all_decided(want, who=others))
    net.run(5)
    return net, others


def test_single_reply_cannot_carry_a_multi_mib_snapshot() -> None:
    """What the chunks are for: the old STATE-REPLY with the whole snapshot inside is
    refused by the codec, so a lagging replica could never install it."""
    net, others = build_big_state(1, "r003")
    good = net.replicas[others[0]]
    snap = good.snapshots[good.low][0]
    assert len(snap) > 3 * 1024 * 1024
    wire = encode_message(StateReply(good.stable_proof, snap, ()))
    with pytest.raises(MessageDecodeError):
        decode_message(wire)


def test_lagging_replica_catches_up_by_chunked_transfer() -> None:
    lag = "r003"
    net, others = build_big_state(2, lag)
    good = net.replicas[others[0]]
    size = len(snapshot_parts(good.snapshots[good.low][0])[0])
    assert size > 3 * 1024 * 1024
    seen = count(net)
    net.restart(lag)
    t = net.run(100, until=lambda: net.replicas[lag].last_executed == good.last_executed)
    r = net.replicas[lag]
    assert r.state.digest() == good.state.digest()
    assert bytes(r.state.app.data) == bytes(good.state.app.data)
    assert r.low == good.low and r.xfer is None
    n = chunk_count(size)
    assert seen["SnapshotManifest"] == 1 and seen["SnapshotChunk"] == n
    assert seen["SnapshotChunkRequest"] == n and seen["inline-snapshots"] == 0
    assert seen["reply-bytes-max"] <= MAX_MESSAGE_BYTES
    assert net.undecodable == 0
    assert all(not any(k.startswith("bad") for k in d) for d in r.drops.values())
    assert t <= 2  # no loss, no delay: within the restart's first ticks
    net.check_safety()
    # the installed multi-MiB stable snapshot survives a crash (local records, no limit)
    net.crash(lag)
    net.restart(lag)
    again = net.replicas[lag]
    assert again.low == good.low and again.state.digest() == good.state.digest()


def test_corrupt_chunks_are_dropped_and_the_transfer_finishes_from_honest_peers() -> None:
    lag, bad = "r003", "r001"
    net, others = build_big_state(3, lag)
    good = net.replicas["r000"]
    enqueue = net._enqueue

    def corrupt(src: str, dst: str, msg: Any) -> None:
        if src == bad and isinstance(msg, SnapshotChunk):
            msg = dataclasses.replace(msg, data=bytes([msg.data[0] ^ 1]) + msg.data[1:])
        enqueue(src, dst, msg)

    net._enqueue = corrupt  # type: ignore[method-assign]
    seen = count(net)
    net.restart(lag)
    net.run(100, until=lambda: net.replicas[lag].last_executed == good.last_executed)
    r = net.replicas[lag]
    assert r.state.digest() == good.state.digest()
    bad_chunks = r.drops[bad]["bad-chunk"]  # the requests it had outstanding, then skipped
    assert 1 <= bad_chunks <= MAX_OUTSTANDING_CHUNKS
    assert not any(k.startswith("bad") for i in net.ids if i != bad
                   for k in r.drops.get(i, {}))
    size = len(snapshot_parts(good.snapshots[good.low][0])[0])
    assert seen["SnapshotChunk"] == chunk_count(size) + bad_chunks
    net.check_safety()


def test_unanswered_chunk_requests_move_to_other_peers() -> None:
    """A peer that never answers chunk or manifest requests costs one timeout
    (``resend_interval`` ticks), then it is asked only when no other peer is left."""
    lag, mute = "r003", "r000"
    net, others = build_big_state(4, lag)
    good = net.replicas["r001"]
    net.filters.append(lambda s, d, m: not (s == mute and isinstance(
        m, (SnapshotChunk, SnapshotManifest))))
    seen = count(net)
    net.restart(lag)
    t = net.run(200, until=lambda: net.replicas[lag].last_executed == good.last_executed)
    assert net.replicas[lag].state.digest() == good.state.digest()
    asked = seen["SnapshotChunkRequest"] + seen["SnapshotManifestRequest"]
    assert asked > seen["SnapshotChunk"] + seen["SnapshotManifest"]  # some were re-asked
    assert t <= 2 * CFG.resend_interval  # one timeout, then the mute peer is asked last
    net.check_safety()


def test_bad_manifests_and_stray_chunks_are_counted_not_raised() -> None:
    lag = "r003"
    net, others = build_big_state(5, lag, k=4)
    net.run(10)
    good = net.replicas["r000"]
    fresh = Net(4, seed=5, config=CFG, app_factory=GrowingApp).replicas[lag]  # genesis
    proof = good.stable_proof
    fresh.step(StateReply(proof, b"", ()), sender="r000")
    x = fresh.xfer
    assert x is not None and x.proof == proof
    asked = [o.msg for o in fresh.ready().messages]
    assert [type(m) for m in asked] == [SnapshotManifestRequest]
    good.step(asked[0], sender=lag)
    (m,) = [o.msg for o in good.ready().messages]
    assert isinstance(m, SnapshotManifest) and m.seq == proof.seq
    fresh.step(dataclasses.replace(m, size=m.size + 1), sender="r001")
    fresh.step(dataclasses.replace(m, members=m.members + b"\x00"), sender="r002")
    assert fresh.drops["r001"]["bad-manifest"] == 1 and fresh.drops["r002"]["bad-manifest"] == 1
    fresh.step(SnapshotChunk(proof.seq, 0, b"early"), sender="r001")
    assert fresh.drops["r001"]["stale-chunk"] == 1
    fresh.step(m, sender="r000")
    assert fresh.xfer is not None and fresh.xfer.manifest == m
    fresh.step(SnapshotChunk(proof.seq, 99, b"x"), sender="r000")
    fresh.step(SnapshotChunk(proof.seq + 4, 0, b"x"), sender="r000")
    assert fresh.drops["r000"]["stale-chunk"] == 2
    # a non-member cannot use a replica as a chunk server
    good.step(SnapshotChunkRequest(proof.seq, 0), sender="stranger")
    assert good.drops["stranger"]["not-member"] == 1 and not good.ready().messages
    good.step(SnapshotChunkRequest(proof.seq, 10**6), sender=lag)
    assert good.drops[lag]["bad-chunk-index"] == 1
    # serve the rest by hand: the fresh replica installs and matches the checkpoint
    for _ in range(10):
        for o in fresh.ready().messages:
            if isinstance(o.msg, SnapshotChunkRequest):
                good.step(o.msg, sender=lag)
                for back in good.ready().messages:
                    fresh.step(back.msg, sender="r000")
    assert fresh.last_executed == proof.seq and fresh.low == proof.seq
    assert fresh.state.digest() == proof.state_digest


def test_small_snapshots_still_travel_inline() -> None:
    net = Net(4, seed=6, config=CFG, wire=True, app_factory=GrowingApp)
    lag = "r003"
    net.crash(lag)
    others = [i for i in net.ids if i != lag]
    want = [f"small{k}".encode() * 1000 for k in range(10)]
    for k, op in enumerate(want):
        net.propose(others[k % 3], op)
    net.run(100, until=lambda: net.all_decided(want, who=others))
    net.run(5)
    good = net.replicas["r000"]
    assert 0 < len(good.snapshots[good.low][0]) <= INLINE_SNAPSHOT_BYTES
    seen = count(net)
    net.restart(lag)
    net.run(50, until=lambda: net.replicas[lag].last_executed == good.last_executed)
    assert seen["inline-snapshots"] >= 1 and seen["SnapshotChunk"] == 0
    assert net.replicas[lag].state.digest() == good.state.digest()


def test_state_reply_carries_only_the_certificates_that_fit() -> None:
    """Seven decided 900 KiB requests are 6.3 MiB of certificates: the reply carries
    what fits one message and the requester pulls the rest."""
    cfg = Config(checkpoint_interval=8, window=16, batch_size=1, resend_interval=4)
    net = Net(4, seed=7, config=cfg, wire=True)
    want = [bytes([i]) * (900 * 1024) for i in range(7)]
    for op in want:
        net.propose("r001", op)
    net.run(100, until=lambda: net.all_decided(want))
    good = net.replicas["r000"]
    assert good.low == 0 and good.last_executed == 7
    total = sum(len(encode_message(good.slots[q].cert)) for q in range(1, 8))
    assert total > MAX_MESSAGE_BYTES  # the old reply (all of them) would be refused
    fresh = Net(4, seed=7, config=cfg).replicas["r003"]
    rounds = 0
    while fresh.last_executed < 7:
        rounds += 1
        assert rounds <= 4
        good.step(StateRequest(fresh.last_executed + 1), sender="r003")
        (out,) = good.ready().messages
        data = encode_message(out.msg)
        assert len(data) <= REPLY_BUDGET
        fresh.step(decode_message(data), sender="r000")
    assert rounds >= 2
    assert fresh.state.digest() == good.state.digest()


def test_body_digest_is_over_chunk_hashes() -> None:
    app = GrowingApp()
    app.data = bytearray(random.Random(1).randbytes(3 * CHUNK_BYTES + 5))
    net = Net(1, seed=8, config=CFG)
    r = net.replicas["r000"]
    r.state.app = app
    snap = r.state.snapshot()
    d = state_digest(snap)
    body = bytearray(snapshot_parts(snap)[0])
    body[2 * CHUNK_BYTES] ^= 1  # one bit in one chunk changes the digest
    from consensus.state import join_snapshot
    _, mem, pend = snapshot_parts(snap)
    assert state_digest(join_snapshot(bytes(body), mem, pend)) != d


def test_serving_state_is_limited_per_peer() -> None:
    """A STATE-REQUEST costs its sender a few bytes and the server up to a whole reply:
    a member flooding them gets a few replies per ``resend_interval`` and the rest is
    dropped and counted (``serve-limit``); the next window serves again."""
    from consensus.checkpoint import SERVE_LIMITS
    from consensus.messages import StateReply, StateRequest

    net = Net(4, seed=31, config=Config(checkpoint_interval=4, window=8, batch_size=1))
    want = [f"op{k}".encode() for k in range(6)]
    for op in want:
        net.propose("r001", op)
    net.run(50, until=lambda: net.all_decided(want))
    server = net.replicas["r000"]
    replies: list[StateReply] = []
    net.filters.append(lambda src, dst, m: not (isinstance(m, StateReply) and src == "r000"
                                                and dst == "r003" and replies.append(m)))
    server.served.clear()  # a fresh window (the run above may have served r003)
    server.drops.pop("r003", None)
    for _ in range(50):
        server.step(StateRequest(1), sender="r003")
        net.pump("r000")
    assert len(replies) == SERVE_LIMITS[0]
    assert server.drops["r003"] == {"serve-limit": 50 - SERVE_LIMITS[0]}
    for _ in range(server.cfg.resend_interval):
        server.tick()
    server.step(StateRequest(1), sender="r003")
    net.pump("r000")
    assert len(replies) == SERVE_LIMITS[0] + 1
