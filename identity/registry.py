"""Verified registry of identities (pure): key event logs, identity records, duplicity.

Theory of operation
-------------------
The registry accepts key events and identity records from anyone (whole logs, single
events, or large batches) and keeps, per identifier, the verified key event log, its key
state, the newest valid identity record and any duplicity evidence. Nothing is trusted
before it verifies: every refusal raises (or, in batches, returns) a
:class:`identity.records.RecordError` whose ``reason`` says why.

Event acceptance (KERI "first seen, never replaced"):

* an inception creates the identity; a later event must be the exact successor of the
  last accepted one (sequence, prior digest, pre-committed key, signature), otherwise
  OUT_OF_ORDER (ahead of what we hold, including any event before its inception),
  BROKEN_CHAIN, WRONG_NEXT_KEY, BAD_SIGNATURE, REVOKED (after a revocation), ...;
* an event we already hold (same digest) is accepted again as a no-op, so retries are
  harmless;
* a *different* event at a sequence we already hold that is nevertheless a valid
  successor of our event at ``sequence - 1`` (validly signed by the pre-committed key)
  proves that the controller signed two histories: it is refused with FORK, and kept as
  :class:`DuplicityEvidence` (both events plus the log prefix they extend) that anyone can
  re-verify offline. The identity is then *duplicitous*: no further events, records or
  proofs of possession are accepted for it (fail closed).

Arrival order. Out-of-order events are refused, not buffered (no escrow: bounded memory).
When every event is delivered at least once more after it was refused (retries), the
final log and key state of every identity with one history do not depend on arrival
order; for a duplicitous identity the duplicity flag and the evidence set do not either
(evidence stores its two events sorted by digest), while the accepted branch is the first
seen. A key may be the current key of only one identifier (KEY_IN_USE otherwise), so
lookups by key, PeerId and did:key are unambiguous.

Records: a record is accepted when its identifier is known, not revoked or duplicitous,
it is signed by the *current* key, is not expired at ``now`` (when given) and its
version is higher than any accepted before (an identical copy is a no-op). A rotation or
revocation drops the stored record (it names a key that is no longer current).

Throughput: decoding and signature checks are stateless (every event and record
carries the key that signed it), so :meth:`Registry.ingest_batch` runs them on chunks
through a caller-supplied ``parallel_map`` (the shell may pass a thread pool's ``map``:
libsodium releases the GIL) and applies the results in input order as they arrive, so the
outcome is identical whatever map is used. Deterministic: no set/dict iteration order is
ever observable (:meth:`Registry.identifiers` sorts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from identity import canonical
from identity.did import DidError, public_key_from_did_key, public_key_from_peer_id
from identity.records import (
    IdentityRecord,
    KeyEvent,
    KeyState,
    Reason,
    RecordDecodeError,
    RecordError,
    apply_event,
    decode_log,
    decode_signed,
    reparsed,
    verify_log,
    verify_record,
)

__all__ = ["DuplicityEvidence", "Registry"]

_MAX_EVIDENCE_BYTES = canonical.MAX_MESSAGE_BYTES


class DuplicityEvidence(NamedTuple):
    """Proof that an identifier's controller signed two different events at one
    sequence number: ``prefix`` is the log up to ``sequence - 1``; ``first`` and
    ``second`` (sorted by digest) both validly extend it. Verify with :meth:`verify`.
    """

    prefix: tuple[KeyEvent, ...]
    first: KeyEvent
    second: KeyEvent

    @classmethod
    def of(cls, prefix: Iterable[KeyEvent], one: KeyEvent, other: KeyEvent) -> DuplicityEvidence:
        """Evidence with its two events in canonical (digest) order."""
        first, second = sorted((one, other), key=lambda event: event.digest)
        return cls(tuple(prefix), first, second)

    @property
    def identifier(self) -> str:
        """The identifier whose controller was duplicitous."""
        return self.first.identifier

    @property
    def sequence(self) -> int:
        """The sequence number at which the two events conflict."""
        return self.first.sequence

    def verify(self) -> str:
        """Re-verify from scratch; return the identifier. Raises RecordError when this
        is not evidence of duplicity (MALFORMED, or the reason an event is invalid).
        """
        if not self.prefix:
            raise RecordError(Reason.MALFORMED, "duplicity evidence needs the log prefix")
        state = verify_log(self.prefix)
        first, second = reparsed(self.first), reparsed(self.second)
        if type(first) is not KeyEvent or type(second) is not KeyEvent:
            raise RecordDecodeError("duplicity evidence holds key events")
        if first.digest == second.digest:
            raise RecordError(Reason.MALFORMED, "the two events are the same event")
        apply_event(state, first)
        apply_event(state, second)
        return state.identifier

    def to_bytes(self) -> bytes:
        """Canonical msgpack ``[[prefix event bytes...], first bytes, second bytes]``."""
        return canonical.encode([
            [event.to_bytes() for event in self.prefix],
            self.first.to_bytes(),
            self.second.to_bytes(),
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> DuplicityEvidence:
        """Decode (not verify). Raises RecordDecodeError only."""
        try:
            value = canonical.decode(data, max_bytes=_MAX_EVIDENCE_BYTES)
        except canonical.DecodeError as exc:
            raise RecordDecodeError(f"evidence: {exc}") from None
        if (
            type(value) is not list or len(value) != 3 or type(value[1]) is not bytes
            or type(value[2]) is not bytes
        ):
            raise RecordDecodeError("evidence is [prefix, first, second]")
        prefix = decode_log(canonical.encode(value[0])) if type(value[0]) is list else None
        if prefix is None:
            raise RecordDecodeError("evidence prefix is a list of events")
        return cls(tuple(prefix), KeyEvent.from_bytes(value[1]), KeyEvent.from_bytes(value[2]))


class _Entry:
    __slots__ = ("events", "evidence", "record", "record_version", "state")

    def __init__(self, state: KeyState, event: KeyEvent) -> None:
        self.state = state
        self.events = [event]
        self.record: IdentityRecord | None = None
        self.record_version = -1
        self.evidence: list[DuplicityEvidence] = []


def _decode_and_check(chunk: list[object]) -> list[tuple[object, bool]]:
    """Stateless half of ingestion, safe to run in worker threads: decode each item and
    check its signature (every object carries the key that signed it)."""
    out: list[tuple[object, bool]] = []
    for item in chunk:
        try:
            obj = _coerce(item)
        except RecordError as exc:
            out.append((exc, False))
            continue
        out.append((obj, obj.signature_valid()))
    return out


def _coerce(item: object) -> KeyEvent | IdentityRecord:
    if isinstance(item, (KeyEvent, IdentityRecord)):
        return reparsed(item)  # never trust hand-built fields
    return decode_signed(item)


class Registry:
    """Verified identities, indexed by identifier, current key, PeerId and did:key.

    Pure and single-threaded: no clock (``now`` is an argument, Unix seconds), no I/O.
    The node persists it by storing :meth:`log` and :meth:`record` of each identifier and
    re-ingesting them at start.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._entries

    # ------------------------------------------------------------------ ingestion

    def ingest_event(self, event: KeyEvent | bytes) -> KeyState:
        """Verify and apply one key event (object or encoded bytes); return the
        identifier's key state. Re-ingesting a held event is a no-op. Raises RecordError
        (MALFORMED, BAD_SIGNATURE, OUT_OF_ORDER, BROKEN_CHAIN, WRONG_NEXT_KEY, REVOKED,
        FORK (evidence kept), DUPLICITOUS, KEY_IN_USE, KEY_REUSE, BAD_TIME).
        """
        obj = _coerce(event)
        if type(obj) is not KeyEvent:
            raise RecordDecodeError("not a key event")
        return self._apply(obj, obj.signature_valid())

    def ingest_log(self, events: Iterable[KeyEvent | bytes] | bytes) -> KeyState:
        """Ingest a whole log (a list, or :func:`identity.records.encode_log` bytes) in
        order; events before a refused one stay accepted. Raises like :meth:`ingest_event`.
        """
        items = decode_log(events) if isinstance(events, (bytes, bytearray)) else events
        state: KeyState | None = None
        for event in items:
            state = self.ingest_event(event)
        if state is None:
            raise RecordError(Reason.MALFORMED, "empty key event log")
        return state

    def ingest_record(self, record: IdentityRecord | bytes, *,
                      now: int | None = None) -> IdentityRecord:
        """Verify and store an identity record (object or bytes). ``now`` is Unix seconds.
        Raises RecordError (MALFORMED, UNKNOWN_IDENTIFIER, REVOKED, DUPLICITOUS,
        NOT_CURRENT_KEY, EXPIRED, BAD_SIGNATURE, STALE).
        """
        obj = _coerce(record)
        if type(obj) is not IdentityRecord:
            raise RecordDecodeError("not an identity record")
        return self._store_record(obj, None, now)

    def ingest_batch(self, items: Iterable[KeyEvent | IdentityRecord | bytes], *,
                     now: int | None = None,
                     parallel_map: Callable = map,
                     chunk_size: int = 256) -> list[RecordError | None]:
        """Ingest many events and records (mixed, objects or bytes) in input order.

        Returns one entry per item: ``None`` when accepted (or already held), else the
        RecordError. Never raises on bad items. Decoding and signature checks are
        stateless, so they run on chunks of ``chunk_size`` items through
        ``parallel_map(func, chunks)`` (default the builtin ``map``; a
        ``ThreadPoolExecutor.map`` pipelines them on several cores, libsodium releasing
        the GIL) while this thread applies the results in input order: the outcome does
        not depend on the map used.
        """
        items = list(items)
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        results: list[RecordError | None] = []
        for part in parallel_map(_decode_and_check, chunks):
            for obj, ok in part:
                try:
                    if type(obj) is KeyEvent:
                        self._apply(obj, ok)
                    elif type(obj) is IdentityRecord:
                        self._store_record(obj, ok, now)
                    else:
                        raise obj  # the decode error from the worker
                    results.append(None)
                except RecordError as exc:
                    results.append(exc)
        return results

    def verify_record(self, record: IdentityRecord | bytes, *,
                      now: int | None = None) -> KeyState:
        """Check a record against the registry without storing it; return the key state
        of its identifier. Raises RecordError like :meth:`ingest_record` (except STALE).
        """
        obj = _coerce(record)
        if type(obj) is not IdentityRecord:
            raise RecordDecodeError("not an identity record")
        entry = self._entries.get(obj.identifier)
        if entry is None:
            raise RecordError(Reason.UNKNOWN_IDENTIFIER, obj.identifier)
        verify_record(obj, entry.state, now=now)
        return entry.state

    # ------------------------------------------------------------------ lookups

    def state(self, identifier: str) -> KeyState | None:
        """Key state of ``identifier``, or None when unknown."""
        entry = self._entries.get(identifier)
        return entry.state if entry is not None else None

    def by_key(self, public_key: bytes) -> KeyState | None:
        """Key state of the identity whose current key is ``public_key`` (32 bytes), or
        None. For a revoked identity its last operational key also resolves (revoked).
        """
        identifier = self._by_key.get(public_key)
        return self.state(identifier) if identifier is not None else None

    def by_peer_id(self, peer_id: str) -> KeyState | None:
        """Key state for a libp2p PeerId (``12D3KooW...``); None when unknown/malformed."""
        try:
            return self.by_key(public_key_from_peer_id(peer_id))
        except DidError:
            return None

    def by_did(self, did: str) -> KeyState | None:
        """Key state for a ``did:key``; None when unknown or malformed."""
        try:
            return self.by_key(public_key_from_did_key(did))
        except DidError:
            return None

    def record(self, identifier: str, *, now: int | None = None) -> IdentityRecord | None:
        """Newest accepted record of ``identifier`` if still valid at ``now`` (seconds)
        and the identity is neither revoked nor duplicitous; else None.
        """
        entry = self._entries.get(identifier)
        if entry is None or entry.record is None:
            return None
        if entry.state.revoked or entry.state.duplicitous:
            return None
        if now is not None and now >= entry.record.expires_at:
            return None
        return entry.record

    def log(self, identifier: str) -> list[KeyEvent]:
        """The accepted key event log of ``identifier`` (empty when unknown)."""
        entry = self._entries.get(identifier)
        return list(entry.events) if entry is not None else []

    def evidence(self, identifier: str) -> list[DuplicityEvidence]:
        """Duplicity evidence held against ``identifier``, sorted by (sequence, digests)."""
        entry = self._entries.get(identifier)
        return list(entry.evidence) if entry is not None else []

    def identifiers(self) -> list[str]:
        """All known identifiers, sorted."""
        return sorted(self._entries)

    # ------------------------------------------------------------------ internals

    def _claim_key(self, public_key: bytes, identifier: str) -> None:
        owner = self._by_key.get(public_key)
        if owner is not None and owner != identifier:
            raise RecordError(Reason.KEY_IN_USE, f"key is current for {owner}")

    def _apply(self, event: KeyEvent, signature_ok: bool) -> KeyState:
        if not signature_ok:
            raise RecordError(Reason.BAD_SIGNATURE, f"{event.kind} {event.sequence}")
        entry = self._entries.get(event.identifier)
        if entry is None:
            state = apply_event(None, event, verified=True)
            self._claim_key(state.public_key, state.identifier)
            self._entries[state.identifier] = _Entry(state, event)
            self._by_key[state.public_key] = state.identifier
            return state
        old = entry.state
        if event.sequence <= old.sequence:
            return self._seen(entry, event)
        if old.duplicitous:
            raise RecordError(Reason.DUPLICITOUS, f"{old.identifier} has duplicity evidence")
        new = apply_event(old, event, verified=True)
        self._claim_key(new.public_key, new.identifier)
        if not new.revoked:  # a revoked identity stays findable by its last key
            del self._by_key[old.public_key]
        self._by_key[new.public_key] = new.identifier
        entry.state = new
        entry.events.append(event)
        entry.record = None
        return new

    def _seen(self, entry: _Entry, event: KeyEvent) -> KeyState:
        held = entry.events[event.sequence]
        if held.digest == event.digest:
            return entry.state  # a retry of what we hold
        prefix = entry.events[:event.sequence]
        base: KeyState | None = None
        for earlier in prefix:
            base = apply_event(base, earlier, verified=True)
        apply_event(base, event, verified=True)  # not a valid alternative: plain refusal
        evidence = DuplicityEvidence.of(prefix, held, event)
        if evidence not in entry.evidence:
            entry.evidence.append(evidence)
            entry.evidence.sort(key=lambda e: (e.sequence, e.first.digest, e.second.digest))
        entry.state = entry.state._replace(duplicitous=True)
        raise RecordError(
            Reason.FORK, f"{event.identifier}: two events at sequence {event.sequence}"
        )

    def _store_record(self, record: IdentityRecord, signature_ok: bool | None,
                      now: int | None) -> IdentityRecord:
        entry = self._entries.get(record.identifier)
        if entry is None:
            raise RecordError(Reason.UNKNOWN_IDENTIFIER, record.identifier)
        verify_record(record, entry.state, now=now, signature_ok=signature_ok)
        if record.version <= entry.record_version:
            held = entry.record
            if held is not None and held.digest == record.digest:
                return held
            raise RecordError(
                Reason.STALE, f"version {record.version} <= {entry.record_version}"
            )
        entry.record = record
        entry.record_version = record.version
        return record
