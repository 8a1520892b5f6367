"""Open-loop load: operations at a fixed rate, independent of how fast the system is."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sim.engine import Engine
from sim.scenario import LoadSpec

__all__ = ["schedule_load"]


def schedule_load(
    engine: Engine, load: Sequence[LoadSpec], duration_s: float,
    on_op: Callable[[int, int], None],
) -> int:
    """Schedule ``on_op(index, size_bytes)`` for every operation of every ``LoadSpec``:
    at ``start_s + k / rate_per_s`` for k = 0, 1, ... while before ``end_s`` (or
    ``duration_s``). ``index`` counts operations in time order across specs (ties by
    spec order). Returns the number of operations scheduled."""
    times: list[tuple[float, int, int]] = []
    for order, spec in enumerate(load):
        end = duration_s if spec.end_s is None else min(spec.end_s, duration_s)
        count = max(0, math.ceil((end - spec.start_s) * spec.rate_per_s - 1e-9))
        times.extend(
            (spec.start_s + k / spec.rate_per_s, order, spec.size_bytes) for k in range(count)
        )
    times.sort()
    for index, (at, _, size) in enumerate(times):
        engine.schedule_at(at, on_op, index, size)
    return len(times)
