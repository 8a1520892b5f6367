"""PBFT Byzantine strategies: wrappers around a real replica's outputs (or two replicas).

Theory of operation
-------------------
A Byzantine node runs the real :class:`consensus.replica.Replica` through the same
adapter as an honest one (:class:`~sim.workloads.pbft_process.PbftProcess`); only what
leaves the node is changed, after the replica produced it, so every lie is built from
protocol messages a real faulty node could send, signed with its own key through
``ctx.sign`` (charged the HSM cost). Strategies (``[[adversary]]`` in a scenario, or
``--adversary NAME[:k=v,...][@NODES]``), each active between its ``from`` and
``until`` times, stack on one node in this order:

``equivocating-primary`` (``collude = true``)
    When its replica, as primary, sends a PRE-PREPARE, the node sends it to the first
    half of the members (by id) and a different, validly signed PRE-PREPARE for the
    same (view, seq) to the second half (its batch has the requests reversed plus one
    extra request). With ``collude`` every Byzantine node running this strategy then
    votes (PREPARE and COMMIT, validly signed) for the first digest to the first half
    and for the second digest to the second half: the strongest attack on agreement
    that valid signatures allow.
``vote-withholding`` (``probability = 1.0``, ``checkpoints = false``)
    Drops its PREPARE and COMMIT messages (and CHECKPOINTs with ``checkpoints``) with
    that probability; everything else (pre-prepares as primary, view changes) is sent.
``forged-signatures`` (``probability = 1.0``, ``impersonate = true``)
    Each signed message is sent with a corrupted signature instead of the real one
    (with that probability); with ``impersonate`` also a copy claiming another
    member as its sender. Receivers must verify (and are charged) to drop them.
``twins`` (one key in two partitions)
    The node runs two replicas with the same member id and key: twin A talks only to
    the first half of the members, twin B only to the second half (messages from a
    half are fed to its twin). When the node is primary each twin proposes its own
    batch; each twin votes for what it saw.

Common parameters: ``count`` and ``offset`` select ``nodes[offset:offset+count]`` of
the strategy's (sorted) node set, so one scenario can give different Byzantine nodes
different strategies. ``silent``, ``delay``, ``replay`` and ``garbage`` are the generic
byte-level adversaries of :mod:`sim.adversary` (applied by the runner on top). A
Byzantine node with no strategy at all is silent (a replica whose every output is
dropped; it is not run, which is equivalent and cheaper).

Adversaries may only be given to Byzantine nodes: naming an honest node is an error
(it would make the "honest" set lie and the checkers meaningless).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

from consensus.effects import Outbound
from consensus.messages import (
    Checkpoint,
    Commit,
    Prepare,
    PrePrepare,
    Request,
    batch_digest,
    encode_message,
)
from consensus.replica import Replica
from sim import adversary as generic
from sim.process import BaseProcess, Context
from sim.scenario import AdversarySpec, RunSpec
from sim.workloads.pbft_process import PbftProcess

__all__ = ["STRATEGIES", "ByzantineProcess", "Coordinator", "SilentProcess", "TwinsProcess"]

STRATEGIES = frozenset({"equivocating-primary", "vote-withholding", "forged-signatures",
                        "twins"})
_PARAMS = {
    "equivocating-primary": {"collude"},
    "vote-withholding": {"probability", "checkpoints"},
    "forged-signatures": {"probability", "impersonate"},
    "twins": set(),
}


def _replace(msg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also drops the cached signing bytes (``_sb``)."""
    new = dataclasses.replace(msg, **changes)
    if getattr(new, "_sb", None) is not None:
        object.__setattr__(new, "_sb", None)
    return new


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "1", "yes"):
        return True
    if str(v).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{v!r} is not a boolean")


def _prob(v: Any) -> float:
    p = float(v)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{v!r} is not a probability")
    return p


@dataclasses.dataclass(frozen=True)
class Active:
    """One strategy at one node, with parsed parameters."""

    name: str
    start_s: float
    end_s: float | None
    params: dict[str, Any]

    def on(self, now: float) -> bool:
        return self.start_s <= now and (self.end_s is None or now < self.end_s)


def _parse(spec: AdversarySpec) -> dict[str, Any]:
    p = dict(spec.params)
    p.pop("count", None)
    p.pop("offset", None)
    unknown = sorted(set(p) - _PARAMS[spec.strategy])
    if unknown:
        raise ValueError(f"adversary {spec.strategy}: unknown param {unknown[0]!r} "
                         f"(known: count, offset, {', '.join(sorted(_PARAMS[spec.strategy]))})")
    try:
        return {
            "collude": _bool(p.get("collude", True)),
            "probability": _prob(p.get("probability", 1.0)),
            "checkpoints": _bool(p.get("checkpoints", False)),
            "impersonate": _bool(p.get("impersonate", True)),
        }
    except (TypeError, ValueError) as exc:
        raise ValueError(f"adversary {spec.strategy}: {exc}") from None


