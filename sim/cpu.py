"""CPU cost model: every simulated node is one CPU that does one thing at a time.

Theory of operation
-------------------
Each node has a :class:`Cpu` with a ``busy_until`` virtual time and a FIFO of work
items (a delivered message, a fired timer, an injected local call). An item submitted
at ``now`` starts at ``max(now, busy_until)``: at once when the CPU is idle, otherwise
when the work submitted before it is done. Running an item executes the protocol's
Python code *instantly* in virtual time, but the item's handler charges modelled costs
(``ctx.charge``), which advance the node's local clock from the item's start; the item
ends at ``start + charged`` and that becomes ``busy_until``. Messages the handler sends
leave at the local clock value when they are sent, so a reply to a message that needed
three verifications and one signature leaves ``handle + 3*verify + sign`` after the
message *started*, which itself may be long after it arrived. Latencies measured by
workloads therefore include crypto queueing.

Eager execution (a speed-up that changes no outcome): everything that can reach a node's
process goes through its CPU FIFO, and every effect of a handler (sends, timers, disk
writes) is stamped with the node's local clock, never with the global ``now``. So an
item whose start time is already known when it is submitted (nothing is queued in front
of it) can run right away, at submission, with its local clock set to that start time,
instead of waiting in the queue for a wake-up event: the process sees the same inputs in
the same order and produces the same effects at the same virtual times. Two things can
happen to a node between submission and start that a process cannot see coming, and both
keep the queue: a scheduled crash (``crash_at``; the crash must drop the work) and the
end of the running ``Engine.run`` (work that starts after ``until`` waits for the next
run). The network checks partitions by the departure time, not by ``now``
(:meth:`sim.network.Network.blocked_at`). This halves the event count of busy runs
(one event per delivered message instead of two).

Costs are a :class:`CostModel` (seconds); defaults are the figures measured on the
project's 2-core machines (see ``bench/sim.py`` and :mod:`sim.calibrate`, and the table
in ``sim/README.md``) and can be overridden with ``--cost sign=0.3ms,verify=70us``.

:class:`VerifyCache` memoises Ed25519 verification of ``(key, message, signature)``
across simulated nodes: the result is a pure function of its inputs, so caching changes
wall time only, never the simulated outcome; every node is still charged ``verify_s``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from identity.signer import verify_signature
from sim.engine import Engine, EventHandle, cancel
from sim.units import parse_duration

__all__ = ["CostModel", "Cpu", "VerifyCache", "parse_costs"]


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Modelled CPU costs in seconds (per operation or per byte).

    ``sign_s``: one Ed25519 signature by the node's HSM (SoftHSM 2.6: 0.27 ms, measured
    on the project machines, ARCHITECTURE.md section 7; PyNaCl in-process would be
    ~0.028 ms). ``verify_s``: one Ed25519 verification (PyNaCl, measured 0.064 ms).
    ``handle_s``: fixed cost of taking one received message into the core (canonical
    decode of a small message measured 9.7 us, plus ~10 us dispatch, estimated).
    ``timer_s``: one timer or tick (estimate). ``encode_s``: one canonical encode of a
    small message (measured 7.3 us), charged once per ``send`` and once per
    ``broadcast``. ``send_s``: framing and stream write per destination (estimate).
    ``encode_byte_s`` / ``decode_byte_s``: codec cost per payload byte (measured
    ~0.1 ns: bytes fields are copied, not walked). ``persist_s``: one durable record
    write (sqlite WAL without fsync per write; estimate).
    """

    sign_s: float = 270e-6
    verify_s: float = 65e-6
    handle_s: float = 20e-6
    timer_s: float = 5e-6
    encode_s: float = 7.5e-6
    send_s: float = 2e-6
    encode_byte_s: float = 0.1e-9
    decode_byte_s: float = 0.1e-9
    persist_s: float = 20e-6

    def replace(self, **changes: float) -> CostModel:
        """A copy with some costs changed. Raises ``ValueError`` for unknown names or
        negative values."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown cost {key!r} (known: {', '.join(sorted(names))})")
            if not value >= 0:
                raise ValueError(f"cost {key} must be >= 0, got {value!r}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        """``{"sign_s": ..., ...}`` for reports."""
        return dataclasses.asdict(self)


def parse_costs(text: str, base: CostModel | None = None) -> CostModel:
    """Parse ``"sign=0.3ms,verify=70us,encode_byte=4ns"`` into a :class:`CostModel`.

    Names are the field names with or without the ``_s`` suffix. ``ns`` is accepted as
    a unit here (per-byte costs). Raises ``ValueError`` with a one-line message.
    """
    model = base or CostModel()
    changes: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"cost {part!r} is not NAME=DURATION")
        key = key.strip()
        key = key if key.endswith("_s") else f"{key}_s"
        value = value.strip()
        if value.endswith("ns"):
            try:
                changes[key] = float(value[:-2]) * 1e-9
            except ValueError:
                raise ValueError(f"cost {part!r}: {value!r} is not a duration") from None
        else:
            try:
                changes[key] = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"cost {part!r}: {exc}") from None
    return model.replace(**changes)


class Cpu:
    """One node's CPU: a FIFO of work items and a busy-until time (virtual seconds).

    ``run_item(start_s, item) -> end_s`` executes one item starting at ``start_s`` and
    returns when it finished (``end_s >= start_s``). Attributes: ``busy_until``,
    ``busy_total`` (seconds of work done), ``handled`` (items run), ``max_queue`` (most
    items submitted but not yet started at one time), ``max_wait_s`` (longest time an
    item waited for the CPU), ``eager`` (items run at submission, see the module doc).
    """

    __slots__ = (
        "_engine", "_run_item", "_queue", "_wakeup", "_running", "_starts", "crash_at",
        "busy_until", "busy_total", "handled", "max_queue", "max_wait_s", "eager",
    )

    def __init__(self, engine: Engine, run_item: Callable[[float, Any], float]) -> None:
        self._engine = engine
        self._run_item = run_item
        self._queue: deque[Any] = deque()
        self._wakeup: EventHandle | None = None
        self._running = False
        self._starts: deque[float] = deque()  # start times of items not started at `now`
        #: Virtual time of this node's next scheduled crash (inf: none). Work that would
        #: start at or after it is never run ahead of time (the crash drops it).
        self.crash_at = math.inf
        self.busy_until = 0.0
        self.busy_total = 0.0
        self.handled = 0
        self.max_queue = 0
        self.max_wait_s = 0.0
        self.eager = 0

    @property
    def queued(self) -> int:
        """Items waiting (not counting the one running)."""
        return len(self._queue)

    def _backlog(self, now: float, start: float) -> None:
        starts = self._starts
        while starts and starts[0] <= now:
            starts.popleft()
        if start > now:
            starts.append(start)
            if start - now > self.max_wait_s:
                self.max_wait_s = start - now
        waiting = len(starts) + len(self._queue)
        if waiting > self.max_queue:
            self.max_queue = waiting

    def submit(self, item: Any) -> None:
        """Run ``item`` when the CPU is free: at once (eagerly, with its start time set
        to when the CPU frees up) when nothing is queued and that start is within the
        running ``Engine.run`` and before the node's next crash; else queue it."""
        engine = self._engine
        now = engine.now
        busy = self.busy_until
        start = busy if busy > now else now
        if self._running or self._queue or (
                start > now and (start > engine.run_until or start >= self.crash_at)):
            self._backlog(now, math.inf)
            self._queue.append(item)
            if self._wakeup is None and not self._running:
                self._wakeup = engine.schedule_at(start, self._wake)
            return
        if start > now:
            self.eager += 1
            self._backlog(now, start)
        elif self._starts:
            self._backlog(now, start)
        self._execute(start, item)

    def _execute(self, start: float, item: Any) -> None:
        engine, queue, run_item = self._engine, self._queue, self._run_item
        while True:
            self._running = True
            try:
                end = run_item(start, item)
            finally:
                self._running = False
            if end < start:
                raise RuntimeError(f"work item ended before it started ({end} < {start})")
            self.busy_total += end - start
            self.busy_until = end
            self.handled += 1
            if not queue or self._wakeup is not None:
                return
            # Items queued while this one ran (a nested submit) start at `end`.
            if end > engine.run_until or end >= self.crash_at:
                self._wakeup = engine.schedule_at(max(end, engine.now), self._wake)
                return
            start, item = end, queue.popleft()

    def _wake(self) -> None:
        self._wakeup = None
        if self._queue:
            self._execute(self._engine.now, self._queue.popleft())

    def reset(self) -> int:
        """Crash: drop queued work and the item in progress. Returns items dropped."""
        dropped = len(self._queue)
        self._queue.clear()
        self._starts.clear()
        cancel(self._wakeup)
        self._wakeup = None
        self.busy_until = self._engine.now
        return dropped


class VerifyCache:
    """Memoised :func:`identity.signer.verify_signature` shared by all simulated nodes.

    Deterministic: a cached answer equals a fresh one. ``max_entries`` bounds memory
    (the cache is cleared when full). Counters: ``hits``, ``misses``.
    """

    __slots__ = ("_cache", "_max", "hits", "misses")

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self._cache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        """True when ``signature`` is a valid Ed25519 signature by ``public_key`` over
        ``data``; never raises on bad input (see ``verify_signature``)."""
        key = (public_key, data, signature)
        try:
            cached = self._cache.get(key)
        except TypeError:  # an unhashable bytes-like argument (bytearray)
            try:
                key = (bytes(public_key), bytes(data), bytes(signature))
            except TypeError:
                return False
            cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        ok = verify_signature(key[0], key[1], key[2])
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = ok
        return ok
