"""Deterministic in-memory harness for PBFT replicas (no trio, no clock, no threads).

The harness owns the network: every message a replica emits is queued as an envelope
with a delivery time (in ticks); the test decides what happens to it through the
network knobs (``drop``, ``dup``, ``max_delay``: all drawn from one seeded
``random.Random``) or explicit ``filters`` (``f(src, dst, msg) -> bool`` keep). Replicas
sign with :class:`identity.soft.SoftSigner` through the real sign-request round trip
(or inline when ``inline_sign``); signature verification is memoised across replicas
(the same ``(key, data, sig)`` is verified once), as a simulator would.

``Byzantine`` strategies wrap a replica's output: ``silent`` (says nothing),
``equivocate`` (as primary, sends different pre-prepares to the two halves; as backup,
prepares/commits a second digest too), ``forge`` (bad signatures, claims other ids),
``replay`` (re-sends old messages of others), ``garbage-votes`` (validly signed votes
for random digests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from collections.abc import Callable
from typing import Any

from consensus.batching import request_bytes
from consensus.certificate import CertificateError
from consensus.certificate import verify as verify_cert
from consensus.effects import Decision, Record
from consensus.messages import (
    Batch,
    Commit,
    MessageDecodeError,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    batch_digest,
    decode_message,
    encode_message,
)
from consensus.persist import restore
from consensus.replica import Config, Replica
from identity.signer import verify_signature
from identity.soft import SoftSigner

STRATEGIES = ("silent", "equivocate", "forge", "replay", "garbage-votes")


def member_id(i: int) -> str:
    return f"r{i:03d}"


class Net:
    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: Config | None = None,
        byzantine: dict[str, str] | None = None,
        inline_sign: bool = False,
        wire: bool = False,
        replica_cls: type[Replica] = Replica,
        app_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.cfg = config or Config()
        self.ids = [member_id(i) for i in range(n)]
        self.signers = {i: SoftSigner(hashlib.sha256(f"{seed}/{i}".encode()).digest())
                        for i in self.ids}
        self.members = {i: s.public_key for i, s in self.signers.items()}
        self.byzantine = dict(byzantine or {})
        self.inline_sign = inline_sign
        self.wire = wire
        self.replica_cls = replica_cls
        self.app_factory = app_factory
        self.cache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.verifications = 0
        self.replicas: dict[str, Replica] = {i: self._make(i) for i in self.ids}
        self.storage: dict[str, list[Record]] = {i: [] for i in self.ids}
        self.decided: dict[str, dict[int, Decision]] = {i: {} for i in self.ids}
        self.down: set[str] = set()
        self.queue: list[tuple[int, int, str, str, Any]] = []
        self.order = 0
        self.time = 0
        self.drop = 0.0
        self.dup = 0.0
        self.max_delay = 0
        self.filters: list[Callable[[str, str, Any], bool]] = []
        self.delivered = 0
        self.undecodable = 0  # with ``wire``: messages the codec refused (e.g. > 4 MiB)
        self.seen: list[Any] = []  # for replay adversaries

    # -- construction -------------------------------------------------------------
    def _make(self, i: str, records: list[Record] | None = None) -> Replica:
        kw: dict[str, Any] = dict(config=self.cfg, verify=self.verify,
                                  signer=self.signers[i] if self.inline_sign else None)
        if self.app_factory is not None:
            kw["app"] = self.app_factory()
        if records is not None:
            return restore(i, self.members, records, replica_cls=self.replica_cls, **kw)
        return self.replica_cls(i, self.members, **kw)

    def add_node(self, i: str) -> SoftSigner:
        """A new node: an observer replica built with the genesis member set."""
        self.signers[i] = SoftSigner(hashlib.sha256(f"new/{i}".encode()).digest())
        self.ids.append(i)
        self.storage[i], self.decided[i] = [], {}
        self.replicas[i] = self._make(i)
        return self.signers[i]

    def verify(self, pk: bytes, data: bytes, sig: bytes) -> bool:
        key = (pk, sig, data)
        ok = self.cache.get(key)
        if ok is None:
            self.verifications += 1
            ok = self.cache[key] = verify_signature(pk, data, sig)
        return ok

    @property
    def honest(self) -> list[str]:
        return [i for i in self.ids if i not in self.byzantine]

    # -- driving ----------------------------------------------------------------------
    def pump(self, i: str) -> None:
        r = self.replicas[i]
        while True:
            rd = r.ready()
            if not rd:
                return
            self.storage[i].extend(rd.persist)
            signer = self.signers[i]
            for sr in rd.sign_requests:
                r.signed(sr.id, signer.sign(sr.data))
            for out in rd.messages:
                for dst in out.to:
                    self.send(i, dst, out.msg)
            for d in rd.committed:
                prev = self.decided[i].get(d.seq)
                assert prev is None, f"{i} decided seq {d.seq} twice"
                self.decided[i][d.seq] = d
            r.advance(rd)

    def send(self, src: str, dst: str, msg: Any) -> None:
        strategy = self.byzantine.get(src)
        if strategy is not None:
            for m in self._adversary(strategy, src, dst, msg):
                self._enqueue(src, dst, m)
            return
        self._enqueue(src, dst, msg)

    def _enqueue(self, src: str, dst: str, msg: Any) -> None:
        if any(not f(src, dst, msg) for f in self.filters):
            return
        copies = 1
        if self.drop and self.rng.random() < self.drop:
            copies = 0
        elif self.dup and self.rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
            self.order += 1
            heapq.heappush(self.queue, (self.time + delay, self.order, src, dst, msg))

    def deliver(self, max_rounds: int = 5_000_000) -> None:
        """Deliver every message due now (and what they trigger at delay 0)."""
        for _ in range(max_rounds):
            if not self.queue or self.queue[0][0] > self.time:
                return
            _, _, src, dst, msg = heapq.heappop(self.queue)
            if dst in self.down:
                continue
            if self.wire:  # as a node does: bytes the codec refuses are dropped
                try:
                    msg = decode_message(encode_message(msg))
                except MessageDecodeError:
                    self.undecodable += 1
                    continue
            self.delivered += 1
            if len(self.seen) < 5000 and not isinstance(msg, Request):
                self.seen.append(msg)
            self.replicas[dst].step(msg, sender=src)
            self.pump(dst)
        raise AssertionError("delivery did not quiesce")

    def tick(self) -> None:
        self.deliver()
        self.time += 1
        for i in self.ids:
            if i not in self.down:
                self.replicas[i].tick()
                self.pump(i)
        self.deliver()

    def run(self, ticks: int, until: Callable[[], bool] | None = None) -> int:
        for t in range(ticks):
            if until is not None and until():
                return t
            self.tick()
        if until is not None and not until():
            raise AssertionError(f"condition not reached in {ticks} ticks")
        return ticks

    def propose(self, i: str, op: bytes, **kw: Any) -> Request:
        req = self.replicas[i].propose(op, **kw)
        self.pump(i)
        return req

    def sign(self, i: str, msg: Any) -> Any:
        """``msg`` signed with member ``i``'s key."""
        return dataclasses.replace(msg, sig=self.signers[i].sign(msg.signing_bytes()))

    def signed_request(self, origin: str, op: bytes, *, client: str, rid: int) -> Request:
        """A request submitted and validly signed by ``origin`` (not sent anywhere)."""
        return self.sign(origin, Request(client, rid, op, origin))

    def crash(self, i: str) -> None:
        self.down.add(i)

    def restart(self, i: str) -> None:
        self.replicas[i] = self._make(i, list(self.storage[i]))
        self.down.discard(i)
        self.pump(i)

    # -- checks -----------------------------------------------------------------------
    def all_decided(self, ops: list[bytes], who: list[str] | None = None) -> bool:
        """Every live honest replica (or ``who``) executed every op in ``ops``. A replica
        that skipped sequence numbers by installing a snapshot counts the batches others
        decided at them."""
        want = set(ops)
        by_seq: dict[int, Decision] = {}
        for i in self.honest:
            by_seq.update(self.decided[i])
        for i in who or self.honest:
            if i in self.down:
                continue
            r = self.replicas[i]
            got = {q.op for d in self.decided[i].values() for q in d.batch.requests}
            got |= {q.op for s, d in by_seq.items() if s <= r.last_executed
                    for q in d.batch.requests}
            if not want <= got:
                return False
        return True

    def max_decided(self) -> int:
        return max((max(d) for d in self.decided.values() if d), default=0)

    def check_safety(self) -> None:
        """No two honest replicas decide different batches at one sequence number, and
        every decision carries a commit certificate that verifies offline."""
        agreed: dict[int, bytes] = {}
        for i in self.honest:
            for seq, d in sorted(self.decided[i].items()):
                digest = batch_digest(d.batch)
                if agreed.setdefault(seq, digest) != digest:
                    raise AssertionError(f"safety violated at seq {seq} ({i})")
        for i in self.honest:
            for seq, d in sorted(self.decided[i].items()):
                assert d.certificate.seq == seq and d.certificate.batch == d.batch
                try:
                    verify_cert(encode_message(d.certificate), d.members,
                                verify_fn=self.verify)
                except CertificateError as exc:
                    raise AssertionError(f"invalid certificate at seq {seq} ({i}): {exc}") \
                        from None
        for i in self.honest:  # the request pool's per-origin byte accounting
            r = self.replicas[i]
            pooled: dict[str, int] = {}
            for req in r.pending.values():
                pooled[req.origin] = pooled.get(req.origin, 0) + request_bytes(req)
            assert pooled == r.pooled_bytes, f"pool accounting of {i}"

    def check_no_equivocation(self) -> None:
        """No honest replica ever signed two PRE-PREPAREs / PREPAREs / COMMITs for one
        (view, sequence number) with different digests, across crashes and restarts
        (read from what each one persisted, which is a superset of what it sent)."""
        for i in self.honest:
            said: dict[tuple[int, int, int], bytes] = {}
            for rec in self.storage[i]:
                if rec.kind not in ("msg", "viewchange"):
                    continue
                m = decode_message(rec.data)
                msgs = m.pre_prepares if isinstance(m, NewView) else (m,)
                for x in msgs:
                    if isinstance(x, (PrePrepare, Prepare, Commit)):
                        key = (x.KIND, x.view, x.seq)
                        if said.setdefault(key, x.digest) != x.digest:
                            raise AssertionError(f"{i} equivocated at {key}")

    # -- adversaries --------------------------------------------------------------------
    def _resign(self, src: str, msg: Any) -> Any:
        return dataclasses.replace(msg, sig=self.signers[src].sign(msg.signing_bytes()))

    def _adversary(self, strategy: str, src: str, dst: str, msg: Any) -> list[Any]:
        if strategy == "silent":
            return []
        if strategy == "equivocate":
            return [self._equivocate(src, dst, msg)]
        if strategy == "forge":
            out = [msg]
            if hasattr(msg, "sig"):
                out.append(dataclasses.replace(msg, sig=bytes(64)))
                other = self.ids[self.rng.randrange(len(self.ids))]
                who = "origin" if isinstance(msg, Request) else "sender"
                out.append(dataclasses.replace(msg, **{who: other}))
            return out
        if strategy == "replay":
            extra = [self.seen[self.rng.randrange(len(self.seen))]] if self.seen else []
            return [msg, *extra]
        if strategy == "garbage-votes":
            if isinstance(msg, (Prepare, Commit)):
                fake = dataclasses.replace(msg, digest=self.rng.randbytes(32))
                return [msg, self._resign(src, fake)]
            return [msg]
        raise ValueError(strategy)

    def _equivocate(self, src: str, dst: str, msg: Any) -> Any:
        if isinstance(msg, (Prepare, Commit)):
            pass
        elif self.ids.index(dst) % 2 == 0:
            return msg
        if isinstance(msg, PrePrepare) and msg.batch is not None and msg.batch.requests:
            evil = self._resign(src, Request("evil", msg.seq, b"evil", src))
            reqs = msg.batch.requests[:-1] + (evil,)
            b = dataclasses.replace(msg.batch, requests=reqs)
            return self._resign(src, dataclasses.replace(
                msg, digest=batch_digest(b), batch=b))
        if isinstance(msg, (Prepare, Commit)):
            # omniscient: vote for whatever the receiver accepted at that slot
            slot = self.replicas[dst].slots.get(msg.seq)
            if slot is not None and slot.pp is not None and slot.pp.digest != msg.digest:
                return self._resign(src, dataclasses.replace(
                    msg, digest=slot.pp.digest, view=slot.pp.view))
        return msg


def null_batch(view: int, primary: str) -> Batch:
    return Batch(view, primary, (), ())
