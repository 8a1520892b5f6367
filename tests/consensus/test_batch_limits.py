"""Batches are cut by count and by bytes, so a PRE-PREPARE always fits the 4 MiB message
limit; backups judge a batch by the protocol's limits, not by their own batching
configuration; operations above the codec's 1 MiB are refused at submission."""

from __future__ import annotations

import pytest
from pbft_harness import Net

from consensus.batching import MAX_BATCH_BYTES, request_bytes
from consensus.messages import Batch, PrePrepare, batch_digest, encode_message
from consensus.replica import Config, Replica
from consensus.wire import MAX_OP_BYTES

BIG = 900 * 1024  # six of these are 5.3 MiB: more than one message may carry


def big_ops(k: int) -> list[bytes]:
    return [bytes([i]) * BIG for i in range(k)]


def test_large_operations_are_cut_into_batches_that_fit_a_message() -> None:
    net = Net(4, seed=1, config=Config(batch_size=64, batch_timeout=2), wire=True)
    want = big_ops(6)
    for op in want:
        net.propose("r001", op)
    net.run(60, until=lambda: net.all_decided(want))
    net.check_safety()
    sizes = [len(d.batch.requests) for d in net.decided["r002"].values()]
    assert sum(sizes) == 6 and max(sizes) == 2  # 2 MiB budget: two 900 KiB requests
    assert net.undecodable == 0
    for d in net.decided["r002"].values():  # the pre-prepare and certificate both fit
        assert len(encode_message(d.certificate)) < 4 * 1024 * 1024


def test_a_primary_that_ignores_the_byte_budget_loses_its_batches() -> None:
    """What the budget prevents: with a count-only limit the six requests form one
    PRE-PREPARE the codec refuses everywhere, and nothing is decided in that view."""
    cfg = Config(batch_size=64, batch_timeout=2, view_timeout=1000)
    net = Net(4, seed=1, config=cfg, wire=True)
    primary = net.replicas["r000"].primary(0)
    rogue = Config(batch_size=64, batch_timeout=2, view_timeout=1000)
    object.__setattr__(rogue, "max_batch_bytes", 64 * MAX_OP_BYTES)  # past validation
    net.replicas[primary].cfg = rogue
    for op in big_ops(6):
        net.propose(primary, op)
    net.run(30)
    assert net.undecodable > 0 and not any(net.decided[i] for i in net.ids)


def test_one_request_above_the_budget_travels_alone() -> None:
    net = Net(4, seed=2, config=Config(batch_size=64, batch_timeout=2,
                                       max_batch_bytes=10_000))
    want = [b"x" * 4_000, b"y" * 20_000, b"z" * 4_000, b"w" * 4_000]
    for op in want:
        net.propose("r001", op)
    net.run(30, until=lambda: net.all_decided(want))
    batches = [[r.op[:1] for r in d.batch.requests] for d in net.decided["r003"].values()]
    assert batches == [[b"x"], [b"y"], [b"z", b"w"]]


def test_backups_accept_batches_larger_than_their_own_batch_size() -> None:
    """batch_size is each node's local preference: a primary configured for bigger batches
    than a backup is not a faulty primary."""
    net = Net(4, seed=3, config=Config(batch_size=8, batch_timeout=2))
    primary = net.replicas["r000"].primary(0)
    for i in net.ids:
        if i != primary:
            net.replicas[i] = Replica(i, net.members, config=Config(batch_size=1),
                                      verify=net.verify)
    want = [f"op{k}".encode() for k in range(8)]
    for op in want:
        net.propose(primary, op)
    net.run(20, until=lambda: net.all_decided(want))
    assert [len(d.batch.requests) for d in net.decided["r003"].values()] == [8]
    assert all(r.view == 0 and not r.drops for r in net.replicas.values())


def test_a_batch_above_the_protocol_limit_is_dropped() -> None:
    net = Net(4, seed=4)
    primary = net.replicas["r000"].primary(0)
    reqs = tuple(net.signed_request(primary, bytes([k]) * MAX_OP_BYTES, client="c", rid=k)
                 for k in range(1, 4))
    assert sum(map(request_bytes, reqs)) > MAX_BATCH_BYTES
    batch = Batch(0, primary, reqs)
    pp = net.sign(primary, PrePrepare(0, 1, batch_digest(batch), primary, batch=batch))
    backup = next(i for i in net.ids if i != primary)
    net.replicas[backup].step(pp, sender=primary)
    assert net.replicas[backup].drops[primary] == {"bad-batch": 1}


