"""The discovery workload: the real Kademlia core (node.dht.core.DhtNode) on the simulator."""

from __future__ import annotations

import dataclasses

import pytest

from node.dht.config import DhtConfig
from sim import runner
from sim.cli import _parser, build_spec
from sim.workloads.discovery import DiscoveryWorkload


def run(argv: list[str], byzantine: set[int] | None = None):
    args = _parser().parse_args(["run", "--no-progress", "--workload", "discovery", *argv])
    spec = build_spec(args)
    if byzantine is not None:
        spec = dataclasses.replace(spec, byzantine=frozenset(byzantine))
    wl = DiscoveryWorkload()
    result = runner.run(spec, wl)
    rep = runner.report_dict(result)
    rep.pop("wall_s")
    return rep, wl, result


BASE = ["--nodes", "50", "--duration", "30s", "--latency", "50ms", "--seed", "3",
        "--param", "lookups=60"]


def test_fifty_nodes_with_silent_byzantine_nodes_converge_and_lookups_succeed():
    rep, wl, _ = run([*BASE, "--param", "byzantine=silent"], byzantine={4, 17, 29, 41})
    conv = rep["discovery_latency_s"]
    assert conv["count"] == 46 and conv["unfinished"] == 0
    assert conv["p99"] <= 5.0
    extra = rep["workload_extra"]
    assert extra["honest_converged_at_end"] == 46
    assert set(extra["byzantine_strategies"].values()) == {"dht-silent"}
    lookups = extra["lookups"]
    assert lookups["started"] == 60 and lookups["ok"] == 60 and lookups["success_rate"] == 1.0
    assert all(t["met"] for t in rep["targets"]) and rep["exit_code"] == 0
    # messages really went through the kad-dht codec and the core's timeouts
    assert rep["network"]["delivered"] > 5000


def test_liars_and_garbage_do_not_stop_lookups_among_honest_nodes():
    rep, wl, result = run(["--nodes", "30", "--duration", "45s", "--latency", "50ms",
                           "--seed", "5", "--param", "lookups=40", "--param", "lookups_until=28s"],
                          byzantine={1, 2, 3, 4, 5})
    extra = rep["workload_extra"]
    assert sorted(set(extra["byzantine_strategies"].values())) == [
        "dht-garbage", "dht-lie", "dht-silent"]
    assert extra["lookups"]["ok"] == extra["lookups"]["started"] == 40
    assert rep["discovery_latency_s"]["unfinished"] == 0
    assert extra["bad_frames"] > 0  # the garbage answers were refused by the real codec
    counters = [result.world.hosts[i].process.dht.counters for i in range(6, 30)]
    assert sum(c["timeouts"] for c in counters) > 0  # silent peers timed out in the core


def test_without_refresh_on_join_some_tables_wait_for_the_periodic_refresh():
    rep, _, _ = run([*BASE, "--param", "refresh_on_join=false", "--param", "lookups=0"])
    assert rep["discovery_latency_s"]["unfinished"] > 0  # documented in the module doc


def test_same_seed_same_report():
    argv = ["--nodes", "20", "--duration", "20s", "--seed", "9", "--param", "lookups=20"]
    a, _, _ = run(argv, byzantine={3, 8})
    b, _, _ = run(argv, byzantine={3, 8})
    assert a == b
    c, _, _ = run([*argv[:-4], "--seed", "10", "--param", "lookups=20"], byzantine={3, 8})
    assert c["discovery_latency_s"] != a["discovery_latency_s"]


def test_goal_a_third_byzantine_on_100_nodes_converges_within_five_seconds():
    # the acceptance run: `sim run --workload discovery --nodes 100 --byzantine 0.33`
    rep, wl, _ = run(["--nodes", "100", "--byzantine", "0.33", "--seed", "1",
                      "--latency", "50ms"])
    assert wl.config == DhtConfig()  # the real node's defaults, unchanged
    conv = rep["discovery_latency_s"]
    assert conv["count"] == 67 and conv["unfinished"] == 0 and conv["p99"] <= 5.0
    lookups = rep["workload_extra"]["lookups"]
    assert lookups["ok"] == lookups["started"] == 200
    assert all(t["met"] for t in rep["targets"]) and rep["exit_code"] == 0


def test_params_override_dht_config_fields():
    _, wl, _ = run(["--nodes", "8", "--duration", "5s", "--param", "lookups=0",
                    "--param", "request_timeout=500ms", "--param", "disjoint_paths=1",
                    "--param", "refresh_on_join=false"])
    assert wl.config == DhtConfig(request_timeout=0.5, disjoint_paths=1,
                                  refresh_on_join=False)
    with pytest.raises(ValueError, match="unknown workload params"):
        run(["--nodes", "8", "--duration", "5s", "--param", "no_such_field=1"])
