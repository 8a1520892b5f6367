"""Commit certificates verify offline (from bytes in a file) and fail precisely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pbft_harness import Net

from consensus import certificate as C
from consensus.messages import CommitCertificate, Request, batch_digest, encode_message


@pytest.fixture(scope="module")
def decided() -> tuple[Net, CommitCertificate]:
    net = Net(4, seed=11)
    net.propose("r001", b"hello")
    net.run(10, until=lambda: net.all_decided([b"hello"]))
    return net, net.decided["r002"][1].certificate


def test_verify_from_file(decided, tmp_path: Path) -> None:
    net, cert = decided
    path = tmp_path / "cert.bin"
    path.write_bytes(encode_message(cert))
    batch = C.verify(path.read_bytes(), net.members)
    assert [r.op for r in batch.requests] == [b"hello"]


def test_precise_errors(decided) -> None:
    net, cert = decided
    other = {**net.members}
    with pytest.raises(C.Malformed):
        C.verify(b"\x93garbage", net.members)
    few = dataclasses.replace(cert, commits=cert.commits[:2])
    with pytest.raises(C.NotEnoughSigners):
        C.verify(few, net.members)
    dup = dataclasses.replace(cert, commits=(cert.commits[0],) * 3)
    with pytest.raises(C.NotEnoughSigners):
        C.verify(dup, net.members)
    forged = dataclasses.replace(cert, commits=(dataclasses.replace(
        cert.commits[0], sig=bytes(64)),) + cert.commits[1:])
    with pytest.raises(C.BadSignature):
        C.verify(forged, net.members)
    del other[cert.commits[0].sender]
    with pytest.raises(C.NotAMember):
        C.verify(cert, other)
    swapped = dataclasses.replace(cert, batch=dataclasses.replace(cert.batch, requests=()))
    with pytest.raises(C.WrongDigest):
        C.verify(swapped, net.members)
    wrong_seq = dataclasses.replace(cert, seq=cert.seq + 1)
    with pytest.raises(C.WrongDigest):
        C.verify(wrong_seq, net.members)
    assert all(issubclass(e, C.CertificateError) for e in
               (C.Malformed, C.NotEnoughSigners, C.BadSignature, C.NotAMember, C.WrongDigest))


def test_requests_inside_the_batch_are_verified_too(decided) -> None:
    """Even a quorum of valid COMMITs does not make a batch with a request its origin
    never signed verify: each request's signature is checked against its origin."""
    net, cert = decided
    real = cert.batch.requests[0]
    assert real.origin == "r001" and C.verify(cert, net.members) == cert.batch

    def certify(requests):
        batch = dataclasses.replace(cert.batch, requests=requests)
        commits = tuple(net.sign(c.sender, dataclasses.replace(
            c, digest=batch_digest(batch), sig=b"")) for c in cert.commits)
        return dataclasses.replace(cert, batch=batch, commits=commits)

    assert C.verify(certify((real,)), net.members).requests == (real,)  # re-signed: fine
    altered = dataclasses.replace(real, op=b"not what r001 signed")
    with pytest.raises(C.BadSignature, match="Request"):
        C.verify(certify((real, altered)), net.members)
    outsider = Request("c", 1, b"x", "stranger", real.sig)
    with pytest.raises(C.NotAMember, match="stranger"):
        C.verify(certify((outsider,)), net.members)
