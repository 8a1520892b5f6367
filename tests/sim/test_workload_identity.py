"""The identity workload: enrolment + verification through the real identity.Registry."""

from __future__ import annotations

import dataclasses

from sim import runner
from sim.cli import _parser, build_spec
from sim.workloads.identity import IdentityWorkload


def run(argv: list[str], byzantine: set[int] | None = None):
    args = _parser().parse_args(["run", "--no-progress", "--workload", "identity", *argv])
    spec = build_spec(args)
    if byzantine is not None:
        spec = dataclasses.replace(spec, byzantine=frozenset(byzantine))
    wl = IdentityWorkload()
    result = runner.run(spec, wl)
    rep = runner.report_dict(result)
    rep.pop("wall_s")
    return rep, wl, result


BASE = ["--nodes", "10", "--duration", "8s", "--latency", "20ms", "--seed", "2",
        "--param", "identities=1000", "--param", "enroll_over=5s"]


def test_thousand_identities_verified_everywhere_and_forgeries_refused():
    rep, wl, result = run(BASE, byzantine={7, 9})
    extra = rep["workload_extra"]
    assert extra["identities_enrolled"] == 1000 and extra["verifiers"] == 8
    lat = rep["identity_verify_latency_s"]
    # every honest verifier but the home node verified every identity
    assert lat["count"] == 1000 * 7 and lat["unfinished"] == 0
    assert lat["p99"] <= 0.002 and lat["p50"] >= 2 * 65e-6  # two verifications at least
    assert extra["forgeries_sent"] > 0 and extra["forged_records_accepted"] == 0
    assert set(extra["refusals"]) >= {"bad_signature", "not_current_key"}
    # every honest registry holds the same identities with a record
    regs = [result.world.hosts[i].process.registry for i in sorted(result.spec.honest)]
    ids = regs[0].identifiers()
    assert all(r.identifiers() == ids for r in regs)
    honest_ids = sorted(wl.enrolled_at)
    assert len(honest_ids) == 1000 and all(regs[3].record(i) is not None for i in honest_ids)
    # the registry's real signature checks ran once per distinct identity (cache)
    assert extra["real_checks"]["chunks_verified"] == 1000 + extra["forgeries_sent"]
    assert rep["exit_code"] == 0


def test_cpu_cost_model_moves_the_latency():
    fast, _, _ = run(BASE)
    slow, _, _ = run([*BASE, "--cost", "verify=1ms"])
    assert slow["identity_verify_latency_s"]["p50"] >= \
        fast["identity_verify_latency_s"]["p50"] + 2 * (1e-3 - 65e-6) - 1e-9
    assert not slow["targets"][1]["met"]  # p99 <= 2 ms is missed at 1 ms per verification


def test_verifier_sample_and_restart_reingests_from_disk():
    rep, wl, result = run([*BASE, "--param", "verifiers=4", "--crash", "0-9@3s-4s"])
    assert rep["workload_extra"]["verifiers"] == 4
    assert rep["workload_extra"]["restarts"] == 10
    for v in wl.verifiers:  # restarted registries hold exactly what their disks held
        host = result.world.hosts[v]
        reg = host.process.registry
        on_disk = sum(1 for k in host.disk if k[0] == "id")
        assert len(reg) == on_disk and 700 < on_disk < 1000 + rep["workload_extra"][
            "forgeries_sent"]
    # frames missed while down are not re-sent (no anti-entropy): not counted as
    # unfinished, because every verifier crashed
    assert rep["identity_verify_latency_s"]["unfinished"] == 0


def test_same_seed_same_report():
    argv = [*BASE[:-4], "--param", "identities=200", "--param", "enroll_over=2s"]
    a, _, _ = run(argv, byzantine={5})
    b, _, _ = run(argv, byzantine={5})
    assert a == b
