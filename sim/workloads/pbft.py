"""The PBFT workload: the real consensus core (:mod:`consensus`) on the simulated mesh.

Theory of operation
-------------------
Every node runs a :class:`~sim.workloads.pbft_process.PbftProcess` around a real
:class:`consensus.replica.Replica` (member ids ``n000``..; Ed25519 keys are
:class:`identity.soft.SoftSigner` s derived from the run's seed). Byzantine nodes run
the strategies of :mod:`sim.byzantine` (wrappers around a real replica or its outputs);
a Byzantine node given no strategy at all is silent.

Time. One replica tick is ``tick`` virtual seconds (default 10 ms, as a node's
``tick_s``). The default :class:`~consensus.replica.Config` is chosen for WAN-like
50 ms links (one normal-case commit needs about four one-way delays: request,
pre-prepare, prepare, commit, i.e. ~200 ms plus crypto queueing):

* ``batch_timeout = 1`` tick and ``max_inflight = 1``: the primary cuts a batch as
  soon as the previous one executed, so batches grow with load (adaptive batching) and
  an operation waits at most one batch round before its own (~2 x 200 ms). Every batch
  costs ``2 n^2`` signed votes, so fewer, larger batches keep the 100-node mesh cheap.
* ``batch_size = 256``: large enough that batching never caps throughput at the rates
  we simulate.
* ``view_timeout = 50`` ticks (0.5 s): about three batch rounds under load (one
  batch executes every ~170 ms with ``max_inflight = 1``), so a loaded honest primary is
  not deposed, while a silent or equivocating one costs ~0.5 s. It doubles only while
  views keep failing, capped at ``max_view_timeout = 800`` (8 s: far above any WAN
  delay, and a run of failed views stays well inside the 30 s seed limit).
* ``resend_interval = 40`` ticks (0.4 s): above an RTT (re-sending every 80 ms would
  double the traffic at 50 ms links) and below the view timeout, so a lost vote (with
  33 % silent nodes every honest vote is needed for a quorum) is re-sent before the
  view times out. Not lower: each re-send of the unfinished votes goes to all n - 1
  members.
* ``checkpoint_interval = 8``, ``window = 64``: view-change messages carry prepared
  certificates for every sequence number above the stable checkpoint, each with a
  quorum of signatures that every receiver verifies; frequent checkpoints keep that
  (and a view change's verification cost) small.

All of these are workload parameters (``[workload_params]`` or ``--param k=v``): ``tick``,
``batch_size``, ``batch_timeout``, ``max_inflight``, ``view_timeout``,
``max_view_timeout``, ``resend_interval``, ``checkpoint_interval``, ``window``,
``reputation`` (bool), ``target_p99`` (our goal, default 1.5 s), ``seed_limit``
(default 30 s), ``drain`` (default 3 s, see below).

Load and latency. Load operations (``[[load]]`` or ``--load``; default 20 ops/s of
256 bytes) are spread round-robin over the honest nodes; a crashed node's operation
goes to the next honest node that is up. Each honest node hosts one client
``cli-<node>`` whose request ids count up (the client lives outside the replica, so
its counter survives the node's crashes). **Commit latency** = time from submission at
the honest node until that same node has executed the operation (a decision containing
it, or a state transfer past the sequence number where it was decided). Operations
submitted more than ``drain`` seconds before the end that never executed at their node
count as unfinished (+inf); later ones are not counted at all (finished or not, so the
tail is not biased).

Invariants: :class:`~sim.invariants.Agreement` over honest decisions, and
:class:`~sim.invariants.Validity` which verifies every distinct commit certificate
object with :func:`consensus.certificate.verify` (the world's verify cache; not
charged to any node) and checks its sequence number and digest; and, when something
heals, :class:`~sim.invariants.LivenessAfterHeal`.
"""

from __future__ import annotations

import math
from typing import Any

