"""Request handler per message type, record store and validators."""

from __future__ import annotations

import random

import pytest

from identity.did import peer_id_bytes_from_public_key
from node.dht.handler import handle_request
from node.dht.keys import kad_key, xor_distance
from node.dht.messages import Message, MessageType, PeerInfo, Record
from node.dht.record_store import (
    IDENTITY_NAMESPACE,
    NamespacedValidator,
    PublicKeyValidator,
    RecordInvalid,
    RecordStore,
    identity_record_key,
    rfc3339,
    split_key,
)
from node.dht.routing_table import K, RoutingTable
from node.dht.wire import decode_message, encode_message

LOCAL = PeerInfo(b"local-peer", (b"\x04\x7f\x00\x00\x01\x06\x0f\xa1",))


class SeqValidator:
    """Values b"<seq>:<payload>"; the highest seq wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.split(b":")[0].isdigit():
            raise RecordInvalid("no sequence number")

    def select(self, key: bytes, values) -> int:
        return max(range(len(values)), key=lambda i: (int(values[i].split(b":")[0]), -i))


def pid(n: int) -> bytes:
    return b"peer-" + n.to_bytes(4, "big")


def setup(n: int = 100) -> tuple[RoutingTable, RecordStore]:
    table = RoutingTable(LOCAL.peer_id, rng=random.Random(1))
    for i in range(n):
        table.update(pid(i), [b"addr-%d" % i], now=0.0)
    validator = NamespacedValidator({"test": SeqValidator(), "pk": PublicKeyValidator()})
    return table, RecordStore(validator, max_records=3, max_age=100.0)


def handle(msg: Message, table, store, requester: bytes = b"requester", now: float = 10.0):
    # every request and response goes through the real codec
    result = handle_request(
        decode_message(encode_message(msg)),
        requester=requester, table=table, store=store, local=LOCAL, now=now,
    )
    if result.response is not None:
        assert decode_message(encode_message(result.response)) == result.response
    return result


def test_find_node_returns_k_closest_excluding_requester() -> None:
    table, store = setup()
    target = b"somebody-else"
    res = handle(Message(MessageType.FIND_NODE, key=target), table, store, requester=pid(3))
    ids = [p.peer_id for p in res.response.closer_peers]
    others = [c.peer_id for c in table.contacts() if c.peer_id != pid(3)]
    want = sorted(others, key=lambda p: xor_distance(kad_key(p), kad_key(target)))[:K]
    assert ids == want and res.rejected is None
    assert res.response.type is MessageType.FIND_NODE and res.response.key == target
    assert all(p.addrs for p in res.response.closer_peers)


def test_find_node_exact_match_and_self_are_included() -> None:
    table, store = setup()
    known = next(table.contacts()).peer_id
    res = handle(Message(MessageType.FIND_NODE, key=known), table, store)
    assert res.response.closer_peers[0].peer_id == known  # nearest to itself
    assert len(res.response.closer_peers) == K
    res = handle(Message(MessageType.FIND_NODE, key=LOCAL.peer_id), table, store)
    assert res.response.closer_peers[0] == LOCAL and len(res.response.closer_peers) == K + 1
    # never tell a peer about itself
    res = handle(Message(MessageType.FIND_NODE, key=known), table, store, requester=known)
    assert known not in [p.peer_id for p in res.response.closer_peers]


def test_put_then_get_value() -> None:
    table, store = setup()
    key = b"/test/thing"
    put = Message(MessageType.PUT_VALUE, key=key, record=Record(key, b"1:hello"))
    res = handle(put, table, store, now=5.0)
    assert res.response == put and res.rejected is None
    res = handle(Message(MessageType.GET_VALUE, key=key), table, store, now=6.0)
    assert res.response.record == Record(key, b"1:hello", rfc3339(5.0))
    assert len(res.response.closer_peers) == K
    # a worse value is not stored but is valid, so it is acknowledged
    handle(Message(MessageType.PUT_VALUE, key=key, record=Record(key, b"0:older")), table, store)
    assert store.get(key, now=7.0).value == b"1:hello"
    handle(Message(MessageType.PUT_VALUE, key=key, record=Record(key, b"2:newer")), table, store)
    assert store.get(key, now=7.0).value == b"2:newer"


def test_get_value_missing_returns_closer_peers_only() -> None:
    table, store = setup()
    res = handle(Message(MessageType.GET_VALUE, key=b"/test/none"), table, store)
    assert res.response.record is None and len(res.response.closer_peers) == K


@pytest.mark.parametrize(
    "msg, reason",
    [
        (Message(MessageType.PUT_VALUE, key=b"/test/a"), "without record"),
        (Message(MessageType.PUT_VALUE, key=b"/test/a", record=Record(b"/test/b", b"1:x")),
         "differs"),
        (Message(MessageType.PUT_VALUE, key=b"/test/a", record=Record(b"/test/a", b"x")),
         "invalid record"),
        (Message(MessageType.PUT_VALUE, key=b"/nope/a", record=Record(b"/nope/a", b"1:x")),
         "no validator"),
        (Message(MessageType.PUT_VALUE, key=b"flat", record=Record(b"flat", b"1:x")),
         "does not start"),
        (Message(MessageType.FIND_NODE), "without key"),
        (Message(MessageType.GET_VALUE), "without key"),
        (Message(MessageType.ADD_PROVIDER, key=b"cid"), "not supported"),
    ],
)
def test_rejections(msg: Message, reason: str) -> None:
    table, store = setup()
    res = handle(msg, table, store)
    assert res.response is None and reason in res.rejected
    assert len(store) == 0


def test_ping_and_get_providers() -> None:
    table, store = setup()
    assert handle(Message(MessageType.PING), table, store).response == Message(MessageType.PING)
    res = handle(Message(MessageType.GET_PROVIDERS, key=b"cid"), table, store)
    assert res.response.provider_peers == () and len(res.response.closer_peers) == K


def test_store_expiry_and_capacity() -> None:
    _, store = setup()
    for i in range(3):
        store.put(b"/test/%d" % i, b"1:v", now=0.0)
    with pytest.raises(RecordInvalid, match="full"):
        store.put(b"/test/new", b"1:v", now=50.0)
    store.put(b"/test/0", b"2:v", now=50.0)  # improving a held key is allowed
    assert store.put(b"/test/new", b"1:v", now=120.0)  # expired ones made room
    assert store.get(b"/test/1", now=120.0) is None
    assert store.keys() == [b"/test/0", b"/test/new"]
    with pytest.raises(RecordInvalid, match="too large"):
        store.put(b"/test/x", b"1:" + bytes(70_000), now=0.0)


def test_public_key_validator() -> None:
    pk_proto = b"\x08\x01\x12\x20" + bytes(range(32))
    peer_id = peer_id_bytes_from_public_key(bytes(range(32)))
    v = PublicKeyValidator()
    v.validate(b"/pk/" + peer_id, pk_proto)
    with pytest.raises(RecordInvalid):
        v.validate(b"/pk/" + peer_id, pk_proto[:-1] + b"\x00")
    big = bytes(100)
    import hashlib

    v.validate(b"/pk/\x12\x20" + hashlib.sha256(big).digest(), big)


def test_namespaces_and_identity_key() -> None:
    assert split_key(b"/meshnode-id/abc") == (IDENTITY_NAMESPACE, b"abc")
    assert identity_record_key(b"\x00\x24xyz") == b"/meshnode-id/\x00\x24xyz"
    for bad in (b"", b"noslash", b"/", b"//x", b"/ns", b"/\xff/x"):
        with pytest.raises(RecordInvalid):
            split_key(bad)
    v = NamespacedValidator({"test": SeqValidator()})
    assert v.namespaces() == ["test"]
    assert v.select(b"/test/k", [b"1:a", b"3:b", b"2:c"]) == 1
