"""Property tests of the models, and a mutation test of the whole stack."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import runner
from sim.cpu import CostModel
from sim.engine import Engine
from sim.network import Constant, Network, NetworkConfig, Partition
from sim.process import BaseProcess
from sim.scenario import CrashSpec, RunSpec, Timeline
from sim.workloads.echo import EchoNode, EchoWorkload
from sim.world import World

FREE = CostModel(sign_s=0, verify_s=0, handle_s=0, timer_s=0, encode_s=0, send_s=0,
                 encode_byte_s=0, decode_byte_s=0, persist_s=0)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=60))
def test_cpu_is_a_fifo_single_server_queue(jobs):
    """done_i = max(arrival_i, done_(i-1)) + cost_i, in arrival order."""
    jobs = sorted(jobs, key=lambda j: j[0])
    world = World(Engine(1), 1, costs=FREE)
    world.attach(0, BaseProcess())
    done = []
    for at, cost in jobs:
        world.engine.schedule_at(at, world.inject, 0,
                                 lambda ctx, c=cost: (ctx.charge(c), done.append(ctx.now)))
    world.run(100.0)
    expect, last = [], 0.0
    for at, cost in jobs:
        last = max(at, last) + cost
        expect.append(last)
    assert done == pytest.approx(expect)


@settings(max_examples=50)
@given(st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_partition_blocks_iff_groups_differ(assignment):
    """Node i is in group assignment[i]; value 3 means "not listed" (the implicit group)."""
    listed = sorted({g for g in assignment if g != 3})
    groups = tuple(frozenset(i for i, g in enumerate(assignment) if g == k) for k in listed)
    eng = Engine(1)
    net = Network(eng, 6, NetworkConfig(), lambda *a: None)
    net.schedule(Partition(0.0, None, groups))
    eng.run()
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    for s in range(6):
        for d in range(6):
            expect = s != d and group_of.get(s, -1) != group_of.get(d, -1)
            assert net.blocked(s, d) is expect


class _ForgetfulEchoNode(EchoNode):
    """Mutant: forgets its persisted counter on restart, so it reuses sequence numbers."""

    def on_restart(self, ctx):
        self.counter = 0


def _spec(nodes=7, crash_at=2.0):
    return RunSpec(nodes=nodes, byzantine=frozenset(), seed=9, duration_s=6.0,
                   workload="selftest-echo", network=NetworkConfig(latency=Constant(0.02)),
                   costs=CostModel(), timeline=Timeline(
                       crashes=(CrashSpec(frozenset({0}), crash_at, crash_at + 1.0),)))


def test_mutation_forgetting_persisted_state_breaks_agreement_and_is_caught():
    ok = runner.run(_spec(), EchoWorkload())
    assert ok.exit_code == 0 and not ok.violations

    mutant = EchoWorkload()
    mutant.node_cls = _ForgetfulEchoNode
    bad = runner.run(_spec(), mutant)
    assert bad.exit_code == 2
    first = next(v for v in bad.violations if v.safety)
    assert first.checker == "agreement" and first.seed == 9 and first.time_s > 3.0
    assert "decided seq 1 twice" in first.message or "seq 1:" in first.message
