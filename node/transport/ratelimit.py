"""Per-peer token-bucket rate limits on inbound messages (pure).

Theory of operation
-------------------
Each peer has a token bucket: it holds at most ``burst`` tokens and refills at ``rate``
tokens per second; a message costs ``cost`` tokens (default 1) and is admitted only if
the bucket holds that many. Time is an input (``now``, seconds on a monotonic clock:
``trio.current_time()`` in the node, virtual seconds in the simulator); a clock that
steps backwards refills nothing. :class:`PeerRateLimiter` keeps one bucket per PeerId,
bounded to ``max_peers`` by evicting the least recently used one; an evicted peer
returns with a full bucket, so ``max_peers`` should exceed the connection limit.
Refused messages are counted per peer for the drop metrics and reputation.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

__all__ = ["PeerRateLimiter", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, capacity ``burst``, full at ``now`` (seconds).
    Raises ValueError for a negative rate or a burst below zero."""

    __slots__ = ("burst", "rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be non-negative")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._stamp = float(burst), now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (does not spend)."""
        return min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if available at ``now``; True when spent."""
        self._tokens = self.tokens(now)
        self._stamp = max(self._stamp, now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class PeerRateLimiter:
    """One :class:`TokenBucket` per peer key (a PeerId string or bytes)."""

    def __init__(self, rate: float, burst: float, *, max_peers: int = 10_000) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        TokenBucket(rate, burst, 0.0)  # validate once
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        #: Refused messages per peer.
        self.refused: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, peer: Hashable, now: float, cost: float = 1.0) -> bool:
        """Admit a message of ``cost`` tokens from ``peer`` at ``now`` (seconds)?"""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        if bucket.take(now, cost):
            return True
        self.refused[peer] += 1
        return False

    def forget(self, peer: Hashable) -> None:
        """Drop ``peer``'s bucket (e.g. when it disconnects for good)."""
        self._buckets.pop(peer, None)
