"""The simulated world: nodes (hosts with a CPU, timers, a disk) on one network.

Theory of operation
-------------------
A :class:`World` owns the engine, the :class:`~sim.network.Network`, the shared
:class:`~sim.cpu.VerifyCache`, the invariant registry and one :class:`Host` per node.
A host wraps the node's :class:`~sim.process.Process` and *is* its ``ctx``: every
delivered message, fired timer and injected call becomes a work item on the host's
:class:`~sim.cpu.Cpu`; when the CPU runs the item the host sets its local clock to the
start time, charges the fixed costs (message handling plus per-byte decode, or timer),
calls the process, and returns the clock as the item's end time.

Crashes: ``crash(node)`` marks the host down, drops its queued work and timers, tells
the process (``on_crash``) and, if the node was attached with a factory, discards the
process object. Messages to a down node are dropped on arrival; messages the node sent
with a departure time after its crash (the tail of the handler that was running) are
dropped too, because each message carries the sender's incarnation and departure
time. ``restart(node)`` builds a fresh process from the factory (or reuses the old
object) and calls ``on_restart`` as a work item; the disk survives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from sim.cpu import CostModel, Cpu, VerifyCache
from sim.engine import Engine, EventHandle, cancel
from sim.invariants import Invariants
from sim.network import Network, NetworkConfig
from sim.process import Process

__all__ = ["Host", "World"]

_MSG, _TIMER, _CALL, _START, _RESTART = range(5)
_KIND_NAMES = ("message", "timer", "call", "start", "restart")


class Host:
    """One simulated node; implements :class:`sim.process.Context` (see there)."""

    __slots__ = (
        "world", "engine", "node_id", "n_nodes", "process", "factory", "cpu", "rng", "disk",
        "costs", "up", "incarnation", "incarnation_end", "clock", "_busy", "_timers",
        "_item", "crashes", "dropped", "crash_times",
    )

    def __init__(self, world: World, node_id: int) -> None:
        self.world = world
        self.engine = world.engine
        self.node_id = node_id
        self.n_nodes = world.n_nodes
        self.process: Process | None = None
        self.factory: Callable[[int], Process] | None = None
        self.cpu = Cpu(world.engine, self._run_item)
        self.rng: random.Random = world.engine.child_rng("node", node_id)
        self.disk: dict[Any, bytes] = {}
        self.costs = world.costs
        self.up = True
        self.incarnation = 0
        self.incarnation_end: dict[int, float] = {}
        self.clock = 0.0
        self._busy = False
        self._timers: dict[Hashable, EventHandle] = {}
        self._item: tuple | None = None
        self.crashes = 0
        self.dropped = 0
        self.crash_times: list[float] = []  # scheduled crashes still to come, ascending

    def __str__(self) -> str:
        item = self._item
        if item is None:
            return f"node {self.node_id}"
        what = _KIND_NAMES[item[0]]
        if item[0] == _MSG:
            what = f"message from {item[1]} ({len(item[2])} bytes)"
        elif item[0] == _TIMER:
            what = f"timer {item[1]!r}"
        return f"node {self.node_id} handling {what}"

    # -- work items -----------------------------------------------------------------
    def _run_item(self, start: float, item: tuple) -> float:
        self.clock = start
        self._busy = True
        self._item = item
        self.engine.note = self
        kind, process, costs = item[0], self.process, self.costs
        try:
            if kind == _MSG:
                self.clock += costs.handle_s + costs.decode_byte_s * len(item[2])
                process.on_message(self, item[1], item[2])  # type: ignore[union-attr]
            elif kind == _TIMER:
                if self._timers.get(item[1]) is not item[2]:
                    return start  # cancelled or replaced while queued: no work
                del self._timers[item[1]]
                self.clock += costs.timer_s
                process.on_timer(self, item[1])  # type: ignore[union-attr]
            elif kind == _CALL:
                item[1](self, *item[2])
            elif kind == _START:
                process.on_start(self)  # type: ignore[union-attr]
            else:
                process.on_restart(self)  # type: ignore[union-attr]
        finally:
            self._busy = False
            self._item = None
        return self.clock

    @property
    def now(self) -> float:
        """Local virtual clock (seconds): inside a handler it includes charged work."""
        return self.clock if self._busy else self.engine.now

    @property
    def arrived_s(self) -> float | None:
        """Virtual time the message being handled arrived (before it waited for the
        CPU); None outside ``on_message``."""
        item = self._item
        return item[3] if item is not None and item[0] == _MSG else None

    # -- Context API ------------------------------------------------------------------
    def send(self, dest: int, payload: bytes) -> None:
        if type(payload) is not bytes:
            if not isinstance(payload, (bytearray, memoryview)):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
            payload = bytes(payload)
        if not 0 <= dest < self.n_nodes:
            raise ValueError(f"no node {dest!r} (nodes are 0-{self.n_nodes - 1})")
        if not self._busy:
            self._need_handler("send")
        costs = self.costs
        self.clock += costs.encode_s + costs.encode_byte_s * len(payload)
        self.clock = self.world.network.send_many(
            self.node_id, (dest,), payload, self.clock, costs.send_s, self.incarnation)

    def broadcast(self, dests: Iterable[int], payload: bytes) -> None:
        if type(payload) is not bytes:
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        self._need_handler("broadcast")
        costs, n = self.costs, self.n_nodes
        if not isinstance(dests, (list, tuple, range)):
            dests = list(dests)
        for dest in dests:
            if not 0 <= dest < n:
                raise ValueError(f"no node {dest!r} (nodes are 0-{n - 1})")
        self.clock += costs.encode_s + costs.encode_byte_s * len(payload)
        self.clock = self.world.network.send_many(
            self.node_id, dests, payload, self.clock, costs.send_s, self.incarnation)

    def set_timer(self, delay_s: float, timer_id: Hashable) -> None:
        if not delay_s >= 0:
            raise ValueError(f"timer delay must be >= 0, got {delay_s!r}")
        cancel(self._timers.get(timer_id))
        handle: list = []
        entry = self.engine.schedule_at(self.now + delay_s, self._fire, timer_id, handle)
        handle.append(entry)
        self._timers[timer_id] = entry

    def _fire(self, timer_id: Hashable, handle: list) -> None:
        if self.up and self._timers.get(timer_id) is handle[0]:
            self.cpu.submit((_TIMER, timer_id, handle[0]))

    def cancel_timer(self, timer_id: Hashable) -> None:
        cancel(self._timers.pop(timer_id, None))

    def charge(self, cost_s: float) -> None:
        if not cost_s >= 0:
            raise ValueError(f"cost must be >= 0, got {cost_s!r}")
        self.clock += cost_s

    def charge_verify(self, count: int = 1) -> None:
        self.clock += self.costs.verify_s * count

    def charge_sign(self, count: int = 1) -> None:
        self.clock += self.costs.sign_s * count

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        self.clock += self.costs.verify_s
        return self.world.verify_cache.verify(public_key, data, signature)

    def sign(self, signer: Any, data: bytes) -> bytes:
        self.clock += self.costs.sign_s
        return signer.sign(data)

    def persist(self, key: Any, value: bytes) -> None:
        self.clock += self.costs.persist_s
        self.disk[key] = value

    def decided(self, seq: int, digest: bytes, proof: Any = None) -> None:
        self.world.publish("decided", self.node_id, self.now, seq, digest, proof)

    def observe(self, topic: str, *args: Any) -> None:
        self.world.publish(topic, self.node_id, self.now, *args)

    def _need_handler(self, what: str) -> None:
        if not self._busy:
            raise RuntimeError(f"{what} outside a handler: use World.inject to act at a node")


class World:
    """``n_nodes`` hosts on one network, driven by ``engine``.

    ``honest``: ids of honest nodes (default all); invariant checkers and reports use it.
    Raises ``ValueError`` for ``n_nodes < 1``.
    """

    def __init__(
        self, engine: Engine, n_nodes: int, *, network: NetworkConfig | None = None,
        costs: CostModel | None = None, honest: Iterable[int] | None = None,
        verify_cache: VerifyCache | None = None,
    ) -> None:
        if n_nodes < 1:
            raise ValueError(f"need at least one node, got {n_nodes}")
        self.engine = engine
        self.n_nodes = n_nodes
        self.costs = costs or CostModel()
        self.network = Network(engine, n_nodes, network or NetworkConfig(), self._deliver)
        self.verify_cache = verify_cache or VerifyCache()
        self.invariants = Invariants(engine)
        all_nodes = range(n_nodes)
        self.honest = frozenset(all_nodes if honest is None else honest)
        self.byzantine = frozenset(n for n in all_nodes if n not in self.honest)
        self.hosts = [Host(self, i) for i in all_nodes]
        self._subscribers: dict[str, list[Callable[..., None]]] = {}
        self.dropped_down = 0

    # -- wiring ---------------------------------------------------------------------
    def attach(
        self, node: int, process: Process, factory: Callable[[int], Process] | None = None,
    ) -> None:
        """Run ``process`` at ``node``. With ``factory(node) -> Process`` a restart gets a
        fresh process object (recommended)."""
        host = self.hosts[node]
        host.process, host.factory = process, factory
        self._update_ignoring(node, process)

    def _update_ignoring(self, node: int, process: Process | None) -> None:
        # A process that declares `ignores_messages = True` (e.g. a silent Byzantine
        # node) gets nothing delivered: the network counts such copies as `ignored`
        # instead of scheduling arrivals that would have no effect.
        if getattr(process, "ignores_messages", False):
            self.network.ignoring.add(node)
        else:
            self.network.ignoring.discard(node)

    def start(self, at_s: float = 0.0, *, stagger_s: float = 0.0) -> None:
        """Schedule ``on_start`` for every attached node, node i at ``at_s + i*stagger_s``.
        Raises ``RuntimeError`` if a node has no process."""
        for host in self.hosts:
            if host.process is None:
                raise RuntimeError(f"node {host.node_id} has no process attached")
            self.engine.schedule_at(at_s + host.node_id * stagger_s, host.cpu.submit, (_START,))

    def subscribe(self, topic: str, callback: Callable[..., None]) -> None:
        """``callback(node, time_s, *args)`` for each ``ctx.observe(topic, *args)``."""
        self._subscribers.setdefault(topic, []).append(callback)

    def publish(self, topic: str, node: int, time_s: float, *args: Any) -> None:
        for callback in self._subscribers.get(topic, ()):
            callback(node, time_s, *args)

    # -- acting on nodes ------------------------------------------------------------
    def inject(self, node: int, fn: Callable[..., None], *args: Any) -> bool:
        """Queue ``fn(ctx, *args)`` as CPU work at ``node`` now (client requests, load).
        Returns False (and does nothing) when the node is down."""
        host = self.hosts[node]
        if not host.up:
            return False
        host.cpu.submit((_CALL, fn, args))
        return True

    def is_up(self, node: int) -> bool:
        return self.hosts[node].up

    def crash(self, node: int) -> None:
        """Crash ``node`` now (no-op when already down). Work the node's CPU already ran
        ahead of time is not undone: schedule crashes with :meth:`schedule_crash`."""
        host = self.hosts[node]
        now = self.engine.now
        while host.crash_times and host.crash_times[0] <= now:
            host.crash_times.pop(0)
        host.cpu.crash_at = host.crash_times[0] if host.crash_times else math.inf
        if not host.up:
            return
        self.engine.record("crash", node)
        host.up = False
        host.crashes += 1
        host.incarnation_end[host.incarnation] = self.engine.now
        host.dropped += host.cpu.reset()
        for handle in host._timers.values():
            cancel(handle)
        host._timers.clear()
        if host.process is not None:
            host.process.on_crash()
        if host.factory is not None:
            host.process = None

    def restart(self, node: int) -> None:
        """Restart a crashed ``node`` now (no-op when up); ``on_restart`` runs as work."""
        host = self.hosts[node]
        if host.up:
            return
        self.engine.record("restart", node)
        host.up = True
        host.incarnation += 1
        if host.factory is not None:
            host.process = host.factory(node)
            self._update_ignoring(node, host.process)
        host.cpu.submit((_RESTART,))

    def schedule_crash(self, node: int, at_s: float, restart_at_s: float | None = None) -> None:
        """Crash ``node`` at ``at_s`` and restart it at ``restart_at_s`` (None: never).

        Use this rather than calling :meth:`crash` from an event of your own: the node's
        CPU must know the crash in advance so that it never runs ahead of time work
        that the crash drops (see :mod:`sim.cpu`)."""
        self.engine.schedule_at(at_s, self.crash, node)
        host = self.hosts[node]
        host.crash_times.append(at_s)
        host.crash_times.sort()
        host.cpu.crash_at = host.crash_times[0]
        if restart_at_s is not None:
            if restart_at_s <= at_s:
                raise ValueError("restart must come after the crash")
            self.engine.schedule_at(restart_at_s, self.restart, node)

    # -- delivery -------------------------------------------------------------------
    def _deliver(self, src: int, dst: int, payload: bytes, meta: Any) -> None:
        host = self.hosts[dst]
        if not host.up:
            self.dropped_down += 1
            return
        if meta is not None:
            ends = self.hosts[src].incarnation_end
            if ends:  # the sender crashed before: was this sent after that?
                ended = ends.get(meta[0])
                if ended is not None and meta[1] > ended:
                    self.dropped_down += 1
                    return
        host.cpu.submit((_MSG, src, payload, self.engine.now))

    def run(self, until_s: float, **kwargs: Any) -> int:
        """``engine.run(until_s, **kwargs)``; returns events executed."""
        return self.engine.run(until_s, **kwargs)
