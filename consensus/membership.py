"""Membership changes: committed operations, effective at a checkpoint boundary.

Theory of operation
-------------------
The member set (validator set) changes only by executing a committed request whose client
is :data:`MEMBERS_CLIENT` (submitted by any member) and whose ``op`` is :func:`member_op`
bytes:
``[action, member_id, public_key, endorsements]`` with ``action`` ``"add"`` or
``"remove"``. Authorisation is Byzantine-proof and needs no outside authority: the op must
carry endorsements (Ed25519 signatures over :func:`endorsement_bytes`) from a *quorum of
the current members*; the signed bytes name the current member set's digest, so an
endorsement cannot be replayed against another member set.

When the op executes at sequence number ``n`` the change is scheduled for the checkpoint
boundary ``E``: the first multiple of ``K`` that is at least ``n + window``. No sequence
number above ``n + window`` can be in flight when ``n`` executes, so every sequence number
up to ``E`` is agreed by the old member set. While a change is pending the high watermark
is capped at ``E`` (:attr:`CheckpointMixin.high`), so a window never spans two member
sets. Executing ``E`` installs the new set; the stable checkpoint at ``E`` (certified by
the old members) freezes it for the window above, and from then on ``n``, ``f`` and the
quorum follow the new set. One change may be pending at a time; anything invalid is
rejected deterministically with a reason (the request's result), never raised.

A joining node builds its replica with the *current* member set (it is not a member yet:
it does not vote or sign) and catches up by state transfer; once the change is effective
it participates.

State transfer across completed changes. A replica that slept through a change still
knows only the old set, which cannot verify checkpoints signed by the new one. Each
replica therefore keeps, per completed change, a
:class:`~consensus.messages.MembershipProof`: the stable-checkpoint certificate at the
change's boundary ``E`` (signed by the *old* set, which still ran the window up to ``E``)
plus the digests that tie the new member list to that checkpoint's state digest. State
replies carry the recent ones; the requester verifies them in order, each with the set
before it, and then the reply's checkpoint with the resulting set
(:meth:`CheckpointMixin._chain_signers`). Nothing is trusted that the old set did not
sign, so a faulty peer can only withhold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from identity.canonical import DecodeError, decode, encode
from identity.signer import PUBLIC_KEY_BYTES, verify_signature

from .messages import Request
from .quorum import Membership

__all__ = ["MEMBERS_CLIENT", "REJECTED", "apply_member_op", "endorsement_bytes",
           "member_op"]

#: Client id of membership operations (the "@" prefix is reserved for the system).
MEMBERS_CLIENT = "@members"
#: Prefix of the result of a rejected system operation (followed by the reason).
REJECTED = b"\x00rejected: "


def endorsement_bytes(members: Membership, action: str, member: str, key: bytes) -> bytes:
    """The bytes current members sign to endorse ``action`` on ``member``."""
    return encode(["meshnode/members/1", members.digest(), action, member, key])


def member_op(action: str, member: str, key: bytes,
              endorsements: Mapping[str, bytes]) -> bytes:
    """``op`` bytes of a membership request; ``endorsements`` maps member id -> signature."""
    return encode([action, member, key, [[m, endorsements[m]] for m in sorted(endorsements)]])


def _check(state: Any, op: bytes) -> tuple[Membership | None, str]:
    try:
        action, member, key, endorsements = decode(op)
    except (DecodeError, ValueError, TypeError):
        return None, "malformed membership op"
    members: Membership = state.members
    if state.pending_members is not None:
        return None, "a membership change is already pending"
    if not isinstance(member, str) or not isinstance(key, bytes) or \
            not isinstance(endorsements, list):
        return None, "malformed membership op"
    current = members.as_dict()
    if action == "add":
        if member in current or len(key) != PUBLIC_KEY_BYTES:
            return None, "already a member or bad key"
        current[member] = key
    elif action == "remove":
        if member not in current or len(current) <= 1:
            return None, "not a member (or the last one)"
        del current[member]
    else:
        return None, f"unknown action {action!r}"[:80]
    signed = endorsement_bytes(members, action, member, key)
    ok: set[str] = set()
    for item in endorsements:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)
                and isinstance(item[0], str)):
            pk = members.key(item[0])
            if pk is not None and verify_signature(pk, signed, item[1]):
                ok.add(item[0])
    if len(ok) < members.quorum:
        return None, f"{len(ok)} valid endorsements, quorum is {members.quorum}"
    return Membership.of(current), ""


def apply_member_op(state: Any, seq: int, req: Request) -> bytes:
    """Execute a system request at ``seq``; returns its result (never raises)."""
    if req.client != MEMBERS_CLIENT:
        return REJECTED + b"unknown system client"
    new, reason = _check(state, req.op)
    if new is None:
        return REJECTED + reason.encode()
    k = state.K
    effective = -(-(seq + state.window) // k) * k
    state.pending_members = (effective, new)
    return b"ok: effective after " + str(effective).encode()
