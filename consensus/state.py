"""The replicated state: application state machine, client table, membership, reputation.

Theory of operation
-------------------
Everything a replica derives from the committed log lives in :class:`ReplicatedState`,
so its snapshot (and the checkpoint *state digest* of the snapshot,
:func:`state_digest`) covers all of it and state transfer moves all of it (TOCS 2002,
4.3 and 6.2). The digest hashes the member set separately from the rest, so the member
set of a checkpoint can be proven without the snapshot:

* the application :class:`StateMachine` (``apply(seq, requests) -> results``);
* the client table for request de-duplication (TOCS 4.1: each client's requests execute
  at most once): per client ``(origin member, client id)``, the highest executed request
  id and the executed ids within :data:`DEDUP_WINDOW` below it, plus the last reply;
* the member set and a pending change (effective at a checkpoint boundary);
* the leader-reputation state (:mod:`consensus.leader`), updated from committed batches.

Execution is a pure function of (state, batch): replicas that execute the same committed
log reach the same state, whatever order messages arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from identity.canonical import DecodeError, decode

from .leader import Reputation
from .messages import Batch, Request, sha256
from .quorum import Membership
from .wire import pack as pack_wire

__all__ = ["DEDUP_WINDOW", "NullStateMachine", "ReplicatedState", "StateMachine", "SYSTEM",
           "digest_parts", "split_snapshot", "state_digest"]

#: Request ids more than this far below a client's highest executed id are stale.
DEDUP_WINDOW = 256
#: Client id prefix reserved for operations the consensus layer itself interprets.
SYSTEM = "@"


class StateMachine(Protocol):
    """The application replicated by PBFT. All three methods must be deterministic."""

    def apply(self, seq: int, requests: Sequence[Request]) -> list[bytes]:
        """Execute ``requests`` (committed at sequence number ``seq``, in order); return
        one result per request."""
        ...

    def snapshot(self) -> bytes:
        """The whole application state as bytes (hashed into checkpoints)."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by a snapshot from :meth:`snapshot` (state transfer)."""
        ...


class NullStateMachine:
    """Records nothing; every result is empty."""

    def apply(self, seq: int, requests: Sequence[Request]) -> list[bytes]:
        return [b"" for _ in requests]

    def snapshot(self) -> bytes:
        return b""

    def restore(self, snapshot: bytes) -> None:
        return None


@dataclass(slots=True)
class _Client:
    max_rid: int = 0
    recent: set[int] = field(default_factory=set)
    last_rid: int = 0
    last_result: bytes = b""

    def seen(self, rid: int) -> bool:
        return rid <= self.max_rid - DEDUP_WINDOW or rid in self.recent

    def record(self, rid: int, result: bytes) -> None:
        self.recent.add(rid)
        self.max_rid = max(self.max_rid, rid)
        if len(self.recent) > 2 * DEDUP_WINDOW:  # amortised: ids at or below the floor
            floor = self.max_rid - DEDUP_WINDOW  # count as seen either way (``seen``)
            self.recent = {r for r in self.recent if r > floor}
        self.last_rid, self.last_result = rid, result

    def window(self) -> list[int]:
        """The executed ids above the floor, sorted (what the snapshot records)."""
        floor = self.max_rid - DEDUP_WINDOW
        return sorted(r for r in self.recent if r > floor)


DUPLICATE = b"\x00duplicate"