from consensus.certificate import CertificateError
from consensus.certificate import verify as verify_certificate
from consensus.effects import Decision
from consensus.messages import batch_digest
from consensus.quorum import Membership, quorum
from consensus.replica import Config
from identity.soft import SoftSigner
from sim import byzantine
from sim.invariants import Agreement, LivenessAfterHeal, Validity
from sim.load import schedule_load
from sim.network import Partition
from sim.report import LatencyRecorder, Target
from sim.scenario import LoadSpec, RunSpec
from sim.units import parse_duration
from sim.workloads import WorkloadResults
from sim.workloads.pbft_process import DecodeCache, PbftProcess

__all__ = ["DEFAULT_CONFIG", "PbftWorkload"]

DEFAULT_CONFIG = Config(
    checkpoint_interval=8, window=64, batch_size=256, batch_timeout=1, max_inflight=1,
    view_timeout=50, max_view_timeout=800, resend_interval=40,
)
_INT_PARAMS = ("batch_size", "batch_timeout", "max_inflight", "view_timeout",
               "max_view_timeout", "resend_interval", "checkpoint_interval", "window")
DEFAULT_LOAD = LoadSpec(20.0, 0.0, None, 256)


def member_id(node: int) -> str:
    return f"n{node:03d}"


class PbftWorkload:
    """``sim run --workload pbft`` (the default). See the module doc."""

    adversaries = byzantine.STRATEGIES
    #: The honest process class (tests substitute deliberately broken ones).
    honest_cls: type[PbftProcess] = PbftProcess

    def __init__(self) -> None:
        self.config = DEFAULT_CONFIG
        self.tick_s = 0.010
        self.target_p99_s = 1.5
        self.seed_limit_s = 30.0
        self.drain_s = 3.0
        self.decoder = DecodeCache()
        self.latency = LatencyRecorder("commit_latency_s")
        self.bad_frames = 0
        self.restarts = 0
        self.ops = 0
        self.lost_ops = 0
        self.ops_at: dict[tuple[str, int], tuple[int, float]] = {}   # key -> (node, t)
        self.open_ops: dict[int, dict[tuple[str, int], float]] = {}  # node -> key -> t
        self.op_seq: dict[tuple[str, int], int] = {}
        self.rids: dict[int, int] = {}
        self.last_exec: dict[int, int] = {}
        self.exec_log: dict[int, list[tuple[float, int]]] = {}
        self.decide_log: dict[int, list[float]] = {}
        self.seq_digest: dict[int, bytes] = {}
        self._certs: dict[int, tuple[Any, bool]] = {}
        self.cert_checks = 0
        self.adversary: byzantine.Coordinator | None = None
        self._spec: RunSpec | None = None
        self._world: Any = None

    # -- setup ------------------------------------------------------------------------
    def _params(self, spec: RunSpec) -> None:
        params = dict(spec.workload_params)
        cfg: dict[str, Any] = {}
        try:
            for name in _INT_PARAMS:
                if name in params:
                    cfg[name] = int(params.pop(name))
            if "reputation" in params:
                rep = params.pop("reputation")
                cfg["reputation"] = rep if isinstance(rep, bool) else str(rep) == "true"
            self.tick_s = parse_duration(params.pop("tick", "10ms"))
            self.target_p99_s = parse_duration(params.pop("target_p99", "1.5s"))
            self.seed_limit_s = parse_duration(params.pop("seed_limit", "30s"))
            self.drain_s = parse_duration(params.pop("drain", "3s"))
            self.config = Config(**{**_config_dict(DEFAULT_CONFIG), **cfg})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pbft: bad workload params: {exc}") from None
        if params:
            raise ValueError(f"pbft: unknown workload params {sorted(params)} (known: "
                             f"{', '.join((*_INT_PARAMS, 'reputation', 'tick', 'target_p99'))}"
                             ", seed_limit, drain)")
        if self.tick_s <= 0:
            raise ValueError("pbft: tick must be positive")

    def setup(self, world: Any, spec: RunSpec) -> None:
        """See :class:`sim.workloads.Workload`."""
        self._spec, self._world = spec, world
        self._params(spec)
        n = spec.nodes
        key_rng = world.engine.child_rng("pbft-keys")
        self.signers = [SoftSigner(key_rng.randbytes(32)) for _ in range(n)]
        self.ids = [member_id(i) for i in range(n)]
        self.index = {m: i for i, m in enumerate(self.ids)}
        self.members = {m: s.public_key for m, s in zip(self.ids, self.signers, strict=True)}
        self.membership = Membership.of(self.members)  # for the validity checker
        self.adversary = byzantine.Coordinator(self, spec)
        for node in range(n):
            world.attach(node, self._make(node), factory=self._make)
        honest = spec.honest
        world.invariants.register(Agreement(honest), world)
        world.invariants.register(Validity(honest, self._valid), world)
        heal = spec.timeline.last_heal_s()
        within = max(10.0, 4 * self.config.view_timeout * self.tick_s)
        if heal is not None and heal + within < spec.duration_s:
            world.invariants.register(LivenessAfterHeal(honest, heal, within), world)
        self._schedule_load(world, spec)

    def _make(self, node: int) -> Any:
        assert self.adversary is not None
        return self.adversary.process_for(node) or self.honest_cls(node, self)

    def _schedule_load(self, world: Any, spec: RunSpec) -> None:
        honest = sorted(spec.honest)
        if not honest:
            return
        load = spec.timeline.load or (DEFAULT_LOAD,)
        payload_rng = world.engine.child_rng("pbft-load")

        def op(index: int, size: int) -> None:
            for k in range(len(honest)):
                node = honest[(index + k) % len(honest)]
                if world.is_up(node):
                    break
            else:
                self.lost_ops += 1
                return
            rid = self.rids.get(node, 0) + 1
            self.rids[node] = rid
            body = payload_rng.randbytes(size)
            world.inject(node, _submit, node, body, f"cli-{node}", rid)

        def _submit(ctx: Any, node: int, body: bytes, client: str, rid: int) -> None:
            world.hosts[node].process.submit(ctx, body, client, rid)

        schedule_load(world.engine, load, spec.duration_s, op)

    # -- bookkeeping called by the processes --------------------------------------------
    def submitted(self, node: int, now: float, client: str, rid: int) -> None:
        key = (client, rid)
        if key in self.ops_at:
            return
        self.ops += 1
        self.ops_at[key] = (node, now)
        self.open_ops.setdefault(node, {})[key] = now

    def decided(self, node: int, now: float, d: Decision) -> None:
        if node not in self._spec.honest:  # type: ignore[union-attr]
            return
        self.decide_log.setdefault(node, []).append(now)
        mine = self.open_ops.get(node)
        for r in d.batch.requests:
            key = (r.client, r.rid)
            self.op_seq.setdefault(key, d.seq)
            if mine and key in mine:
                self.latency.add(now - mine.pop(key))

    def executed(self, node: int, now: float, last: int) -> None:
        if node not in self._spec.honest:  # type: ignore[union-attr]
            return
        prev = self.last_exec.get(node, 0)
        if last <= prev:
            return
        self.last_exec[node] = last
        self.exec_log.setdefault(node, []).append((now, last))
        mine = self.open_ops.get(node)
        if mine:  # executed by state transfer (no decision emitted here)
            for key in [k for k in mine if self.op_seq.get(k, math.inf) <= last]:
                self.latency.add(now - mine.pop(key))

    def _valid(self, node: int, seq: int, digest: bytes, cert: Any) -> bool:
        hit = self._certs.get(id(cert))
        if hit is not None and hit[0] is cert:
            ok = hit[1]
        else:
            self.cert_checks += 1
            try:
                batch = verify_certificate(cert, self.membership,
                                           verify_fn=self._world.verify_cache.verify)
                ok = cert.seq == seq and batch_digest(batch) == digest
            except CertificateError:
                ok = False
            self._certs[id(cert)] = (cert, ok)
        return ok

    # -- results ----------------------------------------------------------------------
    def results(self) -> WorkloadResults:
        spec, world = self._spec, self._world
        assert spec is not None, "setup() was not called"
        deadline = spec.duration_s - self.drain_s
        unfinished = sum(1 for ops in self.open_ops.values() for t in ops.values()
                         if t <= deadline)
        self.latency.unfinished = unfinished
        up_honest = [n for n in sorted(spec.honest) if world.is_up(n)]
        everywhere = min((self.last_exec.get(n, 0) for n in up_honest), default=0)
        n, byz = spec.nodes, len(spec.byzantine)
        name = f"consensus commit latency, {n} nodes, {100 * byz // n}% Byzantine"
        targets = [
            Target(name + " (seed limit)", self.seed_limit_s, self.latency,
                   note="submission -> executed at the submitting honest node"),
            Target(name + " (our goal)", self.target_p99_s, self.latency,
                   note=f"network {world.network.config.describe()}"),
        ]
        targets += self._partition_targets(spec)
        extra = self._extra(spec, world, unfinished)
        return WorkloadResults(decisions=everywhere, latencies={"commit_latency_s": self.latency},
                               targets=targets, extra=extra)

    def _partition_targets(self, spec: RunSpec) -> list[Target]:
        out = []
        parts = [p for p in spec.timeline.partitions if isinstance(p, Partition)]
        for i, p in enumerate(parts):
            end = spec.duration_s if p.end_s is None else min(p.end_s, spec.duration_s)
            listed = frozenset().union(*p.groups)
            groups = [*p.groups, frozenset(range(spec.nodes)) - listed]
            major = max(groups, key=lambda g: (len(g), -min(g, default=0)))
            stall = self._longest_stall(major & spec.honest, p.start_s, end)
            out.append(Target(f"partition {i}: majority keeps committing (longest stall)",
                              5.0, measured_s=stall,
                              note=f"{len(major)} nodes, {len(major & spec.honest)} honest"))
            if p.end_s is not None and p.end_s < spec.duration_s:
                conv = self._converged_after(p.end_s, spec)
                out.append(Target(f"partition {i}: all honest converge after heal", 10.0,
                                  measured_s=conv, note="time from heal until every honest "
                                  "node that is up executed what anyone had at the heal"))
        return out

    def _longest_stall(self, nodes: frozenset[int], start: float, end: float) -> float:
        times = sorted(t for n in nodes for t, _ in self.exec_log.get(n, ()) if start <= t <= end)
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:], strict=False))

    def _converged_after(self, heal: float, spec: RunSpec) -> float:
        world = self._world
        goal = max((s for n in spec.honest for t, s in self.exec_log.get(n, ()) if t <= heal),
                   default=0)
        worst = 0.0
        for n in sorted(spec.honest):
            if not world.is_up(n):
                continue
            first = next((t for t, s in self.exec_log.get(n, ()) if s >= goal), None)
            if first is None:
                return math.inf
            worst = max(worst, first - heal)
        return worst

    def _extra(self, spec: RunSpec, world: Any, unfinished: int) -> dict[str, object]:
        views, drops = [], {}
        for n in sorted(spec.honest):
            proc = world.hosts[n].process
            rep = getattr(proc, "replica", None)
            if rep is None:
                continue
            views.append(rep.view)
            for per in rep.drops.values():
                for reason, count in per.items():
                    drops[reason] = drops.get(reason, 0) + count
        return {
            "operations": self.ops, "operations_unfinished": unfinished,
            "operations_not_submitted": self.lost_ops,
            "max_executed": max(self.last_exec.values(), default=0),
            "honest_views": {"min": min(views, default=0), "max": max(views, default=0)},
            "honest_drops": dict(sorted(drops.items())),
            "bad_frames": self.bad_frames, "restarts": self.restarts,
            "certificates_checked": self.cert_checks,
            "quorum": quorum(spec.nodes), "tick_s": self.tick_s,
            "replica_config": _config_dict(self.config),
            "adversaries": self.adversary.describe() if self.adversary else {},
        }


def _config_dict(cfg: Config) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in cfg.__slots__}
