"""Primary selection: round robin or reputation-aware, from committed state only.

Theory of operation
-------------------
PBFT (TOCS 2002, 4.4) names the primary of view ``v`` as ``v mod n``. With a third of the
members Byzantine that can cost one view-change timeout per faulty primary in turn, and
sorted ids can line all faulty members up consecutively. Following DiemBFT's leader
reputation and Carousel, the primary here is a deterministic function of **committed**
state that all honest replicas agree on:

* every batch carries the view (and primary) that created it (:class:`Batch.view`), so
  the committed log itself says which views produced batches. When a batch created in
  view ``w`` executes after batches of view ``u < w``, the views ``u .. w-1`` ended in a
  view change: their primaries *failed* (a view that ends is not necessarily its
  primary's fault, but it is the only thing all replicas can agree on). The failure is
  charged on execution, identically at every replica, to the primary the schedule of
  that view names (the one live replicas used);
* committed equivocation evidence (:class:`~consensus.messages.Evidence`) charges the
  equivocator;
* a charged member is skipped as primary for :data:`PENALTY_SEQS` sequence numbers
  (evidence: :data:`EVIDENCE_PENALTY_SEQS`); penalties expire, so a member that was just
  slow gets another chance. At most ``f`` members are skipped at a time (the most
  recently charged): honest primaries whose views ended for other reasons (a partition,
  lost messages) are charged too, and skipping more than ``f`` could leave only faulty
  candidates, with no execution left to lift the penalties;
* the ``c`` remaining candidates take turns in a deterministic shuffle: view ``v`` is in
  round ``v // c`` at position ``v % c`` of the candidates sorted by
  ``sha256(round, id)``. Every candidate leads once per round (round-robin fairness), but
  faulty members are not lined up by id, so ``k`` faulty primaries in a row happen with
  probability about ``(f/n)**k`` instead of once per round for sure.

Which committed state, and when? The candidates of a view come from a *schedule*
(:data:`Schedule`) that is part of the replicated state and is frozen when the **first
batch of a new view** ``w`` executes: it applies from view ``w + 1`` on. So

* the primary of a view is fixed before the view starts and nothing executed during the
  view (or later) changes it: replicas that executed the same log prefix compute the
  same primary for every view, whenever they ask, also after a restart (restore
  re-executes the same log);
* a replica that is behind computes an older schedule for views that have not started
  yet. VIEW-CHANGEs therefore report the sender's last executed sequence number, and a
  replica catches up (state transfer) to what the view-change quorum executed before
  it builds or judges a NEW-VIEW (:mod:`consensus.viewchange`); so honest replicas
  agree on the primary of the next view once they agree on the executed prefix.

One case still lets a replica's answer move: a batch created in view ``u`` that was
prepared but not executed before a view change is re-proposed by a later NEW-VIEW and
executes in view ``v > u``; if it is the first batch of ``u`` it freezes a schedule that
starts inside ``v``. The replica therefore also pins the primary of the view it is
running to the sender of the NEW-VIEW it accepted (persisted, see
:mod:`consensus.persist`). Disagreement costs liveness only (a new view is accepted only
by replicas that agree on its primary), never safety: PBFT safety rests on quorum
intersection, not on a unique primary (:mod:`consensus.replica`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .quorum import Membership

__all__ = ["EVIDENCE_PENALTY_SEQS", "PENALTY_SEQS", "Reputation", "Schedule", "primary",
           "round_robin", "schedule_primary"]

#: A primary whose view failed is skipped until this many sequence numbers later.
PENALTY_SEQS = 64
#: A member caught equivocating is skipped this long.
EVIDENCE_PENALTY_SEQS = 4096


def round_robin(view: int, members: Membership) -> str:
    """The classic PBFT primary ``ids[view mod n]`` (TOCS 4.1)."""
    return members.ids[view % members.n]


def _rank(view: int, member: str) -> bytes:
    return hashlib.sha256(view.to_bytes(8, "big") + member.encode("utf-8")).digest()


#: A schedule: ``(first_view, skipped)``: from view ``first_view`` on, the members in the
#: sorted tuple ``skipped`` are not candidates.
Schedule = tuple[int, tuple[str, ...]]
_GENESIS: Schedule = (0, ())


@dataclass(slots=True)
class Reputation:
    """Committed leader-reputation state (part of the replicated state).

    ``schedules`` holds at most two :data:`Schedule` s in ascending ``first_view``: the
    one a view's primary is read from is the last one that starts at or before it. A
    schedule is frozen when the first batch of a new view ``w`` executes and starts at
    view ``w + 1``, so executing batches of view ``w`` never changes the primary of ``w``
    nor of the views after the one of the previous new-view batch (only of views that have not
    started yet)."""

    last_view: int = 0
    last_seq: int = 0
    until: dict[str, int] = field(default_factory=dict)  # member -> skipped while seq < until
    failures: dict[str, int] = field(default_factory=dict)  # lifetime counts, for reports
    schedules: tuple[Schedule, ...] = (_GENESIS,)

    def copy(self) -> Reputation:
        return Reputation(self.last_view, self.last_seq, dict(self.until), dict(self.failures),
                          self.schedules)

    def charge(self, member: str, seq: int, span: int) -> None:
        self.until[member] = max(self.until.get(member, 0), seq + span)
        self.failures[member] = self.failures.get(member, 0) + 1

    def on_batch(self, seq: int, batch: Any, members: Membership) -> None:
        """Account for the batch committed at ``seq`` (called on execution, in order)."""
        new_view = batch.view > self.last_view
        if new_view:
            # views last_view .. batch.view - 1 ended in a view change: charge their
            # primaries (at most n of them; older ones repeat members), read from the
            # schedules the replicas used for them
            for w in range(max(self.last_view, batch.view - members.n), batch.view):
                self.charge(self.primary(w, members), seq, PENALTY_SEQS)
            self.last_view = batch.view
        for ev in batch.evidence:
            from .evidence import equivocator

            who = equivocator(ev, members)
            if who is not None:
                self.charge(who, seq, EVIDENCE_PENALTY_SEQS)
        self.last_seq = seq
        if self.until and min(self.until.values()) <= seq:
            self.until = {m: u for m, u in self.until.items() if u > seq}
        if new_view:
            # skip at most f members (the most recently charged): the candidates then
            # always include an honest member, and the rotation reaches it (liveness)
            worst = sorted(self.until, key=lambda m: (-self.until[m], m))[: members.f]
            self.schedules = (self.schedules[-1], (batch.view + 1, tuple(sorted(worst))))

    def schedule(self, view: int) -> Schedule:
        """The schedule the primary of ``view`` is read from."""
        s = self.schedules
        return s[-1] if view >= s[-1][0] else s[0]

    def primary(self, view: int, members: Membership) -> str:
        """The primary of ``view``: the ``view``-th member in a per-round shuffle of the
        candidates (members not skipped by the view's schedule; all members when every
        one is skipped)."""
        return schedule_primary(view, members, self.schedule(view)[1])

    def wire(self) -> list[Any]:
        return [self.last_view, self.last_seq, sorted(self.until.items()),
                sorted(self.failures.items()), [[v, list(s)] for v, s in self.schedules]]

    @classmethod
    def from_wire(cls, obj: Any) -> Reputation:
        lv, ls, until, fails, scheds = obj
        schedules = tuple((int(v), tuple(str(m) for m in s)) for v, s in scheds)
        if not 1 <= len(schedules) <= 2:
            raise ValueError("reputation: one or two schedules")
        return cls(int(lv), int(ls), {str(k): int(v) for k, v in until},
                   {str(k): int(v) for k, v in fails}, schedules)


def schedule_primary(view: int, members: Membership, skipped: tuple[str, ...]) -> str:
    """The primary of ``view`` among ``members`` minus ``skipped`` (see the module doc)."""
    if skipped:
        skip = frozenset(skipped)
        cands = [m for m in members.ids if m not in skip]
    else:
        cands = list(members.ids)
    if not cands:
        cands = list(members.ids)
    epoch, pos = divmod(view, len(cands))
    return sorted(cands, key=lambda m: _rank(epoch, m))[pos]


def primary(view: int, members: Membership, reputation: Reputation | None) -> str:
    """Primary of ``view``: reputation-aware when ``reputation`` is given, else round robin."""
    return round_robin(view, members) if reputation is None else reputation.primary(view, members)
