"""The normal case: pre-prepare, prepare, commit, execute (Castro & Liskov, TOCS 2002, 4.2).

Theory of operation
-------------------
The protocol is described in :mod:`consensus.replica`; this module holds its per-message
hot path. Every PREPARE and COMMIT of every replica passes through :meth:`_step_vote`
(``2 n`` of them per replica and batch), so it is written for speed: no slot object is
built unless the sequence number has none, a vote only triggers the prepared / committed
checks once its ``(view, digest)`` has a quorum, and only that ``(view, digest)`` is
examined. The checks themselves are unchanged: every vote's signature is verified (the
injected ``verify`` may memoise, as the simulator does) before it counts.

:class:`Slot` is the PBFT message log entry of one sequence number.
"""

from __future__ import annotations

from typing import Any

from .batching import MAX_EVIDENCE_BYTES, within_limits
from .certificate import prepared_proof
from .effects import Decision
from .evidence import make_evidence
from .messages import (
    Batch,
    Commit,
    CommitCertificate,
    Prepare,
    PreparedProof,
    PrePrepare,
    batch_digest,
)
from .persist import pack_prepared

__all__ = ["NormalCaseMixin", "Slot"]

_PREPARE = Prepare.KIND
_COMMIT = Commit.KIND


class Slot:
    """Protocol state for one sequence number (the PBFT message log entry)."""

    __slots__ = ("pp", "batches", "prepares", "commits", "voted", "prepared", "sent", "cert",
                 "sent_tick")

    def __init__(self) -> None:
        self.pp: PrePrepare | None = None                    # accepted, highest view
        self.batches: dict[bytes, Batch] = {}                # digest -> batch
        self.prepares: dict[tuple[int, bytes], dict[str, Prepare]] = {}
        self.commits: dict[tuple[int, bytes], dict[str, Commit]] = {}
        self.voted: dict[tuple[int, int, str], Any] = {}     # (KIND, view, sender) -> vote
        self.prepared: PreparedProof | None = None           # highest-view certificate
        self.sent: dict[tuple[int, int], Any] = {}           # (KIND, view) -> own msg
        self.cert: CommitCertificate | None = None
        self.sent_tick = 0  # replica tick when own votes here were last (re)sent


