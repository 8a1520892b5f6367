"""Client requests, batching and the replica's timers (Castro & Liskov, TOCS 2002, 4.1-4.2, 4.5.2).

Theory of operation
-------------------
Every replica keeps a pool of pending requests (``pending``, arrival order) fed by
``propose`` and by REQUEST messages from members. A request is signed by the member that
submitted it (its ``origin``, :class:`~consensus.messages.Request`): ``propose`` signs it
(inline or through a sign request) and persists it before it is sent; a received one
counts only when its origin is a member and the signature verifies, and a PRE-PREPARE
whose batch holds a request that does not is dropped. Requests already executed
(per-client request id, :class:`~consensus.state.ReplicatedState`) or already pending
are ignored before any signature check, so duplicates cost a dict lookup. The primary
cuts a batch when ``batch_size`` requests are free (not yet in a pre-prepare) or the
oldest free one has waited ``batch_timeout`` ticks, or when it holds equivocation
evidence to commit; it never opens more than ``max_inflight`` batches beyond the last
executed one nor goes past the high watermark. After a membership change, pooled
requests whose origin left the member set are dropped.

Timers. A replica that waits for work (pending requests, or accepted pre-prepares not yet
executed) runs the view-change timer; executing anything restarts it. Every
``resend_interval`` ticks it re-sends its own messages for unfinished sequence numbers,
its checkpoint, its view change, and pulls state from one peer when it made no progress
(anti-entropy). Requests proposed here are re-broadcast once per view timeout until they
execute, as a PBFT client retransmits.
"""

from __future__ import annotations

from typing import Any

from .messages import Batch, PrePrepare, Request, batch_digest
from .wire import MAX_ITEMS, MAX_OP_BYTES

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "MAX_EVIDENCE", "MAX_EVIDENCE_BYTES",
           "RequestsMixin", "request_bytes", "within_limits"]

#: Protocol limits every replica applies to a PRE-PREPARE's batch, whatever its own
#: batching configuration: at most this many requests and request bytes
#: (:func:`request_bytes`), so a PRE-PREPARE and a commit certificate fit the 4 MiB
#: message limit. A primary cuts batches by its ``Config.batch_size`` and
#: ``Config.max_batch_bytes``, which must not exceed them.
MAX_BATCH_REQUESTS = MAX_ITEMS
MAX_BATCH_BYTES = 3 * MAX_OP_BYTES
#: At most this many equivocation proofs per batch, each at most MAX_EVIDENCE_BYTES
#: (``a`` plus ``b``: two stripped PRE-PREPAREs, PREPAREs or COMMITs take under 800).
MAX_EVIDENCE = 16
MAX_EVIDENCE_BYTES = 1024


def request_bytes(req: Request) -> int:
    """An upper bound of the request's encoded size in bytes: ``op``, the UTF-8 ids,
    signature and 24 bytes of framing."""
    return len(req.op) + len(req.client.encode()) + len(req.origin.encode()) + 88


def within_limits(batch: Batch) -> bool:
    """True when ``batch`` keeps the protocol limits every replica checks: at most
    :data:`MAX_BATCH_REQUESTS` requests of :data:`MAX_BATCH_BYTES` in all and
    :data:`MAX_EVIDENCE` proofs of :data:`MAX_EVIDENCE_BYTES` each, so the PRE-PREPARE,
    the prepared record and the commit certificate of the batch stay under the 4 MiB
    message limit."""
    reqs, evid = batch.requests, batch.evidence
    return (len(reqs) <= MAX_BATCH_REQUESTS and len(evid) <= MAX_EVIDENCE
            and all(len(e.a) + len(e.b) <= MAX_EVIDENCE_BYTES for e in evid)
            and sum(map(request_bytes, reqs)) <= MAX_BATCH_BYTES)


