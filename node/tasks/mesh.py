"""Mesh task coordination: a deterministic application replicated by PBFT.

Theory of operation
-------------------
A mesh task lives in the committed log. Every honest node executes the same committed
operations in the same order through :class:`MeshTasks` (pure: no clock, no I/O, no
randomness), so all agree who runs a task, which result counts, and when a task is
reassigned. Operations are canonical msgpack maps tagged ``"t"`` (:mod:`node.tasks.meshops`
builds them):

``task.submit``  ``{id, type, input, deadline, max_attempts, by, at, sig}``: a new task
    (``id`` chosen by the submitter, unique; ``deadline`` in mesh-clock ticks per
    attempt), signed by the submitting member ``by`` who saw the mesh clock at ``at``.
``task.result``  ``{id, attempt, node, ok, retry, output, error, sig}``: the executor's
    Ed25519 signature over :func:`~node.tasks.meshops.result_signing_bytes`.
``task.tick``    ``{node, clock, sig}``: "my local timer says the mesh clock should move
    on from ``clock``", signed over :func:`~node.tasks.meshops.tick_signing_bytes`.

**Time** is the *mesh clock*, an integer in the replicated state. It advances by one when
``f + 1`` distinct current members have committed a valid tick for its current value:
at least one honest member agrees time passed, so Byzantine members alone can neither
expire a task early nor stop the clock (the ``2f + 1`` honest ones tick). Shells tick
every ``tick_s`` seconds of local time, so one tick is roughly ``tick_s`` whatever the
load (sequence numbers would run fast under load and stop when idle). No wall clock is
ever read here.

**Liveness**: a member is *live* when it committed a valid tick or result within the last
:attr:`MeshConfig.live_ticks` ticks (a member is live when it first appears).
**Load**: open tasks assigned to it. **Reputation**: an integer in ``[rep_min, rep_max]``,
+1 per accepted result, -2 per missed deadline.

**Assignment** is weighted rendezvous hashing (highest random weight) over the live
members not yet tried in this cycle, weight ``max(1, rep * 4 // (1 + load))``. The hash
``h`` of ``(task id, member)`` is a 64-bit integer read as ``u = h / 2**64`` and member
scores are ``u ** (1 / w)`` (the ``-w / ln u`` rule): a member wins with probability
``w / sum(w)`` and changing one weight moves only that member's tasks. Scores are
compared exactly with integers (``ha**wb * 2**(64*wa)`` against ``hb**wa * 2**(64*wb)``),
so no float or libm can make two nodes disagree.

**Deadlines**: an attempt assigned at clock ``c`` is due at ``c + deadline``. When the
clock reaches it with no valid result committed, the assignee is charged and the task is
reassigned to the next member in rendezvous order (one not tried in this cycle; when all
live members were tried a new cycle starts); after ``max_attempts`` attempts it is
``expired``. A member that leaves the member set loses its assignments the same way.

**Submissions** must be signed by a current member and recent (``at`` within
:attr:`MeshConfig.submit_window` ticks of the clock). A closed task is pruned
:attr:`MeshConfig.retain_ticks` ticks after it closed (``retain_ticks >
submit_window``), so the state stays bounded and a replayed submission of a pruned task
is refused as stale instead of running the task again.

**Acceptance**: the first valid result in committed order is accepted, at most one per
task: signed by the member assigned to that attempt, for the current attempt, while the
task is open. Everything else is rejected with a reason (malformed, unknown task, not a
member, bad signature, not assigned, stale attempt, already accepted, expired) and kept
(bounded) in the task's ``rejected`` list. A valid result with ``ok`` false and ``retry``
true is a failure report: the task is reassigned (if attempts remain) instead of
accepting it.

Results of :meth:`MeshTasks.apply_op` are canonical ``{"ok": True, ...}`` or
``{"ok": False, "reason": str}`` bytes; they never raise on remote input.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consensus.quorum import Membership, VerifyFn, faults
from identity.canonical import DecodeError, decode, encode
from identity.signer import verify_signature

from .meshops import (
    HRW_DOMAIN,
    parse_op,
    result_signing_bytes,
    submit_signing_bytes,
    tick_signing_bytes,
)

__all__ = ["ASSIGNED", "DONE", "EXPIRED", "FAILED", "MeshConfig", "MeshTasks", "rendezvous_order"]

ASSIGNED, DONE, FAILED, EXPIRED = "assigned", "done", "failed", "expired"
SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Protocol constants: every node must use the same values."""

    live_ticks: int = 8
    rep_init: int = 4
    rep_min: int = 1
    rep_max: int = 8
    max_rejected: int = 32
    submit_window: int = 60
    retain_ticks: int = 3600

    def __post_init__(self) -> None:
        if self.retain_ticks <= self.submit_window:
            raise ValueError("retain_ticks must exceed submit_window (replay protection)")


