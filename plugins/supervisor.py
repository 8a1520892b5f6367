"""Supervise one plugin: run its process, restart it with backoff, proxy its tasks (trio).

Theory of operation
-------------------
:class:`PluginSupervisor` runs *incarnations* of a plugin process one after another.
An incarnation is ready once its ``hello`` is accepted: the task types it declares are
registered with the task engine's :class:`HandlerRegistry` (as ``<plugin>.<type>``,
``owner=<plugin>``) on the first hello and stay registered across restarts, so a task
that arrives while the plugin is down fails *retryable* and the engine retries it by
its policy. When an incarnation ends — crash, ``os._exit``, SIGXCPU from RLIMIT_CPU,
SIGKILL at a task deadline, an oversized frame — every task in flight fails with
``TaskFailed(retryable=True)``; the next incarnation starts after a delay from
:class:`Backoff` (doubling per consecutive failure, capped, jittered; reset after an
incarnation stayed up for ``stable_s``).

A task proxy waits for the result until ``ctx.deadline`` (trio clock); past it, or if
the engine cancels the attempt, the process is killed, since a thread inside a plugin
cannot be cancelled. Calls from the plugin are checked against its capabilities, then
dispatched; every refusal is logged, counted and answered with an error frame.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.tasks.api import TaskContext, TaskFailed
from plugins.capabilities import Capability
from plugins.process import ChildSpec, PluginProcess, spawn
from plugins.protocol import METHODS

__all__ = ["Backoff", "CallRefused", "PluginRefused", "PluginSupervisor"]

log = logging.getLogger("meshnode.plugins")

HELLO_TIMEOUT_S = 20.0
MAX_CALLS_IN_FLIGHT = 64
INBOX_SIZE = 256
LOG_RATE_PER_S = 50
LOG_BURST = 200
#: Largest task input sent to a plugin (the RPC frame limit leaves room for the rest).
MAX_TASK_BYTES = 1024 * 1024
MAX_TIMEOUT_S = 10.0**8


class CallRefused(Exception):
    """A plugin RPC the node will not serve (one line, sent back to the plugin)."""


class PluginRefused(Exception):
    """Raised by a spawner: the plugin must not run (any more); one line."""


class Backoff:
    """Restart delays: ``base * 2**(n-1)`` for the n-th consecutive failure, capped at
    ``cap``, times a jitter factor in [0.5, 1] from ``rng``. An incarnation that stayed
    up at least ``stable_s`` seconds resets the count (pure: no clock here)."""

    def __init__(self, base: float, cap: float, *, stable_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.base, self.cap, self.stable_s = base, cap, stable_s
        self.failures = 0
        self.rng = rng or random.Random()

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.stable_s:
            self.failures = 0
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        return delay * self.rng.uniform(0.5, 1.0)


class _Pending:
    __slots__ = ("event", "result", "gone")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: dict | None = None
        self.gone: str | None = None


class _Incarnation:
    def __init__(self, proc: PluginProcess) -> None:
        self.proc = proc
        self.ready = False
        self.tasks: list[str] = []
        self.topics: set[str] = set()
        self.pending: dict[int, _Pending] = {}
        self.calls = 0


def describe_exit(status: int | None, killed_because: str | None) -> str:
    if killed_because and killed_because.startswith("failed to load"):
        return killed_because
    if killed_because:
        return f"killed ({killed_because})"
    if status is None:
        return "still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if -status == signal.SIGXCPU:
            return f"{name}: CPU limit (RLIMIT_CPU) reached"
        return f"terminated by {name}"
    return f"exited with status {status}"


class PluginSupervisor:
    """Runs plugin ``name`` with ``caps`` (requested and granted). ``dispatch(method,
    args)`` serves its calls; ``registry`` is the task engine's HandlerRegistry."""

    def __init__(self, name: str, spec: ChildSpec, caps: frozenset[Capability], *,
                 registry: Any, dispatch: Callable[[str, dict], Awaitable[Any]],
                 backoff: Backoff, subscribe: Callable | None = None,
                 spawner: Callable[[ChildSpec], Awaitable[PluginProcess]] = spawn) -> None:
        self.name, self.spec, self.caps = name, spec, caps
        self.registry, self.dispatch, self.backoff = registry, dispatch, backoff
        self.spawner = spawner
        self.subscribe = subscribe
        self._changed = trio.Event()
        self._state = "starting"
        self.counters: Counter[str] = Counter()
        self.registered: list[str] = []
        self.last_exit: str | None = None
        self.sandbox: str | None = None
        self.restarts = 0
        self.current: _Incarnation | None = None
        self._ids = itertools.count(1)
        self._limiter = trio.CapacityLimiter(max(1, spec.concurrency))
        self._log = logging.getLogger(f"meshnode.plugin.{name}")
        self._log_tokens = float(LOG_BURST)
        self._log_at = 0.0
        self._inbox_send, self._inbox = trio.open_memory_channel(INBOX_SIZE)
        self._unsubscribe: Callable[[], None] | None = None

    # ---- state ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """starting, running, restarting, refused or stopped."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[PluginSupervisor], bool]) -> None:
        """Return once ``predicate(self)`` holds (checked at every state change)."""
        while not predicate(self):
            await self._changed.wait()

    # ---- lifecycle ----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run incarnations until cancelled or refused; ``started()`` after the first
        incarnation is ready or has failed."""
        first = [task_status]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_messages)
                while self.state != "refused":
                    started = trio.current_time()
                    await self._incarnation(first)
                    if self.state == "refused":
                        break
                    delay = self.backoff.next_delay(trio.current_time() - started)
                    self.state = "restarting"
                    log.warning("plugin %s %s; restarting in %.2f s", self.name,
                                self.last_exit, delay)
                    await trio.sleep(delay)
                    self.restarts += 1
                    self._notify()
                nursery.cancel_scope.cancel()
        finally:
            self.registry.unregister_owner(self.name)
            if self._unsubscribe:
                self._unsubscribe()
            if self.state != "refused":
                self.state = "stopped"

    def _started(self, first: list) -> None:
        if first:
            first.pop().started()

    async def _incarnation(self, first: list) -> None:
        self.state = "starting"
        try:
            proc = await self.spawner(self.spec)
        except PluginRefused as exc:
            self.refuse(None, str(exc))
            self._started(first)
            return
        except OSError as exc:
            self.last_exit = f"could not start: {exc}"
            self._started(first)
            return
        inc = self.current = _Incarnation(proc)
        status = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._hello_watchdog, inc)

                async def on_message(msg: dict) -> None:
                    await self._on_message(inc, msg, nursery, first)
                status = await proc.serve(on_message)
                nursery.cancel_scope.cancel()
        finally:
            self.current = None
            if self.state != "refused":
                self.last_exit = describe_exit(status, proc.killed_because)
            for key, n in proc.drops.items():
                self.counters[f"frames_{key}"] += n
            if getattr(proc, "stderr_dropped", 0):
                self.counters["stderr_rate_limited"] += proc.stderr_dropped
            for pending in inc.pending.values():
                pending.gone = describe_exit(status, proc.killed_because)
                pending.event.set()
            with trio.CancelScope(shield=True):
                await proc.close()
        if self.state != "refused":
            self.counters["exits"] += 1
        self._notify()
        self._started(first)

    async def _hello_watchdog(self, inc: _Incarnation) -> None:
        await trio.sleep(HELLO_TIMEOUT_S)
        if not inc.ready:
            inc.proc.kill(f"no hello within {HELLO_TIMEOUT_S:g} s")

    def refuse(self, inc: _Incarnation | None, reason: str) -> None:
        """Stop supervising for good: log, unregister, kill."""
        reason = reason.removeprefix(f"plugin {self.name}: ")
        log.error("plugin %s refused: %s", self.name, reason)
        self.state = "refused"
        self.last_exit = f"refused: {reason}"
        self.registry.unregister_owner(self.name)
        self.registered = []
        if inc is not None:
            inc.proc.kill("refused")

    # ---- frames from the plugin ---------------------------------------------------
    async def _on_message(self, inc: _Incarnation, msg: dict, nursery, first: list) -> None:
        kind = msg["t"]
        if kind == "hello":
            if not inc.ready:
                self._hello(inc, msg)
                if inc.ready:
                    self._started(first)
        elif kind == "result":
            pending = inc.pending.get(msg["id"])
            if pending is None or pending.event.is_set():
                self.counters["frames_unknown_id"] += 1
            else:
                pending.result = msg
                pending.event.set()
        elif kind == "call":
            if not inc.ready or inc.calls >= MAX_CALLS_IN_FLIGHT:
                self.counters["calls_busy"] += 1
                await inc.proc.send({"t": "reply", "id": msg["id"], "ok": False,
                                     "error": "too many calls in flight"})
            else:
                inc.calls += 1
                nursery.start_soon(self._call, inc, msg)
        elif kind == "log":
            self._forward_log(msg)
        elif kind == "fatal":
            self._log.error("plugin %s failed to load: %s", self.name, msg["error"],
                            extra={"plugin": self.name})
            inc.proc.killed_because = f"failed to load: {msg['error'].splitlines()[-1]}"

    def _hello(self, inc: _Incarnation, msg: dict) -> None:
        if msg["name"] != self.name:
            self.refuse(inc, f"process says it is plugin {msg['name']!r}")
            return
        if msg["tasks"] and Capability.TASKS not in self.caps:
            self.refuse(inc, "it declares task handlers but capability 'tasks' is not "
                        "requested in its manifest")
            return
        if msg["topics"] and Capability.PUBSUB not in self.caps:
            self.refuse(inc, "it subscribes to topics but capability 'pubsub' is not "
                        "requested in its manifest")
            return
        types = [f"{self.name}.{t}" for t in msg["tasks"]]
        if types != self.registered and not self._register(types):
            self.refuse(inc, "its task types clash with registered ones")
            return
        inc.tasks, inc.topics, inc.ready = msg["tasks"], set(msg["topics"]), True
        self.sandbox = msg["sandbox"]
        if not msg["sandbox"].startswith("landlock") or not msg["sandbox"].endswith("seccomp"):
            log.warning("plugin %s runs without a filesystem sandbox (%s)", self.name,
                        msg["sandbox"])
        if inc.topics and self.subscribe and self._unsubscribe is None:
            self._unsubscribe = self.subscribe(self._deliver)
        self.state = "running"
        log.info("plugin %s running (pid %d, tasks %s, %s)", self.name, msg["pid"],
                 ", ".join(types) or "none", msg["sandbox"])

    def _register(self, types: list[str]) -> bool:
        self.registry.unregister_owner(self.name)
        self.registered = []
        for task_type in types:
            try:
                self.registry.register(task_type, self._proxy(task_type), owner=self.name)
            except ValueError as exc:
                log.error("plugin %s: %s", self.name, exc)
                self.registry.unregister_owner(self.name)
                return False
        self.registered = types
        return True

    async def _call(self, inc: _Incarnation, msg: dict) -> None:
        method = msg["method"]
        try:
            cap = METHODS[method]
            if cap not in self.caps:
                raise CallRefused(f"capability {cap.value!r} is not granted to plugin "
                                  f"{self.name} (request it in plugin.toml; the operator "
                                  f"grants it in [plugins.{self.name}])")
            reply = {"ok": True, "value": await self.dispatch(method, msg["args"])}
        except CallRefused as exc:
            self.counters["calls_refused"] += 1
            log.warning("plugin %s: %s refused: %s", self.name, method, exc)
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a hook failure must not kill the host
            self.counters["calls_failed"] += 1
            log.exception("plugin %s: %s failed", self.name, method)
            reply = {"ok": False, "error": f"{method} failed in the node: {type(exc).__name__}"}
        finally:
            inc.calls -= 1
        await inc.proc.send({"t": "reply", "id": msg["id"], **reply})

    def _forward_log(self, msg: dict) -> None:
        if Capability.LOG not in self.caps:
            self.counters["logs_not_granted"] += 1
            return
        now = trio.current_time()
        self._log_tokens = min(LOG_BURST, self._log_tokens + (now - self._log_at) * LOG_RATE_PER_S)
        self._log_at = now
        if self._log_tokens < 1:
            self.counters["logs_rate_limited"] += 1
            return
        self._log_tokens -= 1
        self._log.log(msg["level"] or logging.INFO, "%s", msg["msg"], extra={"plugin": self.name})

    # ---- pubsub delivery ------------------------------------------------------------
    def _deliver(self, message) -> None:
        try:
            self._inbox_send.send_nowait(message)
        except trio.WouldBlock:
            self.counters["messages_dropped"] += 1

    async def _forward_messages(self) -> None:
        async for m in self._inbox:
            inc = self.current
            if inc is None or not inc.ready or m.topic not in inc.topics:
                self.counters["messages_dropped"] += 1
                continue
            await inc.proc.send({"t": "message", "topic": m.topic, "data": m.data,
                                 "sender": m.sender})

    # ---- tasks ----------------------------------------------------------------------
    def _proxy(self, task_type: str):
        local = task_type[len(self.name) + 1:]

        async def handler(ctx: TaskContext) -> bytes:
            return await self.run_task(local, ctx)
        handler.__qualname__ = f"plugin:{task_type}"
        return handler

    async def run_task(self, local_type: str, ctx: TaskContext) -> bytes:
        """Run one attempt in the plugin process. Raises TaskFailed (retryable when the
        plugin was not running, crashed, or passed the deadline)."""
        sent = [False]
        try:
            with trio.move_on_at(ctx.deadline):
                async with self._limiter:
                    out = await self._run_task(local_type, ctx, sent)
                self.counters["tasks_ok"] += 1
                return out
            where = ("the task was still running; plugin process killed" if sent[0]
                     else "the task was still waiting for a free slot")
            raise TaskFailed(f"plugin {self.name}: deadline passed: {where}", retryable=True)
        except TaskFailed:
            self.counters["tasks_failed"] += 1
            raise

    async def _run_task(self, local_type: str, ctx: TaskContext, sent: list[bool]) -> bytes:
        inc = self.current
        if inc is None or not inc.ready:
            raise TaskFailed(f"plugin {self.name} is not running ({self.state}; last: "
                             f"{self.last_exit})", retryable=True)
        if len(ctx.input) > MAX_TASK_BYTES:
            raise TaskFailed(f"input of {len(ctx.input)} bytes is over the plugin limit of "
                             f"{MAX_TASK_BYTES}", retryable=False)
        task_id = next(self._ids)
        pending = inc.pending[task_id] = _Pending()
        left = min(ctx.deadline - trio.current_time(), MAX_TIMEOUT_S)
        timeout_ms = max(0, int(left * 1000))
        try:
            ok = await inc.proc.send({
                "t": "task", "id": task_id, "task_id": str(ctx.task_id), "task_type": local_type,
                "input": bytes(ctx.input), "attempt": int(ctx.attempt), "timeout_ms": timeout_ms})
            if not ok:
                raise TaskFailed(f"plugin {self.name}: cannot send the task", retryable=True)
            sent[0] = True
            await pending.event.wait()
        finally:
            inc.pending.pop(task_id, None)
            if not pending.event.is_set() and inc.proc.proc.returncode is None and sent[0]:
                # Cancelled (our deadline or the engine's): a plugin thread cannot be
                # interrupted, so the whole process goes.
                self.counters["kills_deadline"] += 1
                log.warning("plugin %s: task %s still running at its deadline; killing "
                            "the plugin process", self.name, ctx.task_id)
                inc.proc.kill(f"task {ctx.task_id} exceeded its deadline")
        if pending.gone is not None:
            raise TaskFailed(f"plugin {self.name} {pending.gone} during the task",
                             retryable=True)
        result = pending.result
        if result["ok"]:
            return result["output"]
        raise TaskFailed(result["reason"], retryable=result["retryable"])

    def status(self) -> dict[str, Any]:
        inc = self.current
        return {"state": self.state, "pid": inc.proc.pid if inc else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "sandbox": self.sandbox, "task_types": list(self.registered),
                "counters": dict(sorted(self.counters.items()))}
