"""The task workload: mesh task coordination (:mod:`node.tasks.mesh`) replicated by the
real PBFT core on the simulated mesh.

Theory of operation
-------------------
This is the PBFT workload (:mod:`sim.workloads.pbft`: same replica wiring, persistence,
crash/restart, checkers, Byzantine strategies) with every honest replica's application
being the real :class:`node.tasks.meshapp.MeshTaskApp` (built through
:func:`node.tasks.meshapp.bound_replica`, as the node does, so a restart re-executes
its decided log into a fresh app), and a small *task shell* per honest node doing what
a node's task service does:

* **submit**: task ``i`` (``tasks`` of them, default 1,000, one every ``submit_over /
  tasks`` seconds from ``submit_from``; or one per ``[[load]]`` operation when the run
  has a load) is submitted at an honest node that is up (round robin): a
  ``task.submit`` signed by that member (real Ed25519, HSM cost charged) with the mesh
  clock it sees, proposed to its replica;
* **tick**: every ``mesh_tick`` seconds (default 1 s) a node proposes a signed
  ``task.tick`` for the current mesh clock if it has not ticked for that value yet;
* **execute**: after each executed batch the shell looks at the tasks the replicated
  state assigns to it (``MeshTasks.assigned_to``); ``work`` seconds later (default 50 ms,
  a timer) it signs ``task.result`` (output = sha256(input)) and proposes it, if the
  task is still assigned to it for that attempt.

Operations are batched by the PBFT core (``batch_size`` 256 requests per batch by
default, adaptive: the primary cuts the next batch when the previous one executed), so
ticks, submissions and results of many tasks share one consensus instance. Every
signature in an operation is verified by every replica executing it through
``ctx.verify`` (real, cached, charged per node).

Byzantine members (silent by default; any :mod:`sim.byzantine` strategy) are members:
the mesh assigns them tasks while they look live, and an attempt they never answer is
reassigned after its deadline (``deadline_ticks``, default 10). Crashed honest members
lose their attempts the same way; a restarted one resumes the tasks still assigned
to it.

Checks and measurements (honest nodes that are up at the end; the reference is the one
that executed most):

* **exactly one accepted result**: every task whose submission committed has an
  accepted result at the reference node, and every honest node that holds an accepted
  result for it holds the same one (node, attempt, output, sequence number); an honest
  executor's accepted output is sha256 of the input. The target's measured value is
  the number of tasks violating this (limit 0); open tasks (submitted within
  ``drain`` of the end) are reported separately, expired tasks count as violations.
* ``task_assign_to_result_s``: from the task's first assignment (its submission
  executed at the first honest node) to its accepted result executed at the first
  honest node; ``task_submit_to_result_s`` from submission at the submitting node.
  ``commit_latency_s`` is the PBFT workload's (every task operation).

Params: the PBFT workload's (``drain`` defaults to 15 s here), plus ``tasks``,
``submit_from`` (2s), ``submit_over`` (50s), ``mesh_tick`` (1s), ``work`` (50ms),
``deadline_ticks`` (10), ``max_attempts`` (5), ``task_target`` (p99 goal of
assignment -> result, 10s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Hashable
from typing import Any

from consensus.persist import restore
from node.tasks.mesh import ASSIGNED, MeshConfig, MeshTasks
from node.tasks.meshapp import MeshTaskApp, bound_replica
from node.tasks.meshops import decode_result, op_tag, sign_result, sign_submit, sign_tick
from sim.load import schedule_load
from sim.process import Context
from sim.report import LatencyRecorder, Target
from sim.scenario import RunSpec
from sim.units import parse_duration
from sim.workloads import WorkloadResults
from sim.workloads.pbft import PbftWorkload
from sim.workloads.pbft_process import PbftProcess

__all__ = ["TaskProcess", "TasksWorkload"]


class _Charged:
    """Signer whose signatures go through ``ctx.sign`` (real Ed25519, HSM cost)."""

    def __init__(self, ctx: Context, signer: Any) -> None:
        self.ctx, self.signer, self.public_key = ctx, signer, signer.public_key

    def sign(self, data: bytes) -> bytes:
        return self.ctx.sign(self.signer, data)


class _ObservedApp(MeshTaskApp):
    """MeshTaskApp that tells its process what executed (assignments, acceptances)."""

    def __init__(self, proc: TaskProcess, **kw: Any) -> None:
        super().__init__(lambda: None, **kw)  # rebound to the replica's members
        self.proc = proc

    def apply(self, seq: int, requests: Any) -> list[bytes]:
        out = super().apply(seq, requests)
        self.proc.applied(requests, out)
        return out


class TaskProcess(PbftProcess):
    """An honest replica running MeshTaskApp plus the node's task shell."""

    def __init__(self, node: int, wl: Any) -> None:
        super().__init__(node, wl)
        self.app: _ObservedApp | None = None
        self.working: set[tuple[str, int]] = set()  # (task, attempt) started here
        self.ticked_clock = -1
        self.scan = False

    @property
    def core(self) -> MeshTasks:
        assert self.app is not None
        return self.app.core

    def new_replica(self, records: list[Any] | None = None) -> Any:
        self.app = _ObservedApp(self, verify=self._verify, config=self.wl.mesh_config)
        kw = {"config": self.wl.config, "verify": self._verify, "app": self.app}
        make = bound_replica()
        if records is None:
            return make(self.me, self.wl.members, **kw)
        return restore(self.me, self.wl.members, records, replica_cls=make, **kw)

    def _started(self, ctx: Context) -> None:
        self.scan = True
        ctx.set_timer(self.wl.mesh_tick_s * (1 + self.node / max(1, self.wl.n)), "mesh-tick")
        super()._started(ctx)

    def on_crash(self) -> None:
        super().on_crash()
        self.working.clear()

    # -- the task shell ---------------------------------------------------------------
    def applied(self, requests: Any, out: list[bytes]) -> None:
        self.scan = True
        ctx = self.ctx
        if ctx is None:
            return
        for req, res in zip(requests, out, strict=True):
            tag = op_tag(req.op)
            if tag not in ("task.submit", "task.result"):
                continue
            try:
                result = decode_result(res)
            except ValueError:
                continue
            if not result.get("ok"):
                continue
            if tag == "task.submit":
                self.wl.task_assigned(self.node, result["task"], ctx.now)
            elif result.get("accepted"):
                self.wl.task_accepted(self.node, result["task"], ctx.now)

    def drain(self, ctx: Context, replica: Any = None) -> None:
        super().drain(ctx, replica)
        if self.scan and self.app is not None and (replica is None or replica is self.replica):
            self.scan = False
            for t in self.core.assigned_to(self.me):
                key = (t["id"], t["attempt"])
                if key not in self.working:
                    self.working.add(key)
                    ctx.set_timer(self.wl.work_s, ("work", *key))

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if timer_id == "mesh-tick":
            self.ctx = ctx
            if self.replica is not None:
                clock = self.core.clock
                if clock != self.ticked_clock:
                    self.ticked_clock = clock
                    self._propose(ctx, sign_tick(_Charged(ctx, self.signer), self.me, clock))
            ctx.set_timer(self.wl.mesh_tick_s, "mesh-tick")
        elif isinstance(timer_id, tuple) and timer_id[0] == "work":
            self.ctx = ctx
            self._finish_work(ctx, timer_id[1], timer_id[2])
        else:
            super().on_timer(ctx, timer_id)

    def _finish_work(self, ctx: Context, task_id: str, attempt: int) -> None:
        # (task, attempt) stays in ``working``: the result is proposed once (the replica
        # persists and re-sends it until it executes, across restarts too)
        if self.replica is None:
            return
        st = self.core.status(task_id)
        if st is None or st["state"] != ASSIGNED or st["attempt"] != attempt \
                or st["assignee"] != self.me:
            return
        t = self.core.tasks[task_id]
        output = hashlib.sha256(t.input).digest()
        op = sign_result(_Charged(ctx, self.signer), task_id, attempt, self.me, output=output)
        self.wl.results_sent += 1
        self._propose(ctx, op)

    def submit_task(self, ctx: Context, index: int, body: bytes) -> None:
        """Submit task ``index`` here (an ``inject`` work item)."""
        self.ctx = ctx
        clock = self.core.clock if self.app is not None else 0
        op = sign_submit(_Charged(ctx, self.signer), f"task-{index:05d}", "sha256", body,
                         by=self.me, at=clock, deadline_ticks=self.wl.deadline_ticks,
                         max_attempts=self.wl.max_attempts)
        self.wl.task_submitted(f"task-{index:05d}", body, ctx.now)
        self._propose(ctx, op)

    def _propose(self, ctx: Context, op: bytes) -> None:
        rid = self.wl.shell_rids.get(self.node, 0) + 1
        self.wl.shell_rids[self.node] = rid
        self.submit(ctx, op, f"shell-{self.node}", rid)


