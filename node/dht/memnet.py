"""A minimal in-memory driver for :class:`~node.dht.core.DhtNode` (pure; tests, benchmarks).

Theory of operation
-------------------
A seeded discrete-event loop, the smallest honest version of what ``sim/`` does: every
request and response is encoded with :mod:`node.dht.wire` and decoded at the receiver,
each hop takes ``latency`` virtual seconds, dead peers never answer (their requests
time out through :meth:`DhtNode.tick`), and a refused request (the handler returned no
response) fails at once, as a stream reset would. A node is ticked when its
:meth:`DhtNode.next_wakeup` is due (as the real shell does), and every node at least
every ``tick_every`` seconds. Events at the same instant run in
the order they were scheduled, so a run is a pure function of its inputs and seed.
With ``loss > 0`` each request and each answer is dropped with that probability
(drawn from a second generator seeded with ``seed``, so a lossless run draws nothing
extra and is unchanged); a dropped message looks like silence to the requester. Tests
drop chosen messages with :attr:`MemNet.drop`. It is not the simulator: there is no
CPU model, jitter or adversary here.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from node.dht.core import DhtConfig, DhtNode, OutboundRequest, QueryResult
from node.dht.messages import Message, PeerInfo
from node.dht.record_store import Validator
from node.dht.wire import WireError, decode_message, encode_message

__all__ = ["MemNet"]


@dataclass(order=True, slots=True)
class _Event:
    at: float
    seq: int
    action: Callable[[], None]


class MemNet:
    """Nodes keyed by binary PeerId, connected by a fixed-latency network that drops
    each message with probability ``loss`` (0: lossless). Raises ValueError for a
    ``loss`` outside ``[0, 1)``."""

    def __init__(
        self,
        *,
        seed: int,
        validator: Validator,
        latency: float = 0.01,
        tick_every: float = 1.0,
        config: DhtConfig | None = None,
        loss: float = 0.0,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        self.rng = random.Random(seed)
        self.loss = loss
        self._loss_rng = random.Random(f"memnet-loss-{seed}")
        self.lost = 0
        #: ``drop(sender, receiver, message, answer) -> bool``: True loses that request
        #: (``answer`` False) or answer (checked for every message before ``loss``).
        self.drop: Callable[[bytes, bytes, Message, bool], bool] | None = None
        self.validator = validator
        self.latency = latency
        self.tick_every = tick_every
        self.config = config
        self.now = 0.0
        self.nodes: dict[bytes, DhtNode] = {}
        self.dead: set[bytes] = set()
        self.results: dict[tuple[bytes, int], QueryResult] = {}
        self.messages = 0  # requests sent
        self._events: list[_Event] = []
        self._seq = 0
        self._next_tick = 0.0
        self._dirty: set[bytes] = set()  # nodes that may have effects to carry out
        self._wakes: list[tuple[float, int, bytes]] = []  # (at, seq, peer), lazy heap

    def add_node(self, peer_id: bytes, addrs: Iterable[bytes] = ()) -> DhtNode:
        """Create a node for ``peer_id`` with its own rng drawn from the net's rng."""
        node = DhtNode(PeerInfo(peer_id, tuple(addrs)), validator=self.validator,
                       rng=random.Random(self.rng.getrandbits(64)), now=self.now,
                       config=self.config)
        self.nodes[peer_id] = node
        return node

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` ``delay`` seconds from now."""
        self._seq += 1
        heapq.heappush(self._events, _Event(self.now + delay, self._seq, action))

    def run_until(self, done: Callable[[], bool], *, limit: float = 3600.0) -> None:
        """Process events (and 1-second ticks) until ``done()`` or ``limit`` seconds."""
        while not done():
            self._flush()
            if done():
                return
            next_event = self._events[0].at if self._events else float("inf")
            next_wake = self._wakes[0][0] if self._wakes else float("inf")
            if next_wake < min(self._next_tick, next_event):
                self.now = max(self.now, next_wake)
                _, _, peer_id = heapq.heappop(self._wakes)
                node = self.nodes[peer_id]
                if peer_id not in self.dead and node.next_wakeup() <= self.now:
                    node.tick(self.now)
                    self._dirty.add(peer_id)
            elif self._next_tick <= next_event:
                self.now = self._next_tick
                self._next_tick += self.tick_every
                for peer_id in sorted(self.nodes):
                    if peer_id not in self.dead:
                        node = self.nodes[peer_id]
                        node.tick(self.now)
                        if node.has_ready():
                            self._dirty.add(peer_id)
            else:
                event = heapq.heappop(self._events)
                self.now = event.at
                event.action()
            if self.now > limit:
                raise TimeoutError(f"not done after {limit} virtual seconds")

    def start_query(self, peer_id: bytes, start: Callable[[DhtNode], int]) -> int:
        """Start a query on ``peer_id`` with ``start(node)`` (not run yet); its result
        appears in :attr:`results` under ``(peer_id, query id)``."""
        qid = start(self.nodes[peer_id])
        self._dirty.add(peer_id)
        return qid

    def run_query(self, peer_id: bytes, start: Callable[[DhtNode], int]) -> QueryResult:
        """Start a query on ``peer_id`` with ``start(node)`` and run until it finishes."""
        qid = self.start_query(peer_id, start)
        self.run_until(lambda: (peer_id, qid) in self.results)
        return self.results[(peer_id, qid)]

    def _flush(self) -> None:
        dirty, self._dirty = sorted(self._dirty), set()
        for peer_id in dirty:
            node = self.nodes[peer_id]
            if not node.has_ready():
                continue
            wake = node.next_wakeup()
            if wake < self._next_tick:
                self._seq += 1
                heapq.heappush(self._wakes, (wake, self._seq, peer_id))
            ready = node.ready()
            node.advance(ready)
            for result in ready.finished:
                self.results[(peer_id, result.query_id)] = result
            for request in ready.requests:
                self.messages += 1
                if self._dropped(peer_id, request.peer.peer_id, request.message, False):
                    continue  # the requester's tick stalls, then times it out
                wire = encode_message(request.message)
                self.schedule(self.latency, self._deliver_fn(peer_id, request, wire))

    def _dropped(self, sender: bytes, receiver: bytes, message: Message,
                 answer: bool) -> bool:
        if (self.drop is not None and self.drop(sender, receiver, message, answer)) or (
                self.loss and self._loss_rng.random() < self.loss):
            self.lost += 1
            return True
        return False

    def _deliver_fn(self, origin: bytes, request: OutboundRequest, wire: bytes):
        def deliver() -> None:
            target = self.nodes.get(request.peer.peer_id)
            if target is None or request.peer.peer_id in self.dead:
                return  # silence: the origin's tick times the request out
            sender = self.nodes[origin].local
            handled = target.on_request(sender, decode_message(wire), now=self.now)
            self._dirty.add(request.peer.peer_id)
            source = self.nodes[origin]
            if handled.response is None:
                def refused() -> None:
                    source.on_failure(request.request_id, now=self.now)
                    self._dirty.add(origin)

                self.schedule(self.latency, refused)
                return
            if self._dropped(request.peer.peer_id, origin, handled.response, True):
                return  # the answer is lost on the way back
            reply = encode_message(handled.response)

            def respond() -> None:
                if origin in self.dead:
                    return
                self._dirty.add(origin)
                try:
                    msg = decode_message(reply)
                except WireError:
                    source.on_failure(request.request_id, now=self.now)
                    return
                source.on_response(request.request_id, msg, now=self.now)

            self.schedule(self.latency, respond)

        return deliver