def _select(spec: AdversarySpec, byz: frozenset[int]) -> list[int]:
    nodes = sorted(byz if spec.nodes is None else spec.nodes)
    honest = [n for n in nodes if n not in byz]
    if honest:
        raise ValueError(
            f"adversary {spec.strategy}: node {honest[0]} is not Byzantine (adversaries "
            "run only on Byzantine nodes; use nodes = \"byzantine\" and count/offset)")
    if spec.strategy in STRATEGIES:
        try:
            offset = int(spec.params.get("offset", 0))
            count = int(spec.params.get("count", len(nodes)))
        except (TypeError, ValueError):
            raise ValueError(f"adversary {spec.strategy}: count/offset must be integers") \
                from None
        if offset < 0 or count < 0:
            raise ValueError(f"adversary {spec.strategy}: count/offset must be >= 0")
        nodes = nodes[offset:offset + count]
    return nodes


class Coordinator:
    """Resolves the run's adversary specs to per-node processes; also the colluding
    Byzantine nodes' shared blackboard (which (view, seq) the primary forked)."""

    def __init__(self, wl: Any, spec: RunSpec) -> None:
        self.wl = wl
        self.byz = spec.byzantine
        n = spec.nodes
        self.half_a = frozenset(range((n + 1) // 2))
        self.forks: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.per_node: dict[int, list[Active]] = {}
        generic_nodes: set[int] = set()
        for adv in spec.timeline.adversaries:
            nodes = _select(adv, self.byz)
            if adv.strategy not in STRATEGIES:
                generic_nodes.update(nodes)
                continue
            params = _parse(adv)
            for node in nodes:
                self.per_node.setdefault(node, []).append(
                    Active(adv.strategy, adv.start_s, adv.end_s, params))
        self.silent = frozenset(self.byz - set(self.per_node) - generic_nodes)
        self.twins = frozenset(n for n, acts in self.per_node.items()
                               if any(a.name == "twins" for a in acts))
        self.forged = 0
        self.withheld = 0
        self.equivocations = 0

    def half(self, node: int) -> int:
        return 0 if node in self.half_a else 1

    def process_for(self, node: int) -> BaseProcess | None:
        """The process of a Byzantine ``node`` (None: an honest replica)."""
        if node in self.silent:
            return SilentProcess()
        strategies = self.per_node.get(node)
        if not strategies:
            return None
        if any(s.name == "twins" for s in strategies):
            return TwinsProcess(node, self.wl, self, strategies)
        return ByzantineProcess(node, self.wl, self, strategies)

    def describe(self) -> dict[str, Any]:
        names: dict[str, int] = {}
        for node in sorted(self.per_node):
            for s in self.per_node[node]:
                names[s.name] = names.get(s.name, 0) + 1
        return {"silent_nodes": len(self.silent), "nodes_per_strategy": names,
                "equivocations": self.equivocations, "withheld_votes": self.withheld,
                "forged_messages": self.forged}


class SilentProcess(BaseProcess):
    """A Byzantine node that says nothing (and ignores what it is sent)."""

    ignores_messages = True


class ByzantineProcess(PbftProcess):
    """A real replica whose outputs go through the node's strategies (module doc)."""

    def __init__(self, node: int, wl: Any, coord: Coordinator, strategies: list[Active]) -> None:
        super().__init__(node, wl)
        self.coord = coord
        self.strategies = strategies

    def _active(self, name: str, now: float) -> Active | None:
        for s in self.strategies:
            if s.name == name and s.on(now):
                return s
        return None

    def send(self, ctx: Context, out: Outbound, replica: Replica) -> None:
        idx = self.wl.index
        parts = [([idx[m] for m in out.to], out.msg)]
        now = ctx.now
        if self._active("equivocating-primary", now):
            parts = [p for d, m in parts for p in self._equivocate(ctx, d, m)]
        wh = self._active("vote-withholding", now)
        if wh is not None:
            parts = [(d, m) for d, m in parts if not self._withhold(ctx, wh, m)]
        forge = self._active("forged-signatures", now)
        if forge is not None:
            parts = [p for d, m in parts for p in self._forge(ctx, forge, d, m)]
        for dests, msg in parts:
            if dests:
                ctx.broadcast(dests, encode_message(msg))

    # -- strategies ---------------------------------------------------------------------
    def _resign(self, ctx: Context, msg: Any, **changes: Any) -> Any:
        unsigned = _replace(msg, sig=b"", **changes)
        return _replace(unsigned, sig=ctx.sign(self.signer, unsigned.signing_bytes()))

    def _split(self, dests: list[int]) -> tuple[list[int], list[int]]:
        a = [d for d in dests if d in self.coord.half_a]
        return a, [d for d in dests if d not in self.coord.half_a]

    def _equivocate(self, ctx: Context, dests: list[int], msg: Any) -> list[tuple[list[int], Any]]:
        coord = self.coord
        if isinstance(msg, PrePrepare) and msg.sender == self.me and msg.batch is not None:
            a, b = self._split(dests)
            if not a or not b:
                return [(dests, msg)]
            batch = msg.batch
            evil = self._resign(ctx, Request("evil", msg.seq, b"equivocation", self.me))
            other = dataclasses.replace(batch, requests=(*batch.requests[::-1], evil))
            forked = self._resign(ctx, msg, digest=batch_digest(other), batch=other)
            coord.forks[(msg.view, msg.seq)] = (msg.digest, forked.digest)
            coord.equivocations += 1
            return [(a, msg), (b, forked)]
        if isinstance(msg, (Prepare, Commit)):
            fork = coord.forks.get((msg.view, msg.seq))
            act = self._active("equivocating-primary", ctx.now)
            if fork is not None and act is not None and act.params["collude"]:
                a, b = self._split(dests)
                va = msg if msg.digest == fork[0] else self._resign(ctx, msg, digest=fork[0])
                vb = msg if msg.digest == fork[1] else self._resign(ctx, msg, digest=fork[1])
                return [(a, va), (b, vb)]
        return [(dests, msg)]

    def _withhold(self, ctx: Context, act: Active, msg: Any) -> bool:
        kinds: tuple[type, ...] = (Prepare, Commit)
        if act.params["checkpoints"]:
            kinds += (Checkpoint,)
        if isinstance(msg, kinds) and (act.params["probability"] >= 1.0
                                       or ctx.rng.random() < act.params["probability"]):
            self.coord.withheld += 1
            return True
        return False

    def _forge(self, ctx: Context, act: Active, dests: list[int], msg: Any) -> list[tuple]:
        if not hasattr(msg, "sig") or not msg.sig:
            return [(dests, msg)]
        p = act.params["probability"]
        if p < 1.0 and ctx.rng.random() >= p:
            return [(dests, msg)]
        self.coord.forged += 1
        bad = _replace(msg, sig=bytes([msg.sig[0] ^ 0x01]) + msg.sig[1:])
        out = [(dests, bad)]
        if act.params["impersonate"]:
            ids = self.wl.ids
            other = ids[(self.node + 1 + ctx.rng.randrange(len(ids) - 1)) % len(ids)]
            who = "origin" if isinstance(msg, Request) else "sender"
            out.append((dests, _replace(msg, **{who: other})))
        return out


class TwinsProcess(ByzantineProcess):
    """Two replicas with one key (module doc). World ``A`` is twin A of every twins node
    plus the other members of the first half; world ``B`` likewise. Twins nodes tag
    the frames they send each other with their world (colluding nodes may coordinate;
    honest nodes never see a tagged frame). Twins keep no durable state (a faulty node
    may forget)."""

    TAGS = (b"\x00A", b"\x00B")

    def __init__(self, node: int, wl: Any, coord: Coordinator, strategies: list[Active]) -> None:
        super().__init__(node, wl, coord, strategies)
        self.twin: Replica | None = None

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.replica, self.twin = self.new_replica(), self.new_replica()
        ctx.set_timer(self.wl.tick_s, "tick")
        self._drain_both(ctx)

    def on_restart(self, ctx: Context) -> None:
        self.on_start(ctx)

    def persist(self, ctx: Context, rec: Any) -> None:
        return None

    def _drain_both(self, ctx: Context) -> None:
        self.drain(ctx, self.replica)
        self.drain(ctx, self.twin)

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        world = None
        if sender in self.coord.twins and payload[:2] in self.TAGS:
            world = self.TAGS.index(payload[:2])
            payload = payload[2:]
        msg = self.wl.decoder.decode(payload)
        if msg is None:
            return
        self.ctx = ctx
        if world is None:
            world = self.coord.half(sender)
        target = self.replica if world == 0 else self.twin
        assert target is not None
        target.step(msg, sender=self.wl.ids[sender])
        self.drain(ctx, target)

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if timer_id != "tick":
            return
        self.ctx = ctx
        for r in (self.replica, self.twin):
            assert r is not None
            r.tick()
        ctx.set_timer(self.wl.tick_s, "tick")
        self._drain_both(ctx)

    def submit(self, ctx: Context, op: bytes, client: str, rid: int) -> None:
        return None  # load goes to honest nodes only

    def send(self, ctx: Context, out: Outbound, replica: Replica) -> None:
        world = 0 if replica is self.replica else 1
        idx, twins = self.wl.index, self.coord.twins
        plain = tuple(m for m in out.to if idx[m] not in twins
                      and self.coord.half(idx[m]) == world)
        if plain:
            super().send(ctx, Outbound(out.msg, plain), replica)
        tagged = [idx[m] for m in out.to if idx[m] in twins]
        if tagged:
            ctx.broadcast(tagged, self.TAGS[world] + encode_message(out.msg))


def check_nodes(spec: RunSpec) -> None:
    """Raise ``ValueError`` when an adversary (PBFT or generic) names an honest node."""
    for adv in spec.timeline.adversaries:
        if adv.strategy in STRATEGIES or adv.strategy in generic.GENERIC:
            _select(adv, spec.byzantine)
