"""kad-dht wire codec: protobuf ``Message`` and uvarint length-prefixed framing (pure).

Spec: libp2p/specs kad-dht/README.md, "RPC messages": on protocol ID ``/ipfs/kad/1.0.0``
every RPC message is a protobuf ``Message`` (proto3) prefixed with its length in bytes
as a multiformats unsigned varint. This module is a small hand-written protobuf codec for
exactly that schema instead of importing ``libp2p.kad_dht.pb.kademlia_pb2``: importing
that module imports all of ``libp2p`` (~0.5 s, trio and socket), which the pure DHT core
and the simulator must not do. The tests check byte-for-byte agreement with
``kademlia_pb2`` in both directions.

Encoding follows proto3 serialisation as protoc does it: fields in field-number order,
default scalars omitted, ``record`` written whenever present. Decoding is strict about
structure and tolerant where protobuf requires it:

* unknown fields (any field number, wire types 0, 1, 2, 5) are skipped, so py-libp2p's
  extra ``senderRecord``/``signedRecord``/``author``/``signature`` fields are accepted;
* a repeated ``record`` field is merged as protobuf merges embedded messages;
* groups (wire types 3, 4), a known field with the wrong wire type, truncated data,
  varints over 10 bytes, invalid UTF-8 in ``timeReceived`` and unknown message types
  raise :class:`WireError`. An unknown ``ConnectionType`` (proto3 open enum) reads as
  ``NOT_CONNECTED`` (it is advisory).

:class:`WireError` is the only exception any decode function raises on bad input.
"""

from __future__ import annotations

from functools import lru_cache

from node.dht.messages import ConnectionType, Message, MessageType, PeerInfo, Record

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_ID",
    "FrameDecoder",
    "WireError",
    "decode_frame",
    "decode_message",
    "decode_uvarint",
    "encode_frame",
    "encode_message",
    "encode_uvarint",
]

#: libp2p protocol ID of the kad-dht (libp2p/specs kad-dht).
PROTOCOL_ID = "/ipfs/kad/1.0.0"
#: Largest message accepted or sent, bytes (go-libp2p network.MessageSizeMax = 4 MiB).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_MAX_UVARINT_BYTES = 9  # multiformats unsigned-varint: at most 63 bits in 9 bytes
_U64 = (1 << 64) - 1
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


_SMALL = [bytes((i,)) for i in range(0x80)]


class WireError(ValueError):
    """Malformed, oversized or unsupported kad-dht bytes."""


