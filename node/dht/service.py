"""The trio shell that runs a :class:`~node.dht.core.DhtNode` over a py-libp2p host.

Theory of operation
-------------------
All Kademlia logic lives in the pure core; this shell only moves bytes and time:

* **Inbound**: a stream handler for ``/ipfs/kad/1.0.0`` decodes length-prefixed
  messages with :class:`~node.dht.wire.FrameDecoder`, charges each to the sender's
  token bucket (:class:`~node.transport.ratelimit.PeerRateLimiter`), asks the core for
  the answer and writes it back; it serves several requests per stream (spec: "must
  handle additional RPC request messages on an incoming stream") until the remote
  closes, ``idle_timeout`` passes, or the input is malformed, oversized or refused (then
  the stream is reset). At most ``max_inbound_streams`` are served at once. Nothing a
  peer sends escapes the handler: py-libp2p 0.8.1 cancels the whole connection when a
  handler raises (``stream.read`` raises ``StreamEOF`` at a clean close).
* **Outbound**: every request in the core's ``ready()`` runs in its own task: the
  peer's multiaddrs go into the peerstore, a new stream carries one request and one
  answer, and the core hears ``on_response`` or ``on_failure`` (dial error, reset,
  malformed answer, ``request_timeout``, by default the core's
  ``DhtConfig.request_timeout``).
* **Time**: ``DhtNode.tick`` runs when the core's :meth:`~node.dht.core.DhtNode.next_wakeup`
  is due (a lookup request's stall deadline, a hard timeout, a bucket refresh), and at
  least every ``tick_interval`` seconds; a sleep is cut short when new requests bring
  the next deadline forward. The core's ``now`` is wall time, Unix-epoch seconds
  (:meth:`DhtService.now`), so stored records get a meaningful ``timeReceived``; build
  the ``DhtNode`` with ``now=time.time()`` or its refresh schedule starts in 1970 and
  every bucket is due at once. The core's timeouts are coarse (seconds), so a wall-clock
  step only delays or hastens them; the per-request deadline here is trio's.
* **Queries**: :meth:`DhtService.bootstrap`, :meth:`find_node`, :meth:`get_value` and
  :meth:`put_value` start a query on the core and wait for its
  :class:`~node.dht.core.QueryResult`.

Drop reasons are counted in :attr:`DhtService.dropped` per (PeerId, reason).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.dht.core import DhtNode, OutboundRequest, QueryResult
from node.dht.messages import Message, PeerInfo
from node.dht.wire import MAX_MESSAGE_SIZE, PROTOCOL_ID, FrameDecoder, WireError, encode_frame
from node.transport.ratelimit import PeerRateLimiter

__all__ = ["DhtService"]

log = logging.getLogger(__name__)
_KAD = TProtocol(PROTOCOL_ID)
_PEERSTORE_TTL_S = 3600


class DhtService:
    """Runs ``node`` on ``host`` (a py-libp2p host that is already running).

    Seconds: ``tick_interval`` is the longest sleep between core ticks;
    ``request_timeout`` bounds one outbound request (default: the core's
    ``DhtConfig.request_timeout``); ``idle_timeout`` closes an inbound stream that sent
    nothing. ``rate_per_s``/``burst`` is each peer's inbound token bucket."""

    def __init__(
        self,
        host,
        node: DhtNode,
        *,
        tick_interval: float = 1.0,
        request_timeout: float | None = None,
        idle_timeout: float = 60.0,
        max_inbound_streams: int = 64,
        rate_per_s: float = 200.0,
        burst: float = 400.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.host = host
        self.node = node
        self.tick_interval = tick_interval
        self.request_timeout = (
            node.config.request_timeout if request_timeout is None else request_timeout)
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.limiter = PeerRateLimiter(rate_per_s, burst)
        self.dropped: Counter[tuple[str, str]] = Counter()
        #: Called as ``on_drop(peer_id, reason)`` after each drop (metrics, tests).
        self.on_drop: Callable[[str, str], None] | None = None
        self._inbound = trio.CapacityLimiter(max_inbound_streams)
        self._nursery: trio.Nursery | None = None
        self._waiters: dict[int, trio.Event] = {}
        self._results: dict[int, QueryResult] = {}
        self._sleep: trio.CancelScope | None = None  # the ticker's current sleep
        self._wake_at = 0.0  # when that sleep ends, core clock

    def _drop(self, peer_id: str, reason: str) -> None:
        self.dropped[(peer_id, reason)] += 1
        if self.on_drop is not None:
            self.on_drop(peer_id, reason)

    @staticmethod
    def now() -> float:
        """The core's clock: wall time, seconds since the Unix epoch."""
        return time.time()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve and tick until cancelled; ``task_status.started()`` once serving."""
        local = self.node.local
        if not local.addrs:  # advertise our listen multiaddrs in FIND_NODE answers
            listen = tuple(a.to_bytes() for a in self.host.get_transport_addrs())
            self.node.local = PeerInfo(local.peer_id, listen, local.connection)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.host.set_stream_handler(_KAD, self._serve)
            task_status.started()
            try:
                filled = 0.0
                while True:
                    now = self.now()
                    self.node.tick(now)
                    self._flush()
                    if now - filled >= self.tick_interval:
                        filled = now
                        self._fill_addrs()
                    delay = min(self.tick_interval, max(0.0, self.node.next_wakeup() - now))
                    self._wake_at = now + delay
                    with trio.CancelScope() as self._sleep:
                        await trio.sleep(delay)
                    self._sleep = None
            finally:
                self._nursery = None

    # -- queries --------------------------------------------------------------------------

    async def bootstrap(self, peers: Iterable[PeerInfo]) -> QueryResult:
        """Join through ``peers`` (PeerId + binary multiaddrs)."""
        peers = list(peers)
        return await self._query(lambda n: n.bootstrap(peers, now=self.now()))

    async def find_node(self, peer_id: bytes) -> QueryResult:
        """The ``k`` peers closest to binary PeerId ``peer_id``."""
        return await self._query(lambda n: n.find_node(peer_id, now=self.now()))

    async def get_value(self, key: bytes, *, quorum: int = 1) -> QueryResult:
        """The best valid value for record ``key`` (``result.value``, None if absent)."""
        return await self._query(lambda n: n.get_value(key, now=self.now(), quorum=quorum))

    async def put_value(self, key: bytes, value: bytes) -> QueryResult:
        """Store a record locally and on the ``k`` closest peers. Raises RecordInvalid."""
        return await self._query(lambda n: n.put_value(key, value, now=self.now()))

    async def _query(self, start: Callable[[DhtNode], int]) -> QueryResult:
        if self._nursery is None:
            raise RuntimeError("DhtService is not running")
        qid = start(self.node)
        done = self._waiters[qid] = trio.Event()
        self._flush()
        await done.wait()
        del self._waiters[qid]
        return self._results.pop(qid)

    # -- effects --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._nursery is None or not self.node.has_ready():
            return
        ready = self.node.ready()
        self.node.advance(ready)
        for result in ready.finished:
            waiter = self._waiters.get(result.query_id)
            if waiter is not None:
                self._results[result.query_id] = result
                waiter.set()
        for request in ready.requests:
            self._nursery.start_soon(self._request, request)
        if self._sleep is not None and self.node.next_wakeup() < self._wake_at:
            self._sleep.cancel()  # a new deadline comes before the ticker wakes

    async def _request(self, req: OutboundRequest) -> None:
        answer: Message | None = None
        reason = "timeout"
        with trio.move_on_after(self.request_timeout):
            try:
                answer = await self._exchange(req)
                reason = "no_answer"
            except WireError:
                reason = "malformed"
            except Exception as exc:  # noqa: BLE001 - any failure fails the request
                known = req.peer.addrs or self._known_addrs(ID(req.peer.peer_id))
                reason = "failed" if known else "no_address"
                log.debug("kad request %d to %s failed: %r", req.request_id,
                          req.peer.peer_id.hex(), exc)
        if answer is None:
            self.node.on_failure(req.request_id, now=self.now(), reason=reason)
        else:
            self.node.on_response(req.request_id, answer, now=self.now())
        self._flush()

    async def _exchange(self, req: OutboundRequest) -> Message | None:
        peer = ID(req.peer.peer_id)
        addrs = []
        for raw in req.peer.addrs:
            try:
                addrs.append(multiaddr.Multiaddr(raw))
            except Exception:  # noqa: BLE001 - a peer may advertise garbage addrs
                continue
        if addrs:
            self.host.get_peerstore().add_addrs(peer, addrs, _PEERSTORE_TTL_S)
        stream = await self.host.new_stream(peer, [_KAD])
        try:
            await stream.write(encode_frame(req.message))
            decoder = FrameDecoder(max_size=self.max_message_size)
            while chunk := await _read(stream):
                if answers := decoder.feed(chunk):
                    return answers[0]
            return None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await _quietly(stream.close())

    # -- inbound --------------------------------------------------------------------------

    async def _serve(self, stream) -> None:
        """Stream handler: never raises (see the module docstring)."""
        try:
            peer = stream.muxed_conn.peer_id
        except Exception:  # noqa: BLE001
            await _quietly(stream.reset())
            return
        name = peer.to_base58()
        if self._inbound.borrowed_tokens >= self._inbound.total_tokens:
            self._drop(name, "busy")
            await _quietly(stream.reset())
            return
        async with self._inbound:
            try:
                reason = await self._serve_requests(stream, peer)
            except Exception as exc:  # noqa: BLE001 - stream errors end the stream only
                reason = "stream_error"
                log.debug("kad stream from %s failed: %r", name, exc)
            if reason is None:
                await _quietly(stream.close())
            else:
                self._drop(name, reason)
                await _quietly(stream.reset())

    async def _serve_requests(self, stream, peer: ID) -> str | None:
        """Answer requests until EOF (None) or a reason to reset the stream."""
        requester = PeerInfo(peer.to_bytes(), self._known_addrs(peer))
        decoder = FrameDecoder(max_size=self.max_message_size)
        while True:
            chunk = b""
            with trio.move_on_after(self.idle_timeout):
                chunk = await _read(stream)
            if not chunk:
                return None
            try:
                messages = decoder.feed(chunk)
            except WireError:
                return "malformed"
            for msg in messages:
                if not self.limiter.allow(peer.to_bytes(), trio.current_time()):
                    return "rate_limited"
                handled = self.node.on_request(requester, msg, now=self.now())
                self._flush()
                if handled.response is None:
                    return "rejected"
                await stream.write(encode_frame(self._with_addrs(handled.response)))


    def _with_addrs(self, answer: Message) -> Message:
        """``answer`` with the peerstore's multiaddrs for listed peers the core knows
        without any (the core learns them too): a peer without addresses is of no use
        to the requester."""
        if all(p.addrs for p in answer.closer_peers):
            return answer
        peers = []
        for peer in answer.closer_peers:
            if not peer.addrs and (addrs := self._known_addrs(ID(peer.peer_id))):
                self.node.learn_addrs(peer.peer_id, addrs)
                peer = PeerInfo(peer.peer_id, addrs, peer.connection)
            peers.append(peer)
        return dataclasses.replace(answer, closer_peers=tuple(peers))

    def _fill_addrs(self) -> None:
        """Contacts recorded without multiaddrs (their first request came before
        identify finished) take what the peerstore learnt since."""
        for contact in list(self.node.table.contacts()):
            if not contact.addrs:
                addrs = self._known_addrs(ID(contact.peer_id))
                if addrs:
                    self.node.learn_addrs(contact.peer_id, addrs)

    def _known_addrs(self, peer: ID) -> tuple[bytes, ...]:
        """Binary multiaddrs the peerstore holds for ``peer`` (from identify), if any:
        the core records them with the contact so others can dial it."""
        try:
            addrs = self.host.get_peerstore().addrs(peer)
        except Exception:  # noqa: BLE001 - PeerStoreError when unknown or expired
            return ()
        # the wire carries transport multiaddrs; the PeerId travels in Peer.id
        plain = {str(a).split("/p2p/", 1)[0] for a in addrs}
        return tuple(multiaddr.Multiaddr(a).to_bytes() for a in sorted(plain) if a)


async def _read(stream) -> bytes:
    try:
        return await stream.read(65536)
    except Exception:  # noqa: BLE001 - StreamEOF, resets and closed streams all end it
        return b""


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001
        pass
