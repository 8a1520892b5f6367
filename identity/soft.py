"""In-process Ed25519 signer (PyNaCl). For the simulator and tests only.

Nodes sign through :mod:`identity.pkcs11`; the key here lives in process memory, which
is exactly what a node must never do. The simulator uses it because it runs thousands of
identities in one process and must replay from a seed.
"""

from __future__ import annotations

import nacl.signing

__all__ = ["SoftSigner"]


class SoftSigner:
    """An Ed25519 key in memory, implementing :class:`identity.signer.Signer`.

    ``seed`` is the 32-byte RFC 8032 private key seed; pass one derived from the
    simulator's seeded RNG for determinism (``rng.randbytes(32)``). Raises ``ValueError``
    when the seed is not 32 bytes.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._key = nacl.signing.SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``data``."""
        return self._key.sign(bytes(data)).signature

    def __repr__(self) -> str:
        return f"SoftSigner(public_key={self._public.hex()[:16]}...)"
