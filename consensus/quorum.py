"""Member sets and quorum arithmetic (Castro & Liskov, TOCS 2002, sections 2 and 4.2).

Theory of operation
-------------------
A :class:`Membership` is an immutable map ``member id (PeerId str) -> 32-byte Ed25519
public key``. With ``n`` members PBFT tolerates ``f = (n - 1) // 3`` Byzantine ones.
Certificates need a *quorum* ``q = (n + f) // 2 + 1`` of distinct members: any two
quorums intersect in at least ``f + 1`` members, so in at least one honest one. For
``n = 3f + 1`` this is the familiar ``2f + 1``; for other ``n`` (membership changes make
any ``n`` possible) it is the smallest size that keeps the intersection property.
A *weak certificate* (enough to be sure one honest member vouches) is ``f + 1``.

Iteration order is always the sorted member ids: never the dict order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from identity.canonical import encode
from identity.signer import PUBLIC_KEY_BYTES, verify_signature

from .messages import sha256

__all__ = ["Membership", "VerifyFn", "faults", "quorum"]

#: ``verify(public_key32, data, signature64) -> bool``; injectable so a simulator can cache.
VerifyFn = Callable[[bytes, bytes, bytes], bool]


def faults(n: int) -> int:
    """The number of Byzantine members ``n`` members tolerate: ``(n - 1) // 3``."""
    return max(0, (n - 1) // 3)


def quorum(n: int) -> int:
    """Smallest certificate size whose pairwise intersections hold ``f + 1`` members."""
    return (n + faults(n)) // 2 + 1


@dataclass(frozen=True, slots=True)
class Membership:
    """An immutable member set. Build with :meth:`of`; ``ids`` is sorted."""

    ids: tuple[str, ...]
    keys: tuple[bytes, ...]
    n: int = field(init=False, compare=False)
    f: int = field(init=False, compare=False)
    quorum: int = field(init=False, compare=False)
    weak: int = field(init=False, compare=False)  #: ``f + 1``: contains an honest member
    index: dict[str, int] = field(init=False, compare=False, repr=False)  #: id -> position
    _keys: dict[str, bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "f", faults(n))
        object.__setattr__(self, "quorum", quorum(n))
        object.__setattr__(self, "weak", faults(n) + 1)
        object.__setattr__(self, "index", {m: i for i, m in enumerate(self.ids)})
        object.__setattr__(self, "_keys", dict(zip(self.ids, self.keys, strict=True)))

    def __hash__(self) -> int:
        return hash(self.ids)

    @classmethod
    def of(cls, members: Mapping[str, bytes]) -> Membership:
        """From a ``{id: public_key32}`` map. Raises ValueError on an empty map, a non-str
        id, or a key that is not 32 bytes."""
        if not members:
            raise ValueError("a membership needs at least one member")
        ids = tuple(sorted(members))
        for i in ids:
            key = members[i]
            if not isinstance(i, str) or not isinstance(key, bytes):
                raise ValueError("member ids are str and keys are bytes")
            if len(key) != PUBLIC_KEY_BYTES:
                raise ValueError(f"member {i!r}: public key must be 32 bytes")
        return cls(ids, tuple(members[i] for i in ids))

    def as_dict(self) -> dict[str, bytes]:
        return dict(zip(self.ids, self.keys, strict=True))

    def key(self, member: str) -> bytes | None:
        """The member's public key, or None when ``member`` is not a member."""
        return self._keys.get(member)

    def __contains__(self, member: object) -> bool:
        return member in self._keys

    def digest(self) -> bytes:
        """SHA-256 over the canonical encoding of the sorted (id, key) pairs."""
        return sha256(encode([[i, k] for i, k in zip(self.ids, self.keys, strict=True)]))

    def wire(self) -> list[list[object]]:
        return [[i, k] for i, k in zip(self.ids, self.keys, strict=True)]

    def check_signed(self, msg: object, verify: VerifyFn = verify_signature) -> bool:
        """True when ``msg`` (a signed message) is from a member and its signature verifies."""
        key = self._keys.get(msg.sender)  # type: ignore[attr-defined]
        return key is not None and verify(key, msg.signing_bytes(), msg.sig)  # type: ignore[attr-defined]

    def pack_signatures(self, sigs: Mapping[str, bytes]) -> tuple[bytes, bytes]:
        """``(signers, signatures)``: a bitmap of ``ceil(n / 8)`` bytes (bit ``i``, most
        significant first, set when member ``ids[i]`` signed) and the 64-byte signatures
        of ``sigs`` (member id -> signature; non-members are left out) concatenated in
        member order."""
        idx = sorted(self.index[m] for m in sigs if m in self.index)
        bits = 0
        for i in idx:
            bits |= 1 << (self.n - 1 - i)
        nbytes = (self.n + 7) // 8
        bitmap = (bits << (nbytes * 8 - self.n)).to_bytes(nbytes, "big")
        return bitmap, b"".join(sigs[self.ids[i]] for i in idx)

    def unpack_signatures(self, signers: bytes, sigs: bytes) -> list[tuple[str, bytes, bytes]]:
        """Inverse of :meth:`pack_signatures`: ``[(member id, public key, signature)]``
        in member order. Raises ValueError when the bitmap has the wrong length or bits
        past ``n``, or the signatures do not add up to 64 bytes per signer."""
        nbytes = (self.n + 7) // 8
        if len(signers) != nbytes:
            raise ValueError(f"signer bitmap of {len(signers)} bytes, expected {nbytes}")
        pad = nbytes * 8 - self.n
        bits = int.from_bytes(signers, "big")
        if bits & ((1 << pad) - 1):
            raise ValueError("signer bitmap names members past n")
        bits >>= pad
        idx = [i for i in range(self.n) if bits >> (self.n - 1 - i) & 1]
        if len(sigs) != 64 * len(idx):
            raise ValueError(f"{len(sigs)} signature bytes for {len(idx)} signers")
        return [(self.ids[i], self.keys[i], sigs[64 * k: 64 * k + 64])
                for k, i in enumerate(idx)]

    def distinct_quorum(self, msgs: Iterable[object]) -> bool:
        """True when ``msgs`` come from at least a quorum of distinct members."""
        senders = {m.sender for m in msgs}  # type: ignore[attr-defined]
        return len(senders) >= self.quorum and all(s in self for s in senders)

