"""The network model: latency distributions, faults, partitions, bandwidth, parsing."""

import math
import statistics

import pytest

from sim.engine import Engine
from sim.network import (
    Constant,
    LinkCut,
    LogNormal,
    Network,
    NetworkConfig,
    Partition,
    RegionMatrix,
    Uniform,
    parse_latency,
    parse_partition,
)


def _net(cfg, n=4, seed=1):
    eng = Engine(seed)
    got = []
    net = Network(eng, n, cfg, lambda s, d, p, m: got.append((eng.now, s, d, p)))
    return eng, net, got


def _latencies(cfg, count=4000):
    eng, net, got = _net(cfg)
    for i in range(count):
        # one message per link and time slot: no FIFO interaction
        net.send(i % 3, 3, i.to_bytes(4, "big"), depart_s=float(i))
    eng.run()
    return [t - int.from_bytes(p, "big") for t, _, _, p in got]


def test_constant_latency_is_exact():
    lat = _latencies(NetworkConfig(latency=Constant(0.05)), 100)
    assert all(x == pytest.approx(0.05, abs=1e-9) for x in lat)


def test_lognormal_median_and_spread_as_configured():
    lat = _latencies(NetworkConfig(latency=LogNormal(0.05, 0.5)))
    assert statistics.median(lat) == pytest.approx(0.05, rel=0.05)
    logs = [math.log(x) for x in lat]
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.05)


def test_uniform_latency_bounds_and_mean_with_jitter():
    lat = _latencies(NetworkConfig(latency=Uniform(0.02, 0.08), jitter_s=0.01))
    assert min(lat) >= 0.02 and max(lat) <= 0.09
    assert statistics.mean(lat) == pytest.approx(0.055, rel=0.03)


def test_region_matrix_latency():
    model = RegionMatrix(("a", "a", "b", "b"), {("a", "a"): Constant(0.01),
                                                 ("a", "b"): Constant(0.1),
                                                 ("b", "b"): Constant(0.02)})
    eng, net, got = _net(NetworkConfig(latency=model))
    net.send(0, 1, b"", 0.0)
    net.send(2, 0, b"", 0.0)  # mirror of (a, b)
    net.send(3, 2, b"", 0.0)
    eng.run()
    assert sorted(t for t, *_ in got) == [0.01, 0.02, 0.1]
    with pytest.raises(ValueError, match="a-b"):
        RegionMatrix(("a", "b"), {("a", "a"): Constant(0.01), ("b", "b"): Constant(0.01)})


@pytest.mark.parametrize("field,stat", [("loss", "lost"), ("duplicate", "duplicated"),
                                        ("reorder", "reordered")])
def test_fault_rates_match_configuration(field, stat):
    eng, net, got = _net(NetworkConfig(**{field: 0.1}))
    for i in range(20000):
        net.send(0, 1, b"x", i * 1e-3)
    eng.run()
    rate = getattr(net.stats, stat) / 20000
    assert rate == pytest.approx(0.1, abs=0.01)
    assert net.stats.delivered == len(got)


def test_links_are_fifo_unless_reordered():
    for reorder, expect_fifo in ((0.0, True), (0.3, False)):
        cfg = NetworkConfig(latency=LogNormal(0.05, 1.0), reorder=reorder)
        eng, net, got = _net(cfg)
        for i in range(500):
            net.send(0, 1, i.to_bytes(2, "big"), i * 1e-3)
        eng.run()
        order = [int.from_bytes(p, "big") for *_, p in got]
        assert (order == sorted(order)) is expect_fifo


def test_partition_blocks_exactly_the_cut_links_and_heals():
    eng, net, got = _net(NetworkConfig(latency=Constant(0.01)), n=6)
    net.schedule(Partition(1.0, 2.0, (frozenset({0, 1}), frozenset({2, 3}))))  # 4,5 implicit

    def blast():
        for s in range(6):
            for d in range(6):
                if s != d:
                    net.send(s, d, b"", eng.now)

    for t in (0.5, 1.5, 2.5):
        eng.schedule_at(t, blast)
    eng.run()
    during = {(s, d) for t, s, d, _ in got if 1.0 < t < 2.0}
    groups = [{0, 1}, {2, 3}, {4, 5}]
    same = {(s, d) for g in groups for s in g for d in g if s != d}
    assert during == same
    assert len([1 for t, *_ in got if t < 1.0]) == 30
    assert len([1 for t, *_ in got if t > 2.0]) == 30
    assert net.stats.cut == 30 - len(same)


def test_one_way_cut_and_in_flight_messages_dropped():
    eng, net, got = _net(NetworkConfig(latency=Constant(1.0)), n=3)
    net.schedule(LinkCut(0.5, 3.0, frozenset({0}), frozenset({1, 2})))
    net.send(0, 1, b"in-flight", 0.0)  # arrives at 1.0, inside the cut
    eng.schedule_at(1.0, net.send, 1, 0, b"reverse ok", 1.0)
    eng.schedule_at(1.0, net.send, 0, 2, b"blocked", 1.0)
    eng.schedule_at(3.5, net.send, 0, 2, b"healed", 3.5)
    eng.run()
    assert [p for *_, p in got] == [b"reverse ok", b"healed"]


def test_bandwidth_serialises_messages_on_a_link():
    eng, net, got = _net(NetworkConfig(latency=Constant(0.0), bandwidth_bps=8000.0))
    for _ in range(3):
        net.send(0, 1, bytes(100), 0.0)  # 800 bits = 0.1 s each
    net.send(0, 2, bytes(100), 0.0)  # another link is not slowed
    eng.run()
    assert [round(t, 9) for t, _, d, _ in got if d == 1] == [0.1, 0.2, 0.3]
    assert [round(t, 9) for t, _, d, _ in got if d == 2] == [0.1]


def test_self_send_is_instant_and_never_lost():
    eng, net, got = _net(NetworkConfig(latency=Constant(1.0), loss=1.0))
    net.send(2, 2, b"me", 0.25)
    eng.run()
    assert got == [(0.25, 2, 2, b"me")]


def test_parse_latency_flags():
    assert parse_latency("50ms", 10) == Constant(0.05)
    assert parse_latency("lognormal:50ms:0.5", 10) == LogNormal(0.05, 0.5)
    assert parse_latency("uniform:10ms:20ms", 10) == Uniform(0.01, 0.02)
    regions = parse_latency("regions:3:10ms:80ms", 6)
    assert regions.region_of == ("r0", "r1", "r2", "r0", "r1", "r2")
    for bad in ("fast", "lognormal:50ms", "uniform:20ms:10ms", "lognormal:5ms:x", "-5ms",
                "regions:0:1ms:2ms"):
        with pytest.raises(ValueError, match="--latency"):
            parse_latency(bad, 10)


def test_parse_partition_flags():
    p = parse_partition("10s-20s:0-49|50-99", 100)
    assert p == Partition(10.0, 20.0, (frozenset(range(50)), frozenset(range(50, 100))))
    assert p.describe() == "10s-20s:0-49|50-99"
    cut = parse_partition("1s-never:0-9>10-19", 20)
    assert cut == LinkCut(1.0, None, frozenset(range(10)), frozenset(range(10, 20)))
    for bad in ("10s:0-4|5-9", "20s-10s:0-4|5-9", "0s-1s:0-4|4-9", "0s-1s:0-200|3",
                "0s-1s:0-9", "x-1s:0|1", "0s-1s:"):
        with pytest.raises(ValueError, match="--partition"):
            parse_partition(bad, 10)
