"""Generic (byte-level) adversaries: silent, delay, replay, garbage."""

import pytest

from sim.adversary import Adversarial, wrap
from sim.cpu import CostModel
from sim.engine import Engine
from sim.network import Constant, NetworkConfig
from sim.process import BaseProcess
from sim.scenario import AdversarySpec
from sim.world import World

FREE = CostModel(sign_s=0, verify_s=0, handle_s=0, timer_s=0, encode_s=0, send_s=0,
                 encode_byte_s=0, decode_byte_s=0, persist_s=0)


class _Echo(BaseProcess):
    """Node 0 sends b'hi' to node 1 at 1 s; node 1 answers b're'; all log arrivals."""

    def __init__(self):
        self.got = []

    def on_start(self, ctx):
        if ctx.node_id == 0:
            ctx.set_timer(1.0, "go")

    def on_timer(self, ctx, timer_id):
        ctx.send(1, b"hi")

    def on_message(self, ctx, sender, payload):
        self.got.append((round(ctx.now, 6), sender, payload))
        if payload == b"hi":
            ctx.send(sender, b"re")


def _run(specs, byzantine=(1,), n=3, until=5.0):
    world = World(Engine(2), n, network=NetworkConfig(latency=Constant(0.1)), costs=FREE,
                  honest=[i for i in range(n) if i not in byzantine])
    procs = [_Echo() for _ in range(n)]
    for i, p in enumerate(procs):
        world.attach(i, p, factory=lambda node: _Echo())
    wrap(world, world.byzantine, specs)
    world.start()
    world.run(until)
    return world, procs


def test_silent_node_answers_nothing():
    _, procs = _run([AdversarySpec("silent", None, {})])
    assert procs[0].got == []


def test_delay_postpones_everything_the_node_sends():
    _, procs = _run([AdversarySpec("delay", None, {"by": "2s"})])
    assert procs[0].got == [(3.2, 1, b"re")]


def test_replay_resends_received_payloads_verbatim():
    _, procs = _run([AdversarySpec("replay", None, {"probability": 1.0, "after": "1s"})])
    replayed = procs[0].got + procs[2].got
    assert (2.2, 1, b"hi") in replayed  # b'hi' from 0, replayed by 1 one second later


def test_garbage_floods_random_bytes_in_its_window():
    spec = AdversarySpec("garbage", None, {"rate": 10, "size": 5}, start_s=1.0, end_s=2.0)
    _, procs = _run([spec])
    junk = [g for p in (procs[0], procs[2]) for g in p.got if g[2] not in (b"re", b"hi")]
    assert len(junk) == 10 and all(len(g[2]) == 5 for g in junk)
    assert all(1.0 < g[0] <= 2.1 for g in junk)


def test_wrapping_survives_restart_and_rejects_bad_params():
    world, _ = _run([AdversarySpec("silent", None, {})], until=0.5)
    world.crash(1)
    world.restart(1)
    assert isinstance(world.hosts[1].process, Adversarial)
    with pytest.raises(ValueError, match="garbage"):
        _run([AdversarySpec("garbage", None, {"rate": -1})])
    with pytest.raises(ValueError, match="generic"):
        Adversarial(_Echo(), [AdversarySpec("twins", None, {})])
