"""Pure token buckets: refill, burst, clock steps, per-peer bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.transport.ratelimit import PeerRateLimiter, TokenBucket


def test_burst_then_refill() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert bucket.tokens(100.0) == 5.0  # capped at burst


def test_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=50))
def test_admitted_never_exceeds_burst_plus_rate_times_time(gaps: list[float]) -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)
    assert admitted <= 3 + 2.0 * now + 1e-9


def test_per_peer_limits_and_refusal_counts() -> None:
    limiter = PeerRateLimiter(rate=1.0, burst=2.0)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 0.0)  # b has its own bucket
    assert limiter.refused == {"a": 1}
    assert limiter.allow("a", 1.0)


def test_peer_map_is_bounded_lru() -> None:
    limiter = PeerRateLimiter(rate=0.0, burst=1.0, max_peers=2)
    limiter.allow("a", 0.0)
    limiter.allow("b", 0.0)
    limiter.allow("a", 0.0)  # refused, but a is now most recently used
    limiter.allow("c", 0.0)  # evicts b
    assert len(limiter) == 2
    assert limiter.allow("a", 0.0) is False  # a kept its empty bucket
    assert limiter.allow("b", 0.0) is True  # b came back with a full one
    limiter.forget("b")
    assert len(limiter) == 1


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        PeerRateLimiter(1.0, 1.0, max_peers=0)
