"""Hooks between the plugin host and the rest of the node (transport, consensus).

The host does not know libp2p or PBFT. The node runtime wires two hooks:

``PubSubBridge``
    ``await publish(protocol, topic, data)`` sends ``data`` to the mesh on the
    plugin-scoped ``protocol`` (``/meshnode/plugin/<name>/1.0.0``); ``subscribe(protocol,
    deliver)`` registers ``deliver(PluginMessage)`` for messages arriving on it (called
    from the trio thread, must not block; the host queues and drops when a plugin is
    slow) and returns a function that unsubscribes. :class:`LocalPubSub` is an
    in-process implementation (one node, tests).

``ProposeHook``
    ``await propose(plugin, op) -> seq``: put a plugin's operation through consensus and
    return its decided sequence number. The node should commit
    :func:`plugin_operation` ``(plugin, op)`` rather than ``op`` itself, so a decided
    operation always says which plugin proposed it and none can pass for another's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from identity import canonical

__all__ = ["LocalPubSub", "PluginMessage", "ProposeHook", "PubSubBridge", "TransportPubSub",
           "plugin_operation"]


@dataclass(frozen=True)
class PluginMessage:
    protocol: str
    topic: str
    data: bytes
    sender: str


class PubSubBridge(Protocol):
    async def publish(self, protocol: str, topic: str, data: bytes) -> None: ...

    def subscribe(self, protocol: str,
                  deliver: Callable[[PluginMessage], None]) -> Callable[[], None]: ...


ProposeHook = Callable[[str, bytes], Awaitable[int]]


def plugin_operation(plugin: str, op: bytes) -> bytes:
    """The consensus operation for ``op`` proposed by ``plugin`` (canonical msgpack
    ``{"t": "plugin", "plugin": name, "op": bytes}``)."""
    return canonical.encode({"t": "plugin", "plugin": plugin, "op": bytes(op)})


class _Subscribers:
    """Per-protocol subscriber lists shared by the bridges."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Callable[[PluginMessage], None]]] = {}

    def subscribe(self, protocol: str,
                  deliver: Callable[[PluginMessage], None]) -> Callable[[], None]:
        """Call ``deliver(msg)`` for each message on ``protocol``; returns the
        function that unsubscribes it."""
        self._subs.setdefault(protocol, []).append(deliver)

        def unsubscribe() -> None:
            subs = self._subs.get(protocol, [])
            if deliver in subs:
                subs.remove(deliver)
        return unsubscribe

    def _deliver(self, msg: PluginMessage) -> None:
        for deliver in list(self._subs.get(msg.protocol, ())):
            deliver(msg)


class LocalPubSub(_Subscribers):
    """Loopback bridge: a publish is delivered to every local subscriber of the
    protocol (including the publisher), with ``sender`` = ``local_peer``."""

    def __init__(self, local_peer: str = "local") -> None:
        super().__init__()
        self.local_peer = local_peer
        self.published: list[PluginMessage] = []

    async def publish(self, protocol: str, topic: str, data: bytes) -> None:
        msg = PluginMessage(protocol, topic, data, self.local_peer)
        self.published.append(msg)
        self.inject(msg)

    def inject(self, msg: PluginMessage) -> None:
        """Deliver ``msg`` as if it came from the network."""
        self._deliver(msg)



class TransportPubSub(_Subscribers):
    """A :class:`PubSubBridge` over the node's framed transport (one hop: a publish is
    sent to every connected peer on the plugin's protocol; no gossip, no echo to self).

    ``transport`` needs ``connected_peers()`` and ``send(peer_id, channel, payload) ->
    bool`` (:class:`node.transport.host.LibP2PTransport`; its channel list must include
    the plugin protocols, see :meth:`plugins.config.PluginsConfig.pubsub_protocols`).
    The node's inbound pump calls :meth:`on_inbound` for frames on a protocol starting
    with ``/meshnode/plugin/``. Payload: canonical msgpack ``{"topic": str, "data":
    bytes}``; anything else is dropped and counted in ``dropped``.
    """

    def __init__(self, transport) -> None:
        super().__init__()
        self.transport = transport
        self.dropped = 0
        self.sent = 0

    async def publish(self, protocol: str, topic: str, data: bytes) -> None:
        payload = canonical.encode({"topic": topic, "data": bytes(data)})
        for peer in self.transport.connected_peers():
            if self.transport.send(peer, protocol, payload):
                self.sent += 1

    def on_inbound(self, peer_id: str, protocol: str, payload: bytes) -> None:
        try:
            value = canonical.decode(payload)
        except canonical.DecodeError:
            value = None
        if (type(value) is not dict or set(value) != {"topic", "data"}
                or type(value["topic"]) is not str or type(value["data"]) is not bytes):
            self.dropped += 1
            return
        self._deliver(PluginMessage(protocol, value["topic"], value["data"], peer_id))

