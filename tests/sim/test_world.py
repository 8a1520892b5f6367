"""Hosts and the world: timers, crash and restart, disk, inject, context rules."""

import pytest

from sim.cpu import CostModel
from sim.engine import Engine
from sim.network import Constant, NetworkConfig
from sim.process import BaseProcess, Process
from sim.world import World

FREE = CostModel(sign_s=0, verify_s=0, handle_s=0, timer_s=0, encode_s=0, send_s=0,
                 encode_byte_s=0, decode_byte_s=0, persist_s=0)


class _Pinger(BaseProcess):
    """Every 0.1 s sends b'tick' to every other node; records what it receives."""

    def __init__(self):
        self.got, self.restarted = [], 0

    def on_start(self, ctx):
        ctx.set_timer(0.1, "tick")

    def on_timer(self, ctx, timer_id):
        ctx.broadcast([i for i in range(ctx.n_nodes) if i != ctx.node_id], b"tick")
        ctx.set_timer(0.1, "tick")

    def on_message(self, ctx, sender, payload):
        self.got.append((round(ctx.now, 6), sender))

    def on_restart(self, ctx):
        self.restarted += 1
        ctx.persist("restarts", bytes([self.restarted]))
        self.on_start(ctx)


def _world(n=3, latency=0.01):
    world = World(Engine(5), n, network=NetworkConfig(latency=Constant(latency)), costs=FREE)
    procs = [_Pinger() for _ in range(n)]
    for i, p in enumerate(procs):
        world.attach(i, p)
    world.start()
    return world, procs


def test_process_protocol_is_satisfied_by_base():
    assert isinstance(_Pinger(), Process)


def test_crash_drops_messages_to_and_from_node_until_restart():
    world, procs = _world()
    world.schedule_crash(1, 1.0, 2.0)
    world.run(3.0)
    to_1 = [t for t, s in procs[1].got]
    from_1 = [t for t, s in procs[0].got if s == 1]
    assert not [t for t in to_1 if 1.0 <= t < 2.0]
    # (a tick sent just before the crash arrives at ~1.01; after the restart at 2.0 the
    # first tick leaves at 2.1)
    assert not [t for t in from_1 if 1.02 <= t < 2.1]
    assert [t for t in to_1 if t > 2.0] and [t for t in from_1 if t > 2.1]
    assert procs[1].restarted == 1
    assert world.hosts[1].disk["restarts"] == b"\x01"
    assert world.dropped_down > 0


def test_messages_leaving_after_a_crash_are_dropped():
    class Slow(BaseProcess):
        def on_start(self, ctx):
            if ctx.node_id == 0:
                ctx.charge(1.0)  # the handler "runs" until t=1.0
                ctx.send(1, b"late")

        def on_message(self, ctx, sender, payload):
            got.append(payload)

    got = []
    world = World(Engine(1), 2, network=NetworkConfig(latency=Constant(0.0)), costs=FREE)
    world.attach(0, Slow())
    world.attach(1, Slow())
    world.start()
    world.schedule_crash(0, 0.5)
    world.run(2.0)
    assert got == []


def test_restart_with_factory_gets_a_fresh_process_and_keeps_disk():
    made = []

    def factory(node):
        made.append(_Pinger())
        return made[-1]

    world = World(Engine(1), 2, network=NetworkConfig(latency=Constant(0.01)), costs=FREE)
    old = _Pinger()
    world.attach(0, old, factory=factory)
    world.attach(1, _Pinger())
    world.start()
    world.schedule_crash(0, 0.55, 1.0)
    world.run(1.5)
    assert len(made) == 1 and world.hosts[0].process is made[0]
    assert made[0].restarted == 1 and world.hosts[0].disk["restarts"] == b"\x01"
    assert not [t for t, _ in old.got if t > 0.55]


def test_timers_replace_cancel_and_die_with_crash():
    class T(BaseProcess):
        def __init__(self):
            self.fired = []

        def on_start(self, ctx):
            ctx.set_timer(1.0, "a")
            ctx.set_timer(2.0, "a")  # replaces
            ctx.set_timer(1.5, "b")
            ctx.cancel_timer("b")
            ctx.set_timer(3.0, "c")

        def on_timer(self, ctx, timer_id):
            self.fired.append((ctx.now, timer_id))

    world = World(Engine(1), 1, costs=FREE)
    world.attach(0, p := T())
    world.start()
    world.schedule_crash(0, 2.5, 2.6)
    world.run(10.0)
    # "c" (due 3.0) died with the crash; the restart re-ran on_start at 2.6
    assert p.fired == [(2.0, "a"), (4.6, "a"), (5.6, "c")]


def test_inject_runs_as_cpu_work_and_refuses_down_nodes():
    world, procs = _world(2)
    seen = []
    world.engine.schedule_at(0.5, lambda: seen.append(world.inject(0, lambda ctx, x: (
        ctx.charge(0.25), seen.append((ctx.now, x))), "op")))
    world.engine.schedule_at(1.0, world.crash, 1)
    world.engine.schedule_at(1.5, lambda: seen.append(world.inject(1, lambda ctx: None)))
    world.run(2.0)
    assert seen == [(0.75, "op"), True, False]


def test_context_rules():
    world, procs = _world(2)
    host = world.hosts[0]
    with pytest.raises(RuntimeError, match="outside a handler"):
        host.send(1, b"x")

    def bad(ctx, what):
        if what == "dest":
            ctx.send(9, b"x")
        elif what == "type":
            ctx.send(1, "text")
        else:
            ctx.charge(-1)

    for what, exc in (("dest", ValueError), ("type", TypeError), ("charge", ValueError)):
        with pytest.raises(exc):
            world.inject(0, bad, what)  # the CPU is idle: runs at once
    with pytest.raises(ValueError):
        World(Engine(1), 0)
    with pytest.raises(RuntimeError, match="no process"):
        World(Engine(1), 1).start()
