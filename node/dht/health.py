"""Per-peer failure backoff, the RTT estimate and the requests in flight (pure).

Theory of operation
-------------------
Two things a Kademlia node learns from its own requests, kept apart from the routing
table because they also concern peers that are not (or no longer) in it, such as the
fabricated PeerIds a lying peer hands out:

* **Backoff** (Kademlia paper, section 4.1: "Kademlia locks unresponsive contacts and
  avoids sending them any further RPCs for an exponentially increasing backoff
  interval"). After the n-th consecutive failure of a request to a peer (timeout, dial
  error, reset, malformed or wrong answer), from ``n = lock_after`` on, the peer is
  *locked* until ``now + min(backoff * 2 ** (n - lock_after), backoff_max)``; lookups do
  not ask a locked peer and the node does not hand it out in its answers. A single
  failure does not lock (``lock_after = 2`` by default): the paper names lost packets as
  the usual reason a valid contact misses one RPC, and locking an honest peer for a
  lost message cut it off from every lookup of this node (measured in the simulator
  with 2 % message loss). An answer from the peer clears its record.
  At most ``capacity`` records are kept; when full, the record that failed least
  recently is forgotten (a liar can name any number of PeerIds, so the map must be
  bounded; forgetting only makes the peer eligible again).
* **Stall timeout**: a smoothed RTT and RTT variance over answered requests
  (Jacobson/Karels as in RFC 6298 section 2: ``rttvar = 3/4 rttvar + 1/4 |srtt - r|``,
  ``srtt = 7/8 srtt + 1/8 r``; the first sample sets ``srtt = r``, ``rttvar = r / 2``),
  kept twice: for *warm* requests (to a peer heard from in the last :data:`WARM_S`
  seconds, so probably over an open connection) and *cold* ones (a new dial first:
  TCP, Noise and yamux handshakes cost round trips of their own).
  :meth:`PeerHealth.stall_timeout` is ``max(2 srtt, srtt + 4 rttvar)`` of the matching
  estimate clamped to ``[floor, ceiling]`` (the cold one for warm requests until they
  have a sample of their own), and ``initial`` before any sample.
  It is deliberately not a failure: a request older than that is only *stalled*, so a
  lookup stops waiting for it and asks the next peer (paper section 2.3, "nodes that
  fail to respond quickly are removed from consideration until and unless they do
  respond"); the request still fails only at the hard ``request_timeout``.

* **Unanswered stalls**: a peer whose lookup request stalled is *unanswered* until
  it next answers any request (:meth:`PeerHealth.unanswered`). A lookup asks a stalled
  peer once more (a lost request or answer; see :mod:`node.dht.lookup`, "Re-ask") only
  when the peer was not already unanswered: a peer that answers nothing (down, silent,
  or a fabricated PeerId) then holds up one lookup of this node by one extra stall
  time, not every lookup until its failures lock it out (measured in the simulator
  with a third of the peers Byzantine: without this, lookup p50 rose from 0.4 s to
  0.6 s). An honest peer hit by a lost message is re-asked, answers, and is no
  longer unanswered. At most ``capacity`` peers are kept; when full, the oldest is
  forgotten (it is re-asked again).

:class:`InFlight` holds the node's outstanding requests with their two deadlines (a
lazy heap, so finding what is due costs ``O(log n)``). A stall concerns one lookup
only: other lookups may still ask the peer (the paper removes a slow node "from
consideration" in the lookup that waits for it).

Time is an input: ``now`` and every duration are seconds on the driver's clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from node.dht.messages import MessageType, PeerInfo

__all__ = ["WARM_S", "InFlight", "PeerHealth", "Pending", "RttEstimate"]

#: A request to a peer heard from this recently (seconds) is "warm": libp2p most likely
#: still holds a connection to it, so no dial is needed.
WARM_S = 60.0


@dataclass(slots=True)
class _Record:
    failures: int
    locked_until: float


@dataclass(slots=True)
class RttEstimate:
    """RFC 6298 smoothed RTT (``srtt``, None before the first sample) and variance,
    seconds."""

    srtt: float | None = None
    rttvar: float = 0.0

    def sample(self, rtt: float) -> None:
        """Feed one measured round trip (seconds, >= 0)."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2.0
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt


