"""Plugins under the real local task engine: crashes and hangs are retried by policy."""

from __future__ import annotations

import trio
from plugins_testkit import plugins_cfg, running_host

from node.tasks.engine import TaskEngine
from node.tasks.schedule import RetryPolicy
from node.tasks.store import TaskStore

FLAKY = """
import os

@plugin.task_handler("crash_once")
def crash_once(ctx):
    if ctx.attempt == 1:
        os._exit(9)
    return b"attempt %d" % ctx.attempt

@plugin.task_handler("hang_once")
def hang_once(ctx):
    while ctx.attempt == 1:
        pass
    return b"attempt %d" % ctx.attempt

@plugin.task_handler("refuse")
def refuse(ctx):
    raise TaskFailed("never", retryable=False)
"""


async def test_the_engine_retries_plugin_crashes_and_hangs_by_its_policy(
        site, author, tmp_path):
    site.add("flaky", FLAKY, author=author)
    cfg = plugins_cfg(author, {"flaky": ["tasks"]}, paths=[str(site.root)])
    policy = RetryPolicy(base_s=0.05, cap_s=0.5, attempt_timeout_s=2.0)
    async with running_host(site, cfg, tmp_path, paths=None) as (host, registry):  # config
        engine = TaskEngine(TaskStore(tmp_path / "tasks.db"), registry, policy=policy,
                            concurrency=4, threaded=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            crash = await engine.submit("flaky.crash_once", deadline_s=60, max_attempts=6)
            hang = await engine.submit("flaky.hang_once", deadline_s=60, max_attempts=6)
            refuse = await engine.submit("flaky.refuse", deadline_s=60, max_attempts=6)
            with trio.fail_after(60):
                rows = {k: await engine.wait(t) for k, t in
                        (("crash", crash), ("hang", hang), ("refuse", refuse))}
            nursery.cancel_scope.cancel()
    for key in ("crash", "hang"):
        row = rows[key]
        assert row.state == "succeeded", (key, row.reason)
        assert row.attempt >= 2 and row.output == b"attempt %d" % row.attempt
    # A permanent failure ends the task at once (earlier attempts may have been lost to
    # the other tasks' crash and hang, which take down the whole plugin process).
    assert (rows["refuse"].state, rows["refuse"].reason) == ("failed", "never")
    assert rows["refuse"].attempt < 6
