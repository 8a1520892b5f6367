"""Pure framing: round trips under any chunking, oversized and malformed frames keep sync."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import canonical
from node.transport.framing import (
    HEADER_BYTES,
    Dropped,
    Frame,
    FrameDecoder,
    FramingError,
    encode_frame,
    frame_payload,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list:
    out, prev = [], 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(decoder.feed(data[prev:cut]))
        prev = cut
    return out


@given(st.lists(values, max_size=6), st.data())
def test_any_chunking_round_trips(vals: list, data: st.DataObject) -> None:
    stream = b"".join(encode_frame(v) for v in vals)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    out = feed_in_chunks(FrameDecoder(), stream, cuts)
    assert [f.value for f in out] == [canonical.decode(canonical.encode(v)) for v in vals]
    assert all(isinstance(f, Frame) for f in out)


def test_oversized_frame_is_skipped_without_buffering_and_sync_is_kept() -> None:
    decoder = FrameDecoder(max_frame_bytes=100, skip_limit=10_000)
    big = (5000).to_bytes(HEADER_BYTES, "big") + bytes(5000)
    stream = encode_frame("before") + big + encode_frame("after")
    out = feed_in_chunks(decoder, stream, list(range(0, len(stream), 7)))
    assert out == [Frame(canonical.encode("before"), "before"), Dropped("oversized", 5000),
                   Frame(canonical.encode("after"), "after")]
    assert decoder.buffered == 0


def test_oversized_frame_in_one_chunk() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    stream = frame_payload(bytes(30), max_frame_bytes=100) + encode_frame(1)
    assert decoder.feed(stream) == [Dropped("oversized", 30), Frame(b"\x01", 1)]


def test_hopeless_length_is_fatal_and_later_input_ignored() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    out = decoder.feed(b"\xff\xff\xff\xff" + encode_frame(1))
    assert out == [Dropped("oversized", 0xFFFFFFFF, fatal=True)]
    assert decoder.closed and decoder.feed(encode_frame(2)) == []


def test_malformed_and_non_canonical_payloads_are_dropped_and_sync_kept() -> None:
    bad = [b"\xc1", b"\xcb" + bytes(8), b"\xcd\x00\x01", b"\x92\x01"]  # never-used, float,
    stream = b"".join(frame_payload(b) for b in bad) + encode_frame("ok")  # non-minimal, short
    out = FrameDecoder().feed(stream)
    assert [type(x) for x in out] == [Dropped] * 4 + [Frame]
    assert all(x.reason == "malformed" for x in out[:4]) and out[-1].value == "ok"


def test_raw_mode_returns_payloads() -> None:
    out = FrameDecoder(decode=False).feed(frame_payload(b"\xc1"))
    assert out == [Frame(b"\xc1")]


@settings(max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame_bytes=64)
    out = feed_in_chunks(decoder, data, [c for c in cuts if c <= len(data)])
    assert all(isinstance(x, Frame | Dropped) for x in out)
    assert decoder.buffered <= HEADER_BYTES + 64


def test_local_errors_raise_framing_error() -> None:
    with pytest.raises(FramingError):
        encode_frame(1.5)
    with pytest.raises(FramingError):
        encode_frame(b"x" * 200, max_frame_bytes=100)
