"""Key event logs (pre-rotation, rotation, revocation) and signed identity records."""

from __future__ import annotations

import hashlib
import pickle
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identity_kit import T, make_log, signer

from identity import canonical
from identity.did import did_key_from_public_key, peer_id_from_public_key
from identity.records import (
    EVENT_DOMAIN,
    MAX_ADDRS,
    RECORD_DOMAIN,
    IdentityRecord,
    KeyEvent,
    Reason,
    RecordDecodeError,
    RecordError,
    apply_event,
    decode_log,
    decode_signed,
    encode_log,
    identifier_from_digest,
    incept,
    issue_record,
    key_digest,
    revoke,
    rotate,
    verify_log,
    verify_record,
)
from identity.soft import SoftSigner

ADDRS = ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/4001/quic-v1"]




def frame(body: bytes, signature: bytes) -> bytes:
    return msgpack.packb([body, signature], use_bin_type=True)


def sign_event(key: SoftSigner, fields: dict) -> KeyEvent:
    """A hand-made event signed by ``key``, bypassing every builder check."""
    body = canonical.encode(fields)
    return KeyEvent.from_bytes(frame(body, key.sign(EVENT_DOMAIN + body)))


def successor(log, key, *, kind="rot", nxt=None, prior=None, seq=None, dt=None, ident=None):
    last = log[-1]
    return sign_event(key, {
        "t": kind, "i": ident or last.identifier, "s": last.sequence + 1 if seq is None else seq,
        "p": last.digest if prior is None else prior, "k": key.public_key,
        "n": key_digest(signer("fresh").public_key) if nxt is None else nxt,
        "dt": last.issued_at if dt is None else dt,
    })


def reason_of(excinfo) -> Reason:
    return excinfo.value.reason


# ---------------------------------------------------------------- key event log


def test_inception_state_and_identifier():
    log, keys = make_log("alice")
    icp = log[0]
    state = verify_log(log)
    assert re.fullmatch(r"mid:I[A-Za-z0-9_-]{43}", state.identifier)
    assert state.identifier == icp.identifier == identifier_from_digest(icp.digest)
    assert icp.digest == hashlib.sha256(icp.body).digest()
    assert (state.sequence, state.seq, state.establishment_seq) == (0, 0, 0)
    assert state.public_key == state.current_key == keys[0].public_key
    assert state.next_digest == hashlib.sha256(keys[1].public_key).digest()
    assert state.last_digest == icp.digest and state.issued_at == T
    assert not state.revoked and not state.duplicitous
    assert state.did == did_key_from_public_key(keys[0].public_key)
    assert state.peer_id == peer_id_from_public_key(keys[0].public_key)
    assert len(icp.signature) == 64 and icp.prior == b"" and icp.kind == "icp"


def test_identifier_commits_to_next_key_and_time():
    a = incept(signer("k"), signer("n1").public_key, issued_at=T).identifier
    b = incept(signer("k"), signer("n2").public_key, issued_at=T).identifier
    c = incept(signer("k"), signer("n1").public_key, issued_at=T + 1).identifier
    assert len({a, b, c}) == 3


def test_rotation_keeps_identifier_and_promotes_committed_key():
    log, keys = make_log("bob", rotations=2)
    state = verify_log(log)
    assert state.identifier == log[0].identifier
    assert state.sequence == 2 and state.public_key == keys[2].public_key
    assert state.next_digest == key_digest(keys[3].public_key)
    assert [e.prior for e in log[1:]] == [e.digest for e in log[:-1]]
    assert verify_log(log[:2]).public_key == keys[1].public_key


def test_event_and_log_round_trip():
    log, _ = make_log("carol", rotations=1, revoked=True)
    for event in log:
        assert KeyEvent.from_bytes(event.to_bytes()) == event
        assert decode_signed(event.to_bytes()) == event
    assert decode_log(encode_log(log)) == log
    assert verify_log(decode_log(encode_log(log))) == verify_log(log)


def test_tampered_events_rejected():
    log, keys = make_log("dave", rotations=1)
    icp = log[0]
    bad_sig = icp._replace(signature=bytes([icp.signature[0] ^ 1]) + icp.signature[1:])
    with pytest.raises(RecordError) as exc:
        verify_log([KeyEvent.from_bytes(bad_sig.to_bytes())])
    assert reason_of(exc) == Reason.BAD_SIGNATURE
    # another body under the original signature
    body = canonical.encode({"t": "icp", "s": 0, "k": keys[0].public_key,
                             "n": key_digest(keys[1].public_key), "dt": T + 5})
    with pytest.raises(RecordError) as exc:
        verify_log([KeyEvent.from_bytes(frame(body, icp.signature))])
    assert reason_of(exc) == Reason.BAD_SIGNATURE
    # hand-built fields that disagree with the signed body are re-derived, so refused
    forged = log[1]._replace(public_key=keys[0].public_key)
    assert verify_log([log[0], forged]) == verify_log(log)
    for junk in (icp._replace(body="text"), icp._replace(signature=None), "not an event",
                 make_record(log, keys[0])):
        with pytest.raises(RecordDecodeError):
            verify_log([junk])


