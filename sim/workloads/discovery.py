"""The discovery workload: the real Kademlia core (:class:`node.dht.core.DhtNode`) on the
simulated mesh.

Theory of operation
-------------------
Every node runs a :class:`DhtProcess` around a real ``DhtNode`` (PeerId = the libp2p
PeerId of an Ed25519 key derived from the run's seed; validator = the node's DHT
validator, :func:`validator`). Nodes join at staggered times (node order shuffled with
the seed, spread over ``join_over``) through ``bootstraps`` bootstrap peers (the first
honest nodes to join; they join at t = 0 and bootstrap from each other), exactly as a
node does: ``DhtNode.bootstrap`` (a self-lookup, then the join refresh), re-bootstrapped after
``retry`` while the result is empty.

Wire: a kad-dht request/response pair travels on one libp2p stream in a real node. Here
each payload is a one-byte kind (request, response) + an 8-byte stream id + the real
protobuf bytes of :func:`node.dht.wire.encode_message`; the receiver decodes with
:func:`node.dht.wire.decode_message` (a :class:`~node.dht.wire.WireError` fails the
request, as a stream reset would). A request the handler refuses, or an answer that does
not decode, fails at once; a request to a peer that is down, silent, unknown (a
fabricated PeerId at a black-hole address) or cut off times out in the core
(``request_timeout``; its lookup stops waiting for it after the core's RTT-based stall
timeout); a request to a PeerId with no known address fails at once (a libp2p dial with
no address). Every node listens on ``/ip4/10.x.y.z/tcp/4001``. The sender of an inbound
request is the transport-authenticated peer (Noise), so the responder records the true
PeerId.

Time: like :class:`node.dht.service.DhtService`, a process ticks its core when
``DhtNode.next_wakeup`` is due and at least every ``tick``; the core runs with the real
node's :class:`~node.dht.config.DhtConfig` defaults unless a param overrides a field.

CPU: kad-dht messages carry no signatures (the transport authenticates), so each message
costs the world's handling + per-byte codec costs (charged by the host) and encoding
(charged by ``ctx.send``); nothing else is charged.

Byzantine nodes join like everyone (so they land in routing tables) and then misbehave
(``--adversary NAME`` or the ``byzantine`` param, default ``mix``: round robin over the
three): ``dht-silent`` never answers; ``dht-garbage`` answers with random bytes;
``dht-lie`` answers every FIND_NODE/GET_VALUE with Byzantine peers and fabricated PeerIds
at black-hole addresses (an eclipse attempt). Findings that shaped the core: waiting
for silent or fabricated peers until ``request_timeout`` made every lookup slow (now a
request stalls after about two RTTs and the lookup moves on, and a peer that failed
twice in a row is locked out for a backoff); and liars close to a node crowd its honest
neighbours out of a single-path self-lookup, so a few nodes never met all k closest
honest peers until someone else's lookup passed by (now lookups take two disjoint
paths, the join self-lookup four). Under message loss (``--loss``) a lookup whose
request or answer to a peer was lost used to end without that peer (4 % of lookups
missed their target at 2 % loss, 200 nodes): now a stalled peer is asked once more
(``DhtConfig.lookup_retries``; ``lookup_retries=0`` restores the old behaviour for
comparison). Generic ``silent``/``delay``/``replay``/``garbage`` also apply.

Measurements:

* ``discovery_latency_s``, one sample per honest node: the time from the moment it and
  all of its ``k`` true closest honest peers (XOR distance among all honest nodes of the
  run) had joined, until its routing table first held all of them (:func:`holds_closest`:
  a peer waiting in the replacement cache of a full bucket counts as held; the report's
  ``honest_holding_all_k_in_buckets_at_end`` gives the strict count). A node that never
  converges counts as unfinished (+inf).
* ``discovery_lookup_latency_s``: after ``lookups_from`` (default: the last join + 5 s),
  ``lookups`` FIND_NODE lookups (default 200) spread until ``lookups_until`` (default
  max(10 s, one request timeout) before the end, or halfway through what is left of a
  short run), each
  from a random honest node that is up for a random other honest node's PeerId;
  success = the target is among the peers the lookup returns. Failed and unfinished
  lookups count as +inf. The report's ``lookups`` also gives the requests each
  finished lookup sent (``messages_per_lookup``: mean, p50, p99, max; from
  :class:`~node.dht.lookup.LookupStats`) and the stalls among them.

Params (``[workload_params]`` / ``--param``): ``join_over`` (10s), ``bootstraps`` (3),
``tick`` (1s, the longest sleep, as ``DhtService.tick_interval``), ``retry`` (1s),
``lookups`` (200), ``lookups_from``, ``lookups_until``, ``byzantine``
(mix|silent|garbage|lie), ``target`` (our goal, 5s), ``seed_limit`` (30s), and any
:class:`~node.dht.config.DhtConfig` field (default: the node's), e.g.
``request_timeout=500ms``, ``disjoint_paths=1``, ``refresh_on_join=false``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from typing import Any

from identity.did import peer_id_bytes_from_public_key
from identity.soft import SoftSigner
from node.dht.core import DhtConfig, DhtNode
from node.dht.identity_validator import IdentityBundleValidator
from node.dht.keys import kad_key, key_to_int
from node.dht.messages import Message, MessageType, PeerInfo
from node.dht.record_store import IDENTITY_NAMESPACE, NamespacedValidator, PublicKeyValidator
from node.dht.wire import WireError, decode_message, encode_message
from sim.process import BaseProcess, Context
from sim.report import LatencyRecorder, Target
from sim.scenario import RunSpec
from sim.units import parse_duration
from sim.workloads import WorkloadResults

__all__ = ["DhtProcess", "DiscoveryWorkload", "validator"]

_REQ, _RESP = 0, 1
STRATEGIES = ("dht-silent", "dht-garbage", "dht-lie")
_BYZ_PARAM = {"silent": "dht-silent", "garbage": "dht-garbage", "lie": "dht-lie"}


def validator() -> NamespacedValidator:
    """The validator a meshnode DHT serves with: the same namespaces and validators as
    :func:`node.discovery.dht_validator` (built here from the pure parts, so the
    simulator does not import the trio shell)."""
    return NamespacedValidator({IDENTITY_NAMESPACE: IdentityBundleValidator(),
                                "pk": PublicKeyValidator()})


def holds_closest(dht: DhtNode, peers: list[bytes]) -> bool:
    """True when the routing table holds every PeerId of ``peers``, where a peer in the
    replacement cache of a *full* bucket counts as held: the table knows it, and
    Kademlia keeps the bucket's live older contacts in preference to it (paper 2.2), so
    no table could hold it until one of them fails."""
    table = dht.table
    for pid in peers:
        if pid in table:
            continue
        index = table.bucket_index(kad_key(pid))
        if len(table.bucket(index)) < table.k or all(
                c.peer_id != pid for c in table.replacements(index)):
            return False
    return True


def _dht_config(params: dict[str, Any]) -> DhtConfig:
    """``DhtConfig()`` -- the real node's defaults -- with the fields named in
    ``params`` (popped) overridden: times as durations ("500ms"), counts as ints,
    flags as true/false. Raises ValueError for a bad value."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(DhtConfig):
        if f.name not in params:
            continue
        raw = params.pop(f.name)
        default = getattr(DhtConfig(), f.name)
        if isinstance(default, bool):
            changes[f.name] = str(raw).lower() == "true"
        elif isinstance(default, int):
            changes[f.name] = int(raw)
        else:
            changes[f.name] = parse_duration(raw)
    return DhtConfig(**changes)


