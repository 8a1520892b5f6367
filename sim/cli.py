"""``sim``: run the simulator from the command line.

``sim run --nodes 100 --byzantine 0.33 [--seed S] [--duration 60s] [--latency ...]
[--loss ...] [--partition ...] [--crash ...] [--scenario FILE] [--report-json PATH]
[--plot DIR] [--allow-unsafe] [--workload NAME] [--cost ...] [--load RATE[:SIZE]]
[--adversary NAME[:k=v,...][@NODES]] [--param k=v] [--jobs N]``

Without ``--workload`` and ``--scenario`` it runs the suite (:mod:`sim.suite`): every
target (consensus, partition, discovery, identity, tasks) in parallel phases.
``sim calibrate``: measure crypto and codec costs on this machine.

Exit codes: 0 all targets met and safe; 1 a target missed; 2 a safety invariant broke,
or bad flags (one line on stderr); 3 the run cannot start because a component is
missing (e.g. the PBFT workload is not wired yet).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sim import report as rep
from sim.cpu import CostModel, parse_costs
from sim.network import NetworkConfig, parse_latency, parse_partition
from sim.scenario import (
    AdversarySpec,
    CrashSpec,
    LoadSpec,
    RunSpec,
    ScenarioError,
    Timeline,
    byzantine_count,
    load_scenario,
    parse_network,
    parse_timeline,
    pick_byzantine,
)
from sim.units import parse_bandwidth, parse_duration, parse_nodeset, parse_probability
from sim.workloads import WorkloadMissing, load_workload

__all__ = ["main"]

EXIT_MISSING = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(message)


def _fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"sim: error: {message}\n")
    raise SystemExit(code)


def _console(args: argparse.Namespace, width: int) -> Console:
    """The report console (at least ``width`` columns), after checking that ``--plot``
    can work (exits with one line when matplotlib is missing)."""
    if args.plot:
        from sim import plot

        if not plot.available():
            _fail("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    console = Console()
    console.width = max(console.width, width)
    return console


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sim", description="meshnode discrete-event simulator")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser(
        "run", help="simulate a mesh and check the targets",
        description="Simulate a mesh on the real protocol cores and check the targets. "
        "Without --workload and --scenario: the suite of every target (consensus commit "
        "latency, a partition and heal, discovery, 10,000 identities, mesh tasks), one "
        "phase each, in parallel processes, one table. Exit code 0: all targets met and "
        "safe; 1: a target missed; 2: a safety invariant broke (or bad flags); 3: a "
        "component is missing.")
    run.add_argument("--nodes", type=int, help="number of nodes (default 100). PBFT costs "
                     "2n^2 messages per decision: the default suite takes ~50 s at 100 "
                     "nodes; at 1,000 use --workload discovery, or --workload pbft with a "
                     "few seconds of --duration (3 s: ~5 min)")
    run.add_argument("--byzantine", type=float, help="fraction of Byzantine nodes (floor)")
    run.add_argument("--seed", type=int, help="RNG seed (default 1)")
    run.add_argument("--duration", help="virtual time to simulate, e.g. 60s (default 60s; "
                     "in the suite: the consensus phase)")
    run.add_argument("--workload", help="one workload instead of the default suite of every "
                     "target: pbft (consensus commit latency, partitions), discovery "
                     "(Kademlia), identity (10,000 identities), tasks (mesh tasks over "
                     "PBFT), or selftest-echo")
    run.add_argument("--jobs", type=int, help="suite only: phases run in parallel in this "
                     "many processes (default: the number of CPUs)")
    run.add_argument("--latency", help="50ms | uniform:LO:HI | lognormal:MED:SIGMA | "
                                       "regions:K:INTRA:INTER (default 50ms)")
    run.add_argument("--jitter", help="extra uniform(0, J) delay per message")
    run.add_argument("--loss", help="message loss probability")
    run.add_argument("--duplicate", help="message duplication probability")
    run.add_argument("--reorder", help="probability a message is held back (reordered)")
    run.add_argument("--bandwidth", help="per-link bandwidth, e.g. 100Mbit")
    run.add_argument("--partition", action="append", default=[],
                     help="START-END:0-49|50-99 or START-END:SRC>DST (repeatable)")
    run.add_argument("--crash", action="append", default=[],
                     help="NODES@AT[-RESTART], e.g. 3,7@10s-20s (repeatable)")
    run.add_argument("--cost", help="CPU costs, e.g. sign=0.27ms,verify=65us,handle=20us")
    run.add_argument("--load", help="client load RATE[:SIZE]: RATE operations/s of SIZE bytes "
                                    "(replaces the scenario's [[load]]; pbft default 20:256)")
    run.add_argument("--adversary", action="append", default=[],
                     help="NAME[:k=v,k=v][@NODES] Byzantine strategy (repeatable; NODES "
                          "default: all Byzantine nodes), e.g. equivocating-primary, "
                          "vote-withholding:probability=0.5, twins:count=2, silent, garbage")
    run.add_argument("--param", action="append", default=[],
                     help="workload parameter k=v (repeatable; overrides [workload_params])")
    run.add_argument("--scenario", help="TOML scenario file (flags override it)")
    run.add_argument("--report-json", help="write the JSON report here")
    run.add_argument("--plot", help="write PNG plots into this directory (needs matplotlib)")
    run.add_argument("--allow-unsafe", action="store_true",
                     help="allow more than f Byzantine nodes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--trace", action="store_true", help="print the event-trace digest")
    sub.add_parser("calibrate", help="measure sign/verify/codec costs on this machine")
    return parser


def _pick(flag: Any, scenario: dict[str, Any], key: str, default: Any) -> Any:
    if flag is not None:
        return flag
    return scenario.get("run", {}).get(key, default)


def _network(args: argparse.Namespace, scen: dict[str, Any], n: int) -> NetworkConfig:
    net = parse_network(scen, n, NetworkConfig()) if scen else NetworkConfig()
    changes: dict[str, Any] = {}
    if args.latency is not None:
        changes["latency"] = parse_latency(args.latency, n)
    for flag, attr, parse in (
        ("jitter", "jitter_s", parse_duration), ("loss", "loss", parse_probability),
        ("duplicate", "duplicate", parse_probability), ("reorder", "reorder", parse_probability),
        ("bandwidth", "bandwidth_bps", parse_bandwidth),
    ):
        value = getattr(args, flag)
        if value is not None:
            try:
                changes[attr] = parse(value)
            except ValueError as exc:
                raise ValueError(f"--{flag}: {exc}") from None
    return dataclasses.replace(net, **changes)


def _crash_flag(text: str, n: int) -> CrashSpec:
    nodes, sep, window = text.partition("@")
    if not sep:
        raise ValueError(f"--crash {text!r} is not NODES@AT or NODES@AT-RESTART")
    at, _, restart = window.partition("-")
    try:
        at_s = parse_duration(at)
        restart_s = parse_duration(restart) if restart else None
        if restart_s is not None and restart_s <= at_s:
            raise ValueError("restart must come after the crash")
        return CrashSpec(parse_nodeset(nodes, n), at_s, restart_s)
    except ValueError as exc:
        raise ValueError(f"--crash {text!r}: {exc}") from None


def build_spec(args: argparse.Namespace) -> RunSpec:
    """Combine flags and the scenario file. Raises ``ValueError`` (incl. ScenarioError)."""
    scen = load_scenario(args.scenario) if args.scenario else {}
    n = int(_pick(args.nodes, scen, "nodes", 100))
    if not 1 <= n <= 100_000:
        raise ValueError(f"--nodes {n} must be between 1 and 100000")
    seed = int(_pick(args.seed, scen, "seed", 1))
    duration = parse_duration(_pick(args.duration, scen, "duration", "60s"))
    if duration <= 0:
        raise ValueError("--duration must be positive")
    if args.byzantine is None and "byzantine_nodes" in scen.get("run", {}):
        byz = parse_nodeset(scen["run"]["byzantine_nodes"], n)
        if len(byz) > (n - 1) // 3 and not args.allow_unsafe:
            raise ValueError(f"{len(byz)} Byzantine nodes is more than f = {(n - 1) // 3}; "
                             "pass --allow-unsafe")
    else:
        frac = float(_pick(args.byzantine, scen, "byzantine", 0.0))
        count = byzantine_count(frac, n, allow_unsafe=args.allow_unsafe)
        byz = pick_byzantine(count, n, seed)
    timeline = parse_timeline(scen, n) if scen else Timeline()
    extra = tuple(parse_partition(p, n) for p in args.partition)
    crashes = tuple(_crash_flag(c, n) for c in args.crash)
    timeline = dataclasses.replace(
        timeline, partitions=timeline.partitions + extra, crashes=timeline.crashes + crashes
    )
    costs = parse_costs(args.cost) if args.cost else CostModel()
    if args.load:
        timeline = dataclasses.replace(timeline, load=(_load_flag(args.load),))
    if args.adversary:
        timeline = dataclasses.replace(timeline, adversaries=timeline.adversaries + tuple(
            _adversary_flag(a, n) for a in args.adversary))
    params = dict(scen.get("workload_params", {}))
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r} is not KEY=VALUE")
        params[key.strip()] = value.strip()
    return RunSpec(
        nodes=n, byzantine=byz, seed=seed, duration_s=duration,
        workload=str(_pick(args.workload, scen, "workload", "pbft")),
        network=_network(args, scen, n), costs=costs, timeline=timeline,
        allow_unsafe=args.allow_unsafe, scenario_path=args.scenario,
        workload_params=params,
    )


def _load_flag(text: str) -> LoadSpec:
    rate, _, size = text.partition(":")
    try:
        rate_f, size_i = float(rate), int(size) if size else 256
    except ValueError:
        raise ValueError(f"--load {text!r} is not RATE[:SIZE]") from None
    if not 0 < rate_f < 1e7 or size_i < 0:
        raise ValueError(f"--load {text!r}: need 0 < RATE < 1e7 and SIZE >= 0")
    return LoadSpec(rate_f, 0.0, None, size_i)


def _adversary_flag(text: str, n: int) -> AdversarySpec:
    body, at, nodes = text.partition("@")
    name, _, params_text = body.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, params_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--adversary {text!r}: {item!r} is not k=v")
        params[key.strip()] = value.strip()
    if not name:
        raise ValueError(f"--adversary {text!r}: missing strategy name")
    chosen = parse_nodeset(nodes, n) if at and nodes != "byzantine" else None
    return AdversarySpec(name, chosen, params)


def _is_suite(args: argparse.Namespace) -> bool:
    return args.workload is None and args.scenario is None


def _run(args: argparse.Namespace) -> int:
    from sim import runner  # imported late: `sim --help` stays fast

    if args.jobs is not None and args.jobs < 1:
        _fail(f"--jobs {args.jobs} must be at least 1")
    if _is_suite(args):
        return _run_suite(args)

    try:
        spec = build_spec(args)
    except (ValueError, ScenarioError) as exc:
        _fail(str(exc))
    try:
        workload = load_workload(spec.workload)
    except WorkloadMissing as exc:
        _fail(str(exc), EXIT_MISSING)
    console = _console(args, 132)  # target names are long; do not truncate them
    decisions = []
    with Progress(
        TextColumn("[bold]sim[/bold] {task.description}"), BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} s virtual"), TimeElapsedColumn(),
        console=Console(stderr=True), disable=args.no_progress, transient=True,
    ) as progress:
        task = progress.add_task(f"{spec.workload} x{spec.nodes}", total=spec.duration_s)
        try:
            result = runner.run(
                spec, workload, trace=args.trace,
                on_progress=lambda now: progress.update(task, completed=now),
                decisions=decisions if args.plot else None,
            )
        except ValueError as exc:
            _fail(str(exc))
    rep.render(console, result.targets, result.violations)
    console.print(
        f"seed {spec.seed}: {result.events} events, {result.results.decisions} decisions, "
        f"{result.wall_s:.1f}s wall" + (f", trace {result.trace_digest}" if args.trace else ""),
        markup=False,
    )
    if args.report_json:
        rep.write_json(args.report_json, runner.report_dict(result))
    if args.plot:
        from sim import plot

        plot.write(args.plot, result, decisions)
    return result.exit_code


def _run_suite(args: argparse.Namespace) -> int:
    from sim import suite

    try:
        totals = suite.durations(args)
    except (ValueError, ScenarioError) as exc:
        _fail(str(exc))
    except WorkloadMissing as exc:
        _fail(str(exc), EXIT_MISSING)
    console = _console(args, 140)
    with Progress(
        TextColumn("[bold]sim[/bold] {task.description:<10}"), BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} s virtual"), TimeElapsedColumn(),
        console=Console(stderr=True), disable=args.no_progress, transient=True,
    ) as progress:
        bars = {name: progress.add_task(name, total=totals[name]) for name in suite.PHASES}
        try:
            results, wall = suite.run_suite(
                args, jobs=args.jobs, plot=bool(args.plot),
                on_progress=lambda name, now: progress.update(bars[name], completed=now),
            )
        except ValueError as exc:
            _fail(str(exc))
    targets, violations = suite.suite_targets(results)
    rep.render(console, targets, violations)
    for r in results:
        cfg = r.report["config"]
        console.print(
            f"{r.name:<10} {cfg['workload']:<9} {cfg['nodes']} nodes, {cfg['byzantine']} "
            f"Byzantine, {cfg['duration_s']:g}s virtual: {r.events} events, "
            f"{r.report['decisions']} decisions, {r.wall_s:.1f}s wall", markup=False)
    console.print(f"seed {results[0].spec.seed}: suite {wall:.1f}s wall", markup=False)
    if args.report_json:
        rep.write_json(args.report_json, suite.suite_report(results, wall))
    if args.plot:
        from sim import plot

        for r in results:
            if r.name in ("consensus", "partition"):
                plot.write_plots(args.plot, r.latencies, r.spec, r.decisions,
                                 prefix="" if r.name == "consensus" else f"{r.name}-")
    return rep.exit_code(targets, violations)


def _calibrate() -> int:
    from sim import calibrate

    figures = calibrate.measure()
    console = Console()
    for name, value in figures.items():
        console.print(f"{name:<28} {value * 1e6:10.3f} us", markup=False)
    console.print(f"--cost {calibrate.as_cost_flag(figures)}", markup=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sim`` console script. Returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "calibrate":
        return _calibrate()
    _fail("missing command: use `sim run ...` or `sim calibrate`")


if __name__ == "__main__":
    raise SystemExit(main())