@pytest.mark.parametrize(("order", "reason"), [
    ([0, 2, 1], Reason.OUT_OF_ORDER),  # reordered
    ([0, 2], Reason.OUT_OF_ORDER),  # gap
    ([0, 1, 1], Reason.OUT_OF_ORDER),  # replayed rotation
    ([0, 0], Reason.OUT_OF_ORDER),  # replayed inception
    ([1, 2], Reason.OUT_OF_ORDER),  # no inception
    ([], Reason.MALFORMED),  # empty
])
def test_reordered_and_replayed_events_rejected(order, reason):
    log, _ = make_log("erin", rotations=2)
    with pytest.raises(RecordError) as exc:
        verify_log([log[i] for i in order])
    assert reason_of(exc) == reason


def test_broken_chain_rejected():
    log, keys = make_log("frank")
    event = successor(log, keys[1], prior=b"\x00" * 32)
    with pytest.raises(RecordError) as exc:
        verify_log([*log, event])
    assert reason_of(exc) == Reason.BROKEN_CHAIN


def test_rotation_needs_the_committed_key():
    log, keys = make_log("gina")
    for wrong in (keys[0], keys[2], signer("thief")):  # current key, later key, stranger
        with pytest.raises(RecordError) as exc:
            rotate(log, wrong, signer("x").public_key, issued_at=T + 1)
        assert reason_of(exc) == Reason.WRONG_NEXT_KEY
        with pytest.raises(RecordError) as exc:
            verify_log([*log, successor(log, wrong)])
        assert reason_of(exc) == Reason.WRONG_NEXT_KEY


def test_key_reuse_and_time_going_backwards_rejected():
    with pytest.raises(RecordError) as exc:
        incept(signer("k"), signer("k").public_key, issued_at=T)
    assert reason_of(exc) == Reason.KEY_REUSE
    log, keys = make_log("hank")
    with pytest.raises(RecordError) as exc:
        rotate(log, keys[1], keys[1].public_key, issued_at=T)
    assert reason_of(exc) == Reason.KEY_REUSE
    with pytest.raises(RecordError) as exc:
        verify_log([*log, successor(log, keys[1], nxt=key_digest(keys[1].public_key))])
    assert reason_of(exc) == Reason.KEY_REUSE
    with pytest.raises(RecordError) as exc:
        rotate(log, keys[1], keys[2].public_key, issued_at=T - 1)
    assert reason_of(exc) == Reason.BAD_TIME
    with pytest.raises(RecordError) as exc:
        verify_log([*log, successor(log, keys[1], dt=T - 1)])
    assert reason_of(exc) == Reason.BAD_TIME


def test_events_of_another_identifier_rejected():
    log, keys = make_log("ivan")
    other, _ = make_log("judy")
    event = successor(log, keys[1], ident=other[0].identifier)
    with pytest.raises(RecordError) as exc:
        verify_log([*log, event])
    assert reason_of(exc) == Reason.WRONG_IDENTIFIER


def test_revocation_needs_the_pre_rotated_key():
    log, keys = make_log("kate", rotations=1)
    with pytest.raises(RecordError) as exc:  # a stolen current key cannot revoke
        revoke(log, keys[1], issued_at=T + 9)
    assert reason_of(exc) == Reason.WRONG_NEXT_KEY
    event = revoke(log, keys[2], issued_at=T + 9)
    state = verify_log([*log, event])
    assert state.revoked and state.next_digest == b"" and state.sequence == 2
    assert event.kind == "rev" and event.public_key == keys[2].public_key


def test_nothing_accepted_after_revocation():
    log, keys = make_log("liam", revoked=True)
    for attempt in (lambda: rotate(log, keys[1], keys[2].public_key, issued_at=T + 5),
                    lambda: revoke(log, keys[1], issued_at=T + 5)):
        with pytest.raises(RecordError) as exc:
            attempt()
        assert reason_of(exc) == Reason.REVOKED
    with pytest.raises(RecordError) as exc:
        verify_log([*log, successor(log, keys[1])])
    assert reason_of(exc) == Reason.REVOKED


