"""The local task engine: a trio service that runs durable tasks with registered handlers.

Theory of operation
-------------------
``TaskEngine(store, registry, concurrency=...)`` is started with
``await nursery.start(engine.run)``. It owns three kinds of trio tasks:

* the **writer**: every state change is a store write; writes queued while a commit is
  in progress go into the next transaction (group commit: one fsync for many tasks).
  ``submit`` returns only after its row is committed;
* the **dispatcher**: asks the pure :class:`~node.tasks.schedule.Scheduler` what to
  start (priority, FIFO, concurrency limit, retry backoff) and which queued tasks
  passed their deadline, and sleeps until the scheduler's next wake-up or a change;
* one task per **attempt**: it commits ``running`` (attempt + 1) *before* calling the
  handler, runs it inside a cancel scope whose deadline is the earlier of the task
  deadline and the per-attempt timeout, maps the outcome through
  :func:`~node.tasks.schedule.after_attempt` and commits the result.

Crash recovery (``run`` start-up): queued tasks are queued again; tasks found
``running`` lost their attempt and become a retry, ``timed_out`` or ``failed`` by
:func:`~node.tasks.schedule.recover`. With ``synchronous=FULL`` a task accepted by
``submit`` is never lost, and each attempt that *started* is counted.

Time: the scheduler works in "engine time" ``clock() + skew`` where ``skew = wall() -
clock()`` at start-up, so stored deadlines are wall-clock based and survive a restart,
while sleeping uses the trio clock (``MockClock`` works). With ``threaded=False`` the
commits run on the trio thread (tests with ``MockClock(autojump_threshold=0)`` need
this: the mock clock would jump while a worker thread fsyncs).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .api import HandlerRegistry, TaskContext, TaskFailed
from .schedule import (
    CANCELLED,
    QUEUED,
    RUNNING,
    TERMINAL,
    TIMED_OUT,
    Entry,
    Outcome,
    RetryPolicy,
    Scheduler,
    after_attempt,
    recover,
)
from .store import Insert, TaskRow, TaskStore, Update

log = logging.getLogger("meshnode.tasks")

__all__ = ["EngineError", "TaskEngine"]

MAX_INPUT_BYTES = 1024 * 1024


class EngineError(RuntimeError):
    """A request the engine refuses (bad arguments, unknown task, engine not running)."""


@dataclass(slots=True)
class _Meta:
    type: str
    priority: int
    order: int
    attempt: int
    max_attempts: int
    deadline: float


@dataclass(slots=True)
class _Slot:
    event: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class TaskEngine:
    """Durable local tasks. ``clock`` is the trio clock (default ``trio.current_time``),
    ``wall`` the wall clock used to anchor stored times, ``rng`` the backoff jitter
    source. ``default_deadline_s`` / ``default_max_attempts`` apply when ``submit`` does
    not say."""

    def __init__(self, store: TaskStore, registry: HandlerRegistry, *, concurrency: int = 16,
                 clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None,
                 policy: RetryPolicy | None = None, threaded: bool = True,
                 default_deadline_s: float = 300.0, default_max_attempts: int = 3) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy or RetryPolicy()
        self.threaded = threaded
        self.default_deadline_s = default_deadline_s
        self.default_max_attempts = default_max_attempts
        self._clock = clock or trio.current_time
        self._wall = wall
        self._rng = rng or random.Random()
        self._sched = Scheduler(concurrency)
        self._meta: dict[str, _Meta] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._cancel_requested: set[str] = set()
        self._done: dict[str, trio.Event] = {}
        self._pending: list[tuple[Insert | Update, _Slot]] = []
        self._write_wake = trio.Event()
        self._wake = trio.Event()
        self._skew = 0.0
        self._running = False

    # ---- time ------------------------------------------------------------------------
    def now(self) -> float:
        """Engine time: the trio clock shifted onto the wall clock (seconds)."""
        return self._clock() + self._skew

    # ---- service ---------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then serve until cancelled. ``task_status.started()`` once
        ``submit`` may be called."""
        self._skew = self._wall() - self._clock()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                self._running = True
                await self._recover()
                task_status.started()
                await self._dispatch(nursery)
        finally:
            self._running = False

    async def _recover(self) -> None:
        now, writes = self.now(), []
        for row in self.store.active():
            if row.state == RUNNING:
                tr = recover(attempt=row.attempt, max_attempts=row.max_attempts,
                             deadline=row.deadline, now=now)
                writes.append(Update(row.id, tr.state, now, not_before=tr.not_before,
                                     reason=tr.reason))
                state, not_before = tr.state, tr.not_before
            elif row.deadline <= now:
                writes.append(Update(row.id, TIMED_OUT, now,
                                     reason="deadline passed while the node was down"))
                state, not_before = TIMED_OUT, 0.0
            else:
                state, not_before = QUEUED, row.not_before
            if state == QUEUED:
                self._meta[row.id] = _Meta(row.type, row.priority, row.seq, row.attempt,
                                           row.max_attempts, row.deadline)
                self._sched.add(Entry(row.id, row.priority, row.seq, row.deadline, not_before))
        if writes:
            log.info("recovered tasks: %d re-queued or closed after a restart", len(writes))
            await self._commit(*writes)

    async def _writer(self) -> None:
        try:
            await self._write_forever()
        finally:  # stopping: callers outside the engine's nursery must not wait forever
            for _, slot in self._pending:
                slot.error = EngineError("the task engine stopped")
                slot.event.set()
            self._pending = []

    async def _write_forever(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake = trio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            writes = [w for w, _ in batch]
            try:
                if self.threaded:
                    results = await trio.to_thread.run_sync(self.store.commit, writes)
                else:
                    results = self.store.commit(writes)
            except BaseException as exc:
                for _, slot in batch:
                    slot.error = exc
                    slot.event.set()
                raise
            for (_, slot), res in zip(batch, results, strict=True):
                slot.result = res
                slot.event.set()

    async def _commit(self, *writes: Insert | Update) -> list[Any]:
        if not self._running:
            raise EngineError("the task engine is not running")
        slots = []
        for w in writes:
            slot = _Slot()
            self._pending.append((w, slot))
            slots.append(slot)
        self._write_wake.set()
        for slot in slots:
            await slot.event.wait()
            if isinstance(slot.error, EngineError):
                raise slot.error
            if slot.error is not None:
                raise EngineError(f"task store write failed: {slot.error}") from slot.error
        return [s.result for s in slots]

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        while True:
            now = self.now()
            for e in self._sched.expired(now):
                nursery.start_soon(self._expire, e)
            while (e := self._sched.next(now)) is not None:
                nursery.start_soon(self._attempt, e)
            wake = self._sched.next_wakeup()
            with trio.move_on_at(math.inf if wake is None else wake - self._skew):
                await self._wake.wait()
            self._wake = trio.Event()

    # ---- one attempt ---------------------------------------------------------------------
    async def _expire(self, e: Entry) -> None:
        await self._finish(e.task_id, TIMED_OUT, "deadline passed while queued")

    async def _attempt(self, e: Entry) -> None:
        m = self._meta[e.task_id]
        m.attempt += 1
        await self._commit(Update(e.task_id, RUNNING, self.now(), attempt=m.attempt))
        outcome, output = await self._call(e.task_id, m)
        now = self.now()
        tr = after_attempt(outcome, attempt=m.attempt, max_attempts=m.max_attempts,
                           deadline=m.deadline, now=now, policy=self.policy, rng=self._rng)
        self._sched.finished(e.task_id)
        if tr.state == QUEUED:
            await self._commit(Update(e.task_id, QUEUED, now, not_before=tr.not_before,
                                      reason=tr.reason))
            self._sched.add(Entry(e.task_id, m.priority, m.order, m.deadline, tr.not_before))
            self._wake.set()
        else:
            await self._finish(e.task_id, tr.state, tr.reason, output)

    async def _call(self, task_id: str, m: _Meta) -> tuple[Outcome, bytes | None]:
        if task_id in self._cancel_requested:
            return Outcome("cancelled", "cancelled before it started"), None
        handler = self.registry.get(m.type)
        if handler is None:
            return Outcome("no_handler", f"no handler for type {m.type}"), None
        row = self.store.get(task_id)
        limit = m.deadline
        if self.policy.attempt_timeout_s is not None:
            limit = min(limit, self.now() + self.policy.attempt_timeout_s)
        ctx = TaskContext(task_id, m.type, row.input, m.attempt, limit - self._skew)
        with trio.CancelScope(deadline=ctx.deadline) as scope:
            self._scopes[task_id] = scope
            try:
                output = await handler(ctx)
                if not isinstance(output, (bytes, bytearray, memoryview)):
                    return Outcome("error", f"handler returned {type(output).__name__}, "
                                   "not bytes", retryable=False), None
                return Outcome("ok"), bytes(output)
            except TaskFailed as exc:
                return Outcome("error", exc.reason, exc.retryable), None
            except Exception as exc:  # noqa: BLE001 - a handler bug is a failed attempt
                return Outcome("error", f"handler raised {exc!r}"), None
            except BaseExceptionGroup as group:  # errors mixed with cancellation
                rest = group.split(trio.Cancelled)[1]
                if rest is None:
                    raise  # only cancellation: our scope or the engine's shutdown
                # a still-pending outer cancellation is re-delivered at the next checkpoint
                return Outcome("error", f"handler raised {rest!r}"), None
            finally:
                self._scopes.pop(task_id, None)
        if task_id in self._cancel_requested:
            return Outcome("cancelled", "cancelled while running"), None
        if self.now() >= m.deadline:
            return Outcome("deadline", f"deadline passed during attempt {m.attempt}"), None
        return Outcome("attempt_timeout", f"attempt {m.attempt} exceeded "
                       f"{self.policy.attempt_timeout_s:g} s"), None

    async def _finish(self, task_id: str, state: str, reason: str,
                      output: bytes | None = None) -> None:
        await self._commit(Update(task_id, state, self.now(), output=output, reason=reason))
        self._sched.finished(task_id)
        self._meta.pop(task_id, None)
        self._cancel_requested.discard(task_id)
        done = self._done.pop(task_id, None)
        if done is not None:
            done.set()
        self._wake.set()

    # ---- API -------------------------------------------------------------------------
    async def submit(self, task_type: str, input: bytes = b"", *,
                     deadline_s: float | None = None, max_attempts: int | None = None,
                     priority: int = 0, idempotency_key: str | None = None) -> str:
        """Queue a task durably; returns its id once the row is committed. With an
        ``idempotency_key`` seen before, returns that task's id and queues nothing.
        Raises EngineError on bad arguments or when the engine is not running."""
        deadline_s = self.default_deadline_s if deadline_s is None else deadline_s
        max_attempts = self.default_max_attempts if max_attempts is None else max_attempts
        _check_submit(task_type, input, deadline_s, max_attempts, priority, idempotency_key)
        now = self.now()
        w = Insert(os.urandom(16).hex(), task_type, bytes(input), int(priority),
                   int(max_attempts), now, now + float(deadline_s), idempotency_key)
        (task_id, created, seq), = await self._commit(w)
        if created:
            self._meta[task_id] = _Meta(task_type, w.priority, seq, 0, w.max_attempts,
                                        w.deadline)
            self._sched.add(Entry(task_id, w.priority, seq, w.deadline))
            self._wake.set()
        return task_id

    async def cancel(self, task_id: str) -> TaskRow:
        """Cancel a queued or running task (a running handler is cancelled) and return
        its row once it is terminal. A terminal task is returned unchanged. Raises
        EngineError for an unknown id."""
        if self._sched.remove(task_id) is not None:
            await self._finish(task_id, CANCELLED, "cancelled while queued")
        elif task_id in self._meta:
            self._cancel_requested.add(task_id)
            scope = self._scopes.get(task_id)
            if scope is not None:
                scope.cancel()
            return await self.wait(task_id)
        row = self.store.get(task_id)
        if row is None:
            raise EngineError(f"no task {task_id}")
        return row

    def get(self, task_id: str) -> TaskRow | None:
        return self.store.get(task_id)

    def list(self, state: str | None = None, limit: int = 100) -> list[TaskRow]:
        try:
            return self.store.list(state, limit)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    async def wait(self, task_id: str) -> TaskRow:
        """The task's row once it is terminal. Raises EngineError for an unknown id."""
        while True:
            row = self.store.get(task_id)
            if row is None:
                raise EngineError(f"no task {task_id}")
            if row.state in TERMINAL and task_id not in self._meta:
                return row
            await self._done.setdefault(task_id, trio.Event()).wait()

    async def purge(self, older_than_s: float) -> int:
        """Delete terminal tasks last updated more than ``older_than_s`` seconds ago
        (their idempotency keys are forgotten with them); returns how many."""
        before = self.now() - older_than_s
        if self.threaded:
            return await trio.to_thread.run_sync(self.store.purge, before)
        return self.store.purge(before)

    def stats(self) -> dict[str, Any]:
        """Counts per state, plus the in-memory queue and running sizes."""
        return {"states": self.store.counts(), "queued_in_memory": len(self._sched),
                "running": len(self._sched.running), "concurrency": self._sched.concurrency,
                "types": self.registry.types()}


def _check_submit(task_type, input, deadline_s, max_attempts, priority, key) -> None:
    if not isinstance(task_type, str) or not task_type or len(task_type) > 128:
        raise EngineError("a task type is a non-empty string of at most 128 characters")
    if not isinstance(input, (bytes, bytearray, memoryview)) or len(input) > MAX_INPUT_BYTES:
        raise EngineError(f"task input must be bytes of at most {MAX_INPUT_BYTES} bytes")
    if not isinstance(deadline_s, (int, float)) or not 0 < deadline_s < 10**9:
        raise EngineError("the deadline must be a positive number of seconds")
    if type(max_attempts) is not int or not 1 <= max_attempts <= 1000:
        raise EngineError("max_attempts must be an integer from 1 to 1000")
    if type(priority) is not int or not -(2**31) <= priority < 2**31:
        raise EngineError("priority must be a 32-bit integer")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
        raise EngineError("an idempotency key is a non-empty string of at most 256 characters")
