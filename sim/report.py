"""Metrics and the end-of-run report: latency recorders, targets, table, JSON, exit code.

Percentiles use the **nearest-rank** method: for ``n`` samples sorted ascending, the
p-th percentile is the sample at 1-based rank ``ceil(p/100 * n)`` (rank 1 for p = 0).
It always returns an observed value (no interpolation), so p99 of 100 samples is the
99th smallest and p99 of 10 samples is the largest. An empty recorder has no
percentiles (``None``), and a target measured on no samples is *missed*, never met.

Exit codes: 0 when every target is met and no safety invariant broke, 1 when a target
is missed (liveness violations count as misses), 2 when a safety invariant broke.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sim.invariants import Violation
from sim.units import format_duration

__all__ = [
    "EXIT_OK", "EXIT_SAFETY", "EXIT_TARGET_MISSED", "LatencyRecorder", "Target",
    "exit_code", "percentile", "render", "write_json",
]

EXIT_OK, EXIT_TARGET_MISSED, EXIT_SAFETY = 0, 1, 2


def percentile(sorted_samples: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0..100) of ascending ``sorted_samples``; None when
    empty. Raises ``ValueError`` for p outside [0, 100]."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p!r}")
    n = len(sorted_samples)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_samples[rank - 1]


class LatencyRecorder:
    """Collects latency samples (seconds) and summarises them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._samples: list[float] = []
        self._sorted = True
        #: Operations that never completed; they count as +inf latency in percentiles
        #: (so a target cannot be met by ignoring what got stuck).
        self.unfinished = 0

    def add(self, seconds: float) -> None:
        """Record one latency (seconds, >= 0). Raises ``ValueError`` when negative."""
        if not seconds >= 0:
            raise ValueError(f"{self.name}: latency must be >= 0, got {seconds!r}")
        if self._samples and seconds < self._samples[-1]:
            self._sorted = False
        self._samples.append(seconds)

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    @property
    def count(self) -> int:
        return len(self._samples)

    def samples(self) -> list[float]:
        """The samples, ascending."""
        if not self._sorted:
            self._samples.sort()
            self._sorted = True
        return self._samples

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile over samples plus ``unfinished`` (as +inf)."""
        s = self.samples()
        if not self.unfinished:
            return percentile(s, p)
        total = len(s) + self.unfinished
        rank = max(1, math.ceil(p / 100.0 * total))
        return s[rank - 1] if rank <= len(s) else math.inf

    def summary(self) -> dict[str, Any]:
        """``{"p50", "p95", "p99", "max", "count", "unfinished"}`` in seconds; a
        percentile is None when there are no samples or when it falls on an unfinished
        operation (+inf has no JSON form)."""
        s = self.samples()

        def finite(x: float | None) -> float | None:
            return None if x is None or x == math.inf else x

        return {
            "p50": finite(self.percentile(50)), "p95": finite(self.percentile(95)),
            "p99": finite(self.percentile(99)),
            "max": None if not s or self.unfinished else s[-1],
            "count": len(s), "unfinished": self.unfinished,
        }


@dataclasses.dataclass
class Target:
    """A latency goal: ``recorder``'s ``percentile`` must be <= ``limit_s`` seconds.

    ``measured_s`` overrides the recorder for targets that are one number (e.g. "all
    routing tables converged after X s"). ``note`` explains what is measured.
    """

    name: str
    limit_s: float
    recorder: LatencyRecorder | None = None
    percentile: float = 99.0
    measured_s: float | None = None
    note: str = ""
    #: The suite phase that measured it ("" outside the suite, see :mod:`sim.suite`).
    phase: str = ""

    @property
    def measured(self) -> float | None:
        if self.measured_s is not None:
            return self.measured_s
        return self.recorder.percentile(self.percentile) if self.recorder else None

    @property
    def met(self) -> bool:
        m = self.measured
        return m is not None and m <= self.limit_s

    def as_dict(self) -> dict[str, Any]:
        m = self.measured
        return {
            "name": self.name, "limit_s": self.limit_s,
            "measured_s": None if m == math.inf else m,
            "percentile": self.percentile, "met": self.met, "note": self.note,
        } | ({"phase": self.phase} if self.phase else {})


def exit_code(targets: Iterable[Target], violations: Iterable[Violation]) -> int:
    """2 if any safety violation, else 1 if a target is missed or liveness broke, else 0."""
    violations = list(violations)
    if any(v.safety for v in violations):
        return EXIT_SAFETY
    if violations or not all(t.met for t in targets):
        return EXIT_TARGET_MISSED
    return EXIT_OK


def _fmt(value: float | None) -> str:
    if value == math.inf:
        return "never"
    return "-" if value is None else format_duration(value)


def render(console: Console, targets: Sequence[Target], violations: Sequence[Violation]) -> None:
    """Print the targets table and the first safety violation (if any) to ``console``."""
    table = Table(title="simulation targets")
    phases = any(t.phase for t in targets)
    if phases:
        table.add_column("phase", no_wrap=True)
    table.add_column("target", no_wrap=True)
    for col in ("limit", "p50", "p95", "p99", "n", "result"):
        table.add_column(col, justify="right", no_wrap=True)
    for t in targets:
        rec = t.recorder
        p = [rec.percentile(q) if rec else None for q in (50, 95, 99)]
        if rec is None:
            p = [None, None, t.measured_s]
        result = "[green]met[/green]" if t.met else "[red]missed[/red]"
        table.add_row(
            *([t.phase] if phases else []), Text(f"{t.name} [p{t.percentile:g}]"),
            _fmt(t.limit_s), *(_fmt(x) for x in p),
            str(rec.count + rec.unfinished if rec else "-"), result,
        )
    console.print(table)
    safety = [v for v in violations if v.safety]
    if safety:
        console.print(f"[bold red]{len(safety)} safety violation(s); first:[/bold red]")
        console.print(safety[0].one_line(), markup=False)
    live = [v for v in violations if not v.safety]
    if live:
        console.print(live[0].one_line(), markup=False)


def write_json(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` as pretty JSON (sorted keys, so equal reports are equal bytes)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
        fh.write("\n")