def test_apply_event_incremental_matches_verify_log():
    log, _ = make_log("mia", rotations=2, revoked=True)
    state = None
    for event in log:
        assert event.signature_valid()
        state = apply_event(state, event)
    assert state == verify_log(log)
    bad = log[0]._replace(signature=b"\x00" * 64)
    with pytest.raises(RecordError) as exc:
        apply_event(None, bad)
    assert reason_of(exc) == Reason.BAD_SIGNATURE
    assert apply_event(None, bad, verified=True).identifier == log[0].identifier


class _LyingSigner:
    public_key = signer("liar").public_key

    def sign(self, data: bytes) -> bytes:
        return b"\x00" * 64


def test_misbehaving_signer_fails_closed():
    with pytest.raises(RecordError) as exc:
        incept(_LyingSigner(), signer("n").public_key, issued_at=T)
    assert reason_of(exc) == Reason.BAD_SIGNATURE


@pytest.mark.parametrize("bad", [
    {"issued_at": -1}, {"issued_at": 1.5}, {"issued_at": True}, {"next_public_key": b"x" * 31},
])
def test_builder_input_errors(bad):
    args = {"issued_at": T, "next_public_key": signer("n").public_key} | bad
    with pytest.raises(RecordError) as exc:
        incept(signer("k"), args["next_public_key"], issued_at=args["issued_at"])
    assert reason_of(exc) == Reason.MALFORMED


# ---------------------------------------------------------------- identity records


def make_record(log, key, **overrides):
    args = {"version": 1, "listen_addrs": ADDRS, "issued_at": T, "expires_at": T + 3600}
    return issue_record(key, log[0].identifier, **(args | overrides))


def test_record_binds_identifier_key_did_peer_id():
    log, keys = make_log("nina")
    record = make_record(log, keys[0])
    verify_record(record, verify_log(log), now=T + 10)
    assert record.listen_addrs == tuple(ADDRS) and record.version == 1
    assert record.did == did_key_from_public_key(keys[0].public_key)
    assert record.peer_id == peer_id_from_public_key(keys[0].public_key)
    assert IdentityRecord.from_bytes(record.to_bytes()) == record
    assert decode_signed(record.to_bytes()) == record
    assert record.digest == hashlib.sha256(record.body).digest()


def test_record_refusals():
    log, keys = make_log("owen")
    state = verify_log(log)
    record = make_record(log, keys[0])
    rotated = [*log, rotate(log, keys[1], keys[2].public_key, issued_at=T + 1)]
    revoked = [*log, revoke(log, keys[1], issued_at=T + 1)]
    other, other_keys = make_log("pam")
    tampered = IdentityRecord.from_bytes(frame(
        make_record(log, keys[0], version=2).body, record.signature))
    cases = [
        (record, verify_log(rotated), None, Reason.NOT_CURRENT_KEY),
        (record, verify_log(revoked), None, Reason.REVOKED),
        (record, state._replace(duplicitous=True), None, Reason.DUPLICITOUS),
        (record, state, T + 3600, Reason.EXPIRED),
        (record, verify_log(other), None, Reason.WRONG_IDENTIFIER),
        (tampered, state, None, Reason.BAD_SIGNATURE),
        (make_record(log, other_keys[0]), state, None, Reason.NOT_CURRENT_KEY),
    ]
    for rec, key_state, now, reason in cases:
        with pytest.raises(RecordError) as exc:
            verify_record(rec, key_state, now=now)
        assert reason_of(exc) == reason
    verify_record(make_record(rotated, keys[1]), verify_log(rotated), now=T + 3599)


def test_signatures_are_domain_separated():
    log, keys = make_log("quinn")
    record = make_record(log, keys[0])
    as_event_sig = keys[0].sign(EVENT_DOMAIN + record.body)
    forged = IdentityRecord.from_bytes(frame(record.body, as_event_sig))
    assert not forged.signature_valid()
    icp = log[0]
    assert not KeyEvent.from_bytes(frame(icp.body, keys[0].sign(RECORD_DOMAIN + icp.body))
                                   ).signature_valid()


@pytest.mark.parametrize("bad", [
    {"expires_at": T}, {"expires_at": T - 1}, {"version": -1}, {"version": 1.0},
    {"listen_addrs": ["not-a-multiaddr"]}, {"listen_addrs": ["/ip4/1.2.3.4 /tcp/1"]},
    {"listen_addrs": ["/" + "x" * 300]}, {"listen_addrs": ["/ip4/1.1.1.1"] * (MAX_ADDRS + 1)},
    {"listen_addrs": [b"/ip4/1.1.1.1"]}, {"issued_at": None},
])
def test_record_builder_refuses_bad_fields(bad):
    log, keys = make_log("rita")
    with pytest.raises(RecordError) as exc:
        make_record(log, keys[0], **bad)
    assert reason_of(exc) == Reason.MALFORMED


