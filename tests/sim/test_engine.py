"""The engine: ordering, tie-break, cancellation, replay from a seed."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.engine import Engine, cancel, derive_seed
from sim.network import LogNormal, NetworkConfig
from sim.process import BaseProcess
from sim.world import World


def test_events_run_in_time_order_and_ties_in_schedule_order():
    eng = Engine(1)
    seen = []
    eng.schedule(2.0, seen.append, "c")
    eng.schedule(1.0, seen.append, "a")
    eng.schedule(1.0, seen.append, "b")
    eng.schedule_at(0.5, seen.append, "first")
    assert eng.run() == 4
    assert seen == ["first", "a", "b", "c"]
    assert eng.now == 2.0


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_any_schedule_pops_sorted_by_time_then_sequence(delays):
    eng = Engine(0)
    seen = []
    for i, d in enumerate(delays):
        eng.schedule(d, lambda i=i, d=d: seen.append((eng.now, i)))
    eng.run()
    assert seen == sorted(seen)
    assert all(t == delays[i] for t, i in seen)


def test_scheduling_into_the_past_or_with_bad_delay_raises():
    eng = Engine(1)
    eng.schedule(5.0, lambda: None)
    eng.run()
    with pytest.raises(ValueError):
        eng.schedule_at(4.0, lambda: None)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            eng.schedule(bad, lambda: None)


def test_cancel_until_stop_and_max_events():
    eng = Engine(1)
    seen = []
    h = eng.schedule(1.0, seen.append, "cancelled")
    eng.schedule(2.0, seen.append, "kept")
    eng.schedule(3.0, eng.stop)
    eng.schedule(4.0, seen.append, "after stop")
    cancel(h)
    cancel(None)
    assert eng.run(until=2.5) == 1
    assert eng.now == 2.5  # advanced to `until`
    assert seen == ["kept"]
    eng.run()  # stops at 3.0
    assert eng.now == 3.0 and seen == ["kept"]
    eng.run(max_events=1)
    assert seen == ["kept", "after stop"]
    assert eng.next_time() is None


def test_child_rngs_are_deterministic_and_independent():
    a, b = Engine(7), Engine(7)
    assert a.child_rng("node", 1).random() == b.child_rng("node", 1).random()
    assert a.child_rng("node", 1).random() != a.child_rng("node", 2).random()
    assert derive_seed(7, "x") == derive_seed(7, "x") != derive_seed(8, "x")


class _Gossip(BaseProcess):
    """Forward each message to a random peer; uses ctx.rng and timers."""

    def on_start(self, ctx):
        ctx.set_timer(ctx.rng.uniform(0, 0.1), "kick")

    def on_timer(self, ctx, timer_id):
        ctx.send(ctx.rng.randrange(ctx.n_nodes), ctx.rng.randbytes(8))
        ctx.set_timer(ctx.rng.uniform(0.05, 0.15), "kick")

    def on_message(self, ctx, sender, payload):
        if ctx.rng.random() < 0.9:
            ctx.send(ctx.rng.randrange(ctx.n_nodes), payload + bytes([sender % 256]))


def _trace(seed):
    eng = Engine(seed, trace=True)
    cfg = NetworkConfig(latency=LogNormal(0.05, 0.5), loss=0.05, duplicate=0.05, reorder=0.1)
    world = World(eng, 20, network=cfg)
    for i in range(20):
        world.attach(i, _Gossip())
    world.start()
    world.schedule_crash(3, 0.5, 1.0)
    world.run(3.0)
    return eng.trace_digest(), eng.events


def test_same_seed_same_trace_and_different_seeds_differ():
    d1, n1 = _trace(42)
    d2, n2 = _trace(42)
    d3, _ = _trace(43)
    assert n1 > 500
    assert (d1, n1) == (d2, n2)
    assert d3 != d1


def test_trace_digest_needs_tracing():
    with pytest.raises(RuntimeError):
        Engine(1).trace_digest()
