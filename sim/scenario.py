"""Scenario files (TOML) and the resolved description of one run (:class:`RunSpec`).

A scenario says what flags cannot: a timeline of partitions, one-way cuts, crashes and
restarts, load, and adversaries. Every key is checked; an unknown key or a bad value
raises :class:`ScenarioError` naming the file and the key (``partition[2].heal``).
Format (all sections optional; durations like ``"10s"``; node sets like ``"0-49,60"``)::

    [run]                      # defaults; command-line flags override them
    nodes = 100
    byzantine = 0.33           # fraction; or byzantine_nodes = "0-32"
    seed = 7
    duration = "60s"
    workload = "pbft"

    [network]
    latency = "lognormal:50ms:0.5"   # same syntax as --latency
    jitter = "5ms"
    loss = 0.01
    duplicate = 0.001
    reorder = 0.01
    reorder_delay = "50ms"
    bandwidth = "100Mbit"
    fifo = true
    [network.regions]          # optional region matrix (replaces latency)
    eu = "0-49"
    us = "50-99"
    [network.region_latency]
    "eu-eu" = "10ms"
    "eu-us" = "lognormal:80ms:0.2"
    "us-us" = "10ms"

    [[partition]]              # symmetric split; unlisted nodes form one more group
    at = "10s"
    heal = "20s"               # omit: never heals
    groups = ["0-49", "50-99"]

    [[cut]]                    # one-way: from cannot reach to
    at = "5s"
    heal = "8s"
    from = "0-9"
    to = "10-99"

    [[crash]]
    nodes = "3,7"
    at = "15s"
    restart = "25s"            # omit: stays down

    [[load]]
    rate = 20.0                # operations per second
    from = "0s"
    until = "60s"
    size = 256                 # payload bytes per operation

    [workload_params]          # free-form, passed to the workload (it rejects unknowns)
    target_p99 = "2s"

    [[adversary]]              # names are resolved by the workload (and sim.adversary)
    strategy = "equivocating-primary"
    nodes = "byzantine"        # or a node set; default: all Byzantine nodes
    from = "0s"
    until = "60s"
    params = { every = 3 }
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from typing import Any

from sim.cpu import CostModel
from sim.engine import derive_seed
from sim.network import (
    LinkCut,
    NetworkConfig,
    Partition,
    RegionMatrix,
    check_groups,
    parse_latency,
)
from sim.units import (
    format_nodeset,
    parse_bandwidth,
    parse_duration,
    parse_nodeset,
    parse_probability,
)

__all__ = [
    "AdversarySpec", "CrashSpec", "LoadSpec", "RunSpec", "ScenarioError", "Timeline",
    "byzantine_count", "load_scenario", "parse_network", "parse_timeline", "pick_byzantine",
]


class ScenarioError(ValueError):
    """A scenario file that cannot be read or is invalid (message names file and key)."""


@dataclasses.dataclass(frozen=True)
class CrashSpec:
    """Crash ``nodes`` at ``at_s``; restart them at ``restart_s`` (None: never)."""

    nodes: frozenset[int]
    at_s: float
    restart_s: float | None


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """``rate_per_s`` operations per second of ``size_bytes`` each in [start_s, end_s)."""

    rate_per_s: float
    start_s: float
    end_s: float | None
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class AdversarySpec:
    """A named strategy with parameters, run by ``nodes`` (None: all Byzantine nodes)
    between ``start_s`` and ``end_s``. The workload (or :mod:`sim.adversary`) gives the
    name a meaning and rejects names it does not know."""

    strategy: str
    nodes: frozenset[int] | None
    params: dict[str, Any]
    start_s: float = 0.0
    end_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Everything that happens at given times in a run."""

    partitions: tuple[Partition | LinkCut, ...] = ()
    crashes: tuple[CrashSpec, ...] = ()
    load: tuple[LoadSpec, ...] = ()
    adversaries: tuple[AdversarySpec, ...] = ()

    def last_heal_s(self) -> float | None:
        """The latest time a partition, cut or crash ends (None when nothing heals)."""
        ends = [p.end_s for p in self.partitions if p.end_s is not None]
        ends += [c.restart_s for c in self.crashes if c.restart_s is not None]
        return max(ends) if ends else None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: what ``sim run`` flags plus a scenario file describe."""

    nodes: int
    byzantine: frozenset[int]
    seed: int
    duration_s: float
    workload: str
    network: NetworkConfig
    costs: CostModel
    timeline: Timeline
    allow_unsafe: bool = False
    scenario_path: str | None = None
    workload_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def honest(self) -> frozenset[int]:
        return frozenset(n for n in range(self.nodes) if n not in self.byzantine)

    def describe(self) -> dict[str, Any]:
        """The ``config`` object of the JSON report (deterministic)."""
        return {
            "nodes": self.nodes, "byzantine": len(self.byzantine),
            "byzantine_nodes": sorted(self.byzantine), "f": (self.nodes - 1) // 3,
            "seed": self.seed, "duration_s": self.duration_s, "workload": self.workload,
            "network": self.network.describe(), "costs": self.costs.as_dict(),
            "partitions": [p.describe() for p in self.timeline.partitions],
            "crashes": [
                {"nodes": format_nodeset(c.nodes), "at_s": c.at_s, "restart_s": c.restart_s}
                for c in self.timeline.crashes
            ],
            "load": [dataclasses.asdict(x) for x in self.timeline.load],
            "adversaries": [
                {"strategy": a.strategy, "params": a.params, "from_s": a.start_s,
                 "until_s": a.end_s,
                 "nodes": "byzantine" if a.nodes is None else format_nodeset(a.nodes)}
                for a in self.timeline.adversaries
            ],
            "allow_unsafe": self.allow_unsafe, "scenario": self.scenario_path,
            "workload_params": self.workload_params,
        }


def byzantine_count(fraction: float, n: int, *, allow_unsafe: bool) -> int:
    """``floor(fraction * n)``; raises ``ValueError`` when it exceeds f = (n-1)//3 and
    ``allow_unsafe`` is false, or when fraction is outside [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--byzantine {fraction!r} must be a fraction in [0, 1]")
    count = math.floor(fraction * n + 1e-9)
    f = (n - 1) // 3
    if count > f and not allow_unsafe:
        raise ValueError(
            f"--byzantine {fraction:g} makes {count} of {n} nodes Byzantine, more than "
            f"f = {f}; pass --allow-unsafe to run it anyway"
        )
    return count


def pick_byzantine(count: int, n: int, seed: int) -> frozenset[int]:
    """``count`` node ids drawn deterministically from ``seed``."""
    rng = random.Random(derive_seed(seed, "byzantine"))
    return frozenset(rng.sample(range(n), count))


# -- reading files -------------------------------------------------------------------

_TOP = {"run", "network", "partition", "cut", "crash", "load", "adversary", "workload_params"}
_RUN = {"nodes", "byzantine", "byzantine_nodes", "seed", "duration", "workload"}
_NET = {"latency", "jitter", "loss", "duplicate", "reorder", "reorder_delay", "bandwidth",
        "fifo", "regions", "region_latency"}


def load_scenario(path: str) -> dict[str, Any]:
    """Read and shape-check a scenario file. Returns the TOML as a dict. Raises
    :class:`ScenarioError` for unreadable files, TOML syntax errors and unknown keys."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    _only(data, _TOP, path, "")
    _only(data.get("run", {}), _RUN, path, "run.")
    _only(data.get("network", {}), _NET, path, "network.")
    _only(data.get("workload_params", {}), set(data.get("workload_params", {})), path, "")
    for section in ("partition", "cut", "crash", "load", "adversary"):
        if not isinstance(data.get(section, []), list):
            raise ScenarioError(f"{path}: {section} must be an array of tables ([[{section}]])")
    data["_path"] = path
    return data


def _only(table: Any, allowed: set[str], path: str, prefix: str) -> None:
    if not isinstance(table, dict):
        raise ScenarioError(f"{path}: {prefix.rstrip('.')} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(
            f"{path}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(allowed))})"
        )


def _field(item: dict, key: str, where: str, path: str, parse: Any, default: Any = ...) -> Any:
    if key not in item:
        if default is ...:
            raise ScenarioError(f"{path}: {where} needs {key!r}")
        return default
    try:
        return parse(item[key])
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{path}: {where}.{key}: {exc}") from None


def parse_network(data: dict[str, Any], n_nodes: int, base: NetworkConfig) -> NetworkConfig:
    """The ``[network]`` section applied over ``base``. Raises :class:`ScenarioError`."""
    net, path = data.get("network", {}), data.get("_path", "<scenario>")
    changes: dict[str, Any] = {}
    simple = {
        "jitter": ("jitter_s", parse_duration), "loss": ("loss", parse_probability),
        "duplicate": ("duplicate", parse_probability),
        "reorder": ("reorder", parse_probability),
        "reorder_delay": ("reorder_delay_s", parse_duration),
        "bandwidth": ("bandwidth_bps", parse_bandwidth), "fifo": ("fifo", _boolean),
        "latency": ("latency", lambda v: parse_latency(str(v), n_nodes)),
    }
    for key, (attr, parse) in simple.items():
        if key in net:
            changes[attr] = _field(net, key, "network", path, parse)
    if "regions" in net:
        changes["latency"] = _regions(net, n_nodes, path)
    return dataclasses.replace(base, **changes)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _regions(net: dict[str, Any], n_nodes: int, path: str) -> RegionMatrix:
    regions, lat = net["regions"], net.get("region_latency", {})
    if not isinstance(regions, dict) or not isinstance(lat, dict):
        raise ScenarioError(f"{path}: network.regions and network.region_latency must be tables")
    region_of: list[str | None] = [None] * n_nodes
    for name in sorted(regions):
        nodes = _field(regions, name, "network.regions", path, lambda v: parse_nodeset(v, n_nodes))
        for node in sorted(nodes):
            if region_of[node] is not None:
                raise ScenarioError(f"{path}: network.regions: node {node} is in two regions")
            region_of[node] = name
    missing = [i for i, r in enumerate(region_of) if r is None]
    if missing:
        raise ScenarioError(f"{path}: network.regions: node {missing[0]} has no region")
    matrix: dict[tuple[str, str], Any] = {}
    for pair in sorted(lat):
        a, sep, b = pair.partition("-")
        if not sep or a not in regions or b not in regions:
            raise ScenarioError(f"{path}: network.region_latency.{pair}: not REGION-REGION")
        matrix[(a, b)] = _field(lat, pair, "network.region_latency", path,
                                lambda v: parse_latency(str(v), n_nodes))
    try:
        return RegionMatrix(tuple(region_of), matrix)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ScenarioError(f"{path}: network.region_latency: {exc}") from None


def parse_timeline(data: dict[str, Any], n_nodes: int) -> Timeline:
    """The timeline sections of a loaded scenario, for a run of ``n_nodes`` nodes.
    Raises :class:`ScenarioError` naming the bad key."""
    path = data.get("_path", "<scenario>")

    def nodes(v: Any) -> frozenset[int]:
        return parse_nodeset(v, n_nodes)

    def opt_time(v: Any) -> float | None:
        return None if v == "never" else parse_duration(v)

    parts: list[Partition | LinkCut] = []
    for i, item in enumerate(data.get("partition", [])):
        where = f"partition[{i}]"
        _only(item, {"at", "heal", "groups"}, path, where + ".")
        at = _field(item, "at", where, path, parse_duration)
        heal = _field(item, "heal", where, path, opt_time, None)
        groups = _field(item, "groups", where, path, lambda v: tuple(nodes(g) for g in v))
        _check(check_groups, path, where, groups, n_nodes)
        _check_window(at, heal, path, where, "heal")
        parts.append(Partition(at, heal, groups))
    for i, item in enumerate(data.get("cut", [])):
        where = f"cut[{i}]"
        _only(item, {"at", "heal", "from", "to"}, path, where + ".")
        at = _field(item, "at", where, path, parse_duration)
        heal = _field(item, "heal", where, path, opt_time, None)
        _check_window(at, heal, path, where, "heal")
        parts.append(LinkCut(at, heal, _field(item, "from", where, path, nodes),
                             _field(item, "to", where, path, nodes)))
    return Timeline(tuple(parts), _crashes(data, nodes, path), _load(data, path),
                    _adversaries(data, nodes, path))


def _check(fn: Any, path: str, where: str, *args: Any) -> None:
    try:
        fn(*args)
    except ValueError as exc:
        raise ScenarioError(f"{path}: {where}: {exc}") from None


def _check_window(start: float, end: float | None, path: str, where: str, key: str) -> None:
    if end is not None and end <= start:
        raise ScenarioError(f"{path}: {where}.{key}: must be after the start ({start:g}s)")


def _crashes(data: dict, nodes: Any, path: str) -> tuple[CrashSpec, ...]:
    out = []
    for i, item in enumerate(data.get("crash", [])):
        where = f"crash[{i}]"
        _only(item, {"nodes", "at", "restart"}, path, where + ".")
        at = _field(item, "at", where, path, parse_duration)
        restart = _field(item, "restart", where, path, parse_duration, None)
        _check_window(at, restart, path, where, "restart")
        out.append(CrashSpec(_field(item, "nodes", where, path, nodes), at, restart))
    return tuple(out)


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a non-negative integer")
    return v


def _rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e7:
        raise ValueError(f"{v!r} is not a rate in operations per second (0 < rate < 1e7)")
    return float(v)


def _load(data: dict, path: str) -> tuple[LoadSpec, ...]:
    out = []
    for i, item in enumerate(data.get("load", [])):
        where = f"load[{i}]"
        _only(item, {"rate", "from", "until", "size"}, path, where + ".")
        start = _field(item, "from", where, path, parse_duration, 0.0)
        end = _field(item, "until", where, path, parse_duration, None)
        _check_window(start, end, path, where, "until")
        out.append(LoadSpec(_field(item, "rate", where, path, _rate), start, end,
                            _field(item, "size", where, path, _positive_int, 64)))
    return tuple(out)


def _adversaries(data: dict, nodes: Any, path: str) -> tuple[AdversarySpec, ...]:
    out = []
    for i, item in enumerate(data.get("adversary", [])):
        where = f"adversary[{i}]"
        _only(item, {"strategy", "nodes", "from", "until", "params"}, path, where + ".")
        strategy = _field(item, "strategy", where, path, _name)
        who = item.get("nodes", "byzantine")
        chosen = None if who == "byzantine" else _field(item, "nodes", where, path, nodes)
        params = _field(item, "params", where, path, _table, {})
        start = _field(item, "from", where, path, parse_duration, 0.0)
        end = _field(item, "until", where, path, parse_duration, None)
        _check_window(start, end, path, where, "until")
        out.append(AdversarySpec(strategy, chosen, params, start, end))
    return tuple(out)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a strategy name")
    return v


def _table(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{v!r} is not a table")
    return dict(v)