# ---------------------------------------------------------------- decoding


def _resigned(key, fields_in_order: dict, domain=EVENT_DOMAIN) -> bytes:
    body = msgpack.packb(fields_in_order, use_bin_type=True)
    return frame(body, key.sign(domain + body))


def test_non_canonical_encodings_rejected_even_when_signed():
    key, nxt = signer("s"), key_digest(signer("n").public_key)
    fields = {"dt": T, "k": key.public_key, "n": nxt, "s": 0, "t": "icp"}
    KeyEvent.from_bytes(_resigned(key, fields))  # canonical: fine
    unsorted = dict(reversed(list(fields.items())))
    bad_bodies = [
        _resigned(key, unsorted),
        _resigned(key, fields | {"x": 1}),  # extra field
        _resigned(key, fields | {"s": True}),  # bool is not a sequence number
        _resigned(key, fields | {"t": "ixn"}),  # unknown kind
        _resigned(key, fields | {"s": 1}),  # inception not at 0
        _resigned(key, {k: v for k, v in fields.items() if k != "n"}),
    ]
    event = KeyEvent.from_bytes(_resigned(key, fields))
    long_frame = b"\x92\xc5" + len(event.body).to_bytes(2, "big") + event.body
    bad_frames = [
        long_frame + b"\xc4\x40" + event.signature,  # bin16 header for a short body
        event.to_bytes() + b"\x00",  # trailing byte
        msgpack.packb([event.body, event.signature, b""], use_bin_type=True),
        msgpack.packb([event.body, event.signature[:63]], use_bin_type=True),
        msgpack.packb({"b": event.body}, use_bin_type=True),
    ]
    for data in bad_bodies + bad_frames:
        with pytest.raises(RecordDecodeError):
            KeyEvent.from_bytes(data)


def test_decoders_refuse_the_other_kind_and_oversize():
    log, keys = make_log("sam")
    record = make_record(log, keys[0])
    with pytest.raises(RecordDecodeError):
        KeyEvent.from_bytes(record.to_bytes())
    with pytest.raises(RecordDecodeError):
        IdentityRecord.from_bytes(log[0].to_bytes())
    with pytest.raises(RecordDecodeError):
        decode_signed(b"\x00" * 20_000)
    with pytest.raises(RecordDecodeError):
        decode_log(canonical.encode([b"junk"]))
    with pytest.raises(RecordDecodeError):
        decode_log(canonical.encode(["not bytes"]))


def test_record_error_is_machine_readable_and_picklable():
    err = RecordError(Reason.FORK, "two events")
    assert isinstance(err, ValueError) and err.reason == "fork" and "two events" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert again.reason == Reason.FORK and again.detail == "two events"
    dec = pickle.loads(pickle.dumps(RecordDecodeError("bad")))
    assert isinstance(dec, RecordDecodeError) and dec.reason == Reason.MALFORMED


_DECODERS = [decode_signed, KeyEvent.from_bytes, IdentityRecord.from_bytes, decode_log]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_record_decode_error(data):
    for decoder in _DECODERS:
        try:
            decoder(data)
        except RecordDecodeError:
            pass


_field_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1), st.binary(max_size=40),
    st.text(max_size=60), st.booleans(), st.none(), st.lists(st.text(max_size=5), max_size=3),
    st.sampled_from(["icp", "rot", "rev", "rec"]), st.binary(min_size=32, max_size=32),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "i", "s", "p", "k", "n", "dt", "exp", "a", "x"]),
                       _field_values, max_size=8),
       st.binary(min_size=64, max_size=64))
def test_structured_garbage_raises_only_record_decode_error(fields, signature):
    data = frame(canonical.encode(fields), signature)
    try:
        obj = decode_signed(data)
    except RecordDecodeError:
        return
    assert obj.to_bytes() == data
    assert not obj.signature_valid()


_VALID, _KEYS = make_log("fuzz", rotations=1)
_VALID_BYTES = [e.to_bytes() for e in _VALID] + [make_record(_VALID, _KEYS[1]).to_bytes()]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_VALID_BYTES), st.data())
def test_mutated_objects_never_verify(original, data):
    pos = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    mutated = original[:pos] + bytes([original[pos] ^ mask]) + original[pos + 1:]
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (mutated, mutated[:cut]):
        if candidate == original:
            continue
        try:
            obj = decode_signed(candidate)
        except RecordDecodeError:
            continue
        assert not obj.signature_valid()
