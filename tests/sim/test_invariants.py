"""Invariant checkers: agreement, validity and liveness-after-heal catch planted faults."""

from sim.engine import Engine
from sim.invariants import Agreement, LivenessAfterHeal, Validity
from sim.network import Constant, NetworkConfig
from sim.process import BaseProcess
from sim.world import World


class _Decider(BaseProcess):
    """Decides (seq, digest) pairs from a schedule: [(time, seq, digest), ...]."""

    def __init__(self, plan):
        self.plan = plan

    def on_start(self, ctx):
        for i, (t, _, _) in enumerate(self.plan):
            ctx.set_timer(t, i)

    def on_timer(self, ctx, timer_id):
        _, seq, digest = self.plan[timer_id]
        ctx.decided(seq, digest, proof=digest == b"good")


def _world(plans, honest=None):
    world = World(Engine(99), len(plans), network=NetworkConfig(latency=Constant(0.01)),
                  honest=honest)
    for i, plan in enumerate(plans):
        world.attach(i, _Decider(plan))
    world.start()
    return world


def test_agreement_catches_a_planted_disagreement_with_seed_and_event():
    world = _world([[(1.0, 1, b"good")], [(1.5, 1, b"good")], [(2.0, 1, b"evil")]])
    world.invariants.register(Agreement(world.honest), world)
    world.run(5.0)
    [v] = world.invariants.violations
    assert v.safety and v.checker == "agreement" and v.node == 2 and v.seed == 99
    assert v.time_s == 2.0
    assert "t=2.000000s" in v.event and "node 2 handling timer 0" in v.event
    assert "seq 1: node 2 decided 6576696c but node 0 decided 676f6f64" in v.one_line()


def test_agreement_ignores_byzantine_nodes_and_catches_self_contradiction():
    world = _world([[(1.0, 1, b"good")], [(1.0, 1, b"evil")],
                    [(1.0, 2, b"good"), (2.0, 2, b"evil")]], honest={0, 2})
    world.invariants.register(Agreement(world.honest), world)
    world.run(5.0)
    [v] = world.invariants.violations
    assert v.node == 2 and "twice" in v.message


def test_validity_checks_proofs():
    world = _world([[(1.0, 1, b"good")], [(1.0, 2, b"bad")]])
    world.invariants.register(Validity(world.honest, lambda n, s, d, proof: proof), world)
    world.run(5.0)
    assert [(v.checker, v.node) for v in world.invariants.violations] == [("validity", 1)]


def test_liveness_after_heal_is_a_liveness_violation_and_excuses_down_nodes():
    world = _world([[(1.0, 1, b"g"), (12.0, 2, b"g")], [(1.0, 1, b"g")], [(1.0, 1, b"g")]])
    world.schedule_crash(2, 5.0)
    world.invariants.register(LivenessAfterHeal(world.honest, heal_s=10.0, within_s=5.0), world)
    world.run(20.0)
    [v] = world.invariants.violations
    assert not v.safety and "1 honest node(s)" in v.message and v.message.endswith(": 1")
    assert world.invariants.first_safety is None


def test_per_event_checkers_run_after_every_event():
    class Counting(Agreement):
        per_event = True

        def __init__(self, honest):
            super().__init__(honest)
            self.calls = 0

        def after_event(self):
            self.calls += 1

    world = _world([[(1.0, 1, b"g")], [(2.0, 1, b"g")]])
    checker = world.invariants.register(Counting(world.honest), world)
    world.run(5.0)
    assert checker.calls == world.engine.events > 0
