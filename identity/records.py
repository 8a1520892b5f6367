"""Key event logs (KERI-style pre-rotation) and signed identity records (pure).

Theory of operation
-------------------
An identity is a *key event log* (KEL): a hash-chained list of signed key events, as in
KERI (WebOfTrust/keri, Smith, "Key Event Receipt Infrastructure", section "pre-rotation").

* ``icp`` (inception, sequence 0) names the current Ed25519 key ``k`` and commits to the
  *next* key by its digest ``n = sha256(next public key)``. The next key stays unused
  (inside the HSM) until it is needed, so stealing the current key is not enough to take
  the identity over.
* ``rot`` (rotation, sequence s >= 1) reveals the committed key as its ``k``
  (``sha256(k)`` must equal the previous ``n``), is signed by that revealed key, chains to
  the previous event by its digest ``p``, and commits to a new next key ``n``.
* ``rev`` (revocation) is a rotation to an *empty* next commitment (``n = b""``), exactly
  KERI's abandonment. It is therefore signed by the pre-committed next key, not by the
  current one: a thief of the current key can neither rotate nor revoke; only the holder
  of the pre-rotated key can. Nothing is accepted after a revocation.

Wire format. Every signed object is the canonical msgpack array ``[body, signature]``:
``body`` (bin) is a canonical msgpack map and ``signature`` (64 bytes) is Ed25519
(RFC 8032) over ``DOMAIN + body``; the domain differs per object type (``EVENT_DOMAIN``,
``RECORD_DOMAIN``, proofs of possession have their own), so a signature made for one
purpose is never valid for another. Signing the exact body bytes (as COSE_Sign1 does)
means verifying never re-encodes. Body fields (KERI labels): ``t`` kind (``icp``,
``rot``, ``rev``; ``rec`` for records), ``i`` identifier (not in ``icp``: derived from
it), ``s`` sequence number (record: version), ``p`` prior event digest (32 bytes), ``k``
current public key (32 bytes), ``n`` next-key digest (32 bytes, empty in ``rev``), ``dt``
issued_at and ``exp`` expires_at (Unix seconds, given by the caller: no clock here),
``a`` listen multiaddrs (records).

Digests are SHA-256 (KERI derivation code ``I``). The *event digest* is ``sha256(body)``:
like KERI's SAID it covers the signed content, not the signature (an attachment), so
re-signing the same body yields the same event, never a fork.

Identifier. ``mid:`` + the CESR-qualified SHA-256 digest of the inception body (KERI
"self-addressing identifier": code ``I`` = SHA2-256, then base64url of ``00 || digest``
with the first character replaced by the code), e.g. ``mid:IL7x...`` (48 characters).
It commits to the inception key and the next-key commitment and survives rotation.

Identity record (``rec``): binds the identifier to its current key (hence its did:key
and PeerId, which are functions of the key), the listen multiaddrs, a version number and
a validity window; it is signed by the current key and is what the DHT publishes.

Errors: every refusal is a :class:`RecordError` (a ``ValueError``) with a machine
readable :class:`Reason`; decoding untrusted bytes raises only :class:`RecordDecodeError`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgpack
import nacl.bindings
import nacl.exceptions

from identity import canonical
from identity.did import did_key_from_public_key, peer_id_from_public_key
from identity.signer import Signer

__all__ = [
    "DIGEST_BYTES", "EVENT_DOMAIN", "IDENTIFIER_PREFIX", "MAX_ADDRS", "MAX_EVENT_BYTES",
    "MAX_RECORD_BYTES", "RECORD_DOMAIN", "IdentityRecord", "KeyEvent", "KeyState", "Reason",
    "RecordDecodeError", "RecordError", "apply_event", "decode_log", "decode_signed",
    "reparsed",
    "encode_log", "identifier_from_digest", "incept", "issue_record", "key_digest",
    "revoke", "rotate", "verify_log", "verify_record",
]

#: Length of every digest (SHA-256), bytes.
DIGEST_BYTES = 32
#: Readable prefix of stable identifiers.
IDENTIFIER_PREFIX = "mid:"
#: Signature domain for key events and identity records (prepended to the body).
EVENT_DOMAIN = b"meshnode/key-event/v1\n"
RECORD_DOMAIN = b"meshnode/identity-record/v1\n"
#: Size limits on encoded objects, bytes, and on the number of listen addresses.
MAX_EVENT_BYTES = 1024
MAX_RECORD_BYTES = 16 * 1024
MAX_ADDRS = 32
MAX_ADDR_CHARS = 256
MAX_LOG_EVENTS = 10_000
_MAX_UINT = 2**63 - 1
_IDENTIFIER_HEAD = IDENTIFIER_PREFIX + "I"  # CESR derivation code I: SHA2-256
_IDENTIFIER_RE = re.compile(r"mid:I[A-P][A-Za-z0-9_-]{42}")
_EVENT_FIELDS = {
    "icp": ("dt", "k", "n", "s", "t"),
    "rot": ("dt", "i", "k", "n", "p", "s", "t"),
    "rev": ("dt", "i", "k", "n", "p", "s", "t"),
}
_RECORD_FIELDS = ("a", "dt", "exp", "i", "k", "s", "t")


class Reason(enum.StrEnum):
    """Machine-readable reason carried by every :class:`RecordError`."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    OUT_OF_ORDER = "out_of_order"
    FORK = "fork"
    BROKEN_CHAIN = "broken_chain"
    WRONG_NEXT_KEY = "wrong_next_key"
    WRONG_IDENTIFIER = "wrong_identifier"
    KEY_REUSE = "key_reuse"
    KEY_IN_USE = "key_in_use"
    BAD_TIME = "bad_time"
    REVOKED = "revoked"
    DUPLICITOUS = "duplicitous"
    EXPIRED = "expired"
    UNKNOWN_IDENTIFIER = "unknown_identifier"
    NOT_CURRENT_KEY = "not_current_key"
    STALE = "stale"
    REPLAYED = "replayed"
    UNKNOWN_CHALLENGE = "unknown_challenge"
    WRONG_PURPOSE = "wrong_purpose"
    WRONG_PEER = "wrong_peer"
    CAPACITY = "capacity"


