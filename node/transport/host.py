"""Message transport over a real libp2p host: TCP, Noise only, yamux.

Theory of operation
-------------------
The consensus and application layers exchange *messages* (bytes) with peers named by
PeerId on named *channels*. Each channel is one libp2p protocol ID,
``/meshnode/<channel>/1.0.0``. Per (peer, channel) there is one persistent outbound
stream fed by a bounded queue; a frame on the wire is a 4-byte big-endian length and the
payload (a canonical msgpack value, decoded by the layer above).

* **Security**: the host is built with Noise as its only security transport, so a
  plaintext dialer fails negotiation (ARCHITECTURE.md section 7: the default host would
  accept one). The host key is the node's HSM key (``identity.libp2p_key``), so the
  Noise handshake proves possession of the key behind the PeerId.
* **Backpressure**: ``send`` never blocks the caller: it enqueues on the peer's queue
  (``queue_size`` frames) and returns False, counting ``queue_full``, when the queue is
  full. The protocols above tolerate loss (PBFT retransmits through view change and
  state transfer).
* **Inbound limits**: frames are cut by the pure :class:`~node.transport.framing.
  FrameDecoder`: a frame larger than ``max_frame_bytes`` is skipped and counted against
  the peer (``oversized``), one declaring more than four times that resets the stream;
  each peer has a token bucket (:class:`~node.transport.ratelimit.PeerRateLimiter`,
  LRU-bounded) of ``rate_per_s`` frames per second with ``burst`` capacity, excess
  frames are dropped (``rate_limited``). Nothing a peer sends can raise out of a
  reader task. Payloads are decoded by the layer above, which counts what it refuses.
* **Reconnect**: a writer whose stream fails redials the peer with exponential backoff
  (``backoff_min_s`` doubling up to ``backoff_max_s``, full jitter) and keeps its queue.
* **Shutdown**: leaving :meth:`LibP2PTransport.run` cancels every task and calls
  ``host.close()`` (leaving ``host.run()`` alone leaves the TCP listener open).

Time here is wall time (trio's clock); the pure cores never see it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from node import logs
from node.transport.framing import DEFAULT_MAX_FRAME_BYTES, Dropped, FrameDecoder, frame_payload
from node.transport.ratelimit import PeerRateLimiter

logs.adopt_libp2p_logger()
log = logging.getLogger("meshnode.transport")

__all__ = ["Inbound", "LibP2PTransport", "protocol_id"]

PEERSTORE_TTL_S = 24 * 3600


def connection_config(max_connections: int = 300) -> ConnectionConfig:
    """py-libp2p connection settings for a meshnode host.

    * ``max_connections_per_peer=1``: without it ``Swarm.dial_peer`` waits a fixed
      250 ms after every successful dial (ARCHITECTURE.md section 7).
    * ``min_connections=0, low_watermark=0``: no floor to maintain; the AutoConnector
      (which would dial every peer in the peerstore) is disabled outright by
      :func:`_disable_auto_connector`. The node decides whom to dial.
    * ``high_watermark=max_connections``: the pruner only trims above the hard cap.
    """
    return ConnectionConfig(
        max_connections=max_connections,
        max_connections_per_peer=1,
        min_connections=0,
        low_watermark=0,
        high_watermark=max_connections,
    )


def _disable_auto_connector(host: Any) -> None:
    """Keep py-libp2p's AutoConnector from ever starting.

    It dials toward (low_watermark + high_watermark) / 2 connections whatever
    ``min_connections`` says, so watermarks alone cannot idle it without switching the
    pruner on (high_watermark 0 prunes everything). The node decides whom to dial;
    a never-started AutoConnector skips both its periodic task and its on-disconnect
    redials (``maybe_connect`` returns when not started).
    """

    async def _never_start() -> None:
        return None

    host.get_network().auto_connector.start = _never_start


def protocol_id(channel: str) -> TProtocol:
    """The libp2p protocol ID of a channel: ``/meshnode/<channel>/1.0.0``, or the channel
    itself when it is already a protocol ID (starts with ``/``, e.g. a plugin's
    ``/meshnode/plugin/<name>/1.0.0``)."""
    return TProtocol(channel if channel.startswith("/") else f"/meshnode/{channel}/1.0.0")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One received message: sender PeerId (authenticated by Noise), channel, payload."""

    peer_id: str
    channel: str
    payload: bytes


