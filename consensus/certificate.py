"""Certificates anyone can verify offline with the members' public keys (TOCS 2002, 4.2-4.4).

Theory of operation
-------------------
PBFT here signs every protocol message with Ed25519 (not MACs), so its certificates are
transferable: a third party holding only the member map can check them.

* Commit certificate (:class:`~consensus.messages.CommitCertificate`): the batch (each
  request signed by the member that submitted it) plus a quorum of
  COMMIT(view, seq, digest(batch)) from distinct members. Two honest replicas
  never hold commit certificates for different batches at one sequence number, because
  PBFT only commits what a quorum prepared and prepared certificates survive view changes.
* Stable-checkpoint certificate (:class:`~consensus.messages.CheckpointProof`): a quorum
  of CHECKPOINT(seq, state_digest).
* Prepared certificate (:class:`~consensus.messages.PreparedProof`): the signed
  pre-prepare header plus a quorum of matching PREPARE signatures from distinct members
  (the primary prepares too; see :mod:`consensus.replica`), compactly as a signer bitmap
  and the signatures; the batch is not part of it (the digest binds it).

Each ``verify_*`` returns the certified value or raises a precise
:class:`CertificateError` subclass. ``verify`` accepts bytes (for certificates stored in
files: ``encode_message(cert)``) or the decoded object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from identity.signer import verify_signature

from .messages import (
    Batch,
    CheckpointProof,
    CommitCertificate,
    MembershipProof,
    MessageDecodeError,
    Prepare,
    PreparedProof,
    PrePrepare,
    batch_digest,
    decode_message,
)
from .quorum import Membership, VerifyFn
from .state import digest_parts

__all__ = [
    "BadSignature", "CertificateError", "Malformed", "NotAMember", "NotEnoughSigners",
    "WrongDigest", "WrongPrimary", "prepared_proof", "verify", "verify_checkpoint",
    "verify_membership", "verify_prepared",
]


class CertificateError(ValueError):
    """A certificate that does not prove what it claims."""


class Malformed(CertificateError):
    """Bytes that do not decode to the expected certificate type."""


class NotAMember(CertificateError):
    """A signature by an id that is not in the member set."""


class BadSignature(CertificateError):
    """A signature that does not verify under the member's public key."""


class WrongDigest(CertificateError):
    """Messages that disagree on view, sequence number or digest with the certified value."""


class NotEnoughSigners(CertificateError):
    """Fewer distinct member signers than the quorum (or than quorum - 1 prepares)."""


class WrongPrimary(CertificateError):
    """A pre-prepare not signed by the primary of its view."""


_LAST: list[Any] = [None, None]  # [map, Membership.of(map)]: callers reuse one map


def _members(members: Membership | Mapping[str, bytes]) -> Membership:
    if isinstance(members, Membership):
        return members
    last = _LAST
    if last[0] is not members or last[1].as_dict() != members:
        last[0], last[1] = members, Membership.of(members)
    return last[1]


def _check_sig(m: Membership, msg: object, verify: VerifyFn) -> None:
    key = m.key(msg.sender)  # type: ignore[attr-defined]
    if key is None:
        raise NotAMember(f"{msg.sender!r} is not a member")  # type: ignore[attr-defined]
    if not verify(key, msg.signing_bytes(), msg.sig):  # type: ignore[attr-defined]
        raise BadSignature(f"bad signature by {msg.sender!r} on {type(msg).__name__}")  # type: ignore[attr-defined]


def verify(
    cert: CommitCertificate | bytes,
    members: Membership | Mapping[str, bytes],
    *,
    verify_fn: VerifyFn = verify_signature,
) -> Batch:
    """Verify a commit certificate against ``members`` (``{id: public_key32}``).

    Checks a quorum of distinct members' COMMIT signatures for
    ``(cert.view, cert.seq, digest(cert.batch))`` and every request's signature by its
    ``origin`` (a member too). Returns the decided :class:`Batch` (decided at
    ``cert.seq``). Raises :class:`Malformed`, :class:`WrongDigest`, :class:`NotAMember`,
    :class:`BadSignature` or :class:`NotEnoughSigners`.
    """
    if isinstance(cert, (bytes, bytearray, memoryview)):
        try:
            cert = decode_message(bytes(cert))
        except MessageDecodeError as exc:
            raise Malformed(f"not a commit certificate: {exc}") from None
    if not isinstance(cert, CommitCertificate):
        raise Malformed(f"expected a CommitCertificate, got {type(cert).__name__}")
    m = _members(members)
    digest = batch_digest(cert.batch)
    seen: set[str] = set()
    for c in cert.commits:
        if (c.view, c.seq, c.digest) != (cert.view, cert.seq, digest):
            raise WrongDigest(f"commit by {c.sender!r} is for another view/seq/digest")
        _check_sig(m, c, verify_fn)
        seen.add(c.sender)
    if len(seen) < m.quorum:
        raise NotEnoughSigners(f"{len(seen)} distinct signers, quorum is {m.quorum}")
    for r in cert.batch.requests:
        _check_sig(m, r, verify_fn)
    return cert.batch


