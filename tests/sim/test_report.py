"""Percentiles (nearest rank), targets, exit codes, table rendering."""

import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from sim.invariants import Violation
from sim.report import LatencyRecorder, Target, exit_code, percentile, render


def test_nearest_rank_percentiles():
    s = [float(i) for i in range(1, 101)]
    assert percentile(s, 50) == 50 and percentile(s, 99) == 99 and percentile(s, 100) == 100
    assert percentile(s, 0) == 1
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile(list(range(10)), 99) == 9
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(s, 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1),
       st.floats(min_value=0, max_value=100))
def test_percentile_is_an_observed_value_with_enough_samples_below(xs, p):
    xs = sorted(xs)
    v = percentile(xs, p)
    assert v in xs
    assert sum(1 for x in xs if x <= v) >= p / 100 * len(xs)


def test_recorder_summary_and_unfinished_operations_count_as_infinite():
    rec = LatencyRecorder("x")
    rec.extend([0.3, 0.1, 0.2])
    assert rec.summary() == {"p50": 0.2, "p95": 0.3, "p99": 0.3, "max": 0.3, "count": 3,
                             "unfinished": 0}
    rec.unfinished = 1
    assert rec.percentile(50) == 0.2 and rec.percentile(99) == math.inf
    assert rec.summary()["p99"] is None and rec.summary()["max"] is None
    with pytest.raises(ValueError):
        rec.add(-1)


def test_targets_and_exit_codes():
    rec = LatencyRecorder("x")
    rec.extend([0.5, 1.0])
    met, missed = Target("a", 1.0, rec), Target("b", 0.6, rec)
    empty = Target("c", 1.0, LatencyRecorder("y"))
    assert met.met and not missed.met and not empty.met
    assert Target("d", 5.0, measured_s=4.0).met
    safety = Violation("agreement", True, "m", 1, 0.0, 1, "e")
    live = Violation("liveness", False, "m", 1, 0.0, None, "e")
    assert exit_code([met], []) == 0
    assert exit_code([met, missed], []) == 1
    assert exit_code([met], [live]) == 1
    assert exit_code([missed], [live, safety]) == 2
    out = io.StringIO()
    render(Console(file=out, width=120), [met, missed, empty], [safety])
    text = out.getvalue()
    assert "met" in text and "missed" in text and "SAFETY violation (agreement)" in text
