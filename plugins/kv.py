"""Per-plugin key-value storage, kept by the node (sqlite), never opened by a plugin.

One sqlite file (WAL) for all plugins, by default ``<home>/data/plugins.db``; every row
is keyed by ``(plugin, key)`` so a plugin only ever reaches its own namespace (the
plugin name comes from the host, never from the plugin's request). Limits: keys up to
:data:`MAX_KEY_BYTES`, values up to :data:`MAX_VALUE_BYTES`, and a per-plugin quota on
the total bytes of keys and values (the ``kv_quota_bytes`` grant limit).

The methods are synchronous; the host calls them in a worker thread, one at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["KVError", "KVStore", "MAX_KEY_BYTES", "MAX_LIST", "MAX_VALUE_BYTES"]

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1024 * 1024
MAX_LIST = 1000


class KVError(ValueError):
    """A refused KV request (bad argument or quota), reported to the plugin."""


class KVStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (plugin TEXT NOT NULL, key BLOB NOT "
                         "NULL, value BLOB NOT NULL, PRIMARY KEY (plugin, key)) WITHOUT ROWID")
        self._db.execute("CREATE TABLE IF NOT EXISTS usage (plugin TEXT PRIMARY KEY, "
                         "bytes INTEGER NOT NULL)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _key(key: object) -> bytes:
        if type(key) is not bytes or not key or len(key) > MAX_KEY_BYTES:
            raise KVError(f"a key is 1..{MAX_KEY_BYTES} bytes")
        return key

    def get(self, plugin: str, key: object) -> bytes | None:
        key = self._key(key)
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE plugin=? AND key=?",
                                   (plugin, key)).fetchone()
        return None if row is None else bytes(row[0])

    def usage(self, plugin: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT bytes FROM usage WHERE plugin=?", (plugin,)).fetchone()
        return 0 if row is None else row[0]

    def put(self, plugin: str, key: object, value: object, *, quota: int) -> None:
        key = self._key(key)
        if type(value) is not bytes or len(value) > MAX_VALUE_BYTES:
            raise KVError(f"a value is at most {MAX_VALUE_BYTES} bytes")
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute("SELECT length(value) FROM kv WHERE plugin=? AND key=?",
                                 (plugin, key)).fetchone()
                used = db.execute("SELECT bytes FROM usage WHERE plugin=?",
                                  (plugin,)).fetchone()
                used = 0 if used is None else used[0]
                delta = len(value) - (old[0] if old else -len(key))
                if delta > 0 and used + delta > quota:
                    raise KVError(f"kv quota of {quota} bytes exceeded ({used} used)")
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (plugin, key, value))
                db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?)", (plugin, used + delta))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def delete(self, plugin: str, key: object) -> bool:
        key = self._key(key)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute("SELECT length(value) FROM kv WHERE plugin=? AND key=?",
                                 (plugin, key)).fetchone()
                if old:
                    db.execute("DELETE FROM kv WHERE plugin=? AND key=?", (plugin, key))
                    db.execute("UPDATE usage SET bytes = bytes - ? WHERE plugin=?",
                               (old[0] + len(key), plugin))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return bool(old)

    def keys(self, plugin: str, prefix: object, limit: object) -> list[bytes]:
        if type(prefix) is not bytes or len(prefix) > MAX_KEY_BYTES:
            raise KVError("prefix must be bytes")
        if type(limit) is not int or not 1 <= limit <= MAX_LIST:
            raise KVError(f"limit must be 1..{MAX_LIST}")
        with self._lock:
            if prefix:
                rows = self._db.execute(
                    "SELECT key FROM kv WHERE plugin=? AND substr(key, 1, ?)=? "
                    "ORDER BY key LIMIT ?", (plugin, len(prefix), prefix, limit)).fetchall()
            else:
                rows = self._db.execute("SELECT key FROM kv WHERE plugin=? ORDER BY key "
                                        "LIMIT ?", (plugin, limit)).fetchall()
        return [bytes(r[0]) for r in rows]