def test_operations_above_the_codec_limit_are_refused_at_submission() -> None:
    net = Net(4, seed=5)
    with pytest.raises(ValueError, match="at most 1048576 bytes"):
        net.replicas["r000"].propose(b"x" * (MAX_OP_BYTES + 1))
    assert not net.replicas["r000"].pending and not net.replicas["r000"].has_ready()
    with pytest.raises(ValueError, match="max_batch_bytes"):
        Config(max_batch_bytes=MAX_BATCH_BYTES + 1)


def test_a_batch_padded_with_junk_evidence_is_dropped() -> None:
    """Evidence counts against the batch limits too: a faulty primary cannot pad a batch
    until its decided record or certificate exceeds what a restart or a state transfer
    can read back (review finding)."""
    from consensus.messages import Evidence

    net = Net(4, seed=6)
    primary = net.replicas["r000"].primary(0)
    backup = next(i for i in net.ids if i != primary)
    junk = (Evidence(b"a" * 600, b"b" * 600),)
    many = tuple(Evidence(bytes([k]), bytes([k + 1])) for k in range(17))
    for k, evidence in enumerate((junk, many), start=1):
        batch = Batch(0, primary, (), evidence)
        pp = net.sign(primary, PrePrepare(0, k, batch_digest(batch), primary, batch=batch))
        net.replicas[backup].step(pp, sender=primary)
    assert net.replicas[backup].drops[primary] == {"bad-batch": 2}


def test_request_bytes_counts_utf8_bytes() -> None:
    from consensus.messages import Request

    req = Request("\U0001f600" * 64, 1, b"", "r000", bytes(64))
    assert request_bytes(req) >= len(encode_message(req))


def test_one_member_cannot_fill_the_request_pool() -> None:
    """Pooled requests are bounded in bytes per origin: a faulty member flooding signed
    requests is dropped (``origin-quota``) once its share is full, and the pool still
    takes everyone else's; executing its requests frees the share."""
    cfg = Config(max_pending_bytes_per_origin=10_000)
    net = Net(4, seed=7, config=cfg)
    primary = net.replicas["r000"].primary(0)
    r = next(net.replicas[i] for i in net.ids if i not in (primary, "r003"))
    flood = [net.signed_request("r003", b"x" * 3_000, client="c", rid=k) for k in range(1, 6)]
    for req in flood:
        r.step(req, sender="r003")
    assert r.drops["r003"] == {"origin-quota": 2}
    assert sum(k[0] == "r003" for k in r.pending) == 3
    assert 0 < r.pooled_bytes["r003"] <= 10_000
    honest = net.signed_request("r001", b"y" * 3_000, client="c", rid=1)
    r.step(honest, sender="r001")
    assert honest.key in r.pending
    for k in list(r.pending):
        r._unpool(k)
    assert r.pooled_bytes == {} and not r.pending


def test_state_replies_respect_max_reply_bytes() -> None:
    """A node that must keep messages small (the real node: under 1 MiB) sets
    max_reply_bytes; a lagging replica still catches up, in more replies."""
    from consensus.messages import StateReply

    cfg = Config(checkpoint_interval=4, window=16, batch_size=1, max_reply_bytes=64 * 1024)
    net = Net(4, seed=8, config=cfg, wire=True)
    sizes: list[int] = []

    def measure(src, dst, msg):
        if isinstance(msg, StateReply):
            sizes.append(len(encode_message(msg)))
        return True

    net.filters.append(measure)
    net.crash("r003")
    want = [bytes([k]) * 20_000 for k in range(12)]
    for op in want:
        net.propose("r001", op)
    net.run(200, until=lambda: net.all_decided(want, who=["r000", "r001", "r002"]))
    net.restart("r003")
    net.run(400, until=lambda: net.all_decided(want))
    assert sizes and max(sizes) <= 64 * 1024
    net.check_safety()
