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
the batch of the prepared certificate with the highest view (a committed batch is
prepared at ``f + 1`` honest members of any quorum, so it is always picked), or a null
batch when there is none. It signs each pre-prepare of ``O`` and then NEW-VIEW(v+1, V, O).

A backup accepts NEW-VIEW only from the view's primary, after verifying every
VIEW-CHANGE in ``V`` and recomputing ``O`` itself; it then enters the view, treats ``O``
as ordinary pre-prepares (sending PREPAREs) and fetches state when ``min_s`` is above
what it has executed. Timeouts grow as ``view_timeout * 2**k`` only while views keep
failing (``k`` resets on progress, see :mod:`consensus.replica`).
"""

from __future__ import annotations

from typing import Any

from identity.canonical import encode

from .certificate import CertificateError, verify_checkpoint, verify_prepared
from .messages import Batch, NewView, PrePrepare, ViewChange, batch_digest

__all__ = ["ViewChangeMixin", "compute_new_view"]


def compute_new_view(view: int, primary: str, vcs: tuple[ViewChange, ...]) -> tuple[
        int, list[PrePrepare]]:
    """``(min_s, O)`` for a NEW-VIEW of ``view`` by ``primary`` from the quorum ``vcs``
    (TOCS 4.4): unsigned pre-prepares, one per sequence number in ``(min_s, max_s]``."""
    min_s = max(vc.checkpoint.seq for vc in vcs)
    best: dict[int, Any] = {}
    for vc in vcs:
        for p in vc.prepared:
            pp = p.pre_prepare
            if pp.seq <= min_s:
                continue
            cur = best.get(pp.seq)
            if cur is None or (pp.view, pp.digest) > (cur.view, cur.digest):
                best[pp.seq] = pp
    max_s = max(best, default=min_s)
    out = []
    for n in range(min_s + 1, max_s + 1):
        chosen = best.get(n)
        batch = chosen.batch if chosen is not None else Batch(view, primary, (), ())
        out.append(PrePrepare(view, n, batch_digest(batch), primary, batch=batch))
    return min_s, out


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
        self.timer_on = False  # runs once a quorum wants this view (_vc_timer)
        self.my_nv = None
        self.nv_building = None
        prepared = tuple(s.prepared for q, s in sorted(self.slots.items())
                         if q > self.low and s.prepared is not None)
        self._sign(ViewChange(view, self.stable_proof, prepared, self.me))

    def _valid_view_change(self: Any, vc: ViewChange) -> bool:
        if vc.sender not in self.members:
            return False
        cp = vc.checkpoint
        try:
            if vc.sender != self.me:
                if not self.members.check_signed(vc, self.verify):
                    return False
                mine = self.snapshots.get(cp.seq)
                if mine is None or mine[1] != cp.state_digest:  # else: we hold that state
                    verify_checkpoint(cp, self.members, verify_fn=self.verify)
            for p in vc.prepared:
                pp = p.pre_prepare
                if not (cp.seq < pp.seq <= cp.seq + self.cfg.window) or pp.view >= vc.new_view:
                    return False
                self._note_pre_prepare(pp)
                fact = (pp.view, pp.seq, pp.digest)
                if fact in self.known_prepared:  # already proven: only the batch matters
                    if pp.batch is None or batch_digest(pp.batch) != pp.digest:
                        return False
                elif vc.sender != self.me:
                    verify_prepared(p, self.members, verify_fn=self.verify)
                    self.known_prepared.add(fact)
        except CertificateError:
            return False
        return True

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
        if max(vc.checkpoint.seq for vc in vcs) > self.last_executed:
            return  # behind the quorum: its state may name another primary (_caught_up)
        _min_s, o = compute_new_view(v, self.me, vcs)
        self.nv_building = v
        self._nv_parts = {"view": v, "vcs": vcs, "o": [None] * len(o), "left": len(o)}
        if not o:
            self._sign(NewView(v, vcs, (), self.me))
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
            self._sign(NewView(view, parts["vcs"], tuple(parts["o"]), self.me))

    def _step_new_view(self: Any, nv: NewView, sender: str) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            self._drop(sender, "stale-view")
            return
        if nv.sender != self.primary(nv.view):
            if max((vc.checkpoint.seq for vc in nv.view_changes), default=0) > \
                    self.last_executed:
                # behind the quorum: the primary we compute may be stale; retry the
                # NEW-VIEW once state transfer caught us up (_caught_up)
                self.nv_deferred = nv
                self._request_state()
            self._drop(sender, "not-primary")
            return
        if nv.sender != self.me and not self._valid_new_view(nv):
            self._drop(sender, "bad-new-view")
            return
        self._enter_view(nv)

    def _valid_new_view(self: Any, nv: NewView) -> bool:
        if not self.members.check_signed(nv, self.verify):
            return False
        senders = {vc.sender for vc in nv.view_changes}
        if len(senders) != len(nv.view_changes) or len(senders) < self.members.quorum:
            return False
        for vc in nv.view_changes:
            if vc.new_view != nv.view:
                return False
            known = self.vc_votes.get(nv.view, {}).get(vc.sender)
            if known != vc and not self._valid_view_change(vc):
                return False
        _min_s, o = compute_new_view(nv.view, nv.sender, nv.view_changes)
        if len(o) != len(nv.pre_prepares):
            return False
        for mine, theirs in zip(o, nv.pre_prepares, strict=True):
            if (mine.seq, mine.digest, mine.batch) != (theirs.seq, theirs.digest, theirs.batch):
                return False
            if theirs.view != nv.view or not self.members.check_signed(theirs, self.verify):
                return False
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
        best = max(nv.view_changes, key=lambda vc: vc.checkpoint.seq).checkpoint
        # O owns every sequence number up to max_s: claim them before anything below can
        # let the primary cut a new batch (a second pre-prepare for one (v, n))
        top = max([best.seq, *[pp.seq for pp in nv.pre_prepares]])
        self.next_seq = max(top, self.last_executed) + 1
        self.inflight = {}
        for q, s in self.slots.items():
            if q > self.last_executed and s.pp is not None and s.cert is None:
                s.pp = None  # lower-view pre-prepares are superseded by O
        for pp in nv.pre_prepares:
            for r in pp.batch.requests if pp.batch is not None else ():
                self.inflight[(r.client, r.rid)] = pp.seq
        self.entering = True
        try:
            if best.seq > self.low:
                self._on_stable_proof(best)
            for pp in nv.pre_prepares:
                if self.low < pp.seq <= self.high:
                    self._accept_pre_prepare(pp)
        finally:
            self.entering = False
        self._arm_timer()
        self._maybe_propose()

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

