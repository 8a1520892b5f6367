"""Canonical msgpack: round trips, key order, strictness, and fuzzing of decode."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.canonical import MAX_DEPTH, DecodeError, decode, encode

_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=20) | st.binary(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@pytest.mark.parametrize("value", [
    0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 2**64 - 1, -(2**63),
    True, False, None, "", "é", "a" * 300, b"", b"\x00" * 300, [], {}, [1, [2, [3]]],
    {"a": {"b": [b"x", "y", None]}},
])
def test_round_trip(value):
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


def test_tuples_encode_as_lists():
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]
    assert encode((1, 2)) == encode([1, 2])


def test_map_keys_are_sorted_by_utf8_bytes():
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1})
    # "z" (0x7a) sorts before "é" (0xc3 0xa9) by UTF-8 bytes; "a" < "aa" < "b"
    data = encode({"é": 1, "z": 2, "b": 3, "aa": 4, "a": 5})
    assert list(decode(data)) == ["a", "aa", "b", "z", "é"]
    assert data == msgpack.packb({"a": 5, "aa": 4, "b": 3, "z": 2, "é": 1}, use_bin_type=True)


def test_bytes_and_str_are_distinct_families():
    assert encode(b"a") == b"\xc4\x01a"
    assert encode("a") == b"\xa1a"
    assert decode(b"\xc4\x01a") == b"a" and decode(b"\xa1a") == "a"


@pytest.mark.parametrize("data", [
    msgpack.packb({"b": 1, "a": 2}, use_bin_type=True),  # unsorted keys
    b"\xcd\x00\x01",  # uint16 holding 1
    b"\xd0\x05",  # int8 holding 5 (positive fixint expected)
    b"\xd9\x01a",  # str8 for a 1-char string
    b"\xc5\x00\x01a",  # bin16 for a 1-byte string
    b"\xdc\x00\x01\x01",  # array16 of one element
    b"\x82\xa1a\x01\xa1a\x02",  # duplicate key
    b"\x01\x02",  # trailing bytes
    b"",  # nothing
    b"\xc1",  # never-used byte
    b"\xa2\xff\xfe",  # invalid UTF-8
])
def test_non_canonical_or_invalid_rejected(data):
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("data", [
    msgpack.packb(1.5), msgpack.packb(1.5, use_single_float=True),
    b"\xd4\x05\x00",  # fixext1 type 5
    b"\xc7\x01\x05a",  # ext8
    msgpack.packb(msgpack.Timestamp(1, 0)),  # ext -1
    msgpack.packb({1: 2}), msgpack.packb({b"k": 1}, use_bin_type=True),
])
def test_floats_ext_and_non_str_keys_rejected(data):
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("value", [1.0, {1: 2}, {b"k": 1}, {1, 2}, object(), 2**64, -(2**63) - 1])
def test_encode_refuses_values_without_canonical_form(value):
    with pytest.raises((TypeError, OverflowError)):
        encode(value)


def test_depth_and_size_limits():
    deep = msgpack.packb(nest([], MAX_DEPTH + 2))
    with pytest.raises(DecodeError):
        decode(deep)
    assert decode(msgpack.packb(nest([], MAX_DEPTH))) == nest([], MAX_DEPTH)
    with pytest.raises(TypeError):
        encode(nest([], MAX_DEPTH + 2))
    with pytest.raises(DecodeError):
        decode(encode(b"x" * 100), max_bytes=50)


def nest(value, depth):
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("data", ["text", 3, None, [b"x"]])
def test_decode_requires_bytes(data):
    with pytest.raises(DecodeError):
        decode(data)


def test_decode_accepts_bytearray_and_memoryview():
    data = encode({"a": [1, b"2"]})
    assert decode(bytearray(data)) == decode(memoryview(data)) == {"a": [1, b"2"]}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data):
    try:
        value = decode(data)
    except DecodeError:
        return
    assert encode(value) == data  # anything accepted is canonical


@settings(max_examples=200, deadline=None)
@given(_values)
def test_generated_values_round_trip(value):
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data
