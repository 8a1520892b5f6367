"""Unit tests of the hasher plugin, in-process (plugins.testing.Harness)."""

import hashlib

import pytest
from meshnode_hasher.plugin import plugin

from plugins.sdk import NodeError, TaskFailed
from plugins.testing import Harness


def test_sha256_and_blake2b():
    h = Harness(plugin, capabilities=["tasks", "kv", "log"])
    assert h.run("sha256", b"abc") == hashlib.sha256(b"abc").digest()
    assert h.run("blake2b", b"abc") == hashlib.blake2b(b"abc", digest_size=32).digest()


def test_count_uses_the_kv_store():
    h = Harness(plugin, capabilities=["tasks", "kv", "log"])
    assert [h.run("count", b"x") for _ in range(3)] == [b"1", b"2", b"3"]
    assert h.run("count", b"y") == b"1"
    assert len(h.kv) == 2 and h.logs


def test_count_without_kv_is_refused():
    h = Harness(plugin, capabilities=["tasks"])
    with pytest.raises(NodeError, match="kv"):
        h.run("count", b"x")


def test_oversized_input_fails_for_good():
    h = Harness(plugin)
    with pytest.raises(TaskFailed) as info:
        h.run("sha256", b"x" * (512 * 1024 + 1))
    assert info.value.retryable is False
