"""Kademlia key space: 256-bit keys, XOR distance, common prefix length (pure).

libp2p/specs kad-dht/README.md, "Distance": the distance between two keys is
``XOR(sha256(key1), sha256(key2))``. A *Kademlia key* here is always the 32-byte
sha256 digest (of a binary PeerId for peers, of the record key for records); a
*distance* is that XOR read as a big-endian unsigned integer in ``[0, 2**256)``.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "KEY_BITS",
    "KEY_BYTES",
    "common_prefix_length",
    "kad_key",
    "key_to_int",
    "xor_distance",
]

#: Bits in a Kademlia key (sha256).
KEY_BITS = 256
#: Bytes in a Kademlia key.
KEY_BYTES = 32


def kad_key(data: bytes) -> bytes:
    """The 32-byte Kademlia key of ``data`` (a binary PeerId or a record key): sha256."""
    return hashlib.sha256(data).digest()


def key_to_int(key: bytes) -> int:
    """A 32-byte Kademlia key as a big-endian integer. Raises ValueError on bad length."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a Kademlia key is {KEY_BYTES} bytes, got {len(key)}")
    return int.from_bytes(key, "big")


def xor_distance(a: bytes, b: bytes) -> int:
    """XOR distance of two 32-byte keys, as an integer in ``[0, 2**256)``."""
    return key_to_int(a) ^ key_to_int(b)


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Number of leading bits two 32-byte keys share, 0..256 (256 when equal)."""
    return KEY_BITS - xor_distance(a, b).bit_length()
