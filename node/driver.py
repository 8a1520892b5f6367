"""Drives the pure PBFT replica with real time, the HSM, sqlite and the transport.

Theory of operation
-------------------
The replica (:mod:`consensus.replica`) is a pure state machine; this shell feeds it and
carries out its effects, following the Ready/Advance contract of
:mod:`consensus.effects`:

1. inputs: frames from the ``consensus`` channel are decoded and stepped in (a frame
   that does not decode is dropped and counted against its sender); a timer calls
   ``tick()`` every ``tick_s`` seconds (one tick = ``tick_s`` of wall time);
2. one pump task takes each Ready and, in order: appends ``persist`` records to sqlite
   in a worker thread (one fsync'd transaction) — *before* anything is sent; signs all
   ``sign_requests`` with the HSM in a worker thread (python-pkcs11 calls are serialised
   by the token's lock) and hands the signatures back; sends ``messages``; delivers
   ``committed`` decisions to waiters; then ``advance()``.

Inputs that arrive while the pump awaits a thread land in the next Ready (the core
allows that), so the trio loop never blocks on disk or the HSM.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from consensus.effects import Decision, Ready
from consensus.messages import MessageDecodeError, Request, decode_message, encode_message
from consensus.replica import Replica
from consensus.wire import MAX_OP_BYTES

log = logging.getLogger("meshnode.consensus")

__all__ = ["CHANNEL", "ConsensusDriver", "NotAMemberError", "ProposeError"]


class ProposeError(RuntimeError):
    """An operation this node cannot submit (the message says why, in one line)."""


class NotAMemberError(ProposeError):
    """An operation submitted at a node that is not (yet) a member of the mesh."""

CHANNEL = "consensus"


class ConsensusDriver:
    """One replica's shell.

    ``persist(records)`` must write durably (called in a worker thread);
    ``sign_all(list of bytes) -> list of 64-byte signatures`` signs with the node key
    (worker thread); ``send(peer_id, channel, payload) -> bool`` queues a frame;
    ``tick_s`` is the wall-clock length of one tick (seconds).
    """

    def __init__(
        self,
        replica: Replica,
        *,
        persist: Callable[[Sequence[Any]], None],
        sign_all: Callable[[list[bytes]], list[bytes]],
        send: Callable[[str, str, bytes], bool],
        tick_s: float,
        on_decision: Callable[[Decision], None] | None = None,
        max_op_bytes: int = MAX_OP_BYTES,
    ) -> None:
        self.replica = replica
        self._persist = persist
        self._sign_all = sign_all
        self._send = send
        self.tick_s = tick_s
        self.on_decision = on_decision
        self.max_op_bytes = max_op_bytes
        # this driver's client id within its member (fresh per incarnation, so request ids
        # restart at 1 without colliding with the previous run's)
        self.client_id = f"run-{os.urandom(4).hex()}"
        self._next_rid = 0
        self._wake = trio.Event()
        self._waiters: dict[tuple[str, str, int], trio.MemorySendChannel] = {}
        #: Serialises storage and HSM calls: python-pkcs11 + SoftHSM must never see two
        #: concurrent calls, so every HSM signature in the process goes through it.
        self.io_limiter = trio.CapacityLimiter(1)
        self.decode_drops: Counter[str] = Counter()
        #: messages the transport refused to send, by message type (a local limit or
        #: bug, logged; the replica's re-sends and state transfer repair what they can)
        self.send_errors: Counter[str] = Counter()
        self.last_decision: Decision | None = None

    # ---- inputs -----------------------------------------------------------------------
    def on_frame(self, peer_id: str, payload: bytes) -> None:
        """Step one received frame in; undecodable frames are dropped and counted."""
        try:
            msg = decode_message(payload)
        except MessageDecodeError as exc:
            self.decode_drops[peer_id] += 1
            log.debug("dropped undecodable frame from %s: %s", peer_id, exc)
            return
        self.replica.step(msg, sender=peer_id)
        self._wake.set()

    async def propose(self, op: bytes) -> Decision:
        """Submit ``op`` and wait until a decision containing it is executed here.
        Returns that :class:`Decision` (its ``seq`` and ``certificate``)."""
        decision, _ = await self.propose_for_result(op)
        return decision

    async def propose_for_result(self, op: bytes, *, client: str | None = None,
                                 rid: int | None = None) -> tuple[Decision, bytes]:
        """Like :meth:`propose`, also returning the application's result for ``op``.
        ``client``/``rid`` override this driver's own client id and counter (system
        requests such as membership changes use ``consensus.membership.MEMBERS_CLIENT``).
        Raises :class:`NotAMemberError` when this node is not a member of the current
        member set (requests are signed by the member that submits them) and
        :class:`ProposeError` when ``op`` is longer than ``max_op_bytes`` (default
        :data:`consensus.wire.MAX_OP_BYTES`, 1 MiB; the node uses less, see
        :data:`node.runtime.NODE_MAX_OP_BYTES`); :class:`NotAMemberError` too when
        the node is removed from the member set while the operation waits."""
        if self.replica.me not in self.replica.members:
            raise NotAMemberError(
                f"this node ({self.replica.me}) is not a member of the mesh: only members "
                "submit operations (ask the members to add it: meshnode members add)")
        if len(op) > self.max_op_bytes:
            raise ProposeError(f"an operation is at most {self.max_op_bytes} bytes, "
                               f"got {len(op)}")
        if client is None:
            self._next_rid += 1
            client, rid = self.client_id, self._next_rid
        key = (self.replica.me, client, rid)
        send, receive = trio.open_memory_channel[Decision](1)
        self._waiters[key] = send
        try:
            self.replica.propose(op, client=client, rid=rid)
            self._wake.set()
            try:
                decision = await receive.receive()
            except trio.EndOfChannel:
                if self.replica.me not in self.replica.members:
                    raise NotAMemberError(
                        f"this node ({self.replica.me}) left the member set before the "
                        "operation was decided; it was dropped") from None
                raise ProposeError(
                    "the operation was executed, but this node caught up past it by state "
                    "transfer (a snapshot), so it holds no decision for it") from None
        finally:
            self._waiters.pop(key, None)
        for request, result in zip(decision.batch.requests, decision.results, strict=True):
            if request.key == key:
                return decision, result
        raise AssertionError("a delivered decision must contain the awaited request")

    # ---- the pump ---------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Tick and pump until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self.replica.has_ready():
                    await self._carry_out(self.replica.ready())

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_s)
            self.replica.tick()
            self._wake.set()

    async def _carry_out(self, ready: Ready) -> None:
        if ready.persist:
            await trio.to_thread.run_sync(self._persist, ready.persist,
                                          limiter=self.io_limiter)
        if ready.sign_requests:
            datas = [r.data for r in ready.sign_requests]
            sigs = await trio.to_thread.run_sync(self._sign_all, datas,
                                                 limiter=self.io_limiter)
            for request, sig in zip(ready.sign_requests, sigs, strict=True):
                self.replica.signed(request.id, sig)
        for out in ready.messages:
            payload = encode_message(out.msg)
            for peer_id in out.to:
                try:
                    self._send(peer_id, CHANNEL, payload)
                except ValueError as exc:  # e.g. over the transport's frame limit
                    self.send_errors[type(out.msg).__name__] += 1
                    log.error("could not send %s (%d bytes) to %s: %s",
                              type(out.msg).__name__, len(payload), peer_id, exc)
        for decision in ready.committed:
            self._deliver(decision)
        self.replica.advance(ready)
        if self._waiters and not self.replica.has_ready():
            self._release_orphans()  # quiescent: every Decision made so far was delivered

    def _release_orphans(self) -> None:
        """Close the waiters no Decision will ever reach: all of them once this node
        left the member set (its pooled requests were dropped), and those whose request
        executed inside a snapshot this node installed (no Decision is emitted then)."""
        gone = self.replica.me not in self.replica.members
        state = self.replica.state
        for key in sorted(self._waiters):
            if gone or state.is_duplicate(Request(key[1], key[2], b"", key[0])):
                self._waiters.pop(key).close()

    def _deliver(self, decision: Decision) -> None:
        self.last_decision = decision
        log.debug("decided seq %d (%d requests)", decision.seq, len(decision.batch.requests))
        if self.on_decision is not None:
            self.on_decision(decision)
        for request in decision.batch.requests:
            waiter = self._waiters.pop(request.key, None)
            if waiter is not None:
                waiter.send_nowait(decision)
