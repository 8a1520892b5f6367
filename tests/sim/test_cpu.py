"""The CPU cost model: queueing, charging, the verification cache, cost parsing."""

import pytest

from identity.soft import SoftSigner
from sim.cpu import CostModel, VerifyCache, parse_costs
from sim.engine import Engine
from sim.network import Constant, NetworkConfig
from sim.process import BaseProcess
from sim.world import World

FREE = CostModel(sign_s=0, verify_s=0, handle_s=0, timer_s=0, encode_s=0, send_s=0,
                 encode_byte_s=0, decode_byte_s=0, persist_s=0)


class _Sink(BaseProcess):
    def __init__(self, work_s=0.0):
        self.work_s, self.done = work_s, []

    def on_message(self, ctx, sender, payload):
        ctx.charge(self.work_s)
        self.done.append(ctx.now)


class _Flooder(BaseProcess):
    def __init__(self, n):
        self.n = n

    def on_start(self, ctx):
        for _ in range(self.n):
            ctx.send(1, b"m")


def _flood(n, costs, work_s=0.0, latency=0.0):
    world = World(Engine(1), 2, network=NetworkConfig(latency=Constant(latency)), costs=costs)
    sink = _Sink(work_s)
    world.attach(0, _Flooder(n))
    world.attach(1, sink)
    world.start()
    world.run(100.0)
    return world, sink


def test_flooded_node_finishes_at_n_times_cost():
    world, sink = _flood(1000, FREE, work_s=0.001)
    assert len(sink.done) == 1000
    assert sink.done[-1] == pytest.approx(1.0)
    assert sink.done[:3] == pytest.approx([0.001, 0.002, 0.003])
    assert world.hosts[1].cpu.busy_total == pytest.approx(1.0)
    assert world.hosts[1].cpu.max_queue == 999


def test_modelled_costs_add_up_on_both_sides():
    costs = FREE.replace(handle_s=1e-3, decode_byte_s=1e-6, encode_s=2e-3, send_s=1e-3,
                         encode_byte_s=1e-6)
    world, sink = _flood(2, costs, latency=0.1)
    # sender: each send costs encode 2ms + send 1ms + 1 byte; they leave at ~3ms and ~6ms
    # receiver: each costs handle 1ms + 1 byte decode
    first = 0.003001 + 0.1 + 0.001001
    assert sink.done == pytest.approx([first, first + 0.003001])


class _Crypto(BaseProcess):
    def __init__(self, signer, peer_key):
        self.signer, self.peer_key, self.times = signer, peer_key, []

    def on_start(self, ctx):
        if ctx.node_id == 0:
            ctx.send(1, ctx.sign(self.signer, b"hello"))

    def on_message(self, ctx, sender, payload):
        ok = ctx.verify(self.peer_key, b"hello", payload)
        ctx.charge_verify(2)
        ctx.charge_sign()
        self.times.append((ok, ctx.now))


def test_sign_and_verify_are_real_and_charged():
    costs = FREE.replace(sign_s=0.27e-3, verify_s=0.065e-3)
    world = World(Engine(1), 2, network=NetworkConfig(latency=Constant(0.05)), costs=costs)
    a, b = SoftSigner(bytes(32)), SoftSigner(bytes([1]) * 32)
    world.attach(0, _Crypto(a, b.public_key))
    world.attach(1, recv := _Crypto(b, a.public_key))
    world.start()
    world.run(1.0)
    ok, t = recv.times[0]
    assert ok
    assert t == pytest.approx(0.27e-3 + 0.05 + 3 * 0.065e-3 + 0.27e-3)


def test_cpu_cost_raises_latency_under_load():
    fast = _flood(50, FREE.replace(handle_s=1e-5), latency=0.01)[1].done[-1]
    slow = _flood(50, FREE.replace(handle_s=1e-3), latency=0.01)[1].done[-1]
    assert fast == pytest.approx(0.01 + 50e-5)
    assert slow == pytest.approx(0.01 + 50e-3)


def test_verify_cache_is_correct_and_counts():
    cache = VerifyCache(max_entries=2)
    s = SoftSigner(bytes(32))
    sig = s.sign(b"m")
    assert cache.verify(s.public_key, b"m", sig)
    assert cache.verify(s.public_key, b"m", sig)
    assert (cache.hits, cache.misses) == (1, 1)
    assert not cache.verify(s.public_key, b"other", sig)
    assert not cache.verify(s.public_key, b"m", bytes(64))  # clears when full: still right
    assert not cache.verify(b"short", b"m", sig)
    assert not cache.verify(None, b"m", sig)


def test_parse_costs():
    c = parse_costs("sign=0.3ms, verify_s=70us,encode_byte=4ns")
    assert (c.sign_s, c.verify_s, c.encode_byte_s) == pytest.approx((3e-4, 7e-5, 4e-9))
    assert c.handle_s == CostModel().handle_s
    for bad, msg in (("sign", "NAME=DURATION"), ("nope=1ms", "unknown cost"),
                     ("sign=fast", "not a duration"), ("sign=-1ms", "not a")):
        with pytest.raises(ValueError, match=msg):
            parse_costs(bad)


def test_calibrate_measures_positive_costs_and_makes_a_cost_flag():
    from sim import calibrate

    figures = calibrate.measure(quick=True)
    assert set(figures) == {"pynacl_sign_s", "pynacl_verify_s", "encode_fixed_s",
                            "encode_byte_s", "decode_fixed_s", "decode_byte_s"}
    assert figures["pynacl_verify_s"] > 0 and figures["pynacl_sign_s"] > 0
    assert parse_costs(calibrate.as_cost_flag(figures)).verify_s > 0


def _decisions_and_drops(chunk_s):
    """A 7-node PBFT run with a crash and a partition, run in chunks of ``chunk_s``
    virtual seconds (None: one run). Work never runs ahead past the end of a chunk, so
    small chunks turn eager execution off almost everywhere."""
    from sim import runner
    from sim.cli import _parser, build_spec
    from sim.workloads import load_workload

    args = _parser().parse_args([
        "run", "--workload", "pbft", "--nodes", "7", "--byzantine", "0.2", "--duration", "6s",
        "--crash", "3@1s-2s", "--partition", "3s-4s:0-3|4-6", "--no-progress"])
    spec = build_spec(args)
    world = runner.build_world(spec, load_workload("pbft"))
    seen = []
    world.subscribe("decided", lambda node, t, seq, digest, proof: seen.append(
        (round(t, 9), node, seq, digest)))
    world.start()
    if chunk_s is None:
        world.run(spec.duration_s)
    else:
        t = 0.0
        while t < spec.duration_s:
            t = min(spec.duration_s, t + chunk_s)
            world.run(t)
    eager = sum(h.cpu.eager for h in world.hosts)
    return seen, world.network.stats.cut, world.dropped_down, eager


def test_running_work_ahead_of_time_changes_no_outcome():
    # Eager execution (sim.cpu module doc) must be invisible: the same decisions at the
    # same virtual times by the same nodes, the same messages cut by the partition and
    # dropped by the crash, whether work runs ahead or waits for its wake-up event.
    eager = _decisions_and_drops(None)
    waiting = _decisions_and_drops(0.0001)
    assert eager[3] > 5 * waiting[3]  # the two runs really differ in mechanism
    # (decisions are published when the work runs, so only their order differs)
    assert eager[0] and sorted(eager[0]) == sorted(waiting[0])
    assert eager[1:3] == waiting[1:3] and eager[1] > 0 and eager[2] > 0
