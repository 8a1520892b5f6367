"""`sim` command line: flag errors, missing PBFT workload, end-to-end self-test runs."""

import json
from pathlib import Path

import pytest

from sim.cli import main

SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "scenarios"
ECHO = ["run", "--workload", "selftest-echo", "--no-progress"]


@pytest.mark.parametrize("argv,message", [
    (["run", "--nodes", "x"], "invalid int value"),
    (["run", "--nodes", "0"], "--nodes 0"),
    (["run", "--latency", "fast"], "--latency 'fast'"),
    (["run", "--loss", "2"], "--loss"),
    (["run", "--partition", "10s-5s:0|1"], "--partition"),
    (["run", "--crash", "3"], "--crash"),
    (["run", "--cost", "sign=x"], "cost"),
    (["run", "--duration", "0s"], "--duration"),
    (["run", "--byzantine", "0.5"], "more than f = 33; pass --allow-unsafe"),
    (["run", "--scenario", "/nonexistent.toml"], "cannot read scenario"),
    (["run", "--bogus"], "unrecognized arguments"),
    ([], "missing command"),
])
def test_bad_flags_print_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("sim: error: ")


def test_unknown_workload_and_adversary(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", "--workload", "nope"])
    assert info.value.code == 3 and "unknown workload 'nope'" in capsys.readouterr().err
    scen = tmp_path / "s.toml"
    scen.write_text("[run]\nworkload='selftest-echo'\n[[adversary]]\nstrategy='twins'\n")
    with pytest.raises(SystemExit) as info:
        main(["run", "--scenario", str(scen), "--nodes", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unknown adversary strategy 'twins'" in err


def _run_json(tmp_path, name, argv):
    path = tmp_path / name
    code = main(argv + ["--report-json", str(path)])
    return code, json.loads(path.read_text())


def test_echo_run_writes_the_report_fields_and_is_deterministic(tmp_path, capsys):
    argv = ECHO + ["--nodes", "10", "--byzantine", "0.3", "--duration", "5s", "--seed", "4",
                   "--latency", "lognormal:30ms:0.3", "--partition", "1s-2s:0-4|5-9"]
    code1, r1 = _run_json(tmp_path, "a.json", argv)
    code2, r2 = _run_json(tmp_path, "b.json", argv)
    assert code1 == code2 == r1["exit_code"]  # ops cut off by the partition may miss p99
    for key in ("config", "safety_violations", "decisions", "commit_latency_s",
                "discovery_latency_s", "identity_verify_latency_s", "targets", "wall_s"):
        assert key in r1
    assert r1["config"]["nodes"] == 10 and r1["config"]["byzantine"] == 3
    assert r1["config"]["seed"] == 4 and r1["config"]["partitions"] == ["1s-2s:0-4|5-9"]
    assert r1["commit_latency_s"] == {"p50": None, "p95": None, "p99": None, "max": None,
                                      "count": 0, "unfinished": 0}  # no PBFT in a self-test
    assert r1["other_latencies_s"]["echo_quorum_latency_s"]["count"] > 30
    assert r1["decisions"] > 30 and r1["safety_violations"] == 0
    r1.pop("wall_s"), r2.pop("wall_s")
    assert r1 == r2
    _, r3 = _run_json(tmp_path, "c.json", argv[:-6] + ["--seed", "5"] + argv[-4:])
    assert r3["other_latencies_s"] != r1["other_latencies_s"]
    out = capsys.readouterr().out
    assert "echo RTT (self-test)" in out and "seed 4" in out


def test_equivocation_breaks_agreement_exit_2_with_seed_and_event(tmp_path, capsys):
    scen = tmp_path / "eq.toml"
    scen.write_text("[run]\nworkload='selftest-echo'\n[[adversary]]\nstrategy='equivocate'\n"
                    "params = { rate = 2 }\n")
    code, report = _run_json(tmp_path, "r.json", ["run", "--scenario", str(scen), "--nodes",
                             "7", "--byzantine", "0.3", "--duration", "3s", "--no-progress"])
    assert code == 2
    first = report["first_safety_violation"]
    assert report["safety_violations"] >= 1 and first["checker"] == "agreement"
    assert first["seed"] == 1 and "handling message from" in first["event"]
    assert "SAFETY violation (agreement)" in capsys.readouterr().out


def test_target_missed_exits_1_and_cpu_costs_move_latency(tmp_path):
    base = ECHO + ["--nodes", "20", "--duration", "4s", "--latency", "10ms"]
    _, fast = _run_json(tmp_path, "f.json", base)
    code, slow = _run_json(tmp_path, "s.json", base + ["--cost", "verify=100ms"])
    p50 = [r["other_latencies_s"]["echo_quorum_latency_s"]["p50"] for r in (fast, slow)]
    # quorum 2f+1 = 13 (itself included): ping verify + 12 ack verifies, 100 ms each
    assert p50[0] < 0.03 and p50[1] > 1.3
    assert code == 1 and slow["targets"][0]["met"] is False


def test_shipped_echo_scenario_passes(tmp_path):
    code, report = _run_json(tmp_path, "e.json",
                             ["run", "--scenario", str(SCENARIOS / "selftest-echo.toml"),
                              "--no-progress", "--trace"])
    assert code == 0 and report["safety_violations"] == 0
    assert report["network"]["cut"] > 0 and report["network"]["duplicated"] > 0
    assert report["workload_extra"]["rejected_messages"] > 0  # garbage was sent


def test_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path):
    from sim import plot

    if plot.available():
        pytest.skip("matplotlib is installed here")
    with pytest.raises(SystemExit) as info:
        main(ECHO + ["--plot", str(tmp_path)])
    assert info.value.code == 2 and "matplotlib" in capsys.readouterr().err


def test_same_report_across_processes_with_different_hash_seeds(tmp_path):
    """Replay must not depend on str/bytes hash randomisation (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    reports = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"r{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-m", "sim.cli", "run", "--scenario",
             str(SCENARIOS / "selftest-echo.toml"), "--duration", "12s", "--no-progress",
             "--report-json", str(out)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text())
        report.pop("wall_s")
        reports.append(report)
    assert reports[0] == reports[1]


def test_plot_writes_pngs_when_matplotlib_is_installed(tmp_path):
    from sim import plot

    if not plot.available():
        pytest.skip("matplotlib is not installed (optional)")
    code = main(ECHO + ["--nodes", "7", "--duration", "2s", "--plot", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commits_timeline.png",
                                                          "latency_cdf.png"]


def test_flags_override_scenario_values(tmp_path):
    from sim.cli import _parser, build_spec

    scen = tmp_path / "s.toml"
    scen.write_text("[run]\nnodes = 10\nbyzantine_nodes = '0-2'\nseed = 5\nduration = '9s'\n"
                    "[network]\nlatency = '20ms'\nloss = 0.1\n"
                    "[[crash]]\nnodes = '4'\nat = '1s'\n")
    spec = build_spec(_parser().parse_args(["run", "--scenario", str(scen)]))
    assert (spec.nodes, spec.seed, spec.duration_s) == (10, 5, 9.0)
    assert spec.byzantine == {0, 1, 2} and spec.network.loss == 0.1
    assert spec.network.latency.describe() == "20ms"
    spec = build_spec(_parser().parse_args([
        "run", "--scenario", str(scen), "--seed", "6", "--loss", "0", "--latency", "5ms",
        "--crash", "5,6@2s-3s", "--byzantine", "0.1", "--duration", "1m"]))
    assert (spec.seed, spec.duration_s, spec.network.loss) == (6, 60.0, 0.0)
    assert len(spec.byzantine) == 1
    assert [(c.nodes, c.at_s, c.restart_s) for c in spec.timeline.crashes] == [
        ({4}, 1.0, None), ({5, 6}, 2.0, 3.0)]
    scen.write_text("[run]\nnodes = 10\nbyzantine_nodes = '0-3'\n")
    with pytest.raises(ValueError, match="more than f = 3"):
        build_spec(_parser().parse_args(["run", "--scenario", str(scen)]))
