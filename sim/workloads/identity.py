"""The identity workload: enrolment and verification of identities through the real
:class:`identity.registry.Registry` at every verifying node.

Theory of operation
-------------------
``identities`` identities (default 10,000) are enrolled during ``enroll_over`` (default
20 s, or half the run when that is shorter; from ``enroll_from``, default 1 s), one
every ``enroll_over / identities`` seconds, round robin over the honest nodes (the next
honest node that is up when one is down). The enrolling *home* node creates the identity
the way a node does: two Ed25519 keys (:class:`identity.soft.SoftSigner`, seeds drawn
from the run's seed), an inception event (:func:`identity.records.incept`, current key +
pre-rotation commitment) and a signed identity record
(:func:`identity.records.issue_record`, one-day validity); both signatures are real and
charged at the home node as HSM signatures (``ctx.sign``). It ingests them into its own
registry and broadcasts the canonical msgpack ``[event bytes, record bytes]`` to the
*verifiers* (``verifiers``: ``all`` honest nodes, the default, or a number: that many
honest nodes drawn from the seed; documented in the report), a model of the DHT/gossip
delivery.

A verifier decodes the frame with the real codec and calls ``Registry.ingest_batch``
(real decode, signature checks, key-event-log and record rules, ``now`` = the virtual
clock as Unix seconds). Signature checking is the registry's stateless half: it runs
through ``ingest_batch``'s ``parallel_map`` hook, which here is a *cache shared by all
nodes* keyed by the exact item bytes (the same bytes give the same answer, like
:class:`sim.cpu.VerifyCache`), so each distinct identity is decoded and verified for
real once per run, while every verifier's own Registry applies it and every verifier is
charged one ``verify_s`` per signature checked (two per identity) plus ``persist_s``
for storing the accepted identity (crash-safe disk; a restarted verifier re-ingests its
disk, charged again; identities broadcast while it was down are not re-sent: there is
no anti-entropy in this model).

**identity_verify_latency_s**: one sample per (verifier, honest identity): from the
frame's arrival at the verifier (``ctx.arrived_s``) until the
verifier's registry has accepted it, in virtual time, so it includes waiting behind
other work on that node's CPU (queueing), the message handling cost and the two
verifications. Identities enrolled at least 1 s before the end that a verifier which
never crashed did not accept count as unfinished (+inf).

Byzantine nodes (default strategy ``identity-forge``, also by ``--adversary``) enrol
forgeries at ``forge_rate`` per second each (default 5): an inception whose signature
is broken (so is its record), a record signed by a key that is not the identity's
current key, or a record that claims an honest identity's key. Verifiers must refuse
every forged record (the forger's own valid inceptions are legitimate new identities,
which anyone may create), and pay for checking them (CPU exhaustion); the report counts
``forged_records_accepted`` (must be 0) and the refusal reasons. ``silent`` Byzantine nodes (generic
adversary) do nothing.

Params: ``identities``, ``enroll_over``, ``enroll_from``, ``verifiers``, ``forge_rate``,
``target`` (our goal, 2ms), ``seed_limit`` (5s).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from identity import canonical
from identity.records import RecordError, incept, issue_record
from identity.registry import Registry
from identity.soft import SoftSigner
from sim.process import BaseProcess, Context
from sim.report import LatencyRecorder, Target
from sim.scenario import RunSpec
from sim.units import parse_duration
from sim.workloads import WorkloadResults

__all__ = ["IdentityProcess", "IdentityWorkload"]

EPOCH = 1_800_000_000  # Unix seconds at virtual time 0
VALIDITY = 86_400
_FORGE_KINDS = ("bad-signature", "wrong-key", "stolen-key")


class ChargedSigner:
    """A signer whose every signature goes through ``ctx.sign`` (real, HSM cost)."""

    def __init__(self, ctx: Context, signer: SoftSigner) -> None:
        self.ctx, self.signer = ctx, signer
        self.public_key = signer.public_key

    def sign(self, data: bytes) -> bytes:
        return self.ctx.sign(self.signer, data)


class CheckCache:
    """``parallel_map`` for :meth:`Registry.ingest_batch` that memoises the registry's
    stateless decode-and-verify step per chunk of item bytes, across all nodes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, ...], list[Any]] = {}
        self.hits = self.misses = 0

    def __call__(self, func: Callable[[list[Any]], list[Any]], chunks: Any) -> list[Any]:
        out = []
        for chunk in chunks:
            key = tuple(chunk)
            got = self._cache.get(key)
            if got is None:
                self.misses += 1
                got = self._cache[key] = func(chunk)
            else:
                self.hits += 1
            out.append(got)
        return out