@dataclass(slots=True)
class _Task:
    id: str
    type: str
    input: bytes
    by: str
    deadline: int
    max_attempts: int
    submitted_seq: int
    state: str = ASSIGNED
    attempt: int = 0
    assignee: str | None = None
    assigned_seq: int = 0
    due: int = 0
    tried: list[str] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)  # [attempt, node, seq, outcome]
    accepted: dict[str, Any] | None = None
    rejected: list[list[Any]] = field(default_factory=list)  # [seq, node, attempt, reason]
    reason: str = ""
    closed_clock: int = 0

    def wire(self) -> list[Any]:
        return [self.id, self.type, self.input, self.by, self.deadline, self.max_attempts,
                self.submitted_seq, self.state, self.attempt, self.assignee,
                self.assigned_seq, self.due, self.tried, self.history, self.accepted,
                self.rejected, self.reason, self.closed_clock]

    @classmethod
    def from_wire(cls, w: list[Any]) -> _Task:
        return cls(*w)


def _hrw_hash(task_id: str, member: str) -> int:
    digest = hashlib.sha256(encode([HRW_DOMAIN, task_id, member])).digest()
    return int.from_bytes(digest[:8], "big") + 1  # 1 .. 2**64: u = h / 2**64 in (0, 1]


def _beats(a: tuple[int, int, str], b: tuple[int, int, str]) -> int:
    """cmp of weighted scores u**(1/w) (higher first), exactly; ties by member id."""
    ha, wa, ma = a
    hb, wb, mb = b
    left, right = (ha ** wb) << (64 * wa), (hb ** wa) << (64 * wb)
    if left != right:
        return -1 if left > right else 1
    return -1 if ma < mb else (1 if ma > mb else 0)


def rendezvous_order(task_id: str, weights: Mapping[str, int]) -> list[str]:
    """Members by decreasing weighted rendezvous score for ``task_id`` (weights >= 1)."""
    keyed = [(_hrw_hash(task_id, m), int(w), m) for m, w in sorted(weights.items())]
    return [k[2] for k in sorted(keyed, key=functools.cmp_to_key(_beats))]


def _ok(**fields: Any) -> bytes:
    return encode({"ok": True, **fields})


def refused(reason: str) -> bytes:
    return encode({"ok": False, "reason": reason})


