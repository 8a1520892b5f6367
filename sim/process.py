"""The adapter interface: what a protocol node implements to be simulated.

A simulated node is a :class:`Process`. The simulator calls it with a :class:`Context`
(``ctx``) every time the node's CPU picks up a work item: ``on_start`` once, then
``on_message`` for each delivered payload and ``on_timer`` for each timer it set.
Everything a process says to the world goes through ``ctx``: ``send`` bytes, set timers,
``charge`` CPU time, ``verify``/``sign`` (charged), ``persist`` to its crash-safe disk,
and ``decided``/``observe`` for invariant checkers and metrics.

Rules for adapters (they are what make a run replayable):

* payloads are ``bytes``: encode with the real codec before ``send`` and decode inside
  ``on_message`` (the simulator charges per-byte codec cost on both sides);
* all randomness from ``ctx.rng`` (a per-node child of the engine's seed), all time from
  ``ctx.now`` (virtual seconds); never ``time``, never the global ``random``;
* remote input is hostile: a bad payload must be dropped, not raise. An exception out of
  a handler is a bug in the node and aborts the run (crash-only);
* ``on_crash`` is a notification: after it the process object is discarded when a
  factory was given to ``World.attach`` (recommended: a restart then really starts from
  ``ctx.disk`` only); ``on_restart`` rebuilds state from ``ctx.disk``.

A sketch of the Ready-style wiring (PBFT ``step/tick/propose/ready/advance``) is in
``sim/README.md``.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, MutableMapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["BaseProcess", "Context", "Process"]


class Context(Protocol):
    """The node's view of the simulated world while it handles one work item.

    ``node_id``: this node (int, ``0 .. n_nodes-1``). ``n_nodes``: size of the mesh.
    ``now``: the node's local virtual clock in seconds; it starts at the time the work
    item was dequeued and advances as costs are charged, so sends made later in a
    handler leave later. ``rng``: this node's ``random.Random``. ``disk``: a mapping that
    survives crashes (values should be ``bytes``).
    """

    node_id: int
    n_nodes: int
    rng: random.Random
    disk: MutableMapping[Any, bytes]

    @property
    def now(self) -> float: ...

    @property
    def arrived_s(self) -> float | None:
        """In ``on_message``: virtual time the message arrived at this node (it may then
        have waited for the CPU until the handler's start); None elsewhere."""
        ...

    def send(self, dest: int, payload: bytes) -> None:
        """Send ``payload`` to node ``dest``; charges ``encode_s + send_s +
        encode_byte_s*len``.
        Raises ``ValueError`` for an unknown node, ``TypeError`` for non-bytes."""
        ...

    def broadcast(self, dests: Iterable[int], payload: bytes) -> None:
        """Send one payload to many nodes: the encode costs are charged once,
        ``send_s`` per destination; sends leave in the order of ``dests``."""
        ...

    def set_timer(self, delay_s: float, timer_id: Hashable) -> None:
        """Fire ``on_timer(ctx, timer_id)`` after ``delay_s`` seconds (from ``now``);
        replaces a pending timer with the same id. Timers die with a crash."""
        ...

    def cancel_timer(self, timer_id: Hashable) -> None:
        """Cancel the pending timer ``timer_id`` (no-op when none)."""
        ...

    def charge(self, cost_s: float) -> None:
        """Spend ``cost_s`` seconds of this node's CPU (>= 0)."""
        ...

    def charge_verify(self, count: int = 1) -> None:
        """Charge ``count`` Ed25519 verifications (for cores that verify internally)."""
        ...

    def charge_sign(self, count: int = 1) -> None:
        """Charge ``count`` HSM signatures."""
        ...

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        """Verify an Ed25519 signature (real, cached across nodes); charges one verify."""
        ...

    def sign(self, signer: Any, data: bytes) -> bytes:
        """``signer.sign(data)`` (a real signature), charging one HSM signature."""
        ...

    def persist(self, key: Any, value: bytes) -> None:
        """Write ``disk[key] = value`` durably, charging ``persist_s``."""
        ...

    def decided(self, seq: int, digest: bytes, proof: Any = None) -> None:
        """Announce that this node decided ``digest`` at sequence number ``seq``; feeds
        the agreement/validity checkers and commit metrics."""
        ...

    def observe(self, topic: str, *args: Any) -> None:
        """Publish a free-form observation to subscribers of ``topic``."""
        ...


@runtime_checkable
class Process(Protocol):
    """A protocol node driven by the simulator (see the module doc)."""

    def on_start(self, ctx: Context) -> None:
        """Called once, at the node's start time."""
        ...

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        """A payload from node ``sender`` arrived (bytes as sent; possibly hostile)."""
        ...

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        """The timer ``timer_id`` set with ``ctx.set_timer`` fired."""
        ...

    def on_crash(self) -> None:
        """The node crashed (no ctx: it can no longer act). Volatile state is lost."""
        ...

    def on_restart(self, ctx: Context) -> None:
        """The node restarted; rebuild from ``ctx.disk``."""
        ...


class BaseProcess:
    """Convenience base: no-op handlers; ``on_restart`` calls ``on_start``.

    A subclass whose ``on_message`` does nothing at all may set ``ignores_messages =
    True``: the world then drops messages to it at send time (a speed-up only)."""

    ignores_messages = False

    def on_start(self, ctx: Context) -> None:
        return None

    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        return None

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        return None

    def on_crash(self) -> None:
        return None

    def on_restart(self, ctx: Context) -> None:
        self.on_start(ctx)