class ReplicatedState:
    """Deterministic state derived from the committed log. Not thread safe."""

    def __init__(self, app: StateMachine, members: Membership, checkpoint_interval: int,
                 window: int) -> None:
        self.app = app
        self.members = members
        self.K = checkpoint_interval
        self.window = window
        self.pending_members: tuple[int, Membership] | None = None
        self.changed_at = 0  # boundary where ``members`` last changed here (not replicated)
        self.clients: dict[tuple[str, str], _Client] = {}  # (origin, client) -> table
        self.reputation = Reputation()
        self.last_seq = 0

    # -- execution ------------------------------------------------------------------
    def is_duplicate(self, req: Request) -> bool:
        """True when ``req.key`` executed before (or its id fell below the window)."""
        c = self.clients.get((req.origin, req.client))
        return c is not None and c.seen(req.rid)

    def execute(self, seq: int, batch: Batch) -> list[bytes]:
        """Execute the batch decided at ``seq`` (must be ``last_seq + 1``); returns one
        result per request (:data:`DUPLICATE` for requests executed before, and for
        repeats of a request earlier in the same batch)."""
        if seq != self.last_seq + 1:
            raise AssertionError(f"execute out of order: {seq} after {self.last_seq}")
        self.reputation.on_batch(seq, batch, self.members)
        requests = batch.requests
        fresh: list[int] = []  # positions of first occurrences of keys not executed before
        keys: set[tuple[str, str, int]] = set()
        for i, req in enumerate(requests):
            key = req.key
            if key in keys or self.is_duplicate(req):
                continue
            keys.add(key)
            fresh.append(i)
        app_results = iter(self.app.apply(
            seq, [requests[i] for i in fresh if not _is_system(requests[i])]))
        out = [DUPLICATE] * len(requests)
        for i in fresh:
            req = requests[i]
            res = self._system(seq, req) if _is_system(req) else next(app_results)
            self.clients.setdefault((req.origin, req.client), _Client()).record(req.rid, res)
            out[i] = res
        self.last_seq = seq
        if seq % self.K == 0:
            self._boundary(seq)
        return out

    def _system(self, seq: int, req: Request) -> bytes:
        from .membership import apply_member_op

        return apply_member_op(self, seq, req)

    def _boundary(self, seq: int) -> None:
        if self.pending_members is not None and self.pending_members[0] <= seq:
            self.members = self.pending_members[1]
            self.pending_members = None
            self.changed_at = seq

    def last_reply(self, origin: str, client: str, rid: int) -> bytes | None:
        """The result of request ``(origin, client, rid)`` when it was the last one that
        client executed, else None."""
        c = self.clients.get((origin, client))
        return c.last_result if c is not None and c.last_rid == rid else None

    # -- snapshots ------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """``[body, members, pending]`` (canonical msgpack): ``body`` is the packed
        ``[last_seq, app snapshot, client table, reputation]``; its digest is
        :func:`state_digest`."""
        clients = [[o, k, c.max_rid, c.window(), c.last_rid, c.last_result]
                   for (o, k), c in sorted(self.clients.items())]
        pend: Any = None
        if self.pending_members is not None:
            pend = [self.pending_members[0], self.pending_members[1].wire()]
        # wire values only (no maps, no floats): plain msgpack is the canonical encoding
        body = pack_wire([self.last_seq, self.app.snapshot(), clients, self.reputation.wire()])
        return pack_wire([body, self.members.wire(), pend])

    def digest(self) -> bytes:
        return state_digest(self.snapshot())

    def restore(self, snapshot: bytes) -> None:
        """Install a snapshot. Raises ValueError when it is malformed (caller verified its
        digest against a checkpoint certificate first)."""
        try:
            body, members, pend = decode(snapshot)
            last, app, clients, rep = decode(body)
            self.clients = {(o, k): _Client(m, set(r), lr, res)
                            for o, k, m, r, lr, res in clients}
            self.members = Membership.of({i: k for i, k in members})
            self.pending_members = None if pend is None else (
                pend[0], Membership.of({i: k for i, k in pend[1]}))
            self.reputation = Reputation.from_wire(rep)
        except (DecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"bad snapshot: {exc}") from None
        self.app.restore(app)
        self.last_seq = last


def digest_parts(body_digest: bytes, members_wire: Any, pending_digest: bytes) -> bytes:
    """The state digest from its parts: ``sha256(sha256(body) || sha256(members) ||
    sha256(pending))``, so a member set can be proven against a checkpoint with two
    digests instead of the whole snapshot (:class:`~consensus.messages.MembershipProof`)."""
    return sha256(body_digest + sha256(pack_wire(members_wire)) + pending_digest)


def split_snapshot(snapshot: bytes) -> tuple[bytes, Any, bytes]:
    """``(sha256(body), members wire, sha256(pending))`` of a snapshot. Raises ValueError
    when it is not ``[bytes, list, pending]``."""
    try:
        body, members, pend = decode(snapshot, max_bytes=len(snapshot))
    except (DecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad snapshot: {exc}") from None
    if not isinstance(body, bytes) or not isinstance(members, list):
        raise ValueError("bad snapshot: not [body, members, pending]")
    return sha256(body), members, sha256(pack_wire(pend))


def state_digest(snapshot: bytes) -> bytes:
    """The checkpoint state digest of a snapshot (raises ValueError when malformed)."""
    body_digest, members, pending_digest = split_snapshot(snapshot)
    return digest_parts(body_digest, members, pending_digest)


def _is_system(req: Request) -> bool:
    return req.client.startswith(SYSTEM)
