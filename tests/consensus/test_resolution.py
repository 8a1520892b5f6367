"""Deterministic conflict resolution: first claim in committed order wins, whatever the
arrival order (INV-005)."""

from __future__ import annotations

from pbft_harness import Net

from consensus.replica import Config
from consensus.resolution import OK, REJECTED, ClaimsStateMachine, claim_op, release_op


def run(seed: int, delay: int) -> Net:
    net = Net(4, seed=seed, config=Config(batch_size=4, batch_timeout=2),
              app_factory=ClaimsStateMachine)
    net.max_delay = delay
    net.propose("r000", claim_op("gpu-1"), client="alice", rid=1)
    net.propose("r001", claim_op("gpu-1"), client="bob", rid=1)
    net.propose("r002", claim_op("gpu-2"), client="bob", rid=2)
    net.propose("r003", release_op("gpu-1"), client="carol", rid=1)
    net.run(300, until=lambda: all(len(net.replicas[i].state.app.outcomes) == 4
                                   for i in net.ids))
    return net


def test_first_in_committed_order_wins_everywhere() -> None:
    for seed, delay in [(1, 0), (2, 3), (3, 8), (4, 5)]:
        net = run(seed, delay)
        apps = [net.replicas[i].state.app for i in net.ids]
        assert all(a.outcomes == apps[0].outcomes for a in apps)
        assert all(a.snapshot() == apps[0].snapshot() for a in apps)
        claims = [o for o in apps[0].outcomes if o[1] in ("alice", "bob") and o[2] == 1]
        winner, loser = claims
        assert winner[3] == OK and loser[3].startswith(REJECTED)
        assert f"held by {winner[1]!r}".encode() in loser[3]
        assert apps[0].holders["gpu-1"][0] == winner[1]
        carol = next(o for o in apps[0].outcomes if o[1] == "carol")
        assert carol[3].startswith(REJECTED)                    # not the holder
        # decisions report the same results
        results = [r for d in sorted(net.decided["r001"].values(), key=lambda d: d.seq)
                   for r in d.results]
        assert results == [o[3] for o in apps[0].outcomes]


def test_snapshot_round_trip_and_malformed_ops() -> None:
    a = ClaimsStateMachine()
    from consensus.messages import Request
    res = a.apply(1, [Request("x", 1, b"\xff"), Request("x", 2, claim_op("r")),
                      Request("y", 1, release_op("r")), Request("x", 3, release_op("r"))])
    assert res[0].startswith(REJECTED) and res[1] == OK and res[2].startswith(REJECTED)
    assert res[3] == OK
    b = ClaimsStateMachine()
    b.restore(a.snapshot())
    assert b.snapshot() == a.snapshot() and b.outcomes == a.outcomes
