"""node.storage: real sqlite (WAL) on disk, including a kill -9 in the middle of writes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from node.storage import (
    AuditEntry,
    AuditError,
    Storage,
    StoredRecord,
    audit_hash,
    sha256_digest,
    verify_audit_chain,
)


def rec(kind: str, seq: int, data: bytes = b"x") -> StoredRecord:
    return StoredRecord(kind, seq, data)


def test_records_round_trip_in_append_order(tmp_path):
    db = Storage(tmp_path / "node.db")
    batch1 = [rec("msg", 1, b"a"), rec("prepared", 1, b"b")]
    batch2 = [rec("msg", 2, b"c"), rec("view", 0, b"d")]
    db.append_records(batch1)
    db.append_records(batch2)
    db.close()
    assert Storage(tmp_path / "node.db").records() == batch1 + batch2


def test_compaction_keeps_decided_and_newest_stable(tmp_path):
    db = Storage(tmp_path / "node.db")
    db.append_records([rec("msg", s) for s in range(1, 6)] + [rec("prepared", 3)])
    db.append_records([rec("decided", s, b"cert%d" % s) for s in range(1, 5)])
    db.append_records([rec("stable", 2, b"s2"), rec("stable", 4, b"s4"), rec("msg", 9)])
    db.compact(4)
    kinds = [(r.kind, r.seq) for r in db.records()]
    assert ("msg", 5) in kinds and ("msg", 9) in kinds
    assert not [k for k in kinds if k[0] in ("msg", "prepared") and k[1] <= 4]
    assert [k for k in kinds if k[0] == "stable"] == [("stable", 4)]
    assert [k for k in kinds if k[0] == "decided"] == [("decided", s) for s in range(1, 5)]


def test_audit_chain_links_decisions_and_detects_tampering(tmp_path):
    db = Storage(tmp_path / "node.db")
    for s in range(1, 6):
        db.append_records([rec("decided", s, b"certificate-%d" % s)])
    db.append_records([rec("decided", 3, b"redelivered after restart")])  # ignored
    entries = db.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5] and db.last_decided() == 5
    assert db.decided(3) == b"certificate-3"
    head = verify_audit_chain(entries)
    assert head == entries[-1].entry_hash
    assert verify_audit_chain(db.audit_entries(3)) == head  # an export may start later
    forged = list(entries)
    e3 = entries[2]
    forged[2] = AuditEntry(3, b"forged", e3.value_digest, e3.prev_hash, e3.entry_hash)
    with pytest.raises(AuditError, match="entry 3"):
        verify_audit_chain(forged)
    value = sha256_digest(b"forged")
    rehashed = AuditEntry(3, b"forged", value, e3.prev_hash, audit_hash(e3.prev_hash, 3, value))
    with pytest.raises(AuditError, match="entry 4 does not follow"):
        verify_audit_chain([*entries[:2], rehashed, *entries[3:]])
    with pytest.raises(AuditError, match="does not follow"):
        verify_audit_chain([entries[0], entries[2]])


def test_chain_names_the_decided_value_not_the_certificate_bytes(tmp_path):
    # Two replicas hold different certificates (different COMMIT subsets) for the same
    # decided value: their chains must be identical.
    value_of = lambda cert: sha256_digest(cert.split(b"|")[0])  # noqa: E731
    a = Storage(tmp_path / "a.db", digest_of=value_of)
    b = Storage(tmp_path / "b.db", digest_of=value_of)
    for s in range(1, 4):
        a.append_records([rec("decided", s, b"batch-%d|commits from 1,2,3" % s)])
        b.append_records([rec("decided", s, b"batch-%d|commits from 2,3,4" % s)])
    ha = verify_audit_chain(a.audit_entries(), value_of)
    assert ha == verify_audit_chain(b.audit_entries(), value_of)
    with pytest.raises(AuditError, match="value digest"):
        verify_audit_chain(a.audit_entries())  # wrong digest function: mismatch caught


def test_state_transfer_gap_starts_a_new_segment_that_verifies(tmp_path):
    db = Storage(tmp_path / "node.db")
    db.append_records([rec("decided", 1), rec("decided", 2)])
    db.append_records([rec("stable", 16, b"checkpoint"), rec("decided", 17)])  # caught up
    db.append_records([rec("decided", 18)])
    entries = db.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 17, 18]
    assert entries[2].prev_hash == bytes(32) and entries[3].prev_hash == entries[2].entry_hash
    assert verify_audit_chain(entries) == entries[3].entry_hash
    # A zero prev_hash without a gap is not a segment start: refused.
    bogus = AuditEntry(3, b"x", sha256_digest(b"x"), bytes(32),
                       audit_hash(bytes(32), 3, sha256_digest(b"x")))
    with pytest.raises(AuditError, match="does not follow"):
        verify_audit_chain([*entries[:2], bogus])


def test_meta_and_schema_guard(tmp_path):
    path = tmp_path / "node.db"
    db = Storage(path)
    db.put_meta("k", b"1")
    db.put_meta("k", b"2")
    assert db.get_meta("k") == b"2" and db.get_meta("missing") is None
    db.put_meta("schema_version", b"99")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema 99"):
        Storage(path)


WRITER = textwrap.dedent("""
    import sys
    from node.storage import Storage, StoredRecord
    db = Storage(sys.argv[1])
    n = 0
    while True:
        n += 1
        db.append_records([StoredRecord("msg", n, b"%d/%d" % (n, i)) for i in range(10)]
                          + [StoredRecord("decided", n, b"cert-%d" % n)])
        print(n, flush=True)
""")


def test_kill_9_mid_write_leaves_whole_transactions_only(tmp_path):
    path = tmp_path / "node.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    acked = 0
    while acked < 40:  # wait for 40 acknowledged appends, then kill without warning
        line = proc.stdout.readline()
        assert line, "writer died early"
        acked = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = Storage(path)
    records = db.records()
    msgs = [r for r in records if r.kind == "msg"]
    assert len(msgs) % 10 == 0 and len(msgs) // 10 >= acked
    batches = len(msgs) // 10
    assert db.last_decided() == batches
    verify_audit_chain(db.audit_entries())
