"""Checkpoints, watermarks, garbage collection and state transfer (TOCS 4.3, 6.2)."""

from __future__ import annotations

from pbft_harness import Net

from consensus.messages import (
    Checkpoint,
    CheckpointProof,
    StateReply,
    encode_message,
)
from consensus.replica import Config

CFG = Config(checkpoint_interval=4, window=8, batch_size=1, view_timeout=20,
             resend_interval=4, max_inflight=8)


def ops(k: int, tag: str = "c") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(k)]


def test_stable_checkpoints_collect_garbage() -> None:
    net = Net(4, seed=1, config=CFG)
    want = ops(30)
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4], op)
    net.run(100, until=lambda: net.all_decided(want))
    net.run(10)
    for r in net.replicas.values():
        assert r.low == 28 and r.last_executed == 30
        assert min(r.slots) > r.low and len(r.snapshots) <= 2
        assert r.stable_proof.seq == 28 and len(r.stable_proof.checkpoints) >= 3
    stables = [x for x in net.storage["r001"] if x.kind == "stable"]
    assert [x.seq for x in stables] == [4, 8, 12, 16, 20, 24, 28]


def test_primary_respects_high_watermark() -> None:
    net = Net(4, seed=2, config=CFG)
    net.filters.append(lambda s, d, m: not isinstance(m, Checkpoint))
    want = ops(20)
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4], op)
    net.run(8)
    assert max(net.decided["r000"]) == CFG.window      # low stuck at 0: n <= 0 + L
    assert all(r.low == 0 for r in net.replicas.values())
    net.filters.clear()
    net.run(300, until=lambda: net.all_decided(want))
    net.check_safety()


def test_lagging_replica_catches_up_by_state_transfer() -> None:
    net = Net(4, seed=3, config=CFG)
    cut = "r003" if net.replicas["r000"].primary(0) != "r003" else "r002"
    net.filters.append(lambda s, d, m: cut not in (s, d))
    want = ops(25)
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4] if net.ids[k % 4] != cut else "r000", op)
    others = [i for i in net.ids if i != cut]
    net.run(200, until=lambda: net.all_decided(want, who=others))
    assert net.replicas[cut].last_executed == 0
    net.filters.clear()
    kinds: list[str] = []
    net.filters.append(lambda s, d, m: kinds.append(type(m).__name__) is None)
    net.run(200, until=lambda: net.replicas[cut].last_executed == 25)
    # a small snapshot travels inside the STATE-REPLY (no chunked transfer)
    assert "StateReply" in kinds and "SnapshotChunkRequest" not in kinds
    lag = net.replicas[cut]
    assert lag.state.digest() == net.replicas[others[0]].state.digest()
    # it jumped by a verified snapshot: no decisions below the checkpoint it installed
    assert min(net.decided[cut]) > 4
    net.check_safety()


def test_bogus_state_replies_are_rejected() -> None:
    net = Net(4, seed=4, config=CFG)
    want = ops(12)
    for k, op in enumerate(want):
        net.propose(net.ids[k % 4], op)
    net.run(100, until=lambda: net.all_decided(want))
    fresh = Net(4, seed=4, config=CFG).replicas["r001"]   # same keys, at genesis
    good = net.replicas["r000"]
    proof, snap = good.stable_proof, good.snapshots[good.low][0]
    fresh.step(StateReply(proof, snap + b"x", ()), sender="r000")
    assert fresh.drops["r000"]["bad-snapshot"] == 1
    forged = CheckpointProof(proof.seq, proof.state_digest, proof.checkpoints[:1])
    fresh.step(StateReply(forged, snap, ()), sender="r000")
    assert fresh.drops["r000"]["bad-checkpoint-proof"] == 1
    cert = net.decided["r000"][1].certificate
    bad = type(cert)(cert.seq, cert.view, cert.batch, cert.commits[:1])
    fresh.step(StateReply(CheckpointProof(0, proof.state_digest), b"", (bad,)), sender="r000")
    assert fresh.drops["r000"]["bad-commit-certificate"] == 1
    assert fresh.last_executed == 0
    fresh.step(StateReply(proof, snap, ()), sender="r000")
    assert fresh.last_executed == proof.seq and fresh.low == proof.seq
    assert encode_message(proof)
