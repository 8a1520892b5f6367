"""Persisted records and restart: ``restore(records) -> Replica`` (persist before send).

Theory of operation
-------------------
A replica emits :class:`~consensus.effects.Record` s in ``Ready.persist``; the driver
appends them durably **before** sending that Ready's messages. Kinds (``data`` is
canonical msgpack):

``"msg"``       a message this replica signed for a sequence number (pre-prepare with
                batch, prepare, commit, checkpoint): what it must never contradict;
``"viewchange"`` a VIEW-CHANGE or NEW-VIEW (with its pre-prepares) this replica signed;
``"prepared"``  ``[PreparedProof, batch or None]``: a prepared certificate and its batch,
                kept so a decision prepared here survives a view change after a crash
                (TOCS 4.4) and can still be executed;
``"decided"``   a commit certificate this replica executed (the decided log);
``"stable"``    ``[CheckpointProof, snapshot, view, primary]``: a stable checkpoint, the
                replicated state at it, and the view the replica was running with the
                primary it had pinned (``primary`` None: view 0, never pinned). Local
                storage, not a message: no size limit (a multi-MiB snapshot restores;
                state transfer moves it in chunks, :mod:`consensus.checkpoint`);
``"view"``      ``[view, primary]``: the replica entered that view (accepted the
                NEW-VIEW that ``primary`` sent; the pin survives restarts);
``"request"``   a request submitted locally with ``propose`` (re-submitted on restart
                until executed; delete it once a decided batch contains it);
``"members"``   a :class:`~consensus.messages.MembershipProof`: a completed membership
                change (``seq`` its boundary), served to lagging replicas so they can
                verify checkpoints of newer member sets. Never compacted (one per
                change).

Compaction: once a ``"stable"`` record at ``s`` is durable, records with ``seq <= s``
of the kinds ``msg``, ``prepared`` and older ``stable`` may be deleted (``decided``
ones too, unless the node keeps them as its decided log). ``viewchange`` and ``view``
records carry the low watermark as ``seq`` but are **not** compacted by it: keep the
newest ``view`` record and the ``viewchange`` records of the newest view (a new primary's
NEW-VIEW holds pre-prepares it must not contradict). ``request`` records go once their
request is in a decided batch.

:func:`restore` rebuilds a replica from the records: installs the newest stable
snapshot, re-executes the decided batches above it into the (fresh) application state
machine (not re-emitted as decisions: they were delivered before the crash), reinstates
prepared certificates, and reinstates every message it signed, so it never signs a
second, different PREPARE/COMMIT/PRE-PREPARE for a (view, sequence number) it already
voted on, nor a VIEW-CHANGE for a lower view. Records it cannot decode raise
``ValueError`` (local storage is trusted; corruption is a local fault).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from identity.canonical import DecodeError, decode

from .effects import Ready, Record
from .messages import (
    Batch,
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    MessageDecodeError,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    ViewChange,
    batch_digest,
    decode_message,
)
from .state import state_digest
from .wire import pack as pack_wire

__all__ = ["pack_prepared", "restore", "unpack_prepared"]


def restore(me: str, members: Any, records: Iterable[Record], *, replica_cls: Any = None,
            **kwargs: Any) -> Any:
    """A :class:`~consensus.replica.Replica` rebuilt from its persisted ``records`` (in
    the order they were written). ``members`` is the genesis member set and ``kwargs``
    the usual constructor arguments (``config``, ``app`` (fresh), ``verify``, ``signer``).
    Raises ValueError on undecodable records."""
    if replica_cls is None:
        from .replica import Replica as replica_cls
    records = list(records)
    r = replica_cls(me, members, **kwargs)
    r.entering = True  # no new batches until every record is back (next_seq!)
    try:
        r.member_chain = []
        r._learn_changes([_local(x.data) for x in records if x.kind == "members"],
                         persist=False)
        _restore_stable(r, [x for x in records if x.kind == "stable"])
        _restore_decided(r, [x for x in records if x.kind == "decided"])
        view, entered = 0, 0
        pins: dict[int, str] = {}
        for rec in records:
            if rec.kind == "prepared" and rec.seq > r.low:
                _restore_prepared(r, *unpack_prepared(rec.data))
            elif rec.kind in ("msg", "viewchange"):
                msg = _local(rec.data)
                v, e = _restore_own(r, msg)
                view, entered = max(view, v), max(entered, e)
                if isinstance(msg, NewView):
                    pins[msg.view] = msg.sender
            elif rec.kind == "request":
                req = _local(rec.data)  # own, signed before it was persisted
                if req.origin == me and req.client == me:
                    r._own_rid = max(r._own_rid, req.rid)
                if not r.window_members.check_signed(req, r.verify):
                    continue  # signed with a key this member set no longer has
                r._on_request(req)
                if req.key in r.pending:
                    r.local[req.key] = r.now
            elif rec.kind == "view":
                v, who = decode(rec.data)
                entered = max(entered, int(v))
                pins[int(v)] = str(who)
            elif rec.kind == "stable":
                _proof, _snap, v, who = decode(rec.data, max_bytes=len(rec.data))
                entered = max(entered, int(v))
                if who is not None:
                    pins[int(v)] = str(who)
    except (DecodeError, MessageDecodeError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"corrupt consensus record: {exc}") from None
    r.entering = False
    # request ids of the default client continue after those executed (their records
    # may have been deleted once decided)
    own = r.state.clients.get((me, me))
    if own is not None:
        r._own_rid = max(r._own_rid, own.max_rid)
    r.view = max(view, entered)
    r.in_view_change = view > entered
    if entered in pins:
        r.view_primary = (entered, pins[entered])
    if r.in_view_change:
        r._vc_timer()
    r._execute_ready()
    r._arm_timer()
    r._probe()
    old = r._ready
    r._ready = Ready(persist=old.persist, sign_requests=old.sign_requests,
                     messages=old.messages)
    return r


def _restore_stable(r: Any, stables: list[Record]) -> None:
    if not stables:
        return
    rec = max(stables, key=lambda x: x.seq)
    proof_w, snap, _view, _primary = decode(rec.data, max_bytes=len(rec.data))
    proof = CheckpointProof.from_wire(proof_w)
    if state_digest(snap) != proof.state_digest:
        raise ValueError("stable record snapshot does not match its proof")
    r.state.restore(snap)
    r.snapshots[proof.seq] = (snap, proof.state_digest, r.state.members)
    r._make_stable(proof, record=False)


def _restore_decided(r: Any, decided: list[Record]) -> None:
    certs: dict[int, CommitCertificate] = {}
    for rec in decided:
        if rec.seq > r.last_executed:
            certs[rec.seq] = _local(rec.data)
    seq = r.last_executed + 1
    while seq in certs:
        slot = r.slots.setdefault(seq, r._new_slot())
        slot.cert = certs[seq]
        slot.batches[batch_digest(certs[seq].batch)] = certs[seq].batch
        r._execute(certs[seq])
        seq += 1


def pack_prepared(proof: PreparedProof, batch: Batch | None) -> bytes:
    """Data of a ``"prepared"`` record."""
    return pack_wire([proof.wire(), None if batch is None else batch.wire()])


def _local(data: bytes) -> Any:
    """Decode one of the replica's own records: no network size limit applies."""
    return decode_message(data, max_bytes=len(data))