class RecordError(ValueError):
    """An identity object was refused; ``reason`` (a :class:`Reason`) says why."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)

    def __reduce__(self):  # keep (reason, detail) through pickling
        return (type(self), (self.reason, self.detail))


class RecordDecodeError(RecordError):
    """Bytes that are not one canonical, well-formed event, record or log (MALFORMED)."""

    def __init__(self, reason: Reason | str = Reason.MALFORMED, detail: str = "") -> None:
        if not isinstance(reason, Reason):  # RecordDecodeError("detail")
            reason, detail = Reason.MALFORMED, str(reason)
        super().__init__(reason, detail)


def key_digest(public_key: bytes) -> bytes:
    """The 32-byte SHA-256 pre-rotation commitment to a 32-byte Ed25519 public key.

    Raises RecordError(MALFORMED) when ``public_key`` is not 32 bytes.
    """
    if type(public_key) is not bytes or len(public_key) != 32:
        raise RecordError(Reason.MALFORMED, "an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).digest()


def identifier_from_digest(digest: bytes) -> str:
    """``mid:I...`` (48 characters) for the 32-byte SHA-256 digest of an inception body
    (CESR code ``I``, base64url). Raises RecordError(MALFORMED) on a wrong length.
    """
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise RecordError(Reason.MALFORMED, "a digest is 32 bytes")
    return _IDENTIFIER_HEAD + base64.urlsafe_b64encode(b"\x00" + digest).decode("ascii")[1:]


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    # Same libsodium call as nacl.signing.VerifyKey.verify, minus the object churn.
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError,
            TypeError):
        return False
    return True


class KeyState(NamedTuple):
    """The key state a valid log ends in (KERI "key state").

    ``public_key`` (32 bytes) is the current signing key, ``next_digest`` the 32-byte
    commitment to the next key (``b""`` once revoked), ``last_digest`` the digest of the
    last event, ``issued_at`` its time (Unix seconds). ``duplicitous`` is set only by a
    registry holding duplicity evidence against the identifier.
    """

    identifier: str
    sequence: int
    public_key: bytes
    next_digest: bytes
    last_digest: bytes
    issued_at: int
    revoked: bool = False
    duplicitous: bool = False

    @property
    def did(self) -> str:
        """did:key of the current key."""
        return did_key_from_public_key(self.public_key)

    @property
    def peer_id(self) -> str:
        """libp2p PeerId (``12D3KooW...``) of the current key."""
        return peer_id_from_public_key(self.public_key)

    @property
    def current_key(self) -> bytes:
        """Alias of ``public_key``."""
        return self.public_key

    @property
    def seq(self) -> int:
        """Alias of ``sequence``."""
        return self.sequence

    @property
    def establishment_seq(self) -> int:
        """Sequence of the last establishment event: every event here establishes keys
        (no KERI interaction events), so it equals ``sequence`` (0 = inception key).
        """
        return self.sequence


class KeyEvent(NamedTuple):
    """One signed key event. Build with :func:`incept`/:func:`rotate`/:func:`revoke` or
    :meth:`from_bytes`, never by hand (fields are derived from ``body``).

    ``kind`` is ``icp``/``rot``/``rev``; ``prior`` is ``b""`` for ``icp``; ``digest`` is
    ``sha256(body)`` (32 bytes); ``signature`` is 64 bytes over ``EVENT_DOMAIN + body``.
    """

    kind: str
    identifier: str
    sequence: int
    prior: bytes
    public_key: bytes
    next_digest: bytes
    issued_at: int
    signature: bytes
    body: bytes
    digest: bytes

    def to_bytes(self) -> bytes:
        """Canonical encoding ``[body, signature]`` (msgpack)."""
        return _frame(self.body, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyEvent:
        """Decode (without verifying the signature). Raises RecordDecodeError."""
        obj = decode_signed(data, max_bytes=MAX_EVENT_BYTES)
        if type(obj) is not KeyEvent:
            raise RecordDecodeError("not a key event")
        return obj

    def signature_valid(self) -> bool:
        """True when ``signature`` is ``public_key``'s Ed25519 signature of the body."""
        return _verify(self.public_key, EVENT_DOMAIN + self.body, self.signature)


