"""Per-peer failure backoff and the node's round-trip-time estimate (pure).

Theory of operation
-------------------
Two things a Kademlia node learns from its own requests, kept apart from the routing
table because they also concern peers that are not (or no longer) in it, such as the
fabricated PeerIds a lying peer hands out:

* **Backoff** (Kademlia paper, section 4.1: "Kademlia locks unresponsive contacts and
  avoids sending them any further RPCs for an exponentially increasing backoff
  interval"). After the n-th consecutive failure of a request to a peer (timeout, dial
  error, reset, malformed or wrong answer) the peer is *locked* until ``now +
  min(backoff * 2 ** (n - 1), backoff_max)``; lookups do not ask a locked peer and the
  node does not hand it out in its answers. An answer from the peer clears its record.
  At most ``capacity`` records are kept; when full, the record that failed least
  recently is forgotten (a liar can name any number of PeerIds, so the map must be
  bounded; forgetting only makes the peer eligible again).
* **Stall timeout**: a smoothed RTT and RTT variance over every answered request
  (Jacobson/Karels as in RFC 6298 section 2: ``rttvar = 3/4 rttvar + 1/4 |srtt - r|``,
  ``srtt = 7/8 srtt + 1/8 r``; the first sample sets ``srtt = r``, ``rttvar = r / 2``).
  :meth:`PeerHealth.stall_timeout` is ``max(2 srtt, srtt + 4 rttvar)`` clamped to
  ``[floor, ceiling]``, and ``initial`` before the first sample. It is deliberately not
  a failure: a request older than that is only *stalled*, so a lookup stops waiting for
  it and asks the next peer (paper section 2.3, "nodes that fail to respond quickly are
  removed from consideration until and unless they do respond"); the request still
  fails only at the hard ``request_timeout``.

Time is an input: ``now`` and every duration are seconds on the driver's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeerHealth"]


@dataclass(slots=True)
class _Record:
    failures: int
    locked_until: float


class PeerHealth:
    """Backoff records and RTT estimate (see the module docstring).

    ``backoff``/``backoff_max``: first and longest lock, seconds; ``capacity``: records
    kept; ``initial``/``floor``/``ceiling``: stall timeout before any sample, and its
    bounds, seconds. Raises ValueError for a non-positive ``backoff``, ``capacity`` or
    ``floor``, or ``floor > ceiling``."""

    def __init__(self, *, backoff: float, backoff_max: float, capacity: int,
                 initial: float, floor: float, ceiling: float) -> None:
        if backoff <= 0 or capacity < 1 or floor <= 0 or floor > ceiling:
            raise ValueError("backoff, capacity and floor must be positive, floor <= ceiling")
        self.backoff = float(backoff)
        self.backoff_max = max(float(backoff_max), self.backoff)
        self.capacity = capacity
        self.initial = min(max(float(initial), floor), ceiling)
        self.floor = float(floor)
        self.ceiling = float(ceiling)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._records: dict[bytes, _Record] = {}  # insertion order = failure order

    # -- backoff ------------------------------------------------------------------------

    def failed(self, peer_id: bytes, *, now: float) -> int:
        """A request to ``peer_id`` failed at ``now``: lock it; returns its consecutive
        failure count (1 for the first)."""
        record = self._records.pop(peer_id, None)
        failures = 1 if record is None else record.failures + 1
        lock = min(self.backoff * 2.0 ** min(failures - 1, 60), self.backoff_max)
        self._records[peer_id] = _Record(failures, now + lock)
        if len(self._records) > self.capacity:
            del self._records[next(iter(self._records))]
        return failures

    def answered(self, peer_id: bytes, *, rtt: float | None = None) -> None:
        """``peer_id`` answered a request (after ``rtt`` seconds, when known): clear its
        record and feed the RTT estimate. Negative RTTs (a clock step) are ignored."""
        self._records.pop(peer_id, None)
        if rtt is None or rtt < 0:
            return
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2.0
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def locked(self, peer_id: bytes, now: float) -> bool:
        """True while ``peer_id`` is in its backoff interval at ``now``."""
        record = self._records.get(peer_id)
        return record is not None and now < record.locked_until

    def failures(self, peer_id: bytes) -> int:
        """Consecutive failures recorded for ``peer_id`` (0 when none or forgotten)."""
        record = self._records.get(peer_id)
        return 0 if record is None else record.failures

    def __len__(self) -> int:
        return len(self._records)

    # -- stall timeout ------------------------------------------------------------------

    def stall_timeout(self) -> float:
        """Seconds after which an unanswered request counts as stalled."""
        if self.srtt is None:
            return self.initial
        value = max(2.0 * self.srtt, self.srtt + 4.0 * self.rttvar)
        return min(max(value, self.floor), self.ceiling)
