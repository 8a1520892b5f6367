"""The Kademlia node core: routing table, lookups, refresh and record store (pure).

Theory of operation
-------------------
:class:`DhtNode` is the one state machine both drivers run (ARCHITECTURE.md sections 1
and 3): the node's trio shell over libp2p streams on ``/ipfs/kad/1.0.0``, and the
simulator over its modelled network. It never does I/O, reads no clock and draws
randomness only from the injected ``random.Random``; ``now`` (seconds, float, the
driver's clock) comes with every input.

Inputs:
* :meth:`DhtNode.on_request` -- an inbound request from ``sender`` (already decoded by
  :mod:`node.dht.wire`); returns the :class:`~node.dht.handler.Handled` answer to write
  back on the same stream. The sender is recorded in the routing table when it is a DHT
  server (the driver knows from identify/protocol negotiation; default True).
* :meth:`DhtNode.on_response` / :meth:`DhtNode.on_failure` -- the answer to, or failure
  of, an outbound request named by its ``request_id``. Unknown ids (late answers after a
  timeout) are ignored. An answer of the wrong type counts as a failure.
* :meth:`DhtNode.tick` -- time passes: lookup requests older than the stall timeout
  stop holding up their lookup, requests older than ``request_timeout`` fail, due
  buckets start a refresh lookup, expired records are dropped.
  :meth:`DhtNode.next_wakeup` tells the driver when the next of these is due, so it
  can sleep until then instead of polling.
* Commands: :meth:`bootstrap`, :meth:`find_node`, :meth:`get_value`,
  :meth:`put_value` each start a query and return its id.

Outputs: :meth:`ready` returns a :class:`Ready` with the requests to send (each
request's peer carries the multiaddrs learnt for it, so the driver can dial) and the
queries that finished; :meth:`advance` acknowledges them (etcd-raft's Ready/Advance).

Routing-table upkeep: a peer that answers is ``update``d; a full bucket asks for a PING
of its least-recently seen contact, which this core sends itself and feeds back with
``ping_result`` (Kademlia paper section 2.2). A peer whose request fails is charged in
:class:`~node.dht.health.PeerHealth`: after ``stale_after`` failures in a row it is
locked for an exponentially growing backoff (lookups skip it, our answers leave it out)
and stale in the table, which evicts it as soon as a replacement exists and otherwise
keeps it (paper section 4.1).
Bucket refresh is staggered by the routing table; :meth:`bootstrap` runs lookups for
the local key (paper section 2.3) and, after the first, refreshes the buckets once.

Slow peers: every lookup request also has a *stall* deadline from the node's RTT
estimate (:meth:`~node.dht.health.PeerHealth.stall_timeout`, about two round trips).
When it passes the lookup stops waiting for that peer and asks the next one (so up to
alpha useful requests stay in flight even while dead or fabricated peers are being
tried, the paper's "removed from consideration until and unless they do respond"),
and a late answer is still used. Only ``request_timeout`` fails a request. Lookups run
on ``disjoint_paths`` S/Kademlia paths (see :mod:`node.dht.lookup`).

Lost messages: at its first stall a lookup request is sent again
(``config.lookup_retries`` times per peer and lookup; the lookup's "re-ask"), as a new
request with a new ``request_id`` (a new stream in libp2p), while the first stays open
(unless the peer already left a stalled request unanswered since its last answer:
:meth:`~node.dht.health.PeerHealth.unanswered`):
the first answer to either is used and the other request is forgotten (its answer,
should it come, is a late one). The re-ask has its own stall deadline; the lookup stops
waiting for the peer when it stalls too. The peer is charged one failure (backoff, stale
contact) only when every request of that lookup to it failed, so a lost message and its
re-ask count as one failed request, as before, and two lookups must fail on a peer before
it is locked out. The re-ask is not a retry of the wire protocol: each request is a
plain kad-dht request of its own.
FIND_NODE carries the *preimage* of the target (a PeerId, a record key, or random bytes
for a refresh) because responders hash it (libp2p/specs kad-dht "Distance").

Queries: FIND_NODE lookups (:class:`~node.dht.lookup.Lookup`); GET_VALUE lookups
(:class:`~node.dht.lookup.ValueLookup`, answered from the local store when it holds the
key and ``quorum == 1``, with PUT_VALUE entry correction to outdated peers); PUT_VALUE
stores locally, looks up the ``k`` closest peers, then sends each the record and
finishes when all answered or failed. The PUT_VALUE lookup asks GET_VALUE (whose
answers carry ``closerPeers`` for any key, spec "RPC messages") rather than FIND_NODE
with the record key as go-libp2p-kad-dht does: py-libp2p 0.8.1 resets a FIND_NODE whose
key is neither a multihash nor 2..50 bytes, and ``/meshnode-id/<PeerId>`` is 51 bytes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from node.dht.config import DhtConfig, OutboundRequest, QueryResult, Ready
from node.dht.handler import Handled, handle_request
from node.dht.health import WARM_S, InFlight, PeerHealth, Pending
from node.dht.keys import kad_key
from node.dht.lookup import Lookup, PeerState, ValueLookup
from node.dht.messages import Message, MessageType, PeerInfo, Record
from node.dht.record_store import RecordInvalid, RecordStore, Validator
from node.dht.routing_table import MAX_REFRESH_CPL, RoutingTable

__all__ = ["DhtConfig", "DhtNode", "OutboundRequest", "QueryResult", "Ready"]


@dataclass(slots=True)
class _Query:
    query_id: int
    kind: str
    lookup: Lookup
    wire_key: bytes  # FIND_NODE / GET_VALUE key: the preimage of lookup.target_key
    key: bytes = b""  # record key for get/put
    value: bytes = b""  # value for put
    refresh_bucket: int | None = None
    put_pending: set[bytes] | None = None  # put phase 2: peers not yet answered
    stored: int = 0
    rounds_left: int = 0  # further self-lookups of a bootstrap
    forced: frozenset[bytes] = frozenset()  # seeds asked even when locked
    paths: int = 1  # disjoint lookup paths


class DhtNode:
    """Pure Kademlia node (see the module docstring). ``local``: own PeerId and listen
    multiaddrs; ``validator`` checks records for every namespace served."""

    def __init__(
        self,
        local: PeerInfo,
        *,
        validator: Validator,
        rng: random.Random,
        now: float = 0.0,
        config: DhtConfig | None = None,
    ) -> None:
        self.config = config or DhtConfig()
        self.local = local
        cfg = self.config
        self.table = RoutingTable(
            local.peer_id, rng=rng, now=now, k=cfg.k,
            refresh_interval=cfg.refresh_interval, ping_timeout=cfg.request_timeout,
            stale_after=cfg.stale_after,
        )
        self.health = PeerHealth(
            backoff=cfg.failure_backoff, backoff_max=cfg.failure_backoff_max,
            capacity=cfg.health_capacity, initial=cfg.stall_initial,
            floor=min(cfg.stall_floor, cfg.request_timeout), ceiling=cfg.request_timeout,
            lock_after=cfg.stale_after,
        )
        self.store = RecordStore(
            validator, max_records=self.config.max_records, max_age=self.config.record_max_age
        )
        self.validator = validator
        self.counters: Counter[str] = Counter()
        self._queries: dict[int, _Query] = {}
        self._pending = InFlight()
        self._now = now
        self._ready = Ready()
        self._next_id = 1
        self._refreshing: set[int] = set()
        # (query id, PeerId) -> ids of the open lookup requests to that peer, oldest
        # first (two after a re-ask); an entry goes when all of them ended
        self._asks: dict[tuple[int, bytes], list[int]] = {}
        self._bootstraps: set[int] = set()
        self._next_expiry = now

    # -- commands --------------------------------------------------------------------

    def bootstrap(self, peers: Iterable[PeerInfo], *, now: float) -> int:
        """Join through ``peers`` (e.g. bootstrap multiaddrs, mDNS finds): a lookup for
        the local key seeded with them and the table's closest, repeated
        ``config.bootstrap_rounds`` times (a later round reseeds from the table) on
        ``config.bootstrap_paths`` disjoint paths; the bucket refresh of
        ``config.refresh_on_join`` starts as soon as the first round found peers.
        ``peers`` are asked even while in backoff (the caller chose them). Returns the
        query id; its result is the last round's. Call it again (with backoff) when the
        result is empty."""
        self._now = now
        seeds = [p for p in peers if p.peer_id != self.local.peer_id]
        return self._start("find_node", self.local.peer_id, now, extra_seeds=seeds,
                           rounds=self.config.bootstrap_rounds, bootstrap=True,
                           forced=frozenset(p.peer_id for p in seeds),
                           paths=self.config.bootstrap_paths)

    def find_node(self, peer_id: bytes, *, now: float) -> int:
        """Look up the ``k`` peers closest to ``sha256(peer_id)`` (a binary PeerId; other
        implementations may refuse FIND_NODE keys that are not multihashes)."""
        self._now = now
        return self._start("find_node", bytes(peer_id), now)

    def get_value(self, key: bytes, *, now: float, quorum: int = 1) -> int:
        """Find the best valid value for record ``key`` (local store first)."""
        self._now = now
        stored = self.store.get(key, now=now)
        qid = self._new_id()
        seeds = self._seeds(kad_key(key))
        lookup = ValueLookup(key, seeds, validator=self.validator, quorum=quorum,
                             k=self.config.k, alpha=self.config.alpha,
                             local_peer_id=self.local.peer_id, avoid=self._locked,
                             paths=self.config.disjoint_paths,
                             retries=self.config.lookup_retries)
        query = _Query(qid, "get_value", lookup, wire_key=key, key=key)
        self._queries[qid] = query
        if stored is not None:
            lookup.on_local_value(stored.value)
        self._pump(query, now)
        return qid

    def put_value(self, key: bytes, value: bytes, *, now: float) -> int:
        """Validate and store ``value`` locally, then on the ``k`` closest peers.
        Raises RecordInvalid when the local validator refuses it or the local store
        already holds a better value for ``key`` (publishing it would be a regression)."""
        self._now = now
        if not self.store.put(key, value, now=now):
            raise RecordInvalid("the local store holds a better value for this key")
        return self._start("put_value", key, now, key=key, value=value)

    # -- inputs ----------------------------------------------------------------------

    def on_request(
        self, sender: PeerInfo, msg: Message, *, now: float, sender_is_server: bool = True
    ) -> Handled:
        """Answer an inbound request (never raises on remote input). Locked peers
        (:class:`~node.dht.health.PeerHealth`) are left out of ``closerPeers``."""
        self._now = now
        self.counters[f"in_{msg.type.name.lower()}"] += 1
        if sender_is_server:
            self._seen(sender, now)
        handled = handle_request(msg, requester=sender.peer_id, table=self.table,
                                 store=self.store, local=self.local, now=now,
                                 skip=self._locked)
        if handled.rejected is not None:
            self.counters["rejected"] += 1
        return handled

    def on_response(self, request_id: int, msg: Message, *, now: float) -> None:
        """The answer to request ``request_id`` arrived (decoded)."""
        self._now = now
        pending = self._pending.pop(request_id)
        if pending is None:
            self.counters["late_or_unknown_response"] += 1
            return
        if msg.type is not pending.expected:
            self.counters["wrong_response_type"] += 1
            self._fail(request_id, pending, now)
            return
        peer_id = pending.peer.peer_id
        self._answered(request_id, pending)
        self.health.answered(peer_id, rtt=now - pending.sent_at, cold=pending.cold)
        self._seen(pending.peer, now)
        self.table.record_answer(peer_id)
        if pending.expected is MessageType.PING and pending.query_id is None:
            self.table.ping_result(peer_id, True, now=now)
            return
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None:
            return
        if query.put_pending is not None:
            if pending.expected is MessageType.PUT_VALUE and peer_id in query.put_pending:
                query.put_pending.discard(peer_id)
                query.stored += 1
        elif isinstance(query.lookup, ValueLookup):
            query.lookup.on_value_response(peer_id, msg.closer_peers, msg.record)
        else:
            query.lookup.on_response(peer_id, msg.closer_peers)
        self._pump(query, now)

    def on_failure(self, request_id: int, *, now: float, reason: str = "failed") -> None:
        """Request ``request_id`` failed (dial error, stream reset, malformed answer);
        ``reason`` names it in :attr:`counters` (``fail_<reason>``). Reason
        ``"no_address"`` (no multiaddr known to dial) fails the request without charging
        the peer: it says nothing about whether the peer answers."""
        self._now = now
        pending = self._pending.pop(request_id)
        if pending is not None:
            self.counters[f"fail_{reason}"] += 1
            self._fail(request_id, pending, now, charge=reason != "no_address")

    def learn_addrs(self, peer_id: bytes, addrs: Iterable[bytes]) -> None:
        """The driver learnt multiaddrs for ``peer_id`` outside the DHT (libp2p
        identify): a contact recorded without addresses (its request arrived before
        identify finished) takes them, so it can be dialled and handed out."""
        self.table.set_addrs(peer_id, addrs)

    def tick(self, now: float) -> None:
        """Time advanced to ``now``: stall slow lookup requests, time out requests,
        start due bucket refreshes, expire records."""
        self._now = now
        for rid, pending, hard in list(self._pending.due(now)):
            if hard:
                self.counters["timeouts"] += 1
                self._fail(rid, pending, now)
            else:
                self._stall(pending)
        for index in self.table.due_refreshes(now):
            self.table.mark_refreshed(index, now=now)
            if index not in self._refreshing:
                self._refreshing.add(index)
                preimage = self.table.random_preimage_in_bucket(index)
                self._start("find_node", preimage, now, refresh_bucket=index)
        if now >= self._next_expiry:  # a full scan at most once a minute
            self.store.expire(now=now)
            self._next_expiry = now + 60.0

    # -- outputs ---------------------------------------------------------------------

    def next_wakeup(self) -> float:
        """The earliest time (seconds, the driver's clock) at which :meth:`tick` has
        work: a stall or hard deadline, a bucket refresh or the record expiry scan.
        Calling :meth:`tick` earlier is harmless; later only delays those."""
        due = min(self.table.next_refresh_due(), self._next_expiry)
        deadline = self._pending.next_deadline()
        return due if deadline is None else min(deadline, due)

    def ready(self) -> Ready:
        """Effects not yet acknowledged (a copy)."""
        return Ready(list(self._ready.requests), list(self._ready.finished))

    def advance(self, ready: Ready) -> None:
        """Acknowledge the effects returned by :meth:`ready`."""
        del self._ready.requests[: len(ready.requests)]
        del self._ready.finished[: len(ready.finished)]

    def has_ready(self) -> bool:
        """True when :meth:`ready` has something to carry out."""
        return bool(self._ready.requests or self._ready.finished)

    def query_running(self, query_id: int) -> bool:
        """True while query ``query_id`` has not finished."""
        return query_id in self._queries

    # -- internals -------------------------------------------------------------------

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _locked(self, peer_id: bytes) -> bool:
        return self.health.locked(peer_id, self._now)

    def _seeds(self, target: bytes) -> list[PeerInfo]:
        contacts = self.table.closest(target, self.config.k, skip_stale=self._locked)
        return [c.peer_info() for c in contacts]

    def _lookup(self, target: bytes, seeds: Iterable[PeerInfo],
                forced: frozenset[bytes], paths: int) -> Lookup:
        avoid = self._locked
        if forced:
            def avoid(peer_id: bytes) -> bool:
                return peer_id not in forced and self._locked(peer_id)
        return Lookup(target, seeds, k=self.config.k, alpha=self.config.alpha,
                      local_peer_id=self.local.peer_id, avoid=avoid, paths=paths,
                      retries=self.config.lookup_retries)

    def _start(self, kind: str, wire_key: bytes, now: float, *,
               extra_seeds: Iterable[PeerInfo] = (), key: bytes = b"", value: bytes = b"",
               refresh_bucket: int | None = None, rounds: int = 1,
               bootstrap: bool = False, forced: frozenset[bytes] = frozenset(),
               paths: int | None = None) -> int:
        qid = self._new_id()
        target = kad_key(wire_key)
        paths = self.config.disjoint_paths if paths is None else paths
        lookup = self._lookup(target, [*extra_seeds, *self._seeds(target)], forced, paths)
        query = _Query(qid, kind, lookup, wire_key, key=key, value=value,
                       refresh_bucket=refresh_bucket, rounds_left=max(rounds, 1) - 1,
                       forced=forced, paths=paths)
        self._queries[qid] = query
        if bootstrap:
            self._bootstraps.add(qid)
        self._pump(query, now)
        return qid

    def _send(self, peer: PeerInfo, msg: Message, query_id: int | None, now: float,
              *, stall: bool = False) -> None:
        rid = self._new_id()
        if stall and query_id is not None:  # a lookup request: track its re-asks
            self._asks.setdefault((query_id, peer.peer_id), []).append(rid)
        contact = self.table.get(peer.peer_id)
        cold = contact is None or now - contact.last_seen > WARM_S
        pending = Pending(peer, query_id, msg.type, now, now + self.config.request_timeout,
                          now + self.health.stall_timeout(cold=cold) if stall else None,
                          cold=cold)
        self._pending.add(rid, pending)
        self._ready.requests.append(OutboundRequest(rid, peer, msg))
        self.counters[f"out_{msg.type.name.lower()}"] += 1

    def _stall(self, pending: Pending) -> None:
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None or query.put_pending is not None:
            return  # the lookup is over: nothing waits for this request
        pending.stalled = True
        self.counters["stalls"] += 1
        peer_id = pending.peer.peer_id
        reask = not self.health.unanswered(peer_id)
        self.health.stalled(peer_id)
        if query.lookup.on_stall(peer_id, reask=reask):
            self.counters["reasks"] += 1
            self._send(pending.peer, self._request_for(query), query.query_id, self._now,
                       stall=True)
        self._pump(query, self._now)

    def _request_for(self, query: _Query) -> Message:
        kind = MessageType.FIND_NODE if query.kind == "find_node" else MessageType.GET_VALUE
        return Message(kind, key=query.wire_key)

    def _pump(self, query: _Query, now: float) -> None:
        if query.put_pending is not None:
            if not query.put_pending:
                self._finish(query, now)
            return
        for peer in query.lookup.next_queries():
            self._send(peer, self._request_for(query), query.query_id, now, stall=True)
        if query.lookup.finished:
            if query.kind == "put_value":
                self._start_put_phase(query, now)
            elif query.rounds_left > 0:
                self._next_round(query, now)
            else:
                self._finish(query, now)

    def _next_round(self, query: _Query, now: float) -> None:
        # Another self-lookup, seeded with what the last round found plus the table
        # (which the last round and inbound requests filled): peers that joined at the
        # same time now know each other. The buckets are refreshed meanwhile.
        query.rounds_left -= 1
        previous = query.lookup
        # the last round's open requests are no longer re-asks of the new round's
        for key in [key for key in self._asks if key[0] == query.query_id]:
            del self._asks[key]
        if query.query_id in self._bootstraps and previous.closest():
            self._bootstraps.discard(query.query_id)
            if self.config.refresh_on_join:
                self._refresh_all(now)
        query.lookup = self._lookup(
            previous.target_key, [*previous.closest(), *self._seeds(previous.target_key)],
            query.forced, query.paths)
        self._pump(query, now)

    def _start_put_phase(self, query: _Query, now: float) -> None:
        targets = query.lookup.closest()
        query.put_pending = {p.peer_id for p in targets}
        record = Record(query.key, query.value)
        for peer in targets:
            msg = Message(MessageType.PUT_VALUE, key=query.key, record=record)
            self._send(peer, msg, query.query_id, now)
        self._pump(query, now)

    def _finish(self, query: _Query, now: float) -> None:
        del self._queries[query.query_id]
        lookup = query.lookup
        value = None
        if isinstance(lookup, ValueLookup):
            value = lookup.best
            if value is not None:
                self._correct_outdated(query.key, value, lookup.outdated, now)
                self._keep_best_locally(query.key, value, now)
        if query.refresh_bucket is not None:
            self._refreshing.discard(query.refresh_bucket)
        elif lookup.target_key != self.table.local_key:
            try:
                self.table.mark_refreshed(self.table.bucket_index(lookup.target_key), now=now)
            except ValueError:
                pass
        self._ready.finished.append(QueryResult(
            query.query_id, query.kind, lookup.target_key, tuple(lookup.closest()),
            value=value, stored=query.stored, stats=lookup.stats(),
        ))
        if query.query_id in self._bootstraps:
            self._bootstraps.discard(query.query_id)
            if self.config.refresh_on_join and lookup.closest():
                self._refresh_all(now)

    def _refresh_all(self, now: float) -> None:
        """Refresh once every bucket farther away than the closest neighbour (paper
        section 2.3; the self-lookup just covered the deeper ones), at most up to
        MAX_REFRESH_CPL (see ``DhtConfig.refresh_on_join``); the staggered periodic
        refresh continues after."""
        nearest = self.table.closest(self.table.local_key, 1)
        if not nearest:
            return
        closest_cpl = self.table.bucket_index(nearest[0].key)
        for index in range(min(closest_cpl, MAX_REFRESH_CPL + 1)):
            if index in self._refreshing:
                continue
            self._refreshing.add(index)
            self.table.mark_refreshed(index, now=now)
            self._start("find_node", self.table.random_preimage_in_bucket(index), now,
                        refresh_bucket=index)

    def _correct_outdated(self, key: bytes, value: bytes, outdated: list[bytes], now: float):
        for peer_id in sorted(set(outdated)):
            contact = self.table.get(peer_id)
            peer = PeerInfo(peer_id, contact.addrs if contact else ())
            msg = Message(MessageType.PUT_VALUE, key=key, record=Record(key, value))
            self._send(peer, msg, None, now)

    def _keep_best_locally(self, key: bytes, value: bytes, now: float) -> None:
        stored = self.store.get(key, now=now)
        if stored is not None and stored.value != value:
            try:
                self.store.put(key, value, now=now)
            except RecordInvalid:
                self.counters["local_store_refused"] += 1

    def _seen(self, peer: PeerInfo, now: float) -> None:
        result = self.table.update(peer.peer_id, peer.addrs, now=now,
                                   failures=self.health.failures(peer.peer_id))
        if result.ping is not None:
            contact = self.table.get(result.ping)
            addrs = contact.addrs if contact is not None else ()
            self._send(PeerInfo(result.ping, addrs), Message(MessageType.PING), None, now)

    def _answered(self, request_id: int, pending: Pending) -> None:
        """A lookup request was answered: forget its re-ask (or the first request)."""
        if pending.query_id is None:
            return
        rids = self._asks.pop((pending.query_id, pending.peer.peer_id), None)
        for rid in rids or ():
            if rid != request_id and self._pending.pop(rid) is not None:
                self.counters["reasks_superseded"] += 1

    def _fail(self, request_id: int, pending: Pending, now: float, *,
              charge: bool = True) -> None:
        self.counters["failures"] += 1
        peer_id = pending.peer.peer_id
        if pending.query_id is not None:
            key = (pending.query_id, peer_id)
            rids = self._asks.get(key)
            if rids is not None and request_id in rids:
                newest = rids[-1] == request_id
                rids.remove(request_id)
                if rids:  # another request to the peer is open: not a failure yet
                    self.counters["reask_pending_failures"] += 1
                    query = self._queries.get(pending.query_id)
                    if newest and query is not None and query.put_pending is None and (
                            query.lookup.state_of(peer_id) is PeerState.RETRYING):
                        query.lookup.on_stall(peer_id)  # the re-ask failed: stop waiting
                        self._pump(query, now)
                    return
                del self._asks[key]
        if charge:
            self.health.failed(peer_id, now=now)
        if pending.expected is MessageType.PING and pending.query_id is None:
            self.table.ping_result(peer_id, False, now=now)
            return
        if charge:
            self.table.record_failure(peer_id)
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None:
            return
        if query.put_pending is not None:
            if pending.expected is MessageType.PUT_VALUE:
                query.put_pending.discard(peer_id)
        elif charge:
            query.lookup.on_failure(peer_id)
        else:
            query.lookup.on_unreachable(peer_id)
        self._pump(query, now)
