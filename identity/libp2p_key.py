"""A py-libp2p private key whose signatures come from a :class:`~identity.signer.Signer`
(the HSM), so a libp2p host's identity, PeerId and Noise handshakes use the HSM key.

How py-libp2p 0.8.1 uses the host key pair (every call site in ``site-packages/libp2p``
checked): ``new_swarm`` derives the PeerId from ``key_pair.public_key`` and stores the
pair in the in-memory peerstore (``add_privkey`` only calls ``get_public_key``); the Noise
XX handshake signs ``"noise-libp2p-static-key:" + X25519 static key`` with
``private_key.sign`` and sends ``get_public_key().serialize()``; identify's signed peer
record, pubsub message signing, kad-dht signed records, relay vouchers, TLS/QUIC/WebRTC
certificate extensions and secio also only call ``sign``/``get_public_key``.

Only these need the raw private key and therefore raise :class:`HsmKeyExportError`
with this key: ``to_bytes()``/``serialize()``, used by the *persistent* peerstores
(``libp2p.peer.persistent``), ``identity_utils.save_identity``, the
``FileSystemKeyStore`` and ``libp2p.save_keypair`` (which also asserts an
``Ed25519PrivateKey``). Use the default in-memory peerstore and pass the key pair
explicitly (``new_host(key_pair=hsm_key_pair(signer))``).

``sign`` is synchronous and runs on the trio thread during a handshake: one HSM
signature (~0.3 ms on SoftHSM) per connection, plus any wait for the process-wide
PKCS#11 lock.
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import KeyPair, KeyType, PrivateKey
from libp2p.crypto.x25519 import create_new_key_pair as _new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from identity.signer import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Signer, SignerError

__all__ = [
    "HsmKeyExportError",
    "HsmPrivateKey",
    "hsm_key_pair",
    "noise_only_security",
]


class HsmKeyExportError(SignerError):
    """The libp2p private key lives in the HSM and cannot be exported or serialised."""


class HsmPrivateKey(PrivateKey):
    """libp2p Ed25519 private key backed by a :class:`~identity.signer.Signer`.

    ``sign(data)`` returns the signer's 64-byte RFC 8032 Ed25519 signature (libp2p
    Ed25519 keys sign the message itself, no prehash); ``get_public_key()`` is the
    libp2p ``Ed25519PublicKey`` of the signer's 32-byte key. Raises ``ValueError`` when
    the signer's public key is not 32 bytes.
    """

    def __init__(self, signer: Signer) -> None:
        public = signer.public_key
        if not isinstance(public, bytes) or len(public) != PUBLIC_KEY_BYTES:
            raise ValueError("an Ed25519 signer's public key is 32 bytes")
        self._signer = signer
        self._public = Ed25519PublicKey.from_bytes(public)

    @property
    def signer(self) -> Signer:
        """The signer every signature goes to."""
        return self._signer

    def get_type(self) -> KeyType:
        return KeyType.Ed25519

    def get_public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``data``, made by the signer (the HSM).

        Raises :class:`~identity.signer.SignerError` (e.g. ``Pkcs11Error``) when the
        HSM refuses; libp2p then aborts the handshake.
        """
        signature = self._signer.sign(bytes(data))
        if len(signature) != SIGNATURE_BYTES:
            raise SignerError(f"signer returned {len(signature)} bytes, expected 64")
        return signature

    def to_bytes(self) -> bytes:
        """Always raises :class:`HsmKeyExportError`: the key never leaves the HSM."""
        raise HsmKeyExportError(
            "the libp2p private key lives in the HSM and cannot be exported; "
            "use an in-memory peerstore and pass key_pair= explicitly"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HsmPrivateKey):
            return NotImplemented
        return self._public.to_bytes() == other._public.to_bytes()

    def __hash__(self) -> int:
        return hash((HsmPrivateKey, self._public.to_bytes()))

    def __repr__(self) -> str:
        return f"HsmPrivateKey(public_key={self._public.to_bytes().hex()[:16]}...)"


def hsm_key_pair(signer: Signer) -> KeyPair:
    """A libp2p ``KeyPair`` for ``new_host(key_pair=...)`` whose private half signs
    through ``signer`` and whose public half is the signer's Ed25519 key."""
    private = HsmPrivateKey(signer)
    return KeyPair(private, private.get_public_key())


def noise_only_security(key_pair: KeyPair) -> dict[TProtocol, NoiseTransport]:
    """``sec_opt`` for ``new_host``: Noise only (``/noise``, XX handshake, a fresh X25519
    static key), so a peer cannot downgrade the connection to plaintext, TLS or secio."""
    static = _new_x25519_key_pair().private_key
    return {TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(key_pair, noise_privkey=static)}