def _multiaddr(i: int) -> bytes:
    """Binary ``/ip4/10.a.b.c/tcp/4001`` for node (or fabricated peer) ``i``."""
    return b"\x04" + bytes((10, (i >> 16) & 255, (i >> 8) & 255, i & 255)) + b"\x06\x0f\xa1"


def _frame(kind: int, stream: int, msg: Message) -> bytes:
    return bytes((kind,)) + stream.to_bytes(8, "big") + encode_message(msg)


def _summary(values: list[int]) -> dict[str, float] | None:
    """Mean, p50, p99 (nearest rank) and max of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"mean": sum(ordered) / len(ordered), "p50": rank(0.5), "p99": rank(0.99),
            "max": ordered[-1]}


class DhtProcess(BaseProcess):
    """One node: a real DhtNode, its streams and its Byzantine strategy (None: honest)."""

    def __init__(self, node: int, wl: DiscoveryWorkload, strategy: str | None = None) -> None:
        self.node_id = node
        self.wl = wl
        self.strategy = strategy
        self.dht: DhtNode | None = None
        self.streams: dict[int, int] = {}  # core request id -> destination node
        self.boot_qid: int | None = None
        self.lookups: dict[int, tuple[float, bytes]] = {}  # qid -> (start, target peer id)
        self.wake_at = math.inf  # when the "tick" timer is set for

    # -- lifecycle ----------------------------------------------------------------------
    def on_start(self, ctx: Context) -> None:
        ctx.set_timer(max(0.0, self.wl.join_at[self.node_id] - ctx.now), "join")

    def on_restart(self, ctx: Context) -> None:
        self.wl.restarts += 1
        self._join(ctx)  # no persisted routing table: a restarted node rejoins

    def on_crash(self) -> None:
        self.dht, self.streams, self.lookups, self.boot_qid = None, {}, {}, None
        self.wake_at = math.inf

    def _join(self, ctx: Context) -> None:
        wl = self.wl
        self.dht = DhtNode(wl.infos[self.node_id], validator=wl.validator, rng=ctx.rng,
                           now=ctx.now, config=wl.config)
        self.wake_at = math.inf
        self._bootstrap(ctx)

    def _bootstrap(self, ctx: Context) -> None:
        assert self.dht is not None
        seeds = [self.wl.infos[b] for b in self.wl.boot_nodes if b != self.node_id]
        self.boot_qid = self.dht.bootstrap(seeds, now=ctx.now)
        self._drain(ctx)

    # -- inputs -------------------------------------------------------------------------
    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if timer_id == "join":
            self._join(ctx)
        elif self.dht is None:
            return
        elif timer_id == "tick":
            self.wake_at = math.inf
            self.dht.tick(ctx.now)
            self._drain(ctx)
        elif timer_id == "rebootstrap":
            self._bootstrap(ctx)

    def lookup(self, ctx: Context, target: bytes) -> bool:
        """Start a FIND_NODE lookup for ``target`` (an ``inject`` work item)."""
        if self.dht is None:
            return False
        qid = self.dht.find_node(target, now=ctx.now)
        self.lookups[qid] = (ctx.now, target)
        self._drain(ctx)
        return True

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        if self.dht is None or len(payload) < 9 or payload[0] not in (_REQ, _RESP):
            self.wl.bad_frames += 1
            return
        stream = int.from_bytes(payload[1:9], "big")
        if payload[0] == _RESP:
            self._on_response(ctx, sender, stream, payload[9:])
            return
        if self.strategy is not None and self.strategy != "dht-lie":
            if self.strategy == "dht-garbage":
                ctx.send(sender, bytes((_RESP,)) + payload[1:9] + ctx.rng.randbytes(40))
            return  # dht-silent
        try:
            msg = decode_message(payload[9:])
        except WireError:
            self.wl.bad_frames += 1
            return  # stream reset: the requester's core times it out
        handled = self.dht.on_request(self.wl.infos[sender], msg, now=ctx.now)
        response = handled.response
        if response is not None and self.strategy == "dht-lie":
            response = self._lie(ctx, response)
        if response is not None:
            ctx.send(sender, _frame(_RESP, stream, response))
        self._drain(ctx)

    def _on_response(self, ctx: Context, sender: int, stream: int, body: bytes) -> None:
        assert self.dht is not None
        if self.streams.get(stream) != sender:
            return  # not a stream we opened to that peer (late, or spoofed)
        del self.streams[stream]
        try:
            msg = decode_message(body)
        except WireError:
            self.wl.bad_frames += 1
            self.dht.on_failure(stream, now=ctx.now, reason="malformed")
        else:
            self.dht.on_response(stream, msg, now=ctx.now)
        self._drain(ctx)

    def _lie(self, ctx: Context, response: Message) -> Message:
        if response.type not in (MessageType.FIND_NODE, MessageType.GET_VALUE):
            return response
        wl = self.wl
        # the other Byzantine nodes (only the first 20 can be listed), then fakes
        others = len(wl.byzantine_order) - (self.node_id in wl.byzantine)
        byz = [wl.infos[b] for b in wl.byzantine_order[:21] if b != self.node_id][:20]
        fake = [PeerInfo(b"\x00\x24\x08\x01\x12\x20" + ctx.rng.randbytes(32),
                         (_multiaddr(wl.n + ctx.rng.randrange(1 << 20)),))
                for _ in range(max(0, wl.config.k - others))]
        return Message(response.type, key=response.key, closer_peers=tuple(byz + fake)[:20])

    # -- effects ------------------------------------------------------------------------
    def _drain(self, ctx: Context) -> None:
        dht, wl = self.dht, self.wl
        assert dht is not None
        while dht.has_ready():
            ready = dht.ready()
            dht.advance(ready)
            for req in ready.requests:
                dest = wl.index.get(req.peer.peer_id)
                if dest is None:
                    if not req.peer.addrs:  # libp2p: no address to dial, fails at once
                        dht.on_failure(req.request_id, now=ctx.now, reason="no_address")
                    continue  # a fabricated PeerId at a black-hole address: timeout
                self.streams[req.request_id] = dest
                ctx.send(dest, _frame(_REQ, req.request_id, req.message))
            for result in ready.finished:
                self._finished(ctx, result)
        # sleep until the core's next deadline (as node.dht.service does), at most tick
        wake = min(dht.next_wakeup(), ctx.now + wl.tick_s)
        if wake < self.wake_at:
            self.wake_at = wake
            ctx.set_timer(max(0.0, wake - ctx.now), "tick")
        if self.strategy is None:
            wl.check_converged(self.node_id, ctx.now, dht)

    def _finished(self, ctx: Context, result: Any) -> None:
        if result.query_id == self.boot_qid:
            self.boot_qid = None
            if not result.closest:
                ctx.set_timer(self.wl.retry_s, "rebootstrap")
            return  # the core refreshes every bucket itself (DhtConfig.refresh_on_join)
        started = self.lookups.pop(result.query_id, None)
        if started is not None:
            ok = any(p.peer_id == started[1] for p in result.closest)
            self.wl.lookup_done(ctx.now - started[0], ok, result.stats)


class DiscoveryWorkload:
    """``sim run --workload discovery``. See the module doc."""

    adversaries = frozenset(STRATEGIES)

    def __init__(self) -> None:
        self.convergence = LatencyRecorder("discovery_latency_s")
        self.lookup_latency = LatencyRecorder("discovery_lookup_latency_s")
        self.validator = validator()
        self.bad_frames = self.restarts = 0
        self.lookups_started = self.lookups_ok = self.lookups_failed = 0
        self.lookups_skipped = 0
        self.lookup_queries: list[int] = []  # requests sent by each finished lookup
        self.lookup_stalls = 0
        self.converged_at: dict[int, float] = {}
        self._spec: RunSpec | None = None
        self._world: Any = None

    # -- setup --------------------------------------------------------------------------
    def _params(self, spec: RunSpec) -> dict[str, Any]:
        p = dict(spec.workload_params)
        try:
            out = {
                "join_over": parse_duration(p.pop("join_over", "10s")),
                "bootstraps": int(p.pop("bootstraps", 3)),
                "tick": parse_duration(p.pop("tick", "1s")),
                "retry": parse_duration(p.pop("retry", "1s")),
                "lookups": int(p.pop("lookups", 200)),
                "lookups_from": p.pop("lookups_from", None),
                "lookups_until": p.pop("lookups_until", None),
                "byzantine": str(p.pop("byzantine", "mix")),
                "dht": _dht_config(p),
                "target": parse_duration(p.pop("target", "5s")),
                "seed_limit": parse_duration(p.pop("seed_limit", "30s")),
            }
            for name in ("lookups_from", "lookups_until"):
                if out[name] is not None:
                    out[name] = parse_duration(out[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"discovery: bad workload params: {exc}") from None
        if p:
            raise ValueError(f"discovery: unknown workload params {sorted(p)}")
        if out["byzantine"] not in ("mix", *_BYZ_PARAM):
            raise ValueError("discovery: byzantine must be mix, silent, garbage or lie")
        if out["tick"] <= 0 or out["bootstraps"] < 1 or out["dht"].k < 1:
            raise ValueError("discovery: tick > 0, bootstraps >= 1 and k >= 1 required")
        return out

    def setup(self, world: Any, spec: RunSpec) -> None:
        """See :class:`sim.workloads.Workload`."""
        self._spec, self._world = spec, world
        p = self._params(spec)
        self.params = p
        self.tick_s, self.retry_s = p["tick"], p["retry"]
        self.config = p["dht"]
        self.refresh_on_join = self.config.refresh_on_join
        n = self.n = spec.nodes
        key_rng = world.engine.child_rng("dht-keys")
        self.infos = [PeerInfo(peer_id_bytes_from_public_key(
            SoftSigner(key_rng.randbytes(32)).public_key), (_multiaddr(i),)) for i in range(n)]
        self.index = {info.peer_id: i for i, info in enumerate(self.infos)}
        self._keys = [key_to_int(kad_key(info.peer_id)) for info in self.infos]
        honest = sorted(spec.honest)
        self.byzantine_order = sorted(spec.byzantine)
        self.byzantine = frozenset(spec.byzantine)
        order = list(range(n))
        world.engine.child_rng("dht-join").shuffle(order)
        first = [i for i in order if i in spec.honest][:p["bootstraps"]]
        rest = [i for i in order if i not in first]
        self.boot_nodes = first
        self.join_at = [0.0] * n
        for rank, node in enumerate(rest):
            self.join_at[node] = p["join_over"] * (rank + 1) / max(1, len(rest))
        self.closest = {i: self._true_closest(i, honest, self.config.k) for i in honest}
        self.ready_at = {
            i: max([self.join_at[i], *(self.join_at[self.index[j]] for j in self.closest[i])])
            for i in honest}
        self.strategy = self._strategies(spec, p["byzantine"])
        for node in range(n):
            world.attach(node, self._make(node), factory=self._make)
        self._schedule_lookups(world, spec, p, honest)

    def _true_closest(self, node: int, honest: list[int], k: int) -> list[bytes]:
        me = self._keys[node]
        others = sorted((self._keys[j] ^ me, j) for j in honest if j != node)
        return [self.infos[j].peer_id for _, j in others[:k]]

    def _strategies(self, spec: RunSpec, mode: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for rank, node in enumerate(self.byzantine_order):
            out[node] = STRATEGIES[rank % 3] if mode == "mix" else _BYZ_PARAM[mode]
        for adv in spec.timeline.adversaries:
            if adv.strategy in STRATEGIES:
                for node in sorted(spec.byzantine if adv.nodes is None else adv.nodes):
                    out[node] = adv.strategy
        return out

    def _make(self, node: int) -> DhtProcess:
        return DhtProcess(node, self, self.strategy.get(node))

    def _schedule_lookups(self, world: Any, spec: RunSpec, p: dict, honest: list[int]) -> None:
        start = p["lookups_from"]
        if start is None:
            start = max(self.join_at) + 5.0
        end = p["lookups_until"]
        if end is None:
            end = spec.duration_s - max(10.0, self.config.request_timeout)
            if end <= start:  # a short run: the first half of what is left
                end = start + (spec.duration_s - start) / 2
        count = p["lookups"]
        if count <= 0 or len(honest) < 2 or end <= start:
            return
        rng = world.engine.child_rng("dht-lookups")
        for i in range(count):
            at = start + (end - start) * i / count
            origin, target = rng.sample(honest, 2)
            world.engine.schedule_at(at, self._lookup, origin, self.infos[target].peer_id)

    def _lookup(self, origin: int, target: bytes) -> None:
        world = self._world

        def go(ctx: Context) -> None:
            proc = world.hosts[origin].process
            if isinstance(proc, DhtProcess) and proc.lookup(ctx, target):
                self.lookups_started += 1
            else:
                self.lookups_skipped += 1

        if not world.inject(origin, go):
            self.lookups_skipped += 1

    # -- bookkeeping --------------------------------------------------------------------
    def check_converged(self, node: int, now: float, dht: DhtNode) -> None:
        if node in self.converged_at or node not in self.closest:
            return
        ready = self.ready_at[node]
        if now < ready:
            return
        if holds_closest(dht, self.closest[node]):
            self.converged_at[node] = now
            self.convergence.add(now - ready)

    def lookup_done(self, latency: float, ok: bool, stats: Any = None) -> None:
        if stats is not None:
            self.lookup_queries.append(stats.queries)
            self.lookup_stalls += stats.stalls
        if ok:
            self.lookups_ok += 1
            self.lookup_latency.add(latency)
        else:
            self.lookups_failed += 1

    # -- results ------------------------------------------------------------------------
    def results(self) -> WorkloadResults:
        spec, world = self._spec, self._world
        assert spec is not None, "setup() was not called"
        honest = sorted(spec.honest)
        self.convergence.unfinished = sum(1 for i in honest if i not in self.converged_at)
        unfinished = self.lookups_started - self.lookups_ok - self.lookups_failed
        self.lookup_latency.unfinished = self.lookups_failed + unfinished
        still = strict = 0
        for i in honest:
            proc = world.hosts[i].process
            dht = getattr(proc, "dht", None)
            if dht is not None and holds_closest(dht, self.closest[i]):
                still += 1
            if dht is not None and all(pid in dht.table for pid in self.closest[i]):
                strict += 1
        n = spec.nodes
        name = f"peer discovery: routing tables converged, {n} nodes, " \
               f"{len(spec.byzantine)} Byzantine"
        note = "per honest node: all of it and its k closest honest peers joined -> " \
               "table holds those k"
        targets = [
            Target(name + " (seed limit)", self.params["seed_limit"], self.convergence,
                   note=note),
            Target(name + " (our goal)", self.params["target"], self.convergence, note=note),
            Target("peer discovery: lookups succeed (every lookup, failures = never)",
                   self.params["seed_limit"], self.lookup_latency, percentile=100.0,
                   note="FIND_NODE for a random honest PeerId from a random honest node"),
        ]
        last = max(self.converged_at.values(), default=math.inf)
        extra = {
            "honest_converged": len(self.converged_at),
            "honest_converged_at_end": still, "honest": len(honest),
            "honest_holding_all_k_in_buckets_at_end": strict,
            "all_converged_at_s": None if self.convergence.unfinished else last,
            "last_join_s": max(self.join_at), "bootstrap_nodes": self.boot_nodes,
            "lookups": {"started": self.lookups_started, "ok": self.lookups_ok,
                        "failed": self.lookups_failed, "unfinished": unfinished,
                        "not_started": self.lookups_skipped,
                        "messages_per_lookup": _summary(self.lookup_queries),
                        "stalls": self.lookup_stalls,
                        "success_rate": (self.lookups_ok / self.lookups_started
                                         if self.lookups_started else None)},
            "byzantine_strategies": {str(k): v for k, v in sorted(self.strategy.items())},
            "bad_frames": self.bad_frames, "restarts": self.restarts,
            "dht_config": dataclasses.asdict(self.config),  # times in seconds
            "tick_s": self.tick_s, "refresh_on_join": self.refresh_on_join,
        }
        return WorkloadResults(
            decisions=0,
            latencies={"discovery_latency_s": self.convergence,
                       "discovery_lookup_latency_s": self.lookup_latency},
            targets=targets, extra=extra)
