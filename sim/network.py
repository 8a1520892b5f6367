"""The network model: per-link latency, jitter, loss, duplication, reordering, bandwidth,
scheduled partitions and one-way link cuts.

Theory of operation
-------------------
The network moves opaque ``bytes`` between node ids ``0 .. n-1``. ``send(src, dst,
payload, depart_s, meta)`` decides the message's fate at once, from the network's own
child RNG, in this order: (1) a cut link (partition or one-way cut active at
``depart_s``) drops it; (2) with probability ``loss`` it is lost; (3) with ``bandwidth``
set it waits for the link to finish serialising earlier messages, then takes
``8*len/bandwidth`` seconds; (4) it gets a latency sampled from the latency model plus
``uniform(0, jitter)``; (5) links are FIFO by default (like the libp2p streams the node
uses): a message never arrives before the previous one on its link, unless it was picked
(probability ``reorder``) to be held back by an extra ``uniform(0, reorder_delay)``,
which lets later messages overtake it; (6) with probability ``duplicate`` a second copy
travels with its own latency. Each copy is one engine event at its arrival time; on
arrival the link is checked again (a partition that started while the message was in
flight drops it) and the receiver callback gets ``(src, dst, payload, meta)``.

Partitions are applied by engine events at their start and heal times, so the check per
message is a few dict lookups. Nodes not listed in any group of a partition form one
extra group together. A :class:`LinkCut` blocks one direction only (asymmetric links).
Messages a node sends to itself are delivered with zero latency and never lost.

Flag syntax (see :func:`parse_latency`, :func:`parse_partition`):
``50ms``, ``uniform:20ms:80ms``, ``lognormal:50ms:0.5`` (median, sigma of ln),
``regions:3:10ms:80ms`` (nodes i%3, intra/inter latency); partitions
``10s-20s:0-49|50-99`` (symmetric) and ``10s-20s:0-9>10-99`` (0-9 cannot reach 10-99).
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sim.engine import Engine
from sim.units import format_duration, format_nodeset, parse_duration, parse_nodeset

__all__ = [
    "Constant", "LatencyModel", "LinkCut", "LogNormal", "Network", "NetworkConfig",
    "NetworkStats", "Partition", "RegionMatrix", "Uniform", "parse_latency", "parse_partition",
]


class LatencyModel(Protocol):
    """One-way wire latency of a link, in seconds."""

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        """A latency draw (seconds, >= 0) for a message from ``src`` to ``dst``."""
        ...

    def describe(self) -> str:
        """Flag-style description, for reports."""
        ...


@dataclasses.dataclass(frozen=True)
class Constant:
    """Every message takes ``latency_s`` seconds."""

    latency_s: float

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        return self.latency_s

    def describe(self) -> str:
        return format_duration(self.latency_s)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Latency uniform in ``[low_s, high_s]`` seconds."""

    low_s: float
    high_s: float

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        return rng.uniform(self.low_s, self.high_s)

    def describe(self) -> str:
        return f"uniform:{format_duration(self.low_s)}:{format_duration(self.high_s)}"


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Log-normal latency with median ``median_s`` seconds and ``sigma`` the standard
    deviation of ``ln(latency)``: heavy right tail, like WAN links."""

    median_s: float
    sigma: float

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        return self.median_s * math.exp(rng.gauss(0.0, self.sigma))

    def describe(self) -> str:
        return f"lognormal:{format_duration(self.median_s)}:{self.sigma:g}"


@dataclasses.dataclass(frozen=True)
class RegionMatrix:
    """Latency by region pair. ``region_of[i]`` is node i's region name; ``matrix`` maps
    ``(region_a, region_b)`` to a model; a missing pair falls back to its mirror."""

    region_of: tuple[str, ...]
    matrix: dict[tuple[str, str], Any]

    def __post_init__(self) -> None:
        names = sorted(set(self.region_of))
        for a in names:
            for b in names:
                if (a, b) not in self.matrix and (b, a) not in self.matrix:
                    raise ValueError(f"region matrix has no latency for {a}-{b}")

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        a, b = self.region_of[src], self.region_of[dst]
        model = self.matrix.get((a, b)) or self.matrix[(b, a)]
        return model.sample(rng, src, dst)

    def describe(self) -> str:
        pairs = ",".join(f"{a}-{b}={m.describe()}" for (a, b), m in sorted(self.matrix.items()))
        return f"regions[{pairs}]"


def parse_latency(text: str, n_nodes: int) -> Any:
    """Parse a latency flag (see module doc). Raises ``ValueError`` (one line)."""
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if not rest:
            return Constant(parse_duration(text))
        if kind == "uniform" and len(args) == 2:
            low, high = parse_duration(args[0]), parse_duration(args[1])
            if low > high:
                raise ValueError(f"uniform latency {text!r} has low > high")
            return Uniform(low, high)
        if kind == "lognormal" and len(args) == 2:
            sigma = float(args[1])
            if not 0 <= sigma < 5:
                raise ValueError(f"lognormal sigma {args[1]!r} must be in [0, 5)")
            return LogNormal(parse_duration(args[0]), sigma)
        if kind == "regions" and len(args) == 3:
            k = int(args[0])
            if not 1 <= k <= max(1, n_nodes):
                raise ValueError(f"regions count {args[0]!r} must be 1..{n_nodes}")
            intra, inter = Constant(parse_duration(args[1])), Constant(parse_duration(args[2]))
            names = [f"r{i}" for i in range(k)]
            matrix = {(a, b): (intra if a == b else inter) for a in names for b in names}
            return RegionMatrix(tuple(names[i % k] for i in range(n_nodes)), matrix)
    except ValueError as exc:
        raise ValueError(f"--latency {text!r}: {exc}") from None
    raise ValueError(
        f"--latency {text!r} is not one of 50ms, uniform:LO:HI, lognormal:MEDIAN:SIGMA, "
        "regions:K:INTRA:INTER"
    )


@dataclasses.dataclass(frozen=True)
class Partition:
    """From ``start_s`` until ``end_s`` (None: never heals) nodes in different ``groups``
    cannot talk, in either direction. Unlisted nodes form one more group."""

    start_s: float
    end_s: float | None
    groups: tuple[frozenset[int], ...]

    def describe(self) -> str:
        """Flag syntax: ``10.000s-20.000s:0-49|50-99``."""
        groups = "|".join(format_nodeset(g) for g in self.groups)
        return f"{_window(self.start_s, self.end_s)}:{groups}"


@dataclasses.dataclass(frozen=True)
class LinkCut:
    """From ``start_s`` until ``end_s`` (None: never) messages from any node in ``src`` to
    any node in ``dst`` are dropped; the reverse direction still works."""

    start_s: float
    end_s: float | None
    src: frozenset[int]
    dst: frozenset[int]

    def describe(self) -> str:
        """Flag syntax: ``5.000s-8.000s:0-9>10-99``."""
        return f"{_window(self.start_s, self.end_s)}:{format_nodeset(self.src)}>" \
               f"{format_nodeset(self.dst)}"


def _window(start_s: float, end_s: float | None) -> str:
    end = "never" if end_s is None else f"{end_s:g}s"
    return f"{start_s:g}s-{end}"


def parse_partition(text: str, n_nodes: int) -> Partition | LinkCut:
    """Parse ``START-END:GROUP|GROUP[|...]`` or ``START-END:SRC>DST`` (``END`` may be
    ``never``). Raises ``ValueError`` (one line)."""
    window, sep, spec = text.partition(":")
    start_s, dash, end_s = window.partition("-")
    if not sep or not dash or not spec:
        raise ValueError(f"--partition {text!r} is not START-END:0-49|50-99 or START-END:A>B")
    try:
        start = parse_duration(start_s)
        end = None if end_s.strip() == "never" else parse_duration(end_s)
        if end is not None and end <= start:
            raise ValueError("heal time must be after start")
        if ">" in spec:
            src, _, dst = spec.partition(">")
            return LinkCut(start, end, parse_nodeset(src, n_nodes), parse_nodeset(dst, n_nodes))
        groups = tuple(parse_nodeset(g, n_nodes) for g in spec.split("|"))
        check_groups(groups, n_nodes)
        return Partition(start, end, groups)
    except ValueError as exc:
        raise ValueError(f"--partition {text!r}: {exc}") from None


def check_groups(groups: Sequence[frozenset[int]], n_nodes: int) -> None:
    """Raise ``ValueError`` unless the groups are disjoint and there are at least two
    (counting the implicit group of unlisted nodes)."""
    seen: set[int] = set()
    for g in groups:
        if seen & g:
            raise ValueError(f"node {min(seen & g)} is in two partition groups")
        seen |= g
    if len(groups) < 2 and len(seen) == n_nodes:
        raise ValueError("a partition needs at least two groups")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Link behaviour. Probabilities in [0, 1]; times in seconds; ``bandwidth_bps`` in
    bits per second (None: infinite)."""

    latency: Any = Constant(0.05)
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 0.05
    bandwidth_bps: float | None = None
    fifo: bool = True

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports."""
        return {
            "latency": self.latency.describe(), "jitter_s": self.jitter_s, "loss": self.loss,
            "duplicate": self.duplicate, "reorder": self.reorder,
            "reorder_delay_s": self.reorder_delay_s, "bandwidth_bps": self.bandwidth_bps,
            "fifo": self.fifo,
        }


@dataclasses.dataclass
class NetworkStats:
    """Counters (messages unless named bytes). ``ignored``: sent to a node whose process
    ignores every message (:attr:`Network.ignoring`), so never scheduled."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    cut: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes_sent: int = 0
    ignored: int = 0