def verify_checkpoint(
    proof: CheckpointProof, members: Membership, *, verify_fn: VerifyFn = verify_signature
) -> bytes:
    """Verify a stable-checkpoint certificate; returns its state digest. The genesis proof
    (``seq == 0``, no checkpoints) is accepted as is. Raises :class:`CertificateError`."""
    if proof.seq == 0 and not proof.checkpoints:
        return proof.state_digest
    seen: set[str] = set()
    for c in proof.checkpoints:
        if (c.seq, c.state_digest) != (proof.seq, proof.state_digest):
            raise WrongDigest(f"checkpoint by {c.sender!r} is for another seq/digest")
        _check_sig(members, c, verify_fn)
        seen.add(c.sender)
    if len(seen) < members.quorum:
        raise NotEnoughSigners(f"{len(seen)} checkpoint signers, quorum is {members.quorum}")
    return proof.state_digest


def verify_prepared(
    proof: PreparedProof, members: Membership, *, verify_fn: VerifyFn = verify_signature
) -> None:
    """Verify a compact prepared certificate for ``(proof.view, proof.seq, proof.digest)``:
    the PRE-PREPARE signature of ``proof.primary`` (a member) and a quorum of distinct
    members' PREPARE signatures (the primary prepares too, so this holds without knowing
    who the primary of the view was). Every signature is checked. Raises
    :class:`Malformed` (signer bitmap), :class:`NotAMember`, :class:`BadSignature` or
    :class:`NotEnoughSigners`."""
    _check_sig(members, proof.pre_prepare(), verify_fn)
    try:
        signers = members.unpack_signatures(proof.signers, proof.sigs)
    except ValueError as exc:
        raise Malformed(f"prepared certificate: {exc}") from None
    if len(signers) < members.quorum:
        raise NotEnoughSigners(f"{len(signers)} prepares, quorum is {members.quorum}")
    for member, key, sig in signers:
        prep = Prepare(proof.view, proof.seq, proof.digest, member)
        if not verify_fn(key, prep.signing_bytes(), sig):
            raise BadSignature(f"bad PREPARE signature by {member!r}")


def prepared_proof(pp: PrePrepare, prepares: Iterable[Prepare],
                   members: Membership) -> PreparedProof:
    """A compact prepared certificate from the PRE-PREPARE and matching PREPAREs (their
    signatures are copied, not checked: the caller verified them on receipt)."""
    return PreparedProof(pp.view, pp.seq, pp.digest, pp.sender, pp.sig,
                         *members.pack_signatures({p.sender: p.sig for p in prepares}))


def verify_membership(
    proof: MembershipProof, members: Membership, *, verify_fn: VerifyFn = verify_signature
) -> Membership:
    """Verify that ``proof`` certifies, with the signatures of ``members`` (the set before
    the change), the member set that took effect at ``proof.checkpoint.seq``; returns
    that set. Raises :class:`CertificateError` (:class:`WrongDigest` when the parts do
    not hash to the certified state digest, :class:`Malformed` for a bad member list)."""
    verify_checkpoint(proof.checkpoint, members, verify_fn=verify_fn)
    wire = [[m.id, m.key] for m in proof.members]
    if digest_parts(proof.body_digest, wire, proof.pending_digest) != \
            proof.checkpoint.state_digest:
        raise WrongDigest("member set does not match the certified state digest")
    try:
        new = Membership.of({m.id: m.key for m in proof.members})
    except ValueError as exc:
        raise Malformed(f"member set: {exc}") from None
    if new.wire() != wire:
        raise Malformed("member set not sorted or with duplicates")
    return new
