"""Length-prefixed canonical msgpack frames and an incremental decoder (pure).

Theory of operation
-------------------
A frame on a meshnode channel stream is a 4-byte big-endian unsigned length followed by
that many payload bytes; the payload is one canonical msgpack value
(:mod:`identity.canonical`). This is the format :mod:`node.transport.host` writes.

:class:`FrameDecoder` is fed whatever chunks the stream delivers and returns, per chunk,
the items completed: a :class:`Frame` for each good frame, a :class:`Dropped` for each
bad one. Bad remote input never raises and never desynchronises the stream, because the
length header says where the next frame starts:

* a payload that is not one canonical msgpack value is dropped (``"malformed"``) and
  decoding continues with the next frame;
* a declared length over ``max_frame_bytes`` is dropped (``"oversized"``) *without
  buffering it*: the decoder counts the body's bytes away and resumes after it;
* a declared length over ``skip_limit`` (default 4 x ``max_frame_bytes``) is not worth
  reading past: the decoder reports ``Dropped("oversized", fatal=True)`` and stops; the
  shell resets the stream and charges the peer. Later chunks are ignored.

The decoder buffers at most one header plus one frame of ``max_frame_bytes``. The shell
feeds :class:`Dropped` reasons to its drop counters and the sender's reputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from identity import canonical

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_BYTES",
    "Dropped",
    "Frame",
    "FrameDecoder",
    "FramingError",
    "encode_frame",
    "frame_payload",
]

#: Bytes in the length header (unsigned, big-endian).
HEADER_BYTES = 4
#: Default largest payload, bytes: the largest message the canonical codec decodes
#: (4 MiB, :data:`identity.canonical.MAX_MESSAGE_BYTES`), so every protocol message fits.
DEFAULT_MAX_FRAME_BYTES = canonical.MAX_MESSAGE_BYTES


class FramingError(ValueError):
    """A *local* framing mistake: a value with no canonical encoding or a payload over
    the limit on the sending side. Remote input never raises it."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A good frame: the raw ``payload`` bytes and its decoded canonical ``value``
    (None when the decoder was built with ``decode=False``)."""

    payload: bytes
    value: Any = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """A bad frame: ``reason`` ("malformed" or "oversized"), its declared ``size`` in
    bytes, and ``fatal`` when the stream cannot continue (reset it)."""

    reason: str
    size: int
    fatal: bool = False


def frame_payload(payload: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Header + ``payload``. Raises FramingError when the payload exceeds the limit."""
    if len(payload) > max_frame_bytes:
        raise FramingError(f"frame of {len(payload)} bytes over {max_frame_bytes}")
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def encode_frame(value: Any, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Header + canonical msgpack of ``value``. Raises FramingError when ``value`` has no
    canonical encoding or its encoding exceeds ``max_frame_bytes``."""
    try:
        payload = canonical.encode(value)
    except (TypeError, OverflowError, ValueError) as exc:
        raise FramingError(f"value has no canonical encoding: {exc}") from None
    return frame_payload(payload, max_frame_bytes=max_frame_bytes)


class FrameDecoder:
    """Incremental, never-raising decoder for one stream (see the module docstring).

    ``max_frame_bytes``: largest payload accepted; ``skip_limit``: largest declared
    length still skipped to stay in sync (default ``4 * max_frame_bytes``);
    ``decode``: also decode payloads as canonical msgpack (else yield raw payloads)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        skip_limit: int | None = None,
        decode: bool = True,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.skip_limit = 4 * max_frame_bytes if skip_limit is None else skip_limit
        self.decode = decode
        self.closed = False
        self._buffer = bytearray()
        self._skipping = 0  # body bytes of an oversized frame still to discard

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete header or frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Frame | Dropped]:
        """Consume ``chunk``; return the frames and drops it completed, in order."""
        if self.closed:
            return []
        out: list[Frame | Dropped] = []
        view = memoryview(chunk)
        if self._skipping:
            taken = min(self._skipping, len(view))
            self._skipping -= taken
            view = view[taken:]
        self._buffer += view
        while not self._skipping and len(self._buffer) >= HEADER_BYTES:
            size = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
            if size > self.max_frame_bytes:
                out.append(self._oversized(size))
                if self.closed:
                    break
                continue
            if len(self._buffer) < HEADER_BYTES + size:
                break
            payload = bytes(self._buffer[HEADER_BYTES:HEADER_BYTES + size])
            del self._buffer[:HEADER_BYTES + size]
            out.append(self._frame(payload))
        return out

    def _oversized(self, size: int) -> Dropped:
        if size > self.skip_limit:
            self.closed = True
            self._buffer.clear()
            return Dropped("oversized", size, fatal=True)
        del self._buffer[:HEADER_BYTES]
        taken = min(size, len(self._buffer))
        del self._buffer[:taken]
        self._skipping = size - taken
        return Dropped("oversized", size)

    def _frame(self, payload: bytes) -> Frame | Dropped:
        if not self.decode:
            return Frame(payload)
        try:
            return Frame(payload, canonical.decode(payload, max_bytes=self.max_frame_bytes))
        except canonical.DecodeError:
            return Dropped("malformed", len(payload))