def unpack_prepared(data: bytes) -> tuple[PreparedProof, Batch | None]:
    """Inverse of :func:`pack_prepared`; raises DecodeError / TypeError / ValueError."""
    proof_w, batch_w = decode(data, max_bytes=len(data))  # local: no network limit
    return PreparedProof.from_wire(proof_w), None if batch_w is None else \
        Batch.from_wire(batch_w)


def _restore_prepared(r: Any, proof: PreparedProof, batch: Batch | None) -> None:
    slot = r.slots.setdefault(proof.seq, r._new_slot())
    if batch is not None and batch_digest(batch) == proof.digest:
        slot.batches[proof.digest] = batch
    if slot.prepared is None or slot.prepared.view <= proof.view:
        slot.prepared = proof
    r.known_prepared.add((proof.view, proof.seq, proof.digest))


def _restore_own(r: Any, msg: Any) -> tuple[int, int]:
    """Reinstate one own signed message; returns (view it implies, view it entered)."""
    if isinstance(msg, (PrePrepare, Prepare, Commit)):
        if msg.seq <= r.low:
            return msg.view, msg.view
        slot = r.slots.setdefault(msg.seq, r._new_slot())
        slot.sent[(msg.KIND, msg.view)] = msg
        r._unfinished.add(msg.seq)  # re-sent one resend interval after the restart
        if isinstance(msg, PrePrepare):
            if msg.batch is not None:
                slot.batches[msg.digest] = msg.batch
            if slot.pp is None or slot.pp.view <= msg.view:
                slot.pp = msg
            r.next_seq = max(r.next_seq, msg.seq + 1)
        else:
            r._store_vote(msg, slot)
        return msg.view, msg.view
    if isinstance(msg, Checkpoint):
        if msg.seq > r.low:
            r.my_ckpt = msg
        return 0, 0
    if isinstance(msg, ViewChange):
        r.my_vc = msg
        r.vc_latest[r.me] = max(r.vc_latest.get(r.me, 0), msg.new_view)
        r.vc_votes.setdefault(msg.new_view, {})[r.me] = msg
        return msg.new_view, 0
    if isinstance(msg, NewView):
        r.my_nv = msg
        for pp in msg.pre_prepares:
            _restore_own(r, pp)
        return msg.view, msg.view
    return 0, 0