Receiver = Callable[[int, int, bytes, Any], None]


class Network:
    """Moves bytes between ``n_nodes`` nodes on ``engine`` (see the module doc).

    ``receiver(src, dst, payload, meta)`` is called at each arrival. ``rng`` defaults to
    ``engine.child_rng("network")``.
    """

    def __init__(
        self, engine: Engine, n_nodes: int, config: NetworkConfig, receiver: Receiver,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.n_nodes = n_nodes
        self.config = config
        self.stats = NetworkStats()
        self._receiver = receiver
        self._rng = rng or engine.child_rng("network")
        # every scheduled partition/cut: (start_s, end_s or inf, item, groups): groups[i]
        # is node i's group in a Partition (-1: unlisted), None for a LinkCut
        self._windows: list[tuple[float, float, Partition | LinkCut, list[int] | None]] = []
        self._active: list[tuple[float, float, Partition | LinkCut, list[int] | None]] = []
        self._last_arrival: dict[tuple[int, int], float] = {}
        self._link_free: dict[tuple[int, int], float] = {}
        self._tracing = engine.tracing
        #: Nodes whose process ignores every message: copies to them are counted in
        #: ``stats.ignored`` and dropped at send (maintained by :class:`sim.world.World`).
        self.ignoring: set[int] = set()

    # -- partitions -----------------------------------------------------------------
    def schedule(self, item: Partition | LinkCut) -> None:
        """Apply a partition or cut at its start time and lift it at its end time."""
        groups = None
        if isinstance(item, Partition):
            groups = [-1] * self.n_nodes
            for idx, group in enumerate(item.groups):
                for node in group:
                    groups[node] = idx
        end = math.inf if item.end_s is None else item.end_s
        window = (item.start_s, end, item, groups)
        self._windows.append(window)
        self.engine.schedule_at(max(item.start_s, self.engine.now), self._activate, window)
        if item.end_s is not None:
            self.engine.schedule_at(max(item.end_s, self.engine.now), self._heal, window)

    def _activate(self, window: tuple) -> None:
        self.engine.record("partition", window[2].describe())
        self._active.append(window)

    def _heal(self, window: tuple) -> None:
        self.engine.record("heal", window[2].describe())
        self._active.remove(window)

    @staticmethod
    def _cuts(windows: list[tuple], src: int, dst: int) -> bool:
        for window in windows:
            groups = window[3]
            if groups is None:
                cut = window[2]
                if src in cut.src and dst in cut.dst:
                    return True
            elif groups[src] != groups[dst]:
                return True
        return False

    def _windows_at(self, time_s: float) -> list[tuple]:
        return [w for w in self._windows if w[0] <= time_s < w[1]]

    def blocked_at(self, src: int, dst: int, time_s: float) -> bool:
        """True when a scheduled partition or cut blocks src -> dst at ``time_s``
        (virtual seconds; a window is ``[start, end)``)."""
        return src != dst and self._cuts(self._windows_at(time_s), src, dst)

    def blocked(self, src: int, dst: int) -> bool:
        """True when the link src -> dst is cut right now."""
        return src != dst and self._cuts(self._active, src, dst)

    # -- sending --------------------------------------------------------------------
    def send(self, src: int, dst: int, payload: bytes, depart_s: float, meta: Any = None) -> None:
        """Send ``payload`` from ``src`` to ``dst``, leaving at ``depart_s`` (>= now)."""
        self._send_one(src, dst, payload, depart_s, meta)

    def send_many(
        self, src: int, dests: Sequence[int], payload: bytes, depart_s: float, step_s: float,
        tag: Any,
    ) -> float:
        """Send one ``payload`` from ``src`` to each of ``dests`` (valid node ids, checked
        by the caller), in order: the i-th copy leaves at ``depart_s + (i+1) * step_s``
        seconds (``step_s``: the sender's per-destination send cost) and carries the meta
        ``(tag, its departure time)``. Same fate rules as :meth:`send`; partitions and
        cuts apply at each copy's departure time. Returns the last copy's departure time
        (``depart_s`` when ``dests`` is empty)."""
        stats, cfg = self.stats, self.config
        if (cfg.duplicate or cfg.loss or cfg.bandwidth_bps or cfg.jitter_s or cfg.reorder
                or self._tracing or not cfg.fifo or type(cfg.latency) is not Constant):
            for dst in dests:
                depart_s += step_s
                self._send_one(src, dst, payload, depart_s, (tag, depart_s))
            return depart_s
        # fast path: constant latency, FIFO links, no loss: one arrival per copy
        size = len(payload)
        push, arrive, ignoring = self.engine.schedule_unchecked, self._arrive, self.ignoring
        latency, last_arrival = cfg.latency.latency_s, self._last_arrival
        cuts: list[tuple] | None = None
        if self._windows:
            first, last = self._windows_at(depart_s + step_s), \
                self._windows_at(depart_s + step_s * len(dests))
            cuts = first if first == last else None  # None: check each copy's time
        for dst in dests:
            depart_s += step_s
            stats.sent += 1
            stats.bytes_sent += size
            if dst in ignoring:
                stats.ignored += 1
                continue
            if src == dst:
                push(depart_s, arrive, src, dst, payload, (tag, depart_s))
                continue
            if self._windows and self._cuts(
                    self._windows_at(depart_s) if cuts is None else cuts, src, dst):
                stats.cut += 1
                continue
            arrival = depart_s + latency
            link = (src, dst)
            last_at = last_arrival.get(link, 0.0)
            if arrival < last_at:
                arrival = last_at
            last_arrival[link] = arrival
            push(arrival, arrive, src, dst, payload, (tag, depart_s))
        return depart_s

    def _send_one(self, src: int, dst: int, payload: bytes, depart_s: float, meta: Any) -> None:
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += len(payload)
        if dst in self.ignoring:
            stats.ignored += 1
            return
        engine = self.engine
        if self._tracing:
            engine.record("send", src, dst, depart_s, len(payload), zlib.crc32(payload))
        if src == dst:
            engine.schedule_unchecked(depart_s, self._arrive, src, dst, payload, meta)
            return
        # checked at the departure time: the sender may run ahead of `now` (sim.cpu)
        if self._windows and self.blocked_at(src, dst, depart_s):
            stats.cut += 1
            return
        cfg = self.config
        if not (cfg.duplicate or cfg.loss):  # one copy, never lost
            arrival = self._arrival_time(src, dst, len(payload), depart_s, True)
            engine.schedule_unchecked(arrival, self._arrive, src, dst, payload, meta)
            return
        rng = self._rng
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        if copies == 2:
            stats.duplicated += 1
        for copy in range(copies):
            if cfg.loss and rng.random() < cfg.loss:
                stats.lost += 1
                continue
            arrival = self._arrival_time(src, dst, len(payload), depart_s, copy == 0)
            engine.schedule_unchecked(arrival, self._arrive, src, dst, payload, meta)

    def _arrival_time(self, src: int, dst: int, size: int, depart: float, first: bool) -> float:
        cfg, rng = self.config, self._rng
        link = (src, dst)
        if cfg.bandwidth_bps:
            start = max(depart, self._link_free.get(link, 0.0))
            depart = start + size * 8.0 / cfg.bandwidth_bps
            self._link_free[link] = depart
        arrival = depart + cfg.latency.sample(rng, src, dst)
        if cfg.jitter_s:
            arrival += rng.uniform(0.0, cfg.jitter_s)
        if cfg.reorder and rng.random() < cfg.reorder:
            self.stats.reordered += 1
            return arrival + rng.uniform(0.0, cfg.reorder_delay_s)
        if cfg.fifo and first:
            last = self._last_arrival.get(link, 0.0)
            if arrival < last:
                arrival = last
            self._last_arrival[link] = arrival
        return arrival

    def _arrive(self, src: int, dst: int, payload: bytes, meta: Any) -> None:
        if self._active and self._cuts(self._active, src, dst) and src != dst:
            self.stats.cut += 1
            return
        self.stats.delivered += 1
        if self._tracing:
            self.engine.record("arrive", src, dst)
        self._receiver(src, dst, payload, meta)
