"""kad-dht RPC message types (pure dataclasses mirroring the wire protobuf).

These mirror ``Message``, ``Message.Peer`` and ``Record`` of libp2p/specs
kad-dht/README.md ("RPC messages") field for field; :mod:`node.dht.wire` turns them into
and out of protobuf bytes. All are frozen and hashable; sequences are tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["ConnectionType", "Message", "MessageType", "PeerInfo", "Record"]


class MessageType(IntEnum):
    """``Message.MessageType`` (field 1)."""

    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(IntEnum):
    """``Message.ConnectionType``: the sender's connectivity to a listed peer."""

    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """``Message.Peer``: ``peer_id`` is a binary PeerId (multihash, 38 bytes for
    Ed25519), ``addrs`` binary multiaddrs, ``connection`` the sender's view.
    ``wire_memo`` is :mod:`node.dht.wire`'s cache of this peer's encoding (not part of
    the value: ignored by ``==``, ``hash`` and ``repr``)."""

    peer_id: bytes
    addrs: tuple[bytes, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED
    wire_memo: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Record:
    """``Record``: ``key`` and ``value`` are opaque bytes; ``time_received`` is an
    RFC 3339 string set by the receiver (empty when unset)."""

    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """``Message``: one kad-dht request or response.

    ``key``: FIND_NODE target (binary PeerId) or record key; ``record``: GET_VALUE
    answer or PUT_VALUE payload (None when absent); ``closer_peers`` and
    ``provider_peers`` as on the wire; ``cluster_level_raw`` is unused by the spec and
    carried only for round trips (int32)."""

    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[PeerInfo, ...] = ()
    provider_peers: tuple[PeerInfo, ...] = ()
    cluster_level_raw: int = 0
