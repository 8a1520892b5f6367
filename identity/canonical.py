"""Canonical msgpack encoding: one byte string per value, so signatures are reproducible.

Theory of operation
-------------------
Everything that is signed or hashed in meshnode (key events, identity records, PBFT
messages, certificates) is first turned into bytes by :func:`encode`. Two encoders must
agree byte for byte, so the encoding is *canonical*:

* map keys are ``str`` and are written in sorted order (by their UTF-8 bytes);
* ``bytes`` use the msgpack ``bin`` family, ``str`` the ``str`` family (``use_bin_type``);
* integers use the shortest msgpack form (msgpack-python already does this);
* floats, sets and custom types are refused (they have no single canonical form or no
  place in a protocol message); ``None`` is allowed (msgpack ``nil``);
* tuples and lists (named tuples included) both encode as arrays; decode yields lists.

:func:`decode` is strict: it enforces size and nesting limits and then re-encodes the
value and requires the same bytes, so a peer cannot make two different byte strings
that decode to the same signed value (signature malleability through encoding).

Spec: msgpack format (https://github.com/msgpack/msgpack/blob/master/spec.md).
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["DecodeError", "MAX_MESSAGE_BYTES", "decode", "encode"]

#: Upper bound on one encoded value, in bytes (frames above this are refused).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Maximum nesting depth of arrays and maps.
MAX_DEPTH = 32


class DecodeError(ValueError):
    """Raised by :func:`decode` for bytes that are not one canonical meshnode value."""


def _normalise(obj: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError(f"value nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [_normalise(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"map keys must be str, got {type(k).__name__}")
        return {
            k: _normalise(obj[k], depth + 1)
            for k in sorted(obj, key=lambda s: s.encode("utf-8"))
        }
    raise TypeError(f"type {type(obj).__name__} has no canonical encoding")


def encode(obj: Any) -> bytes:
    """Encode ``obj`` canonically.

    Accepts ``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``str``, ``bytes``, lists,
    tuples and ``dict[str, ...]`` nested at most :data:`MAX_DEPTH` deep.

    Returns the msgpack bytes. Raises ``TypeError`` for any other type (floats included)
    and ``OverflowError`` for integers msgpack cannot hold.
    """
    return msgpack.packb(_normalise(obj), use_bin_type=True)


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode one canonical value from ``data`` (at most ``max_bytes`` bytes).

    Raises :class:`DecodeError` (and nothing else) when ``data`` is too large, not valid
    msgpack, has trailing bytes, contains a float, extension type or non-``str`` map key,
    nests too deep, or is not in canonical form.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(f"value of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises a zoo of types: fold them into one
        raise DecodeError(f"not valid msgpack: {exc.__class__.__name__}: {exc}") from None
    try:
        again = encode(value)
    except (TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"value has no canonical form: {exc}") from None
    if again != data:
        raise DecodeError("encoding is not canonical")
    return value
