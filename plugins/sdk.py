"""The plugin SDK: what a third-party author imports.

Example (a whole plugin)::

    from plugins.sdk import Plugin, TaskContext, TaskFailed

    plugin = Plugin("hasher")

    @plugin.task_handler("sha256")          # serves task type "hasher.sha256"
    def sha256(ctx: TaskContext) -> bytes:
        if not ctx.input:
            raise TaskFailed("empty input", retryable=False)
        plugin.log.info("hashing %d bytes (attempt %d)", len(ctx.input), ctx.attempt)
        n = int(plugin.kv.get(b"count") or b"0") + 1
        plugin.kv.put(b"count", str(n).encode())
        return hashlib.sha256(ctx.input).digest()

    @plugin.subscribe("news")               # on /meshnode/plugin/hasher/1.0.0
    def on_news(msg: Message) -> None: ...

Handlers are plain functions (run in a worker thread of the plugin process, so they may
block) or ``async def`` functions (each run with ``asyncio.run``). They return bytes;
``TaskFailed(reason, retryable=...)`` fails the task on purpose; any other exception
fails it as not retryable (a bug does not get better by retrying), except MemoryError,
which is retryable. Every node service (kv, publish, propose, log) is an RPC to the node
and needs the matching capability (:mod:`plugins.capabilities`); a refused call raises
:class:`NodeError` in the plugin.

This module imports nothing from the node: no trio, no HSM, no sqlite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from plugins.protocol import LOCAL_RE, check_name

__all__ = [
    "KV",
    "Message",
    "NodeError",
    "Plugin",
    "Services",
    "TaskContext",
    "TaskFailed",
    "subscribe",
    "task_handler",
]

_TASK_MARK = "__meshnode_task_type__"
_TOPIC_MARK = "__meshnode_topic__"


class TaskFailed(Exception):
    """Raise in a handler to fail the task; ``retryable`` tells the engine's policy."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class NodeError(RuntimeError):
    """The node refused an RPC (capability not granted, quota, bad argument, ...)."""


@dataclass(frozen=True)
class TaskContext:
    """One task attempt. ``deadline`` is on ``time.monotonic()`` in this process; the
    node kills the plugin process if the task is still running after it."""

    task_id: str
    task_type: str
    input: bytes
    attempt: int
    deadline: float

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Message:
    """A message on the plugin's protocol: ``topic``, ``data`` and the sender PeerId."""

    topic: str
    data: bytes
    sender: str


class Services(Protocol):
    """How a Plugin reaches the node (bound by the runner, or plugins.testing)."""

    def call(self, method: str, args: dict[str, Any]) -> Any: ...
    def emit_log(self, level: int, msg: str) -> None: ...


def task_handler(task_type: str) -> Callable:
    """Mark a function as the handler of ``task_type`` (pass it to ``Plugin(handlers=)``
    or decorate with :meth:`Plugin.task_handler` directly)."""
    _check_local(task_type, "task type")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _TASK_MARK, task_type)
        return fn
    return mark


def subscribe(topic: str) -> Callable:
    """Mark a function as the receiver of ``topic`` messages (see :func:`task_handler`)."""
    _check_local(topic, "topic")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _TOPIC_MARK, topic)
        return fn
    return mark


def _check_local(value: str, what: str) -> None:
    if not isinstance(value, str) or not LOCAL_RE.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}")


class KV:
    """The plugin's private key-value store (bytes -> bytes), kept by the node."""

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin

    def get(self, key: bytes) -> bytes | None:
        return self._plugin._call("kv.get", {"key": bytes(key)})

    def put(self, key: bytes, value: bytes) -> None:
        self._plugin._call("kv.put", {"key": bytes(key), "value": bytes(value)})

    def delete(self, key: bytes) -> bool:
        return bool(self._plugin._call("kv.delete", {"key": bytes(key)}))

    def keys(self, prefix: bytes = b"", *, limit: int = 100) -> list[bytes]:
        """Keys starting with ``prefix``, sorted, at most ``limit`` (<= 1000)."""
        return list(self._plugin._call("kv.list", {"prefix": bytes(prefix), "limit": limit}))


class _ForwardHandler(logging.Handler):
    def __init__(self, plugin: Plugin) -> None:
        super().__init__(logging.DEBUG)
        self._plugin = plugin

    def emit(self, record: logging.LogRecord) -> None:
        services = self._plugin._services
        if services is None:
            return
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            services.emit_log(record.levelno, msg[:4000])
        except Exception:  # noqa: BLE001 - logging must never break a handler
            pass


class Plugin:
    """A plugin named ``name`` (must equal its entry point and manifest name)."""

    def __init__(self, name: str, *, handlers: Iterable[Callable] = ()) -> None:
        self.name = check_name(name)
        self.tasks: dict[str, Callable] = {}
        self.topics: dict[str, Callable] = {}
        self.kv = KV(self)
        self.log = logging.getLogger(f"plugin.{name}")
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self.log.addHandler(_ForwardHandler(self))
        self._services: Services | None = None
        for fn in handlers:
            self.add(fn)

    # ---- declaring ----------------------------------------------------------------
    def add(self, fn: Callable) -> Callable:
        """Register a function marked with :func:`task_handler` or :func:`subscribe`."""
        task_type, topic = getattr(fn, _TASK_MARK, None), getattr(fn, _TOPIC_MARK, None)
        if task_type is None and topic is None:
            raise ValueError(f"{fn!r} is not marked with @task_handler or @subscribe")
        if task_type is not None:
            if task_type in self.tasks:
                raise ValueError(f"two handlers for task type {task_type!r}")
            self.tasks[task_type] = fn
        if topic is not None:
            if topic in self.topics:
                raise ValueError(f"two receivers for topic {topic!r}")
            self.topics[topic] = fn
        return fn

    def task_handler(self, task_type: str) -> Callable:
        """Decorator: ``fn(ctx: TaskContext) -> bytes`` serves ``<name>.<task_type>``."""
        mark = task_handler(task_type)
        return lambda fn: self.add(mark(fn))

    def subscribe(self, topic: str) -> Callable:
        """Decorator: ``fn(msg: Message) -> None`` receives ``topic`` messages."""
        mark = subscribe(topic)
        return lambda fn: self.add(mark(fn))

    # ---- node services --------------------------------------------------------------
    def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` of this plugin's protocol (capability pubsub)."""
        _check_local(topic, "topic")
        self._call("pubsub.publish", {"topic": topic, "data": bytes(data)})

    def propose(self, op: bytes) -> int:
        """Propose ``op`` to consensus; returns its decided sequence number (capability
        propose). Blocks until decided."""
        return int(self._call("propose", {"op": bytes(op)})["seq"])

    def bind(self, services: Services | None) -> None:
        """Attach the node (the runner does this; tests use plugins.testing)."""
        self._services = services

    def _call(self, method: str, args: dict[str, Any]) -> Any:
        if self._services is None:
            raise NodeError("this plugin is not running under a node (see plugins.testing)")
        return self._services.call(method, args)
