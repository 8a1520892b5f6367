"""The node's durable state in one sqlite database (WAL): consensus records, the decided
log as a hash-chained audit trail, and a small key-value table.

Theory of operation
-------------------
The consensus core emits ``Record(kind, seq, data)`` effects (see
:mod:`consensus.persist`); the runtime hands each Ready's records to
:meth:`Storage.append_records` *before* sending that Ready's messages. One call is one
sqlite transaction with ``synchronous=FULL``, so when it returns the records are on disk
and a crash (kill -9, power loss) leaves either all of them or none: the restored replica
never contradicts a message it sent. (``synchronous="normal"`` trades the power-loss half
of that guarantee for speed: see ``node.config.StorageConfig``.)

``decided`` records (commit certificates, canonical bytes) also extend the audit chain:
``entry_hash[s] = sha256(b"meshnode/audit/v1" || prev_hash || seq (8 bytes, big endian)
|| value_digest)`` with ``prev_hash`` of the first entry 32 zero bytes. ``value_digest``
is the digest of the *decided value* (the PBFT batch digest), extracted from the
certificate by the ``digest_of`` function the node passes in: two honest replicas hold
different certificates for one decision (each collected its own 2f+1 COMMITs) but the
same batch, so their chains are identical. Anyone holding the exported entries can
recompute the chain offline; a changed, removed or reordered entry breaks every hash
after it (:func:`verify_audit_chain`). A replica that caught up by state transfer
installed a checkpoint snapshot and holds no certificates for the sequence numbers it
skipped: its chain then starts a new *segment* after the gap (``prev_hash`` = 32 zero
bytes), which verification accepts only where sequence numbers actually jump.

The ``Storage`` object is not thread-safe by itself; the runtime calls it from one
worker thread at a time (``check_same_thread=False`` so that thread may change).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["AuditEntry", "AuditError", "Storage", "StoredRecord", "verify_audit_chain"]

AUDIT_DOMAIN = b"meshnode/audit/v1"
GENESIS_HASH = bytes(32)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS consensus_records (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    data BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS consensus_records_kind_seq ON consensus_records (kind, seq);
CREATE TABLE IF NOT EXISTS decided_log (
    seq         INTEGER PRIMARY KEY,
    certificate BLOB NOT NULL,
    value_digest BLOB NOT NULL,
    prev_hash   BLOB NOT NULL,
    entry_hash  BLOB NOT NULL
);
"""


class RecordLike(Protocol):
    kind: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A consensus record read back: ``kind`` (str), ``seq`` (int), ``data`` (bytes)."""

    kind: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decided-log entry: sequence number, certificate bytes, the decided value's
    digest and the chain hashes (all 32 bytes)."""

    seq: int
    certificate: bytes
    value_digest: bytes
    prev_hash: bytes
    entry_hash: bytes


class AuditError(ValueError):
    """An audit chain that does not verify (names the first bad sequence number)."""


def sha256_digest(data: bytes) -> bytes:
    """Default ``digest_of``: SHA-256 of the whole certificate bytes."""
    return hashlib.sha256(data).digest()


DigestOf = Callable[[bytes], bytes]


def audit_hash(prev_hash: bytes, seq: int, value_digest: bytes) -> bytes:
    """The 32-byte chain hash of the entry ``seq`` following ``prev_hash``."""
    return hashlib.sha256(AUDIT_DOMAIN + prev_hash + seq.to_bytes(8, "big") + value_digest).digest()


def verify_audit_chain(entries: Iterable[AuditEntry], digest_of: DigestOf = sha256_digest) -> bytes:
    """Check that ``entries`` (in order) form one unbroken chain; return the head hash.

    The first entry may start anywhere (an export can begin after compaction) and a new
    segment may start after a gap in sequence numbers (state transfer) with a zero
    ``prev_hash``; otherwise every entry must follow its predecessor by sequence number
    and hash, and each
    entry's ``value_digest`` must be ``digest_of(certificate)``. Raises AuditError naming
    the first entry that does not verify. Certificates themselves are checked
    separately (``consensus.certificate.verify``).
    """
    prev: AuditEntry | None = None
    head = GENESIS_HASH
    for entry in entries:
        segment_start = (prev is not None and entry.seq > prev.seq + 1
                         and entry.prev_hash == GENESIS_HASH)
        if prev is not None and not segment_start and (
                entry.seq != prev.seq + 1 or entry.prev_hash != prev.entry_hash):
            raise AuditError(f"entry {entry.seq} does not follow entry {prev.seq}")
        if digest_of(entry.certificate) != entry.value_digest:
            raise AuditError(f"entry {entry.seq}: certificate does not match its value digest")
        if audit_hash(entry.prev_hash, entry.seq, entry.value_digest) != entry.entry_hash:
            raise AuditError(f"entry {entry.seq}: hash does not match its content")
        prev, head = entry, entry.entry_hash
    return head