class PeerHealth:
    """Backoff records and RTT estimate (see the module docstring).

    ``backoff``/``backoff_max``: first and longest lock, seconds; ``lock_after``:
    consecutive failures before the first lock; ``capacity``: records kept;
    ``initial``/``floor``/``ceiling``: stall timeout before any sample, and its bounds,
    seconds. Raises ValueError for a non-positive ``backoff``, ``lock_after``,
    ``capacity`` or ``floor``, or ``floor > ceiling``."""

    def __init__(self, *, backoff: float, backoff_max: float, capacity: int,
                 initial: float, floor: float, ceiling: float, lock_after: int = 1) -> None:
        if backoff <= 0 or capacity < 1 or lock_after < 1 or floor <= 0 or floor > ceiling:
            raise ValueError("backoff, lock_after, capacity and floor must be positive, "
                             "floor <= ceiling")
        self.backoff = float(backoff)
        self.lock_after = lock_after
        self.backoff_max = max(float(backoff_max), self.backoff)
        self.capacity = capacity
        self.initial = min(max(float(initial), floor), ceiling)
        self.floor = float(floor)
        self.ceiling = float(ceiling)
        self.warm = RttEstimate()
        self.cold = RttEstimate()
        self._records: dict[bytes, _Record] = {}  # insertion order = failure order
        self._unanswered: dict[bytes, None] = {}  # insertion order = first stall order

    # -- backoff ------------------------------------------------------------------------

    def failed(self, peer_id: bytes, *, now: float) -> int:
        """A request to ``peer_id`` failed at ``now``: count it, and lock the peer from
        the ``lock_after``-th failure in a row on; returns the consecutive failure count
        (1 for the first)."""
        record = self._records.pop(peer_id, None)
        failures = 1 if record is None else record.failures + 1
        locked_until = now
        if failures >= self.lock_after:
            exponent = min(failures - self.lock_after, 60)
            locked_until = now + min(self.backoff * 2.0 ** exponent, self.backoff_max)
        self._records[peer_id] = _Record(failures, locked_until)
        if len(self._records) > self.capacity:
            del self._records[next(iter(self._records))]
        return failures

    def answered(self, peer_id: bytes, *, rtt: float | None = None,
                 cold: bool = False) -> None:
        """``peer_id`` answered a request (after ``rtt`` seconds, when known; ``cold``:
        the request needed a dial): clear its record and feed the matching RTT
        estimate. Negative RTTs (a clock step) are ignored."""
        self._records.pop(peer_id, None)
        self._unanswered.pop(peer_id, None)
        if rtt is not None and rtt >= 0:
            (self.cold if cold else self.warm).sample(rtt)

    def locked(self, peer_id: bytes, now: float) -> bool:
        """True while ``peer_id`` is in its backoff interval at ``now``."""
        record = self._records.get(peer_id)
        return record is not None and now < record.locked_until

    def failures(self, peer_id: bytes) -> int:
        """Consecutive failures recorded for ``peer_id`` (0 when none or forgotten)."""
        record = self._records.get(peer_id)
        return 0 if record is None else record.failures

    def stalled(self, peer_id: bytes) -> None:
        """A lookup request to ``peer_id`` stalled: it is unanswered until it answers."""
        if peer_id not in self._unanswered:
            self._unanswered[peer_id] = None
            if len(self._unanswered) > self.capacity:
                del self._unanswered[next(iter(self._unanswered))]

    def unanswered(self, peer_id: bytes) -> bool:
        """True when a request to ``peer_id`` stalled and it has not answered since."""
        return peer_id in self._unanswered

    def __len__(self) -> int:
        """Failure records kept."""
        return len(self._records)

    # -- stall timeout ------------------------------------------------------------------

    def stall_timeout(self, *, cold: bool = False) -> float:
        """Seconds after which an unanswered request (``cold``: one that needs a dial)
        counts as stalled."""
        estimate = self.cold if cold else self.warm
        if estimate.srtt is None and not cold:
            estimate = self.cold  # a warm request is no slower than a cold one
        srtt = estimate.srtt
        if srtt is None:
            return self.initial
        value = max(2.0 * srtt, srtt + 4.0 * estimate.rttvar)
        return min(max(value, self.floor), self.ceiling)


@dataclass(slots=True)
class Pending:
    """One request in flight: to ``peer``, for query ``query_id`` (None: a liveness
    ping or an entry correction), expecting an answer of type ``expected``; sent at
    ``sent_at``, failed at ``deadline``, stalled at ``stall_at`` (None: never);
    ``cold``: it needed a dial (see :data:`WARM_S`)."""

    peer: PeerInfo
    query_id: int | None
    expected: MessageType
    sent_at: float
    deadline: float
    stall_at: float | None = None
    stalled: bool = False
    cold: bool = False


class InFlight:
    """Requests in flight by request id (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: dict[int, Pending] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline or stall time, request id)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, request_id: int, pending: Pending) -> None:
        """Track ``pending`` under ``request_id`` (unique, never reused)."""
        self._pending[request_id] = pending
        if pending.stall_at is not None:
            heapq.heappush(self._heap, (pending.stall_at, request_id))
        heapq.heappush(self._heap, (pending.deadline, request_id))

    def pop(self, request_id: int) -> Pending | None:
        """Stop tracking a request (answered or failed); None when unknown (late)."""
        return self._pending.pop(request_id, None)

    def due(self, now: float) -> Iterator[tuple[int, Pending, bool]]:
        """Requests with a deadline ``<= now``, earliest first, as ``(request id,
        pending, hard)``: ``hard`` means it failed (and is no longer tracked), otherwise
        its stall time passed (it still is; the caller sets ``pending.stalled``). Stall
        times already handled are skipped."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            pending = self._pending.get(rid)
            if pending is None:
                continue
            if pending.deadline <= now:
                yield rid, self.pop(rid), True  # type: ignore[misc]
            elif not pending.stalled:
                yield rid, pending, False

    def next_deadline(self) -> float | None:
        """The earliest pending stall or hard deadline, or None."""
        heap = self._heap
        while heap:
            at, rid = heap[0]
            pending = self._pending.get(rid)
            if pending is not None and (at >= pending.deadline or not pending.stalled):
                return at
            heapq.heappop(heap)  # answered, or a stall time already handled
        return None
