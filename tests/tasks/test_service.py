"""node.tasks.service and node.tasks.control: the mesh shell over a stand-in log (each
proposal commits at the next sequence number), and the control handlers over a real
Unix socket."""

from __future__ import annotations

import random

import pytest
import trio
from meshkit import SIGNERS, members

from consensus.messages import Request
from node.control import ControlError, ControlServer, call
from node.tasks.api import HandlerRegistry, TaskFailed
from node.tasks.control import task_handlers
from node.tasks.engine import TaskEngine
from node.tasks.meshapp import MeshTaskApp
from node.tasks.service import MeshTaskService
from node.tasks.store import TaskStore


class Log:
    """Commits every proposal at once, in order (a one-replica consensus)."""

    def __init__(self, app: MeshTaskApp) -> None:
        self.app, self.seq, self.ops = app, 0, []

    async def propose(self, op: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        self.seq += 1
        self.ops.append(op)
        return self.app.apply(self.seq, [Request("c", self.seq, op)])[0]


def node(tmp_path, name: str, app: MeshTaskApp, log: Log, registry: HandlerRegistry):
    engine = TaskEngine(TaskStore(tmp_path / f"{name}.db"), registry, concurrency=4,
                        wall=trio.current_time, rng=random.Random(1), threaded=False)

    async def sign(data: bytes) -> bytes:
        return SIGNERS[name].sign(data)

    return engine, MeshTaskService(app, engine, me=name, propose=log.propose, sign=sign,
                                   tick_s=1.0)


async def upper(ctx):
    if ctx.input == b"fail":
        raise TaskFailed("refused", retryable=False)
    return ctx.input.upper()


async def test_mesh_task_runs_on_the_assignee_and_the_signed_result_is_accepted(
        tmp_path, autojump_clock):
    m = members("node0")
    app = MeshTaskApp(lambda: m)
    log = Log(app)
    reg = HandlerRegistry()
    reg.register("upper", upper)
    engine, service = node(tmp_path, "node0", app, log, reg)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await nursery.start(service.run)
        tid = await service.submit("upper", b"hello", deadline_s=5)
        st = await service.wait(tid)
        bad = await service.wait(await service.submit("upper", b"fail", deadline_s=5))
        nursery.cancel_scope.cancel()
    assert st["state"] == "done" and st["accepted"]["output"] == b"HELLO"
    assert st["accepted"]["node"] == "node0" and st["by"] == "node0"
    assert bad["state"] == "failed" and "refused" in bad["reason"]


async def test_a_dead_assignee_is_replaced_after_the_deadline(tmp_path, autojump_clock):
    """node1 is a member but never runs: its tasks move to node0 when their deadline
    (2 ticks of 1 s) passes, and node0's results are accepted."""
    m = members("node0", "node1")
    app = MeshTaskApp(lambda: m)
    log = Log(app)
    reg = HandlerRegistry()
    reg.register("upper", upper)
    engine, service = node(tmp_path, "node0", app, log, reg)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await nursery.start(service.run)
        ids = [await service.submit("upper", b"x%d" % i, deadline_s=2) for i in range(6)]
        first = {app.core.status(t)["assignee"] for t in ids}
        done = [await service.wait(t) for t in ids]
        nursery.cancel_scope.cancel()
    assert "node1" in first
    assert all(s["state"] == "done" and s["accepted"]["node"] == "node0" for s in done)
    moved = [s for s in done if s["history"][0][1] == "node1"]
    assert moved and all(s["history"][0][3].startswith("deadline") for s in moved)


async def test_only_members_keep_the_mesh_clock(tmp_path, autojump_clock):
    """A node outside the member set cannot sign requests: with tasks open it leaves the
    clock ticks to the members instead of proposing what can never commit."""
    m = members("node0")
    app = MeshTaskApp(lambda: m)
    log = Log(app)
    member_engine, member = node(tmp_path, "node0", app, log, HandlerRegistry())
    _engine, observer = node(tmp_path, "node1", app, log, HandlerRegistry())
    await member.submit("upper", b"x", deadline_s=60)  # no handler: stays open
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        await trio.sleep(5.5)
        assert app.core.open_count() == 1 and len(log.ops) == 1  # the submission only
        await nursery.start(member_engine.run)
        await nursery.start(member.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert len(log.ops) > 1  # the member ticks


async def test_control_handlers_over_a_unix_socket(tmp_path):
    reg = HandlerRegistry()
    reg.register("upper", upper)
    gate = trio.Event()

    async def hang(ctx):
        await gate.wait()
        return b""

    reg.register("hang", hang)
    store = TaskStore(tmp_path / "t.db")
    engine = TaskEngine(store, reg, concurrency=2)
    sock = tmp_path / "c.sock"

    async def ctl(method, params=None):
        return await trio.to_thread.run_sync(lambda: call(sock, method, params))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await nursery.start(ControlServer(sock, task_handlers(engine)).run)
        row = await ctl("task.submit", {"type": "upper", "input": b"abc", "wait": True,
                                        "deadline_ms": 5000})
        assert (row["state"], row["output"], row["mesh"]) == ("succeeded", b"ABC", False)
        assert isinstance(row["deadline_ms"], int)
        hung = await ctl("task.submit", {"type": "hang", "idempotency_key": "k"})
        assert hung["state"] in ("queued", "running")
        again = await ctl("task.submit", {"type": "hang", "idempotency_key": "k"})
        assert again["id"] == hung["id"]
        assert (await ctl("task.show", {"id": hung["id"]}))["type"] == "hang"
        assert [r["id"] for r in await ctl("task.list", {"limit": 1})] == [hung["id"]]
        assert (await ctl("task.cancel", {"id": hung["id"]}))["state"] == "cancelled"
        stats = await ctl("task.stats")
        assert stats["states"]["cancelled"] == 1 and stats["types"] == ["hang", "upper"]
        for method, params, message in [
            ("task.show", {"id": "nope"}, "no task nope"),
            ("task.submit", {"type": ""}, "type must be a non-empty string"),
            ("task.submit", {"type": "x", "max_attempts": 0}, "max_attempts"),
            ("task.submit", {"type": "x", "mesh": True}, "does not run mesh tasks"),
            ("task.list", {"state": "weird"}, "unknown task state"),
        ]:
            with pytest.raises(ControlError, match=message):
                await ctl(method, params)
        gate.set()
        nursery.cancel_scope.cancel()
    store.close()


def test_cli_parses_task_commands(monkeypatch, capsys):
    import argparse

    from node import cli_tasks

    parser = argparse.ArgumentParser(prog="meshnode")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_tasks.register(sub, lambda p: p.add_argument("--home"))
    calls = []

    def fake(args, method, params, **kw):
        calls.append((method, params))
        return {"id": "abc", "state": "queued", "type": "t", "attempt": 0}

    monkeypatch.setattr(cli_tasks, "_control", fake)
    args = parser.parse_args(["task", "submit", "resize", "--input", '{"w": 3}',
                              "--deadline", "2m", "--priority", "5"])
    assert args.func(args) == 0 and capsys.readouterr().out == "abc\n"
    assert calls[-1] == ("task.submit", {"type": "resize", "input": b'{"w": 3}',
                                         "deadline_ms": 120_000, "mesh": False,
                                         "wait": False, "priority": 5})
    args = parser.parse_args(["task", "show", "abc", "--json"])
    assert args.func(args) == 0 and '"state": "queued"' in capsys.readouterr().out
    assert cli_tasks.parse_duration("500ms") == 0.5
    for bad in (["task", "submit", "t", "--input", "{nope"],
                ["task", "submit", "t", "--deadline", "soon"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


async def test_a_refused_submission_is_reported(tmp_path, autojump_clock):
    from node.tasks.service import MeshSubmitError

    m = members("node0")
    app = MeshTaskApp(lambda: m)
    engine, service = node(tmp_path, "node1", app, Log(app), HandlerRegistry())
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        with pytest.raises(MeshSubmitError, match="node1 is not a member"):
            await service.submit("upper", b"x")
        nursery.cancel_scope.cancel()