class Storage:
    """sqlite database at ``path`` (created with its parent directory, mode 0600).

    ``digest_of(certificate bytes) -> 32 bytes`` names the decided value in the audit
    chain (the node passes the PBFT batch digest). Raises sqlite3.DatabaseError when the
    file is not a meshnode database or has a newer schema.
    """

    def __init__(self, path: Path, *, digest_of: DigestOf = sha256_digest,
                 synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.path = Path(path)
        self.digest_of = digest_of
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        version = self.get_meta("schema_version")
        if version is None:
            self.put_meta("schema_version", str(SCHEMA_VERSION).encode())
        elif int(version) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{self.path} has schema {int(version)}; this meshnode knows {SCHEMA_VERSION}"
            )

    # ---- transactions ---------------------------------------------------------------
    def _tx(self):
        return _Transaction(self._db)

    def close(self) -> None:
        """Checkpoint the WAL and close the database."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # ---- consensus records -----------------------------------------------------------
    def append_records(self, records: Sequence[RecordLike]) -> None:
        """Durably append consensus records (one transaction; all or none survive a
        crash). ``decided`` records also extend the audit chain; a decided sequence
        number already in the chain is ignored there (restart re-delivery)."""
        if not records:
            return
        with self._tx():
            self._db.executemany(
                "INSERT INTO consensus_records (kind, seq, data) VALUES (?, ?, ?)",
                [(r.kind, r.seq, bytes(r.data)) for r in records],
            )
            for r in records:
                if r.kind == "decided":
                    self._append_audit(r.seq, bytes(r.data))

    def records(self) -> list[StoredRecord]:
        """All consensus records in the order they were appended."""
        rows = self._db.execute("SELECT kind, seq, data FROM consensus_records ORDER BY id")
        return [StoredRecord(k, s, bytes(d)) for k, s, d in rows]

    def compact(self, stable_seq: int) -> int:
        """Delete ``msg`` and ``prepared`` records with ``seq <= stable_seq`` and all but
        the newest ``stable`` record, once a stable checkpoint at ``stable_seq`` is on disk
        (consensus.persist, "Compaction"). The decided log is kept. Returns rows deleted.
        """
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM consensus_records WHERE kind IN ('msg', 'prepared') AND seq <= ?",
                (stable_seq,),
            )
            deleted = cur.rowcount
            cur = self._db.execute(
                "DELETE FROM consensus_records WHERE kind = 'stable' AND id < "
                "(SELECT MAX(id) FROM consensus_records WHERE kind = 'stable')"
            )
            return deleted + cur.rowcount

    # ---- decided log / audit chain ---------------------------------------------------
    def _append_audit(self, seq: int, certificate: bytes) -> None:
        row = self._db.execute("SELECT MAX(seq) FROM decided_log").fetchone()
        last = row[0]
        if last is not None and seq <= last:
            return
        if last is None or seq != last + 1:  # first entry, or a gap after state transfer
            prev = GENESIS_HASH
        else:
            prev = bytes(self._db.execute(
                "SELECT entry_hash FROM decided_log WHERE seq = ?", (last,)).fetchone()[0])
        value = self.digest_of(certificate)
        self._db.execute(
            "INSERT INTO decided_log (seq, certificate, value_digest, prev_hash, entry_hash) "
            "VALUES (?, ?, ?, ?, ?)",
            (seq, certificate, value, prev, audit_hash(prev, seq, value)),
        )

    def last_decided(self) -> int:
        """Highest decided sequence number in the audit chain (0 when empty)."""
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM decided_log").fetchone()[0]

    def decided(self, seq: int) -> bytes | None:
        """The commit certificate bytes decided at ``seq``, or None."""
        row = self._db.execute(
            "SELECT certificate FROM decided_log WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def audit_entries(self, start: int = 0, end: int | None = None) -> list[AuditEntry]:
        """Decided-log entries with ``start <= seq <= end`` (all by default), in order."""
        rows = self._db.execute(
            "SELECT seq, certificate, value_digest, prev_hash, entry_hash FROM decided_log "
            "WHERE seq >= ? AND seq <= ? ORDER BY seq",
            (start, end if end is not None else 2**62),
        )
        return [AuditEntry(s, bytes(c), bytes(v), bytes(p), bytes(h)) for s, c, v, p, h in rows]

    # ---- key-value -------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_meta(self, key: str, value: bytes) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, bytes(value)),
            )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error); nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._outer:
            return
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
