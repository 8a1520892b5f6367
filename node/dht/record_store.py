"""DHT record validation and the local record store (pure).

Theory of operation
-------------------
libp2p record keys are namespaced: ``/<namespace>/<rest>`` (go-libp2p-record,
libp2p/specs kad-dht/README.md "Entry validation"). A :class:`Validator` decides whether
a value is acceptable for a key (``validate`` raises :class:`RecordInvalid`) and which of
several values is best (``select`` returns an index; it must be stable). A
:class:`NamespacedValidator` dispatches on the namespace and rejects unknown ones, so a
meshnode stores nothing it cannot check.

Namespaces wired here: ``pk`` (:class:`PublicKeyValidator`, the spec's public-key
records) and, by the node, :data:`IDENTITY_NAMESPACE` for signed identity records
(the identity package provides that validator; see :class:`Validator`).

:class:`RecordStore` keeps at most one value per key (the best seen), validates on
every ``put`` (a PUT_VALUE from the network or a local publish), stamps
``time_received`` (RFC 3339, UTC, from the caller's ``now``), expires records older
than ``max_age`` seconds and bounds its size (records and value bytes), so a flood of
PUT_VALUE requests cannot grow it without limit. Time is an input: ``now`` is seconds
since the Unix epoch on the driver's clock (virtual in the simulator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from node.dht.messages import Record

__all__ = [
    "DEFAULT_MAX_AGE",
    "IDENTITY_NAMESPACE",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "NamespacedValidator",
    "PublicKeyValidator",
    "RecordInvalid",
    "RecordStore",
    "StoredRecord",
    "Validator",
    "identity_record_key",
    "rfc3339",
    "split_key",
]

#: Namespace of signed meshnode identity records: key ``/meshnode-id/<binary PeerId>``.
IDENTITY_NAMESPACE = "meshnode-id"
#: Records older than this many seconds are dropped (go-libp2p-kad-dht MaxRecordAge, 36 h).
DEFAULT_MAX_AGE = 36 * 3600.0
#: Largest record key accepted, bytes.
MAX_KEY_BYTES = 1024
#: Largest record value accepted, bytes (signed identity records are far smaller).
MAX_VALUE_BYTES = 64 * 1024


class RecordInvalid(ValueError):
    """A record key or value that a validator (or the store's limits) rejects."""


class Validator(Protocol):
    """A record validator for one namespace (go-libp2p-record ``Validator``).

    ``validate(key, value)`` returns None or raises :class:`RecordInvalid`; it must be
    pure. ``select(key, values)`` returns the index of the best of two or more values
    that all passed ``validate``; it must be stable (same answer for the same input)."""

    def validate(self, key: bytes, value: bytes) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


def split_key(key: bytes) -> tuple[str, bytes]:
    """``/ns/rest`` -> ``("ns", b"rest")``. Raises RecordInvalid when not namespaced."""
    if not key.startswith(b"/"):
        raise RecordInvalid("record key does not start with '/'")
    ns, sep, rest = key[1:].partition(b"/")
    if not sep or not ns:
        raise RecordInvalid("record key has no namespace")
    try:
        return ns.decode("ascii"), rest
    except UnicodeDecodeError:
        raise RecordInvalid("record namespace is not ASCII") from None


def identity_record_key(peer_id: bytes) -> bytes:
    """DHT key of a peer's signed identity record: ``/meshnode-id/`` + binary PeerId."""
    return b"/" + IDENTITY_NAMESPACE.encode("ascii") + b"/" + bytes(peer_id)


class NamespacedValidator:
    """Dispatches ``validate``/``select`` on the key's namespace; unknown namespaces
    and un-namespaced keys raise :class:`RecordInvalid`."""

    def __init__(self, validators: Mapping[str, Validator]) -> None:
        self._validators = dict(validators)

    def namespaces(self) -> list[str]:
        """Registered namespaces, sorted."""
        return sorted(self._validators)

    def _for(self, key: bytes) -> Validator:
        ns, _ = split_key(key)
        validator = self._validators.get(ns)
        if validator is None:
            raise RecordInvalid(f"no validator for namespace {ns!r}")
        return validator

    def validate(self, key: bytes, value: bytes) -> None:
        self._for(key).validate(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        if not values:
            raise RecordInvalid("select needs at least one value")
        index = self._for(key).select(key, values)
        if not 0 <= index < len(values):
            raise RecordInvalid("validator selected an index out of range")
        return index


class PublicKeyValidator:
    """``/pk/<binary PeerId>`` records hold a protobuf ``PublicKey``; valid when the
    PeerId is that key's multihash (identity multihash when the key is at most 42 bytes,
    else sha2-256), libp2p/specs peer-ids. All valid values are equal, so ``select``
    returns 0."""

    def validate(self, key: bytes, value: bytes) -> None:
        ns, peer_id = split_key(key)
        if ns != "pk":
            raise RecordInvalid("not a /pk/ key")
        if len(value) <= 42:
            expected = b"\x00" + bytes([len(value)]) + value
        else:
            expected = b"\x12\x20" + hashlib.sha256(value).digest()
        if peer_id != expected:
            raise RecordInvalid("public key does not match the PeerId")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A stored value and when it arrived (seconds, caller's clock)."""

    value: bytes
    received_at: float

    def to_record(self, key: bytes) -> Record:
        """The wire ``Record`` with ``timeReceived`` as RFC 3339 UTC."""
        return Record(key, self.value, rfc3339(self.received_at))


def rfc3339(seconds: float) -> str:
    """``seconds`` since the Unix epoch as RFC 3339 UTC with nanosecond digits (go's
    ``time.RFC3339Nano`` style used by go-libp2p-kad-dht's ``timeReceived``)."""
    moment = datetime.fromtimestamp(max(seconds, 0.0), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class RecordStore:
    """Local key -> best value map with validation, expiry and size bounds.

    ``max_records``: keys held; when full, new keys are refused (existing keys can
    still be improved). Raises nothing on bad input except :class:`RecordInvalid`."""

    def __init__(
        self,
        validator: Validator,
        *,
        max_records: int = 10_000,
        max_age: float = DEFAULT_MAX_AGE,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self.validator = validator
        self.max_records = max_records
        self.max_age = max_age
        self.max_value_bytes = max_value_bytes
        self._records: dict[bytes, StoredRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: bytes, value: bytes, *, now: float) -> bool:
        """Validate and store ``value`` under ``key`` if it is at least as good as the
        stored one (``select`` over ``[stored, new]``). Returns True when stored, False
        when the stored value is better. Raises RecordInvalid for invalid records, keys
        or values over the size limits, or a full store."""
        if len(key) > MAX_KEY_BYTES or len(value) > self.max_value_bytes:
            raise RecordInvalid("record key or value too large")
        self.validator.validate(key, value)
        current = self.get(key, now=now)
        if current is not None:
            if current.value == value:
                self._records[key] = StoredRecord(value, now)
                return True
            if self.validator.select(key, [current.value, value]) != 1:
                return False
        elif len(self._records) >= self.max_records:
            self.expire(now=now)
            if len(self._records) >= self.max_records:
                raise RecordInvalid("record store is full")
        self._records[key] = StoredRecord(value, now)
        return True

    def get(self, key: bytes, *, now: float) -> StoredRecord | None:
        """The stored record for ``key`` unless absent or older than ``max_age``."""
        stored = self._records.get(key)
        if stored is None:
            return None
        if now - stored.received_at > self.max_age:
            del self._records[key]
            return None
        return stored

    def expire(self, *, now: float) -> int:
        """Drop records older than ``max_age``; returns how many were dropped."""
        old = [k for k, r in self._records.items() if now - r.received_at > self.max_age]
        for key in old:
            del self._records[key]
        return len(old)

    def keys(self) -> list[bytes]:
        """Stored keys, sorted (for republishing in a deterministic order)."""
        return sorted(self._records)