# -- varints -----------------------------------------------------------------------------


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128 varint of ``0 <= value < 2**64``. Raises WireError otherwise."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if not 0 <= value <= _U64:
        raise WireError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Protobuf varint at ``pos`` (at most 10 bytes, value < 2**64): (value, new pos)."""
    if pos < end and data[pos] < 0x80:  # fast path: one-byte varint
        return data[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")
    if result > _U64:
        raise WireError("varint exceeds 64 bits")
    return result, pos


def decode_uvarint(data: bytes, pos: int = 0) -> tuple[int, int] | None:
    """Multiformats unsigned varint at ``data[pos:]``: (value, bytes used), or None when
    more bytes are needed. Raises WireError for non-minimal or over-9-byte encodings."""
    result = shift = 0
    for i in range(pos, min(len(data), pos + _MAX_UVARINT_BYTES)):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > pos:
                raise WireError("non-minimal uvarint")
            return result, i + 1 - pos
        shift += 7
    if len(data) - pos >= _MAX_UVARINT_BYTES:
        raise WireError("uvarint longer than 9 bytes")
    return None


# -- encoding ----------------------------------------------------------------------------


def _bytes_field(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    return tag + (_SMALL[n] if n < 0x80 else encode_uvarint(n)) + value


def _int32_field(tag: bytes, value: int) -> bytes:
    if not -(1 << 31) <= value < (1 << 31):
        raise WireError(f"int32 out of range: {value}")
    return tag + encode_uvarint(value & _U64)


@lru_cache(maxsize=1 << 14)
def _encode_peer(peer: PeerInfo) -> bytes:
    # Memoised: responses list the same routing-table contacts over and over.
    parts = [_bytes_field(b"\x0a", peer.peer_id)] if peer.peer_id else []
    parts.extend(_bytes_field(b"\x12", addr) for addr in peer.addrs)
    if peer.connection:
        parts.append(_int32_field(b"\x18", int(peer.connection)))
    return b"".join(parts)


def _closer_field(peer: PeerInfo) -> bytes:
    # The framed closerPeers entry, memoised on the (immutable) PeerInfo itself: a
    # routing-table contact is listed in many answers, and hashing a PeerInfo for a
    # cache lookup costs more than this attribute read.
    memo = peer.wire_memo
    if memo is None:
        memo = _bytes_field(b"\x42", _encode_peer(peer))
        object.__setattr__(peer, "wire_memo", memo)
    return memo


def _encode_record(record: Record) -> bytes:
    parts = []
    if record.key:
        parts.append(_bytes_field(b"\x0a", record.key))
    if record.value:
        parts.append(_bytes_field(b"\x12", record.value))
    if record.time_received:
        parts.append(_bytes_field(b"\x2a", record.time_received.encode("utf-8")))
    return b"".join(parts)


def encode_message(msg: Message) -> bytes:
    """Protobuf bytes of ``msg`` (no length prefix). Raises WireError when the result
    exceeds :data:`MAX_MESSAGE_SIZE` or an int32 field is out of range."""
    parts = []
    if msg.type:
        parts.append(_int32_field(b"\x08", int(msg.type)))
    if msg.key:
        parts.append(_bytes_field(b"\x12", msg.key))
    if msg.record is not None:
        parts.append(_bytes_field(b"\x1a", _encode_record(msg.record)))
    parts.extend(_closer_field(p) for p in msg.closer_peers)
    parts.extend(_bytes_field(b"\x4a", _encode_peer(p)) for p in msg.provider_peers)
    if msg.cluster_level_raw:
        parts.append(_int32_field(b"\x50", msg.cluster_level_raw))
    out = b"".join(parts)
    if len(out) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(out)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return out


def encode_frame(msg: Message) -> bytes:
    """uvarint length prefix + protobuf bytes of ``msg``, as written on a stream."""
    payload = encode_message(msg)
    return encode_uvarint(len(payload)) + payload


# -- decoding ----------------------------------------------------------------------------
# Each decoder walks (tag, value) pairs itself; the tags of the known fields are matched
# as whole bytes (field << 3 | wire type). A known field number with another wire type
# is an error; anything else goes through _skip.

_MESSAGE_FIELDS = frozenset({1, 2, 3, 8, 9, 10})
_PEER_FIELDS = frozenset({1, 2, 3})
_RECORD_FIELDS = frozenset({1, 2, 5})
_TYPES = {int(t): t for t in MessageType}
_CONNECTIONS = {int(c): c for c in ConnectionType}


def _span(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length-delimited value at ``pos``: (start, end) of its bytes."""
    length, pos = _read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise WireError("length-delimited field runs past the end")
    return pos, stop


def _skip(data: bytes, tag: int, pos: int, end: int, known: frozenset[int]) -> int:
    field, wire_type = tag >> 3, tag & 7
    if field == 0 or field > 0x1FFFFFFF:
        raise WireError(f"invalid field number {field}")
    if field in known:
        raise WireError(f"field {field} has unexpected wire type {wire_type}")
    if wire_type == _VARINT:
        return _read_varint(data, pos, end)[1]
    if wire_type == _LEN:
        return _span(data, pos, end)[1]
    if wire_type in (_I64, _I32):
        pos += 8 if wire_type == _I64 else 4
        if pos > end:
            raise WireError("truncated fixed-width field")
        return pos
    raise WireError(f"unsupported wire type {wire_type} (groups are not accepted)")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _decode_peer(data: bytes, pos: int, end: int) -> PeerInfo:
    peer_id = b""
    addrs: list[bytes] = []
    connection = 0
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        if tag == 0x0A or tag == 0x12:
            start, pos = _span(data, pos, end)
            if tag == 0x0A:
                peer_id = data[start:pos]
            else:
                addrs.append(data[start:pos])
        elif tag == 0x18:
            connection, pos = _read_varint(data, pos, end)
        else:
            pos = _skip(data, tag, pos, end, _PEER_FIELDS)
    conn = _CONNECTIONS.get(_int32(connection), ConnectionType.NOT_CONNECTED)
    return PeerInfo(peer_id, tuple(addrs), conn)


