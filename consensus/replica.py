"""The PBFT replica: a pure state machine (Castro & Liskov, TOCS 2002, section 4).

Theory of operation
-------------------
Inputs: ``step(msg, sender=...)`` (a decoded message from the network), ``tick()`` (one
logical time unit), ``propose(op)`` (a local client operation) and ``signed(id, sig)``
(a signature the driver made for a :class:`~consensus.effects.SignRequest`). Outputs
accumulate in a :class:`~consensus.effects.Ready` (``ready()`` / ``advance()``).
Nothing here does I/O, reads a clock or draws randomness; equal inputs give equal outputs.

Normal case (4.2). Requests, signed by the member that submits them, are broadcast to
every replica (each keeps a pending pool, so any future primary has them and every
backup can time the primary). The primary of the
view cuts a batch when ``batch_size`` requests are pending or the oldest has waited
``batch_timeout`` ticks, assigns the next sequence number inside the watermarks
(low < n <= low + window) and signs PRE-PREPARE(v, n, d). A backup that accepts it (right
primary, view, window, digest, no other pre-prepare for (v, n)) signs PREPARE; so does
the primary. With the pre-prepare and a quorum of matching PREPAREs a replica is
*prepared*: it persists the prepared certificate and signs COMMIT. A quorum of COMMITs
for (v, n, d) plus the batch is a commit certificate; batches execute strictly in
sequence order. Own signed messages are fed back through the same handlers as remote ones.

One deliberate change from the paper: the primary also sends a PREPARE, and a prepared
certificate is a quorum of PREPAREs (plus the pre-prepare carrying the batch) instead of
the pre-prepare plus ``2f`` prepares. It costs ``n - 1`` messages per batch and buys
safety that does not depend on replicas agreeing who the primary of a view was (two
prepared certificates for one (v, n) share an honest preparer by quorum intersection
alone), which is what lets the primary be a function of reputation
(:mod:`consensus.leader`).

The per-message normal-case code lives in :mod:`consensus.normal`; checkpoints,
watermarks, garbage collection and state transfer in :mod:`consensus.checkpoint`; view
changes in :mod:`consensus.viewchange`; restart from persisted records in
:mod:`consensus.persist`.

Timers (ticks). While a replica waits for work to execute (pending requests or accepted
pre-prepares) and makes no progress for ``timeout`` ticks it starts a view change. The
timeout is ``view_timeout * 2**k`` where ``k`` counts view changes since the last
progress (capped at ``max_view_timeout``); it resets after any execution. Own messages
for unfinished work are re-sent every ``resend_interval`` ticks (messages may be lost).

Bad remote input never raises: it is dropped and counted in ``drops[sender][reason]``.
A broken local invariant raises ``AssertionError`` (crash-only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from identity.signer import Signer, verify_signature

from .batching import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, RequestsMixin
from .checkpoint import REPLY_BUDGET, CheckpointMixin
from .effects import Outbound, Ready, Record, SignRequest
from .leader import round_robin, schedule_primary
from .messages import (
    Checkpoint,
    Commit,
    Evidence,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    SnapshotChunk,
    SnapshotChunkRequest,
    SnapshotManifest,
    SnapshotManifestRequest,
    StateReply,
    StateRequest,
    ViewChange,
    encode_message,
)
from .normal import NormalCaseMixin, Slot
from .quorum import Membership, VerifyFn
from .state import NullStateMachine, ReplicatedState, StateMachine
from .viewchange import ViewChangeMixin
from .wire import MAX_OP_BYTES

__all__ = ["Config", "Replica", "Slot"]


@dataclass(frozen=True, slots=True)
class Config:
    """Replica parameters. Durations are in ticks (the driver maps one tick to wall time,
    e.g. 10 ms; the simulator to one step of its clock)."""

    checkpoint_interval: int = 16      #: K: a checkpoint every K sequence numbers (4.3)
    window: int = 64                   #: L = high - low watermark; a multiple of K
    batch_size: int = 64               #: max requests per batch
    #: max bytes of requests per batch (ops plus ids and signature; a single larger
    #: request still travels alone): keeps a PRE-PREPARE under the 4 MiB message limit
    max_batch_bytes: int = 2 * 1024 * 1024
    #: max bytes of one STATE-REPLY (snapshot inline only up to half of it, at most
    #: 512 KiB; then as many commit certificates as fit)
    max_reply_bytes: int = REPLY_BUDGET
    batch_timeout: int = 1             #: ticks the primary waits to fill a batch
    max_inflight: int = 16             #: batches the primary has open at once
    view_timeout: int = 20             #: base view-change timeout
    max_view_timeout: int = 2560       #: cap of the exponentially growing timeout
    resend_interval: int = 8           #: ticks between re-sends of own unfinished messages
    max_pending: int = 65536           #: pending request pool bound (requests)
    #: bytes of requests pooled per other member (a faulty member cannot fill the pool;
    #: an honest one's excess is retransmitted by its origin once the pool drains)
    max_pending_bytes_per_origin: int = 64 * 1024 * 1024
    reputation: bool = True            #: reputation-aware primaries (else round robin)

    def __post_init__(self) -> None:
        if self.window % self.checkpoint_interval or self.window < self.checkpoint_interval:
            raise ValueError("window must be a positive multiple of checkpoint_interval")
        if not 0 < self.batch_size <= MAX_BATCH_REQUESTS:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH_REQUESTS}")
        if not 0 < self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be in 1..{MAX_BATCH_BYTES}")
        if not 64 * 1024 <= self.max_reply_bytes <= REPLY_BUDGET:
            raise ValueError(f"max_reply_bytes must be in {64 * 1024}..{REPLY_BUDGET}")


class Replica(NormalCaseMixin, RequestsMixin, CheckpointMixin, ViewChangeMixin):
    """One PBFT replica. See the module docstring for the protocol.

    ``Replica(me, members, *, config=Config(), app=None, verify=verify_signature,
    signer=None)``: ``me`` is this replica's member id, ``members`` a ``{id: public_key32}``
    map (or :class:`Membership`), ``app`` the replicated :class:`StateMachine`,
    ``verify(pk, data, sig) -> bool`` the (cacheable) signature check, ``signer`` an
    optional in-process signer: when given, the core signs inline instead of emitting
    sign requests (simulator convenience; a node passes None and signs via the HSM).
    """

    def __init__(
        self,
        me: str,
        members: Membership | dict[str, bytes],
        *,
        config: Config | None = None,
        app: StateMachine | None = None,
        verify: VerifyFn = verify_signature,
        signer: Signer | None = None,
    ) -> None:
        m = members if isinstance(members, Membership) else Membership.of(members)
        self.me = me  # not in ``members``: an observer that catches up but never signs
        self.cfg = config or Config()
        self.verify = verify
        self.signer = signer
        self.state = ReplicatedState(app or NullStateMachine(), m, self.cfg.checkpoint_interval,
                                     self.cfg.window)
        self.view = 0
        self.in_view_change = False
        self.slots: dict[int, Slot] = {}
        self._unfinished: set[int] = set()  # slots holding own votes, not yet certified
        # requests by key (origin, client, rid)
        self.pending: dict[tuple[str, str, int], Request] = {}     # arrival order
        self.pending_since: dict[tuple[str, str, int], int] = {}
        self.inflight: dict[tuple[str, str, int], int] = {}        # request -> seq
        self.local: dict[tuple[str, str, int], int] = {}           # proposed here -> last sent
        self.pooled_bytes: dict[str, int] = {}  # origin -> request_bytes of its pooled ones
        self.evidence: dict[str, Evidence] = {}        # culprit -> proof
        self.next_seq = 1
        self.now = 0
        self.timer = 0
        self.timer_on = False
        self.failed_views = 0
        self.last_progress = 0
        self.drops: dict[str, dict[str, int]] = {}
        self.sent_count = 0
        self._ready = Ready()
        self._outstanding = 0
        self._sign_id = 0
        self._unsigned: dict[int, tuple[Any, Any, Any]] = {}
        self._own_rid = 0
        self.view_primary: tuple[int, str] | None = None  # (view entered, its NEW-VIEW sender)
        self._primary_memo: tuple[Any, str] | None = None
        self.known_prepared: set[tuple[int, int, bytes]] = set()  # (view, seq, digest)
        self._init_checkpoints()
        self._init_view_change()

    # -- public API -------------------------------------------------------------------
    @property
    def members(self) -> Membership:
        """The member set of the current window (changes only at a stable checkpoint)."""
        return self.window_members

    @property
    def last_executed(self) -> int:
        return self.state.last_seq

    def primary(self, view: int) -> str:
        """Primary of ``view`` (a member id). For the view this replica entered through a
        NEW-VIEW: that NEW-VIEW's sender (pinned, persisted with the ``"view"`` record).
        Otherwise a pure function of ``view``, the member set and the leader schedule of
        the executed state (:mod:`consensus.leader`): nothing executed while a view runs
        changes its primary, and replicas that executed the same prefix agree."""
        pin = self.view_primary
        if pin is not None and pin[0] == view:
            return pin[1]
        members = self.members
        if not self.cfg.reputation:
            return round_robin(view, members)
        skipped = self.state.reputation.schedule(view)[1]
        memo = self._primary_memo
        if memo is not None and memo[0][0] == view and memo[0][1] is skipped and \
                memo[0][2] is members:
            return memo[1]
        who = schedule_primary(view, members, skipped)
        self._primary_memo = ((view, skipped, members), who)
        return who

    def is_primary(self) -> bool:
        return self.primary(self.view) == self.me

    def propose(self, op: bytes, *, client: str | None = None, rid: int | None = None) -> Request:
        """Submit a client operation (``op``, at most 1 MiB) as this member: the request
        is signed (inline, or through a :class:`SignRequest` the driver answers with
        ``signed()``), then persisted (record kind ``"request"``, so a restart
        re-submits it until it executes; drivers may delete the record once a Decision
        contains it), broadcast to all replicas and pooled here (TOCS 4.1).

        ``client`` (default: this replica's id) names the client within this member and
        ``rid`` (default: the next id of a counter that survives restarts) its request
        id; requests whose ``(origin, client, rid)`` already executed are ignored
        (exactly once). Returns the request, unsigned when the signature is still to
        come (its :attr:`~consensus.messages.Request.key` is final). Raises ValueError
        when this replica is not a member of the current window (observers cannot
        sign) or ``op`` is longer than :data:`~consensus.wire.MAX_OP_BYTES`."""
        if not self.voting:
            raise ValueError(f"{self.me!r} is not a member: only members submit requests")
        if len(op) > MAX_OP_BYTES:
            raise ValueError(f"an operation is at most {MAX_OP_BYTES} bytes, got {len(op)}")
        if rid is None:
            rid = self._own_rid = self._own_rid + 1
        req = Request(client if client is not None else self.me, rid, op, self.me)
        self._sign_then(req, self._submit)
        return req

    def _submit(self, req: Request) -> None:
        """A request signed here: persist before send, then broadcast and pool it."""
        self._persist("request", self.last_executed, req)
        self.local[req.key] = self.now
        self._send(req, self._others())
        self._on_request(req)

    def step(self, msg: Any, *, sender: str) -> None:
        """Feed one message received from ``sender`` (transport-authenticated id). Never
        raises on bad input: drops it and counts ``drops[sender][reason]``."""
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            self._drop(sender, "unknown-type")
            return
        try:
            handler(self, msg, sender)
        except (TypeError, AttributeError):
            # only reachable with hand-built objects whose fields have the wrong types
            # (decode_message type-checks everything that arrives as bytes)
            self._drop(sender, "malformed")

    def tick(self) -> None:
        """Advance logical time by one tick: batching, view-change timer, re-sends."""
        self.now += 1
        self._maybe_propose()
        if self.timer_on:
            self.timer -= 1
            if self.timer <= 0:
                self._on_timeout()
        if self._unfinished:
            self._resend_votes()
        if self.now % self.cfg.resend_interval == 0:
            self._resend()

    def signed(self, request_id: int, signature: bytes) -> None:
        """Return the signature for a :class:`SignRequest`. Unknown ids are ignored
        (e.g. requests issued before a restart)."""
        entry = self._unsigned.pop(request_id, None)
        if entry is None:
            return
        msg, dests, then = entry
        done = dataclasses.replace(msg, sig=signature)
        if then is not None:
            then(done)
        else:
            self._finish(done, dests)

    def ready(self) -> Ready:
        """Take the effects accumulated since the previous ``ready()`` (see
        :mod:`consensus.effects`). Effects caused while the driver carries this one out
        (e.g. by ``signed()``) go into the next one, so nothing is lost or repeated."""
        out, self._ready = self._ready, Ready()
        self._outstanding += 1
        return out

    def advance(self, ready: Ready) -> None:
        """Acknowledge that ``ready`` was carried out (persisted, sent, delivered)."""
        self._outstanding = max(0, self._outstanding - 1)

    def has_ready(self) -> bool:
        """True when ``ready()`` would return effects."""
        r = self._ready
        return bool(r.persist or r.sign_requests or r.messages or r.committed)

    # -- effect helpers ---------------------------------------------------------------
    def _others(self) -> tuple[str, ...]:
        return self.others_cache

    def _drop(self, sender: str, reason: str) -> None:
        d = self.drops.setdefault(sender, {})
        d[reason] = d.get(reason, 0) + 1

    def _send(self, msg: Any, dests: tuple[str, ...]) -> None:
        if dests:
            self._ready.messages.append(Outbound(msg, dests))
            self.sent_count += len(dests)

    def _persist(self, kind: str, seq: int, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else encode_message(obj)
        self._ready.persist.append(Record(kind, seq, data))

    @property
    def voting(self) -> bool:
        """True while this replica is in the member set of its window."""
        return self.me in self.members

    def _sign(self, msg: Any, dests: tuple[str, ...] | None = None) -> None:
        """Sign ``msg`` (inline or via a sign request), then persist, send, self-deliver.
        Observers (not members) never sign."""
        if not self.voting:
            return
        if self.signer is not None:
            self._finish(dataclasses.replace(msg, sig=self.signer.sign(msg.signing_bytes())),
                         dests)
            return
        self._sign_id += 1
        self._unsigned[self._sign_id] = (msg, dests, None)
        self._ready.sign_requests.append(SignRequest(self._sign_id, msg.signing_bytes()))

    def _sign_then(self, msg: Any, then: Callable[[Any], None]) -> None:
        """Sign ``msg`` and pass the signed message to ``then`` (no persist, no send)."""
        if not self.voting:
            return
        if self.signer is not None:
            then(dataclasses.replace(msg, sig=self.signer.sign(msg.signing_bytes())))
            return
        self._sign_id += 1
        self._unsigned[self._sign_id] = (msg, None, then)
        self._ready.sign_requests.append(SignRequest(self._sign_id, msg.signing_bytes()))

    def _new_slot(self) -> Slot:
        return Slot()

    def _finish(self, msg: Any, dests: tuple[str, ...] | None) -> None:
        seq = getattr(msg, "seq", self.low)
        self._persist("msg" if hasattr(msg, "seq") else "viewchange", seq, msg)
        if isinstance(msg, (PrePrepare, Prepare, Commit)):
            slot = self._slot(seq)
            slot.sent[(msg.KIND, msg.view)] = msg
            slot.sent_tick = self.now
            self._unfinished.add(seq)
        self._send(msg, self._others() if dests is None else dests)
        self._own(msg)

    def _own(self, msg: Any) -> None:
        if isinstance(msg, PrePrepare):
            self._accept_pre_prepare(msg)
        elif isinstance(msg, (Prepare, Commit)):
            self._store_vote(msg)
        else:
            self._HANDLERS[type(msg)](self, msg, self.me)

    _HANDLERS: dict[type, Callable[..., None]] = {}


Replica._HANDLERS = {
    Request: Replica._step_request,
    PrePrepare: Replica._step_pre_prepare,
    Prepare: Replica._step_vote,
    Commit: Replica._step_vote,
    Checkpoint: Replica._step_checkpoint,
    ViewChange: Replica._step_view_change,
    NewView: Replica._step_new_view,
    StateRequest: Replica._step_state_request,
    StateReply: Replica._step_state_reply,
    SnapshotManifestRequest: Replica._step_manifest_request,
    SnapshotManifest: Replica._step_snapshot_manifest,
    SnapshotChunkRequest: Replica._step_chunk_request,
    SnapshotChunk: Replica._step_snapshot_chunk,
}
