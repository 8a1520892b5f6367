"""Pure scheduling decisions of the local task engine: what runs next, when a failed
attempt runs again, and which state a task moves to.

Theory of operation
-------------------
Time is an input (float seconds on the engine's clock); randomness is an injected
``random.Random`` (backoff jitter). Nothing here touches trio, sqlite or a clock, so the
rules are property-tested and the engine shell only carries them out.

States: ``queued -> running -> succeeded | failed | timed_out | queued (retry)``;
``queued -> cancelled | timed_out`` (deadline passed before it ran); ``running ->
cancelled``. The last four and ``succeeded`` are terminal.

* :class:`Scheduler` holds the *queued* tasks: ready ones ordered by priority (higher
  first) then submission order (FIFO within a priority), delayed ones (retry backoff)
  by the time they become ready, and every queued task's deadline. ``next(now)`` hands
  out the best ready task while fewer than ``concurrency`` run.
* :func:`after_attempt` maps an attempt's :class:`Outcome` to the next state: retry with
  exponential backoff ``min(cap, base * 2**(attempt-1))`` scaled by a jitter factor in
  ``[1 - jitter, 1]``, unless the failure is permanent, the attempts are used up, or
  the retry could not start before the task's deadline.
* :func:`recover` decides, after a crash, what a task found ``running`` becomes: a
  retry (the next start counts attempt + 1), ``timed_out`` past its deadline, or
  ``failed`` with no attempts left.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

__all__ = [
    "ACTIVE", "CANCELLED", "FAILED", "QUEUED", "RUNNING", "STATES", "SUCCEEDED", "TERMINAL",
    "TIMED_OUT", "Entry", "Outcome", "RetryPolicy", "Scheduler", "Transition",
    "after_attempt", "backoff_delay", "recover",
]

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "succeeded", "failed", "cancelled", "timed_out"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)
ACTIVE = frozenset({QUEUED, RUNNING})
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff of retries: ``base_s * 2**(attempt-1)`` capped at ``cap_s``, times a
    factor drawn uniformly from ``[1 - jitter, 1]``. ``attempt_timeout_s`` (None: no
    limit) bounds one attempt; the task deadline bounds all of them."""

    base_s: float = 0.5
    cap_s: float = 60.0
    jitter: float = 0.5
    attempt_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < self.base_s or not 0 <= self.jitter <= 1:
            raise ValueError("need 0 <= base_s <= cap_s and 0 <= jitter <= 1")


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued task as the scheduler sees it. ``order`` is the submission order (the
    store's row number): FIFO within a priority."""

    task_id: str
    priority: int
    order: int
    deadline: float
    not_before: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. ``kind``: ``ok``, ``error`` (``retryable``, ``reason``),
    ``attempt_timeout`` (the per-attempt limit fired before the task deadline),
    ``deadline`` (the task deadline passed), ``no_handler``, ``cancelled``."""

    kind: str
    reason: str = ""
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Transition:
    """The next state; ``not_before`` is when a re-queued task may start again."""

    state: str
    reason: str = ""
    not_before: float = 0.0


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Delay before the retry that follows failed attempt number ``attempt`` (>= 1)."""
    raw = min(policy.cap_s, policy.base_s * 2.0 ** min(max(attempt, 1) - 1, 60))
    return raw * (1.0 - policy.jitter * rng.random())


def after_attempt(outcome: Outcome, *, attempt: int, max_attempts: int, deadline: float,
                  now: float, policy: RetryPolicy, rng: random.Random) -> Transition:
    """The state after attempt number ``attempt`` (1-based) ended with ``outcome``."""
    kind = outcome.kind
    if kind == "ok":
        return Transition(SUCCEEDED)
    if kind == "cancelled":
        return Transition(CANCELLED, outcome.reason or "cancelled")
    if kind == "no_handler":
        return Transition(FAILED, outcome.reason)
    if kind == "deadline" or now >= deadline:
        return Transition(TIMED_OUT, outcome.reason or "deadline passed")
    if kind == "attempt_timeout":
        reason = outcome.reason or f"attempt {attempt} timed out"
        final = TIMED_OUT
    elif kind == "error":
        reason, final = outcome.reason, FAILED
        if not outcome.retryable:
            return Transition(FAILED, reason)
    else:
        raise ValueError(f"unknown outcome kind {kind!r}")
    if attempt >= max_attempts:
        return Transition(final, f"{reason} (attempt {attempt} of {max_attempts})")
    at = now + backoff_delay(attempt, policy, rng)
    if at >= deadline:
        return Transition(final, f"{reason} (no time left for a retry before the deadline)")
    return Transition(QUEUED, reason, at)


def recover(*, attempt: int, max_attempts: int, deadline: float, now: float) -> Transition:
    """What a task found ``running`` after a crash becomes (its attempt was lost)."""
    if now >= deadline:
        return Transition(TIMED_OUT, "deadline passed while the node was down")
    if attempt >= max_attempts:
        return Transition(FAILED, f"node crashed during attempt {attempt} of {max_attempts}")
    return Transition(QUEUED, f"node crashed during attempt {attempt}; retrying", now)


class Scheduler:
    """The queued tasks and the running count. Not thread safe; O(log n) per call
    (lazy deletion: a removed entry stays in the heaps until it surfaces)."""

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.running: set[str] = set()
        self._queued: dict[str, Entry] = {}
        self._ready: list[tuple[int, int, str]] = []
        self._delayed: list[tuple[float, int, str]] = []
        self._deadlines: list[tuple[float, int, str]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._queued

    def add(self, entry: Entry) -> None:
        """Queue ``entry`` (replacing a queued entry with the same id)."""
        self._queued[entry.task_id] = entry
        heapq.heappush(self._delayed, (entry.not_before, entry.order, entry.task_id))
        heapq.heappush(self._deadlines, (entry.deadline, entry.order, entry.task_id))

    def remove(self, task_id: str) -> Entry | None:
        """Take a queued task out (cancel); None when it is not queued."""
        return self._queued.pop(task_id, None)

    def _live(self, item: tuple, field: str) -> bool:
        e = self._queued.get(item[2])
        return e is not None and getattr(e, field) == item[0] and e.order == item[1]

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            item = heapq.heappop(self._delayed)
            if self._live(item, "not_before"):
                e = self._queued[item[2]]
                heapq.heappush(self._ready, (-e.priority, e.order, e.task_id))

    def next(self, now: float) -> Entry | None:
        """The task to start now (it moves to ``running``), or None when all slots are
        busy or nothing is ready."""
        if len(self.running) >= self.concurrency:
            return None
        self._promote(now)
        while self._ready:
            _, order, task_id = heapq.heappop(self._ready)
            e = self._queued.get(task_id)
            if e is not None and e.order == order and e.not_before <= now:
                del self._queued[task_id]
                self.running.add(task_id)
                return e
        return None

    def finished(self, task_id: str) -> None:
        """A running task's attempt ended (whatever its next state)."""
        self.running.discard(task_id)

    def expired(self, now: float) -> list[Entry]:
        """Remove and return the queued tasks whose deadline is ``<= now``."""
        out: list[Entry] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            item = heapq.heappop(self._deadlines)
            if self._live(item, "deadline"):
                out.append(self._queued.pop(item[2]))
        return out

    def next_wakeup(self) -> float | None:
        """The earliest time at which ``next`` or ``expired`` can return something new
        without another call to ``add`` or ``finished`` (None: nothing pending). While
        every slot is busy only deadlines count (``finished`` frees a slot)."""
        times = []
        while self._delayed and not self._live(self._delayed[0], "not_before"):
            heapq.heappop(self._delayed)
        while self._deadlines and not self._live(self._deadlines[0], "deadline"):
            heapq.heappop(self._deadlines)
        if self._delayed and len(self.running) < self.concurrency:
            times.append(self._delayed[0][0])
        if self._deadlines:
            times.append(self._deadlines[0][0])
        return min(times) if times else None
