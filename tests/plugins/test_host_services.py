"""Node services over RPC: KV store (sqlite, per plugin), pubsub bridge, proposals."""

from __future__ import annotations

import sqlite3

import pytest
import trio
from plugins_testkit import plugins_cfg, run_task, running_host

from identity import canonical
from node.tasks.api import TaskFailed
from plugins.bridge import LocalPubSub, PluginMessage, plugin_operation

STORE = """
@plugin.task_handler("put")
def put(ctx):
    key, _, value = ctx.input.partition(b"=")
    plugin.kv.put(key, value)
    return b"ok"

@plugin.task_handler("get")
def get(ctx):
    return plugin.kv.get(ctx.input) or b"<none>"

@plugin.task_handler("keys")
def keys(ctx):
    return b",".join(plugin.kv.keys(ctx.input))

@plugin.task_handler("delete")
def delete(ctx):
    return b"yes" if plugin.kv.delete(ctx.input) else b"no"
"""


async def test_kv_is_private_per_plugin_persisted_by_the_node_and_quota_bound(
        site, author, tmp_path):
    site.add("alpha", STORE, capabilities=("tasks", "kv"), author=author)
    site.add("beta", STORE, capabilities=("tasks", "kv"), author=author)
    cfg = plugins_cfg(author, {"alpha": ["tasks", "kv"], "beta": ["tasks", "kv"]},
                      kv_quota_bytes=64)
    async with running_host(site, cfg, tmp_path) as (host, registry):
        assert await run_task(registry, "alpha.put", b"colour=blue") == b"ok"
        assert await run_task(registry, "alpha.put", b"count=1") == b"ok"
        assert await run_task(registry, "alpha.get", b"colour") == b"blue"
        assert await run_task(registry, "beta.get", b"colour") == b"<none>"
        assert await run_task(registry, "alpha.keys", b"c") == b"colour,count"
        assert await run_task(registry, "alpha.delete", b"count") == b"yes"
        with pytest.raises(TaskFailed) as info:  # 3 + 70 bytes > quota of 64
            await run_task(registry, "alpha.put", b"big=" + b"x" * 70)
        assert "quota" in info.value.reason
    db = tmp_path / "home" / "data" / "plugins.db"
    rows = sqlite3.connect(db).execute("SELECT plugin, key, value FROM kv").fetchall()
    assert rows == [("alpha", b"colour", b"blue")]
    # A new host (node restart) sees the same store.
    async with running_host(site, cfg, tmp_path) as (host, registry):
        assert await run_task(registry, "alpha.get", b"colour") == b"blue"


class RecordingBridge(LocalPubSub):
    def __init__(self) -> None:
        super().__init__("12D3KooWlocal")
        self.changed = trio.Event()

    async def publish(self, protocol, topic, data):
        await super().publish(protocol, topic, data)
        self.changed.set()


async def test_pubsub_on_the_plugin_protocol_and_tagged_proposals(site, author, tmp_path):
    site.add("chat", """
@plugin.subscribe("ping")
def on_ping(msg):
    plugin.publish("pong", msg.data + b" from " + msg.sender.encode())

@plugin.task_handler("propose")
def propose(ctx):
    return str(plugin.propose(ctx.input)).encode()
""", capabilities=("tasks", "pubsub", "propose"), author=author)
    bridge = RecordingBridge()
    proposals: list[tuple[str, bytes]] = []

    async def propose_hook(plugin_name: str, op: bytes) -> int:
        proposals.append((plugin_name, op))
        return 41 + len(proposals)

    cfg = plugins_cfg(author, {"chat": ["tasks", "pubsub", "propose"]})
    async with running_host(site, cfg, tmp_path, pubsub=bridge, propose=propose_hook) as (
            host, registry):
        bridge.inject(PluginMessage("/meshnode/plugin/chat/1.0.0", "ping", b"hi", "12D3peer"))
        bridge.inject(PluginMessage("/meshnode/plugin/other/1.0.0", "ping", b"no", "x"))
        with trio.fail_after(10):
            while not [m for m in bridge.published if m.topic == "pong"]:
                await bridge.changed.wait()
                bridge.changed = trio.Event()
        assert await run_task(registry, "chat.propose", b"op-1") == b"42"
    pong = [m for m in bridge.published if m.topic == "pong"]
    assert pong == [PluginMessage("/meshnode/plugin/chat/1.0.0", "pong",
                                  b"hi from 12D3peer", "12D3KooWlocal")]
    assert proposals == [("chat", b"op-1")]
    assert canonical.decode(plugin_operation("chat", b"op-1")) == {
        "t": "plugin", "plugin": "chat", "op": b"op-1"}


async def test_calls_without_a_wired_hook_are_refused_cleanly(site, author, tmp_path):
    site.add("lonely", """
@plugin.task_handler("try")
def try_(ctx):
    try:
        plugin.propose(b"x")
    except NodeError as exc:
        return str(exc).encode()
""", capabilities=("tasks", "propose"), author=author)
    cfg = plugins_cfg(author, {"lonely": ["tasks", "propose"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        out = await run_task(registry, "lonely.try")
    assert out == b"this node does not accept proposals from plugins"


async def test_handler_failures_map_to_task_failed(site, author, tmp_path):
    site.add("moody", """
@plugin.task_handler("permanent")
def permanent(ctx):
    raise TaskFailed("bad input", retryable=False)

@plugin.task_handler("transient")
def transient(ctx):
    raise TaskFailed("try later")

@plugin.task_handler("bug")
def bug(ctx):
    return 1 / 0

@plugin.task_handler("wrong_type")
def wrong_type(ctx):
    return "not bytes"

@plugin.task_handler("slow_async")
async def slow_async(ctx):
    import asyncio
    await asyncio.sleep(0.01)
    return b"async ok %d" % ctx.attempt
""", author=author)
    cfg = plugins_cfg(author, {"moody": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        expect = {"permanent": ("bad input", False), "transient": ("try later", True),
                  "bug": ("ZeroDivisionError: division by zero", False),
                  "wrong_type": ("handler returned str, not bytes", False)}
        for name, (reason, retryable) in expect.items():
            with pytest.raises(TaskFailed) as info:
                await run_task(registry, f"moody.{name}")
            assert (info.value.reason, info.value.retryable) == (reason, retryable)
        assert await run_task(registry, "moody.slow_async", attempt=3) == b"async ok 3"
        assert host.supervisors["moody"].restarts == 0
