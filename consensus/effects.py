"""Effects a replica hands to its driver: the :class:`Ready` batch and its parts.

Theory of operation
-------------------
The replica never performs I/O. After feeding it input (``step``, ``tick``, ``propose``,
``signed``) the driver calls ``ready()`` and carries out, **in this order**:

1. ``persist``: append every :class:`Record` durably (fsync) *before* anything below;
2. ``sign_requests``: sign each ``SignRequest.data`` with the node key (HSM, any thread)
   and hand the 64-byte signature back with ``replica.signed(request.id, signature)``;
   the replica then emits the signed message in a later ``Ready`` (persisted first);
3. ``messages``: send each :class:`Outbound` message to every id in ``to``;
4. ``committed``: deliver each :class:`Decision` (in sequence order) to the application
   layer / clients;

and then calls ``advance(ready)``. This is etcd raft's ``Ready``/``Advance`` contract,
with one simplification: ``ready()`` *takes* the effects, so effects caused while the
driver is carrying a Ready out (a ``signed()`` call, a message) land in the next Ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .messages import Batch, CommitCertificate
from .quorum import Membership

__all__ = ["Decision", "Outbound", "Ready", "Record", "SignRequest"]


@dataclass(frozen=True, slots=True)
class SignRequest:
    """Sign ``data`` (canonical signing bytes) and return the signature via
    ``Replica.signed(id, signature)``. ``id`` is unique per replica incarnation."""

    id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Outbound:
    """Send ``msg`` (a :mod:`consensus.messages` object; ``encode_message`` for bytes) to
    each member id in ``to`` (sorted)."""

    msg: Any
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One durable record (see :mod:`consensus.persist` for kinds and restore).

    ``kind`` is one of ``"msg"`` (a message this replica signed for a sequence number),
    ``"viewchange"`` (a VIEW-CHANGE / NEW-VIEW it signed), ``"prepared"`` (a
    prepared certificate it holds, with its batch), ``"decided"`` (a commit certificate
    it executed), ``"stable"`` (a stable checkpoint: proof, snapshot, the view running
    and its primary), ``"view"`` (a view it entered, with the NEW-VIEW's sender),
    ``"request"`` (a locally proposed request) or ``"members"`` (a completed membership
    change with its proof). ``seq`` is the sequence number the record is about
    (view-level messages use the low watermark). ``data`` is
    canonical msgpack bytes.
    """

    kind: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """A batch decided at ``seq`` and executed: its commit ``certificate`` (verifiable
    offline with ``members``, the member set that decided it) and one result per request
    (``state.DUPLICATE`` for requests executed before)."""

    seq: int
    batch: Batch
    certificate: CommitCertificate
    results: tuple[bytes, ...]
    members: Membership


@dataclass(slots=True)
class Ready:
    """Everything the driver must do now, in field order (persist first)."""

    persist: list[Record] = field(default_factory=list)
    sign_requests: list[SignRequest] = field(default_factory=list)
    messages: list[Outbound] = field(default_factory=list)
    committed: list[Decision] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.persist or self.sign_requests or self.messages or self.committed)
