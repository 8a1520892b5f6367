"""ENGINE SELF-TEST workload: a signed echo broadcast. Not consensus, not PBFT.

It exists so that the simulator's every part (codec on the wire, real Ed25519 signing
and cached verification, CPU charging, network faults, crashes, load, adversaries,
invariant checkers, report) can be exercised end to end before the real cores are
wired. ``sim run --workload selftest-echo`` runs it; its report says so.

Protocol: for each load operation an honest *origin* signs ``PING(origin, n, body)``
and broadcasts it. A receiver checks that the sender is the origin and the signature is
valid (``ctx.verify``), reports ``decided(seq, sha256(body))`` (seq = origin*2**32+n)
and answers with a signed ``ACK(origin, n, digest, from)``. The origin counts valid,
distinct ACKs; when it holds a quorum (2f+1 of n, itself included) the operation's
round trip is recorded as ``echo_quorum_latency_s``.

Since nothing makes receivers agree, an origin that signs two bodies under one ``n``
(strategy ``equivocate``) makes honest nodes decide different digests at one seq: the
agreement checker must catch that (it is the planted disagreement of the tests).
Strategies: ``equivocate`` (params ``rate``), ``forge`` (bad signatures, ``rate``).
Byzantine nodes with no strategy stay silent (no pings, no acks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any

from identity.canonical import DecodeError, decode, encode
from identity.soft import SoftSigner
from sim.invariants import Agreement, LivenessAfterHeal
from sim.load import schedule_load
from sim.process import BaseProcess, Context
from sim.report import LatencyRecorder, Target
from sim.scenario import LoadSpec, RunSpec
from sim.units import parse_duration
from sim.workloads import WorkloadResults

__all__ = ["EchoNode", "EchoWorkload"]


def _seq(origin: int, n: int) -> int:
    return origin * 2**32 + n


class EchoNode(BaseProcess):
    """One node of the echo self-test. ``keys``: every node's public key by id."""

    def __init__(
        self, node_id: int, signer: SoftSigner, keys: list[bytes], shared: Any,
        silent: bool = False,
    ) -> None:
        self.node_id = node_id
        self.silent = silent  # Byzantine default: answers nothing
        self.signer = signer
        self.keys = keys
        self.shared = shared  # the workload: quorum size, recorders, counters
        self.counter = 0
        # n -> (start time, digest, voters, signed ping bytes)
        self.pending: dict[int, tuple[float, bytes, set[int], bytes]] = {}

    def on_restart(self, ctx: Context) -> None:
        # Persist-before-send makes this safe: never reuse a counter after a crash.
        self.counter = int.from_bytes(ctx.disk.get("counter", b"\0"), "big")

    def _next(self, ctx: Context) -> int:
        self.counter += 1
        ctx.persist("counter", self.counter.to_bytes(8, "big"))
        return self.counter

    def originate(self, ctx: Context, size: int) -> None:
        """Start one operation: sign and broadcast a PING carrying ``size`` bytes."""
        self._next(ctx)
        body = ctx.rng.randbytes(size)
        digest = hashlib.sha256(body).digest()
        ping = self._ping(ctx, self.counter, body)
        self.pending[self.counter] = (ctx.now, digest, {self.node_id}, ping)
        self.shared.started[_seq(self.node_id, self.counter)] = ctx.now
        ctx.decided(_seq(self.node_id, self.counter), digest)
        ctx.broadcast(self._others(ctx), ping)
        ctx.set_timer(self.shared.retry_s, ("retry", self.counter))

    def _others(self, ctx: Context) -> list[int]:
        return [i for i in range(ctx.n_nodes) if i != self.node_id]

    def _ping(self, ctx: Context, n: int, body: bytes, forge: bool = False) -> bytes:
        fields = {"t": "ping", "o": self.node_id, "n": n, "b": body}
        sig = ctx.sign(self.signer, encode(fields))
        if forge:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        return encode({**fields, "s": sig})

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        if self.silent:
            return
        try:
            msg = decode(payload)
            kind, sig = msg.pop("t"), msg.pop("s")
            if kind == "ping":
                self._on_ping(ctx, sender, msg, sig)
            elif kind == "ack":
                self._on_ack(ctx, sender, msg, sig)
            else:
                self.shared.rejected += 1
        except (DecodeError, KeyError, TypeError, AttributeError, IndexError):
            self.shared.rejected += 1

    def _on_ping(self, ctx: Context, sender: int, msg: dict, sig: bytes) -> None:
        origin, n, body = msg["o"], msg["n"], msg["b"]
        signed = encode({"t": "ping", "o": origin, "n": n, "b": body})
        if origin != sender or not ctx.verify(self.keys[origin], signed, sig):
            self.shared.rejected += 1
            return
        digest = hashlib.sha256(body).digest()
        ctx.decided(_seq(origin, n), digest)
        fields = {"t": "ack", "o": origin, "n": n, "d": digest, "f": self.node_id}
        ack_sig = ctx.sign(self.signer, encode(fields))
        ctx.send(origin, encode({**fields, "s": ack_sig}))

    def _on_ack(self, ctx: Context, sender: int, msg: dict, sig: bytes) -> None:
        n, digest, voter = msg["n"], msg["d"], msg["f"]
        entry = self.pending.get(n)
        if msg["o"] != self.node_id or voter != sender or entry is None:
            return
        signed = encode({"t": "ack", "o": self.node_id, "n": n, "d": digest, "f": voter})
        if digest != entry[1] or not ctx.verify(self.keys[voter], signed, sig):
            self.shared.rejected += 1
            return
        entry[2].add(voter)
        if len(entry[2]) == self.shared.quorum:
            self.shared.quorum_latency.add(ctx.now - entry[0])
            del self.shared.started[_seq(self.node_id, n)]
            del self.pending[n]

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        kind, arg = timer_id  # type: ignore[misc]
        if kind == "retry":
            entry = self.pending.get(arg)
            if entry is not None:  # re-send to the nodes that have not acked yet
                missing = [i for i in self._others(ctx) if i not in entry[2]]
                ctx.broadcast(missing, entry[3])
                ctx.set_timer(self.shared.retry_s, timer_id)
            return
        strategy, rate = kind, arg
        self._next(ctx)
        if strategy == "equivocate":
            others = self._others(ctx)
            half = len(others) // 2
            for group, tag in ((others[:half], b"A"), (others[half:], b"B")):
                ctx.broadcast(group, self._ping(ctx, self.counter, tag * 8))
        else:
            ctx.broadcast(self._others(ctx), self._ping(ctx, self.counter, b"x", forge=True))
        ctx.set_timer(1.0 / rate, timer_id)

    def on_crash(self) -> None:
        self.pending.clear()


