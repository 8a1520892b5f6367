"""Built-in task handlers every node has (diagnostics and a deterministic example).

* ``echo``: returns its input unchanged (checks the task path end to end).
* ``sha256``: returns the lowercase hex SHA-256 of its input (64 ASCII bytes), so the
  result of a mesh task can be checked by anyone.

Plugins add their own types through the same :class:`~node.tasks.api.HandlerRegistry`.
"""

from __future__ import annotations

import hashlib

from node.tasks.api import HandlerRegistry, TaskContext

__all__ = ["register_builtin_handlers"]


async def echo(task: TaskContext) -> bytes:
    """Output = input."""
    return task.input


async def sha256(task: TaskContext) -> bytes:
    """Output = hex SHA-256 of the input (64 bytes of ASCII)."""
    return hashlib.sha256(task.input).hexdigest().encode("ascii")


def register_builtin_handlers(registry: HandlerRegistry) -> None:
    """Register ``echo`` and ``sha256`` (owner ``builtin``)."""
    registry.register("echo", echo, owner="builtin")
    registry.register("sha256", sha256, owner="builtin")
