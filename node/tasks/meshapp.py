"""The PBFT application of a node: mesh task operations plus anything else.

:class:`MeshTaskApp` is a :class:`consensus.state.StateMachine`. Operations tagged
``"task.*"`` (see :mod:`node.tasks.meshops`) execute in the deterministic
:class:`~node.tasks.mesh.MeshTasks` core; every other operation goes to ``other`` (another
StateMachine, e.g. the plugins' operations), in one batch per sequence number. The
snapshot holds both, so checkpoints and state transfer cover the task state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from consensus.quorum import Membership, VerifyFn
from identity.canonical import DecodeError, decode, encode
from identity.signer import verify_signature

from .mesh import MeshConfig, MeshTasks, refused
from .meshops import op_tag

__all__ = ["MeshTaskApp", "bound_replica"]


class MeshTaskApp:
    """A :class:`consensus.state.StateMachine`: task operations go to :class:`MeshTasks`,
    anything else to ``other`` (another StateMachine; without one, it is rejected).
    ``members()`` returns the member set in force (the runtime passes
    ``lambda: replica.state.members``; it only changes at checkpoint boundaries, after
    ``apply``, so every replica sees the same set at the same sequence number)."""

    def __init__(self, members: Callable[[], Membership], *, other: Any = None,
                 config: MeshConfig | None = None, verify: VerifyFn = verify_signature,
                 on_applied: Callable[[int], None] | None = None) -> None:
        self.members = members
        self.other = other
        self.core = MeshTasks(config, verify=verify)
        self.on_applied = on_applied

    def apply(self, seq: int, requests: Sequence[Any]) -> list[bytes]:
        members = self.members()
        out: list[bytes | None] = []
        others: list[Any] = []
        for req in requests:
            if _is_task_op(req.op):
                out.append(self.core.apply_op(seq, req.op, members))
            else:
                out.append(None)
                others.append(req)
        if others:
            rest = iter(self.other.apply(seq, others) if self.other is not None
                        else [refused("not a task operation") for _ in others])
            out = [r if r is not None else next(rest) for r in out]
        if self.on_applied is not None:
            self.on_applied(seq)
        return out  # type: ignore[return-value]

    def snapshot(self) -> bytes:
        other = self.other.snapshot() if self.other is not None else b""
        return encode([self.core.snapshot(), other])

    def restore(self, snapshot: bytes) -> None:
        try:
            core, other = decode(snapshot)
        except (DecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"bad snapshot: {exc}") from None
        self.core.restore(core)
        if self.other is not None:
            self.other.restore(other)


def bound_replica(replica_cls: Any = None) -> Callable[..., Any]:
    """A replica constructor for ``Replica(...)`` and ``consensus.persist.restore(...,
    replica_cls=...)`` that points a :class:`MeshTaskApp` passed as ``app=`` at the new
    replica's committed member set *before* anything executes (``restore`` re-executes
    decided batches while it builds the replica)."""

    def make(me: str, members: Any, **kwargs: Any) -> Any:
        cls = replica_cls
        if cls is None:
            from consensus.replica import Replica as cls
        replica = cls(me, members, **kwargs)
        app = kwargs.get("app")
        if isinstance(app, MeshTaskApp):
            app.members = lambda: replica.state.members
        return replica

    return make


def _is_task_op(op: bytes) -> bool:
    tag = op_tag(op)
    return tag is not None and tag.startswith("task.")
