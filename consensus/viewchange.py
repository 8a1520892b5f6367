"""View change and new view with prepared certificates (Castro & Liskov, TOCS 2002, 4.4).

Theory of operation
-------------------
When a backup's timer expires (or ``f + 1`` members already asked for a higher view) it
moves to view ``v + 1``, stops accepting PRE-PREPARE/PREPARE for lower views and
broadcasts VIEW-CHANGE(v + 1, C, P): ``C`` its stable-checkpoint certificate, ``P`` the
prepared certificates it holds above it. It then waits ``timeout`` ticks for the
NEW-VIEW; if none comes it moves on to ``v + 2`` with the timeout doubled.

The primary of ``v + 1`` collects a quorum ``V`` of valid VIEW-CHANGEs (its own included)
and computes ``O``: with ``min_s`` the highest checkpoint in ``V`` and ``max_s`` the
highest prepared sequence number, for each ``n`` in ``(min_s, max_s]`` it re-proposes
the digest of the prepared certificate with the highest view (a committed batch is
prepared at ``f + 1`` honest members of any quorum, so it is always picked), or a null
batch when there is none. It signs each pre-prepare of ``O`` and then NEW-VIEW(v+1, V, O).

Size. Messages are bounded by the codec's 4 MiB, so nothing here carries batches or
whole PREPAREs: a prepared certificate is the signed pre-prepare header plus a signer
bitmap and the quorum's PREPARE signatures (:class:`~consensus.messages.PreparedProof`);
a VIEW-CHANGE's signature covers only its summary (checkpoint, and ``(seq, view,
digest)`` per certificate); a NEW-VIEW carries the signed summaries of ``V``, the
checkpoint proof of ``min_s`` and only the prepared certificates ``O`` re-proposes.
That is everything 4.4 needs to check ``O``: the summaries determine ``min_s`` and the
highest view per sequence number, and each chosen entry comes with its proof (an honest
primary never includes a summary whose highest entry it cannot prove, because it
verified every VIEW-CHANGE in full). Every signature is still checked (known facts are
cached). At n = 100, window 64: a VIEW-CHANGE is ~0.3 MB, a NEW-VIEW ~0.5 MB.

Who leads. The primary of a view is computed from executed state
(:mod:`consensus.leader`), so before building a NEW-VIEW, or rejecting one as "not
from the primary", a replica catches up to what the quorum ``V`` executed (each
VIEW-CHANGE reports it; :meth:`ViewChangeMixin._behind_quorum`), and a NEW-VIEW that
arrives while it is behind is kept and retried once it caught up.

A backup accepts NEW-VIEW only from the view's primary, after verifying it and
recomputing ``O`` itself; it then enters the view, treats ``O`` as ordinary pre-prepares
(sending PREPAREs; the batch is attached when the replica holds it, else it arrives with
the decision by state transfer) and fetches state when ``min_s`` is above what it has
executed. Timeouts grow as ``view_timeout * 2**k`` only while views keep failing (``k``
resets on progress, see :mod:`consensus.replica`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from identity.canonical import encode

from .certificate import CertificateError, verify_checkpoint, verify_prepared
from .messages import (
    Batch,
    NewView,
    PreparedEntry,
    PreparedProof,
    PrePrepare,
    StateRequest,
    ViewChange,
    ViewChangeSummary,
    batch_digest,
)

__all__ = ["ViewChangeMixin", "compute_new_view"]


def compute_new_view(view: int, primary: str, vcs: tuple[ViewChangeSummary, ...]) -> tuple[
        int, dict[int, PreparedEntry], list[PrePrepare]]:
    """``(min_s, chosen, O)`` for a NEW-VIEW of ``view`` by ``primary`` from the quorum
    ``vcs`` (TOCS 4.4): ``chosen`` maps each sequence number above ``min_s`` that some
    summary names to its highest-view entry; ``O`` holds unsigned pre-prepares without
    batches, one per sequence number in ``(min_s, max_s]`` (a null batch where nothing
    was prepared)."""
    min_s = max(vc.ckpt_seq for vc in vcs)
    best: dict[int, PreparedEntry] = {}
    for vc in vcs:
        for e in vc.prepared:
            if e.seq <= min_s:
                continue
            cur = best.get(e.seq)
            if cur is None or (e.view, e.digest) > (cur.view, cur.digest):
                best[e.seq] = e
    max_s = max(best, default=min_s)
    null = batch_digest(Batch(view, primary, (), ()))
    out = [PrePrepare(view, n, best[n].digest if n in best else null, primary)
           for n in range(min_s + 1, max_s + 1)]
    return min_s, best, out


class ViewChangeMixin:
    """View-change behaviour of :class:`consensus.replica.Replica`."""

    def _init_view_change(self: Any) -> None:
        self.vc_votes: dict[int, dict[str, ViewChange]] = {}
        self.vc_latest: dict[str, int] = {}
        self.my_vc: ViewChange | None = None
        self.my_nv: NewView | None = None
        self.nv_building: int | None = None
        self.nv_sent_to: dict[str, int] = {}
        self.nv_deferred: NewView | None = None  # from a primary we cannot confirm yet
        self.catchup_since: tuple[int, int] = (-1, 0)  # (view, tick): see _behind_quorum
        self.fetched_for_view = False
        self.entering = False  # inside _enter_view: no new batches yet

    def _on_timeout(self: Any) -> None:
        if not self.voting:
            self.timer_on = False
            return
        self._start_view_change(self.view + 1)

    def _start_view_change(self: Any, view: int) -> None:
        """Move to ``view`` and broadcast VIEW-CHANGE (TOCS 4.4)."""
        assert view > self.view or (view == self.view and not self.in_view_change)
        if not self.voting:
            return
        self.failed_views += 1
        self.view = view
        self.in_view_change = True
        self.fetched_for_view = False
        self.timer_on = False  # runs once a quorum wants this view (_vc_timer)
        self.my_nv = None
        self.nv_building = None
        prepared = tuple(s.prepared for q, s in sorted(self.slots.items())
                         if q > self.low and s.prepared is not None)
        self._sign(ViewChange(view, self.stable_proof, prepared, self.last_executed,
                              self.me))

    def _valid_view_change(self: Any, vc: ViewChange) -> bool:
        """Signature, checkpoint proof and every prepared certificate of ``vc`` (proofs
        of facts already known are not re-verified)."""
        if vc.sender not in self.members:
            return False
        cp = vc.checkpoint
        try:
            if vc.sender != self.me:
                if not self.members.check_signed(vc, self.verify):
                    return False
                if not self._known_checkpoint(cp):
                    verify_checkpoint(cp, self.members, verify_fn=self.verify)
            for p in vc.prepared:
                if not (cp.seq < p.seq <= cp.seq + self.cfg.window) or p.view >= vc.new_view:
                    return False
                self._note_pre_prepare(p.pre_prepare())
                if vc.sender != self.me:
                    self._check_proof(p)
        except CertificateError:
            return False
        return True

    def _check_proof(self: Any, p: PreparedProof) -> None:
        """Verify a prepared certificate unless its fact is known; raises CertificateError."""
        fact = (p.view, p.seq, p.digest)
        if fact not in self.known_prepared:
            verify_prepared(p, self.members, verify_fn=self.verify)
            self.known_prepared.add(fact)

    def _note_pre_prepare(self: Any, pp: PrePrepare) -> None:
        """A pre-prepare seen inside a prepared certificate that conflicts with the one we
        accepted for the same (view, n) from the same primary proves it equivocated (a
        primary that splits the backups shows up here during the view change)."""
        slot = self.slots.get(pp.seq)
        mine = slot.pp if slot is not None else None
        if mine is not None and (mine.view, mine.sender) == (pp.view, pp.sender) and \
                mine.digest != pp.digest and self.members.check_signed(pp, self.verify):
            self._add_evidence(mine, pp)

    def _step_view_change(self: Any, vc: ViewChange, sender: str) -> None:
        if vc.new_view < self.view or (vc.new_view == self.view and not self.in_view_change):
            self._drop(sender, "stale-view")
            self._help_lagging(vc.sender)
            return
        self._help_behind(vc.sender, vc.checkpoint.seq + 1)
        if vc.new_view <= self.vc_latest.get(vc.sender, -1):
            return
        if not self._valid_view_change(vc):
            self._drop(sender, "bad-view-change")
            return
        old = self.vc_latest.get(vc.sender)
        if old is not None:
            self.vc_votes.get(old, {}).pop(vc.sender, None)
        self.vc_latest[vc.sender] = vc.new_view
        if vc.sender == self.me:
            self.my_vc = vc
        self.vc_votes.setdefault(vc.new_view, {})[vc.sender] = vc
        if vc.checkpoint.seq > self.low:
            self._on_stable_proof(vc.checkpoint)  # verified above; fetch state if behind
        self._join_higher_view()
        self._vc_timer()
        self._maybe_new_view()

    def _vc_timer(self: Any) -> None:
        """Start the new-view timer once a quorum asked for our view or a higher one (TOCS
        4.5.2): a replica never runs ahead of the others by timing out alone."""
        want = sum(1 for v in self.vc_latest.values() if v >= self.view)
        if self.in_view_change and not self.timer_on and want >= self.members.quorum:
            self.timer_on = True
            self.timer = self.current_timeout()

    def _join_higher_view(self: Any) -> None:
        """f + 1 members want views above ours: join the smallest of them (TOCS 4.5.2)."""
        higher = sorted(v for s, v in self.vc_latest.items() if v > self.view and s != self.me)
        if len(higher) >= self.members.weak:
            self._start_view_change(higher[-self.members.weak])

    def _maybe_new_view(self: Any) -> None:
        v = self.view
        if not self.in_view_change or self.nv_building == v or self.primary(v) != self.me:
            return
        votes = self.vc_votes.get(v, {})
        if self.me not in votes or len(votes) < self.members.quorum:
            return
        others = [votes[s] for s in sorted(votes) if s != self.me][: self.members.quorum - 1]
        vcs = (votes[self.me], *others)
        summaries = tuple(vc.summary() for vc in vcs)
        if self._behind_quorum(summaries):
            return  # its state may name another primary: catch up first (_caught_up)
        _min_s, chosen, o = compute_new_view(v, self.me, summaries)
        have = {(p.seq, p.view, p.digest): p for vc in vcs for p in vc.prepared}
        proofs = tuple(have[(e.seq, e.view, e.digest)] for _, e in sorted(chosen.items()))
        cp = max((vc.checkpoint for vc in vcs), key=lambda c: c.seq)
        self.nv_building = v
        self._nv_parts = {"view": v, "head": (summaries, cp, proofs), "o": [None] * len(o),
                          "left": len(o)}
        if not o:
            self._sign(NewView(v, summaries, cp, proofs, (), self.me))
            return
        for i, pp in enumerate(o):
            self._sign_then(pp, lambda m, i=i: self._nv_part(v, i, m))

    def _nv_part(self: Any, view: int, i: int, pp: PrePrepare) -> None:
        parts = self._nv_parts
        if parts["view"] != view or self.view != view or not self.in_view_change:
            return
        parts["o"][i] = pp
        parts["left"] -= 1
        if parts["left"] == 0:
            self._sign(NewView(view, *parts["head"], tuple(parts["o"]), self.me))

    def _step_new_view(self: Any, nv: NewView, sender: str) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            self._drop(sender, "stale-view")
            return
        if nv.sender != self.primary(nv.view):
            if self._behind_quorum(nv.view_changes):
                # the primary we compute may be stale: retry the NEW-VIEW once state
                # transfer caught us up (_caught_up)
                self.nv_deferred = nv
            self._drop(sender, "not-primary")
            return
        if nv.sender != self.me and not self._valid_new_view(nv):
            self._drop(sender, "bad-new-view")
            return
        self._enter_view(nv)

    def _valid_new_view(self: Any, nv: NewView) -> bool:
        """Check a NEW-VIEW from the view's primary (TOCS 4.4): its signature, a quorum of
        validly signed VIEW-CHANGE summaries for its view, the proof of their highest
        checkpoint, a valid prepared certificate for every re-proposed entry, and ``O``
        equal to what the summaries determine."""
        m = self.members
        if not m.check_signed(nv, self.verify):
            return False
        vcs = nv.view_changes
        if len({vc.sender for vc in vcs}) != len(vcs) or len(vcs) < m.quorum:
            return False
        known = self.vc_votes.get(nv.view, {})
        window = self.cfg.window
        for vc in vcs:
            key = m.key(vc.sender)
            if vc.new_view != nv.view or key is None:
                return False
            if any(not (vc.ckpt_seq < e.seq <= vc.ckpt_seq + window) or e.view >= nv.view
                   for e in vc.prepared):
                return False
            mine = known.get(vc.sender)
            if mine is not None and mine.sig == vc.sig and \
                    mine.signing_bytes() == vc.signing_bytes():
                continue  # the VIEW-CHANGE we verified on receipt
            if not self.verify(key, vc.signing_bytes(), vc.sig):
                return False
        min_s, chosen, o = compute_new_view(nv.view, nv.sender, vcs)
        cp = nv.checkpoint
        if cp.seq != min_s or not any((vc.ckpt_seq, vc.ckpt_digest) == (cp.seq, cp.state_digest)
                                      for vc in vcs):
            return False
        if len(nv.proofs) != len(chosen) or len(nv.pre_prepares) != len(o):
            return False
        try:
            if not self._known_checkpoint(cp):
                verify_checkpoint(cp, m, verify_fn=self.verify)
            for p, (_, e) in zip(nv.proofs, sorted(chosen.items()), strict=True):
                if (p.seq, p.view, p.digest) != (e.seq, e.view, e.digest):
                    return False
                self._check_proof(p)
        except CertificateError:
            return False
        for want, got in zip(o, nv.pre_prepares, strict=True):
            same = (want.view, want.seq, want.digest, want.sender) == \
                (got.view, got.seq, got.digest, got.sender)
            if not same or not m.check_signed(got, self.verify):
                return False
        for p in nv.proofs:
            self._note_pre_prepare(p.pre_prepare())
        return True

    def _enter_view(self: Any, nv: NewView) -> None:
        """Install a valid NEW-VIEW: enter its view and process ``O`` (TOCS 4.4)."""
        self.view = nv.view
        self.in_view_change = False
        self.timer_on = False
        self.view_primary = (nv.view, nv.sender)  # pinned for as long as the view runs
        if nv.sender == self.me:
            self.my_nv = nv
        else:
            self._persist("view", self.low, encode([nv.view, nv.sender]))
        for v in [v for v in self.vc_votes if v <= nv.view]:
            del self.vc_votes[v]
        best = nv.checkpoint
        # O owns every sequence number up to max_s: claim them before anything below can
        # let the primary cut a new batch (a second pre-prepare for one (v, n))
        top = max([best.seq, *[pp.seq for pp in nv.pre_prepares]])
        self.next_seq = max(top, self.last_executed) + 1
        self.inflight = {}
        for q, s in self.slots.items():
            if q > self.last_executed and s.pp is not None and s.cert is None:
                s.pp = None  # lower-view pre-prepares are superseded by O
        o = [self._with_batch(pp) for pp in nv.pre_prepares]
        for pp in o:
            for r in pp.batch.requests if pp.batch is not None else ():
                self.inflight[r.key] = pp.seq
        self.entering = True
        try:
            if best.seq > self.low:
                self._on_stable_proof(best)
            for pp in o:
                if self.low < pp.seq <= self.high:
                    self._accept_pre_prepare(pp)
        finally:
            self.entering = False
        self._arm_timer()
        self._maybe_propose()

    def _with_batch(self: Any, pp: PrePrepare) -> PrePrepare:
        """``pp`` (from a NEW-VIEW, no batch) with its batch attached when this replica
        holds it (a null batch it can rebuild)."""
        slot = self.slots.get(pp.seq)
        batch = slot.batches.get(pp.digest) if slot is not None else None
        if batch is None:
            null = Batch(pp.view, pp.sender, (), ())
            batch = null if batch_digest(null) == pp.digest else None
        return pp if batch is None else dataclasses.replace(pp, batch=batch)

    def _behind_quorum(self: Any, vcs: tuple[ViewChangeSummary, ...]) -> bool:
        """True (and fetch state from a replica that is ahead) while ``vcs`` show that
        this replica executed less than the quorum: the primary of a view is computed
        from executed state (:mod:`consensus.leader`), so catching up first is how
        replicas agree on it. Below the quorum's highest stable checkpoint (certified)
        or the ``f + 1``-th highest ``executed`` it reports (one of those is honest) we
        wait as long as it takes; below the highest ``executed`` (which a faulty member
        may inflate) only for one ``resend_interval`` per view."""
        if not vcs:
            return False
        ranked = sorted(((vc.executed, vc.sender) for vc in vcs), reverse=True)
        k = min(self.members.weak, len(ranked))
        must = max(ranked[k - 1][0], max(vc.ckpt_seq for vc in vcs))
        mine = self.last_executed
        if mine >= ranked[0][0] and mine >= must:
            return False
        if mine >= must:  # only possibly behind: a grace period, then go on
            view, since = self.catchup_since
            if view != vcs[0].new_view:
                self.catchup_since = (vcs[0].new_view, self.now)
            elif self.now - since >= self.cfg.resend_interval:
                return False
        ahead = [s for e, s in ranked if s != self.me and e > mine]
        if self.now - self.last_fetch >= self.cfg.resend_interval or not self.fetched_for_view:
            self.fetched_for_view = True
            self.last_fetch = self.now
            self.fetch_round += 1
            if ahead:
                self._send(StateRequest(mine + 1), (ahead[self.fetch_round % len(ahead)],))
            else:
                self._request_state()
        return True

    def _caught_up(self: Any) -> None:
        """Executed more while changing views: the primary of the new view may now be
        computed from fresher committed state; retry a deferred NEW-VIEW, or build ours."""
        if not self.in_view_change:
            return
        nv, self.nv_deferred = self.nv_deferred, None
        if nv is not None and nv.view == self.view:
            self._step_new_view(nv, nv.sender)
        if self.in_view_change:
            self._maybe_new_view()

    def _help_lagging(self: Any, member: str) -> None:
        """A member asks for a view we already left: re-send it our NEW-VIEW, or our own
        VIEW-CHANGE when we are still changing views (once per ``resend_interval``)."""
        if member == self.me or member not in self.members:
            return
        if self.now - self.nv_sent_to.get(member, -(10**9)) < self.cfg.resend_interval:
            return
        nv, vc = self.my_nv, self.my_vc
        if nv is not None and nv.view == self.view:
            self.nv_sent_to[member] = self.now
            self._send(nv, (member,))
        elif self.in_view_change and vc is not None and vc.new_view == self.view:
            self.nv_sent_to[member] = self.now
            self._send(vc, (member,))

    def _resend_view(self: Any) -> None:
        if self.in_view_change and self.my_vc is not None and self.my_vc.new_view == self.view:
            self._send(self.my_vc, self._others())
        self._maybe_new_view()  # a new primary that was catching up tries again

