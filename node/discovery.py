"""Discovery shell: the Kademlia DHT service, identity publication, bootstrap, healing.

Theory of operation
-------------------
The pure :class:`~node.dht.core.DhtNode` runs on the node's libp2p host through
:class:`~node.dht.service.DhtService` (standard ``/ipfs/kad/1.0.0``). The DHT serves
two namespaces: ``meshnode-id`` (signed identity bundles, checked by
:class:`~node.dht.identity_validator.IdentityBundleValidator`) and ``pk`` (libp2p public
keys). The maintenance task:

1. dials the configured bootstrap multiaddrs (logging each outcome);
2. bootstraps the routing table from the known peers (genesis members, bootstrap
   peers, peers mDNS found) — again with exponential backoff (2 s doubling to 60 s)
   while the table stays empty, so a node that started alone or lost its peers to a
   partition rejoins by itself;
3. publishes this node's identity bundle (key event log + a fresh record signed by the
   HSM in a worker thread, listing the listen multiaddrs) under
   ``/meshnode-id/<PeerId>`` and re-publishes it every ``republish_s`` seconds, well
   inside the record's one-day validity and the DHT's 36 h record age.

Lookups (:meth:`Discovery.lookup_identity`) verify what they get, with the clock, so an
expired record is refused.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import multiaddr
import trio

from identity.bundle import verify_bundle
from identity.did import DidError, peer_id_bytes_from_public_key, public_key_from_peer_id
from identity.records import RecordError
from node.dht.core import DhtNode
from node.dht.identity_validator import IdentityBundleValidator
from node.dht.messages import PeerInfo
from node.dht.record_store import (
    IDENTITY_NAMESPACE,
    NamespacedValidator,
    PublicKeyValidator,
    identity_record_key,
)
from node.dht.service import DhtService

log = logging.getLogger("meshnode.discovery")

__all__ = ["Discovery", "MdnsDialer", "dht_validator"]


def dht_validator() -> NamespacedValidator:
    """The validator for every namespace a meshnode DHT serves."""
    return NamespacedValidator({IDENTITY_NAMESPACE: IdentityBundleValidator(),
                                "pk": PublicKeyValidator()})


class MdnsDialer:
    """Dials the peers py-libp2p's mDNS finds on the LAN (it only fills the peerstore).

    py-libp2p reports discoveries through its process-wide ``peerDiscovery`` emitter, on
    zeroconf's thread, possibly while the host is still starting: so the handler is
    registered at construction (inside the trio run, before the transport starts) and
    buffers into a channel; :meth:`run` dials each peer from the trio loop.
    ``on_found(peer_id, addrs)`` is called for each peer dialled successfully.
    """

    def __init__(self, transport: Any, on_found=None) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        self.transport = transport
        self.on_found = on_found
        self.found: dict[str, list[str]] = {}
        self._emitter = peerDiscovery
        self._send, self._receive = trio.open_memory_channel[Any](256)
        token = trio.lowlevel.current_trio_token()

        def handler(info: Any) -> None:  # zeroconf's thread
            try:
                trio.from_thread.run_sync(self._send.send_nowait, info, trio_token=token)
            except (trio.RunFinishedError, trio.WouldBlock, trio.ClosedResourceError):
                pass

        self._handler = handler
        peerDiscovery.register_peer_discovered_handler(handler)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                async for info in self._receive:
                    nursery.start_soon(self._dial, info)
        finally:
            self._emitter.unregister_peer_discovered_handler(self._handler)

    async def _dial(self, info: Any) -> None:
        peer_id = info.peer_id.to_base58()
        if peer_id == self.transport.peer_id or peer_id in self.found:
            return
        addrs = [str(a) for a in info.addrs]
        try:
            await self.transport.host.connect(info)
        except Exception as exc:  # noqa: BLE001 - a LAN peer that vanished: log only
            log.debug("mDNS peer %s not reachable: %s", peer_id, exc)
            return
        log.info("mDNS: connected to %s", peer_id)
        self.found[peer_id] = addrs
        if self.on_found is not None:
            self.on_found(peer_id, addrs)


def _peer_bytes(peer_id: str) -> bytes:
    return peer_id_bytes_from_public_key(public_key_from_peer_id(peer_id))


class Discovery:
    """DHT + identity publication for one node. ``identity`` is the node's
    :class:`~identity.home.IdentityHome`; ``transport`` its running LibP2PTransport;
    ``known`` (PeerId, multiaddrs) pairs to bootstrap from; times in seconds."""

    def __init__(self, identity: Any, transport: Any, *, bootstrap: Sequence[str],
                 known: Sequence[tuple[str, Sequence[str]]], env: Mapping[str, str],
                 republish_s: float = 3600.0, mdns: bool = False) -> None:
        self.identity = identity
        self.transport = transport
        self.bootstrap_addrs = list(bootstrap)
        self.known: dict[str, list[str]] = {p: list(a) for p, a in known}
        self.env = env
        self.republish_s = republish_s
        self.service: DhtService | None = None
        self.published_at: float | None = None
        self.mdns = MdnsDialer(transport, on_found=self.add_known) if mdns else None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the DHT and maintain it until cancelled."""
        node = DhtNode(PeerInfo(_peer_bytes(self.transport.peer_id)), validator=dht_validator(),
                       rng=random.Random(), now=time.time())
        self.service = DhtService(self.transport.host, node)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.service.run)
            if self.mdns is not None:
                await nursery.start(self.mdns.run)
            task_status.started()
            nursery.start_soon(self._maintain)

    def add_known(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Remember a peer to bootstrap from (mDNS, bootstrap dials)."""
        self.known.setdefault(peer_id, [])
        for a in addrs:
            if a not in self.known[peer_id]:
                self.known[peer_id].append(a)

    async def _maintain(self) -> None:
        await self._dial_bootstrap()
        backoff = 2.0
        while True:
            if len(self.service.node.table) == 0:
                await self._bootstrap()
            if len(self.service.node.table) == 0:
                await trio.sleep(backoff)
                backoff = min(60.0, backoff * 2)
                continue
            backoff = 2.0
            if self.published_at is None or time.time() - self.published_at >= self.republish_s:
                await self.publish()
            await trio.sleep(5.0)

    async def _dial_bootstrap(self) -> None:
        for addr in self.bootstrap_addrs:
            try:
                peer = await self.transport.dial(addr)
            except Exception as exc:  # noqa: BLE001 - any dial failure is logged, retried
                log.warning("bootstrap %s unreachable: %s", addr, exc)
                continue
            self.add_known(peer, [addr.split("/p2p/")[0]])
            log.info("bootstrap peer %s connected", peer)

    async def _bootstrap(self) -> None:
        seeds = [PeerInfo(_peer_bytes(p), tuple(multiaddr.Multiaddr(a).to_bytes() for a in addrs))
                 for p, addrs in sorted(self.known.items()) if addrs]
        if not seeds:
            return
        result = await self.service.bootstrap(seeds)
        log.info("DHT bootstrap: %d peers answered, routing table holds %d",
                 len(result.closest), len(self.service.node.table))

    async def publish(self) -> int:
        """Publish this node's identity bundle; returns how many peers stored it."""
        addrs = tuple(a.split("/p2p/")[0] for a in self.transport.listen_addrs())
        bundle = await trio.to_thread.run_sync(
            lambda: self.identity.export_bundle(listen_addrs=addrs, env=self.env))
        result = await self.service.put_value(identity_record_key(_peer_bytes(
            self.transport.peer_id)), bundle)
        self.published_at = time.time()
        log.info("published identity record to %d DHT peers", result.stored)
        return result.stored

    async def lookup_identity(self, peer_id: str) -> dict[str, Any]:
        """Find ``peer_id``'s identity bundle in the DHT and verify it (expiry included).
        Raises LookupError when absent or invalid."""
        try:
            key = identity_record_key(_peer_bytes(peer_id))
        except DidError as exc:
            raise LookupError(f"not an Ed25519 PeerId: {exc}") from None
        result = await self.service.get_value(key)
        if result.value is None:
            raise LookupError(f"no identity record for {peer_id} in the DHT")
        try:
            return verify_bundle(result.value, now=int(time.time()))
        except RecordError as exc:
            raise LookupError(f"identity record for {peer_id} does not verify: {exc}") from None

    def stats(self) -> dict[str, Any]:
        if self.service is None:
            return {}
        node = self.service.node
        return {"routing_table": len(node.table), "records": len(node.store),
                "published": self.published_at is not None,
                "dropped": sum(self.service.dropped.values())}