class LibP2PTransport:
    """A libp2p host carrying framed messages on named channels.

    ``key_pair`` is the host identity (an HSM-backed pair from
    ``identity.libp2p_key.hsm_key_pair`` in a node); ``listen`` are multiaddr strings;
    ``channels`` the channel names to accept; ``mdns`` advertises the host on the LAN
    and browses for others (py-libp2p's zeroconf service; see node.discovery.MdnsDialer
    for dialing what it finds). Received messages arrive on :attr:`inbound` (a trio
    receive channel of :class:`Inbound`).
    """

    def __init__(
        self,
        key_pair: KeyPair,
        listen: Sequence[str],
        channels: Sequence[str],
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        queue_size: int = 1024,
        inbound_queue: int = 4096,
        rate_per_s: float = 2000.0,
        burst: float = 4000.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 5.0,
        rng: random.Random | None = None,
        mdns: bool = False,
    ) -> None:
        self.key_pair = key_pair
        self.listen = [multiaddr.Multiaddr(a) for a in listen]
        self.channels = tuple(channels)
        self.max_frame_bytes = max_frame_bytes
        self.queue_size = queue_size
        self.rate_per_s, self.burst = rate_per_s, burst
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self._rng = rng or random.Random()
        noise = NoiseTransport(key_pair, new_x25519_key_pair().private_key)
        self.host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt=create_yamux_muxer_option(),
            connection_config=connection_config(),
            enable_mDNS=mdns,
        )
        _disable_auto_connector(self.host)
        self.peer_id = self.host.get_id().to_base58()
        self._in_send, self.inbound = trio.open_memory_channel[Inbound](inbound_queue)
        self._queues: dict[tuple[str, str], trio.MemorySendChannel] = {}
        self._limiter = PeerRateLimiter(rate_per_s, burst)
        self._nursery: trio.Nursery | None = None
        #: Dropped frames by (peer, reason); reasons: queue_full, oversized,
        #: rate_limited, stream_error.
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.on_peer_connected: Callable[[str], None] | None = None
        #: Called as ``on_drop(peer_id, reason)`` for every dropped frame (metrics).
        self.on_drop: Callable[[str, str], None] | None = None

    # ---- lifecycle ----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, accept and send until cancelled; ``task_status.started()`` once the
        listener is up. Always closes the host on the way out."""
        for channel in self.channels:
            self.host.set_stream_handler(protocol_id(channel), self._make_handler(channel))
        try:
            async with self.host.run(listen_addrs=self.listen), trio.open_nursery() as nursery:
                self._nursery = nursery
                log.info("listening on %s as %s", ", ".join(map(str, self.listen_addrs())),
                         self.peer_id)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.host.close()
            log.info("transport closed")

    def listen_addrs(self) -> list[str]:
        """The multiaddrs the host listens on, each ending in ``/p2p/<PeerId>``."""
        return [str(a) for a in self.host.get_addrs()]

    # ---- peers ------------------------------------------------------------------------
    def add_peer_addrs(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Remember where ``peer_id`` listens (multiaddrs without ``/p2p``)."""
        maddrs = [multiaddr.Multiaddr(a) for a in addrs]
        self.host.get_peerstore().add_addrs(ID.from_base58(peer_id), maddrs, PEERSTORE_TTL_S)

    async def dial(self, addr: str) -> str:
        """Connect to ``addr`` (a multiaddr ending in ``/p2p/<PeerId>``); returns the
        PeerId. Raises the libp2p error when the dial or the Noise handshake fails."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return info.peer_id.to_base58()

    def connected_peers(self) -> list[str]:
        """PeerIds with an open connection, sorted."""
        return sorted(p.to_base58() for p in self.host.get_network().connections)

    # ---- sending ----------------------------------------------------------------------
    def send(self, peer_id: str, channel: str, payload: bytes) -> bool:
        """Queue ``payload`` for ``peer_id`` on ``channel``. Never blocks; returns False
        (and counts ``queue_full``) when that peer's queue is full. Raises ValueError
        for a payload over ``max_frame_bytes`` (a local bug, not a remote fault)."""
        if len(payload) > self.max_frame_bytes:
            raise ValueError(f"frame of {len(payload)} bytes over {self.max_frame_bytes}")
        if peer_id == self.peer_id:
            raise ValueError("cannot send to self")
        key = (peer_id, channel)
        queue = self._queues.get(key)
        if queue is None:
            if self._nursery is None:
                raise RuntimeError("transport is not running")
            queue, receive = trio.open_memory_channel[bytes](self.queue_size)
            self._queues[key] = queue
            self._nursery.start_soon(self._writer, peer_id, channel, receive)
        try:
            queue.send_nowait(payload)
        except trio.WouldBlock:
            self._drop(peer_id, "queue_full")
            return False
        return True

    async def _writer(self, peer_id: str, channel: str, queue: trio.MemoryReceiveChannel) -> None:
        backoff = self.backoff_min_s
        pending: bytes | None = None
        while True:
            try:
                stream = await self.host.new_stream(ID.from_base58(peer_id), [protocol_id(channel)])
            except Exception as exc:  # noqa: BLE001 - libp2p raises many types
                log.debug("stream to %s/%s failed: %s; retry in %.2fs", peer_id, channel, exc,
                          backoff)
                await trio.sleep(self._rng.uniform(0, backoff))
                backoff = min(self.backoff_max_s, backoff * 2)
                continue
            backoff = self.backoff_min_s
            if self.on_peer_connected:
                self.on_peer_connected(peer_id)
            try:
                while True:
                    if pending is None:
                        pending = await queue.receive()
                    await stream.write(frame_payload(pending,
                                                     max_frame_bytes=self.max_frame_bytes))
                    self.sent[peer_id] += 1
                    pending = None
            except Exception as exc:  # noqa: BLE001
                self._drop(peer_id, "stream_error")
                log.debug("stream to %s/%s broke: %s", peer_id, channel, exc)
                with trio.CancelScope(shield=True):
                    await _quietly(stream.reset())

    # ---- receiving --------------------------------------------------------------------
    def _make_handler(self, channel: str):
        async def handler(stream: Any) -> None:
            peer_id = stream.muxed_conn.peer_id.to_base58()
            try:
                await self._read_frames(stream, peer_id, channel)
            except Exception as exc:  # noqa: BLE001 - never let a peer crash a task
                log.debug("inbound stream from %s/%s ended: %s", peer_id, channel, exc)
            finally:
                with trio.CancelScope(shield=True):
                    await _quietly(stream.reset())

        return handler

    async def _read_frames(self, stream: Any, peer_id: str, channel: str) -> None:
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes, decode=False)
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            for item in decoder.feed(chunk):
                if isinstance(item, Dropped):
                    self._drop(peer_id, item.reason)
                    if item.fatal:
                        log.warning("peer %s declared a %d-byte frame (limit %d); stream reset",
                                    peer_id, item.size, self.max_frame_bytes)
                        return
                elif not self._limiter.allow(peer_id, trio.current_time()):
                    self._drop(peer_id, "rate_limited")
                else:
                    self.received[peer_id] += 1
                    await self._in_send.send(Inbound(peer_id, channel, item.payload))

    def _drop(self, peer_id: str, reason: str) -> None:
        self.dropped[(peer_id, reason)] += 1
        if self.on_drop is not None:
            self.on_drop(peer_id, reason)

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """``{reason: {peer_id: count}}`` of frames dropped so far."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (peer, reason), n in sorted(self.dropped.items()):
            out[reason][peer] = n
        return dict(out)


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001, S110 - best-effort cleanup of a dead stream
        pass


def peer_info(peer_id: str, addrs: Sequence[str]) -> PeerInfo:
    """A libp2p PeerInfo from a PeerId string and multiaddr strings."""
    return PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs])
