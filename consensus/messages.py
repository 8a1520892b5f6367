"""PBFT protocol messages and their strict wire codec (Castro & Liskov, TOCS 2002, 4.2-4.5).

Theory of operation
-------------------
Every message is a frozen, slotted dataclass. On the wire a message is the canonical
msgpack array ``[KIND, field, field, ...]`` (:mod:`identity.canonical`), nested messages
as nested arrays. Each class declares ``_SPEC``: the ordered fields with their wire type,
so one generic encoder and one generic, strict decoder serve every message:

* ``int``     a non-negative integer below 2**63 (views, sequence numbers, ids);
* ``str``     a UTF-8 string of at most 256 bytes (PeerIds, client ids);
* ``bytes``   with an exact length (digests 32, signatures 64) or a maximum length;
* a message class, a tuple of a message class, or ``None``-able message class.

Signed messages (request, pre-prepare, prepare, commit, checkpoint, view-change, new-view) are
signed with Ed25519 over :meth:`signing_bytes`: the canonical encoding of
``[DOMAIN, KIND, fields...]`` without the signature (and, for a pre-prepare, without the
batch, which the signed digest already binds; for a view change, with only the summary of
its proofs, see :class:`ViewChange`).

Size: the codec refuses messages above 4 MiB, so certificates inside view changes are
compact (:class:`PreparedProof`: one signer bitmap plus the signatures, no batch) and a
NEW-VIEW carries VIEW-CHANGE summaries, not whole VIEW-CHANGEs (see
:mod:`consensus.viewchange` for the sizes). ``sender`` is the signer's member id; the
receiver looks the key up in its member map. The signing bytes are cached on the object
so a simulator that hands one object to 100 replicas encodes it once.

:func:`decode_message` turns arbitrary bytes into a message or raises
:class:`MessageDecodeError` (a :class:`identity.canonical.DecodeError`) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from identity.canonical import MAX_MESSAGE_BYTES, DecodeError, decode

from .wire import (
    DOMAIN,
    MessageDecodeError,
    cache_field,
    sha256,
    sig_field,
)
from .wire import Signed as _Signed
from .wire import Wire as _Wire
from .wire import pack as _pack

__all__ = [
    "DOMAIN", "Batch", "Checkpoint", "CheckpointProof", "Commit", "CommitCertificate",
    "Evidence", "Member", "MembershipProof", "Message", "MessageDecodeError", "NewView",
    "PrePrepare", "Prepare",
    "PreparedEntry", "PreparedProof", "Request", "SnapshotChunk", "SnapshotChunkRequest",
    "SnapshotManifest", "SnapshotManifestRequest", "StateReply", "StateRequest", "ViewChange",
    "ViewChangeSummary",
    "batch_digest", "decode_message", "encode_message", "sha256",
]

_sig = sig_field
_cache = cache_field


@dataclass(frozen=True, slots=True)
class Request(_Signed):
    """REQUEST(o, t, c) of TOCS 4.1, submitted and signed by a member on behalf of one of
    its local clients.

    ``client`` names the client *within* its ``origin`` member (a str of at most 256
    bytes), ``rid`` is that client's request id (the timestamp ``t`` of the paper: ids
    execute at most once, :class:`consensus.state.ReplicatedState`), ``op`` the
    operation (at most 1 MiB), ``origin`` the member id that submitted the request and
    ``sig`` its 64-byte Ed25519 signature over :meth:`signing_bytes`
    (``[DOMAIN, KIND, client, rid, op, origin]``).

    The de-duplication key is :attr:`key` ``(origin, client, rid)``: client ids are
    local to the member that signs for them, so a faulty member cannot submit a request
    under another member's client and pre-empt the real one (the paper's clients sign
    their own requests; here the members are the only key holders, and a client reaches
    the mesh through one member). Replicas verify the signature on receipt and inside
    every PRE-PREPARE's batch; :func:`consensus.certificate.verify` checks it offline."""

    client: str
    rid: int
    op: bytes
    origin: str = ""
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 1
    _SPEC: ClassVar = (("client", "str"), ("rid", "int"), ("op", "bytes"), ("origin", "str"),
                       ("sig", "b64"))

    @property
    def sender(self) -> str:
        """The signer (``origin``), so member-set signature checks apply as to votes."""
        return self.origin

    @property
    def key(self) -> tuple[str, str, int]:
        """``(origin, client, rid)``: what de-duplication and the pending pool key on."""
        return (self.origin, self.client, self.rid)


