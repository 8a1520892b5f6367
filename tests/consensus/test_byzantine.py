"""f Byzantine replicas of mixed strategies at n = 100, including three faulty primaries
in a row (silent, equivocating, silent)."""

from __future__ import annotations

import random

from pbft_harness import STRATEGIES, Net

from consensus.replica import Config


def test_n100_with_f_byzantine_of_mixed_strategies() -> None:
    n, f = 100, 33
    cfg = Config(batch_size=16, view_timeout=10, resend_interval=8)
    probe = Net(n, seed=1, config=cfg).replicas["r000"]
    first = [probe.primary(v) for v in range(3)]
    byz = {first[0]: "silent", first[1]: "equivocate", first[2]: "silent"}
    rng = random.Random(7)
    for k, i in enumerate(x for x in rng.sample(probe.members.ids, n) if x not in byz):
        if len(byz) == f:
            break
        byz[i] = STRATEGIES[k % len(STRATEGIES)]
    net = Net(n, seed=1, config=cfg, byzantine=byz, inline_sign=True)
    want = [f"op{k}".encode() for k in range(24)]
    for k, op in enumerate(want):
        net.propose(net.honest[k % len(net.honest)], op)
    ticks = net.run(1000, until=lambda: net.all_decided(want))
    net.check_safety()
    # three growing timeouts (10, 20, 40), re-sends every 8 ticks, then agreement
    assert ticks <= 10 + 20 + 40 + 3 * 8
    r = net.replicas[net.honest[0]]
    assert r.view >= 3 and all(r.state.reputation.failures.get(p) for p in first)
