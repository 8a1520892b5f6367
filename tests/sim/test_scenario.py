"""Scenario files: the shipped examples parse; invalid files give clear errors."""

from pathlib import Path

import pytest

from sim.network import LinkCut, NetworkConfig, Partition, RegionMatrix
from sim.scenario import (
    ScenarioError,
    byzantine_count,
    load_scenario,
    parse_network,
    parse_timeline,
    pick_byzantine,
)
from sim.units import format_nodeset, parse_bandwidth, parse_duration, parse_nodeset

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "sim" / "scenarios").glob("*.toml"))


def test_there_are_shipped_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_parse(path):
    data = load_scenario(str(path))
    n = data["run"]["nodes"]
    net = parse_network(data, n, NetworkConfig())
    timeline = parse_timeline(data, n)
    assert net.latency.describe()
    assert timeline.load or timeline.partitions


def test_full_example_values():
    path = next(p for p in EXAMPLES if p.name == "wan-byzantine-mix.toml")
    data = load_scenario(str(path))
    net = parse_network(data, 100, NetworkConfig())
    assert isinstance(net.latency, RegionMatrix)
    assert net.bandwidth_bps == 100e6 and net.loss == 0.005
    tl = parse_timeline(data, 100)
    assert tl.partitions == (LinkCut(30.0, 40.0, frozenset(range(80, 100)),
                                     frozenset(range(40))),)
    assert tl.crashes[0].nodes == {3, 17} and tl.crashes[0].restart_s == 60.0
    assert tl.load[0].rate_per_s == 50.0 and tl.load[0].end_s == 80.0
    names = [a.strategy for a in tl.adversaries]
    assert names == ["vote-withholding", "forged-signatures", "twins", "replay", "garbage"]
    assert tl.adversaries[0].nodes == frozenset(range(10))
    assert tl.adversaries[1].nodes is None and tl.adversaries[1].end_s == 70.0
    assert tl.last_heal_s() == 60.0


def _write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_partition_timeline(tmp_path):
    data = load_scenario(_write(tmp_path, """
[[partition]]
at = "1s"
heal = "2s"
groups = ["0-1", [2, 3]]
"""))
    assert parse_timeline(data, 5).partitions == (
        Partition(1.0, 2.0, (frozenset({0, 1}), frozenset({2, 3}))),)


@pytest.mark.parametrize("text,message", [
    ("[run\nnodes = 3", "invalid TOML"),
    ("[runn]\nnodes = 3", "unknown key runn"),
    ("[run]\nnodez = 3", "unknown key run.nodez"),
    ("[network]\nlatency = 'fast'", "network.latency"),
    ("[network]\nloss = 2", "network.loss"),
    ("[network]\nfifo = 'yes'", "network.fifo"),
    ("[[partition]]\nat = '1s'\ngroups = ['0-1', '1-2']", "partition[0]: node 1 is in two"),
    ("[[partition]]\nat = '5s'\nheal = '1s'\ngroups = ['0']", "partition[0].heal"),
    ("[[partition]]\ngroups = ['0']", "partition[0] needs 'at'"),
    ("[[partition]]\nat = '1s'\ngroups = ['0-99']", "partition[0].groups"),
    ("[[cut]]\nat = '1s'\nfrom = '0'\nto = '1'\nextra = 1", "unknown key cut[0].extra"),
    ("[[crash]]\nnodes = '1'\nat = 'soon'", "crash[0].at"),
    ("[[load]]\nrate = -3", "load[0].rate"),
    ("[[load]]\nrate = 1\nsize = 1.5", "load[0].size"),
    ("[[adversary]]\nstrategy = ''", "adversary[0].strategy"),
    ("[[adversary]]\nstrategy = 'x'\nparams = 3", "adversary[0].params"),
    ("partition = 3", "array of tables"),
    ("[network.regions]\na = '0-1'\n[network.region_latency]\n'a-a' = '1ms'",
     "node 2 has no region"),
    ("[network.regions]\na = '0-2'\nb = '3'\n[network.region_latency]\n'a-a' = '1ms'",
     "no latency for"),
])
def test_invalid_files_give_clear_errors(tmp_path, text, message):
    with pytest.raises(ScenarioError, match="s.toml") as info:
        data = load_scenario(_write(tmp_path, text))
        parse_network(data, 4, NetworkConfig())
        parse_timeline(data, 4)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario("/nonexistent/x.toml")


def test_byzantine_count_and_pick():
    assert byzantine_count(0.33, 100, allow_unsafe=False) == 33
    assert byzantine_count(0.0, 100, allow_unsafe=False) == 0
    with pytest.raises(ValueError, match="more than f = 33"):
        byzantine_count(0.34, 100, allow_unsafe=False)
    assert byzantine_count(0.5, 100, allow_unsafe=True) == 50
    with pytest.raises(ValueError):
        byzantine_count(1.5, 10, allow_unsafe=True)
    assert pick_byzantine(33, 100, 1) == pick_byzantine(33, 100, 1)
    assert len(pick_byzantine(33, 100, 1)) == 33


def test_units():
    assert parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("2m") == 120.0 and parse_duration(3) == 3.0
    assert parse_duration("100us") == pytest.approx(1e-4)
    assert parse_bandwidth("10MB/s") == 80e6 and parse_bandwidth("1Gbps") == 1e9
    assert parse_nodeset("0-2,5", 10) == {0, 1, 2, 5}
    assert format_nodeset(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"
    for bad in ("fast", "-1s", "1e999s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("3-1", "0-10", "a", ""):
        with pytest.raises(ValueError):
            parse_nodeset(bad, 10)
