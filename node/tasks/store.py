"""Durable task queue in sqlite (WAL, ``synchronous=FULL``).

Theory of operation
-------------------
One row per task. Every change the engine makes is a :class:`Insert` or
:class:`Update`; :meth:`TaskStore.commit` writes a list of them in *one* transaction, so
the engine can group the writes of many tasks into one fsync (group commit) and a crash
(kill -9, power loss) keeps all of a batch or none of it. ``submit`` returns only after
the batch holding its insert is committed: an accepted task is on disk.

Idempotency keys are a ``UNIQUE`` column: an insert whose key exists inserts nothing and
resolves to the existing task's id (also within one batch).

Times (``created``, ``deadline``, ``not_before``, ``updated``) are the engine's clock in
seconds, which the engine keeps aligned with the wall clock so they survive restarts.

Two connections: the writer (used from one worker thread at a time) and a reader for
queries (WAL readers never block the writer and see only committed rows).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .schedule import ACTIVE, STATES

__all__ = ["Insert", "TaskRow", "TaskStore", "Update"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    type            TEXT    NOT NULL,
    input           BLOB    NOT NULL,
    state           TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    created         REAL    NOT NULL,
    deadline        REAL    NOT NULL,
    not_before      REAL    NOT NULL,
    updated         REAL    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    output          BLOB,
    reason          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state_seq ON tasks (state, seq);
"""
_COLUMNS = ("seq", "id", "type", "input", "state", "priority", "attempt", "max_attempts",
            "created", "deadline", "not_before", "updated", "idempotency_key", "output",
            "reason")


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as stored. ``attempt`` counts attempts started so far."""

    seq: int
    id: str
    type: str
    input: bytes
    state: str
    priority: int
    attempt: int
    max_attempts: int
    created: float
    deadline: float
    not_before: float
    updated: float
    idempotency_key: str | None
    output: bytes | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Insert:
    """A new queued task (``attempt`` 0)."""

    id: str
    type: str
    input: bytes
    priority: int
    max_attempts: int
    created: float
    deadline: float
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """Set ``state`` (and the given optional fields) of task ``id``."""

    id: str
    state: str
    updated: float
    attempt: int | None = None
    not_before: float | None = None
    output: bytes | None = None
    reason: str | None = None


def _row(values: tuple) -> TaskRow:
    d = dict(zip(_COLUMNS, values, strict=True))
    d["input"] = bytes(d["input"])
    d["output"] = None if d["output"] is None else bytes(d["output"])
    return TaskRow(**d)


class TaskStore:
    """The task table in the sqlite file ``path`` (created, mode 0600). ``synchronous``
    is ``"full"`` (default: a committed task survives power loss) or ``"normal"``."""

    def __init__(self, path: Path, *, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)
        self._w = self._connect(synchronous)
        self._w.executescript(_SCHEMA)
        row = self._w.execute("SELECT value FROM task_meta WHERE key='schema'").fetchone()
        if row is None:
            self._w.execute("INSERT INTO task_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"{self.path}: task schema {row[0]} is newer than "
                                        f"{SCHEMA_VERSION}")
        self._r = self._connect(synchronous)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        return db

    def close(self) -> None:
        """Checkpoint the WAL and close both connections."""
        try:
            self._r.close()
            self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._w.close()

    # ---- writes (one worker thread at a time) ------------------------------------------
    def commit(self, writes: list[Insert | Update]) -> list[tuple[str, bool, int] | None]:
        """Apply ``writes`` in order in one transaction. Returns, per write, for an
        :class:`Insert` ``(task_id, created, seq)`` (an existing idempotency key gives the
        existing task's id, ``created`` False) and for an :class:`Update` None."""
        out: list[tuple[str, bool, int] | None] = []
        db = self._w
        db.execute("BEGIN IMMEDIATE")
        try:
            for w in writes:
                out.append(self._insert(w) if isinstance(w, Insert) else self._update(w))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def _insert(self, w: Insert) -> tuple[str, bool, int]:
        cur = self._w.execute(
            "INSERT INTO tasks (id, type, input, state, priority, attempt, max_attempts, "
            "created, deadline, not_before, updated, idempotency_key, output, reason) "
            "VALUES (?, ?, ?, 'queued', ?, 0, ?, ?, ?, 0, ?, ?, NULL, '') "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (w.id, w.type, bytes(w.input), w.priority, w.max_attempts, w.created, w.deadline,
             w.created, w.idempotency_key),
        )
        if cur.rowcount == 1:
            return w.id, True, cur.lastrowid
        task_id, seq = self._w.execute(
            "SELECT id, seq FROM tasks WHERE idempotency_key = ?", (w.idempotency_key,)
        ).fetchone()
        return task_id, False, seq

    def _update(self, w: Update) -> None:
        if w.state not in STATES:
            raise ValueError(f"unknown task state {w.state!r}")
        sets, args = ["state = ?", "updated = ?"], [w.state, w.updated]
        for name in ("attempt", "not_before", "output", "reason"):
            value = getattr(w, name)
            if value is not None:
                sets.append(f"{name} = ?")
                args.append(value)
        self._w.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id = ?", (*args, w.id))
        return None

    def purge(self, updated_before: float) -> int:
        """Delete terminal tasks whose last change is older than ``updated_before``
        (one transaction); returns the number deleted."""
        marks = ", ".join("?" for _ in ACTIVE)
        db = self._w
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(f"DELETE FROM tasks WHERE state NOT IN ({marks}) AND updated < ?",
                             (*sorted(ACTIVE), updated_before))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.rowcount

    # ---- reads ---------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRow | None:
        row = self._r.execute(f"SELECT {', '.join(_COLUMNS)} FROM tasks WHERE id = ?",
                              (task_id,)).fetchone()
        return None if row is None else _row(row)

    def list(self, state: str | None = None, limit: int = 100) -> list[TaskRow]:
        """Tasks, newest first; only those in ``state`` when given."""
        cols = ", ".join(_COLUMNS)
        if state is None:
            rows = self._r.execute(f"SELECT {cols} FROM tasks ORDER BY seq DESC LIMIT ?",
                                   (limit,))
        else:
            if state not in STATES:
                raise ValueError(f"unknown task state {state!r} (one of {', '.join(STATES)})")
            rows = self._r.execute(
                f"SELECT {cols} FROM tasks WHERE state = ? ORDER BY seq DESC LIMIT ?",
                (state, limit))
        return [_row(r) for r in rows]

    def active(self) -> list[TaskRow]:
        """Queued and running tasks in submission order (for recovery at start-up)."""
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in ACTIVE)
        rows = self._r.execute(f"SELECT {cols} FROM tasks WHERE state IN ({marks}) ORDER BY seq",
                               tuple(sorted(ACTIVE)))
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of tasks per state (every state present, zero included)."""
        got = dict(self._r.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"))
        return {s: int(got.get(s, 0)) for s in STATES}