class RequestsMixin:
    """Requests, batching and timers of :class:`consensus.replica.Replica`."""

    # -- requests -----------------------------------------------------------------------
    def _on_request(self: Any, req: Request, sender: str | None = None) -> None:
        """Pool a request whose signature was checked (or that was signed here)."""
        key = req.key
        if key in self.pending or self.state.is_duplicate(req):
            return
        if len(self.pending) >= self.cfg.max_pending:
            self._drop(sender or self.me, "pending-full")
            return
        origin, size = req.origin, request_bytes(req)
        pooled = self.pooled_bytes.get(origin, 0) + size
        if origin != self.me and pooled > self.cfg.max_pending_bytes_per_origin:
            self._drop(sender or origin, "origin-quota")  # retransmitted once it drains
            return
        self.pooled_bytes[origin] = pooled
        self.pending[key] = req
        self.pending_since[key] = self.now
        self._arm_timer()
        self._maybe_propose()

    def _step_request(self: Any, msg: Request, sender: str) -> None:
        """A REQUEST from a member (its own, or one it relays): counted only when its
        ``origin`` is a member of the current window and its signature verifies."""
        if sender not in self.members:
            self._drop(sender, "not-member")
            return
        key = msg.key
        if key in self.pending or self.state.is_duplicate(msg):
            return  # before the signature check: re-sends cost a dict lookup, not a verify
        if not self.window_members.check_signed(msg, self.verify):
            self._drop(sender, "bad-request-signature")
            return
        self._on_request(msg, sender)

    def _requests_valid(self: Any, requests: tuple[Request, ...]) -> bool:
        """True when every request of a batch is signed by a member of the window. A
        request equal to one already pooled here (same signature) was checked on receipt
        and is not verified again."""
        pending, members, verify = self.pending, self.window_members, self.verify
        for r in requests:
            if pending.get(r.key) != r and not members.check_signed(r, verify):
                return False
        return True

    def _evict_non_members(self: Any, old: Any) -> None:
        """After a change from member set ``old`` to the window's: forget pooled requests
        whose origin left the member set or now has another key (no batch may carry
        them any more, and a pooled request is not verified again when a batch carries
        it, so waiting for them would only time out views)."""
        members = self.window_members
        for key in [k for k in self.pending
                    if members.key(k[0]) is None or members.key(k[0]) != old.key(k[0])]:
            self._unpool(key)

    def _unpool(self: Any, key: tuple[str, str, int]) -> None:
        """Forget request ``key`` (executed, or no longer admissible) everywhere."""
        req = self.pending.pop(key, None)
        if req is not None:
            left = self.pooled_bytes[req.origin] - request_bytes(req)
            if left:
                self.pooled_bytes[req.origin] = left
            else:
                del self.pooled_bytes[req.origin]
        self.pending_since.pop(key, None)
        self.inflight.pop(key, None)
        self.local.pop(key, None)

    def _maybe_propose(self: Any) -> None:
        if self.in_view_change or self.entering or not self.is_primary():
            return
        while self.next_seq <= self.high and self.next_seq - self.last_executed <= \
                self.cfg.max_inflight:
            free = [k for k in self.pending if k not in self.inflight]
            if not free and not self.evidence:
                return
            ripe = len(free) >= self.cfg.batch_size or self.evidence or (
                free and self.now - self.pending_since[free[0]] >= self.cfg.batch_timeout)
            if not ripe:
                return
            take = self._fill(free)
            reqs = tuple(self.pending[k] for k in take)
            culprits = sorted(self.evidence)[:MAX_EVIDENCE]
            evid = tuple(self.evidence.pop(k) for k in culprits)
            batch = Batch(self.view, self.me, reqs, evid)
            seq = self.next_seq
            self.next_seq += 1
            slot = self.slots.get(seq)
            if slot is not None and (PrePrepare.KIND, self.view) in slot.sent:
                raise AssertionError(f"second pre-prepare for ({self.view}, {seq})")
            for k in take:
                self.inflight[k] = seq
            self._sign(PrePrepare(self.view, seq, batch_digest(batch), self.me, batch=batch))

    def _fill(self: Any, free: list[Any]) -> list[Any]:
        """The keys of the next batch: free requests in arrival order, at most
        ``batch_size`` of them and ``max_batch_bytes`` in all (but at least one)."""
        budget, cap = self.cfg.max_batch_bytes, self.cfg.batch_size
        take: list[Any] = []
        for k in free:
            if len(take) == cap:
                break
            size = request_bytes(self.pending[k])
            if take and size > budget:
                break
            budget -= size
            take.append(k)
        return take

    # -- timers -------------------------------------------------------------------------
    def current_timeout(self: Any) -> int:
        t = self.cfg.view_timeout << min(self.failed_views, 30)
        return min(t, self.cfg.max_view_timeout)

    def _waiting(self: Any) -> bool:
        if self.pending:
            return True
        return any(s.pp is not None and s.cert is None for q, s in self.slots.items()
                   if q > self.last_executed)

    def _arm_timer(self: Any) -> None:
        if not self.timer_on and not self.in_view_change and self._waiting():
            self.timer_on = True
            self.timer = self.current_timeout()

    def _resend_votes(self: Any) -> None:
        """Re-send this replica's PRE-PREPARE/PREPARE/COMMITs of every slot without a
        commit certificate once they are ``resend_interval`` ticks old (then again
        every ``resend_interval``): a lost vote is repaired one interval after it was
        sent, and votes of slots that finish in time are never sent twice."""
        interval, unfinished = self.cfg.resend_interval, self._unfinished
        for seq in sorted(unfinished):
            slot = self.slots.get(seq)
            if slot is None or slot.cert is not None or seq <= self.last_executed:
                unfinished.discard(seq)
                continue
            if self.now - slot.sent_tick < interval:
                continue
            slot.sent_tick = self.now
            for key in sorted(slot.sent):
                m = slot.sent[key]
                if m.sig:
                    self._send(m, self._others())

    def _resend(self: Any) -> None:
        self._resend_checkpoint_and_view()
        self._resend_requests()
        stalled = self.now - self.last_progress >= self.cfg.resend_interval
        if self.in_view_change or stalled:
            self._request_state()  # anti-entropy pull: did others decide more?
        if not self.timer_on:
            self._arm_timer()

    def _resend_requests(self: Any) -> None:
        """Re-broadcast requests submitted here (``propose``) that have waited a whole
        view timeout, as a PBFT client retransmits to all replicas (TOCS 4.1): every
        replica then times the primary on them and any new primary has them."""
        wait = self.current_timeout()
        due = [k for k in self.local
               if self.now - self.local[k] >= wait and k in self.pending]
        for k in due[: self.cfg.batch_size]:
            self.local[k] = self.now
            self._send(self.pending[k], self._others())