class TasksWorkload(PbftWorkload):
    """``sim run --workload tasks``. See the module doc."""

    honest_cls = TaskProcess

    def __init__(self) -> None:
        super().__init__()
        self.assign_latency = LatencyRecorder("task_assign_to_result_s")
        self.submit_latency = LatencyRecorder("task_submit_to_result_s")
        self.shell_rids: dict[int, int] = {}
        self.tasks_input: dict[str, bytes] = {}
        self.submitted_at: dict[str, float] = {}
        self.assigned_at: dict[str, float] = {}
        self.accepted_at: dict[str, float] = {}
        self.results_sent = 0
        self.not_submitted = 0

    def _params(self, spec: RunSpec) -> None:
        p = dict(spec.workload_params)
        try:
            self.n_tasks = int(p.pop("tasks", 1000))
            self.submit_from = parse_duration(p.pop("submit_from", "2s"))
            self.submit_over = parse_duration(p.pop("submit_over", "50s"))
            self.mesh_tick_s = parse_duration(p.pop("mesh_tick", "1s"))
            self.work_s = parse_duration(p.pop("work", "50ms"))
            self.deadline_ticks = int(p.pop("deadline_ticks", 10))
            self.max_attempts = int(p.pop("max_attempts", 5))
            self.task_target_s = parse_duration(p.pop("task_target", "10s"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tasks: bad workload params: {exc}") from None
        if self.mesh_tick_s <= 0 or self.submit_over <= 0:
            raise ValueError("tasks: mesh_tick and submit_over must be positive")
        # an attempt given to a silent member needs its deadline (10 ticks ~ 10 s) to
        # move on: tasks submitted within ``drain`` of the end may still be open
        p.setdefault("drain", "15s")
        self.mesh_config = MeshConfig()
        super()._params(dataclasses.replace(spec, workload_params=p))

    def setup(self, world: Any, spec: RunSpec) -> None:
        self.n = spec.nodes
        super().setup(world, spec)

    def _schedule_load(self, world: Any, spec: RunSpec) -> None:
        honest = sorted(spec.honest)
        if not honest:
            return
        rng = world.engine.child_rng("task-inputs")

        def submit(index: int, size: int = 64) -> None:
            for k in range(len(honest)):
                node = honest[(index + k) % len(honest)]
                if world.is_up(node):
                    body = rng.randbytes(size)
                    world.inject(node, lambda ctx, n=node, b=body: world.hosts[n].process
                                 .submit_task(ctx, index, b))
                    return
            self.not_submitted += 1

        if spec.timeline.load:
            schedule_load(world.engine, spec.timeline.load, spec.duration_s, submit)
            return
        for i in range(self.n_tasks):
            at = self.submit_from + self.submit_over * i / max(1, self.n_tasks)
            world.engine.schedule_at(at, submit, i)

    # -- bookkeeping --------------------------------------------------------------------
    def task_submitted(self, task_id: str, body: bytes, now: float) -> None:
        self.tasks_input[task_id] = body
        self.submitted_at.setdefault(task_id, now)

    def task_assigned(self, node: int, task_id: str, now: float) -> None:
        if node in self._spec.honest and task_id not in self.assigned_at:  # type: ignore[union-attr]
            self.assigned_at[task_id] = now

    def task_accepted(self, node: int, task_id: str, now: float) -> None:
        if node in self._spec.honest and task_id not in self.accepted_at:  # type: ignore[union-attr]
            self.accepted_at[task_id] = now
            if task_id in self.assigned_at:
                self.assign_latency.add(now - self.assigned_at[task_id])
            if task_id in self.submitted_at:
                self.submit_latency.add(now - self.submitted_at[task_id])

    # -- results ------------------------------------------------------------------------
    def check_tasks(self) -> dict[str, Any]:
        """The exactly-one-accepted-result check over honest nodes that are up."""
        spec, world = self._spec, self._world
        assert spec is not None
        cores = {}
        for n in sorted(spec.honest):
            proc = world.hosts[n].process
            if world.is_up(n) and isinstance(proc, TaskProcess) and proc.app is not None \
                    and proc.replica is not None:
                cores[n] = (proc.replica.last_executed, proc.core)
        if not cores:
            return {"violations": math.inf, "reference": None}
        ref = max(cores, key=lambda n: (cores[n][0], -n))
        ref_core = cores[ref][1]
        committed = sorted(ref_core.tasks)
        deadline = spec.duration_s - self.drain_s
        violations: list[str] = []
        open_late, disagreements, wrong_output, expired = 0, 0, 0, 0
        for tid in committed:
            st = ref_core.status(tid)
            acc = st["accepted"] if st else None
            if acc is None:
                if st and st["state"] == ASSIGNED and self.submitted_at.get(tid, 0) > deadline:
                    open_late += 1
                    continue
                expired += st is not None and st["state"] != ASSIGNED
                violations.append(tid)
                continue
            key = (acc["node"], acc["attempt"], acc["output"], acc["seq"])
            for _, core in cores.values():
                other = core.status(tid)
                oacc = other["accepted"] if other else None
                if oacc is not None and (oacc["node"], oacc["attempt"], oacc["output"],
                                         oacc["seq"]) != key:
                    disagreements += 1
                    violations.append(tid)
                    break
            honest_exec = self.index.get(acc["node"]) in spec.honest
            if honest_exec and acc["output"] != hashlib.sha256(self.tasks_input.get(
                    tid, b"")).digest():
                wrong_output += 1
                violations.append(tid)
        submitted_not_committed = sum(1 for tid, t in self.submitted_at.items()
                                      if tid not in ref_core.tasks and t <= deadline)
        states: dict[str, int] = {}
        for tid in committed:
            s = ref_core.tasks[tid].state
            states[s] = states.get(s, 0) + 1
        byz_exec = sum(1 for tid in committed if ref_core.tasks[tid].accepted and
                       self.index.get(ref_core.tasks[tid].accepted["node"]) in spec.byzantine)
        return {
            "violations": len(set(violations)) + submitted_not_committed,
            "violating_tasks": sorted(set(violations))[:20],
            "reference_node": ref, "honest_nodes_checked": len(cores),
            "tasks_committed": len(committed), "tasks_submitted": len(self.submitted_at),
            "submitted_not_committed": submitted_not_committed,
            "open_at_end_submitted_in_drain": open_late, "expired": int(expired),
            "disagreements": disagreements, "wrong_outputs": wrong_output,
            "states": dict(sorted(states.items())), "accepted_from_byzantine": byz_exec,
            "reassigned": sum(1 for tid in committed if ref_core.tasks[tid].attempt > 1),
            "mesh_clock": ref_core.clock,
        }

    def results(self) -> WorkloadResults:
        base = super().results()
        spec = self._spec
        assert spec is not None
        check = self.check_tasks()
        deadline = spec.duration_s - self.drain_s
        self.assign_latency.unfinished = sum(
            1 for tid, t in self.assigned_at.items()
            if tid not in self.accepted_at and self.submitted_at.get(tid, t) <= deadline)
        n = spec.nodes
        targets = [
            Target(f"task coordination, {n} nodes: tasks without exactly one accepted "
                   "result", 0.0, measured_s=float(check["violations"]),
                   note="count of tasks (not seconds); limit 0"),
            Target(f"task coordination, {n} nodes: assignment -> accepted result",
                   self.task_target_s, self.assign_latency,
                   note="first assignment -> accepted result executed at the first honest node"),
            *[t for t in base.targets if t.name.startswith("partition")],
        ]
        latencies = dict(base.latencies)
        latencies["task_assign_to_result_s"] = self.assign_latency
        latencies["task_submit_to_result_s"] = self.submit_latency
        extra = dict(base.extra)
        extra["tasks"] = check
        extra["task_results_proposed"] = self.results_sent
        extra["tasks_not_submitted"] = self.not_submitted
        extra["task_params"] = {"mesh_tick_s": self.mesh_tick_s, "work_s": self.work_s,
                                "deadline_ticks": self.deadline_ticks,
                                "max_attempts": self.max_attempts}
        return WorkloadResults(decisions=base.decisions, latencies=latencies,
                               targets=targets, extra=extra)
