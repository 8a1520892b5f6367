"""Iterative Kademlia lookups as pure state machines (FIND_NODE and GET_VALUE).

Theory of operation
-------------------
Kademlia paper section 2.3 and libp2p/specs kad-dht/README.md "Peer routing": a lookup
for a 32-byte ``target_key`` keeps every peer it has heard of, sorted by XOR distance
to the target, each in one state: CANDIDATE (not yet asked), WAITING (request in
flight), RETRYING (stalled once and asked again), STALLED (in flight but slow, no more
re-asks), SUCCEEDED (answered) or FAILED (error or timeout; never asked again).

* The driver calls :meth:`Lookup.next_queries` to get the peers to ask now: unasked
  peers among the ``k`` closest live ones, nearest first, while fewer than
  ``alpha`` requests are in flight. It sends FIND_NODE (or GET_VALUE) to each.
  A peer is *live* unless it FAILED, STALLED, or is an unasked candidate the
  ``avoid`` predicate names (the driver's per-peer backoff: a peer that failed recently
  elsewhere is not asked again soon, Kademlia paper section 4.1).
* :meth:`Lookup.on_stall` (the driver's short, RTT-based timer) marks a request that
  has not been answered "quickly": the paper's "nodes that fail to respond quickly are
  removed from consideration until and unless they do respond". A stalled peer stops
  counting against ``alpha`` (so the lookup asks the next peer instead of waiting) and
  among the ``k`` closest, but its late answer is still used (it becomes SUCCEEDED) until
  the request's hard timeout fails it (:meth:`Lookup.on_failure`).
* Re-ask (lost messages): the first ``retries`` stalls of a peer (default 1) make it
  RETRYING instead, and :meth:`Lookup.on_stall` returns True: the driver sends the
  request again, as a new request (on a new stream in libp2p), and keeps the first one
  open, so whichever answer comes first is used. The paper names lost packets as the
  usual reason a live contact misses an RPC (section 4.1); without a re-ask, a peer
  whose request or answer was lost dropped out of the lookup, which then ended without
  it (measured: 4 % of lookups missed their target under 2 % loss in the simulator).
  A RETRYING peer is like a STALLED one for ``alpha`` (the lookup still moves on to the
  next peer at the first stall) but, like a WAITING one, it stays among the ``k``
  closest live peers, so the lookup does not finish before the re-ask is answered or
  stalls in its turn (then the peer is STALLED). A peer the ``avoid`` predicate names
  by then is not re-asked, nor one the driver declines (``on_stall(reask=False)``; the
  core declines peers that left an earlier stalled request unanswered, see
  :meth:`node.dht.health.PeerHealth.unanswered`).
* :meth:`Lookup.on_response` feeds a peer's ``closerPeers``: new peers become
  candidates (the local peer, empty or over-long PeerIds and peers beyond
  ``max_peers_per_response`` are ignored).
  :meth:`Lookup.on_failure` marks an error or timeout (timeouts are the driver's
  clock, so this class never reads time; with a re-ask open, the driver reports the
  failure once both requests failed). Answers from peers with no request open (WAITING,
  RETRYING or STALLED) are ignored.
* Final round (paper 2.3: "if a round of FIND_NODEs fails to return a node any closer
  than the closest already seen, the initiator resends the FIND_NODE to all of the k
  closest nodes it has not already queried"): after ``alpha`` answers in a row bring no
  peer closer than the closest known, all of the ``k`` closest not yet asked are asked
  at once; an answer that brings a closer peer restores the ``alpha`` limit. The tail
  of a lookup then takes one round trip instead of ``k / alpha``.
* It is :attr:`Lookup.finished` when the ``k`` closest live peers it has seen
  (CANDIDATE, WAITING, RETRYING or SUCCEEDED) have all answered (the paper's and the
  spec's termination rule), which includes the case of fewer than ``k`` reachable
  peers, or when :meth:`Lookup.cancel` was called.
  :meth:`Lookup.closest` then gives the ``k`` closest peers that answered.

:class:`ValueLookup` (spec "Getting values") also takes the record each peer returns:
values are checked with a validator (:class:`node.dht.record_store.Validator`), the best
is kept with ``select``, peers that returned worse values are collected for entry
correction, and the lookup finishes early once ``quorum`` valid values arrived.

Disjoint paths (S/Kademlia, Baumgart and Mies 2007, section 4.4): with ``paths = d > 1``
the seeds, nearest first, are dealt round-robin to ``d`` independent lookups ("paths").
A path knows only its seeds and the peers named in answers to its own requests, and
"each node is only used once": a peer asked by one path is left out of every other
path. With fewer seeds than paths (a node bootstrapping from one peer), the new peers of
an answer are dealt round-robin between the answering path and the paths that know no
peer yet. Each path runs the rules above on the peers it knows (its own ``alpha`` requests,
its own ``k`` closest) and the lookup is finished when every path is;
:meth:`Lookup.closest` is the ``k`` closest that answered on any path. A liar can
capture only the paths that reach it, and the union of the paths asks about ``d * k``
peers near the target rather than ``k``, so peers that answer but give nothing useful
(liars) do not crowd honest neighbours out of the result. A re-ask goes to the same
peer on the same path, so it never breaks disjointness.

Hop counting (for benchmarks): seeds are hop 0; a peer first learnt from a hop-h peer
is hop h + 1 (the minimum over all reports).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from node.dht.keys import kad_key, key_to_int
from node.dht.messages import PeerInfo, Record
from node.dht.record_store import RecordInvalid, Validator
from node.dht.routing_table import K

__all__ = ["ALPHA", "MAX_PEER_ID_BYTES", "Lookup", "LookupStats", "PeerState", "ValueLookup"]

#: Concurrency of one lookup (libp2p/specs kad-dht "Alpha concurrency parameter").
ALPHA = 3
#: Longest PeerId accepted from a response (an Ed25519 PeerId is 38 bytes; RSA ones
#: are sha2-256 multihashes, 34 bytes); empty or longer ids are ignored.
MAX_PEER_ID_BYTES = 128


class PeerState(Enum):
    """State of one peer within a lookup."""

    CANDIDATE = "candidate"
    WAITING = "waiting"
    RETRYING = "retrying"
    STALLED = "stalled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: States with a request open (an answer is still taken).
_OPEN = frozenset((PeerState.WAITING, PeerState.RETRYING, PeerState.STALLED))


@dataclass(slots=True)
class _Entry:
    info: PeerInfo
    distance: int
    state: PeerState
    hop: int
    known_by: int = 1  # bit p: path p knows this peer
    path: int = -1  # the path that asked it (-1: not asked yet)
    avoided: bool = False  # the driver's avoid() said so (checked when seen and asked)
    addrless: bool = False  # could not be dialled for want of an address
    reasks: int = 0  # requests sent again after a stall


@dataclass(frozen=True, slots=True)
class LookupStats:
    """Counters of one lookup: requests sent (``queries``, re-asks included), peers
    that answered and failed, requests that stalled (``stalls``, whether or not they
    were answered later), candidates skipped by ``avoid`` at the end (``avoided``) and
    requests sent again after a stall (``reasks``); ``hops`` is the largest hop number
    among the final closest peers (0 when they were all seeds)."""

    queries: int
    responses: int
    failures: int
    hops: int
    stalls: int = 0
    avoided: int = 0
    reasks: int = 0


class Lookup:
    """Iterative node lookup for a 32-byte ``target_key`` (see the module docstring).

    ``seeds``: initial peers (usually the routing table's closest); ``local_peer_id``
    is never queried; ``avoid(peer_id) -> bool`` names candidates not to ask (checked
    when a peer is first seen and again before it is asked; once avoided, a peer stays
    out of this lookup);
    ``paths``: number of disjoint paths (1: the plain Kademlia lookup);
    ``retries``: how many times a stalled peer is asked again (0: never).
    Raises ValueError for a bad key length, ``k < 1``, ``alpha < 1``, ``paths < 1`` or
    ``retries < 0``.
    """

    def __init__(
        self,
        target_key: bytes,
        seeds: Iterable[PeerInfo],
        *,
        k: int = K,
        alpha: int = ALPHA,
        local_peer_id: bytes | None = None,
        max_peers_per_response: int | None = None,
        avoid: Callable[[bytes], bool] | None = None,
        paths: int = 1,
        retries: int = 1,
    ) -> None:
        if k < 1 or alpha < 1 or paths < 1:
            raise ValueError("k, alpha and paths must be at least 1")
        if retries < 0:
            raise ValueError("retries must be at least 0")
        self.retries = retries
        self.target_key = bytes(target_key)
        self._target = key_to_int(self.target_key)
        self.k = k
        self.alpha = alpha
        self.local_peer_id = local_peer_id
        self.max_peers_per_response = 2 * k if max_peers_per_response is None else (
            max_peers_per_response
        )
        self._entries: dict[bytes, _Entry] = {}
        self._sorted: list[_Entry] = []  # by distance to the target
        self._distances: list[int] = []  # parallel to _sorted, for bisect
        # per path: the live peers it may use, by distance (+ distances, for bisect)
        self._live: list[list[_Entry]] = [[] for _ in range(paths)]
        self._live_distances: list[list[int]] = [[] for _ in range(paths)]
        self._avoid = avoid
        self.paths = paths
        self._in_flight = [0] * paths  # per path
        self._known = [0] * paths  # per path: peers it knows
        self._best = [1 << 256] * paths  # per path: closest distance it knows
        self._no_progress = [0] * paths  # per path: answers since _best last improved
        self._queries = self._responses = self._failures = self._stalls = 0
        self._reasks = 0
        self._cancelled = False
        self._finished: bool | None = None  # cached until the next change
        for seed in seeds:
            self._add(seed, hop=0, path=0)
        if paths > 1:  # deal the seeds round-robin, nearest first
            self._known = [0] * paths
            self._best = [1 << 256] * paths
            for rank, entry in enumerate(self._sorted):
                entry.known_by = 1 << (rank % paths)
                self._known[rank % paths] += 1
                self._best[rank % paths] = min(self._best[rank % paths], entry.distance)
                self._sync(entry)

    # -- driver inputs ---------------------------------------------------------------

    def next_queries(self) -> list[PeerInfo]:
        """Peers to send a request to now (marked WAITING), nearest first; empty when
        ``alpha`` requests are in flight, nothing is left to ask, or finished."""
        if self._cancelled:
            return []
        chosen: list[PeerInfo] = []
        in_flight, avoid = self._in_flight, self._avoid
        done = True
        for path in range(self.paths):
            # paper 2.3: once a round (alpha answers) brings nothing closer, ask all of
            # the k closest not yet asked at once
            alpha = self.k if self._no_progress[path] >= self.alpha else self.alpha
            rescan = True
            while rescan:
                rescan = False
                live = self._k_closest_live(path)
                for entry in live:
                    if entry.state is not PeerState.CANDIDATE or in_flight[path] >= alpha:
                        continue
                    if avoid is not None and avoid(entry.info.peer_id):
                        entry.avoided = True  # locked or stalled since it was added
                        self._sync(entry)
                        rescan = True
                        break
                    entry.state = PeerState.WAITING
                    entry.path = path
                    if self.paths > 1:
                        self._sync(entry)  # used by this path: out of the others
                    in_flight[path] += 1
                    self._queries += 1
                    chosen.append(entry.info)
            done = done and all(e.state is PeerState.SUCCEEDED for e in live)
        self._finished = done
        return chosen

    def on_response(self, peer_id: bytes, closer_peers: Sequence[PeerInfo]) -> None:
        """``peer_id`` answered (either request, when it was re-asked) with
        ``closer_peers``. Ignored unless a request to it is open."""
        entry = self._take_in_flight(peer_id)
        if entry is None:
            return
        entry.state = PeerState.SUCCEEDED
        self._sync(entry)
        self._responses += 1
        entries, hop, path = self._entries, entry.hop + 1, entry.path
        best = self._best[path]
        deal = [path]
        if self.paths > 1:
            deal += [p for p in range(self.paths) if not self._known[p]]
        dealt = 0
        for info in closer_peers[: self.max_peers_per_response]:
            known = entries.get(info.peer_id)
            if known is None:
                self._add(info, hop=hop, path=deal[dealt % len(deal)])
                dealt += 1
                continue
            if known.addrless and info.addrs:  # now we can dial it
                known.info, known.addrless = info, False
                self._sync(known)
            self._seen_on(known, path, hop)
        if self._best[path] < best:
            self._no_progress[path] = 0
        else:
            self._no_progress[path] += 1

    def on_failure(self, peer_id: bytes) -> None:
        """The request to ``peer_id`` failed or timed out (after a re-ask: every request
        to it did). Ignored unless a request to it is open."""
        entry = self._take_in_flight(peer_id)
        if entry is None:
            return
        entry.state = PeerState.FAILED
        self._sync(entry)
        self._failures += 1

    def on_unreachable(self, peer_id: bytes) -> None:
        """No multiaddr is known to dial ``peer_id`` (not a failure of the peer): it is
        set aside, and asked again if a later answer names it with an address.
        Ignored unless in flight."""
        entry = self._take_in_flight(peer_id)
        if entry is None:
            return
        entry.state, entry.path, entry.addrless = PeerState.CANDIDATE, -1, True
        self._sync(entry)

    def on_stall(self, peer_id: bytes, *, reask: bool = True) -> bool:
        """The request to ``peer_id`` is slow (the driver's stall timer), or the re-ask
        failed while the first request is still open. Returns True when the driver
        must send the request again now (WAITING -> RETRYING: the peer has re-asks left,
        ``avoid`` does not name it and the driver allows it with ``reask``), False when
        the lookup stops waiting for the peer (-> STALLED; see the module docstring).
        Ignored (False) unless WAITING or RETRYING."""
        entry = self._entries.get(peer_id)
        if entry is None:
            return False
        if entry.state is PeerState.RETRYING:
            entry.state = PeerState.STALLED
            self._sync(entry)
            self._stalls += 1
            return False
        if entry.state is not PeerState.WAITING:
            return False
        self._in_flight[entry.path] -= 1
        self._stalls += 1
        if reask and entry.reasks < self.retries and not (
                self._avoid is not None and self._avoid(peer_id)):
            entry.state = PeerState.RETRYING
            entry.reasks += 1
            self._reasks += 1
            self._queries += 1
            self._sync(entry)
            return True
        entry.state = PeerState.STALLED
        self._sync(entry)
        return False

    def cancel(self) -> None:
        """Stop the lookup: no more queries; :attr:`finished` becomes True."""
        self._cancelled = True

    # -- outputs ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when the k closest live peers seen have all answered (on every path),
        or cancelled."""
        if self._cancelled:
            return True
        if self._finished is None:
            self._finished = all(e.state is PeerState.SUCCEEDED
                                 for path in range(self.paths)
                                 for e in self._k_closest_live(path))
        return self._finished

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered, failed or stalled (all paths)."""
        return sum(self._in_flight)

    def waiting(self) -> list[bytes]:
        """PeerIds with a request in flight, re-asked and stalled ones included (the
        driver times these out), nearest first."""
        return [e.info.peer_id for e in self._sorted if e.state in _OPEN]

    def state_of(self, peer_id: bytes) -> PeerState | None:
        """The state of ``peer_id`` in this lookup, or None if never seen."""
        entry = self._entries.get(peer_id)
        return None if entry is None else entry.state

    def closest(self) -> list[PeerInfo]:
        """Up to ``k`` peers that answered, nearest to the target first."""
        out = []
        for entry in self._sorted:
            if entry.state is PeerState.SUCCEEDED:
                out.append(entry.info)
                if len(out) == self.k:
                    break
        return out

    def stats(self) -> LookupStats:
        """Counters so far (see :class:`LookupStats`)."""
        hops = [self._entries[p.peer_id].hop for p in self.closest()]
        avoided = sum(1 for e in self._sorted if e.state is PeerState.CANDIDATE and e.avoided)
        return LookupStats(self._queries, self._responses, self._failures,
                           max(hops, default=0), self._stalls, avoided, self._reasks)

    # -- internals -------------------------------------------------------------------

    def _add(self, info: PeerInfo, *, hop: int, path: int) -> None:
        pid = info.peer_id
        if pid == self.local_peer_id or not 0 < len(pid) <= MAX_PEER_ID_BYTES:
            return
        known = self._entries.get(pid)
        if known is not None:
            self._seen_on(known, path, hop)
            return
        distance = key_to_int(kad_key(pid)) ^ self._target
        avoided = self._avoid is not None and self._avoid(pid)
        entry = _Entry(info, distance, PeerState.CANDIDATE, hop, 1 << path, -1, avoided)
        self._entries[pid] = entry
        self._known[path] += 1
        self._best[path] = min(self._best[path], distance)
        at = bisect.bisect(self._distances, distance)
        self._distances.insert(at, distance)
        self._sorted.insert(at, entry)
        self._sync(entry)

    def _seen_on(self, known: _Entry, path: int, hop: int) -> None:
        """``known`` was named again, on disjoint path ``path`` at ``hop``: keep its
        lowest hop and count it once per path it was seen on."""
        if hop < known.hop:
            known.hop = hop
        if not known.known_by >> path & 1:
            known.known_by |= 1 << path
            self._known[path] += 1
            self._best[path] = min(self._best[path], known.distance)
            self._sync(known)

    def _sync(self, entry: _Entry) -> None:
        """Put ``entry`` into, or take it out of, each path's live list after a change:
        a path may use a peer it knows that no other path asked, unless it FAILED,
        STALLED or is an avoided candidate."""
        state = entry.state
        live = (state is PeerState.CANDIDATE and not entry.avoided and not entry.addrless) or (
            state is PeerState.WAITING or state is PeerState.SUCCEEDED
            or state is PeerState.RETRYING)
        distance = entry.distance
        for path in range(self.paths):
            eligible = live and entry.known_by >> path & 1 and entry.path in (-1, path)
            distances = self._live_distances[path]
            at = bisect.bisect_left(distances, distance)
            present = at < len(distances) and distances[at] == distance
            if eligible and not present:
                distances.insert(at, distance)
                self._live[path].insert(at, entry)
            elif present and not eligible:
                del distances[at]
                del self._live[path][at]
        self._finished = None

    def _k_closest_live(self, path: int = 0) -> list[_Entry]:
        return self._live[path][: self.k]

    def _take_in_flight(self, peer_id: bytes) -> _Entry | None:
        entry = self._entries.get(peer_id)
        if entry is None:
            return None
        if entry.state is PeerState.WAITING:
            self._in_flight[entry.path] -= 1
        elif entry.state is not PeerState.STALLED and entry.state is not PeerState.RETRYING:
            return None
        self._finished = None
        return entry


class ValueLookup(Lookup):
    """GET_VALUE lookup for record key ``key`` (target ``sha256(key)``).

    Finishes early once ``quorum`` (>= 1) peers returned a valid value; ``validator``
    checks and ranks values. :attr:`best` is the best valid value (or None),
    :attr:`outdated` the peers that returned a worse or stale value (to be sent
    PUT_VALUE(best), spec "Entry correction"). Invalid values count as a plain answer
    and are tallied in :attr:`invalid`."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[PeerInfo],
        *,
        validator: Validator,
        quorum: int = 1,
        k: int = K,
        alpha: int = ALPHA,
        local_peer_id: bytes | None = None,
        max_peers_per_response: int | None = None,
        avoid: Callable[[bytes], bool] | None = None,
        paths: int = 1,
        retries: int = 1,
    ) -> None:
        super().__init__(kad_key(key), seeds, k=k, alpha=alpha, local_peer_id=local_peer_id,
                         max_peers_per_response=max_peers_per_response, avoid=avoid,
                         paths=paths, retries=retries)
        if quorum < 1:
            raise ValueError("quorum must be at least 1")
        self.key = bytes(key)
        self.quorum = quorum
        self._validator = validator
        self.best: bytes | None = None
        self._best_peers: list[bytes] = []
        self.outdated: list[bytes] = []
        self.values_received = 0
        self.invalid = 0

    def on_local_value(self, value: bytes) -> None:
        """The local record store holds ``value``: it counts towards the quorum (spec
        "Getting values"); with ``quorum == 1`` the lookup finishes at once."""
        try:
            self._validator.validate(self.key, value)
        except RecordInvalid:
            self.invalid += 1
            return
        self.values_received += 1
        self._consider(None, value)
        if self.values_received >= self.quorum:
            self.cancel()

    def on_value_response(
        self, peer_id: bytes, closer_peers: Sequence[PeerInfo], record: Record | None
    ) -> None:
        """``peer_id`` answered GET_VALUE with ``record`` (or None) and closer peers."""
        if self.state_of(peer_id) not in _OPEN:
            return
        self.on_response(peer_id, closer_peers)
        if record is None or record.key != self.key:
            return
        try:
            self._validator.validate(self.key, record.value)
        except RecordInvalid:
            self.invalid += 1
            return
        self.values_received += 1
        self._consider(peer_id, record.value)
        if self.values_received >= self.quorum:
            self.cancel()

    def _consider(self, peer_id: bytes | None, value: bytes) -> None:
        # peer_id None is the local store: never listed in best_peers or outdated
        if self.best is None or value == self.best:
            self.best = value
            if peer_id is not None:
                self._best_peers.append(peer_id)
            return
        try:
            winner = self._validator.select(self.key, [self.best, value])
        except RecordInvalid:
            winner = 0
        if winner == 1:
            self.outdated.extend(self._best_peers)
            self.best = value
            self._best_peers = [peer_id]
        elif peer_id is not None:
            self.outdated.append(peer_id)

    @property
    def best_peers(self) -> list[bytes]:
        """PeerIds that returned :attr:`best`, in answer order."""
        return list(self._best_peers)