@lru_cache(maxsize=1 << 14)
def _peer_from_bytes(data: bytes) -> PeerInfo:
    # Memoised (PeerInfo is immutable): the same contacts arrive in many responses.
    return _decode_peer(data, 0, len(data))


def _decode_record(data: bytes) -> Record:
    key = value = time_raw = b""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        if tag in (0x0A, 0x12, 0x2A):
            start, pos = _span(data, pos, end)
            if tag == 0x0A:
                key = data[start:pos]
            elif tag == 0x12:
                value = data[start:pos]
            else:
                time_raw = data[start:pos]
        else:
            pos = _skip(data, tag, pos, end, _RECORD_FIELDS)
    try:
        return Record(key, value, time_raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError("Record.timeReceived is not UTF-8") from None


def decode_message(data: bytes) -> Message:
    """Decode protobuf bytes (no length prefix) into a :class:`Message`.
    Raises WireError (only) for anything malformed, oversized or of unknown type."""
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    msg_type = cluster = 0
    key = b""
    record_chunks: list[bytes] = []
    closer: list[PeerInfo] = []
    providers: list[PeerInfo] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0x42 and pos + 1 < end and data[pos + 1] < 0x80:
            # fast path for the bulk of a response: a closerPeers entry under 128 bytes
            start = pos + 2
            pos = start + data[pos + 1]
            if pos > end:
                raise WireError("length-delimited field runs past the end")
            closer.append(_peer_from_bytes(data[start:pos]))
            continue
        tag, pos = _read_varint(data, pos, end)
        if tag == 0x42 or tag == 0x4A:
            start, pos = _span(data, pos, end)
            (closer if tag == 0x42 else providers).append(_peer_from_bytes(data[start:pos]))
        elif tag == 0x12 or tag == 0x1A:
            start, pos = _span(data, pos, end)
            if tag == 0x12:
                key = data[start:pos]
            else:
                record_chunks.append(data[start:pos])
        elif tag == 0x08:
            msg_type, pos = _read_varint(data, pos, end)
        elif tag == 0x50:
            cluster, pos = _read_varint(data, pos, end)
        else:
            pos = _skip(data, tag, pos, end, _MESSAGE_FIELDS)
    kind = _TYPES.get(_int32(msg_type))
    if kind is None:
        raise WireError(f"unknown message type {_int32(msg_type)}")
    # a repeated embedded message merges (protobuf): parse the concatenation once
    record = _decode_record(b"".join(record_chunks)) if record_chunks else None
    return Message(kind, key, record, tuple(closer), tuple(providers), _int32(cluster))


def decode_frame(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> tuple[Message, int]:
    """Decode one length-prefixed message at the start of ``data``: (message, bytes
    used). Raises WireError when malformed, over ``max_size`` or incomplete."""
    header = decode_uvarint(data)
    if header is None:
        raise WireError("incomplete length prefix")
    length, used = header
    if length > max_size:
        raise WireError(f"frame of {length} bytes exceeds {max_size}")
    if len(data) - used < length:
        raise WireError("incomplete frame")
    return decode_message(data[used:used + length]), used + length


class FrameDecoder:
    """Incremental decoder for one kad-dht stream: feed arbitrary chunks, get messages.

    The stream has no resynchronisation point, so after the first error (oversized
    length, malformed message) the decoder stays broken: every later :meth:`feed`
    raises WireError too, and the driver resets the stream (as go-libp2p-kad-dht does).
    A declared length over ``max_size`` is refused before any of its body is buffered.
    """

    def __init__(self, *, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Message]:
        """Add ``chunk``; return every message now complete. Raises WireError."""
        if self._error is not None:
            raise WireError(f"stream already failed: {self._error}")
        self._buffer += chunk
        out: list[Message] = []
        try:
            while True:
                header = decode_uvarint(self._buffer)
                if header is None:
                    break
                length, used = header
                if length > self.max_size:
                    raise WireError(f"frame of {length} bytes exceeds {self.max_size}")
                if len(self._buffer) - used < length:
                    break
                payload = bytes(self._buffer[used:used + length])
                del self._buffer[:used + length]
                out.append(decode_message(payload))
        except WireError as exc:
            self._error = str(exc)
            self._buffer.clear()
            raise
        return out