class NormalCaseMixin:
    """Normal-case behaviour of :class:`consensus.replica.Replica`."""

    def _slot(self: Any, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot()
        return slot

    def _check_vote(self: Any, msg: Any, sender: str) -> Slot | None:
        """Common checks for PRE-PREPARE / PREPARE / COMMIT; the slot or None (dropped)."""
        seq = msg.seq
        if not (self.low < seq <= self.high):
            self._behind_hint(msg, sender)
            self._help_behind(sender, seq)
            self._drop(sender, "out-of-window")
            return None
        if not self.window_members.check_signed(msg, self.verify):
            self._drop(sender, "bad-signature")
            return None
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot()
        return slot

    def _step_pre_prepare(self: Any, pp: PrePrepare, sender: str) -> None:
        if pp.view != self.view or self.in_view_change:
            self._drop(sender, "wrong-view")
            return
        if pp.sender != self.primary(pp.view):
            self._drop(sender, "not-primary")
            return
        b = pp.batch
        if b is None or b.view != pp.view or b.primary != pp.sender or \
                batch_digest(b) != pp.digest or not within_limits(b):
            self._drop(sender, "bad-batch")
            return
        slot = self._check_vote(pp, sender)
        if slot is None:
            return
        if not self._requests_valid(b.requests):
            self._drop(sender, "bad-request-signature")
            return
        self._accept_pre_prepare(pp, slot)

    def _accept_pre_prepare(self: Any, pp: PrePrepare, slot: Slot | None = None) -> None:
        slot = slot or self._slot(pp.seq)
        old = slot.pp
        if old is not None and old.view == pp.view:
            if old.digest != pp.digest:
                self._add_evidence(old, pp)
            elif pp.batch is not None and pp.digest not in slot.batches:
                slot.batches[pp.digest] = pp.batch  # the body of a NEW-VIEW re-proposal
                self._check_committed(pp.seq, slot)
            return
        if old is not None and old.view > pp.view:
            return
        slot.pp = pp  # without a batch only from a NEW-VIEW (fetched once decided)
        if pp.batch is not None:
            slot.batches[pp.digest] = pp.batch
            for r in pp.batch.requests:
                self.inflight.setdefault(r.key, pp.seq)
        self._arm_timer()
        if (_PREPARE, pp.view) not in slot.sent:
            prep = Prepare(pp.view, pp.seq, pp.digest, self.me)
            slot.sent[(_PREPARE, pp.view)] = prep
            self._sign(prep)
        self._check_prepared(pp.seq, slot, pp.view, pp.digest)
        self._check_committed(pp.seq, slot)

    def _step_vote(self: Any, msg: Prepare | Commit, sender: str) -> None:
        view = msg.view
        if view > self.view or (view != self.view and msg.KIND == _PREPARE):
            # (commits of older views still count: a quorum of them certifies a decision;
            # higher views are refused so a faulty member cannot grow the log unboundedly)
            self._drop(sender, "wrong-view")
            return
        if msg.sender not in self.window_members:
            self._drop(sender, "not-member")
            return
        slot = self._check_vote(msg, sender)
        if slot is not None:
            self._store_vote(msg, slot)

    def _store_vote(self: Any, msg: Prepare | Commit, slot: Slot | None = None) -> None:
        if slot is None:
            slot = self._slot(msg.seq)
        kind, view = msg.KIND, msg.view
        key = (kind, view, msg.sender)
        first = slot.voted.get(key)
        if first is not None:
            if first.digest != msg.digest:
                self._add_evidence(first, msg)
            return
        slot.voted[key] = msg
        vd = (view, msg.digest)
        if kind == _PREPARE:
            votes = slot.prepares.get(vd)
            if votes is None:
                votes = slot.prepares[vd] = {}
            votes[msg.sender] = msg
            if len(votes) >= self._prepared_quorum():
                self._check_prepared(msg.seq, slot, view, msg.digest)
        else:
            votes = slot.commits.get(vd)
            if votes is None:
                votes = slot.commits[vd] = {}
            votes[msg.sender] = msg
            if slot.cert is None and len(votes) >= self._commit_quorum():
                self._check_committed(msg.seq, slot, vd)

    def _prepared_quorum(self: Any) -> int:
        """PREPAREs needed to be prepared: a quorum (the primary prepares too)."""
        return self.window_members.quorum

    def _check_prepared(self: Any, seq: int, slot: Slot, view: int, digest: bytes) -> None:
        pp = slot.pp
        if pp is None or pp.view != view or pp.digest != digest:
            return
        if (_COMMIT, view) in slot.sent or view != self.view or self.in_view_change:
            return
        votes = slot.prepares.get((view, digest), {})
        if len(votes) < self._prepared_quorum():
            return
        members = self.window_members
        chosen = [votes[s] for s in sorted(votes)][: members.quorum]
        proof = prepared_proof(pp, chosen, members)
        slot.prepared = proof
        self.known_prepared.add((view, seq, digest))
        self._persist("prepared", seq, pack_prepared(proof, slot.batches.get(digest)))
        commit = Commit(view, seq, digest, self.me)
        slot.sent[(_COMMIT, view)] = commit
        self._sign(commit)

    def _commit_quorum(self: Any) -> int:
        return self.window_members.quorum

    def _check_committed(self: Any, seq: int, slot: Slot,
                         only: tuple[int, bytes] | None = None) -> None:
        """Certify the batch at ``seq`` once a quorum of COMMITs for one (view, digest) and
        the batch are known (``only``: the one (view, digest) that just got a vote)."""
        if slot.cert is not None:
            return
        items = [(only, slot.commits[only])] if only is not None else \
            sorted(slot.commits.items())
        quorum = self._commit_quorum()
        for (view, digest), votes in items:
            if len(votes) < quorum:
                continue
            batch = slot.batches.get(digest)
            if batch is None:
                self._need_batch(seq)
                continue
            commits = tuple(votes[s] for s in sorted(votes))[: self.window_members.quorum]
            slot.cert = CommitCertificate(seq, view, batch, commits)
            self._execute_ready()
            return

    def _execute_ready(self: Any) -> None:
        start = self.last_executed
        while True:
            seq = self.last_executed + 1
            slot = self.slots.get(seq)
            if slot is None or slot.cert is None:
                break
            self._execute(slot.cert)
        if self.last_executed != start:
            self._caught_up()

    def _execute(self: Any, cert: CommitCertificate) -> None:
        """Execute a certified batch at ``last_executed + 1`` and emit its decision."""
        batch = cert.batch
        members = self.state.members
        results = self.state.execute(cert.seq, batch)
        self._persist("decided", cert.seq, cert)
        self._ready.committed.append(Decision(cert.seq, batch, cert, tuple(results), members))
        for r in batch.requests:
            self._unpool(r.key)
        self.next_seq = max(self.next_seq, cert.seq + 1)
        self.last_progress = self.now
        self._progress(batch)
        self._after_execute(cert.seq)

    def _progress(self: Any, batch: Batch) -> None:
        """Execution is progress: reset the view-change timer and, when the batch was
        created in the current view, the exponential back-off."""
        if self.in_view_change:
            return  # the new-view timer keeps running: progress in an old view is not enough
        if batch.view == self.view:
            self.failed_views = 0
        self.timer_on = False
        self._arm_timer()

    def _add_evidence(self: Any, a: Any, b: Any) -> None:
        """Keep one equivocation proof per member not already penalised (bounded by n)."""
        rep = self.state.reputation
        if rep.until.get(a.sender, 0) > rep.last_seq or a.sender in self.evidence:
            return
        ev = make_evidence(a, b)
        if len(ev.a) + len(ev.b) <= MAX_EVIDENCE_BYTES:  # always, for ids of <= 256 bytes
            self.evidence[a.sender] = ev
