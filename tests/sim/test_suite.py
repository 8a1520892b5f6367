"""The default `sim run`: every target in one report, the same whatever the scheduling."""

from __future__ import annotations

import json

import pytest

from sim import cli, suite

SMALL = ["run", "--nodes", "10", "--byzantine", "0.3", "--duration", "4s", "--no-progress"]


@pytest.fixture
def small_phases(monkeypatch):
    """Shrink the expensive phases (fork-started workers inherit the patch)."""
    orig = suite.phase_args

    def phase_args(args, name):
        out = orig(args, name)
        if name == "identity":
            out.param += ["identities=150", "enroll_over=3s", "forge_rate=1"]
            out.duration = "5s"
        elif name == "tasks":
            out.param = ["tasks=12", "submit_from=1s", "submit_over=2s", "drain=4s"]
            out.duration = "14s"
        elif name == "partition":
            out.duration, out.partition = "14s", ["3s-6s:0-7|8-9"]
        return out

    monkeypatch.setattr(suite, "phase_args", phase_args)


def _report(tmp_path, name, extra=()):
    path = tmp_path / f"{name}.json"
    code = cli.main([*SMALL, "--report-json", str(path), *extra])
    return code, json.loads(path.read_text())


def test_suite_reports_every_target_family_and_does_not_depend_on_jobs(tmp_path, small_phases):
    code1, one = _report(tmp_path, "one", ["--jobs", "1"])
    code2, two = _report(tmp_path, "two", ["--jobs", "2"])
    assert one.pop("wall_s") > 0 and two.pop("wall_s") > 0
    assert one == two and code1 == code2 == one["exit_code"]
    phases = {t["phase"] for t in one["targets"]}
    assert phases == set(suite.PHASES)
    names = " | ".join(t["name"] for t in one["targets"])
    for needle in ("consensus commit latency", "majority keeps committing",
                   "converge after heal", "routing tables converged", "lookups succeed",
                   "identity verification", "exactly one accepted result"):
        assert needle in names
    # the partition phase contributes only its partition targets
    assert all(t["name"].startswith("partition") for t in one["targets"]
               if t["phase"] == "partition")
    # the required latency fields come from the phase that measures them
    assert one["commit_latency_s"] == one["phases"]["consensus"]["commit_latency_s"]
    assert one["commit_latency_s"]["count"] > 0
    assert one["discovery_latency_s"]["count"] > 0
    assert one["identity_verify_latency_s"]["count"] > 0
    assert one["config"]["workload"] == "suite" and one["config"]["nodes"] == 10
    assert one["safety_violations"] == 0 and one["decisions"] > 0


def test_phase_arguments():
    args = cli._parser().parse_args(["run", "--nodes", "100", "--byzantine", "0.33",
                                     "--partition", "1s-2s:0-9|10-99", "--load", "5"])
    cons = suite.phase_args(args, "consensus")
    assert cons.workload == "pbft" and cons.partition == ["1s-2s:0-9|10-99"]
    part = suite.phase_args(args, "partition")
    assert part.partition == ["3s-9s:0-79|80-99"] and part.load is None
    assert part.adversary == ["equivocating-primary"]
    tasks = suite.phase_args(args, "tasks")
    assert tasks.nodes == 50 and tasks.workload == "tasks"
    assert suite.phase_args(args, "identity").param == ["verifiers=10"]
    with pytest.raises(ValueError, match="unknown phase"):
        suite.phase_args(args, "nope")
    assert args.partition == ["1s-2s:0-9|10-99"]  # the caller's namespace is untouched


def test_bad_jobs_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*SMALL, "--jobs", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "sim: error: --jobs 0 must be at least 1\n"