class MeshTasks:
    """The replicated mesh task state. ``apply_op(seq, op, members)`` executes one
    committed task operation; everything else is a query."""

    def __init__(self, config: MeshConfig | None = None, *,
                 verify: VerifyFn = verify_signature) -> None:
        self.cfg = config or MeshConfig()
        self.verify = verify
        self.clock = 0
        self.votes: list[str] = []  # members who ticked for the current clock value
        self.member_ids: list[str] = []
        self.last_seen: dict[str, int] = {}
        self.rep: dict[str, int] = {}
        self.tasks: dict[str, _Task] = {}
        self._open: dict[str, None] = {}  # open task ids (derived; iterated sorted)
        self._closed: dict[str, None] = {}  # closed task ids, in closing order (derived)
        self._load: dict[str, int] = {}  # derived from the open tasks

    # ---- execution ------------------------------------------------------------------
    def apply_op(self, seq: int, op: bytes, members: Membership) -> bytes:
        """Execute the task operation ``op`` committed at ``seq`` under the member set
        ``members``; returns the canonical result bytes (never raises on bad input)."""
        self.sync_members(seq, members)
        parsed = parse_op(op)
        if isinstance(parsed, str):
            return refused(parsed)
        kind, body = parsed
        if kind == "task.submit":
            return self._submit(seq, body, members)
        if kind == "task.result":
            return self._result(seq, body, members)
        return self._tick(seq, body, members)

    def sync_members(self, seq: int, members: Membership) -> None:
        """Account for a member-set change (joiners become live, leavers lose their
        assignments). Called by :meth:`apply_op`; idempotent."""
        ids = list(members.ids)
        if ids == self.member_ids:
            return
        gone = [m for m in self.member_ids if m not in members]
        self.member_ids = ids
        for m in ids:
            self.last_seen.setdefault(m, self.clock)
            self.rep.setdefault(m, self.cfg.rep_init)
        for m in gone:
            self.last_seen.pop(m, None)
            self.rep.pop(m, None)
        self.votes = [v for v in self.votes if v in members]
        for tid in sorted(self._open):
            t = self.tasks[tid]
            if t.assignee is not None and t.assignee not in members:
                self._end_attempt(t, seq, "executor left the member set")
                self._reassign(t, seq, members)

    def _submit(self, seq: int, b: dict[str, Any], members: Membership) -> bytes:
        key = members.key(b["by"])
        if key is None:
            return refused(f"{b['by']} is not a member")
        data = submit_signing_bytes(b["id"], b["type"], b["input"], b["deadline"],
                                    b["max_attempts"], b["by"], b["at"])
        if not self.verify(key, data, b["sig"]):
            return refused("bad signature")
        if b["at"] > self.clock:
            return refused(f"submission at clock {b['at']} ahead of {self.clock}")
        if b["at"] + self.cfg.submit_window < self.clock:
            return refused(f"stale submission (clock {b['at']}, now {self.clock})")
        if b["id"] in self.tasks:
            return refused(f"duplicate task id {b['id']}")
        t = _Task(b["id"], b["type"], b["input"], b["by"], b["deadline"], b["max_attempts"],
                  seq)
        self.tasks[t.id] = t
        self._open[t.id] = None
        self._reassign(t, seq, members)
        return _ok(task=t.id, assignee=t.assignee, attempt=t.attempt, due=t.due)

    def _result(self, seq: int, b: dict[str, Any], members: Membership) -> bytes:
        t = self.tasks.get(b["id"])
        if t is None:
            return refused(f"unknown task {b['id']}")
        reason = self._check_result(t, b, members)
        if reason is not None:
            t.rejected.append([seq, b["node"], b["attempt"], reason])
            del t.rejected[:-self.cfg.max_rejected]
            return refused(reason)
        node = b["node"]
        self.last_seen[node] = self.clock
        if not b["ok"] and b["retry"] and t.attempt < t.max_attempts:
            self._end_attempt(t, seq, f"failed: {b['error']}")
            self._reassign(t, seq, members)
            return _ok(task=t.id, accepted=False, reassigned_to=t.assignee, attempt=t.attempt)
        self._end_attempt(t, seq, "result accepted")
        self.rep[node] = min(self.cfg.rep_max, self.rep.get(node, self.cfg.rep_init) + 1)
        t.accepted = {"node": node, "attempt": b["attempt"], "ok": b["ok"],
                      "output": b["output"], "error": b["error"], "seq": seq, "sig": b["sig"]}
        self._close(t, DONE if b["ok"] else FAILED, "" if b["ok"] else b["error"])
        return _ok(task=t.id, accepted=True)

    def _check_result(self, t: _Task, b: dict[str, Any], members: Membership) -> str | None:
        node, attempt = b["node"], b["attempt"]
        key = members.key(node)
        if key is None:
            return f"{node} is not a member"
        data = result_signing_bytes(t.id, attempt, node, b["ok"], b["retry"], b["output"],
                                    b["error"])
        if not self.verify(key, data, b["sig"]):
            return "bad signature"
        if t.accepted is not None:
            acc = t.accepted
            if acc["node"] == node and acc["attempt"] == attempt:
                return f"duplicate: this result was accepted at seq {acc['seq']}"
            return f"task already has an accepted result (from {acc['node']}, attempt " \
                   f"{acc['attempt']})"
        if t.state != ASSIGNED:
            return f"task is {t.state}"
        if attempt != t.attempt:
            who = next((h[1] for h in t.history if h[0] == attempt), None)
            if who == node:
                return f"stale attempt {attempt}: attempt {t.attempt} is assigned to " \
                       f"{t.assignee}"
            return f"not assigned: attempt {attempt} was never assigned to {node}" \
                if attempt > t.attempt or who is None else \
                f"not assigned: attempt {attempt} was assigned to {who}"
        if node != t.assignee:
            return f"not assigned: attempt {attempt} is assigned to {t.assignee}"
        return None

    def _tick(self, seq: int, b: dict[str, Any], members: Membership) -> bytes:
        node, clock = b["node"], b["clock"]
        key = members.key(node)
        if key is None:
            return refused(f"{node} is not a member")
        if clock > self.clock:
            return refused(f"tick for clock {clock} ahead of {self.clock}")
        if not self.verify(key, tick_signing_bytes(node, clock), b["sig"]):
            return refused("bad signature")
        self.last_seen[node] = max(self.last_seen.get(node, 0), clock)
        if clock < self.clock:
            return _ok(clock=self.clock, advanced=False, stale=True)
        if node not in self.votes:
            self.votes.append(node)
        if len(self.votes) < faults(members.n) + 1:
            return _ok(clock=self.clock, advanced=False)
        self.clock += 1
        self.votes = []
        self._expire(seq, members)
        self._prune()
        return _ok(clock=self.clock, advanced=True)

    # ---- assignment ------------------------------------------------------------------
    def _expire(self, seq: int, members: Membership) -> None:
        for tid in sorted(self._open):
            t = self.tasks[tid]
            if t.due <= self.clock:
                who = t.assignee
                self.rep[who] = max(self.cfg.rep_min, self.rep.get(who, 0) - 2)
                self._end_attempt(t, seq, f"deadline: no valid result by clock {t.due}")
                self._reassign(t, seq, members)

    def _end_attempt(self, t: _Task, seq: int, outcome: str) -> None:
        if t.assignee is not None:
            self._load[t.assignee] -= 1
            if not self._load[t.assignee]:
                del self._load[t.assignee]
        t.history.append([t.attempt, t.assignee, seq, outcome])
        t.assignee = None

    def _close(self, t: _Task, state: str, reason: str) -> None:
        t.state, t.reason, t.closed_clock = state, reason, self.clock
        self._open.pop(t.id, None)
        self._closed[t.id] = None

    def _prune(self) -> None:
        horizon = self.clock - self.cfg.retain_ticks
        while self._closed:
            tid = next(iter(self._closed))
            if self.tasks[tid].closed_clock > horizon:
                break
            del self._closed[tid]
            del self.tasks[tid]

    def _reassign(self, t: _Task, seq: int, members: Membership) -> None:
        if t.attempt >= t.max_attempts:
            self._close(t, EXPIRED, f"no valid result after {t.attempt} attempts")
            return
        live = self.live_members(members)
        cands = [m for m in live if m not in t.tried]
        if not cands:
            t.tried, cands = [], live
        keyed = [(_hrw_hash(t.id, m), self.weight(m), m) for m in cands]
        who = min(keyed, key=functools.cmp_to_key(_beats))[2]
        t.attempt += 1
        t.assignee, t.assigned_seq, t.due = who, seq, self.clock + t.deadline
        t.tried.append(who)
        self._load[who] = self._load.get(who, 0) + 1

    def weight(self, member: str) -> int:
        """Rendezvous weight of ``member``: reputation over (1 + load), at least 1."""
        rep = self.rep.get(member, self.cfg.rep_init)
        return max(1, rep * 4 // (1 + self._load.get(member, 0)))

    def live_members(self, members: Membership) -> list[str]:
        """Members seen within ``live_ticks`` ticks (all members when none is), sorted."""
        floor = self.clock - self.cfg.live_ticks
        live = [m for m in members.ids if self.last_seen.get(m, self.clock) >= floor]
        return live or list(members.ids)

    # ---- queries ---------------------------------------------------------------------
    def status(self, task_id: str) -> dict[str, Any] | None:
        """The task's state, assignee, attempt, due clock, accepted result, rejected
        results ``[seq, node, attempt, reason]`` and attempt history ``[attempt, node,
        seq, outcome]``; None for an unknown id."""
        t = self.tasks.get(task_id)
        if t is None:
            return None
        return {"id": t.id, "type": t.type, "by": t.by, "state": t.state,
                "attempt": t.attempt, "max_attempts": t.max_attempts,
                "assignee": t.assignee, "assigned_seq": t.assigned_seq, "due": t.due,
                "deadline_ticks": t.deadline, "submitted_seq": t.submitted_seq,
                "accepted": None if t.accepted is None else dict(t.accepted),
                "rejected": [list(r) for r in t.rejected],
                "history": [list(h) for h in t.history], "reason": t.reason}

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        """Summaries ``{id, type, state, attempt, assignee}`` in submission order."""
        ts = sorted(self.tasks.values(), key=lambda t: (t.submitted_seq, t.id))
        return [{"id": t.id, "type": t.type, "state": t.state, "attempt": t.attempt,
                 "assignee": t.assignee} for t in ts if state is None or t.state == state]

    def assigned_to(self, node: str) -> list[dict[str, Any]]:
        """Open tasks currently assigned to ``node`` (what its shell should run):
        ``{id, type, input, attempt, due}`` sorted by id."""
        out = []
        for tid in sorted(self._open):
            t = self.tasks[tid]
            if t.assignee == node:
                out.append({"id": t.id, "type": t.type, "input": t.input,
                            "attempt": t.attempt, "due": t.due})
        return out

    def open_count(self) -> int:
        return len(self._open)

    def load(self) -> dict[str, int]:
        return dict(sorted(self._load.items()))

    # ---- snapshots -------------------------------------------------------------------
    def snapshot(self) -> bytes:
        tasks = sorted(self.tasks.values(), key=lambda t: (t.submitted_seq, t.id))
        return encode([SNAPSHOT_VERSION, self.clock, self.votes, self.member_ids,
                       sorted(self.last_seen.items()), sorted(self.rep.items()),
                       [t.wire() for t in tasks]])

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by :meth:`snapshot` bytes; ValueError when malformed."""
        try:
            version, clock, votes, ids, seen, rep, tasks = decode(snapshot)
            if version != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {version}")
            loaded = [_Task.from_wire(w) for w in tasks]
        except (DecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"bad mesh task snapshot: {exc}") from None
        self.clock, self.votes, self.member_ids = clock, list(votes), list(ids)
        self.last_seen, self.rep = dict(seen), dict(rep)
        self.tasks = {t.id: t for t in loaded}
        self._open = {t.id: None for t in loaded if t.state == ASSIGNED}
        closed = sorted((t for t in loaded if t.state != ASSIGNED),
                        key=lambda t: (t.closed_clock, t.id))
        self._closed = {t.id: None for t in closed}
        self._load = {}
        for tid in self._open:
            who = self.tasks[tid].assignee
            self._load[who] = self._load.get(who, 0) + 1
