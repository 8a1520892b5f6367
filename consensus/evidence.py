"""Equivocation evidence: two validly signed conflicting messages from one replica.

Theory of operation
-------------------
A correct replica signs at most one PRE-PREPARE, one PREPARE and one COMMIT per
(view, sequence number) (TOCS 2002, 4.2). Two messages of the same kind from the same
sender for the same (view, sequence number) with different digests, both validly signed,
prove that the sender is faulty. Such a pair is an :class:`~consensus.messages.Evidence`
(wire bytes of both, ordered). Replicas that observe one add it to their pending
evidence; the primary includes pending evidence in its next batch, and once committed it
feeds leader reputation (:mod:`consensus.leader`) identically at every replica.
"""

from __future__ import annotations

from identity.signer import verify_signature

from .messages import (
    Commit,
    Evidence,
    MessageDecodeError,
    Prepare,
    PrePrepare,
    decode_message,
    encode_message,
)
from .quorum import Membership, VerifyFn

__all__ = ["equivocator", "make_evidence"]

_KINDS = (PrePrepare, Prepare, Commit)


def _strip(msg: object) -> object:
    if isinstance(msg, PrePrepare) and msg.batch is not None:
        return PrePrepare(msg.view, msg.seq, msg.digest, msg.sender, msg.sig)
    return msg


def make_evidence(a: object, b: object) -> Evidence:
    """Evidence from two conflicting signed messages (batches are stripped)."""
    x, y = encode_message(_strip(a)), encode_message(_strip(b))
    return Evidence(min(x, y), max(x, y))


def equivocator(
    ev: Evidence, members: Membership, verify: VerifyFn = verify_signature
) -> str | None:
    """The member ``ev`` proves faulty, or None when it proves nothing. Never raises."""
    try:
        a, b = decode_message(ev.a), decode_message(ev.b)
    except MessageDecodeError:
        return None
    if type(a) is not type(b) or not isinstance(a, _KINDS):
        return None
    if (a.sender, a.view, a.seq) != (b.sender, b.view, b.seq) or a.digest == b.digest:
        return None
    if not (members.check_signed(a, verify) and members.check_signed(b, verify)):
        return None
    return a.sender
