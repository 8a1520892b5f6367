"""Control-socket handlers for tasks: ``task.submit``, ``task.list``, ``task.show``,
``task.cancel``, ``task.wait`` and ``task.stats`` (merged into the runtime's handlers).

Every value crossing the socket is canonical msgpack, which has no floats: times are
integer milliseconds (``*_ms``) and task input/output are bytes. Errors a user can act
on are raised as :class:`node.control.ControlError` (one line). Mesh tasks (``"mesh":
True``) go through the :class:`~node.tasks.service.MeshTaskService` when the node runs
one; their rows are the committed status from :meth:`MeshTasks.status`.
"""

from __future__ import annotations

from typing import Any

import trio

from node.control import ControlError

from .engine import EngineError, TaskEngine
from .service import MeshSubmitError
from .store import TaskRow

__all__ = ["row_wire", "task_handlers"]


def row_wire(row: TaskRow) -> dict[str, Any]:
    """A task row as a float-free map for the control socket."""
    d = row.to_dict()
    for name in ("created", "deadline", "not_before", "updated"):
        d[f"{name}_ms"] = int(round(d.pop(name) * 1000))
    d["mesh"] = False
    return d


def _mesh_wire(status: dict[str, Any]) -> dict[str, Any]:
    return {**status, "mesh": True}


def _str(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if type(value) is not str or not value:
        raise ControlError(f"{name} must be a non-empty string")
    return value


def task_handlers(engine: TaskEngine, *, mesh: Any = None) -> dict[str, Any]:
    """Control handlers (method -> ``async fn(params)``) for ``engine`` and, when given,
    the node's :class:`~node.tasks.service.MeshTaskService` ``mesh``."""

    def _mesh() -> Any:
        if mesh is None:
            raise ControlError("this node does not run mesh tasks")
        return mesh

    async def submit(params):
        task_type = _str(params, "type")
        data = params.get("input", b"")
        deadline_ms = params.get("deadline_ms", 30_000)
        if type(data) is not bytes or type(deadline_ms) is not int or deadline_ms <= 0:
            raise ControlError("input must be bytes and deadline_ms a positive integer")
        max_attempts = params.get("max_attempts")
        try:
            if params.get("mesh"):
                task_id = await _mesh().submit(task_type, data, deadline_s=deadline_ms / 1000,
                                               max_attempts=max_attempts or 5)
                result = _mesh_wire(_mesh().app.core.status(task_id))
                if params.get("wait"):
                    result = _mesh_wire(await _mesh().wait(task_id))
                return result
            task_id = await engine.submit(
                task_type, data, deadline_s=deadline_ms / 1000, max_attempts=max_attempts,
                priority=params.get("priority", 0),
                idempotency_key=params.get("idempotency_key"))
            row = await engine.wait(task_id) if params.get("wait") else engine.get(task_id)
            return row_wire(row)
        except (EngineError, MeshSubmitError) as exc:
            raise ControlError(str(exc)) from None

    async def list_(params):
        state, limit = params.get("state"), params.get("limit", 100)
        if type(limit) is not int or limit < 1:
            raise ControlError("limit must be a positive integer")
        if params.get("mesh"):
            return [dict(r, mesh=True) for r in _mesh().app.core.list(state)][-limit:]
        try:
            return [row_wire(r) for r in engine.list(state, limit)]
        except EngineError as exc:
            raise ControlError(str(exc)) from None

    async def show(params):
        task_id = _str(params, "id")
        row = engine.get(task_id)
        if row is not None:
            return row_wire(row)
        status = mesh.app.core.status(task_id) if mesh is not None else None
        if status is None:
            raise ControlError(f"no task {task_id}")
        return _mesh_wire(status)

    async def cancel(params):
        task_id = _str(params, "id")
        if engine.get(task_id) is None:
            if mesh is not None and mesh.app.core.status(task_id) is not None:
                raise ControlError("mesh tasks cannot be cancelled (their deadline bounds them)")
            raise ControlError(f"no task {task_id}")
        try:
            return row_wire(await engine.cancel(task_id))
        except EngineError as exc:
            raise ControlError(str(exc)) from None

    async def wait(params):
        task_id = _str(params, "id")
        timeout_ms = params.get("timeout_ms", 30_000)
        with trio.move_on_after(timeout_ms / 1000):
            if engine.get(task_id) is not None:
                return row_wire(await engine.wait(task_id))
            if mesh is not None and mesh.app.core.status(task_id) is not None:
                return _mesh_wire(await mesh.wait(task_id))
            raise ControlError(f"no task {task_id}")
        raise ControlError(f"task {task_id} did not finish within {timeout_ms} ms")

    async def stats(params):
        out = engine.stats()
        if mesh is not None:
            core = mesh.app.core
            out["mesh"] = {"clock": core.clock, "open": core.open_count(), "load": core.load()}
        return out

    return {"task.submit": submit, "task.list": list_, "task.show": show,
            "task.cancel": cancel, "task.wait": wait, "task.stats": stats}
