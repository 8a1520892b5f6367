"""Restart timing of the supervisor under trio's MockClock, with fake plugin processes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio
import trio.testing

from node.tasks.api import HandlerRegistry, TaskContext, TaskFailed
from plugins.capabilities import Capability
from plugins.process import ChildSpec
from plugins.supervisor import Backoff, PluginSupervisor, describe_exit

SPEC = ChildSpec("fake", "x:y", None, (), 10, 1 << 28, 2, False)


class FakeProc:
    """Says hello, lives ``lifetime`` (mock) seconds, exits with ``status``; answers
    tasks after ``task_s`` seconds unless ``hang``."""

    def __init__(self, lifetime: float, status: int = 1, *, task_s: float = 0.0,
                 hang: bool = False) -> None:
        self.lifetime, self.status, self.task_s, self.hang = lifetime, status, task_s, hang
        self.pid = 4242
        self.drops: Counter[str] = Counter()
        self.killed_because = None
        self.proc = self
        self.returncode = None
        self._exit = trio.Event()
        self._on_message = None
        self._nursery = None

    async def serve(self, on_message):
        self._on_message = on_message
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await on_message({"t": "hello", "name": "fake", "tasks": ["job"], "topics": [],
                              "sandbox": "fake", "pid": self.pid})
            with trio.move_on_after(self.lifetime):
                await self._exit.wait()
            nursery.cancel_scope.cancel()
        self.returncode = -9 if self.killed_because else self.status
        return self.returncode

    async def send(self, msg):
        if msg["t"] == "task" and not self.hang:
            async def answer():
                await trio.sleep(self.task_s)
                await self._on_message({"t": "result", "id": msg["id"], "ok": True,
                                        "output": b"done"})
            self._nursery.start_soon(answer)
        return True

    def kill(self, reason):
        self.killed_because = self.killed_because or reason
        self._exit.set()

    async def close(self):
        pass


def test_backoff_doubles_caps_and_resets_after_a_stable_run():
    b = Backoff(0.5, 4.0, stable_s=30, rng=random.Random(1))
    b.rng.uniform = lambda lo, hi: 1.0  # no jitter, to read the schedule
    assert [b.next_delay(0.1) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.next_delay(31.0) == 0.5
    j = Backoff(0.5, 4.0, rng=random.Random(7))
    assert all(0.25 <= j.next_delay(0) <= 4.0 for _ in range(50))


def test_exit_descriptions():
    assert describe_exit(-24, None) == "SIGXCPU: CPU limit (RLIMIT_CPU) reached"
    assert describe_exit(-9, None) == "terminated by SIGKILL"
    assert describe_exit(3, None) == "exited with status 3"
    assert describe_exit(-9, "task t1 exceeded its deadline") == \
        "killed (task t1 exceeded its deadline)"


def _supervisor(procs: list, spawned: list, *, seed: int = 5):
    async def spawner(spec):
        spawned.append(trio.current_time())
        return procs.pop(0) if procs else FakeProc(lifetime=1e9)

    registry = HandlerRegistry()
    sup = PluginSupervisor("fake", SPEC, frozenset({Capability.TASKS}), registry=registry,
                           dispatch=None, backoff=Backoff(1.0, 8.0, stable_s=30,
                                                          rng=random.Random(seed)),
                           spawner=spawner)
    return sup, registry


async def test_restarts_follow_the_backoff_schedule(autojump_clock):
    procs = [FakeProc(0.0) for _ in range(5)] + [FakeProc(40.0), FakeProc(0.0)]
    spawned: list[float] = []
    sup, registry = _supervisor(procs, spawned)
    expected = Backoff(1.0, 8.0, stable_s=30, rng=random.Random(5))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.wait_until(lambda s: len(spawned) == 8)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(spawned, spawned[1:], strict=False)]
    want = [expected.next_delay(0.0) for _ in range(5)]
    want.append(40.0 + expected.next_delay(40.0))  # lived 40 s: stable, count reset
    want.append(expected.next_delay(0.0))
    assert gaps == pytest.approx(want)
    assert want[5] - 40.0 <= 1.0  # after the reset the delay is back to base
    assert registry.types() == []  # unregistered on stop


async def test_in_flight_tasks_fail_retryable_when_the_process_dies(autojump_clock):
    proc = FakeProc(lifetime=5.0, status=1, hang=True)
    sup, registry = _supervisor([proc], [])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        handler = registry.get("fake.job")
        ctx = TaskContext("t1", "fake.job", b"", 1, trio.current_time() + 100)
        with pytest.raises(TaskFailed) as info:
            await handler(ctx)
        assert info.value.retryable
        assert info.value.reason == "plugin fake exited with status 1 during the task"
        assert trio.current_time() == pytest.approx(5.0)
        nursery.cancel_scope.cancel()


async def test_a_task_past_its_deadline_kills_the_process_at_the_deadline(autojump_clock):
    proc = FakeProc(lifetime=1e9, hang=True)
    sup, registry = _supervisor([proc], [])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        ctx = TaskContext("t9", "fake.job", b"", 1, trio.current_time() + 3.0)
        with pytest.raises(TaskFailed) as info:
            await registry.get("fake.job")(ctx)
        assert trio.current_time() == pytest.approx(3.0)
        assert "deadline passed: the task was still running" in info.value.reason
        assert proc.killed_because == "task t9 exceeded its deadline"
        nursery.cancel_scope.cancel()


async def test_concurrency_limit_queues_tasks_within_their_deadline(autojump_clock):
    proc = FakeProc(lifetime=1e9, task_s=2.0)
    sup, registry = _supervisor([proc], [])  # SPEC.concurrency == 2
    done: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)

        async def one(i):
            ctx = TaskContext(f"t{i}", "fake.job", b"", 1, trio.current_time() + 100)
            assert await registry.get("fake.job")(ctx) == b"done"
            done.append(trio.current_time())
        async with trio.open_nursery() as tasks:
            for i in range(5):
                tasks.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert sorted(done) == pytest.approx([2.0, 2.0, 4.0, 4.0, 6.0])