class IdentityRecord(NamedTuple):
    """A signed identity record: identifier -> current key, listen addresses.

    ``version`` orders records of one identifier (higher wins); ``issued_at`` and
    ``expires_at`` are Unix seconds; ``signature`` is 64 bytes over
    ``RECORD_DOMAIN + body`` by ``public_key``; ``digest`` is ``sha256(body)``.
    """

    identifier: str
    public_key: bytes
    version: int
    listen_addrs: tuple[str, ...]
    issued_at: int
    expires_at: int
    signature: bytes
    body: bytes
    digest: bytes

    def to_bytes(self) -> bytes:
        """Canonical encoding ``[body, signature]`` (msgpack)."""
        return _frame(self.body, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityRecord:
        """Decode (without verifying). Raises RecordDecodeError."""
        obj = decode_signed(data, max_bytes=MAX_RECORD_BYTES)
        if type(obj) is not IdentityRecord:
            raise RecordDecodeError("not an identity record")
        return obj

    def signature_valid(self) -> bool:
        """True when ``signature`` is ``public_key``'s Ed25519 signature of the body."""
        return _verify(self.public_key, RECORD_DOMAIN + self.body, self.signature)

    @property
    def did(self) -> str:
        """did:key of the record's key."""
        return did_key_from_public_key(self.public_key)

    @property
    def peer_id(self) -> str:
        """libp2p PeerId of the record's key."""
        return peer_id_from_public_key(self.public_key)


# ---------------------------------------------------------------------------- decoding

def _frame(body: bytes, signature: bytes) -> bytes:
    return msgpack.packb([body, signature], use_bin_type=True)


def _unpack(data: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types: fold them into one
        raise RecordDecodeError(f"{what} is not msgpack: {exc.__class__.__name__}") from None


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_UINT


def _is_bin(value: object, length: int) -> bool:
    return type(value) is bytes and len(value) == length


def _is_identifier(value: object) -> bool:
    return type(value) is str and _IDENTIFIER_RE.fullmatch(value) is not None


def decode_signed(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> KeyEvent | IdentityRecord:
    """Decode one signed object (a key event or an identity record) without verifying
    its signature. Raises RecordDecodeError (and nothing else) for anything that is not
    canonical, well formed and at most ``max_bytes`` bytes.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytearray, memoryview)):
            raise RecordDecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_bytes:
        raise RecordDecodeError(f"{len(data)} bytes exceed the {max_bytes}-byte limit")
    frame = _unpack(data, "frame")
    if type(frame) is not list or len(frame) != 2:
        raise RecordDecodeError("frame is not [body, signature]")
    body, signature = frame
    if type(body) is not bytes or not _is_bin(signature, 64):
        raise RecordDecodeError("frame is not [bin body, 64-byte signature]")
    # The only other spellings of [bin, bin64] use longer headers: canonical iff the
    # length is fixarray (1) + shortest bin header + body + bin8 header (2) + 64.
    if len(data) != len(body) + (67 + (2 if len(body) < 256 else 3 if len(body) < 65536 else 5)):
        raise RecordDecodeError("frame is not canonical")
    fields = _unpack(body, "body")
    if type(fields) is not dict:
        raise RecordDecodeError("body is not a map")
    if fields.get("t") == "rec":
        obj: KeyEvent | IdentityRecord = _record_from_fields(fields, body, signature)
    else:
        obj = _event_from_fields(fields, body, signature)
    if msgpack.packb(fields, use_bin_type=True) != body:
        raise RecordDecodeError("body is not canonical")
    return obj


def _event_from_fields(m: dict, body: bytes, signature: bytes) -> KeyEvent:
    kind = m.get("t")
    expected = _EVENT_FIELDS.get(kind) if type(kind) is str else None
    if expected is None or tuple(m) != expected:
        raise RecordDecodeError(f"not a key event: fields {sorted(map(str, m))[:8]}")
    seq, issued_at, key, nxt = m["s"], m["dt"], m["k"], m["n"]
    if not (_is_uint(seq) and _is_uint(issued_at) and _is_bin(key, 32)):
        raise RecordDecodeError("bad s, dt or k")
    if not _is_bin(nxt, 0 if kind == "rev" else DIGEST_BYTES):
        raise RecordDecodeError("bad next-key digest n")
    digest = hashlib.sha256(body).digest()
    if kind == "icp":
        if seq != 0:
            raise RecordDecodeError("inception must have sequence 0")
        identifier, prior = identifier_from_digest(digest), b""
    else:
        identifier, prior = m["i"], m["p"]
        if seq < 1 or not _is_identifier(identifier) or not _is_bin(prior, DIGEST_BYTES):
            raise RecordDecodeError("bad s, i or p")
    return KeyEvent(kind, identifier, seq, prior, key, nxt, issued_at, signature, body, digest)


def _valid_addr(addr: object) -> bool:
    return (
        type(addr) is str and 1 < len(addr) <= MAX_ADDR_CHARS and addr[0] == "/"
        and addr.isascii() and addr.isprintable() and " " not in addr
    )


def _record_from_fields(m: dict, body: bytes, signature: bytes) -> IdentityRecord:
    if tuple(m) != _RECORD_FIELDS:
        raise RecordDecodeError("not an identity record: wrong fields")
    addrs, issued_at, expires_at = m["a"], m["dt"], m["exp"]
    if not (_is_uint(issued_at) and _is_uint(expires_at) and _is_uint(m["s"])):
        raise RecordDecodeError("bad dt, exp or s")
    if expires_at <= issued_at:
        raise RecordDecodeError("record expires before it is issued")
    if not (_is_identifier(m["i"]) and _is_bin(m["k"], 32)):
        raise RecordDecodeError("bad i or k")
    if type(addrs) is not list or len(addrs) > MAX_ADDRS or not all(map(_valid_addr, addrs)):
        raise RecordDecodeError(f"a must be a list of at most {MAX_ADDRS} multiaddr strings")
    return IdentityRecord(
        m["i"], m["k"], m["s"], tuple(addrs), issued_at, expires_at,
        signature, body, hashlib.sha256(body).digest(),
    )


# ---------------------------------------------------------------------------- key events

def apply_event(state: KeyState | None, event: KeyEvent, *, verified: bool = False) -> KeyState:
    """The key state after ``event`` on top of ``state`` (``None`` before inception).

    Checks the signature unless ``verified`` (the caller already checked
    ``event.signature_valid()``), then the KERI rules: sequence, hash chain, revealed key
    against the pre-rotation commitment, time not going backwards, no revocation before.
    Raises RecordError with BAD_SIGNATURE, OUT_OF_ORDER, WRONG_IDENTIFIER, REVOKED,
    BROKEN_CHAIN, WRONG_NEXT_KEY, KEY_REUSE or BAD_TIME.
    """
    if not verified and not event.signature_valid():
        raise RecordError(Reason.BAD_SIGNATURE, f"{event.kind} {event.sequence}")
    if state is None:
        if event.kind != "icp":
            raise RecordError(Reason.OUT_OF_ORDER, "a log starts with its inception")
    else:
        _check_successor(state, event)
    if event.next_digest == hashlib.sha256(event.public_key).digest():
        raise RecordError(Reason.KEY_REUSE, "next key equals the current key")
    return KeyState(
        event.identifier, event.sequence, event.public_key, event.next_digest,
        event.digest, event.issued_at, event.kind == "rev",
        state.duplicitous if state is not None else False,
    )


def _check_successor(state: KeyState, event: KeyEvent) -> None:
    if event.identifier != state.identifier:
        raise RecordError(Reason.WRONG_IDENTIFIER, f"{event.identifier} != {state.identifier}")
    if state.revoked:
        raise RecordError(Reason.REVOKED, f"{state.identifier} was revoked at {state.sequence}")
    if event.sequence != state.sequence + 1:
        raise RecordError(
            Reason.OUT_OF_ORDER, f"sequence {event.sequence}, expected {state.sequence + 1}"
        )
    if event.prior != state.last_digest:
        raise RecordError(Reason.BROKEN_CHAIN, f"prior digest mismatch at {event.sequence}")
    if hashlib.sha256(event.public_key).digest() != state.next_digest:
        raise RecordError(Reason.WRONG_NEXT_KEY, "revealed key does not match the commitment")
    if event.issued_at < state.issued_at:
        raise RecordError(Reason.BAD_TIME, "issued before the prior event")


def reparsed(obj: object) -> KeyEvent | IdentityRecord:
    """``obj`` (a KeyEvent or IdentityRecord) re-derived from its encoding, so that
    hand-built objects whose fields disagree with their signed body cannot be smuggled in.
    Raises RecordDecodeError.
    """
    if not isinstance(obj, (KeyEvent, IdentityRecord)):
        raise RecordDecodeError(f"expected a KeyEvent or IdentityRecord, not {type(obj).__name__}")
    try:
        data = obj.to_bytes()
    except (TypeError, ValueError, OverflowError):
        raise RecordDecodeError("body and signature must be bytes") from None
    return decode_signed(data)


def _reparsed(event: object) -> KeyEvent:
    obj = reparsed(event)
    if type(obj) is not KeyEvent:
        raise RecordDecodeError("not a key event")
    return obj


def verify_log(events: Iterable[KeyEvent]) -> KeyState:
    """Verify a whole key event log (inception first) and return its final key state.

    Each event is re-derived from its body (hand-built inconsistent events are refused).
    Raises RecordError (see :func:`apply_event`; MALFORMED for an empty log).
    """
    state: KeyState | None = None
    for event in events:
        state = apply_event(state, _reparsed(event))
    if state is None:
        raise RecordError(Reason.MALFORMED, "empty key event log")
    return state


def _sign(signer: Signer, domain: bytes, body: bytes) -> bytes:
    signature = bytes(signer.sign(domain + body))
    if not _verify(signer.public_key, domain + body, signature):
        raise RecordError(Reason.BAD_SIGNATURE, "the signer returned an invalid signature")
    return signature


def _encode_body(fields: dict) -> bytes:
    try:
        return canonical.encode(fields)
    except (TypeError, OverflowError, ValueError) as exc:
        raise RecordError(Reason.MALFORMED, f"field has no canonical form: {exc}") from None


def _sign_event(signer: Signer, fields: dict) -> KeyEvent:
    body = _encode_body(fields)
    signature = _sign(signer, EVENT_DOMAIN, body)
    return _event_from_fields(_unpack(body, "body"), body, signature)


def _check_time(issued_at: int) -> None:
    if not _is_uint(issued_at):
        raise RecordError(Reason.MALFORMED, "issued_at is a non-negative int (Unix seconds)")


def incept(signer: Signer, next_public_key: bytes, *, issued_at: int) -> KeyEvent:
    """Inception event: ``signer``'s key becomes current, ``next_public_key`` (32 bytes)
    is committed to by its SHA-256 digest. The identifier is ``event.identifier``.

    Raises RecordError (MALFORMED, KEY_REUSE, BAD_SIGNATURE when the signer misbehaves).
    """
    _check_time(issued_at)
    current = key_digest(signer.public_key)
    nxt = key_digest(next_public_key)
    if nxt == current:
        raise RecordError(Reason.KEY_REUSE, "next key equals the current key")
    return _sign_event(
        signer, {"t": "icp", "s": 0, "k": signer.public_key, "n": nxt, "dt": issued_at}
    )


def _establish(log: Sequence[KeyEvent], signer: Signer, kind: str, nxt: bytes,
               issued_at: int) -> KeyEvent:
    _check_time(issued_at)
    state = verify_log(log)
    if state.revoked:
        raise RecordError(Reason.REVOKED, f"{state.identifier} is revoked")
    if key_digest(signer.public_key) != state.next_digest:
        raise RecordError(Reason.WRONG_NEXT_KEY, "signer is not the pre-committed next key")
    if nxt == state.next_digest:
        raise RecordError(Reason.KEY_REUSE, "next key equals the revealed key")
    if issued_at < state.issued_at:
        raise RecordError(Reason.BAD_TIME, "issued before the prior event")
    event = _sign_event(signer, {
        "t": kind, "i": state.identifier, "s": state.sequence + 1, "p": state.last_digest,
        "k": signer.public_key, "n": nxt, "dt": issued_at,
    })
    apply_event(state, event, verified=True)
    return event


def rotate(log: Sequence[KeyEvent], new_signer: Signer, next_public_key: bytes, *,
           issued_at: int) -> KeyEvent:
    """Rotation event appended to ``log``: ``new_signer`` (the key committed by the last
    event) becomes current and signs; ``next_public_key`` (32 bytes) is committed to.

    Raises RecordError: WRONG_NEXT_KEY when ``new_signer`` is not the committed key,
    REVOKED, KEY_REUSE, BAD_TIME, or any error of :func:`verify_log` on ``log``.
    """
    return _establish(log, new_signer, "rot", key_digest(next_public_key), issued_at)


def revoke(log: Sequence[KeyEvent], signer: Signer, *, issued_at: int) -> KeyEvent:
    """Revocation event appended to ``log``: a rotation to an empty next commitment,
    signed by ``signer``, which must hold the pre-committed *next* key (KERI
    abandonment). Raises RecordError like :func:`rotate`.
    """
    return _establish(log, signer, "rev", b"", issued_at)


def encode_log(events: Iterable[KeyEvent]) -> bytes:
    """Canonical msgpack array of the events' encodings (``[event bytes, ...]``)."""
    return canonical.encode([event.to_bytes() for event in events])


def decode_log(data: bytes) -> list[KeyEvent]:
    """Decode :func:`encode_log` output (at most MAX_LOG_EVENTS events) without verifying
    it (call :func:`verify_log`). Raises RecordDecodeError only.
    """
    try:
        items = canonical.decode(data)
    except canonical.DecodeError as exc:
        raise RecordDecodeError(f"log: {exc}") from None
    if type(items) is not list or not all(type(item) is bytes for item in items):
        raise RecordDecodeError("a log is an array of encoded events")
    if len(items) > MAX_LOG_EVENTS:
        raise RecordDecodeError(f"log longer than {MAX_LOG_EVENTS} events")
    return [KeyEvent.from_bytes(item) for item in items]


# ---------------------------------------------------------------------------- records

def issue_record(signer: Signer, identifier: str, *, version: int,
                 listen_addrs: Sequence[str], issued_at: int,
                 expires_at: int) -> IdentityRecord:
    """Identity record for ``identifier`` signed by ``signer`` (its current key).

    ``version`` (uint) must grow with each record; times are Unix seconds with
    ``expires_at > issued_at``; ``listen_addrs`` are at most MAX_ADDRS multiaddr strings.
    Raises RecordError(MALFORMED) on bad fields, BAD_SIGNATURE when the signer misbehaves.
    """
    body = _encode_body({
        "t": "rec", "i": identifier, "k": signer.public_key, "s": version,
        "a": list(listen_addrs), "dt": issued_at, "exp": expires_at,
    })
    if len(body) > MAX_RECORD_BYTES - 80:
        raise RecordError(Reason.MALFORMED, "record too large")
    fields = _unpack(body, "body")
    record = _record_from_fields(fields, body, b"\x00" * 64)  # validate before signing
    return record._replace(signature=_sign(signer, RECORD_DOMAIN, body))


def verify_record(record: IdentityRecord, state: KeyState, *, now: int | None = None,
                  signature_ok: bool | None = None) -> None:
    """Check ``record`` against the verified key state of its identifier.

    ``now`` (Unix seconds), when given, must be before ``record.expires_at``.
    ``signature_ok`` lets a caller that already ran ``record.signature_valid()`` (e.g. in
    a parallel batch) pass the result instead of verifying again. Raises RecordError:
    WRONG_IDENTIFIER, DUPLICITOUS, REVOKED, NOT_CURRENT_KEY (signed by a rotated-out
    key), EXPIRED, BAD_SIGNATURE.
    """
    if record.identifier != state.identifier:
        raise RecordError(Reason.WRONG_IDENTIFIER, "record is for another identifier")
    if state.duplicitous:
        raise RecordError(Reason.DUPLICITOUS, f"{state.identifier} has duplicity evidence")
    if state.revoked:
        raise RecordError(Reason.REVOKED, f"{state.identifier} is revoked")
    if record.public_key != state.public_key:
        raise RecordError(Reason.NOT_CURRENT_KEY, "record key is not the current key")
    if now is not None and now >= record.expires_at:
        raise RecordError(Reason.EXPIRED, f"record expired at {record.expires_at}")
    if signature_ok is None:
        signature_ok = record.signature_valid()
    if not signature_ok:
        raise RecordError(Reason.BAD_SIGNATURE, "identity record signature")
