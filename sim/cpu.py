"""CPU cost model: every simulated node is one CPU that does one thing at a time.

Theory of operation
-------------------
Each node has a :class:`Cpu` with a ``busy_until`` virtual time and a FIFO of work
items (a delivered message, a fired timer, an injected local call). When an item
arrives and the CPU is idle it starts at once; otherwise it waits in the FIFO until
``busy_until``. Running an item executes the protocol's Python code *instantly* in
virtual time, but the item's handler charges modelled costs (``ctx.charge``), which
advance the node's local clock; the item ends at ``start + charged`` and that becomes
``busy_until``. Messages the handler sends leave at the local clock value when they are
sent, so a reply to a message that needed three verifications and one signature
leaves ``handle + 3*verify + sign`` after the message was *dequeued*, which itself may be
long after it arrived. Latencies measured by workloads therefore include crypto queueing.

Costs are a :class:`CostModel` (seconds); defaults are the figures measured on the
project's 2-core machines (see ``bench/sim.py`` and :mod:`sim.calibrate`, and the table
in ``sim/README.md``) and can be overridden with ``--cost sign=0.3ms,verify=70us``.

:class:`VerifyCache` memoises Ed25519 verification of ``(key, message, signature)``
across simulated nodes: the result is a pure function of its inputs, so caching changes
wall time only, never the simulated outcome; every node is still charged ``verify_s``.
"""

from __future__ import annotations

import dataclasses
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
    ``busy_total`` (seconds of work done), ``handled`` (items run), ``max_queue``.
    """

    __slots__ = (
        "_engine", "_run_item", "_queue", "_wakeup", "_running",
        "busy_until", "busy_total", "handled", "max_queue",
    )

    def __init__(self, engine: Engine, run_item: Callable[[float, Any], float]) -> None:
        self._engine = engine
        self._run_item = run_item
        self._queue: deque[Any] = deque()
        self._wakeup: EventHandle | None = None
        self._running = False
        self.busy_until = 0.0
        self.busy_total = 0.0
        self.handled = 0
        self.max_queue = 0

    @property
    def queued(self) -> int:
        """Items waiting (not counting the one running)."""
        return len(self._queue)

    def submit(self, item: Any) -> None:
        """Run ``item`` now if the CPU is idle, else queue it behind earlier work."""
        now = self._engine.now
        if self._running or self._queue or self.busy_until > now:
            self._queue.append(item)
            if len(self._queue) > self.max_queue:
                self.max_queue = len(self._queue)
            if self._wakeup is None and not self._running:
                self._wakeup = self._engine.schedule_at(max(self.busy_until, now), self._wake)
            return
        self._execute(now, item)

    def _execute(self, start: float, item: Any) -> None:
        self._running = True
        try:
            end = self._run_item(start, item)
        finally:
            self._running = False
        if end < start:
            raise RuntimeError(f"work item ended before it started ({end} < {start})")
        self.busy_total += end - start
        self.busy_until = end
        self.handled += 1
        if self._queue and self._wakeup is None:
            self._wakeup = self._engine.schedule_at(end, self._wake)

    def _wake(self) -> None:
        self._wakeup = None
        if self._queue:
            self._execute(self._engine.now, self._queue.popleft())

    def reset(self) -> int:
        """Crash: drop queued work and the item in progress. Returns items dropped."""
        dropped = len(self._queue)
        self._queue.clear()
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
