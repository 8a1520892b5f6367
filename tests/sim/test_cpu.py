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
