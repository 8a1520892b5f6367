"""The mesh task shell: ticks the mesh clock, runs this node's assignments, proposes results.

Theory of operation
-------------------
:class:`MeshTaskService` connects the pure :class:`~node.tasks.mesh.MeshTaskApp`
(replicated by PBFT) with the local :class:`~node.tasks.engine.TaskEngine`:

* **ticker**: every ``tick_s`` seconds, while any mesh task is open, it proposes a signed
  ``task.tick`` for the mesh clock value it last saw committed (the clock moves when
  ``f + 1`` members agree). An idle mesh proposes nothing: liveness is measured in
  ticks, so a resting clock ages nobody;
* **executor**: whenever the app applies a sequence number (``app.on_applied`` wakes
  it), it reads ``app.core.assigned_to(me)`` and, for each new ``(task, attempt)``,
  submits a local task with idempotency key ``mesh:<task>:<attempt>`` and a deadline of
  ``(due - clock) * tick_s`` seconds; when the local task ends it signs the result
  (``ok``/``error``) and proposes it. A local failure (a missing handler included) is
  reported retryable, so the task moves to the next member until its ``max_attempts``
  are used; the last failure is then the accepted result;
* **submit/wait** for the control API: propose a ``task.submit`` and wait for the task
  to close in committed state.

``propose(op) -> Any`` must return once ``op`` is committed and applied here (the
runtime passes ``driver.propose``; when it returns the op's result bytes, a refused
submission's reason is reported). ``sign(data) -> bytes`` is async and must serialise
HSM access with every other PKCS#11 call of the node (the runtime passes a function that
runs ``signer.sign`` in the driver's I/O limiter). Proposals that fail are logged and
retried by the next tick or wake-up; the core rejects duplicates, so retrying is safe.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .engine import TaskEngine
from .mesh import ASSIGNED
from .meshapp import MeshTaskApp
from .meshops import (
    decode_result,
    result_op,
    result_signing_bytes,
    submit_op,
    submit_signing_bytes,
    tick_op,
    tick_signing_bytes,
)

log = logging.getLogger("meshnode.tasks.mesh")

__all__ = ["MeshSubmitError", "MeshTaskService"]


class MeshSubmitError(RuntimeError):
    """The committed log refused a submission (the core's reason)."""


def _reason(result: Any) -> str:
    try:
        return str(decode_result(result).get("reason", "refused"))
    except Exception:  # noqa: BLE001 - whatever propose returned, say something useful
        return "the mesh task core refused the submission"


class MeshTaskService:
    """One node's mesh task shell (see the module docstring)."""

    def __init__(self, app: MeshTaskApp, engine: TaskEngine, *, me: str,
                 propose: Callable[[bytes], Awaitable[Any]],
                 sign: Callable[[bytes], Awaitable[bytes]], tick_s: float = 1.0) -> None:
        self.app = app
        self.engine = engine
        self.me = me
        self.propose = propose
        self.sign = sign
        self.tick_s = tick_s
        self._changed = trio.Event()  # set (and replaced) after every applied seq
        self._started: set[tuple[str, int]] = set()
        previous = app.on_applied

        def on_applied(seq: int) -> None:
            if previous is not None:
                previous(seq)
            changed, self._changed = self._changed, trio.Event()
            changed.set()

        app.on_applied = on_applied

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker, nursery)
            task_status.started()
            while True:
                changed = self._changed
                self._start_assigned(nursery)
                await changed.wait()

    # ---- clock ---------------------------------------------------------------------------
    async def _ticker(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(self.tick_s)
            if not self.app.core.open_count():
                continue  # idle: the clock may rest (liveness is counted in ticks too)
            if self.me not in self.app.members():
                continue  # only members submit (and sign) requests: they keep the clock
            clock = self.app.core.clock
            sig = await self.sign(tick_signing_bytes(self.me, clock))
            nursery.start_soon(self._propose, tick_op(self.me, clock, sig), "tick")

    async def _propose(self, op: bytes, what: str) -> None:
        try:
            await self.propose(op)
        except Exception as exc:  # noqa: BLE001 - retried by the next tick / wake-up
            log.warning("proposing a mesh task %s failed: %s", what, exc)

    # ---- execution -----------------------------------------------------------------------
    def _start_assigned(self, nursery: trio.Nursery) -> None:
        for t in self.app.core.assigned_to(self.me):
            key = (t["id"], t["attempt"])
            if key not in self._started:
                self._started.add(key)
                nursery.start_soon(self._execute, t)

    async def _execute(self, t: dict[str, Any]) -> None:
        ticks = max(1, t["due"] - self.app.core.clock)
        local_id = await self.engine.submit(
            t["type"], t["input"], deadline_s=ticks * self.tick_s, max_attempts=1,
            idempotency_key=f"mesh:{t['id']}:{t['attempt']}")
        row = await self.engine.wait(local_id)
        st = self.app.core.status(t["id"])
        if st is None or st["state"] != ASSIGNED or st["attempt"] != t["attempt"]:
            return  # reassigned or closed meanwhile: our result would be refused
        ok = row.state == "succeeded"
        output = (row.output or b"") if ok else b""
        error = "" if ok else f"{row.state}: {row.reason}"[:1024]
        retry = not ok  # another member may succeed (or have the handler); bounded by
        # the task's max_attempts, after which the failure is the accepted result
        sig = await self.sign(result_signing_bytes(t["id"], t["attempt"], self.me, ok, retry,
                                                   output, error))
        await self._propose(result_op(t["id"], t["attempt"], self.me, sig, output=output,
                                      ok=ok, retry=retry, error=error), "result")

    # ---- control API -------------------------------------------------------------------
    async def submit(self, task_type: str, input: bytes, *, deadline_s: float = 30.0,
                     max_attempts: int = 5) -> str:
        """Propose a mesh task; returns its id once the submission is committed."""
        task_id = os.urandom(16).hex()
        ticks = max(1, math.ceil(deadline_s / self.tick_s))
        at = self.app.core.clock
        sig = await self.sign(submit_signing_bytes(task_id, task_type, input, ticks,
                                                   max_attempts, self.me, at))
        result = await self.propose(submit_op(task_id, task_type, input, deadline_ticks=ticks,
                                              max_attempts=max_attempts, by=self.me, at=at,
                                              sig=sig))
        if self.app.core.status(task_id) is None:
            raise MeshSubmitError(_reason(result))
        return task_id

    async def wait(self, task_id: str) -> dict[str, Any] | None:
        """The task's committed status once it is closed (None: unknown task)."""
        while True:
            st = self.app.core.status(task_id)
            if st is None or st["state"] != ASSIGNED:
                return st
            await self._changed.wait()
