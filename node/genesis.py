"""The genesis file: the mesh's initial member set, signed by every initial member.

Theory of operation
-------------------
A mesh starts from one genesis document that every founding member signed with its
HSM key. Each member entry binds the member's stable identifier, its current Ed25519
key and PeerId (which derives from the key) and its listen multiaddrs; the entry carries
the member's key event log, so a verifier can check that the identifier really is
controlled by that key (KERI inception/rotations) without trusting anyone.

Encoding (canonical msgpack, :mod:`identity.canonical`):

* ``body = {"v": 1, "chain": str, "created_at": int (Unix s), "members": [member...],
  "params": {"checkpoint_interval": int, "window": int}}`` with members sorted by PeerId
  and ``member = {"id": str, "peer_id": str, "key": bin 32, "addrs": [str], "kel":
  [bin]}``. ``params`` are the protocol parameters every replica must share (PBFT's K
  and the watermark window L, a multiple of K): they live here, not in each node's
  config, so a node can never silently run with different ones;
* the file is ``{"body": bin, "signatures": {peer_id: bin 64}}``; each signature is
  Ed25519 over ``GENESIS_DOMAIN + body`` by that member's key.

Members in the consensus core are PeerId strings mapped to public keys
(:meth:`Genesis.members_map`); membership changes later only by committed operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from identity import canonical, records
from identity.did import peer_id_from_public_key
from identity.signer import Signer, verify_signature

__all__ = ["GENESIS_DOMAIN", "Genesis", "GenesisError", "Member", "build_body", "verify"]

GENESIS_DOMAIN = b"meshnode/genesis/v1\n"
MAX_GENESIS_BYTES = 4 * 1024 * 1024


class GenesisError(ValueError):
    """A genesis file that is malformed or does not verify (the message says why)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One founding member: stable identifier, PeerId, 32-byte key, multiaddrs, KEL."""

    identifier: str
    peer_id: str
    public_key: bytes
    addrs: tuple[str, ...]
    kel: tuple[bytes, ...]

    def to_obj(self) -> dict[str, Any]:
        return {"id": self.identifier, "peer_id": self.peer_id, "key": self.public_key,
                "addrs": list(self.addrs), "kel": list(self.kel)}


#: Default protocol parameters: a checkpoint every K sequence numbers, window L = 4K.
DEFAULT_CHECKPOINT_INTERVAL = 128
DEFAULT_WINDOW = 512


@dataclass(frozen=True, slots=True)
class Genesis:
    """A verified genesis: chain name, creation time (Unix s), members sorted by PeerId,
    and the shared protocol parameters (checkpoint interval K and window L)."""

    chain: str
    created_at: int
    members: tuple[Member, ...]
    body: bytes
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    window: int = DEFAULT_WINDOW

    def members_map(self) -> dict[str, bytes]:
        """``{peer_id: public_key}`` for ``consensus.quorum.Membership.of``."""
        return {m.peer_id: m.public_key for m in self.members}

    def member(self, peer_id: str) -> Member | None:
        return next((m for m in self.members if m.peer_id == peer_id), None)


def member_from_kel(kel: list[bytes], addrs: list[str]) -> Member:
    """Build a member entry from its encoded key event log and listen multiaddrs.

    Raises GenesisError when the log does not verify or the identity is revoked.
    """
    try:
        state = records.verify_log([records.KeyEvent.from_bytes(e) for e in kel])
    except records.RecordError as exc:
        raise GenesisError(f"member key event log: {exc}") from None
    if state.revoked:
        raise GenesisError(f"member {state.identifier} is revoked")
    return Member(state.identifier, state.peer_id, state.public_key, tuple(addrs), tuple(kel))


def build_body(chain: str, created_at: int, members: list[Member], *,
               checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
               window: int | None = None) -> bytes:
    """Canonical genesis body (what every member signs). ``window`` defaults to
    4 x ``checkpoint_interval``. Raises GenesisError on duplicate PeerIds, an empty
    member list, or a window that is not a positive multiple of the interval."""
    if not members:
        raise GenesisError("a genesis needs at least one member")
    window = 4 * checkpoint_interval if window is None else window
    _check_params(checkpoint_interval, window)
    ordered = sorted(members, key=lambda m: m.peer_id)
    if len({m.peer_id for m in ordered}) != len(ordered):
        raise GenesisError("duplicate member PeerId")
    return canonical.encode({"v": 1, "chain": chain, "created_at": created_at,
                             "members": [m.to_obj() for m in ordered],
                             "params": {"checkpoint_interval": checkpoint_interval,
                                        "window": window}})


def _check_params(interval: Any, window: Any) -> None:
    if (type(interval) is not int or type(window) is not int or interval <= 0
            or window < interval or window % interval):
        raise GenesisError("params: window must be a positive multiple of checkpoint_interval")


def sign_body(signer: Signer, body: bytes) -> bytes:
    """The member's 64-byte signature over ``GENESIS_DOMAIN + body``."""
    return signer.sign(GENESIS_DOMAIN + body)


