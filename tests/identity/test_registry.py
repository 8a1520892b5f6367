"""Registry: verification on ingest, lookups, duplicity evidence, arrival-order independence."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identity_kit import T, make_log, signer

from identity import canonical
from identity.records import (
    EVENT_DOMAIN,
    KeyEvent,
    Reason,
    RecordDecodeError,
    RecordError,
    encode_log,
    incept,
    issue_record,
    key_digest,
    revoke,
    rotate,
    verify_log,
)
from identity.registry import DuplicityEvidence, Registry
from identity.soft import SoftSigner

ADDRS = ["/ip4/10.0.0.1/tcp/4001"]




def record(log, key, version=1, expires_at=T + 3600):
    return issue_record(key, log[0].identifier, version=version, listen_addrs=ADDRS,
                        issued_at=T, expires_at=expires_at)


def fork(log, keys, label="other"):
    """A second valid rotation at the sequence of log[1], signed by the committed key."""
    return rotate(log[:1], keys[1], signer(label).public_key, issued_at=T + 1)


def refused(action, reason: Reason) -> RecordError:
    with pytest.raises(RecordError) as exc:
        action()
    assert exc.value.reason == reason, exc.value
    return exc.value


def test_ingest_log_and_lookups():
    reg = Registry()
    log, keys = make_log("alice", rotations=1)
    state = reg.ingest_log(encode_log(log))
    assert state == verify_log(log) and len(reg) == 1 and log[0].identifier in reg
    assert reg.state(state.identifier) == state
    assert reg.by_key(keys[1].public_key) == state
    assert reg.by_peer_id(state.peer_id) == state
    assert reg.by_did(state.did) == state
    assert reg.by_key(keys[0].public_key) is None  # rotated out
    assert reg.by_peer_id("12D3KooWnot-a-peer") is None and reg.by_did("did:web:x") is None
    assert reg.state("mid:Iunknown") is None and reg.log("mid:Iunknown") == []
    assert reg.log(state.identifier) == log
    assert reg.identifiers() == [state.identifier]


def test_incremental_ingest_with_out_of_order_retry():
    reg = Registry()
    log, _ = make_log("bob", rotations=2)
    refused(lambda: reg.ingest_event(log[1]), Reason.OUT_OF_ORDER)  # before inception
    reg.ingest_event(log[0].to_bytes())
    refused(lambda: reg.ingest_event(log[2]), Reason.OUT_OF_ORDER)
    reg.ingest_event(log[1])
    assert reg.ingest_event(log[2]).sequence == 2
    assert reg.ingest_event(log[1]) == reg.ingest_event(log[0]) == verify_log(log)  # retries


def test_bad_signature_and_malformed_bytes_refused():
    reg = Registry()
    log, _ = make_log("carol")
    bad = log[0]._replace(signature=b"\x01" * 64)
    refused(lambda: reg.ingest_event(bad.to_bytes()), Reason.BAD_SIGNATURE)
    refused(lambda: reg.ingest_event(log[0].to_bytes()[:-1]), Reason.MALFORMED)
    refused(lambda: reg.ingest_event(b""), Reason.MALFORMED)
    rec = record(log, signer("carol/0"))
    refused(lambda: reg.ingest_event(rec.to_bytes()), Reason.MALFORMED)
    refused(lambda: reg.ingest_record(log[0].to_bytes()), Reason.MALFORMED)
    refused(lambda: reg.ingest_event(log[0]._replace(signature=None)), Reason.MALFORMED)
    refused(lambda: reg.ingest_event(log[0]._replace(body=1.5)), Reason.MALFORMED)
    assert len(reg) == 0


def test_records_follow_the_current_key():
    reg = Registry()
    log, keys = make_log("dave")
    refused(lambda: reg.ingest_record(record(log, keys[0])), Reason.UNKNOWN_IDENTIFIER)
    reg.ingest_log(log)
    rec1 = record(log, keys[0])
    assert reg.ingest_record(rec1.to_bytes(), now=T) == rec1
    assert reg.ingest_record(rec1) == rec1  # a retry is a no-op
    assert reg.record(log[0].identifier, now=T) == rec1
    assert reg.record(log[0].identifier, now=T + 3600) is None  # expired
    refused(lambda: reg.ingest_record(record(log, keys[0], version=1, expires_at=T + 7)),
            Reason.STALE)
    refused(lambda: reg.ingest_record(record(log, keys[0], version=2), now=T + 3600 * 2),
            Reason.EXPIRED)
    refused(lambda: reg.ingest_record(record(log, keys[1], version=2)), Reason.NOT_CURRENT_KEY)
    tampered = rec1._replace(signature=bytes(64))
    refused(lambda: reg.ingest_record(tampered), Reason.BAD_SIGNATURE)
    # rotation: the old record is dropped, the old key's records are refused
    rot = rotate(log, keys[1], keys[2].public_key, issued_at=T + 1)
    reg.ingest_event(rot)
    assert reg.record(log[0].identifier) is None
    refused(lambda: reg.ingest_record(record(log, keys[0], version=5)), Reason.NOT_CURRENT_KEY)
    refused(lambda: reg.ingest_record(record(log, keys[1], version=1)), Reason.STALE)
    rec2 = record(log, keys[1], version=2)
    reg.ingest_record(rec2)
    assert reg.record(log[0].identifier) == rec2
    assert reg.verify_record(rec2.to_bytes(), now=T).public_key == keys[1].public_key
    refused(lambda: reg.verify_record(rec1), Reason.NOT_CURRENT_KEY)


def test_revocation_refuses_everything_after():
    reg = Registry()
    log, keys = make_log("erin", rotations=1)
    reg.ingest_log(log)
    reg.ingest_record(record(log, keys[1]))
    rev = revoke(log, keys[2], issued_at=T + 5)
    state = reg.ingest_event(rev)
    assert state.revoked and reg.record(log[0].identifier) is None
    assert reg.by_key(keys[1].public_key).revoked  # the last operational key still resolves
    assert reg.by_key(keys[2].public_key).revoked
    refused(lambda: reg.ingest_record(record(log, keys[1], version=9)), Reason.REVOKED)
    refused(lambda: reg.verify_record(record(log, keys[1], version=9)), Reason.REVOKED)
    after = _signed_successor([*log, rev], keys[2])
    refused(lambda: reg.ingest_event(after), Reason.REVOKED)
    assert reg.ingest_event(rev) == state  # retry of the revocation itself


def _signed_successor(log, key):
    last = log[-1]
    body = canonical.encode({"t": "rot", "i": last.identifier, "s": last.sequence + 1,
                             "p": last.digest, "k": key.public_key,
                             "n": key_digest(signer("z").public_key), "dt": last.issued_at})
    sig = key.sign(EVENT_DOMAIN + body)
    return KeyEvent.from_bytes(msgpack.packb([body, sig], use_bin_type=True))


def test_fork_is_kept_as_reverifiable_duplicity_evidence():
    reg = Registry()
    log, keys = make_log("frank", rotations=2)
    reg.ingest_log(log)
    rec = record(log, keys[2])
    reg.ingest_record(rec)
    conflicting = fork(log, keys)
    err = refused(lambda: reg.ingest_event(conflicting), Reason.FORK)
    assert "sequence 1" in str(err)
    state = reg.state(log[0].identifier)
    assert state.duplicitous and state.sequence == 2  # first seen history stays
    [evidence] = reg.evidence(log[0].identifier)
    assert evidence.verify() == log[0].identifier
    assert {evidence.first, evidence.second} == {log[1], conflicting}
    assert evidence.first.digest < evidence.second.digest and evidence.sequence == 1
    again = DuplicityEvidence.from_bytes(evidence.to_bytes())
    assert again == evidence and again.verify() == log[0].identifier
    refused(lambda: reg.ingest_event(conflicting), Reason.FORK)  # same evidence, not twice
    assert len(reg.evidence(log[0].identifier)) == 1
    # a duplicitous identity is quarantined
    refused(lambda: reg.ingest_record(record(log, keys[2], version=2)), Reason.DUPLICITOUS)
    assert reg.record(log[0].identifier) is None
    refused(lambda: reg.ingest_event(rotate(log, keys[3], signer("q").public_key,
                                            issued_at=T + 9)), Reason.DUPLICITOUS)


def test_bad_evidence_does_not_verify():
    log, keys = make_log("gina", rotations=1)
    conflicting = fork(log, keys)
    good = DuplicityEvidence.of(log[:1], log[1], conflicting)
    assert good.verify() == log[0].identifier
    cases = [
        (DuplicityEvidence.of(log[:1], log[1], log[1]), Reason.MALFORMED),  # same event
        (DuplicityEvidence((), log[1], conflicting), Reason.MALFORMED),  # no prefix
        (DuplicityEvidence.of(log[:1], log[1], conflicting._replace(signature=bytes(64))),
         Reason.BAD_SIGNATURE),
        (DuplicityEvidence.of(log[:1], log[1], _signed_successor(log[:1], signer("x"))),
         Reason.WRONG_NEXT_KEY),
    ]
    for evidence, reason in cases:
        refused(evidence.verify, reason)
    for data in (b"", canonical.encode([1, 2, 3]), canonical.encode([[b"x"], b"", b""])):
        with pytest.raises(RecordDecodeError):
            DuplicityEvidence.from_bytes(data)


def test_invalid_alternative_event_is_no_duplicity():
    reg = Registry()
    log, keys = make_log("hank", rotations=1)
    reg.ingest_log(log)
    stranger = _signed_successor(log[:1], signer("thief"))
    refused(lambda: reg.ingest_event(stranger), Reason.WRONG_NEXT_KEY)
    assert not reg.state(log[0].identifier).duplicitous and reg.evidence(log[0].identifier) == []


def test_a_key_names_one_identity():
    reg = Registry()
    log, keys = make_log("ivan")
    reg.ingest_log(log)
    twin = incept(keys[0], signer("twin-next").public_key, issued_at=T + 1)
    refused(lambda: reg.ingest_event(twin), Reason.KEY_IN_USE)
    other, other_keys = make_log("judy")
    reg.ingest_log(other)
    steal = rotate(other, other_keys[1], keys[0].public_key, issued_at=T + 2)
    reg.ingest_event(steal)  # committing to a key in use is allowed until it is revealed
    assert len(reg) == 2


def test_ingest_batch_reports_per_item_and_ignores_the_map():
    log_a, keys_a = make_log("kate", rotations=1)
    log_b, keys_b = make_log("liam")
    items = [
        log_a[0].to_bytes(), b"garbage", log_a[1], record(log_a, keys_a[1]).to_bytes(),
        record(log_b, keys_b[0]), log_b[0], fork(log_a, keys_a).to_bytes(),
        log_a[0]._replace(signature=bytes(64)), record(log_b, keys_b[0]),
    ]
    expected = [None, Reason.MALFORMED, None, None, Reason.UNKNOWN_IDENTIFIER, None,
                Reason.FORK, Reason.BAD_SIGNATURE, None]
    with ThreadPoolExecutor(2) as pool:
        for kwargs in ({}, {"parallel_map": pool.map, "chunk_size": 2}):
            reg = Registry()
            results = reg.ingest_batch(items, now=T, **kwargs)
            assert [r if r is None else r.reason for r in results] == expected
            assert reg.identifiers() == sorted([log_a[0].identifier, log_b[0].identifier])


def test_ten_thousand_identities():
    n = 10_000
    rng = random.Random(7)
    items, first = [], None
    for i in range(n):
        key = SoftSigner(rng.randbytes(32))
        icp = incept(key, rng.randbytes(32), issued_at=T)
        first = first or (icp, key)
        items += [icp.to_bytes(), issue_record(key, icp.identifier, version=1,
                                               listen_addrs=[f"/ip4/10.0.0.{i % 250}/tcp/1"],
                                               issued_at=T, expires_at=T + 60).to_bytes()]
    reg = Registry()
    assert all(r is None for r in reg.ingest_batch(items, now=T))
    assert len(reg) == n
    icp, key = first
    assert reg.by_peer_id(reg.state(icp.identifier).peer_id).public_key == key.public_key
    assert reg.record(icp.identifier, now=T).public_key == key.public_key


# ---------------------------------------------------------------- arrival order


def _world(duplicity: bool):
    """Logs of several identities (with rotations, a revocation, optionally a fork)."""
    events = []
    for name, rotations, revoked in [("w0", 0, False), ("w1", 2, False), ("w2", 1, True),
                                     ("w3", 3, False)]:
        log, keys = make_log(name, rotations, revoked)
        events += log
        if duplicity and name == "w3":
            events.append(fork(log, keys))
    return events


def _deliver(events, order, duplicates):
    """Deliver in ``order`` (plus duplicates), then retry refused events until stable."""
    reg = Registry()
    pending = [events[i] for i in order] + [events[i] for i in duplicates]
    while True:
        retry = []
        for event in pending:
            try:
                reg.ingest_event(event)
            except RecordError as exc:
                if exc.reason == Reason.OUT_OF_ORDER:
                    retry.append(event)
        if not retry or len(retry) == len(pending):
            return reg
        pending = retry


def _snapshot(reg: Registry, full: bool):
    out = []
    for identifier in reg.identifiers():
        state = reg.state(identifier)
        evidence = [e.to_bytes() for e in reg.evidence(identifier)]
        if full or not state.duplicitous:
            out.append((identifier, state, [e.digest for e in reg.log(identifier)], evidence))
        else:
            out.append((identifier, state.duplicitous, evidence))
    return out


@settings(max_examples=40, deadline=None)
@given(st.data(), st.booleans())
def test_final_state_does_not_depend_on_arrival_order(data, duplicity):
    events = _world(duplicity)
    reference = _snapshot(_deliver(events, range(len(events)), []), full=False)
    order = data.draw(st.permutations(range(len(events))))
    duplicates = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=6))
    assert _snapshot(_deliver(events, order, duplicates), full=False) == reference
    if not duplicity:
        assert all(len(entry) == 4 for entry in reference)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_break_the_registry(data):
    reg = Registry()
    log, _ = make_log("fuzz")
    reg.ingest_log(log)
    before = _snapshot(reg, full=True)
    for action in (reg.ingest_event, reg.ingest_record, reg.verify_record, reg.ingest_log,
                   DuplicityEvidence.from_bytes):
        try:
            action(data)
        except RecordError:
            pass
    assert reg.ingest_batch([data, data])[0] is not None or data == log[0].to_bytes()
    assert _snapshot(reg, full=True) == before
