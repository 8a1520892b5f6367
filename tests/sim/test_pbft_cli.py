"""`sim run` with the PBFT workload: flags (--load, --adversary, --param) and the JSON."""

from __future__ import annotations

import json

import pytest

from sim import workloads
from sim.cli import _parser, build_spec, main


def _spec(*argv: str):
    return build_spec(_parser().parse_args(["run", *argv]))


def test_load_adversary_and_param_flags():
    spec = _spec("--nodes", "10", "--byzantine", "0.3", "--load", "50:128",
                 "--adversary", "vote-withholding:probability=0.5,count=2",
                 "--adversary", "garbage:rate=3@byzantine",
                 "--param", "view_timeout=50", "--param", "tick=20ms")
    [load] = spec.timeline.load
    assert (load.rate_per_s, load.size_bytes) == (50.0, 128)
    a, b = spec.timeline.adversaries
    assert a.strategy == "vote-withholding" and a.nodes is None
    assert a.params == {"probability": "0.5", "count": "2"}
    assert b.strategy == "garbage" and b.nodes is None and b.params == {"rate": "3"}
    assert spec.workload_params == {"view_timeout": "50", "tick": "20ms"}
    c = _spec("--nodes", "10", "--adversary", "silent@1,2").timeline.adversaries[0]
    assert c.nodes == frozenset({1, 2})


@pytest.mark.parametrize("argv,message", [
    (["--load", "fast"], "--load 'fast'"),
    (["--load", "0"], "--load '0'"),
    (["--adversary", "twins:count"], "is not k=v"),
    (["--param", "novalue"], "is not KEY=VALUE"),
])
def test_bad_pbft_flags_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["run", "--nodes", "4", "--no-progress", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_report_json_has_the_issue_fields(tmp_path, capsys):
    path = tmp_path / "r.json"
    code = main(["run", "--workload", "pbft", "--nodes", "4", "--duration", "3s",
                 "--latency", "50ms", "--no-progress", "--report-json", str(path)])
    rep = json.loads(path.read_text())
    assert code == 0 == rep["exit_code"]
    assert rep["config"]["nodes"] == 4 and rep["config"]["workload"] == "pbft"
    assert rep["safety_violations"] == 0 and rep["decisions"] > 0
    for key in ("p50", "p95", "p99", "max"):
        assert rep["commit_latency_s"][key] is not None
    names = [t["name"] for t in rep["targets"]]
    assert names == ["consensus commit latency, 4 nodes, 0% Byzantine (seed limit)",
                     "consensus commit latency, 4 nodes, 0% Byzantine (our goal)"]
    assert rep["targets"][0]["limit_s"] == 30.0 and rep["targets"][1]["limit_s"] == 1.5
    assert "wall_s" in rep and "consensus commit latency" in capsys.readouterr().out


def test_unsafe_byzantine_count_needs_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--nodes", "4", "--byzantine", "0.5", "--no-progress"])
    assert info.value.code == 2 and "--allow-unsafe" in capsys.readouterr().err


def test_a_missing_workload_module_still_exits_3(monkeypatch, capsys):
    # replaces test_cli.py::test_pbft_not_wired_says_what_is_missing now that pbft exists
    monkeypatch.setitem(workloads.WORKLOADS, "pbft",
                        ("sim.workloads.not_here", "PbftWorkload", "the PBFT adapter"))
    with pytest.raises(SystemExit) as info:
        main(["run", "--nodes", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 3 and "not wired yet" in err and err.count("\n") == 1
