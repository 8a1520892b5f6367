"""did:key and libp2p PeerId for Ed25519 public keys (pure).

* did:key (W3C CCG did-method-key, section "Ed25519"): ``did:key:z`` + base58btc of the
  unsigned-varint multicodec ``ed25519-pub`` (0xed, encoded ``ed 01``) followed by the
  32-byte raw public key. Such identifiers always start with ``did:key:z6Mk``.
* libp2p PeerId (libp2p/specs peer-ids/peer-ids.md): the deterministic protobuf
  ``PublicKey{Type: Ed25519 (1), Data: key}`` (36 bytes) is short enough (<= 42 bytes)
  to be inlined with the ``identity`` multihash (code 0x00, length 0x24), and the PeerId
  string is base58btc of that multihash, which always starts with ``12D3KooW``.

Both derive from the same key, so a node's DID and PeerId name the same HSM key.
"""

from __future__ import annotations

import base58

__all__ = [
    "DidError",
    "did_key_from_public_key",
    "peer_id_bytes_from_public_key",
    "peer_id_from_public_key",
    "public_key_from_did_key",
    "public_key_from_peer_id",
]

_ED25519_MULTICODEC = b"\xed\x01"
_DID_KEY_PREFIX = "did:key:z"
# protobuf PublicKey: field 1 (KeyType) varint = 1 (Ed25519); field 2 (Data) bytes, len 32
_PB_ED25519_PREFIX = b"\x08\x01\x12\x20"
# identity multihash: code 0x00, digest length 36
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


class DidError(ValueError):
    """A did:key or PeerId string that is malformed or not an Ed25519 key."""


def _check_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise DidError("an Ed25519 public key is 32 bytes")


def did_key_from_public_key(public_key: bytes) -> str:
    """``did:key:z6Mk...`` for a 32-byte Ed25519 public key. Raises DidError on bad length."""
    _check_key(public_key)
    return _DID_KEY_PREFIX + base58.b58encode(_ED25519_MULTICODEC + public_key).decode("ascii")


def public_key_from_did_key(did: str) -> bytes:
    """The 32-byte Ed25519 public key named by ``did`` (a did:key, optionally with the
    fragment naming its Ed25519 verification method, ``did:key:z6Mk...#z6Mk...``).
    Raises DidError when it is not a canonical base58btc Ed25519 did:key (surrounding
    whitespace and any other fragment, such as the X25519 ``#z6LS...`` key, are refused).
    """
    if not isinstance(did, str) or not did.startswith(_DID_KEY_PREFIX):
        raise DidError(f"not a base58btc did:key: {did!r:.80}")
    body, hash_sign, fragment = did[len(_DID_KEY_PREFIX):].partition("#")
    if hash_sign and fragment != "z" + body:
        raise DidError("did:key fragment does not name its Ed25519 verification method")
    try:
        raw = base58.b58decode(body)
    except ValueError as exc:
        raise DidError(f"did:key is not valid base58btc: {exc}") from None
    # base58.b58decode strips surrounding whitespace: insist on the one canonical spelling
    if not body or base58.b58encode(raw).decode("ascii") != body:
        raise DidError("did:key is not canonical base58btc")
    if not raw.startswith(_ED25519_MULTICODEC):
        raise DidError("did:key multicodec is not ed25519-pub (0xed)")
    key = raw[len(_ED25519_MULTICODEC):]
    if len(key) != 32:
        raise DidError(f"did:key holds {len(key)} key bytes, Ed25519 needs 32")
    return key


def peer_id_bytes_from_public_key(public_key: bytes) -> bytes:
    """The 38-byte binary PeerId (identity multihash) of an Ed25519 public key."""
    _check_key(public_key)
    return _IDENTITY_MULTIHASH_PREFIX + _PB_ED25519_PREFIX + public_key


def peer_id_from_public_key(public_key: bytes) -> str:
    """The base58btc PeerId string (``12D3KooW...``) of a 32-byte Ed25519 public key."""
    return base58.b58encode(peer_id_bytes_from_public_key(public_key)).decode("ascii")


def public_key_from_peer_id(peer_id: str | bytes) -> bytes:
    """The Ed25519 public key inlined in a PeerId (string or 38 raw bytes).

    Raises DidError when the PeerId is not an identity-multihash Ed25519 PeerId.
    """
    if isinstance(peer_id, str):
        try:
            raw = base58.b58decode(peer_id)
        except ValueError as exc:
            raise DidError(f"PeerId is not valid base58btc: {exc}") from None
        if base58.b58encode(raw).decode("ascii") != peer_id:
            raise DidError("PeerId is not canonical base58btc")
    else:
        raw = bytes(peer_id)
    prefix = _IDENTITY_MULTIHASH_PREFIX + _PB_ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise DidError("PeerId is not an inlined Ed25519 key (identity multihash)")
    return raw[len(prefix):]
