"""Checkpoints, watermarks, log garbage collection and state transfer (TOCS 2002, 4.3, 6.2).

Theory of operation
-------------------
After executing a sequence number ``n`` with ``n % K == 0`` a replica snapshots its
replicated state (:class:`~consensus.state.ReplicatedState`), keeps the snapshot and
broadcasts a signed CHECKPOINT(n, sha256(snapshot)). A quorum of matching CHECKPOINTs is
a stable-checkpoint certificate: the replica then sets its low watermark ``low = n``
(high watermark ``low + window``), discards log entries and snapshots at or below ``n``
(garbage collection), persists a ``"stable"`` record and freezes the member set of the
new window (read from the snapshot at ``n``, so all replicas with that stable checkpoint
agree on it). The leader schedule is not frozen here: it is committed state that never
changes for a running view (:mod:`consensus.leader`).

State transfer. A replica learns it is behind when it holds a stable-checkpoint
certificate above its last executed sequence number, when ``f + 1`` members send it
messages above its high watermark, or when it sees a commit quorum for a batch it never
received. It then sends STATE-REQUEST(from) to a peer (rotating, at most once per
``resend_interval`` ticks). The reply carries the peer's stable checkpoint certificate,
the snapshot at it (when the requester is below it) and commit certificates for the
decided batches after it. The requester verifies the checkpoint certificate and that the
snapshot hashes to its digest, installs it, then verifies every commit certificate
(:func:`consensus.certificate.verify`) before executing its batch: a faulty peer can
delay a replica but never make it apply anything undecided.

Chunked snapshots. The codec bounds a ``bytes`` field to 1 MiB and a message to 4 MiB,
so a snapshot above :data:`INLINE_SNAPSHOT_BYTES` (512 KiB) does not travel in the
STATE-REPLY (its ``snapshot`` is empty while its checkpoint is above the requester). The
requester then fetches it in pieces (TOCS 6.2 fetches state in partitions for the same
reason), from the checkpoint's signers and the replier in rotation:

1. SNAPSHOT-MANIFEST-REQUEST(n) -> SNAPSHOT-MANIFEST(n, size, chunk hashes, members,
   pending); accepted only when it hashes to the certified state digest
   (:func:`consensus.state.manifest_digest`: the body digest is a hash over the
   256 KiB chunks' hashes, :func:`consensus.state.body_digest`);
2. SNAPSHOT-CHUNK-REQUEST(n, i) -> SNAPSHOT-CHUNK(n, i, data) for every chunk, at most
   :data:`MAX_OUTSTANDING_CHUNKS` outstanding; a chunk is kept only when its SHA-256 is
   entry ``i`` of the manifest. A request unanswered for ``resend_interval`` ticks is
   re-sent to the next peer (the silent one is asked again only when no other peer is
   left); a peer that sends a bad manifest or chunk is counted
   (``drops[peer]["bad-manifest" | "bad-chunk"]``) and not asked again in this transfer.
3. With every chunk in, the snapshot is rebuilt, checked against the state digest once
   more and installed as an inline one; the commit certificates of the STATE-REPLY that
   started the transfer are then verified and executed.

A verified checkpoint above the one being fetched replaces it (peers discard snapshots
below their stable checkpoint); chunks already held whose hashes recur in the new
manifest are kept. Serving is slicing the snapshot kept at the checkpoint (the parts of
the latest one served are cached). STATE-REPLYs carry as many commit certificates as fit
:data:`REPLY_BUDGET` bytes; the requester pulls the rest (anti-entropy in
``_resend``, behind hints). For a 3 MiB body: 1 manifest and 13 chunk round trips.

Each member's CHECKPOINT votes are kept only for its newest sequence number (memory is
bounded by ``n``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from identity.canonical import MAX_MESSAGE_BYTES, encode

from .certificate import CertificateError, verify, verify_checkpoint, verify_membership
from .messages import (
    Checkpoint,
    CheckpointProof,
    CommitCertificate,
    Member,
    MembershipProof,
    SnapshotChunk,
    SnapshotChunkRequest,
    SnapshotManifest,
    SnapshotManifestRequest,
    StateReply,
    StateRequest,
    encode_message,
)
from .state import (
    CHUNK_BYTES,
    chunk_count,
    chunk_hashes,
    join_snapshot,
    manifest_digest,
    snapshot_parts,
    split_snapshot,
    state_digest,
)
from .wire import sha256

__all__ = ["INLINE_SNAPSHOT_BYTES", "MAX_OUTSTANDING_CHUNKS", "REPLY_BUDGET", "SERVE_LIMITS",
           "CheckpointMixin"]

#: Snapshots up to this many bytes travel inside the STATE-REPLY; larger ones in chunks.
INLINE_SNAPSHOT_BYTES = 512 * 1024
#: Chunk requests a replica keeps outstanding while it fetches a snapshot (1 MiB).
MAX_OUTSTANDING_CHUNKS = 4
#: Bytes of one STATE-REPLY's snapshot, proofs and certificates (64 KiB under the
#: codec's 4 MiB message limit, for the framing around them).
REPLY_BUDGET = MAX_MESSAGE_BYTES - 64 * 1024
_MANIFEST = -1  # key of the manifest request in ``_Transfer.asked``
_REPLY, _MANIFEST_KIND, _CHUNK = 0, 1, 2
#: Replies served to one peer per ``resend_interval`` ticks: STATE-REPLYs, manifests,
#: chunks. An honest requester asks one peer for state at most about once per interval
#: (anti-entropy, probes, behind hints) and keeps MAX_OUTSTANDING_CHUNKS chunks asked.
SERVE_LIMITS = (4, 4, 4 * MAX_OUTSTANDING_CHUNKS)


@dataclass(slots=True)
class _Transfer:
    """One chunked snapshot fetch: the verified checkpoint ``proof`` (certified by
    ``signers``), the peers to ask (``sources``, sorted; ``bad`` ones skipped), the
    STATE-REPLY's certificates to execute after the install (``decided``, from
    ``replier``; ``slow`` peers, which let a request time out, only when no other is
    left), and the progress: manifest, chunks held by index, requests
    outstanding (index or ``_MANIFEST`` -> (peer, tick sent)), chunk indexes to ask for,
    the rotation counter and the tick of the last accepted piece."""

    proof: CheckpointProof
    signers: Any
    sources: list[str]
    decided: tuple[CommitCertificate, ...]
    replier: str
    progress: int
    manifest: SnapshotManifest | None = None
    hashes: list[bytes] = field(default_factory=list)
    chunks: dict[int, bytes] = field(default_factory=dict)
    asked: dict[int, tuple[str, int]] = field(default_factory=dict)
    todo: deque[int] = field(default_factory=deque)
    bad: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)  # let a request time out; asked last
    carry: dict[bytes, bytes] = field(default_factory=dict)  # chunk hash -> data
    rr: int = 0


class CheckpointMixin:
    """Checkpoint and state-transfer behaviour of :class:`consensus.replica.Replica`."""

    def _init_checkpoints(self: Any) -> None:
        snap = self.state.snapshot()
        digest = state_digest(snap)
        self.low = 0
        self.stable_proof = CheckpointProof(0, digest, ())
        self.snapshots: dict[int, tuple[bytes, bytes, Any]] = {
            0: (snap, digest, self.state.members)}
        self.ckpt_votes: dict[int, dict[bytes, dict[str, Checkpoint]]] = {}
        self.ckpt_latest: dict[str, int] = {}
        self.my_ckpt: Checkpoint | None = None
        self.window_members = self.state.members
        self.others_cache = tuple(i for i in self.window_members.ids if i != self.me)
        self.last_fetch = -(10**9)
        self.fetch_round = 0
        self.ahead: dict[str, int] = {}
        self.helped: dict[str, int] = {}
        self.target: CheckpointProof | None = None
        self.member_chain: list[MembershipProof] = []  # completed changes, by boundary
        self.xfer: _Transfer | None = None  # chunked snapshot fetch in progress
        self.served: dict[str, list[int]] = {}  # peer -> [window start, replies by kind]
        self._serving: tuple[int, bytes, bytes, bytes, bytes, bytes] | None = None

    @property
    def high(self: Any) -> int:
        """High watermark: ``low + window``, never past a membership change's boundary
        until that boundary is the stable checkpoint (so a window never spans two member
        sets: the new set signs nothing before it runs the window)."""
        low = self.low
        h = low + self.cfg.window
        st = self.state
        pend = st.pending_members
        if pend is not None and pend[0] > low:
            h = min(h, pend[0])
        if st.changed_at > low:  # executed the boundary, not yet stable
            h = min(h, st.changed_at)
        return h

    def _known_checkpoint(self: Any, proof: CheckpointProof) -> bool:
        """A checkpoint this replica certified already: the stable one, one it holds the
        state of, or the boundary of a membership change it verified (that one is
        signed by the set before the change, so the window's set cannot check it)."""
        seq, digest = proof.seq, proof.state_digest
        mine = self.snapshots.get(seq)
        if (mine is not None and mine[1] == digest) or \
                (self.stable_proof.seq, self.stable_proof.state_digest) == (seq, digest):
            return True
        return any((mp.checkpoint.seq, mp.checkpoint.state_digest) == (seq, digest)
                   for mp in self.member_chain)

    # -- checkpoints --------------------------------------------------------------------
    def _after_execute(self: Any, seq: int) -> None:
        if seq % self.cfg.checkpoint_interval:
            return
        snap = self.state.snapshot()
        digest = state_digest(snap)
        self.snapshots[seq] = (snap, digest, self.state.members)
        self._sign(Checkpoint(seq, digest, self.me))

    def _step_checkpoint(self: Any, c: Checkpoint, sender: str) -> None:
        if c.seq <= self.low or c.seq % self.cfg.checkpoint_interval:
            self._drop(sender, "stale-checkpoint")
            self._help_behind(c.sender, c.seq)
            return
        if c.sender != self.me and not self.members.check_signed(c, self.verify):
            self._drop(sender, "bad-signature")
            return
        if c.sender == self.me:
            self.my_ckpt = c
        prev = self.ckpt_latest.get(c.sender, 0)
        if c.seq < prev:
            return
        if c.seq > prev and prev:
            for votes in self.ckpt_votes.get(prev, {}).values():
                votes.pop(c.sender, None)
        self.ckpt_latest[c.sender] = c.seq
        votes = self.ckpt_votes.setdefault(c.seq, {}).setdefault(c.state_digest, {})
        votes.setdefault(c.sender, c)
        if len(votes) >= self.members.quorum:
            chosen = tuple(votes[s] for s in sorted(votes))[: self.members.quorum]
            self._on_stable_proof(CheckpointProof(c.seq, c.state_digest, chosen))

    def _on_stable_proof(self: Any, proof: CheckpointProof, signers: Any = None) -> None:
        if proof.seq <= self.low:
            return
        if proof.seq > self.last_executed:
            if self.target is None or proof.seq > self.target.seq:
                self.target = proof
            self._request_state()
            return
        mine = self.snapshots.get(proof.seq)
        if mine is None:
            return  # executed via a snapshot above it; a later checkpoint will do
        if mine[1] != proof.state_digest:
            raise AssertionError(f"state diverged at checkpoint {proof.seq}")
        self._make_stable(proof, signers)

    def _make_stable(self: Any, proof: CheckpointProof, signers: Any = None,
                     record: bool = True) -> None:
        """Make ``proof`` (verified against ``signers``, default the window's member set)
        the stable checkpoint; when the member set changes here, keep the change's
        :class:`MembershipProof` (``record``)."""
        snap, _digest, members = self.snapshots[proof.seq]
        if record and members != (signers or self.window_members):
            self._record_change(proof, snap, signers or self.window_members)
        self.low = proof.seq
        self.stable_proof = proof
        if members != self.window_members:
            old, self.window_members = self.window_members, members
            self.others_cache = tuple(i for i in members.ids if i != self.me)
            self._evict_non_members(old)
        for q in [q for q in self.slots if q <= proof.seq]:
            del self.slots[q]
        for q in [q for q in self.snapshots if q < proof.seq]:
            del self.snapshots[q]
        for q in [q for q in self.ckpt_votes if q <= proof.seq]:
            del self.ckpt_votes[q]
        self.known_prepared = {k for k in self.known_prepared if k[1] > proof.seq}
        if self.target is not None and self.target.seq <= proof.seq:
            self.target = None
        if self.xfer is not None and self.xfer.proof.seq <= proof.seq:
            self.xfer = None
        self.next_seq = max(self.next_seq, proof.seq + 1)
        pin = self.view_primary
        entered = [0, None] if pin is None else list(pin)
        self._persist("stable", proof.seq, encode([proof.wire(), snap, *entered]))
        self._maybe_propose()

    def _record_change(self: Any, proof: CheckpointProof, snap: bytes, old: Any) -> None:
        if any(mp.checkpoint.seq == proof.seq for mp in self.member_chain):
            return
        body, members, pending = split_snapshot(snap)
        mp = MembershipProof(proof, body, pending, tuple(Member(i, k) for i, k in members))
        try:
            verify_membership(mp, old, verify_fn=self.verify)
        except CertificateError:
            return  # not certified by the previous set here: learnt by state transfer
        self._learn_changes([mp])

    def _learn_changes(self: Any, proofs: list[MembershipProof], persist: bool = True) -> None:
        """Keep (and persist, kind ``"members"``) verified membership changes."""
        have = {mp.checkpoint.seq for mp in self.member_chain}
        for mp in proofs:
            if mp.checkpoint.seq not in have:
                have.add(mp.checkpoint.seq)
                self.member_chain.append(mp)
                if persist:
                    self._persist("members", mp.checkpoint.seq, mp)
        self.member_chain.sort(key=lambda mp: mp.checkpoint.seq)

    def _chain_signers(self: Any, proofs: tuple[MembershipProof, ...], seq: int) -> Any:
        """``(member set that certifies checkpoint seq, changes verified on the way)``
        from our window's set and the changes a peer sent, each verified with the set
        before it; None when one does not verify."""
        current, learnt = self.window_members, []
        for mp in sorted(proofs, key=lambda mp: mp.checkpoint.seq):
            at = mp.checkpoint.seq
            if at <= self.low:
                continue
            if at >= seq:
                break
            try:
                current = verify_membership(mp, current, verify_fn=self.verify)
            except CertificateError:
                return None
            learnt.append(mp)
        return current, learnt

    def _resend_checkpoint_and_view(self: Any) -> None:
        if self.my_ckpt is not None and self.my_ckpt.seq > self.low:
            self._send(self.my_ckpt, self._others())
        if self.xfer is not None:
            self._transfer_timeouts()
        if self.target is not None:
            self._request_state()
        self._resend_view()

    # -- state transfer -----------------------------------------------------------------
    def _behind_hint(self: Any, msg: Any, sender: str) -> None:
        if msg.seq <= self.high or sender not in self.members:
            return
        self.ahead[sender] = max(self.ahead.get(sender, 0), msg.seq)
        if sum(1 for s in self.ahead.values() if s > self.high) >= self.members.weak:
            self._request_state()

    def _need_batch(self: Any, seq: int) -> None:
        self._request_state()

    def _request_state(self: Any) -> None:
        x = self.xfer
        if x is not None and self.now - x.progress < self.cfg.resend_interval:
            return  # a snapshot fetch is progressing: the state is on its way
        if self.now - self.last_fetch < self.cfg.resend_interval:
            return
        self.last_fetch = self.now
        peers = self._others()
        if self.target is not None:
            signers = [c.sender for c in self.target.checkpoints if c.sender != self.me]
            peers = tuple(signers) or peers
        if not peers:
            return
        peer = peers[self.fetch_round % len(peers)]
        self.fetch_round += 1
        self._send(StateRequest(self.last_executed + 1), (peer,))

    def _probe(self: Any) -> None:
        """Ask ``f + 1`` peers for newer state (after a restart: one of them is honest)."""
        peers = self._others()
        for k in range(min(self.members.weak, len(peers))):
            self._send(StateRequest(self.last_executed + 1), (peers[(self.fetch_round + k)
                                                                  % len(peers)],))
        self.fetch_round += self.members.weak
        self.last_fetch = self.now

    def _help_behind(self: Any, member: str, their_seq: int) -> None:
        """``member`` sent something at or below our low watermark: it is behind. Send it
        our stable checkpoint and what follows (at most once per ``resend_interval``)."""
        if member == self.me or member not in self.members or their_seq > self.low:
            return
        if self.now - self.helped.get(member, -(10**9)) < self.cfg.resend_interval:
            return
        self.helped[member] = self.now
        self._step_state_request(StateRequest(their_seq), member)

    def _step_state_request(self: Any, req: StateRequest, sender: str) -> None:
        pend = self.state.pending_members
        known = sender in self.members or (pend is not None and sender in pend[1])
        if not known or sender == self.me:
            self._drop(sender, "not-member")
            return
        if req.from_seq > self.last_executed or not self._may_serve(sender, _REPLY):
            return
        snapshot = self.snapshots[self.low][0] if req.from_seq <= self.low else b""
        if len(snapshot) > min(INLINE_SNAPSHOT_BYTES, self.cfg.max_reply_bytes // 2):
            snapshot = b""  # too large for one message: the requester fetches chunks
        since = req.from_seq - self.cfg.window
        changes = tuple(mp for mp in self.member_chain if mp.checkpoint.seq >= since)
        budget = self.cfg.max_reply_bytes - len(snapshot) - \
            len(encode_message(self.stable_proof)) - sum(len(encode_message(mp)) for mp in changes)
        start = max(req.from_seq, self.low + 1)
        certs = []
        for q in range(start, min(self.last_executed, start + self.cfg.window - 1) + 1):
            slot = self.slots.get(q)
            if slot is None or slot.cert is None:
                break
            budget -= len(encode_message(slot.cert))
            if budget < 0:
                break  # the requester asks again for the rest
            certs.append(slot.cert)
        self._send(StateReply(self.stable_proof, snapshot, tuple(certs), changes), (sender,))

    def _step_state_reply(self: Any, rep: StateReply, sender: str) -> None:
        proof = rep.checkpoint
        if proof.seq > self.low:
            chain = self._chain_signers(rep.members, proof.seq)
            if chain is None:
                self._drop(sender, "bad-membership-proof")
                return
            signers, learnt = chain
            try:
                verify_checkpoint(proof, signers, verify_fn=self.verify)
            except CertificateError:
                self._drop(sender, "bad-checkpoint-proof")
                return
            self._learn_changes(learnt)
            if proof.seq <= self.last_executed:
                self._on_stable_proof(proof, signers)  # we missed the CHECKPOINT quorum
            elif rep.snapshot:
                try:
                    ok = state_digest(rep.snapshot) == proof.state_digest
                except ValueError:
                    ok = False
                if not ok:
                    self._drop(sender, "bad-snapshot")
                    return
                self._install_snapshot(proof, rep.snapshot, signers)
            else:
                self._start_transfer(proof, signers, sender, rep.decided)
                return
        self._apply_decided(rep.decided, sender)

    def _apply_decided(self: Any, decided: tuple[CommitCertificate, ...], sender: str) -> None:
        """Verify and execute the certificates that continue our log, in order."""
        for cert in decided:
            if cert.seq != self.last_executed + 1:
                continue
            try:
                verify(cert, self.members, verify_fn=self.verify)
            except CertificateError:
                self._drop(sender, "bad-commit-certificate")
                return
            slot = self.slots.setdefault(cert.seq, self._new_slot())
            slot.cert = cert
            self._execute_ready()

    def _install_snapshot(self: Any, proof: CheckpointProof, snap: bytes,
                          signers: Any = None) -> None:
        try:
            self.state.restore(snap)
        except ValueError:
            raise AssertionError("a certified snapshot failed to restore") from None
        self.snapshots[proof.seq] = (snap, proof.state_digest, self.state.members)
        for key in [k for k, r in self.pending.items() if self.state.is_duplicate(r)]:
            self._unpool(key)
        self._make_stable(proof, signers)
        if not self.in_view_change:
            self.timer_on = False
            self._arm_timer()
        self._caught_up()

    # -- chunked snapshot transfer ------------------------------------------------------
    def _may_serve(self: Any, peer: str, kind: int) -> bool:
        """Whether ``peer`` may have one more reply of ``kind`` (STATE-REPLY, manifest or
        chunk) in the current window of ``resend_interval`` ticks (:data:`SERVE_LIMITS`):
        a few bytes of request buy up to a 4 MiB reply, so a faulty member must not be
        able to make honest replicas send without bound. Over the limit the request is
        dropped and counted (``serve-limit``); an honest requester re-asks next window."""
        window = self.served.get(peer)
        if window is None or self.now - window[0] >= self.cfg.resend_interval:
            window = self.served[peer] = [self.now, 0, 0, 0]
        if window[1 + kind] >= SERVE_LIMITS[kind]:
            self._drop(peer, "serve-limit")
            return False
        window[1 + kind] += 1
        return True

    def _snapshot_peer(self: Any, sender: str) -> bool:
        pend = self.state.pending_members
        known = sender in self.members or (pend is not None and sender in pend[1])
        if not known or sender == self.me:
            self._drop(sender, "not-member")
            return False
        return True

    def _serve_parts(self: Any, seq: int) -> tuple[int, bytes, bytes, bytes, bytes, bytes] | None:
        """``(seq, state digest, body, chunk hashes, members, pending)`` of the snapshot
        kept at ``seq`` (None when not kept); the latest one is cached."""
        entry = self.snapshots.get(seq)
        if entry is None:
            return None
        cached = self._serving
        if cached is not None and cached[0] == seq and cached[1] == entry[1]:
            return cached
        body, members, pending = snapshot_parts(entry[0])
        self._serving = (seq, entry[1], body, chunk_hashes(body), members, pending)
        return self._serving

    def _step_manifest_request(self: Any, req: SnapshotManifestRequest, sender: str) -> None:
        if not self._snapshot_peer(sender):
            return
        parts = self._serve_parts(req.seq)
        if parts is None:
            return  # not kept (collected, or never reached): the requester asks another
        if not self._may_serve(sender, _MANIFEST_KIND):
            return
        seq, _digest, body, hashes, members, pending = parts
        self._send(SnapshotManifest(seq, len(body), hashes, members, pending), (sender,))

    def _step_chunk_request(self: Any, req: SnapshotChunkRequest, sender: str) -> None:
        if not self._snapshot_peer(sender):
            return
        parts = self._serve_parts(req.seq)
        if parts is None:
            return
        body = parts[2]
        if req.index >= chunk_count(len(body)):
            self._drop(sender, "bad-chunk-index")
            return
        if not self._may_serve(sender, _CHUNK):
            return
        at = req.index * CHUNK_BYTES
        self._send(SnapshotChunk(req.seq, req.index, body[at:at + CHUNK_BYTES]), (sender,))

    def _start_transfer(self: Any, proof: CheckpointProof, signers: Any, sender: str,
                        decided: tuple[CommitCertificate, ...]) -> None:
        """Fetch the snapshot at the verified checkpoint ``proof`` in chunks (a peer
        replied without it: too large for one message)."""
        x = self.xfer
        if x is not None and x.proof.seq >= proof.seq:
            if x.proof.seq == proof.seq:
                if sender not in x.sources and sender != self.me:
                    x.sources = sorted({*x.sources, sender})
                if len(decided) > len(x.decided):
                    x.decided, x.replier = decided, sender
            return
        carry: dict[bytes, bytes] = {}
        if x is not None:  # a newer checkpoint: keep the chunks that recur
            carry = dict(x.carry)
            for i in sorted(x.chunks):
                carry[x.hashes[i]] = x.chunks[i]
        sources = sorted(({c.sender for c in proof.checkpoints} | {sender}) - {self.me})
        self.xfer = _Transfer(proof, signers, sources, decided, sender, self.now,
                              carry=carry)
        self._pump_transfer()

    def _transfer_peer(self: Any, x: _Transfer) -> str | None:
        pool = [p for p in x.sources if p not in x.bad and p not in x.slow] or \
            [p for p in x.sources if p not in x.bad] or \
            [p for p in self._others() if p not in x.bad]
        if not pool:
            return None
        x.rr += 1
        return pool[(x.rr - 1) % len(pool)]

    def _pump_transfer(self: Any) -> None:
        """Keep the manifest, or up to ``MAX_OUTSTANDING_CHUNKS`` chunks, requested."""
        x = self.xfer
        if x is None:
            return
        seq = x.proof.seq
        if x.manifest is None:
            if _MANIFEST not in x.asked:
                peer = self._transfer_peer(x)
                if peer is not None:
                    x.asked[_MANIFEST] = (peer, self.now)
                    self._send(SnapshotManifestRequest(seq), (peer,))
            return
        while x.todo and len(x.asked) < MAX_OUTSTANDING_CHUNKS:
            i = x.todo.popleft()
            if i in x.chunks or i in x.asked:
                continue
            peer = self._transfer_peer(x)
            if peer is None:
                x.todo.appendleft(i)
                return
            x.asked[i] = (peer, self.now)
            self._send(SnapshotChunkRequest(seq, i), (peer,))

    def _transfer_timeouts(self: Any) -> None:
        """Re-ask (the next peer) for what went unanswered ``resend_interval`` ticks."""
        x = self.xfer
        if x is None:
            return
        late = sorted(i for i, (_p, t) in x.asked.items()
                      if self.now - t >= self.cfg.resend_interval)
        for i in reversed(late):
            x.slow.add(x.asked.pop(i)[0])
            if i != _MANIFEST:
                x.todo.appendleft(i)
        self._pump_transfer()

    def _step_snapshot_manifest(self: Any, m: SnapshotManifest, sender: str) -> None:
        x = self.xfer
        if x is None or m.seq != x.proof.seq or x.manifest is not None:
            self._drop(sender, "stale-manifest")
            return
        try:
            ok = manifest_digest(m.size, m.chunk_hashes, m.members, m.pending) == \
                x.proof.state_digest
        except ValueError:
            ok = False
        if not ok:
            self._drop(sender, "bad-manifest")
            x.bad.add(sender)
            if x.asked.get(_MANIFEST, ("",))[0] == sender:
                del x.asked[_MANIFEST]
                self._pump_transfer()
            return
        x.asked.pop(_MANIFEST, None)
        x.manifest, x.progress = m, self.now
        hs = m.chunk_hashes
        x.hashes = [hs[k:k + 32] for k in range(0, len(hs), 32)]
        for i, h in enumerate(x.hashes):
            data = x.carry.get(h)
            if data is not None:
                x.chunks[i] = data
            else:
                x.todo.append(i)
        x.carry = {}
        self._transfer_step()

    def _step_snapshot_chunk(self: Any, c: SnapshotChunk, sender: str) -> None:
        x = self.xfer
        if x is None or x.manifest is None or c.seq != x.proof.seq or \
                not 0 <= c.index < len(x.hashes) or c.index in x.chunks:
            self._drop(sender, "stale-chunk")
            return
        if sha256(c.data) != x.hashes[c.index]:
            self._drop(sender, "bad-chunk")
            x.bad.add(sender)
            if x.asked.get(c.index, ("",))[0] == sender:
                del x.asked[c.index]
                x.todo.appendleft(c.index)
                self._pump_transfer()
            return
        x.chunks[c.index] = c.data
        x.asked.pop(c.index, None)
        x.slow.discard(sender)
        x.progress = self.now
        self._transfer_step()

    def _transfer_step(self: Any) -> None:
        """Ask for more, or install the snapshot once every chunk is in."""
        x = self.xfer
        if x is None or x.manifest is None:
            return
        if len(x.chunks) < len(x.hashes):
            self._pump_transfer()
            return
        self.xfer = None
        m, proof = x.manifest, x.proof
        if proof.seq <= self.last_executed:
            return  # got there another way meanwhile
        body = b"".join(x.chunks[i] for i in range(len(x.hashes)))
        try:
            snap = join_snapshot(body, m.members, m.pending)
            ok = len(body) == m.size and state_digest(snap) == proof.state_digest
        except ValueError:
            ok = False
        if not ok:  # unreachable with SHA-256: every part matched a certified hash
            raise AssertionError(f"verified snapshot chunks do not rebuild {proof.seq}")
        self._install_snapshot(proof, snap, x.signers)
        self._apply_decided(x.decided, x.replier)
