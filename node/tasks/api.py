"""What task handlers see: the context they get, the error they raise, the registry.

A handler is ``async def handler(ctx: TaskContext) -> bytes``. It returns the output
bytes, or raises :class:`TaskFailed` (``retryable=False`` for a permanent failure).
Any other exception counts as a retryable failure whose reason is the exception's
``repr``. The engine runs every attempt inside ``trio.move_on_at(ctx.deadline)``.

The plugin host registers its handlers with ``owner=<plugin name>`` and drops them all
with :meth:`HandlerRegistry.unregister_owner` when the plugin stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Handler", "HandlerRegistry", "TaskContext", "TaskFailed"]


class TaskFailed(Exception):
    """Raised by a handler: the attempt failed because of ``reason``. ``retryable``
    (default True) lets the engine retry within the task's attempts and deadline."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.retryable = bool(retryable)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """One attempt of one task, as its handler sees it. ``attempt`` counts from 1;
    ``deadline`` is in trio clock seconds (``trio.current_time()``): the attempt is
    cancelled then (the earlier of the task deadline and the per-attempt timeout)."""

    task_id: str
    task_type: str
    input: bytes
    attempt: int
    deadline: float


Handler = Callable[[TaskContext], Awaitable[bytes]]


class HandlerRegistry:
    """Task type -> handler, with the owner that registered it (``"builtin"`` or a
    plugin name). Types are unique across owners."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, str]] = {}

    def register(self, task_type: str, handler: Handler, *, owner: str = "builtin") -> None:
        """Register ``handler`` for ``task_type``. Raises ValueError when the type is
        empty, not a str, or already registered (by any owner)."""
        if not isinstance(task_type, str) or not task_type:
            raise ValueError("a task type is a non-empty string")
        if not callable(handler):
            raise ValueError(f"handler for {task_type!r} is not callable")
        if task_type in self._handlers:
            raise ValueError(f"task type {task_type!r} is already registered by "
                             f"{self._handlers[task_type][1]!r}")
        self._handlers[task_type] = (handler, owner)

    def unregister_owner(self, owner: str) -> None:
        """Drop every handler ``owner`` registered (no error when there is none)."""
        self._handlers = {t: v for t, v in self._handlers.items() if v[1] != owner}

    def get(self, task_type: str) -> Handler | None:
        entry = self._handlers.get(task_type)
        return None if entry is None else entry[0]

    def owner(self, task_type: str) -> str | None:
        entry = self._handlers.get(task_type)
        return None if entry is None else entry[1]

    def types(self) -> list[str]:
        """Registered task types, sorted."""
        return sorted(self._handlers)
