"""Answering inbound kad-dht requests (pure).

libp2p/specs kad-dht/README.md, "RPC messages", per message type:

* FIND_NODE: ``key`` is a binary PeerId; the answer holds the ``k`` closest contacts to
  ``sha256(key)``, plus the target itself when it is the local peer or a known contact
  and not already listed. The spec says an exact match is returned alone; we follow
  go-libp2p-kad-dht (``handleFindPeer`` appends the target to the closest peers), which
  also satisfies a requester expecting the exact match and keeps lookups converging.
* GET_VALUE: ``record`` is the stored value for ``key`` (if any, with ``timeReceived``)
  and ``closerPeers`` the ``k`` closest contacts to ``sha256(key)``.
* PUT_VALUE: ``record.key`` must equal ``key``; the record is validated and stored and
  the request is echoed back (as go-libp2p-kad-dht does). An invalid record gets no
  answer (the driver resets the stream) and a rejection reason.
* PING: answered with PING.
* GET_PROVIDERS: meshnode keeps no provider records, so the answer holds only
  ``closerPeers``; ADD_PROVIDER is refused.

The requester is never listed in ``closerPeers`` (it knows itself). The handler never
raises on remote input: every outcome is a :class:`Handled`. Time is an input (seconds,
see :class:`node.dht.record_store.RecordStore`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.dht.keys import kad_key
from node.dht.messages import Message, MessageType, PeerInfo
from node.dht.record_store import RecordInvalid, RecordStore
from node.dht.routing_table import RoutingTable

__all__ = ["Handled", "handle_request"]


@dataclass(frozen=True, slots=True)
class Handled:
    """Result of :func:`handle_request`: ``response`` to send (None: send nothing and
    reset the stream) and ``rejected``, a short reason when the request was refused
    (for drop counters and the sender's reputation), else None."""

    response: Message | None
    rejected: str | None = None


def _closer(table: RoutingTable, key: bytes, requester: bytes,
            skip: Callable[[bytes], bool] | None) -> tuple[PeerInfo, ...]:
    contacts = table.closest(kad_key(key), table.k, exclude=(requester,), skip_stale=skip)
    return tuple(c.peer_info() for c in contacts)


def _find_node(msg: Message, table: RoutingTable, local: PeerInfo, requester: bytes,
               skip: Callable[[bytes], bool] | None) -> Message:
    peers = _closer(table, msg.key, requester, skip)
    if msg.key != requester and all(p.peer_id != msg.key for p in peers):
        if msg.key == local.peer_id:
            peers = (local, *peers)
        elif (exact := table.get(msg.key)) is not None:
            peers = (exact.peer_info(), *peers)
    return Message(MessageType.FIND_NODE, key=msg.key, closer_peers=peers)


def _put_value(msg: Message, store: RecordStore, now: float) -> Handled:
    record = msg.record
    if record is None:
        return Handled(None, "put_value without record")
    if record.key != msg.key:
        return Handled(None, "put_value record key differs from message key")
    try:
        store.put(record.key, record.value, now=now)
    except RecordInvalid as exc:
        return Handled(None, f"invalid record: {exc}")
    return Handled(msg)


def handle_request(
    msg: Message,
    *,
    requester: bytes,
    table: RoutingTable,
    store: RecordStore,
    local: PeerInfo,
    now: float,
    skip: Callable[[bytes], bool] | None = None,
) -> Handled:
    """Answer ``msg`` from ``requester`` (binary PeerId), using the routing ``table``
    and record ``store``; ``local`` is this node's own PeerInfo (PeerId and listen
    multiaddrs), ``now`` seconds on the store's clock; stale contacts (requests to them
    failed) for which ``skip(peer_id)`` is true (e.g. in failure backoff) are not
    listed in ``closerPeers``. Does not update the routing table: the driver records the
    requester (if it is a DHT server) itself."""
    kind = msg.type
    if kind is MessageType.FIND_NODE:
        if not msg.key:
            return Handled(None, "find_node without key")
        return Handled(_find_node(msg, table, local, requester, skip))
    if kind is MessageType.GET_VALUE:
        if not msg.key:
            return Handled(None, "get_value without key")
        stored = store.get(msg.key, now=now)
        return Handled(
            Message(
                MessageType.GET_VALUE,
                key=msg.key,
                record=None if stored is None else stored.to_record(msg.key),
                closer_peers=_closer(table, msg.key, requester, skip),
            )
        )
    if kind is MessageType.PUT_VALUE:
        return _put_value(msg, store, now)
    if kind is MessageType.PING:
        return Handled(Message(MessageType.PING))
    if kind is MessageType.GET_PROVIDERS:
        if not msg.key:
            return Handled(None, "get_providers without key")
        return Handled(
            Message(
                MessageType.GET_PROVIDERS,
                key=msg.key,
                closer_peers=_closer(table, msg.key, requester, skip),
            )
        )
    return Handled(None, "add_provider is not supported")
