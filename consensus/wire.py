"""The generic wire codec of PBFT messages (:mod:`consensus.messages` declares them).

Theory of operation
-------------------
A message class is a frozen, slotted dataclass deriving :class:`Wire` (or
:class:`Signed`) with a ``KIND`` and a ``_SPEC``: its ordered fields and their wire
types (``"int"``, ``"str"``, ``"bytes"``, ``"b32"``, ``"b64"``, ``"bool"``, a message
class, ``("tuple", Cls)`` or ``("opt", Cls)``). :meth:`Wire.wire` gives the wire value
``[KIND, field, ...]`` and :meth:`Wire.from_wire` checks and rebuilds it, raising only
:class:`MessageDecodeError`. :func:`pack` is the canonical encoding of wire values.
"""

from __future__ import annotations

import hashlib
from dataclasses import field
from typing import Any, ClassVar

import msgpack

from identity.canonical import DecodeError

__all__ = ["DOMAIN", "MAX_ITEMS", "MAX_OP_BYTES", "MessageDecodeError", "Signed", "Wire",
           "cache_field", "pack", "sha256", "sig_field"]

#: Domain separation prefix of every signed PBFT message.
DOMAIN = "meshnode/pbft/1"
_MAX_INT = 2**63 - 1
_MAX_STR = 256
_MAX_OP = 1024 * 1024
_MAX_ITEMS = 4096
#: Largest ``bytes`` field (a request's ``op``, a snapshot part) the codec accepts.
MAX_OP_BYTES = _MAX_OP
#: Most elements of a tuple field (e.g. requests in a batch) the codec accepts.
MAX_ITEMS = _MAX_ITEMS


class MessageDecodeError(DecodeError):
    """Bytes that are not one well-formed PBFT message (the only error decode raises)."""


def sha256(data: bytes) -> bytes:
    """The 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


class _Wire:
    """Mixin: generic to-wire / from-wire driven by the class's ``_SPEC``."""

    __slots__ = ()
    KIND: ClassVar[int]
    _SPEC: ClassVar[tuple[tuple[str, Any], ...]]

    def wire(self) -> list[Any]:
        return [self.KIND] + [_to_wire(getattr(self, n), t) for n, t in self._SPEC]

    @classmethod
    def from_wire(cls, obj: Any) -> Any:
        if not isinstance(obj, list) or len(obj) != len(cls._SPEC) + 1 or obj[0] != cls.KIND:
            raise MessageDecodeError(f"not a {cls.__name__}")
        values = [_from_wire(v, t, n) for v, (n, t) in zip(obj[1:], cls._SPEC, strict=True)]
        return cls(*values)


class _Signed(_Wire):
    """Mixin for signed messages: ``sender`` and ``sig`` are the last two fields."""

    __slots__ = ()
    _UNSIGNED: ClassVar[frozenset[str]] = frozenset({"sig"})

    def wire(self) -> list[Any]:
        cached = self._w  # type: ignore[attr-defined]
        if cached is None:
            cached = _Wire.wire(self)
            object.__setattr__(self, "_w", cached)
        return cached

    def signing_bytes(self) -> bytes:
        """Canonical bytes the sender signs: ``[DOMAIN, KIND, fields except sig]``."""
        cached = self._sb  # type: ignore[attr-defined]
        if cached is None:
            body = [_to_wire(getattr(self, n), t) for n, t in self._SPEC if n not in self._UNSIGNED]
            cached = _pack([DOMAIN, self.KIND, *body])
            object.__setattr__(self, "_sb", cached)
        return cached


def _pack(obj: Any) -> bytes:
    """Canonical encoding of a wire value. Wire values are arrays of ints, strs, bytes,
    bools and None only (no maps, no floats), for which plain msgpack with the bin type
    *is* the canonical form of :func:`identity.canonical.encode` (same bytes, checked in
    the tests), without its per-node normalisation pass."""
    return msgpack.packb(obj, use_bin_type=True)


def _to_wire(value: Any, typ: Any) -> Any:
    if isinstance(typ, tuple):  # ("tuple", Cls) or ("opt", Cls)
        kind, cls = typ
        if kind == "tuple":
            return [v.wire() for v in value]
        return None if value is None else value.wire()
    if isinstance(typ, type) and issubclass(typ, _Wire):
        return value.wire()
    return value


def _from_wire(value: Any, typ: Any, name: str) -> Any:
    if isinstance(typ, tuple):
        kind, cls = typ
        if kind == "tuple":
            if not isinstance(value, list) or len(value) > _MAX_ITEMS:
                raise MessageDecodeError(f"{name}: expected a list")
            return tuple(cls.from_wire(v) for v in value)
        return None if value is None else cls.from_wire(value)
    if isinstance(typ, type) and issubclass(typ, _Wire):
        return typ.from_wire(value)
    if typ == "int":
        if type(value) is not int or not 0 <= value <= _MAX_INT:
            raise MessageDecodeError(f"{name}: expected a non-negative int")
        return value
    if typ == "str":
        if type(value) is not str or len(value.encode("utf-8")) > _MAX_STR:
            raise MessageDecodeError(f"{name}: expected a short str")
        return value
    if typ == "bool":
        if type(value) is not bool:
            raise MessageDecodeError(f"{name}: expected a bool")
        return value
    # bytes: "b32", "b64" exact; "bytes" bounded
    if type(value) is not bytes:
        raise MessageDecodeError(f"{name}: expected bytes")
    if typ == "b32" and len(value) != 32 or typ == "b64" and len(value) != 64:
        raise MessageDecodeError(f"{name}: wrong length {len(value)}")
    if typ == "bytes" and len(value) > _MAX_OP:
        raise MessageDecodeError(f"{name}: too long")
    return value


def sig_field() -> Any:
    return field(default=b"", compare=True)


def cache_field() -> Any:
    """A memo slot (signing bytes, wire form): not an init argument, so
    ``dataclasses.replace`` never copies a stale memo into the new message."""
    return field(default=None, init=False, compare=False, repr=False, hash=False)



Wire = _Wire
Signed = _Signed
pack = _pack
