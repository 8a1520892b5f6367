"""Wire codec: round trips, strictness, and arbitrary bytes raise only MessageDecodeError."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.messages import (
    Batch,
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    Evidence,
    Member,
    MembershipProof,
    MessageDecodeError,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Request,
    StateReply,
    StateRequest,
    ViewChange,
    batch_digest,
    decode_message,
    encode_message,
)
from identity.canonical import DecodeError, encode
from identity.canonical import decode as canonical_decode
from identity.soft import SoftSigner

SIGNER = SoftSigner(bytes(range(32)))


def _sign(m):
    return dataclasses.replace(m, sig=SIGNER.sign(m.signing_bytes()))


def samples() -> list[object]:
    batch = Batch(3, "r001", (_sign(Request("c", 1, b"op", "r001")),
                              _sign(Request("d", 2, b"", "r002"))), ())
    d = batch_digest(batch)
    pp = _sign(PrePrepare(3, 7, d, "r001", batch=batch))
    prep = _sign(Prepare(3, 7, d, "r002"))
    com = _sign(Commit(3, 7, d, "r002"))
    ck = _sign(Checkpoint(16, bytes(32), "r002"))
    proof = CheckpointProof(16, bytes(32), (ck,))
    pproof = PreparedProof(3, 7, d, "r001", pp.sig, b"\x60", prep.sig * 2)
    vc = _sign(ViewChange(4, proof, (pproof,), 20, "r002"))
    bare = PrePrepare(4, 7, d, "r001", pp.sig)
    nv = _sign(NewView(4, (vc.summary(),), proof, (pproof,), (bare,), "r001"))
    cert = CommitCertificate(7, 3, batch, (com,))
    return [_sign(Request("c", 1, b"x", "r003")), pp, prep, com, ck, vc, nv, StateRequest(5),
            StateReply(proof, b"snap", (cert,)), cert, Evidence(b"a", b"b"), batch, proof,
            pproof, vc.summary(),
            MembershipProof(proof, bytes(32), bytes(32), (Member("r001", bytes(32)),))]


def test_round_trip_every_kind() -> None:
    for m in samples():
        data = encode_message(m)
        back = decode_message(data)
        assert back == m and type(back) is type(m)
        assert encode_message(back) == data


def test_a_view_change_summary_carries_the_view_change_signature() -> None:
    vc = samples()[5]
    summary = vc.summary()
    assert summary.signing_bytes() == vc.signing_bytes()
    assert SIGNER.public_key and summary.sig == vc.sig
    other = dataclasses.replace(vc, prepared=())
    assert other.signing_bytes() != vc.signing_bytes()       # the entries are signed
    assert len(encode_message(summary)) < len(encode_message(vc)) / 2


def test_signing_bytes_exclude_signature_and_batch() -> None:
    pp = samples()[1]
    bare = PrePrepare(pp.view, pp.seq, pp.digest, pp.sender)
    assert bare.signing_bytes() == pp.signing_bytes()
    a, b = Prepare(1, 2, bytes(32), "a"), Commit(1, 2, bytes(32), "a")
    assert a.signing_bytes() != b.signing_bytes()  # the kind is signed


def test_strict_types_and_lengths() -> None:
    bad = [
        [11, 1, 2, bytes(31), "r", bytes(64)],          # short digest
        [11, -1, 2, bytes(32), "r", bytes(64)],         # negative view
        [11, True, 2, bytes(32), "r", bytes(64)],       # bool is not int
        [11, 1, 2, bytes(32), "r"],                     # missing field
        [11, 1, 2, bytes(32), "r", bytes(64), 0],       # extra field
        [99, 1],                                        # unknown kind
        {"k": 1},                                       # not an array
        [1, "c", 1, "op-as-str"],                       # str for bytes
    ]
    for obj in bad:
        try:
            decode_message(encode(obj))
        except MessageDecodeError:
            continue
        raise AssertionError(f"accepted {obj!r}")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_message(data)
    except MessageDecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(16)), st.data())
def test_mutated_messages_raise_only_decode_error(i: int, data: st.DataObject) -> None:
    raw = bytearray(encode_message(samples()[i]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        decode_message(bytes(raw))
    except MessageDecodeError as exc:
        assert isinstance(exc, DecodeError)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5)
                    | st.binary(max_size=40) | st.booleans(),
                    lambda c: st.lists(c, max_size=6), max_leaves=20))
def test_structured_garbage_raises_only_decode_error(obj: object) -> None:
    for head in (obj, [10, obj], [14, 1, obj, [], "r", bytes(64)], [22, 1, 1, obj, []]):
        try:
            decode_message(encode(head))
        except MessageDecodeError:
            pass


def test_fast_packer_is_the_canonical_encoding() -> None:
    for m in samples():
        assert encode_message(m) == encode(m.wire())
        if hasattr(m, "sig"):
            body = m.signing_bytes()
            assert encode(canonical_decode(body)) == body   # signed bytes are canonical too
