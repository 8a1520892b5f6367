"""kad-dht wire codec: round trips, interop with py-libp2p's protobuf, golden bytes, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.kad_dht.pb import kademlia_pb2 as pb

from node.dht.messages import ConnectionType, Message, MessageType, PeerInfo, Record
from node.dht.wire import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    FrameDecoder,
    WireError,
    decode_frame,
    decode_message,
    decode_uvarint,
    encode_frame,
    encode_message,
    encode_uvarint,
)

# -- strategies -------------------------------------------------------------------------

small_bytes = st.binary(max_size=48)
peers = st.builds(
    PeerInfo,
    peer_id=small_bytes,
    addrs=st.lists(small_bytes, max_size=3).map(tuple),
    connection=st.sampled_from(ConnectionType),
)
records = st.builds(Record, key=small_bytes, value=st.binary(max_size=200),
                    time_received=st.text(max_size=40))
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    key=small_bytes,
    record=st.none() | records,
    closer_peers=st.lists(peers, max_size=5).map(tuple),
    provider_peers=st.lists(peers, max_size=3).map(tuple),
    cluster_level_raw=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)


def to_pb(msg: Message) -> pb.Message:
    out = pb.Message()
    out.type = int(msg.type)
    out.key = msg.key
    out.clusterLevelRaw = msg.cluster_level_raw
    if msg.record is not None:
        out.record.SetInParent()
        out.record.key = msg.record.key
        out.record.value = msg.record.value
        out.record.timeReceived = msg.record.time_received
    for src, dst in ((msg.closer_peers, out.closerPeers), (msg.provider_peers, out.providerPeers)):
        for peer in src:
            p = dst.add()
            p.id = peer.peer_id
            p.addrs.extend(peer.addrs)
            p.connection = int(peer.connection)
    return out


def from_pb(m: pb.Message) -> Message:
    def peer(p: pb.Message.Peer) -> PeerInfo:
        return PeerInfo(p.id, tuple(p.addrs), ConnectionType(p.connection))

    record = None
    if m.HasField("record"):
        record = Record(m.record.key, m.record.value, m.record.timeReceived)
    return Message(
        MessageType(m.type), m.key, record,
        tuple(peer(p) for p in m.closerPeers), tuple(peer(p) for p in m.providerPeers),
        m.clusterLevelRaw,
    )


# -- round trips and interop ------------------------------------------------------------


@given(messages)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg
    decoded, used = decode_frame(encode_frame(msg))
    assert decoded == msg and used == len(encode_frame(msg))


@given(messages)
def test_bytes_equal_protobuf_serialisation(msg: Message) -> None:
    assert encode_message(msg) == to_pb(msg).SerializeToString()


@given(messages)
def test_protobuf_decodes_ours_and_we_decode_protobuf(msg: Message) -> None:
    parsed = pb.Message()
    parsed.ParseFromString(encode_message(msg))
    assert from_pb(parsed) == msg
    assert decode_message(to_pb(msg).SerializeToString()) == msg


def test_py_libp2p_extension_fields_are_skipped() -> None:
    m = pb.Message(type=pb.Message.FIND_NODE, key=b"k", senderRecord=b"env")
    p = m.closerPeers.add(id=b"peer", signedRecord=b"sig")
    p.addrs.append(b"\x04\x7f\x00\x00\x01")
    m.record.author = b"a"
    m.record.signature = b"s"
    msg = decode_message(m.SerializeToString())
    assert msg.closer_peers == (PeerInfo(b"peer", (b"\x04\x7f\x00\x00\x01",)),)
    assert msg.record == Record(b"", b"", "")


def test_repeated_record_fields_merge_like_protobuf() -> None:
    a = pb.Message(type=pb.Message.GET_VALUE)
    a.record.key = b"k1"
    a.record.value = b"v1"
    b = pb.Message()
    b.record.value = b"v2"
    data = a.SerializeToString() + b.SerializeToString()
    merged = pb.Message()
    merged.ParseFromString(data)
    assert decode_message(data) == from_pb(merged)


def test_golden_find_node_request() -> None:
    # FIND_NODE for a 38-byte Ed25519 PeerId, derived by hand from the spec's proto:
    # field 1 varint 4 -> 08 04; field 2 bytes len 38 -> 12 26 <id>; uvarint prefix 0x2a.
    peer_id = bytes.fromhex("002408011220") + bytes(range(32))
    golden = bytes.fromhex("2a08041226") + peer_id
    assert encode_frame(Message(MessageType.FIND_NODE, key=peer_id)) == golden
    assert decode_frame(golden) == (Message(MessageType.FIND_NODE, key=peer_id), len(golden))
    assert PROTOCOL_ID == "/ipfs/kad/1.0.0"


def test_golden_put_value_default_type_is_omitted() -> None:
    # PUT_VALUE is enum value 0: proto3 omits it, so the message starts with the key.
    msg = Message(MessageType.PUT_VALUE, key=b"/pk/x", record=Record(b"/pk/x", b"v"))
    expected = bytes.fromhex("1205") + b"/pk/x" + bytes.fromhex("1a0a0a05") + b"/pk/x" + \
        bytes.fromhex("120176")
    assert encode_message(msg) == expected


def test_unknown_connection_type_reads_as_not_connected() -> None:
    m = pb.Message(type=pb.Message.FIND_NODE)
    p = m.closerPeers.add(id=b"p")
    p.connection = 7  # open enum in proto3
    assert decode_message(m.SerializeToString()).closer_peers[0].connection == 0


# -- malformed input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x08\x09", "unknown message type"),
        (b"\x12\x05ab", "runs past the end"),
        (b"\x08", "truncated varint"),
        (b"\x0b", "wire type 3"),
        (b"\x12\x00\x0a", "truncated"),
        (b"\x10\x01", "wire type"),  # key (field 2) sent as a varint
        (b"\x08" + b"\xff" * 10 + b"\x01", "10 bytes"),
        (b"\x00\x01", "field number 0"),
        (b"\x1a\x03\x2a\x01\xff", "UTF-8"),
    ],
)
def test_malformed_messages_raise_wire_error(data: bytes, reason: str) -> None:
    with pytest.raises(WireError):
        decode_message(data)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        decode_message(data)
    except WireError:
        pass
    try:
        FrameDecoder(max_size=200).feed(data)
    except WireError:
        pass


@settings(max_examples=300)
@given(messages, st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255))
def test_mutated_messages_raise_only_wire_error(msg: Message, pos: int, byte: int) -> None:
    data = bytearray(encode_message(msg))
    if data:
        data[pos % len(data)] = byte
    try:
        decode_message(bytes(data))
    except WireError:
        pass


# -- varints and framing ----------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_uvarint_round_trip(value: int) -> None:
    enc = encode_uvarint(value)
    assert decode_uvarint(enc) == (value, len(enc))
    assert decode_uvarint(enc[:-1]) is None


def test_uvarint_rejects_non_minimal_and_long() -> None:
    with pytest.raises(WireError):
        decode_uvarint(b"\x80\x00")
    with pytest.raises(WireError):
        decode_uvarint(b"\xff" * 9 + b"\x01")
    with pytest.raises(WireError):
        encode_uvarint(-1)


@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_frame_decoder_any_chunking(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out: list[Message] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[prev:cut]))
        prev = cut
    assert out == msgs
    assert decoder.buffered == 0


def test_frame_decoder_refuses_oversized_length_before_body() -> None:
    decoder = FrameDecoder(max_size=100)
    with pytest.raises(WireError, match="exceeds"):
        decoder.feed(encode_uvarint(101))
    with pytest.raises(WireError, match="already failed"):
        decoder.feed(encode_frame(Message(MessageType.PING)))


def test_frame_decoder_default_limit_is_4_mib() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_uvarint(MAX_MESSAGE_SIZE)) == []
    with pytest.raises(WireError):
        FrameDecoder().feed(encode_uvarint(MAX_MESSAGE_SIZE + 1))


def test_encode_refuses_oversized_message() -> None:
    big = Message(MessageType.PUT_VALUE, key=b"k", record=Record(b"k", bytes(MAX_MESSAGE_SIZE)))
    with pytest.raises(WireError):
        encode_message(big)


def test_decode_frame_incomplete() -> None:
    frame = encode_frame(Message(MessageType.PING))
    with pytest.raises(WireError):
        decode_frame(frame[:-1] if len(frame) > 1 else b"")
    with pytest.raises(WireError):
        decode_frame(b"")
