"""Shared pieces of the DHT tests that run real py-libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import multiaddr
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.records.validator import Validator as PyValidator

from node.dht.record_store import RecordInvalid
from node.transport.host import connection_config

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


class SeqValidator:
    """Our record validator for the test namespace: values are ``b"<seq>:<data>"`` and
    the highest sequence number wins. Raises ``RecordInvalid`` without a number."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.split(b":")[0].isdigit():
            raise RecordInvalid("no sequence number")

    def select(self, key: bytes, values) -> int:
        return max(range(len(values)), key=lambda i: int(values[i].split(b":")[0]))


class PySeqValidator(PyValidator):
    """The same rule for py-libp2p's KadDHT (str keys; RecordInvalid is a ValueError)."""

    def validate(self, key: str, value: bytes) -> None:
        SeqValidator().validate(key.encode(), value)

    def select(self, key: str, values: list[bytes]) -> int:
        return SeqValidator().select(key.encode(), values)


def make_host():
    """A py-libp2p host with a fresh Ed25519 identity and the node's connection config."""
    return new_host(key_pair=generate_new_ed25519_identity(), connection_config=connection_config())
