"""node.tasks.engine: real sqlite in tmp_path, trio's MockClock (no sleeping on real time).

The engine runs with ``threaded=False`` here so commits happen on the trio thread: the
autojumping mock clock would otherwise jump while a worker thread fsyncs.
"""

from __future__ import annotations

import random

import pytest
import trio

from node.tasks.api import HandlerRegistry, TaskContext, TaskFailed
from node.tasks.engine import EngineError, TaskEngine
from node.tasks.schedule import RetryPolicy
from node.tasks.store import TaskStore


async def _echo(ctx: TaskContext) -> bytes:
    return ctx.input


def make(tmp_path, *, concurrency=4, policy=None, **kw):
    registry = HandlerRegistry()
    store = TaskStore(tmp_path / "tasks.db")
    engine = TaskEngine(store, registry, concurrency=concurrency, wall=trio.current_time,
                        rng=random.Random(7), policy=policy or RetryPolicy(), threaded=False,
                        **kw)
    return engine, registry, store


async def test_submit_runs_and_wait_returns_output(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)
    reg.register("echo", _echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        tid = await engine.submit("echo", b"hello")
        row = await engine.wait(tid)
        assert (row.state, row.output, row.attempt) == ("succeeded", b"hello", 1)
        assert engine.list()[0].id == tid and engine.list("failed") == []
        assert engine.stats()["states"]["succeeded"] == 1
        nursery.cancel_scope.cancel()
    store.close()


async def test_retries_back_off_exponentially_with_jitter(tmp_path, autojump_clock):
    policy = RetryPolicy(base_s=1.0, cap_s=60.0, jitter=0.5)
    engine, reg, store = make(tmp_path, policy=policy)
    starts: list[float] = []

    async def flaky(ctx: TaskContext) -> bytes:
        starts.append(trio.current_time())
        if ctx.attempt < 4:
            raise TaskFailed(f"transient {ctx.attempt}")
        return b"ok"

    reg.register("flaky", flaky)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        row = await engine.wait(await engine.submit("flaky", max_attempts=5, deadline_s=100))
        nursery.cancel_scope.cancel()
    assert (row.state, row.attempt, row.output) == ("succeeded", 4, b"ok")
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    for k, gap in enumerate(gaps, start=1):  # failed attempt k -> delay 2**(k-1) * [0.5, 1]
        assert 0.5 * 2 ** (k - 1) <= gap <= 2 ** (k - 1) + 1e-9, gaps
    assert len(set(gaps)) == 3


async def test_permanent_failure_and_exhausted_attempts(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, policy=RetryPolicy(base_s=0.1))

    async def permanent(ctx):
        raise TaskFailed("bad input", retryable=False)

    async def broken(ctx):
        raise RuntimeError("boom")

    reg.register("permanent", permanent)
    reg.register("broken", broken)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        a = await engine.wait(await engine.submit("permanent", max_attempts=5))
        b = await engine.wait(await engine.submit("broken", max_attempts=3))
        c = await engine.wait(await engine.submit("nope", max_attempts=3))
        nursery.cancel_scope.cancel()
    assert (a.state, a.attempt, a.reason) == ("failed", 1, "bad input")
    assert (b.state, b.attempt) == ("failed", 3) and "RuntimeError('boom')" in b.reason
    assert (c.state, c.attempt, c.reason) == ("failed", 1, "no handler for type nope")


async def test_deadline_times_out_a_hanging_handler(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)
    seen = []

    async def hang(ctx):
        seen.append(ctx.deadline - trio.current_time())
        await trio.sleep_forever()

    reg.register("hang", hang)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        t0 = trio.current_time()
        row = await engine.wait(await engine.submit("hang", deadline_s=5, max_attempts=3))
        assert trio.current_time() - t0 == pytest.approx(5.0)
        nursery.cancel_scope.cancel()
    assert row.state == "timed_out" and row.attempt == 1
    assert seen == [pytest.approx(5.0)]


async def test_attempt_timeout_is_retried_within_the_deadline(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, policy=RetryPolicy(base_s=0.5, attempt_timeout_s=2))

    async def slow_first(ctx):
        if ctx.attempt == 1:
            await trio.sleep_forever()
        return b"second"

    reg.register("slow", slow_first)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        row = await engine.wait(await engine.submit("slow", deadline_s=30, max_attempts=2))
        nursery.cancel_scope.cancel()
    assert (row.state, row.attempt, row.output) == ("succeeded", 2, b"second")


async def test_queued_task_past_its_deadline_times_out(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, concurrency=1)

    async def sleep10(ctx):
        await trio.sleep(10)
        return b""

    reg.register("sleep", sleep10)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        first = await engine.submit("sleep", deadline_s=100)
        starved = await engine.submit("sleep", deadline_s=3)
        row = await engine.wait(starved)
        assert (row.state, row.attempt, row.reason) == (
            "timed_out", 0, "deadline passed while queued")
        assert (await engine.wait(first)).state == "succeeded"
        nursery.cancel_scope.cancel()


async def test_concurrency_limit(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, concurrency=3)
    running, peak = 0, 0

    async def work(ctx):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return b""

    reg.register("work", work)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        t0 = trio.current_time()
        ids = [await engine.submit("work") for _ in range(10)]
        for tid in ids:
            assert (await engine.wait(tid)).state == "succeeded"
        elapsed = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert peak == 3 and elapsed == pytest.approx(4.0)  # ceil(10 / 3) rounds of 1 s


async def test_priorities_higher_first_fifo_within(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, concurrency=1)
    order: list[bytes] = []
    gate = trio.Event()

    async def record(ctx):
        if ctx.input == b"blocker":
            await gate.wait()
        order.append(ctx.input)
        return b""

    reg.register("rec", record)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        blocker = await engine.submit("rec", b"blocker")
        await trio.sleep(0.1)  # the blocker holds the only slot
        ids = [await engine.submit("rec", name, priority=p) for name, p in
               [(b"low", -1), (b"high-1", 5), (b"mid", 0), (b"high-2", 5), (b"mid-2", 0)]]
        gate.set()
        for tid in [blocker, *ids]:
            await engine.wait(tid)
        nursery.cancel_scope.cancel()
    assert order == [b"blocker", b"high-1", b"high-2", b"mid", b"mid-2", b"low"]


async def test_idempotency_key_gives_the_same_task(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)
    calls = []

    async def count(ctx):
        calls.append(ctx.task_id)
        return b"x"

    reg.register("count", count)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        a = await engine.submit("count", b"1", idempotency_key="k")
        results = []

        async def again():
            results.append(await engine.submit("count", b"2", idempotency_key="k"))

        async with trio.open_nursery() as inner:  # concurrent duplicates: one batch
            for _ in range(5):
                inner.start_soon(again)
        await engine.wait(a)
        b = await engine.submit("count", b"3", idempotency_key="k")  # after it finished
        nursery.cancel_scope.cancel()
    assert set(results) == {a} and b == a and calls == [a]
    assert len(store.list()) == 1


async def test_cancel_queued_and_running(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path, concurrency=1)
    cancelled_inside = []

    async def hang(ctx):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_inside.append(ctx.task_id)
            raise

    reg.register("hang", hang)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        running = await engine.submit("hang")
        queued = await engine.submit("hang")
        await trio.sleep(1)
        assert engine.get(running).state == "running" and engine.get(queued).state == "queued"
        assert (await engine.cancel(queued)).state == "cancelled"
        row = await engine.cancel(running)
        assert (row.state, row.reason) == ("cancelled", "cancelled while running")
        assert (await engine.cancel(running)).state == "cancelled"  # terminal: unchanged
        with pytest.raises(EngineError, match="no task"):
            await engine.cancel("missing")
        nursery.cancel_scope.cancel()
    assert cancelled_inside == [running]


async def test_bad_submissions_are_refused(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)
    with pytest.raises(EngineError, match="not running"):
        await engine.submit("echo")
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        for kwargs in [dict(deadline_s=0), dict(max_attempts=0), dict(priority=1.5),
                       dict(idempotency_key="")]:
            with pytest.raises(EngineError):
                await engine.submit("echo", **kwargs)
        with pytest.raises(EngineError, match="unknown task state"):
            engine.list("weird")
        nursery.cancel_scope.cancel()


async def test_restart_requeues_running_tasks_as_a_retry(tmp_path, autojump_clock):
    """An engine cancelled mid-attempt leaves rows `running` (as kill -9 does); the next
    engine on the same database retries them (attempt + 1) or times them out."""
    engine, reg, store = make(tmp_path, concurrency=4)
    reg.register("hang", lambda ctx: trio.sleep_forever())
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        retry = await engine.submit("hang", deadline_s=100, max_attempts=3)
        late = await engine.submit("hang", deadline_s=5, max_attempts=3)
        last = await engine.submit("hang", deadline_s=100, max_attempts=1)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert {r.state for r in store.list()} == {"running"}
    store.close()
    await trio.sleep(10)  # the node is down past `late`'s deadline

    engine2, reg2, store2 = make(tmp_path, concurrency=4)
    attempts = []

    async def ok(ctx):
        attempts.append((ctx.task_id, ctx.attempt))
        return b"done"

    reg2.register("hang", ok)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine2.run)
        a, b, c = [await engine2.wait(t) for t in (retry, late, last)]
        nursery.cancel_scope.cancel()
    assert (a.state, a.attempt, a.output) == ("succeeded", 2, b"done")
    assert (b.state, b.reason) == ("timed_out", "deadline passed while the node was down")
    assert c.state == "failed" and "crashed during attempt 1 of 1" in c.reason
    assert attempts == [(retry, 2)]


async def test_handler_errors_mixed_with_cancellation_fail_the_attempt(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)

    async def messy(ctx):
        async def boom():
            raise ValueError("child failed")

        async with trio.open_nursery() as n:
            n.start_soon(trio.sleep_forever)
            n.start_soon(boom)

    reg.register("messy", messy)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        row = await engine.wait(await engine.submit("messy", max_attempts=1))
        nursery.cancel_scope.cancel()
    assert row.state == "failed" and "child failed" in row.reason


async def test_purge_forgets_old_terminal_tasks(tmp_path, autojump_clock):
    engine, reg, store = make(tmp_path)
    reg.register("echo", _echo)
    gate = trio.Event()

    async def hang(ctx):
        await gate.wait()
        return b""

    reg.register("hang", hang)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        old = await engine.submit("echo", idempotency_key="k")
        await engine.wait(old)
        running = await engine.submit("hang")
        await trio.sleep(100)
        recent = await engine.wait(await engine.submit("echo"))
        assert await engine.purge(50) == 1
        assert engine.get(old) is None and engine.get(recent.id) is not None
        assert engine.get(running).state == "running"
        assert await engine.submit("echo", idempotency_key="k") != old
        gate.set()
        nursery.cancel_scope.cancel()
