"""The discrete-event engine: virtual time, one seeded RNG, a deterministic event heap.

Theory of operation
-------------------
Virtual time is a float number of seconds starting at 0.0. Nothing in the simulator
reads a wall clock. Work is a heap of events ``[time, seq, callback, args]``: ``seq`` is
a counter incremented by every ``schedule`` call, so two events at the same virtual time
run in the order they were scheduled and the heap never compares callbacks. ``run`` pops
the earliest event, sets ``now`` to its time, calls it, then calls the after-event hooks
(invariant checkers). Time never goes backwards: scheduling into the past raises.

Randomness: the engine owns one ``random.Random`` seeded from ``seed``. Subsystems take a
*child* generator per purpose (``child_rng("network")``, ``child_rng("node", 7)``),
seeded from a SHA-256 of ``(seed, purpose...)``; so adding a random draw in one node's
code does not shift the network's loss pattern, and the same seed always gives the same
streams. No ``hash()`` of str/bytes is used (its seed differs between processes).

Replay: with ``trace=True`` the engine hashes every executed event (time, seq,
callback qualname) plus whatever subsystems append with :meth:`Engine.record` (the
network records every send and delivery with its bytes). Same seed and same inputs give
the same :meth:`Engine.trace_digest`; tests assert it.

Cancellation is lazy: :func:`cancel` blanks the callback of a heap entry, and ``run``
skips blank entries when it pops them.

While :meth:`Engine.run` runs, ``run_until`` is its ``until`` (``-inf`` otherwise): the
CPU model runs work ahead of time only inside it (see :mod:`sim.cpu`).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from typing import Any

__all__ = ["Engine", "EventHandle", "cancel", "derive_seed"]

#: A scheduled event: ``[time_s, seq, callback or None, args]`` (treat as opaque).
EventHandle = list


def derive_seed(seed: int, *purpose: object) -> int:
    """A 64-bit seed derived from ``seed`` and a purpose tuple of ints/strs (deterministic
    across processes and platforms)."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(purpose)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def cancel(handle: EventHandle | None) -> None:
    """Cancel a scheduled event (no-op if it already ran, was cancelled, or is None)."""
    if handle is not None:
        handle[2] = None