class EchoWorkload:
    """The engine self-test workload (see the module doc)."""

    adversaries = frozenset({"equivocate", "forge"})
    #: The node class (tests substitute deliberately broken ones: mutation tests).
    node_cls = EchoNode

    def __init__(self) -> None:
        self.target_p99_s = 1.0
        self.retry_s = 1.0
        self.quorum_latency = LatencyRecorder("echo_quorum_latency_s")
        self.rejected = 0
        self.quorum = 1
        self.ops = 0
        self.decisions: dict[int, set[int]] = {}
        self.started: dict[int, float] = {}
        self._spec: RunSpec | None = None

    def setup(self, world: Any, spec: RunSpec) -> None:
        """See :class:`sim.workloads.Workload`. Params (``[workload_params]``):
        ``target_p99`` (duration, default 1s), ``retry`` (duration, default 1s)."""
        self._spec = spec
        params = dict(spec.workload_params)
        self.target_p99_s = parse_duration(params.pop("target_p99", "1s"))
        self.retry_s = parse_duration(params.pop("retry", "1s"))
        if params or self.retry_s <= 0:
            raise ValueError(f"selftest-echo: bad workload params {spec.workload_params!r} "
                             "(known: target_p99, retry > 0)")
        n, f = spec.nodes, (spec.nodes - 1) // 3
        self.quorum = min(n - len(spec.byzantine), 2 * f + 1)
        key_rng = world.engine.child_rng("echo-keys")
        signers = [SoftSigner(key_rng.randbytes(32)) for _ in range(n)]
        keys = [s.public_key for s in signers]
        def make(node: int) -> EchoNode:
            return self.node_cls(node, signers[node], keys, self, silent=node in spec.byzantine)

        for i in range(n):
            world.attach(i, make(i), factory=make)
        world.invariants.register(Agreement(spec.honest), world)
        heal = spec.timeline.last_heal_s()
        if heal is not None and heal + 3 * self.retry_s < spec.duration_s:
            # every honest node that is up hears of new operations soon after the heal
            world.invariants.register(
                LivenessAfterHeal(spec.honest, heal, 3 * self.retry_s), world)
        world.subscribe("decided", self._count)
        self._apply_adversaries(world, spec)
        honest = sorted(spec.honest)
        load = spec.timeline.load or (LoadSpec(10.0, 0.0, None, 64),)

        def op(index: int, size: int) -> None:
            origin = honest[index % len(honest)]
            if world.inject(origin, lambda ctx: world.hosts[origin].process.originate(ctx, size)):
                self.ops += 1

        if honest:
            schedule_load(world.engine, load, spec.duration_s, op)

    def _apply_adversaries(self, world: Any, spec: RunSpec) -> None:
        for adv in spec.timeline.adversaries:
            if adv.strategy not in self.adversaries:
                continue
            rate = float(adv.params.get("rate", 1.0))
            if not 0 < rate <= 1000:
                raise ValueError(f"adversary {adv.strategy}: rate {rate!r} must be in (0, 1000]")
            nodes = sorted(spec.byzantine if adv.nodes is None else adv.nodes)
            for node in nodes:
                world.engine.schedule_at(
                    adv.start_s, world.inject, node,
                    lambda ctx, s=adv.strategy, r=rate: ctx.set_timer(0.0, (s, r)),
                )

    def _count(self, node: int, time_s: float, seq: int, digest: bytes, proof: Any) -> None:
        self.decisions.setdefault(seq, set()).add(node)

    def results(self) -> WorkloadResults:
        assert self._spec is not None, "setup() was not called"
        honest = self._spec.honest
        everywhere = sum(1 for nodes in self.decisions.values() if honest <= nodes)
        # Operations old enough to have finished but that never did count as +inf.
        deadline = self._spec.duration_s - self.target_p99_s
        self.quorum_latency.unfinished = sum(1 for t in self.started.values() if t < deadline)
        target = Target("echo RTT (self-test)", self.target_p99_s,
                        self.quorum_latency, note="not consensus: signed echo broadcast")
        return WorkloadResults(
            decisions=everywhere,
            latencies={"echo_quorum_latency_s": self.quorum_latency},
            targets=[target],
            extra={"operations": self.ops, "rejected_messages": self.rejected},
        )
