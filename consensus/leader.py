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
  charged on execution, identically at every replica, using the schedule frozen at the
  last checkpoint boundary (the one live replicas used);
* committed equivocation evidence (:class:`~consensus.messages.Evidence`) charges the
  equivocator;
* a charged member is skipped as primary for :data:`PENALTY_SEQS` sequence numbers
  (evidence: :data:`EVIDENCE_PENALTY_SEQS`); penalties expire, so a member that was just
  slow gets another chance;
* the ``c`` remaining candidates take turns in a deterministic shuffle: view ``v`` is in
  round ``v // c`` at position ``v % c`` of the candidates sorted by
  ``sha256(round, id)``. Every candidate leads once per round (round-robin fairness), but
  faulty members are not lined up by id, so ``k`` faulty primaries in a row happen with
  probability about ``(f/n)**k`` instead of once per round for sure.

Which committed state? A replica uses the reputation *frozen at its stable checkpoint*
(the replica keeps that copy), so replicas with the same stable checkpoint (certified by
a quorum) compute the same primary for every view. Replicas at different checkpoints
can transiently disagree; that costs liveness only (a new view is accepted only by
replicas that agree on its primary, and everyone converges after state transfer), never
safety: PBFT safety rests on quorum intersection, not on a unique primary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .quorum import Membership

__all__ = ["EVIDENCE_PENALTY_SEQS", "PENALTY_SEQS", "Reputation", "primary", "round_robin"]

#: A primary whose view failed is skipped until this many sequence numbers later.
PENALTY_SEQS = 64
#: A member caught equivocating is skipped this long.
EVIDENCE_PENALTY_SEQS = 4096


def round_robin(view: int, members: Membership) -> str:
    """The classic PBFT primary ``ids[view mod n]`` (TOCS 4.1)."""
    return members.ids[view % members.n]


def _rank(view: int, member: str) -> bytes:
    return hashlib.sha256(view.to_bytes(8, "big") + member.encode("utf-8")).digest()


@dataclass(slots=True)
class Reputation:
    """Committed leader-reputation state (part of the replicated state)."""

    last_view: int = 0
    last_seq: int = 0
    until: dict[str, int] = field(default_factory=dict)  # member -> skipped while seq < until
    failures: dict[str, int] = field(default_factory=dict)  # lifetime counts, for reports

    def copy(self) -> Reputation:
        return Reputation(self.last_view, self.last_seq, dict(self.until), dict(self.failures))

    def charge(self, member: str, seq: int, span: int) -> None:
        self.until[member] = max(self.until.get(member, 0), seq + span)
        self.failures[member] = self.failures.get(member, 0) + 1

    def on_batch(self, seq: int, batch: Any, members: Membership,
                 schedule: Reputation | None = None) -> None:
        """Account for the batch committed at ``seq`` (called on execution). ``schedule``
        is the reputation the primaries were chosen by (the copy frozen at the last
        checkpoint boundary; default ``self``)."""
        if batch.view > self.last_view:
            # views last_view .. batch.view - 1 ended in a view change: charge their
            # primaries (at most n of them; older ones repeat members)
            sched = schedule or self
            for w in range(max(self.last_view, batch.view - members.n), batch.view):
                self.charge(sched.primary(w, members), seq, PENALTY_SEQS)
            self.last_view = batch.view
        for ev in batch.evidence:
            from .evidence import equivocator

            who = equivocator(ev, members)
            if who is not None:
                self.charge(who, seq, EVIDENCE_PENALTY_SEQS)
        self.last_seq = seq
        self.until = {m: u for m, u in self.until.items() if u > seq}

    def primary(self, view: int, members: Membership) -> str:
        """The primary of ``view``: the best-ranked member not currently skipped (all
        members when every one is skipped)."""
        cands = [m for m in members.ids if self.until.get(m, 0) <= self.last_seq]
        if not cands:
            cands = list(members.ids)
        epoch, pos = divmod(view, len(cands))
        return sorted(cands, key=lambda m: _rank(epoch, m))[pos]

    def wire(self) -> list[Any]:
        return [self.last_view, self.last_seq, sorted(self.until.items()),
                sorted(self.failures.items())]

    @classmethod
    def from_wire(cls, obj: Any) -> Reputation:
        lv, ls, until, fails = obj
        return cls(int(lv), int(ls), {str(k): int(v) for k, v in until},
                   {str(k): int(v) for k, v in fails})


def primary(view: int, members: Membership, reputation: Reputation | None) -> str:
    """Primary of ``view``: reputation-aware when ``reputation`` is given, else round robin."""
    return round_robin(view, members) if reputation is None else reputation.primary(view, members)
