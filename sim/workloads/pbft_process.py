"""The PBFT adapter: one simulated node drives a real :class:`consensus.replica.Replica`.

Theory of operation
-------------------
:class:`PbftProcess` is the simulator's equivalent of :mod:`node.driver`: it feeds the
same pure core and carries out its ``Ready`` effects in the contract's order:

* inputs: ``on_message`` decodes the payload with the real codec
  (:func:`consensus.messages.decode_message`; undecodable frames are dropped and
  counted) and calls ``replica.step(msg, sender=member_id)``; ``on_timer("tick")`` calls
  ``replica.tick()`` every ``tick_s`` virtual seconds; client operations arrive as
  ``World.inject`` work items that call ``replica.propose(op, client=, rid=)``;
* effects, in order: ``persist`` records go to the host's crash-safe disk (``ctx.persist``,
  charged) *before* anything is sent; ``sign_requests`` are signed with the node's key
  through ``ctx.sign`` (real Ed25519, charged the HSM cost) and handed back with
  ``replica.signed`` after ``advance``; ``messages`` are encoded once per ``Outbound``
  (``encode_message``) and broadcast (``ctx.broadcast``: encode charged once, send per
  destination); ``committed`` decisions go to ``ctx.decided`` (agreement and validity
  checkers) and to the workload's latency bookkeeping.

Signature verification inside the core goes through ``ctx.verify`` (real, cached across
nodes by the world, charged to the verifying node). The core is never given the inline
``signer=`` shortcut.

Decoding is memoised per payload (``DecodeCache``): the codec is a pure function of the
bytes and messages are frozen dataclasses, so the 99 receivers of one broadcast share one
decoded object, exactly like the verify cache; each receiver is still charged the
world's per-message and per-byte handling cost.

Crash/restart: the process persists ``[kind, seq, data]`` records under increasing
integer keys and compacts the disk as :mod:`consensus.persist` allows (at a ``"stable"``
record at ``s``: ``msg``/``prepared``/``decided``/older ``stable`` records with
``seq <= s``; only the newest ``view`` record and the ``viewchange`` records of the
newest view; ``request`` records once executed). ``on_restart`` rebuilds the replica with
:func:`consensus.persist.restore` from the disk only (the world gives a restarted node a
fresh process object).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from consensus.effects import Decision, Outbound, Record
from consensus.messages import (
    MessageDecodeError,
    Request,
    batch_digest,
    decode_message,
    encode_message,
)
from consensus.persist import restore
from consensus.replica import Replica
from identity.canonical import decode, encode
from sim.process import BaseProcess, Context

__all__ = ["DecodeCache", "PbftProcess"]

_COMPACT = frozenset({"msg", "prepared", "decided", "stable"})


def _pack(rec: Record) -> bytes:
    """Disk value: 2-byte header length, canonical ``[kind, seq]``, then ``data`` as is
    (no size limit of our own: the core decides what it can restore)."""
    head = encode([rec.kind, rec.seq])
    return len(head).to_bytes(2, "big") + head + rec.data


def _unpack(value: bytes) -> Record:
    size = int.from_bytes(value[:2], "big")
    kind, seq = decode(value[2:2 + size])
    return Record(kind, seq, value[2 + size:])


def _tag(rec: Record) -> Any:
    """The view of a ``viewchange``/``view`` record, the key (origin, client, rid) of a
    ``request``. Reads the wire array directly, without the codec's 4 MiB message limit
    (records are the replica's own; view changes are compact and far below it since
    957f6d7)."""
    obj = decode(rec.data, max_bytes=1 << 31)
    if rec.kind == "view":
        return int(obj[0])  # [view, primary]
    if rec.kind == "request":
        return (obj[4], obj[1], obj[2])  # Request: [KIND, client, rid, op, origin, sig]
    return obj[1]  # ViewChange [KIND, new_view, ...] / NewView [KIND, view, ...]


class DecodeCache:
    """Memoised :func:`decode_message` shared by all nodes. Returns the message, or None
    for bytes that do not decode. Bounded by total payload bytes (cleared when full);
    payloads above ``max_payload`` bytes (huge view changes) are decoded every time."""

    __slots__ = ("_cache", "_bytes", "_max_bytes", "_max_payload", "hits", "misses")

    def __init__(self, max_bytes: int = 64 << 20, max_payload: int = 256 << 10) -> None:
        self._cache: dict[bytes, Any] = {}
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_payload = max_payload
        self.hits = 0
        self.misses = 0

    def decode(self, payload: bytes) -> Any:
        got = self._cache.get(payload, self)
        if got is not self:
            self.hits += 1
            return got
        self.misses += 1
        try:
            msg = decode_message(payload)
        except MessageDecodeError:
            msg = None
        size = len(payload)
        if size <= self._max_payload:
            if self._bytes + size > self._max_bytes:
                self._cache.clear()
                self._bytes = 0
            self._cache[payload] = msg
            self._bytes += size
        return msg


class PbftProcess(BaseProcess):
    """One honest replica (Byzantine strategies subclass it; see :mod:`sim.byzantine`).

    ``wl`` is the :class:`~sim.workloads.pbft.PbftWorkload` (member ids, keys, config,
    shared caches and metrics)."""

    def __init__(self, node: int, wl: Any) -> None:
        self.node = node
        self.wl = wl
        self.me: str = wl.ids[node]
        self.signer = wl.signers[node]
        self.replica: Replica | None = None
        self.ctx: Context | None = None
        self.disk_kinds: dict[int, tuple[str, Any]] = {}
        self.request_keys: dict[tuple[str, str, int], int] = {}
        self.next_key = 0
        self.executed = 0
        self.early: list[tuple[bytes, str, int]] = []

    # -- building the core ----------------------------------------------------------
    def _verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        assert self.ctx is not None
        return self.ctx.verify(public_key, data, signature)

    def new_replica(self, records: list[Record] | None = None) -> Replica:
        kw = {"config": self.wl.config, "verify": self._verify}
        if records is None:
            return Replica(self.me, self.wl.members, **kw)
        return restore(self.me, self.wl.members, records, **kw)

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.replica = self.new_replica()
        self._started(ctx)

    def on_restart(self, ctx: Context) -> None:
        self.ctx = ctx
        records = []
        for key in sorted(k for k in ctx.disk if isinstance(k, int)):
            rec = _unpack(ctx.disk[key])
            kind, seq = rec.kind, rec.seq
            records.append(rec)
            tag = _tag(rec) if kind in ("viewchange", "view", "request") else seq
            self.disk_kinds[key] = (kind, tag)
            if kind == "request":
                self.request_keys[tag] = key
        self.next_key = max(self.disk_kinds, default=-1) + 1
        self.replica = self.new_replica(records)
        self.wl.restarts += 1
        self._started(ctx)

    def _started(self, ctx: Context) -> None:
        ctx.set_timer(self.wl.tick_s, "tick")
        assert self.replica is not None
        for op, client, rid in self.early:
            self.replica.propose(op, client=client, rid=rid)
        self.early.clear()
        self.drain(ctx)

    def on_crash(self) -> None:
        self.replica = None
        self.ctx = None

    # -- inputs -----------------------------------------------------------------------
    def on_message(self, ctx: Context, sender: int, payload: bytes) -> None:
        msg = self.wl.decoder.decode(payload)
        if msg is None:
            self.wl.bad_frames += 1
            return
        self.ctx = ctx
        if self.replica is None:  # a wrapper (generic "silent" until T) skipped on_start
            self.on_start(ctx)
        self.deliver(ctx, sender, msg)

    def deliver(self, ctx: Context, sender: int, msg: Any) -> None:
        """Step a decoded message into the replica and carry out the effects."""
        assert self.replica is not None
        self.replica.step(msg, sender=self.wl.ids[sender])
        self.drain(ctx)

    def on_timer(self, ctx: Context, timer_id: Hashable) -> None:
        if timer_id != "tick":
            return
        self.ctx = ctx
        if self.replica is None:
            self.on_start(ctx)
            return
        self.replica.tick()
        ctx.set_timer(self.wl.tick_s, "tick")
        self.drain(ctx)

    def submit(self, ctx: Context, op: bytes, client: str, rid: int) -> None:
        """A client operation submitted at this node (an ``inject`` work item)."""
        self.ctx = ctx
        self.wl.submitted(self.node, ctx.now, client, rid)
        if self.replica is None:  # submitted before on_start ran: the client waits
            self.early.append((op, client, rid))
            return
        self.replica.propose(op, client=client, rid=rid)
        self.drain(ctx)

    # -- effects ----------------------------------------------------------------------
    def drain(self, ctx: Context, replica: Replica | None = None) -> None:
        """Carry out every pending Ready of ``replica`` (default: this node's)."""
        r = replica or self.replica
        assert r is not None
        while r.has_ready():
            rd = r.ready()
            for rec in rd.persist:
                self.persist(ctx, rec)
            sigs = [(q.id, ctx.sign(self.signer, q.data)) for q in rd.sign_requests]
            for out in rd.messages:
                self.send(ctx, out, r)
            for d in rd.committed:
                self.decide(ctx, d, r)
            r.advance(rd)
            for rid, sig in sigs:
                r.signed(rid, sig)
        if r is self.replica and r.last_executed != self.executed:
            self.executed = r.last_executed
            self.wl.executed(self.node, ctx.now, self.executed)
            if self.request_keys:  # executed by restore or state transfer: no Decision
                self._forget_executed(ctx, r)

    def persist(self, ctx: Context, rec: Record) -> None:
        """Append ``rec`` durably, then compact as :mod:`consensus.persist` allows: at a
        ``stable`` record at ``s`` the ``msg``/``prepared``/``decided``/older ``stable``
        records with ``seq <= s``; only the newest ``view`` record and the ``viewchange``
        records of the newest view; ``request`` records once decided (:meth:`decide`)."""
        key = self.next_key
        self.next_key += 1
        ctx.persist(key, _pack(rec))
        tag: Any = rec.seq
        if rec.kind in ("viewchange", "view", "request"):
            tag = _tag(rec)
        self.disk_kinds[key] = (rec.kind, tag)
        drop: list[int] = []
        if rec.kind == "stable":
            drop = [k for k, (kind, seq) in self.disk_kinds.items()
                    if k != key and kind in _COMPACT and seq <= rec.seq]
        elif rec.kind in ("viewchange", "view"):
            drop = [k for k, (kind, view) in self.disk_kinds.items()
                    if k != key and kind == rec.kind and view < tag]
        elif rec.kind == "request":
            self.request_keys[tag] = key
        for k in drop:
            del self.disk_kinds[k]
            ctx.disk.pop(k, None)

    def _forget_executed(self, ctx: Context, r: Replica) -> None:
        done = [k for k in self.request_keys
                if r.state.is_duplicate(Request(k[1], k[2], b"", k[0]))]
        for k in done:
            key = self.request_keys.pop(k)
            self.disk_kinds.pop(key, None)
            ctx.disk.pop(key, None)

    def forget_requests(self, ctx: Context, d: Decision) -> None:
        for r in d.batch.requests:
            k = self.request_keys.pop(r.key, None)
            if k is not None:
                self.disk_kinds.pop(k, None)
                ctx.disk.pop(k, None)

    def send(self, ctx: Context, out: Outbound, replica: Replica) -> None:
        """Encode once (real codec) and send to every destination."""
        idx = self.wl.index
        ctx.broadcast([idx[m] for m in out.to], encode_message(out.msg))

    def decide(self, ctx: Context, d: Decision, replica: Replica) -> None:
        if self.request_keys:
            self.forget_requests(ctx, d)
        ctx.decided(d.seq, batch_digest(d.batch), d.certificate)
        self.wl.decided(self.node, ctx.now, d)
