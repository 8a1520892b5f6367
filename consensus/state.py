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

Chunked body digest. A snapshot is ``[body, members, pending]``; its *body* (the
application snapshot, client table and reputation, possibly many MiB) is hashed in
:data:`CHUNK_BYTES` (256 KiB) chunks: ``body_digest = sha256(BODY_DOMAIN || size (8 bytes,
big endian) || sha256(chunk 0) || sha256(chunk 1) || ...)`` (:func:`body_digest`), so a
replica that trusts a checkpoint's state digest can verify each chunk of the body on its
own once it holds the (verified) chunk-hash list: state transfer moves snapshots far
above the codec's 1 MiB field / 4 MiB message limits in verifiable pieces
(:mod:`consensus.checkpoint`, TOCS 2002 6.2 fetches state in partitions for the same
reason). The hash list of a snapshot of ``S`` bytes is ``32 * ceil(S / CHUNK_BYTES)``
bytes; the 1 MiB field limit puts the transferable body at 8 GiB.
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

__all__ = ["BODY_DOMAIN", "CHUNK_BYTES", "DEDUP_WINDOW", "NullStateMachine",
           "ReplicatedState", "StateMachine", "SYSTEM", "body_digest", "chunk_count",
           "chunk_hashes", "digest_parts", "join_snapshot", "manifest_digest",
           "snapshot_parts", "split_snapshot", "state_digest"]

#: Request ids more than this far below a client's highest executed id are stale.
DEDUP_WINDOW = 256
#: Client id prefix reserved for operations the consensus layer itself interprets.
SYSTEM = "@"
#: Bytes per chunk of a snapshot body (the unit of chunked state transfer).
CHUNK_BYTES = 256 * 1024
#: Domain separation prefix of :func:`body_digest`.
BODY_DOMAIN = b"meshnode/pbft/body/1"


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
        try:  # local (or already digest-checked) bytes: no message size limit applies
            body, members, pend = decode(snapshot, max_bytes=len(snapshot))
            last, app, clients, rep = decode(body, max_bytes=len(body))
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


def chunk_count(size: int) -> int:
    """Number of :data:`CHUNK_BYTES` chunks of a body of ``size`` bytes (0 for 0)."""
    return -(-size // CHUNK_BYTES)


def chunk_hashes(body: bytes) -> bytes:
    """``sha256(chunk 0) || sha256(chunk 1) || ...`` of ``body`` cut into
    :data:`CHUNK_BYTES` chunks (the last one shorter): ``32 * chunk_count(len(body))``
    bytes."""
    view = memoryview(body)
    return b"".join(sha256(view[i:i + CHUNK_BYTES]) for i in range(0, len(body), CHUNK_BYTES))


def body_digest(size: int, hashes: bytes) -> bytes:
    """The 32-byte body digest from a body's size (bytes) and its :func:`chunk_hashes`:
    ``sha256(BODY_DOMAIN || size as 8 bytes big endian || hashes)``. Raises ValueError
    when ``hashes`` is not ``32 * chunk_count(size)`` bytes or ``size`` is negative or
    not below 2**64."""
    if not 0 <= size < 2**64 or len(hashes) != 32 * chunk_count(size):
        raise ValueError("chunk hash list does not match the body size")
    return sha256(BODY_DOMAIN + size.to_bytes(8, "big") + hashes)


def manifest_digest(size: int, hashes: bytes, members_packed: bytes,
                    pending_packed: bytes) -> bytes:
    """The state digest from a snapshot's manifest: body size and chunk hashes plus the
    canonical encodings of its member list and pending change (what
    :func:`snapshot_parts` returns). Raises ValueError as :func:`body_digest`."""
    return sha256(body_digest(size, hashes) + sha256(members_packed) + sha256(pending_packed))


def digest_parts(body_dg: bytes, members_wire: Any, pending_digest: bytes) -> bytes:
    """The state digest from its parts: ``sha256(body_digest || sha256(members) ||
    sha256(pending))`` (``body_digest`` as :func:`body_digest`), so a member set can be
    proven against a checkpoint with two digests instead of the whole snapshot
    (:class:`~consensus.messages.MembershipProof`)."""
    return sha256(body_dg + sha256(pack_wire(members_wire)) + pending_digest)


def snapshot_parts(snapshot: bytes) -> tuple[bytes, bytes, bytes]:
    """``(body, canonical members encoding, canonical pending encoding)`` of a snapshot;
    :func:`join_snapshot` inverts it. Raises ValueError when it is not
    ``[bytes, list, pending]``."""
    try:
        body, members, pend = decode(snapshot, max_bytes=len(snapshot))
    except (DecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad snapshot: {exc}") from None
    if not isinstance(body, bytes) or not isinstance(members, list):
        raise ValueError("bad snapshot: not [body, members, pending]")
    return body, pack_wire(members), pack_wire(pend)


def join_snapshot(body: bytes, members_packed: bytes, pending_packed: bytes) -> bytes:
    """The snapshot ``[body, members, pending]`` from :func:`snapshot_parts` output (the
    parts as received in a transfer). Raises ValueError when a part does not decode."""
    try:
        members = decode(members_packed, max_bytes=len(members_packed))
        pend = decode(pending_packed, max_bytes=len(pending_packed))
    except DecodeError as exc:
        raise ValueError(f"bad snapshot part: {exc}") from None
    return pack_wire([body, members, pend])


def split_snapshot(snapshot: bytes) -> tuple[bytes, Any, bytes]:
    """``(body digest, members wire, sha256(pending))`` of a snapshot (body digest as
    :func:`body_digest`). Raises ValueError when it is not ``[bytes, list, pending]``."""
    body, members_packed, pending_packed = snapshot_parts(snapshot)
    return (body_digest(len(body), chunk_hashes(body)), decode(members_packed,
            max_bytes=len(members_packed)), sha256(pending_packed))


def state_digest(snapshot: bytes) -> bytes:
    """The checkpoint state digest of a snapshot (raises ValueError when malformed)."""
    body, members_packed, pending_packed = snapshot_parts(snapshot)
    return manifest_digest(len(body), chunk_hashes(body), members_packed, pending_packed)


def _is_system(req: Request) -> bool:
    return req.client.startswith(SYSTEM)
