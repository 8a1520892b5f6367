"""Kill -9 in the middle of a run: a real child process runs the engine on a sqlite file,
accepts tasks (printing each id once ``submit`` returned) and is killed while tasks run.
A new engine on the same database then finishes every accepted task; the handler records
each completion (task id, attempt) in the same database, so the test sees exactly which
attempts ran."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import trio

from node.tasks.api import HandlerRegistry
from node.tasks.engine import TaskEngine
from node.tasks.store import TaskStore

CONCURRENCY = 8

CHILD = textwrap.dedent("""
    import random, sqlite3, sys
    import trio
    from node.tasks.api import HandlerRegistry
    from node.tasks.engine import TaskEngine
    from node.tasks.store import TaskStore

    db = sys.argv[1]
    CONCURRENCY = int(sys.argv[2])

    async def record(ctx):
        await trio.sleep(random.uniform(0.005, 0.03))
        con = sqlite3.connect(db, isolation_level=None, timeout=30)
        con.execute("PRAGMA synchronous=FULL")
        con.execute("INSERT INTO completions VALUES (?, ?)", (ctx.task_id, ctx.attempt))
        con.close()
        return b"done"

    async def main():
        reg = HandlerRegistry()
        reg.register("record", record)
        engine = TaskEngine(TaskStore(db), reg, concurrency=CONCURRENCY)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            for i in range(400):
                tid = await engine.submit("record", str(i).encode(), deadline_s=300)
                print("accepted", tid, flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


def record_handler(db):
    async def record(ctx):
        con = sqlite3.connect(db, isolation_level=None, timeout=30)
        con.execute("INSERT INTO completions VALUES (?, ?)", (ctx.task_id, ctx.attempt))
        con.close()
        return b"done"
    return record


@pytest.mark.slow
async def test_kill_9_mid_run_loses_no_accepted_task(tmp_path):
    db = tmp_path / "tasks.db"
    TaskStore(db).close()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE completions (task_id TEXT, attempt INTEGER)")
    con.close()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(CONCURRENCY)],
                             stdout=subprocess.PIPE, env=env, text=True)
    accepted = []
    try:
        for line in child.stdout:
            accepted.append(line.split()[1])
            if len(accepted) >= 150:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and len(accepted) == 150
    check = sqlite3.connect(db)
    states = dict(check.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"))
    assert states.get("running", 0) >= 1, states  # it really died mid-attempt

    reg = HandlerRegistry()
    reg.register("record", record_handler(str(db)))
    store = TaskStore(db)
    engine = TaskEngine(store, reg, concurrency=CONCURRENCY)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        with trio.fail_after(60):
            rows = {r.id: r for r in store.list(limit=10_000)}
            for tid in rows:
                await engine.wait(tid)
        nursery.cancel_scope.cancel()
    rows = {r.id: r for r in store.list(limit=10_000)}
    store.close()
    assert set(accepted) <= set(rows)
    assert {r.state for r in rows.values()} == {"succeeded"}
    runs: dict[str, list[int]] = {}
    for tid, attempt in check.execute("SELECT task_id, attempt FROM completions"):
        runs.setdefault(tid, []).append(attempt)
    for tid, row in rows.items():
        got = runs.get(tid, [])
        assert row.attempt in got, (tid, row.attempt, got)  # the final attempt ran
        assert len(got) == len(set(got))  # never twice within one attempt
    rerun = [t for t, got in runs.items() if len(got) > 1]
    assert len(rerun) <= CONCURRENCY  # only attempts cut short by the kill ran again
    assert any(r.attempt == 2 for r in rows.values())  # running tasks were retried