class IdentityProcess(BaseProcess):
    """One node: a real Registry; enrols (home), verifies (verifier) or forges."""

    def __init__(self, node: int, wl: IdentityWorkload, forger: bool = False) -> None:
        self.node_id = node
        self.wl = wl
        self.forger = forger
        self.registry = Registry()
        self.forged = 0

    def on_start(self, ctx: Context) -> None:
        if self.forger and self.wl.forge_rate > 0:  # forgers start at random phases
            phase = ctx.rng.random() / self.wl.forge_rate
            ctx.set_timer(max(0.0, self.wl.enroll_from - ctx.now) + phase, "forge")

    def on_restart(self, ctx: Context) -> None:
        self.wl.restarts += 1
        keys = sorted(k for k in ctx.disk if isinstance(k, tuple) and k[0] == "id")
        items: list[bytes] = []
        for key in keys:
            items.extend(canonical.decode(ctx.disk[key]))
        if items:
            ctx.charge_verify(len(items))
            self.registry.ingest_batch(items, now=EPOCH + int(ctx.now),
                                       parallel_map=self.wl.checks)
        self.on_start(ctx)

    # -- home node: enrolment -------------------------------------------------------------
    def enroll(self, ctx: Context, index: int) -> None:
        wl = self.wl
        cur_seed, next_seed = wl.seeds[index]
        signer = ChargedSigner(ctx, SoftSigner(cur_seed))
        now = EPOCH + int(ctx.now)
        event = incept(signer, SoftSigner(next_seed).public_key, issued_at=now)
        addr = f"/ip4/10.{self.node_id // 256}.{self.node_id % 256}.1/tcp/4001"
        record = issue_record(signer, event.identifier, version=1, listen_addrs=[addr],
                              issued_at=now, expires_at=now + VALIDITY)
        items = [event.to_bytes(), record.to_bytes()]
        payload = canonical.encode(items)
        self.registry.ingest_batch(items, now=now, parallel_map=wl.checks)
        ctx.persist(("id", len(ctx.disk)), payload)
        wl.enrolled(index, event.identifier, event.public_key, ctx.now)
        ctx.broadcast([v for v in wl.verifiers if v != self.node_id], payload)

    # -- Byzantine: forgeries -------------------------------------------------------------
    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if timer_id != "forge":
            return
        wl = self.wl
        self.forged += 1
        kind = _FORGE_KINDS[self.forged % 3]
        now = EPOCH + int(ctx.now)
        signer = SoftSigner(ctx.rng.randbytes(32))
        nxt = SoftSigner(ctx.rng.randbytes(32)).public_key
        if kind == "stolen-key" and wl.honest_keys:
            # a record claiming an honest identity's key (the forger cannot sign with
            # it): the record's key is not the identifier's current key
            victim = wl.honest_keys[ctx.rng.randrange(len(wl.honest_keys))]
            event = incept(ChargedSigner(ctx, signer), nxt, issued_at=now)
            rec = issue_record(ChargedSigner(ctx, signer), event.identifier, version=1,
                               listen_addrs=[], issued_at=now, expires_at=now + VALIDITY)
            body = rec.to_bytes().replace(signer.public_key, victim)
            items = [event.to_bytes(), body]
        else:
            event = incept(ChargedSigner(ctx, signer), nxt, issued_at=now)
            items = [event.to_bytes()]
            if kind == "bad-signature":
                raw = bytearray(items[0])
                raw[-1] ^= 1
                items = [bytes(raw)]
            other = ChargedSigner(ctx, SoftSigner(ctx.rng.randbytes(32)))
            rec = issue_record(other, event.identifier, version=1, listen_addrs=[],
                               issued_at=now, expires_at=now + VALIDITY)
            items.append(rec.to_bytes())
        wl.forgeries += 1
        ctx.broadcast([v for v in wl.verifiers if v != self.node_id], canonical.encode(items))
        ctx.set_timer(1.0 / wl.forge_rate, "forge")

    # -- verifier -------------------------------------------------------------------------
    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        wl = self.wl
        arrived = ctx.arrived_s if ctx.arrived_s is not None else ctx.now
        if self.forger:
            return
        try:
            items = canonical.decode(payload)
        except canonical.DecodeError:
            wl.bad_frames += 1
            return
        if (type(items) is not list or not 1 <= len(items) <= 2
                or any(type(x) is not bytes for x in items)):
            wl.bad_frames += 1
            return
        now = EPOCH + int(ctx.now)
        results = self.registry.ingest_batch(items, now=now, parallel_map=wl.checks)
        ctx.charge_verify(len(items))
        if any(r is not None for r in results):
            wl.refused(results)
            return
        ctx.persist(("id", len(ctx.disk)), payload)
        wl.verified(self.node_id, items[0], ctx.now - arrived)


