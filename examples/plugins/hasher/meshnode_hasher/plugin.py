"""The `hasher` plugin: task types hasher.sha256, hasher.blake2b and hasher.count.

Each handler runs in the plugin's own process; ``plugin.kv`` and ``plugin.log`` are
RPCs to the node (capabilities ``kv`` and ``log`` in plugin.toml).
"""

from __future__ import annotations

import hashlib

from plugins.sdk import Plugin, TaskContext, TaskFailed

plugin = Plugin("hasher")

MAX_INPUT = 512 * 1024


def _check(ctx: TaskContext) -> bytes:
    if len(ctx.input) > MAX_INPUT:
        raise TaskFailed(f"input over {MAX_INPUT} bytes", retryable=False)
    return ctx.input


@plugin.task_handler("sha256")
def sha256(ctx: TaskContext) -> bytes:
    """The SHA-256 digest (32 bytes) of the input."""
    return hashlib.sha256(_check(ctx)).digest()


@plugin.task_handler("blake2b")
async def blake2b(ctx: TaskContext) -> bytes:
    """The BLAKE2b-256 digest of the input (an async handler works the same way)."""
    return hashlib.blake2b(_check(ctx), digest_size=32).digest()


@plugin.task_handler("count")
def count(ctx: TaskContext) -> bytes:
    """Count the tasks run with this input (a counter per input in the KV store)."""
    key = b"count/" + hashlib.sha256(_check(ctx)).digest()
    n = int(plugin.kv.get(key) or b"0") + 1
    plugin.kv.put(key, str(n).encode())
    plugin.log.info("task %s: input seen %d time(s)", ctx.task_id, n)
    return str(n).encode()
