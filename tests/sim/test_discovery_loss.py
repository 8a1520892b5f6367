"""The discovery workload under message loss: lookups re-ask a stalled peer
(DhtConfig.lookup_retries), so a lost request or answer does not lose the target."""

from __future__ import annotations

from sim import runner
from sim.cli import _parser, build_spec
from sim.workloads.discovery import DiscoveryWorkload


def run(*extra: str) -> dict:
    args = _parser().parse_args([
        "run", "--no-progress", "--workload", "discovery", "--nodes", "50",
        "--duration", "30s", "--loss", "0.05", "--seed", "1", "--param", "lookups=100",
        *extra])
    rep = runner.report_dict(runner.run(build_spec(args), DiscoveryWorkload()))
    return rep["workload_extra"]["lookups"]


def test_lookups_survive_five_percent_loss_because_stalled_peers_are_asked_again() -> None:
    lookups = run()
    assert lookups["started"] == 100 and lookups["ok"] == 100
    assert lookups["messages_per_lookup"]["mean"] < 40
    without = run("--param", "lookup_retries=0")  # the core before re-asks: 89 of 100
    assert without["started"] == 100 and without["ok"] <= 95