class Engine:
    """Seeded discrete-event loop.

    ``seed``: any int. ``trace``: hash every event for replay checks (costs ~20% speed).
    Attributes: ``now`` (virtual seconds, read-only by convention), ``seed``, ``rng``
    (the engine's own ``random.Random``), ``events`` (events executed so far).
    """

    def __init__(self, seed: int, *, trace: bool = False) -> None:
        self.seed = int(seed)
        self.now = 0.0
        self.rng = random.Random(derive_seed(self.seed, "engine"))
        self.events = 0
        self._heap: list[list[Any]] = []
        self._seq = 0
        self._hooks: list[Callable[[], None]] = []
        self._stopped = False
        self._current: list[Any] | None = None
        #: ``until`` of the :meth:`run` in progress (virtual seconds; -inf outside run).
        self.run_until = -math.inf
        self._trace = hashlib.sha256() if trace else None
        #: Free-form description of what the current event is doing (set by World).
        self.note = ""

    # -- randomness -----------------------------------------------------------------
    def child_rng(self, *purpose: object) -> random.Random:
        """A fresh ``random.Random`` for one purpose, e.g. ``child_rng("node", 3)``."""
        return random.Random(derive_seed(self.seed, *purpose))

    # -- scheduling -----------------------------------------------------------------
    def schedule(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> EventHandle:
        """Run ``callback(*args)`` after ``delay_s`` virtual seconds (>= 0).

        Returns a handle for :func:`cancel`. Raises ``ValueError`` for a negative or
        non-finite delay.
        """
        if not delay_s >= 0.0 or delay_s == math.inf:
            raise ValueError(f"delay must be finite and >= 0, got {delay_s!r}")
        return self._push(self.now + delay_s, callback, args)

    def schedule_at(self, time_s: float, callback: Callable[..., Any], *args: Any) -> EventHandle:
        """Run ``callback(*args)`` at virtual time ``time_s`` (>= ``now``).

        Raises ``ValueError`` when ``time_s`` is in the past or not finite.
        """
        if not time_s >= self.now or time_s == math.inf:
            raise ValueError(f"cannot schedule at {time_s!r}: now is {self.now!r}")
        return self._push(time_s, callback, args)

    def _push(self, time_s: float, callback: Callable[..., Any], args: tuple) -> EventHandle:
        self._seq += 1
        entry = [time_s, self._seq, callback, args]
        heapq.heappush(self._heap, entry)
        return entry

    def schedule_unchecked(self, time_s: float, callback: Callable[..., Any], *args: Any) -> None:
        """Hot-path :meth:`schedule_at` for callers that guarantee ``now <= time_s < inf``
        (the network, whose departure times are node clocks >= now). No handle."""
        self._seq += 1
        heapq.heappush(self._heap, [time_s, self._seq, callback, args])

    def pending(self) -> int:
        """Number of entries in the heap (cancelled ones included until popped)."""
        return len(self._heap)

    def next_time(self) -> float | None:
        """Virtual time of the earliest live event, or None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- hooks and tracing ------------------------------------------------------------
    def add_after_event(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after every executed event (keep it cheap)."""
        self._hooks.append(hook)

    @property
    def tracing(self) -> bool:
        """True when the engine hashes a trace."""
        return self._trace is not None

    def record(self, *fields: object) -> None:
        """Append ``fields`` (ints, floats, strs, bytes, tuples of those) to the trace."""
        if self._trace is not None:
            self._trace.update(repr(fields).encode())
            self._trace.update(b"\n")

    def trace_digest(self) -> str:
        """Hex SHA-256 of the trace so far. Raises ``RuntimeError`` without ``trace=True``."""
        if self._trace is None:
            raise RuntimeError("engine was created with trace=False")
        return self._trace.copy().hexdigest()

    def describe_current(self) -> str:
        """``"t=1.234567s seq=42 World._arrive: <note>"`` for the event being executed."""
        entry = self._current
        if entry is None:
            return "before the first event"
        fn = entry[2]
        name = getattr(fn, "__qualname__", type(fn).__name__) if fn else "cancelled"
        note = f": {self.note}" if self.note else ""
        return f"t={entry[0]:.6f}s seq={entry[1]} {name}{note}"

    # -- the loop -------------------------------------------------------------------
    def stop(self) -> None:
        """Make :meth:`run` return after the current event."""
        self._stopped = True

    def run(
        self,
        until: float = math.inf,
        *,
        max_events: int | None = None,
        on_progress: Callable[[float], None] | None = None,
        progress_every: int = 20_000,
    ) -> int:
        """Execute events in (time, seq) order until the heap is empty, the next event is
        later than ``until`` (virtual seconds), ``max_events`` ran, or :meth:`stop`.

        ``on_progress(now)`` is called every ``progress_every`` events. When the run ends
        because of ``until``, ``now`` is advanced to ``until``. Returns the number of
        events executed by this call. Exceptions from callbacks propagate (crash-only).
        """
        heap, pop, hooks, trace = self._heap, heapq.heappop, self._hooks, self._trace
        limit = math.inf if max_events is None else max_events
        every = progress_every if on_progress is not None else 0
        self._stopped = False
        self.run_until = until
        n = 0
        try:
            while heap and n < limit and not self._stopped:
                if heap[0][0] > until:
                    break
                entry = pop(heap)
                fn = entry[2]
                if fn is None:
                    continue
                self.now = entry[0]
                self._current = entry
                self.note = ""
                if trace is not None:
                    name = getattr(fn, "__qualname__", "?")
                    trace.update(f"{entry[0]!r}|{entry[1]}|{name}\n".encode())
                fn(*entry[3])
                n += 1
                for hook in hooks:
                    hook()
                if every and n % every == 0:
                    on_progress(self.now)  # type: ignore[misc]
        finally:
            self.run_until = -math.inf
        self.events += n
        self.note = ""
        if until != math.inf and not self._stopped and n < limit and until > self.now:
            self.now = until
        return n
