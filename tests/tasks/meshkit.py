"""Helpers for the mesh task core tests: members with in-process keys, op builders."""

from __future__ import annotations

from consensus.messages import Request
from consensus.quorum import Membership
from identity.soft import SoftSigner
from node.tasks.mesh import MeshTasks
from node.tasks.meshops import decode_result, sign_result, sign_submit, sign_tick

SIGNERS = {f"node{i}": SoftSigner(bytes([i + 1]) * 32) for i in range(7)}


def members(*names: str) -> Membership:
    return Membership.of({n: SIGNERS[n].public_key for n in names})


def result(task_id: str, attempt: int, node: str, output: bytes = b"out", **kw) -> bytes:
    return sign_result(SIGNERS[node], task_id, attempt, node, output=output, **kw)


def submit(task_id: str, *, by: str = "node0", at: int = 0, **kw) -> bytes:
    return sign_submit(SIGNERS[by], task_id, "echo", b"in", by=by, at=at, **kw)


def tick(node: str, clock: int) -> bytes:
    return sign_tick(SIGNERS[node], node, clock)


class Log:
    """A committed log driven into a MeshTasks core: one op per sequence number."""

    def __init__(self, m: Membership, core: MeshTasks | None = None) -> None:
        self.core = core or MeshTasks()
        self.m = m
        self.seq = 0
        self.ops: list[tuple[int, bytes, Membership]] = []

    def do(self, op: bytes) -> dict:
        self.seq += 1
        self.ops.append((self.seq, op, self.m))
        return decode_result(self.core.apply_op(self.seq, op, self.m))

    def submit(self, task_id: str, **kw) -> dict:
        kw.setdefault("deadline_ticks", 3)
        kw.setdefault("by", self.m.ids[0])
        return self.do(submit(task_id, at=self.core.clock, **kw))

    def advance(self, ticks: int = 1) -> None:
        """Every member ticks until the clock moved ``ticks`` times."""
        target = self.core.clock + ticks
        while self.core.clock < target:
            for n in self.m.ids:
                if self.core.clock >= target:
                    break
                self.do(tick(n, self.core.clock))

    def request(self, op: bytes, rid: int) -> Request:
        return Request("client", rid, op)
