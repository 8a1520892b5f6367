"""View change (TOCS 4.4): silent and equivocating primaries, prepared certificates that
survive a view change, exponential timeouts, replayed and forged messages."""

from __future__ import annotations

import pytest
from pbft_harness import Net

from consensus.messages import Commit, NewView
from consensus.replica import Config

CFG = Config(checkpoint_interval=4, window=8, batch_size=4, view_timeout=10, resend_interval=4)


def primary0(n: int, seed: int) -> str:
    return Net(n, seed=seed, config=CFG).replicas["r000"].primary(0)


@pytest.mark.parametrize("n", [4, 7])
def test_silent_primary_is_replaced(n: int) -> None:
    p = primary0(n, 1)
    net = Net(n, seed=1, config=CFG, byzantine={p: "silent"})
    want = [f"s{k}".encode() for k in range(6)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % len(net.honest)], op)
    net.run(200, until=lambda: net.all_decided(want))
    net.check_safety()
    views = {net.replicas[i].view for i in net.honest}
    assert min(views) >= 1
    # the failed primary is charged in committed state once a batch of the new view runs
    rep = net.replicas[net.honest[0]].state.reputation
    assert rep.failures.get(p, 0) >= 1


@pytest.mark.parametrize("n", [4, 7])
def test_equivocating_primary(n: int) -> None:
    p = primary0(n, 2)
    net = Net(n, seed=2, config=CFG, byzantine={p: "equivocate"})
    want = [f"e{k}".encode() for k in range(8)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % len(net.honest)], op)
    net.run(300, until=lambda: net.all_decided(want))
    net.check_safety()


def test_prepared_batch_survives_view_change() -> None:
    """Everyone prepares batch B at seq 1 in view 0; only r_x gets enough COMMITs to
    decide. The primary then dies. The new view must decide B at seq 1 everywhere."""
    p = primary0(4, 3)
    net = Net(4, seed=3, config=CFG)
    lucky = next(i for i in net.ids if i != p)
    net.filters.append(lambda s, d, m: not isinstance(m, Commit) or d == lucky)
    net.propose(p, b"precious")
    net.run(3)
    assert list(net.decided[lucky]) == [1]
    assert all(not net.decided[i] for i in net.ids if i != lucky)
    decided_batch = net.decided[lucky][1].batch
    net.filters.clear()
    net.crash(p)
    net.propose(lucky, b"next")
    alive = [i for i in net.ids if i != p]
    net.run(200, until=lambda: net.all_decided([b"precious", b"next"], who=alive))
    for i in alive:
        assert net.decided[i][1].batch == decided_batch
        assert net.replicas[i].view >= 1
    net.check_safety()


def test_timeouts_grow_while_views_fail_and_reset_after_progress() -> None:
    net = Net(4, seed=4, config=CFG)
    net.filters.append(lambda s, d, m: not isinstance(m, NewView))  # every new view fails
    r = net.replicas["r001"]
    net.propose("r001", b"x")
    net.filters.append(lambda s, d, m: s != r.primary(0))  # view 0 fails too
    seen: dict[int, int] = {}
    for _ in range(600):
        net.tick()
        if r.in_view_change and r.timer_on:
            seen.setdefault(r.view, r.current_timeout())
    vs = sorted(seen)
    assert len(vs) >= 3
    ts = [seen[v] for v in vs]
    assert ts[0] == 2 * CFG.view_timeout
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False))            # grows while views fail
    assert all((t // CFG.view_timeout).bit_count() == 1 for t in ts)  # by doubling
    net.filters.clear()
    net.run(2000, until=lambda: net.all_decided([b"x"]))
    net.propose("r002", b"y")
    net.run(200, until=lambda: net.all_decided([b"y"]))
    assert r.failed_views == 0 and r.current_timeout() == CFG.view_timeout


@pytest.mark.parametrize("strategy", ["replay", "forge", "garbage-votes"])
def test_replayed_and_forged_messages(strategy: str) -> None:
    net = Net(7, seed=5, config=CFG, byzantine={"r001": strategy, "r004": strategy})
    want = [f"f{k}".encode() for k in range(10)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % len(net.honest)], op)
    net.run(300, until=lambda: net.all_decided(want))
    net.check_safety()
    if strategy == "forge":
        drops = net.replicas["r000"].drops
        assert drops["r001"].get("bad-signature", 0) > 0
