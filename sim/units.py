"""Parsers for the simulator's flag and scenario values (durations, rates, node sets).

Every parser raises ``ValueError`` with a one-line message naming the bad value, so the
CLI and the scenario loader can print it as-is.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "format_duration",
    "format_nodeset",
    "parse_bandwidth",
    "parse_duration",
    "parse_nodeset",
    "parse_probability",
]

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_BANDWIDTH_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kMG]?)(bit|bps|B/s|B)?\s*$")
_BANDWIDTH_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def parse_duration(text: str | float | int) -> float:
    """Parse ``"50ms"``, ``"1.5s"``, ``"2m"``, ``"100us"`` or a bare number (seconds).

    Returns seconds (float, >= 0). Raises ``ValueError`` for anything else, negative or
    non-finite values included.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise ValueError(f"{text!r} is not a duration (try 50ms, 1.5s, 2m)")
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a non-negative finite duration")
    return value


def format_duration(seconds: float) -> str:
    """Human form of ``seconds`` (3 significant digits): ``"850us"``, ``"12.3ms"``,
    ``"1.5s"``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s"


def parse_probability(text: str | float | int) -> float:
    """Parse a probability in [0, 1] (``"0.01"`` or ``"1%"``). Raises ``ValueError``."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a probability (try 0.01 or 1%)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not a probability in [0, 1]")
    return value


def parse_bandwidth(text: str | float | int) -> float:
    """Parse a link bandwidth: ``"100Mbit"``, ``"1Gbps"``, ``"10MB/s"``, bare bits/s.

    Returns bits per second (> 0). Raises ``ValueError``.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _BANDWIDTH_RE.match(str(text))
        if not m:
            raise ValueError(f"{text!r} is not a bandwidth (try 100Mbit or 10MB/s)")
        value = float(m.group(1)) * _BANDWIDTH_SCALE[m.group(2)]
        if m.group(3) in ("B/s", "B"):
            value *= 8.0
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is not a positive bandwidth")
    return value


def parse_nodeset(text: str | int | list, n_nodes: int) -> frozenset[int]:
    """Parse a node set such as ``"0-49,60,70-72"`` (inclusive ranges) or a list of ints.

    Node ids are ``0 .. n_nodes-1``. Raises ``ValueError`` for malformed parts, reversed
    ranges or ids out of range.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a node set")
    if isinstance(text, int):
        parts: list[str] = [str(text)]
    elif isinstance(text, list):
        parts = [str(x) for x in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{text!r} is an empty node set")
    out: set[int] = set()
    for part in parts:
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"{part!r} in node set {text!r} is not N or N-M") from None
        if lo > hi:
            raise ValueError(f"range {part!r} in node set {text!r} is reversed")
        if lo < 0 or hi >= n_nodes:
            raise ValueError(f"node set {text!r} names nodes outside 0-{n_nodes - 1}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_nodeset(nodes: frozenset[int] | set[int]) -> str:
    """Compact form of a node set, the inverse of :func:`parse_nodeset`: ``"0-49,60"``."""
    out: list[str] = []
    run: list[int] = []
    for node in sorted(nodes):
        if run and node == run[-1] + 1:
            run.append(node)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [node]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)
