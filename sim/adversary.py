"""Protocol-independent Byzantine behaviours, applied by wrapping a node's process.

These need no knowledge of the protocol: they act on bytes. Protocol-specific ones
(equivocating primary, vote withholding, forged signatures, twins) belong to the
workload, which lists them in ``Workload.adversaries``.

* ``silent``: the node does nothing at all (crash-like, but counted as Byzantine).
* ``delay`` (``by = "2s"``): everything the node sends leaves ``by`` later.
* ``replay`` (``probability = 0.1``, ``after = "1s"``): each received payload is, with
  that probability, re-sent verbatim to a random other node ``after`` later.
* ``garbage`` (``rate = 10``, ``size = 200``): ``rate`` frames per second of random
  bytes to random nodes.

Each strategy is active between its ``from`` and ``until`` times. Randomness comes from
``ctx.rng``, so runs stay replayable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from sim.process import BaseProcess, Context, Process
from sim.scenario import AdversarySpec
from sim.units import parse_duration, parse_probability

__all__ = ["GENERIC", "Adversarial", "wrap"]

GENERIC = frozenset({"silent", "delay", "replay", "garbage"})
_TAG = "__adversary__"


class _DelayedCtx:
    """A ctx whose sends are postponed by ``delay_s`` through the node's own timers."""

    def __init__(self, ctx: Context, owner: Adversarial, delay_s: float) -> None:
        self._ctx, self._owner, self._delay = ctx, owner, delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def send(self, dest: int, payload: bytes) -> None:
        self._owner.later(self._ctx, self._delay, [dest], payload)

    def broadcast(self, dests: Iterable[int], payload: bytes) -> None:
        self._owner.later(self._ctx, self._delay, list(dests), payload)


class Adversarial(BaseProcess):
    """Wraps ``inner`` with the generic strategies in ``specs`` (see the module doc).
    Raises ``ValueError`` for unknown names or bad parameters."""

    def __init__(self, inner: Process, specs: list[AdversarySpec]) -> None:
        self.inner = inner
        self.specs = specs
        self._pending: dict[int, tuple[list[int], bytes]] = {}
        self._next = 0
        for spec in specs:
            if spec.strategy not in GENERIC:
                raise ValueError(f"{spec.strategy!r} is not a generic adversary strategy")
            _params(spec)  # validate early

    def _active(self, name: str, now: float) -> AdversarySpec | None:
        for spec in self.specs:
            if spec.strategy == name and spec.start_s <= now and (
                spec.end_s is None or now < spec.end_s
            ):
                return spec
        return None

    def _wrap_ctx(self, ctx: Context) -> Context | None:
        if self._active("silent", ctx.now):
            return None
        delay = self._active("delay", ctx.now)
        return _DelayedCtx(ctx, self, _params(delay)["by"]) if delay else ctx  # type: ignore[return-value]

    def later(self, ctx: Context, delay_s: float, dests: list[int], payload: bytes) -> None:
        self._next += 1
        self._pending[self._next] = (dests, payload)
        ctx.set_timer(delay_s, (_TAG, "send", self._next))

    def on_start(self, ctx: Context) -> None:
        for spec in self.specs:
            if spec.strategy == "garbage":
                timer = (_TAG, "garbage", id_of(spec, self.specs))
                ctx.set_timer(max(0.0, spec.start_s - ctx.now), timer)
        inner_ctx = self._wrap_ctx(ctx)
        if inner_ctx is not None:
            self.inner.on_start(inner_ctx)

    def on_restart(self, ctx: Context) -> None:
        self._pending.clear()
        self.on_start(ctx)

    def on_crash(self) -> None:
        self.inner.on_crash()

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        replay = self._active("replay", ctx.now)
        if replay and ctx.rng.random() < _params(replay)["probability"]:
            others = [i for i in range(ctx.n_nodes) if i != ctx.node_id]
            if others:
                self.later(ctx, _params(replay)["after"], [ctx.rng.choice(others)], payload)
        inner_ctx = self._wrap_ctx(ctx)
        if inner_ctx is not None:
            self.inner.on_message(inner_ctx, sender, payload)

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if isinstance(timer_id, tuple) and timer_id and timer_id[0] == _TAG:
            self._own_timer(ctx, timer_id)
            return
        inner_ctx = self._wrap_ctx(ctx)
        if inner_ctx is not None:
            self.inner.on_timer(inner_ctx, timer_id)

    def _own_timer(self, ctx: Context, timer_id: tuple) -> None:
        if timer_id[1] == "send":
            dests, payload = self._pending.pop(timer_id[2])
            ctx.broadcast(dests, payload)
            return
        spec = self.specs[timer_id[2]]
        if spec.end_s is not None and ctx.now >= spec.end_s:
            return
        params = _params(spec)
        others = [i for i in range(ctx.n_nodes) if i != ctx.node_id]
        if others:
            ctx.send(ctx.rng.choice(others), ctx.rng.randbytes(params["size"]))
        ctx.set_timer(1.0 / params["rate"], timer_id)


def id_of(spec: AdversarySpec, specs: list[AdversarySpec]) -> int:
    return next(i for i, s in enumerate(specs) if s is spec)


def _params(spec: AdversarySpec) -> dict[str, Any]:
    p = spec.params
    try:
        if spec.strategy == "delay":
            return {"by": parse_duration(p.get("by", "1s"))}
        if spec.strategy == "replay":
            return {"probability": parse_probability(p.get("probability", 0.1)),
                    "after": parse_duration(p.get("after", "1s"))}
        if spec.strategy == "garbage":
            rate, size = float(p.get("rate", 10)), int(p.get("size", 200))
            if not 0 < rate <= 10_000 or not 0 <= size <= 1 << 20:
                raise ValueError("rate must be in (0, 10000] and size in [0, 1MiB]")
            return {"rate": rate, "size": size}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"adversary {spec.strategy}: {exc}") from None
    return {}


def wrap(world: Any, byzantine: Iterable[int], specs: Iterable[AdversarySpec]) -> int:
    """Wrap the processes of ``world`` for every generic strategy in ``specs`` (nodes
    ``None`` means all of ``byzantine``). Keeps each node's factory working. Returns the
    number of nodes wrapped. Raises ``ValueError`` for bad parameters."""
    by_node: dict[int, list[AdversarySpec]] = {}
    for spec in specs:
        if spec.strategy in GENERIC:
            for node in sorted(set(byzantine) if spec.nodes is None else spec.nodes):
                by_node.setdefault(node, []).append(spec)
    for node in sorted(by_node):
        host = world.hosts[node]
        mine, inner_factory = by_node[node], host.factory
        factory = None
        if inner_factory is not None:
            def factory(n: int, f: Any = inner_factory, s: list = mine) -> Process:
                return Adversarial(f(n), s)
        world.attach(node, Adversarial(host.process, mine), factory)
    return len(by_node)