@dataclass(frozen=True, slots=True)
class Evidence(_Wire):
    """Two validly signed, conflicting messages (same kind, sender, view, sequence number,
    different digests) from one replica: proof of equivocation. ``a``/``b`` are wire
    bytes of the two messages, ordered so that ``a < b``."""

    a: bytes
    b: bytes
    KIND: ClassVar[int] = 2
    _SPEC: ClassVar = (("a", "bytes"), ("b", "bytes"))


@dataclass(frozen=True, slots=True)
class Batch(_Wire):
    """The value agreed at one sequence number: requests in order, plus committed evidence.

    ``view`` and ``primary`` name the view and primary that created the batch; they are
    part of the digest, so the committed log records which view produced each batch
    (leader reputation reads it). A null batch (no requests) fills gaps in a new view.
    """

    view: int
    primary: str
    requests: tuple[Request, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    _w: list[Any] | None = _cache()
    _d: bytes | None = _cache()
    KIND: ClassVar[int] = 3
    _SPEC: ClassVar = (("view", "int"), ("primary", "str"), ("requests", ("tuple", Request)),
                       ("evidence", ("tuple", Evidence)))

    def wire(self) -> list[Any]:
        cached = self._w
        if cached is None:
            cached = _Wire.wire(self)
            object.__setattr__(self, "_w", cached)
        return cached


def batch_digest(batch: Batch) -> bytes:
    """SHA-256 of the batch's canonical encoding (the ``digest`` field of the protocol);
    memoised on the (immutable) batch."""
    cached = batch._d
    if cached is None:
        cached = sha256(_pack(batch.wire()))
        object.__setattr__(batch, "_d", cached)
    return cached


@dataclass(frozen=True, slots=True)
class PrePrepare(_Signed):
    """PRE-PREPARE(v, n, d) by the primary of view ``view`` (TOCS 4.2). ``batch`` travels
    with it but is not signed (the digest binds it); it is None inside certificates."""

    view: int
    seq: int
    digest: bytes
    sender: str
    sig: bytes = _sig()
    batch: Batch | None = None
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 10
    _SPEC: ClassVar = (("view", "int"), ("seq", "int"), ("digest", "b32"), ("sender", "str"),
                       ("sig", "b64"), ("batch", ("opt", Batch)))
    _UNSIGNED: ClassVar = frozenset({"sig", "batch"})


@dataclass(frozen=True, slots=True)
class Prepare(_Signed):
    """PREPARE(v, n, d, i) by a backup (TOCS 4.2)."""

    view: int
    seq: int
    digest: bytes
    sender: str
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 11
    _SPEC: ClassVar = (("view", "int"), ("seq", "int"), ("digest", "b32"), ("sender", "str"),
                       ("sig", "b64"))


@dataclass(frozen=True, slots=True)
class Commit(_Signed):
    """COMMIT(v, n, d, i) (TOCS 4.2); a quorum of them is a commit certificate."""

    view: int
    seq: int
    digest: bytes
    sender: str
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 12
    _SPEC: ClassVar = (("view", "int"), ("seq", "int"), ("digest", "b32"), ("sender", "str"),
                       ("sig", "b64"))


@dataclass(frozen=True, slots=True)
class Checkpoint(_Signed):
    """CHECKPOINT(n, d, i): the state digest after executing sequence number n (TOCS 4.3)."""

    seq: int
    state_digest: bytes
    sender: str
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 13
    _SPEC: ClassVar = (("seq", "int"), ("state_digest", "b32"), ("sender", "str"),
                       ("sig", "b64"))


@dataclass(frozen=True, slots=True)
class CheckpointProof(_Wire):
    """A stable-checkpoint certificate: a quorum of CHECKPOINT(seq, state_digest) from
    distinct members. ``seq == 0`` with no checkpoints is the genesis proof."""

    seq: int
    state_digest: bytes
    checkpoints: tuple[Checkpoint, ...] = ()
    KIND: ClassVar[int] = 20
    _SPEC: ClassVar = (("seq", "int"), ("state_digest", "b32"),
                       ("checkpoints", ("tuple", Checkpoint)))


@dataclass(frozen=True, slots=True)
class PreparedProof(_Wire):
    """A compact prepared certificate (TOCS 4.4) for ``(view, seq, digest)``: the
    PRE-PREPARE's sender and signature, and a quorum of PREPARE signatures as a signer
    bitmap over the sorted member ids (bit ``i``, most significant first, is member
    ``i``) plus their 64-byte signatures concatenated in member order. The batch is not
    carried (the digest binds it). Verify with
    :func:`consensus.certificate.verify_prepared`."""

    view: int
    seq: int
    digest: bytes
    primary: str
    pp_sig: bytes
    signers: bytes
    sigs: bytes
    KIND: ClassVar[int] = 21
    _SPEC: ClassVar = (("view", "int"), ("seq", "int"), ("digest", "b32"),
                       ("primary", "str"), ("pp_sig", "b64"), ("signers", "bytes"),
                       ("sigs", "bytes"))

    def pre_prepare(self) -> PrePrepare:
        """The signed PRE-PREPARE header (no batch) the certificate carries."""
        return PrePrepare(self.view, self.seq, self.digest, self.primary, self.pp_sig)


@dataclass(frozen=True, slots=True)
class CommitCertificate(_Wire):
    """A quorum of COMMIT(view, seq, digest(batch)) from distinct members plus the batch:
    proof that ``batch`` was decided at ``seq``. Verify with
    :func:`consensus.certificate.verify`."""

    seq: int
    view: int
    batch: Batch
    commits: tuple[Commit, ...]
    KIND: ClassVar[int] = 22
    _SPEC: ClassVar = (("seq", "int"), ("view", "int"), ("batch", Batch),
                       ("commits", ("tuple", Commit)))


def _vc_signing_bytes(new_view: int, ckpt_seq: int, ckpt_digest: bytes,
                      entries: list[list[Any]], executed: int, sender: str) -> bytes:
    return _pack([DOMAIN, ViewChange.KIND, new_view, ckpt_seq, ckpt_digest, entries, executed,
                  sender])


@dataclass(frozen=True, slots=True)
class ViewChange(_Signed):
    """VIEW-CHANGE(v+1, n, C, P, i) (TOCS 4.4): ``checkpoint`` is the sender's stable
    checkpoint proof (n and C), ``prepared`` its prepared certificates above it (P),
    ``executed`` its last executed sequence number (not in the paper: lets the new
    primary and the backups catch up before they compute who leads the new view, see
    :mod:`consensus.viewchange`).

    The signature covers ``(new_view, n, state digest, [(seq, view, digest) of P],
    executed, sender)`` only, not the proofs (they verify on their own against those
    values), so a NEW-VIEW can carry the signed :meth:`summary` instead of the whole
    message."""

    new_view: int
    checkpoint: CheckpointProof
    prepared: tuple[PreparedProof, ...]
    executed: int
    sender: str
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 14
    _SPEC: ClassVar = (("new_view", "int"), ("checkpoint", CheckpointProof),
                       ("prepared", ("tuple", PreparedProof)), ("executed", "int"),
                       ("sender", "str"), ("sig", "b64"))

    def signing_bytes(self) -> bytes:
        cached = self._sb
        if cached is None:
            cp = self.checkpoint
            cached = _vc_signing_bytes(self.new_view, cp.seq, cp.state_digest,
                                       [[p.seq, p.view, p.digest] for p in self.prepared],
                                       self.executed, self.sender)
            object.__setattr__(self, "_sb", cached)
        return cached

    def summary(self) -> ViewChangeSummary:
        """The signed part, as carried in a NEW-VIEW."""
        cp = self.checkpoint
        return ViewChangeSummary(
            self.new_view, cp.seq, cp.state_digest,
            tuple(PreparedEntry(p.seq, p.view, p.digest) for p in self.prepared),
            self.executed, self.sender, self.sig)


@dataclass(frozen=True, slots=True)
class PreparedEntry(_Wire):
    """``(seq, view, digest)`` of one prepared certificate named in a VIEW-CHANGE."""

    seq: int
    view: int
    digest: bytes
    KIND: ClassVar[int] = 23
    _SPEC: ClassVar = (("seq", "int"), ("view", "int"), ("digest", "b32"))


@dataclass(frozen=True, slots=True)
class ViewChangeSummary(_Wire):
    """The signed part of a :class:`ViewChange` (same signature): its new view, the
    sequence number and state digest of its stable checkpoint and the
    :class:`PreparedEntry` s of its prepared certificates, its last executed sequence
    number."""

    new_view: int
    ckpt_seq: int
    ckpt_digest: bytes
    prepared: tuple[PreparedEntry, ...]
    executed: int
    sender: str
    sig: bytes
    KIND: ClassVar[int] = 24
    _SPEC: ClassVar = (("new_view", "int"), ("ckpt_seq", "int"), ("ckpt_digest", "b32"),
                       ("prepared", ("tuple", PreparedEntry)), ("executed", "int"),
                       ("sender", "str"), ("sig", "b64"))

    def signing_bytes(self) -> bytes:
        return _vc_signing_bytes(self.new_view, self.ckpt_seq, self.ckpt_digest,
                                 [[p.seq, p.view, p.digest] for p in self.prepared],
                                 self.executed, self.sender)


@dataclass(frozen=True, slots=True)
class NewView(_Signed):
    """NEW-VIEW(v+1, V, O) (TOCS 4.4), compact: ``view_changes`` are the signed
    summaries of a quorum of VIEW-CHANGEs (V); ``checkpoint`` proves the highest stable
    checkpoint they name (min-s); ``proofs`` holds, for every sequence number at which O
    re-proposes a prepared batch, the prepared certificate of the highest view named in
    V (in sequence order); ``pre_prepares`` is O: signed PRE-PREPAREs without batches
    (receivers recompute O from V and compare; batches are known or fetched by state
    transfer once decided)."""

    view: int
    view_changes: tuple[ViewChangeSummary, ...]
    checkpoint: CheckpointProof
    proofs: tuple[PreparedProof, ...]
    pre_prepares: tuple[PrePrepare, ...]
    sender: str
    sig: bytes = _sig()
    _sb: bytes | None = _cache()
    _w: list[Any] | None = _cache()
    KIND: ClassVar[int] = 15
    _SPEC: ClassVar = (("view", "int"), ("view_changes", ("tuple", ViewChangeSummary)),
                       ("checkpoint", CheckpointProof), ("proofs", ("tuple", PreparedProof)),
                       ("pre_prepares", ("tuple", PrePrepare)), ("sender", "str"),
                       ("sig", "b64"))


@dataclass(frozen=True, slots=True)
class StateRequest(_Wire):
    """Ask a peer for decided batches from sequence number ``from_seq`` on (state transfer).
    Unsigned: the reply is self-certifying."""

    from_seq: int
    KIND: ClassVar[int] = 30
    _SPEC: ClassVar = (("from_seq", "int"),)


@dataclass(frozen=True, slots=True)
class Member(_Wire):
    """One member: id and 32-byte Ed25519 public key."""

    id: str
    key: bytes
    KIND: ClassVar[int] = 25
    _SPEC: ClassVar = (("id", "str"), ("key", "b32"))


@dataclass(frozen=True, slots=True)
class MembershipProof(_Wire):
    """The member set that took effect at checkpoint ``checkpoint.seq`` (a membership
    change's boundary), proven to whoever knows the previous set: ``checkpoint`` is the
    stable-checkpoint certificate at the boundary (signed by the previous set) and its
    state digest is ``sha256(body_digest || sha256(members) || pending_digest)``
    (:func:`consensus.state.digest_parts`). Verify with
    :func:`consensus.certificate.verify_membership`."""

    checkpoint: CheckpointProof
    body_digest: bytes
    pending_digest: bytes
    members: tuple[Member, ...]
    KIND: ClassVar[int] = 26
    _SPEC: ClassVar = (("checkpoint", CheckpointProof), ("body_digest", "b32"),
                       ("pending_digest", "b32"), ("members", ("tuple", Member)))


@dataclass(frozen=True, slots=True)
class StateReply(_Wire):
    """State transfer reply: the responder's stable checkpoint proof, the replicated-state
    snapshot at it (empty when the requester does not need it), commit certificates
    for the decided batches after it, in sequence order, and the membership changes that
    took effect recently (so a requester that still knows an older member set can verify
    the proof: each change is certified by the set before it). ``snapshot`` is also
    empty when it exceeds 512 KiB: the requester then fetches it as a
    :class:`SnapshotManifest` plus verified :class:`SnapshotChunk` s
    (:mod:`consensus.checkpoint`); ``decided`` holds only the certificates that fit one
    message."""

    checkpoint: CheckpointProof
    snapshot: bytes
    decided: tuple[CommitCertificate, ...]
    members: tuple[MembershipProof, ...] = ()
    KIND: ClassVar[int] = 31
    _SPEC: ClassVar = (("checkpoint", CheckpointProof), ("snapshot", "bytes"),
                       ("decided", ("tuple", CommitCertificate)),
                       ("members", ("tuple", MembershipProof)))


# -- chunked state transfer (TOCS 2002, 6.2; see consensus.checkpoint) ------------------
@dataclass(frozen=True, slots=True)
class SnapshotManifestRequest(_Wire):
    """Ask a peer for the :class:`SnapshotManifest` of its snapshot at checkpoint ``seq``.
    Unsigned: the manifest is checked against a certified state digest."""

    seq: int
    KIND: ClassVar[int] = 32
    _SPEC: ClassVar = (("seq", "int"),)


@dataclass(frozen=True, slots=True)
class SnapshotManifest(_Wire):
    """What a requester needs to fetch and verify the snapshot at checkpoint ``seq`` in
    chunks: the body's ``size`` in bytes, its ``chunk_hashes`` (32 bytes per
    256 KiB chunk, :func:`consensus.state.chunk_hashes`; at most 1 MiB, so bodies up to
    8 GiB), and the canonical encodings of the snapshot's member list (``members``) and
    pending change (``pending``). Unsigned: it must hash to the state digest of a
    certified checkpoint (:func:`consensus.state.manifest_digest`)."""

    seq: int
    size: int
    chunk_hashes: bytes
    members: bytes
    pending: bytes
    KIND: ClassVar[int] = 33
    _SPEC: ClassVar = (("seq", "int"), ("size", "int"), ("chunk_hashes", "bytes"),
                       ("members", "bytes"), ("pending", "bytes"))


@dataclass(frozen=True, slots=True)
class SnapshotChunkRequest(_Wire):
    """Ask a peer for chunk ``index`` (0-based) of the body of its snapshot at checkpoint
    ``seq``. Unsigned."""

    seq: int
    index: int
    KIND: ClassVar[int] = 34
    _SPEC: ClassVar = (("seq", "int"), ("index", "int"))


@dataclass(frozen=True, slots=True)
class SnapshotChunk(_Wire):
    """Chunk ``index`` of the body of the snapshot at checkpoint ``seq``: at most
    256 KiB of ``data`` whose SHA-256 is entry ``index`` of the manifest's chunk hashes.
    Unsigned: verified against the manifest."""

    seq: int
    index: int
    data: bytes
    KIND: ClassVar[int] = 35
    _SPEC: ClassVar = (("seq", "int"), ("index", "int"), ("data", "bytes"))


Message = (Request | PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView
           | StateRequest | StateReply | SnapshotManifestRequest | SnapshotManifest
           | SnapshotChunkRequest | SnapshotChunk)
_TOP = {c.KIND: c for c in (Request, PrePrepare, Prepare, Commit, Checkpoint, ViewChange,
                            NewView, StateRequest, StateReply, CommitCertificate, Evidence,
                            PreparedProof, CheckpointProof, Batch, ViewChangeSummary,
                            MembershipProof, SnapshotManifestRequest, SnapshotManifest,
                            SnapshotChunkRequest, SnapshotChunk)}


def encode_message(msg: Any) -> bytes:
    """Canonical wire bytes of a message (or certificate / evidence)."""
    return _pack(msg.wire())


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode wire bytes into a message. Raises only :class:`MessageDecodeError`.
    ``max_bytes`` (default the 4 MiB network limit) may be raised for a replica's own
    local records, which never crossed the network."""
    try:
        obj = decode(data, max_bytes=max_bytes)
    except DecodeError as exc:
        raise MessageDecodeError(str(exc)) from None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int or obj[0] not in _TOP:
        raise MessageDecodeError("unknown message kind")
    try:
        return _TOP[obj[0]].from_wire(obj)
    except MessageDecodeError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:
        raise MessageDecodeError(f"malformed message: {exc}") from None
