"""The Signer protocol and pure Ed25519 verification.

A :class:`Signer` holds one Ed25519 private key somewhere (a PKCS#11 token for nodes,
process memory for the simulator) and exposes only the public key and a ``sign`` call.
Verification needs no secret, so it is a pure function here (PyNaCl / libsodium,
RFC 8032 section 5.1.7, strict: non-canonical encodings and small-order keys refused).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import nacl.exceptions
import nacl.signing

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Signer",
    "SignerError",
    "verify_signature",
]

#: Length of a raw Ed25519 public key, bytes (RFC 8032 section 5.1.5).
PUBLIC_KEY_BYTES = 32
#: Length of an Ed25519 signature, bytes (RFC 8032 section 5.1.6).
SIGNATURE_BYTES = 64


class SignerError(RuntimeError):
    """The signer cannot sign: module, token, key or PIN missing or wrong (fail closed)."""


@runtime_checkable
class Signer(Protocol):
    """Something that signs with one Ed25519 key it never reveals."""

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature over ``data`` (RFC 8032 PureEdDSA).

        Raises :class:`SignerError` when the key cannot be used.
        """
        ...


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` (64 bytes) is a valid Ed25519 signature by ``public_key``
    (32 bytes) over ``data``. Never raises on bad input: wrong lengths, a key that is not
    a curve point, or a forged signature all return False.
    """
    if (
        not isinstance(public_key, bytes)
        or not isinstance(signature, bytes)
        or not isinstance(data, (bytes, bytearray, memoryview))
        or len(public_key) != PUBLIC_KEY_BYTES
        or len(signature) != SIGNATURE_BYTES
    ):
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(bytes(data), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True
