"""Run a plugin's handlers in-process for its unit tests (no node, no subprocess).

Example::

    from plugins.testing import Harness
    from meshnode_hasher.plugin import plugin

    def test_sha256():
        h = Harness(plugin, capabilities=["tasks", "kv", "log"])
        assert h.run("sha256", b"abc") == hashlib.sha256(b"abc").digest()
        assert h.kv == {b"count": b"1"}

The harness gives the plugin an in-memory KV store, records what it publishes, proposes
and logs, and refuses calls for capabilities not in ``capabilities`` exactly as the
node does (:class:`plugins.sdk.NodeError`). It does *not* reproduce isolation, limits
or deadlines: for those, run the plugin under a node (see docs/plugins.md).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterable
from typing import Any

from plugins.capabilities import CAPABILITIES, parse_capabilities
from plugins.protocol import METHODS
from plugins.sdk import Message, NodeError, Plugin, TaskContext

__all__ = ["Harness"]


class Harness:
    """In-process node stand-in for ``plugin`` (see the module docstring)."""

    def __init__(self, plugin: Plugin, *, capabilities: Iterable[str] | None = None) -> None:
        self.plugin = plugin
        self.capabilities = (frozenset(CAPABILITIES) if capabilities is None
                             else parse_capabilities(capabilities))
        self.kv: dict[bytes, bytes] = {}
        self.published: list[tuple[str, bytes]] = []
        self.proposed: list[bytes] = []
        self.logs: list[tuple[int, str]] = []
        plugin.bind(self)

    # ---- Services -----------------------------------------------------------------
    def call(self, method: str, args: dict[str, Any]) -> Any:
        cap = METHODS[method]
        if cap not in self.capabilities:
            raise NodeError(f"capability {cap.value!r} is not granted to plugin "
                            f"{self.plugin.name}")
        if method == "kv.get":
            return self.kv.get(args["key"])
        if method == "kv.put":
            self.kv[args["key"]] = args["value"]
            return None
        if method == "kv.delete":
            return self.kv.pop(args["key"], None) is not None
        if method == "kv.list":
            keys = sorted(k for k in self.kv if k.startswith(args["prefix"]))
            return keys[:args["limit"]]
        if method == "pubsub.publish":
            self.published.append((args["topic"], args["data"]))
            return None
        self.proposed.append(args["op"])
        return {"seq": len(self.proposed)}

    def emit_log(self, level: int, msg: str) -> None:
        if "log" in self.capabilities:
            self.logs.append((level, msg))

    # ---- driving the plugin -----------------------------------------------------------
    def run(self, task_type: str, data: bytes = b"", *, attempt: int = 1,
            timeout_s: float = 30.0, task_id: str = "test-task") -> bytes:
        """Run the handler of ``task_type`` (the plugin-local name) and return its
        output; raises what the handler raises (e.g. TaskFailed)."""
        fn = self.plugin.tasks[task_type]
        ctx = TaskContext(task_id, task_type, data, attempt, time.monotonic() + timeout_s)
        out = asyncio.run(fn(ctx)) if inspect.iscoroutinefunction(fn) else fn(ctx)
        if not isinstance(out, bytes):
            raise TypeError(f"handler returned {type(out).__name__}, not bytes")
        return out

    def deliver(self, topic: str, data: bytes, *, sender: str = "test-peer") -> None:
        """Deliver a message to the plugin's receiver for ``topic``."""
        fn = self.plugin.topics[topic]
        msg = Message(topic, data, sender)
        asyncio.run(fn(msg)) if inspect.iscoroutinefunction(fn) else fn(msg)
