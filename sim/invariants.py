"""Invariant checkers: safety and liveness properties watched during a run.

Checkers are incremental: they keep just enough state to judge each new observation
(a node's ``ctx.decided(seq, digest, proof)``) in O(1), so they can run inside every
event. Checkers that need to look at the world after every event implement
``after_event`` and are called by the engine after each event; time-based ones
(liveness) schedule their own deadline events.

A violation records the checker, whether it is a *safety* violation (exit code 2) or a
liveness one (a missed target, exit code 1), the seed, the virtual time, the node and
the engine event that was running (``Engine.describe_current``). The first safety
violation is what the report shows; all are counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.engine import Engine
    from sim.world import World

__all__ = ["Agreement", "Checker", "Invariants", "LivenessAfterHeal", "Validity", "Violation"]


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken invariant. ``time_s`` is virtual seconds."""

    checker: str
    safety: bool
    message: str
    seed: int
    time_s: float
    node: int | None
    event: str

    def one_line(self) -> str:
        kind = "SAFETY" if self.safety else "liveness"
        where = "" if self.node is None else f" at node {self.node}"
        return (
            f"{kind} violation ({self.checker}){where}: {self.message} "
            f"[seed {self.seed}, {self.event}]"
        )


class Checker:
    """Base class. Subclasses set ``name`` and ``safety`` and override hooks:
    ``attach(world)`` (subscribe, schedule), ``on_decided(node, time_s, seq, digest,
    proof)``, and optionally ``after_event()`` (set ``per_event = True``)."""

    name = "checker"
    safety = True
    per_event = False

    def __init__(self) -> None:
        self._inv: Invariants | None = None

    def bind(self, invariants: Invariants) -> None:
        self._inv = invariants

    def attach(self, world: World) -> None:
        world.subscribe("decided", self.on_decided)

    def on_decided(self, node: int, time_s: float, seq: int, digest: bytes, proof: Any) -> None:
        return None

    def after_event(self) -> None:
        return None

    def fail(self, message: str, node: int | None = None) -> None:
        """Report a violation of this checker."""
        assert self._inv is not None, "checker not registered"
        self._inv.report(self, message, node)


class Invariants:
    """The registry of checkers for one run; owns the violation list."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.checkers: list[Checker] = []
        self.violations: list[Violation] = []
        self._per_event: list[Checker] = []
        self._hooked = False

    def register(self, checker: Checker, world: World | None = None) -> Checker:
        """Add ``checker``; when ``world`` is given, ``checker.attach(world)`` too."""
        checker.bind(self)
        self.checkers.append(checker)
        if world is not None:
            checker.attach(world)
        if checker.per_event:
            self._per_event.append(checker)
            if not self._hooked:
                self._engine.add_after_event(self._after_event)
                self._hooked = True
        return checker

    def _after_event(self) -> None:
        for checker in self._per_event:
            checker.after_event()

    def report(self, checker: Checker, message: str, node: int | None) -> None:
        self.violations.append(Violation(
            checker=checker.name, safety=checker.safety, message=message,
            seed=self._engine.seed, time_s=self._engine.now, node=node,
            event=self._engine.describe_current(),
        ))

    @property
    def safety_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.safety]

    @property
    def first_safety(self) -> Violation | None:
        return next((v for v in self.violations if v.safety), None)


class Agreement(Checker):
    """No two honest nodes decide different digests at one sequence number, and no
    honest node decides twice at one sequence number with different digests.

    ``honest``: node ids whose decisions count (Byzantine nodes may say anything).
    """

    name = "agreement"

    def __init__(self, honest: Collection[int]) -> None:
        super().__init__()
        self._honest = frozenset(honest)
        self._first: dict[int, tuple[bytes, int]] = {}
        self._by_node: dict[tuple[int, int], bytes] = {}

    def on_decided(self, node: int, time_s: float, seq: int, digest: bytes, proof: Any) -> None:
        if node not in self._honest:
            return
        mine = self._by_node.setdefault((node, seq), digest)
        if mine != digest:
            self.fail(f"node decided seq {seq} twice: {mine.hex()[:16]} then "
                      f"{digest.hex()[:16]}", node)
            return
        first = self._first.setdefault(seq, (digest, node))
        if first[0] != digest:
            self.fail(f"seq {seq}: node {node} decided {digest.hex()[:16]} but node "
                      f"{first[1]} decided {first[0].hex()[:16]}", node)


class Validity(Checker):
    """Every honest decision carries a proof that ``check(node, seq, digest, proof)``
    accepts (e.g. a commit certificate that verifies with the members' keys)."""

    name = "validity"

    def __init__(
        self, honest: Collection[int], check: Callable[[int, int, bytes, Any], bool],
    ) -> None:
        super().__init__()
        self._honest = frozenset(honest)
        self._check = check

    def on_decided(self, node: int, time_s: float, seq: int, digest: bytes, proof: Any) -> None:
        if node in self._honest and not self._check(node, seq, digest, proof):
            self.fail(f"seq {seq} decided without a valid proof", node)


class LivenessAfterHeal(Checker):
    """After the network heals at ``heal_s``, every honest node that is up must decide
    something new within ``within_s`` seconds (checked once, at ``heal_s + within_s``).
    A liveness checker: a violation is a missed target, not a safety break."""

    name = "liveness-after-heal"
    safety = False

    def __init__(self, honest: Collection[int], heal_s: float, within_s: float) -> None:
        super().__init__()
        self._honest = sorted(honest)
        self.heal_s = heal_s
        self.within_s = within_s
        self._last: dict[int, float] = {}
        self._world: World | None = None

    def attach(self, world: World) -> None:
        super().attach(world)
        self._world = world
        world.engine.schedule_at(
            max(world.engine.now, self.heal_s + self.within_s), self._deadline
        )

    def on_decided(self, node: int, time_s: float, seq: int, digest: bytes, proof: Any) -> None:
        # time_s is the node's local clock, which may run ahead of the deadline event
        # (sim.cpu runs work ahead of time): a decision after the deadline is too late.
        if time_s <= self.heal_s + self.within_s:
            self._last[node] = max(time_s, self._last.get(node, -1.0))

    def _deadline(self) -> None:
        assert self._world is not None
        stuck = [
            n for n in self._honest
            if self._world.is_up(n) and self._last.get(n, -1.0) <= self.heal_s
        ]
        if stuck:
            shown = ", ".join(str(n) for n in stuck[:10])
            self.fail(f"{len(stuck)} honest node(s) decided nothing within "
                      f"{self.within_s:g}s of the heal at {self.heal_s:g}s: {shown}")