class IdentityWorkload:
    """``sim run --workload identity``. See the module doc."""

    adversaries = frozenset({"identity-forge"})

    def __init__(self) -> None:
        self.latency = LatencyRecorder("identity_verify_latency_s")
        self.checks = CheckCache()
        self.bad_frames = self.restarts = self.forgeries = 0
        self.refusals: dict[str, int] = {}
        self.honest_keys: list[bytes] = []
        self.enrolled_at: dict[str, float] = {}  # honest identifier -> enrolment time
        self.not_enrolled = 0
        self.accepted: dict[int, int] = {}
        self._spec: RunSpec | None = None
        self._world: Any = None

    def _params(self, spec: RunSpec) -> None:
        p = dict(spec.workload_params)
        try:
            self.count = int(p.pop("identities", 10_000))
            over = p.pop("enroll_over", None)
            self.enroll_over = (min(20.0, max(1.0, (spec.duration_s - 2.0) / 2))
                                if over is None else parse_duration(over))
            self.enroll_from = parse_duration(p.pop("enroll_from", "1s"))
            self.verifiers_param = str(p.pop("verifiers", "all"))
            self.forge_rate = float(p.pop("forge_rate", 5.0))
            self.target_s = parse_duration(p.pop("target", "2ms"))
            self.seed_limit_s = parse_duration(p.pop("seed_limit", "5s"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"identity: bad workload params: {exc}") from None
        if p:
            raise ValueError(f"identity: unknown workload params {sorted(p)}")
        if self.count < 0 or self.forge_rate < 0 or self.enroll_over <= 0:
            raise ValueError("identity: identities >= 0, forge_rate >= 0, enroll_over > 0")

    def setup(self, world: Any, spec: RunSpec) -> None:
        """See :class:`sim.workloads.Workload`."""
        self._spec, self._world = spec, world
        self._params(spec)
        honest = sorted(spec.honest)
        if self.verifiers_param == "all":
            self.verifiers = honest
        else:
            k = min(len(honest), int(self.verifiers_param))
            self.verifiers = sorted(world.engine.child_rng("id-verifiers").sample(honest, k))
        rng = world.engine.child_rng("id-keys")
        self.seeds = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(self.count)]
        forgers = set(spec.byzantine)
        if any(a.strategy == "identity-forge" for a in spec.timeline.adversaries):
            forgers = set()
            for adv in spec.timeline.adversaries:
                if adv.strategy == "identity-forge":
                    forgers |= set(spec.byzantine if adv.nodes is None else adv.nodes)

        def make(node: int) -> IdentityProcess:
            return IdentityProcess(node, self, forger=node in forgers)

        for node in range(spec.nodes):
            world.attach(node, make(node), factory=make)
        if honest:
            for i in range(self.count):
                at = self.enroll_from + self.enroll_over * i / max(1, self.count)
                world.engine.schedule_at(at, self._enroll, i, honest)

    def _enroll(self, index: int, honest: list[int]) -> None:
        world = self._world
        for k in range(len(honest)):
            node = honest[(index + k) % len(honest)]
            if world.is_up(node):
                world.inject(node, lambda ctx, n=node: world.hosts[n].process.enroll(ctx, index))
                return
        self.not_enrolled += 1

    # -- bookkeeping ----------------------------------------------------------------------
    def enrolled(self, index: int, identifier: str, key: bytes, now: float) -> None:
        self.honest_keys.append(key)
        self.enrolled_at[identifier] = now

    def verified(self, node: int, event_bytes: bytes, latency: float) -> None:
        self.latency.add(latency)
        self.accepted[node] = self.accepted.get(node, 0) + 1

    def refused(self, results: list[RecordError | None]) -> None:
        for r in results:
            if r is not None:
                reason = str(r.reason)
                self.refusals[reason] = self.refusals.get(reason, 0) + 1

    # -- results --------------------------------------------------------------------------
    def results(self) -> WorkloadResults:
        spec, world = self._spec, self._world
        assert spec is not None, "setup() was not called"
        enrolled_at = self.enrolled_at
        deadline = spec.duration_s - 1.0
        honest_ids = sorted(i for i, t in enrolled_at.items() if t <= deadline)
        unfinished, held, forged_held = 0, {}, 0
        for v in self.verifiers:
            host = world.hosts[v]
            proc = host.process
            if proc is None:
                continue
            reg = proc.registry
            held[v] = len(reg)
            forged_held += sum(1 for i in reg.identifiers()
                               if i not in enrolled_at and reg.record(i) is not None)
            if host.up and host.crashes == 0:
                unfinished += sum(1 for i in honest_ids if i not in reg)
        self.latency.unfinished = unfinished
        n = spec.nodes
        name = f"identity verification, {len(enrolled_at)} identities enrolled, {n} nodes"
        note = (f"per (verifier, identity): arrival -> accepted by the real Registry incl. "
                f"CPU queueing; verifiers: {self.verifiers_param} "
                f"({len(self.verifiers)} nodes)")
        targets = [Target(name + " (seed limit)", self.seed_limit_s, self.latency, note=note),
                   Target(name + " (our goal)", self.target_s, self.latency, note=note)]
        extra = {
            "identities_enrolled": len(enrolled_at), "identities_requested": self.count,
            "not_enrolled": self.not_enrolled,
            "verifiers": len(self.verifiers), "verifier_sample": self.verifiers_param,
            "registry_sizes": {"min": min(held.values(), default=0),
                               "max": max(held.values(), default=0)},
            "forged_records_accepted": forged_held, "forgeries_sent": self.forgeries,
            "refusals": dict(sorted(self.refusals.items())),
            "bad_frames": self.bad_frames, "restarts": self.restarts,
            "real_checks": {"chunks_verified": self.checks.misses,
                            "chunks_from_cache": self.checks.hits},
        }
        return WorkloadResults(decisions=0,
                               latencies={"identity_verify_latency_s": self.latency},
                               targets=targets, extra=extra)