def encode_file(body: bytes, signatures: dict[str, bytes]) -> bytes:
    """The genesis file bytes from the body and ``{peer_id: signature}``."""
    return canonical.encode({"body": body, "signatures": dict(signatures)})


def verify(data: bytes) -> Genesis:
    """Decode and verify a genesis file: every member's key event log, and a valid
    signature by every member (no more, no fewer). Returns the :class:`Genesis`.
    Raises GenesisError with the precise reason.
    """
    try:
        outer = canonical.decode(data, max_bytes=MAX_GENESIS_BYTES)
        body = canonical.decode(outer["body"])
    except (canonical.DecodeError, TypeError, KeyError) as exc:
        raise GenesisError(f"not a genesis file: {exc}") from None
    if type(outer) is not dict or set(outer) != {"body", "signatures"}:
        raise GenesisError("not a genesis file: expected body and signatures")
    if type(body) is not dict or body.get("v") != 1 or set(body) != {
        "v", "chain", "created_at", "members", "params"
    }:
        raise GenesisError("unsupported genesis body (version 1 expected)")
    params = body["params"]
    if type(params) is not dict or set(params) != {"checkpoint_interval", "window"}:
        raise GenesisError("params must hold checkpoint_interval and window")
    _check_params(params["checkpoint_interval"], params["window"])
    members = [_member(m) for m in body["members"]] if type(body["members"]) is list else []
    if not members or [m.peer_id for m in members] != sorted({m.peer_id for m in members}):
        raise GenesisError("members must be non-empty, unique and sorted by PeerId")
    sigs = outer["signatures"]
    if type(sigs) is not dict or sorted(sigs) != [m.peer_id for m in members]:
        raise GenesisError("every member, and only members, must sign the genesis")
    for m in members:
        if not verify_signature(m.public_key, GENESIS_DOMAIN + outer["body"], sigs[m.peer_id]):
            raise GenesisError(f"bad genesis signature by {m.peer_id}")
    if type(body["chain"]) is not str or type(body["created_at"]) is not int:
        raise GenesisError("chain must be a string and created_at an integer")
    return Genesis(body["chain"], body["created_at"], tuple(members), outer["body"],
                   params["checkpoint_interval"], params["window"])


def _member(obj: Any) -> Member:
    if type(obj) is not dict or set(obj) != {"id", "peer_id", "key", "addrs", "kel"}:
        raise GenesisError("malformed member entry")
    if type(obj["kel"]) is not list or type(obj["addrs"]) is not list:
        raise GenesisError("malformed member entry")
    if not all(type(a) is str for a in obj["addrs"]):
        raise GenesisError("member addrs must be strings")
    m = member_from_kel(obj["kel"], obj["addrs"])
    if (m.identifier, m.peer_id, m.public_key) != (obj["id"], obj["peer_id"], obj["key"]):
        raise GenesisError(f"member {obj['peer_id']!r:.60} does not match its key event log")
    if peer_id_from_public_key(m.public_key) != m.peer_id:  # pragma: no cover - derived
        raise GenesisError("PeerId does not derive from the key")
    return m
