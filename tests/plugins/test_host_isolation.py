"""The plugin host with real plugin processes: crash, hang, CPU limit, isolation.

Each test writes small plugins into a private site directory (see conftest.py), runs a
PluginHost over it and drives tasks through the task engine's HandlerRegistry, exactly
as the engine does. Waits are event-driven (``PluginSupervisor.wait_until``).
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import trio
from plugins_testkit import plugins_cfg, run_task, running_host

from node.tasks.api import TaskFailed

CRASHY = """
import os
@plugin.task_handler("work")
def work(ctx):
    if ctx.input == b"crash":
        os._exit(7)
    return b"ok:" + ctx.input
"""

HANG = """
@plugin.task_handler("spin")
def spin(ctx):
    while True:
        pass

@plugin.task_handler("ping")
def ping(ctx):
    return b"pong"
"""


async def test_crash_is_contained_restarted_with_backoff_and_fails_retryable(
        site, author, tmp_path):
    site.add("crashy", CRASHY, author=author)
    cfg = plugins_cfg(author, {"crashy": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["crashy"]
        first_pid = sup.status()["pid"]
        assert await run_task(registry, "crashy.work", b"a") == b"ok:a"
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "crashy.work", b"crash")
        assert info.value.retryable is True
        assert "exited with status 7" in info.value.reason
        # While it restarts, the type stays registered and tasks fail retryable.
        assert "crashy.work" in registry.types()
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.state == "running" and s.restarts == 1)
        assert sup.status()["pid"] != first_pid
        assert await run_task(registry, "crashy.work", b"b") == b"ok:b"
        # Crash again: the second consecutive failure waits longer (backoff doubles).
        with pytest.raises(TaskFailed):
            await run_task(registry, "crashy.work", b"crash")
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.state == "running" and s.restarts == 2)
        assert sup.backoff.failures == 2
        last_pid = sup.status()["pid"]
    assert registry.types() == []  # unregistered when the host stops
    with pytest.raises(ProcessLookupError):  # and its process is gone (reaped)
        os.kill(last_pid, 0)


async def test_a_task_on_a_restarting_plugin_fails_retryable(site, author, tmp_path):
    site.add("crashy", CRASHY, author=author)
    cfg = plugins_cfg(author, {"crashy": ["tasks"]}, restart_backoff_ms=60_000,
                      restart_backoff_max_ms=60_000)
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["crashy"]
        with pytest.raises(TaskFailed):
            await run_task(registry, "crashy.work", b"crash")
        with trio.fail_after(10):
            await sup.wait_until(lambda s: s.state == "restarting")
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "crashy.work", b"x")
        assert info.value.retryable and "not running" in info.value.reason


async def test_a_hung_task_is_killed_at_its_deadline_and_the_plugin_recovers(
        site, author, tmp_path):
    site.add("hang", HANG, author=author)
    cfg = plugins_cfg(author, {"hang": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["hang"]
        started = trio.current_time()
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "hang.spin", timeout=1.0)
        assert trio.current_time() - started < 5
        assert info.value.retryable is True
        assert "deadline" in info.value.reason and "killed" in info.value.reason
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.state == "running" and s.restarts == 1)
        assert await run_task(registry, "hang.ping") == b"pong"
        assert sup.counters["kills_deadline"] == 1


async def test_the_engine_cancelling_an_attempt_kills_the_plugin(site, author, tmp_path):
    site.add("hang", HANG, author=author)
    cfg = plugins_cfg(author, {"hang": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["hang"]
        with trio.move_on_after(1.0):  # what the engine does at ctx.deadline
            await run_task(registry, "hang.spin", timeout=60)
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.restarts == 1 and s.state == "running")
        assert sup.counters["kills_deadline"] == 1
        assert sup.last_exit == "killed (task t exceeded its deadline)"


async def test_rlimit_cpu_kills_a_spinning_plugin(site, author, tmp_path):
    site.add("hang", HANG, author=author)
    cfg = plugins_cfg(author, {"hang": ["tasks"]}, cpu_seconds=1)
    async with running_host(site, cfg, tmp_path) as (host, registry):
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "hang.spin", timeout=60)
        assert info.value.retryable is True
        assert "SIGXCPU" in info.value.reason or "SIGKILL" in info.value.reason, info.value
        assert host.supervisors["hang"].counters["kills_deadline"] == 0


async def test_memory_limit_fails_the_task_not_the_host(site, author, tmp_path):
    site.add("hog", """
@plugin.task_handler("hog")
def hog(ctx):
    blob = bytearray(2 * 1024 ** 3)
    return bytes(blob[:1])
""", author=author)
    cfg = plugins_cfg(author, {"hog": ["tasks"]}, memory_mb=256)
    async with running_host(site, cfg, tmp_path) as (host, registry):
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "hog.hog")
        assert info.value.retryable is True and "memory" in info.value.reason


PROBE = """
import json, os
from pathlib import Path

@plugin.task_handler("probe")
def probe(ctx):
    target = json.loads(ctx.input)
    out = {"env": sorted(os.environ), "cwd": os.getcwd(), "fds": []}
    for fd in range(0, 256):
        try:
            os.fstat(fd)
            out["fds"].append(fd)
        except OSError:
            pass
    for what, path in target.items():
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                Path(path).read_bytes()
            out[what] = "readable"
        except OSError as exc:
            out[what] = type(exc).__name__
    return json.dumps(out).encode()
"""


async def test_the_plugin_sees_no_hsm_settings_no_data_dir_and_no_extra_fds(
        site, author, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTHSM2_CONF", str(tmp_path / "home" / "hsm" / "softhsm2.conf"))
    monkeypatch.setenv("MESHNODE_HSM_PIN", "123456")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "node.db").write_bytes(b"secret")
    site.add("probe", PROBE, author=author)
    cfg = plugins_cfg(author, {"probe": ["tasks"]})
    leaked = open(tmp_path / "leak.txt", "wb")  # noqa: SIM115 - an fd the node holds
    try:
        async with running_host(site, cfg, tmp_path) as (host, registry):
            assert host.supervisors["probe"].sandbox.startswith("landlock")
            target = {"data_dir": str(home / "data"), "db": str(home / "data" / "node.db"),
                      "node_environ": f"/proc/{os.getpid()}/environ"}
            out = json.loads(await run_task(registry, "probe.probe",
                                            json.dumps(target).encode()))
    finally:
        leaked.close()
    assert "SOFTHSM2_CONF" not in out["env"] and "MESHNODE_HSM_PIN" not in out["env"]
    assert not any(k.startswith("MESHNODE") for k in out["env"])
    assert not out["cwd"].startswith(str(home))
    # 0, 1, 2 (stdin /dev/null, stdout->stderr, stderr) plus the two RPC descriptors the
    # runner moved the pipe to; nothing of the node's (its leak.txt, sqlite, sockets).
    assert len(out["fds"]) <= 6, out["fds"]
    assert out["data_dir"] == "PermissionError"
    assert out["db"] == "PermissionError"
    assert out["node_environ"] in ("PermissionError", "FileNotFoundError")


async def test_malformed_frames_are_dropped_counted_and_never_crash_the_host(
        site, author, tmp_path):
    site.add("noisy", """
import os, struct
import msgpack
from identity.canonical import encode

def frame(payload):
    return struct.pack(">I", len(payload)) + payload

@plugin.task_handler("noise")
def noise(ctx):
    fd = plugin._services.wfd
    bad = [
        frame(b"\\xc1"),                                  # not msgpack
        frame(msgpack.packb(1.5)),                        # a float: not canonical
        frame(msgpack.packb({"t": "log", "msg": "x", "level": 20})),  # keys unsorted
        frame(encode({"t": "bogus"})),                    # unknown kind
        frame(encode({"t": "call", "id": 1, "method": "rm -rf", "args": {}})),
        frame(encode(["t", "hello"])),                    # not a map
        frame(encode({"t": "result", "id": 99999, "ok": True, "output": b""})),
    ]
    with plugin._services._lock:
        for b in bad:
            os.write(fd, b)
    return b"still here"

@plugin.task_handler("huge")
def huge(ctx):
    with plugin._services._lock:
        os.write(plugin._services.wfd, struct.pack(">I", 0xFFFFFFF0) + b"x" * 64)
    return b"unreachable"
""", author=author)
    cfg = plugins_cfg(author, {"noisy": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["noisy"]
        assert await run_task(registry, "noisy.noise") == b"still here"
        assert await run_task(registry, "noisy.noise") == b"still here"
        # An absurd declared length cannot be skipped: the process is killed, contained.
        with pytest.raises(TaskFailed) as info:
            await run_task(registry, "noisy.huge")
        assert info.value.retryable
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.state == "running" and s.restarts == 1)
        c = sup.counters
        assert c["frames_malformed"] == 6  # undecodable or not canonical, twice
        assert c["frames_invalid"] == 6  # bogus kind, bad method, array, twice
        assert c["frames_unknown_id"] == 2
        assert c["frames_oversized"] == 1
        assert await run_task(registry, "noisy.noise") == b"still here"


async def test_plugin_logs_reach_the_node_logger_with_the_plugin_name(
        site, author, tmp_path, caplog):
    site.add("chatty", """
@plugin.task_handler("talk")
def talk(ctx):
    plugin.log.warning("hello from %s", "inside")
    print("a stray print goes to stderr, not into the RPC pipe")
    return b"done"
""", capabilities=("tasks", "log"), author=author)
    cfg = plugins_cfg(author, {"chatty": ["tasks", "log"]})
    caplog.set_level(logging.INFO)
    async with running_host(site, cfg, tmp_path) as (host, registry):
        assert await run_task(registry, "chatty.talk") == b"done"
    records = [r for r in caplog.records if r.name == "meshnode.plugin.chatty"]
    assert any(r.getMessage() == "hello from inside" for r in records)
    assert any("stray print" in r.getMessage() for r in records)


SOCKETS = """
import json, socket

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__

@plugin.task_handler("probe")
def probe(ctx):
    target = json.loads(ctx.input)
    def unix():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(target["unix"])
        s.close()
    def tcp():
        s = socket.create_connection(("127.0.0.1", target["tcp"]), timeout=5)
        s.close()
    def udp():
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    def pair():
        a, b = socket.socketpair()
        a.close(); b.close()
    out = {k: attempt(f) for k, f in
           {"unix": unix, "tcp": tcp, "udp": udp, "pair": pair}.items()}
    return json.dumps(out).encode()
"""


@pytest.mark.parametrize("network", [False, True])
async def test_sockets_the_plugin_may_open(site, author, tmp_path, network):
    import socket as pysocket

    caps = ("tasks", "network") if network else ("tasks",)
    site.add("net", SOCKETS, capabilities=caps, author=author)
    cfg = plugins_cfg(author, {"net": list(caps)})
    control = pysocket.socket(pysocket.AF_UNIX)  # stands for the node's control socket
    control.bind(str(tmp_path / "ctl.sock"))
    control.listen()
    tcp = pysocket.create_server(("127.0.0.1", 0))
    try:
        async with running_host(site, cfg, tmp_path) as (host, registry):
            target = {"unix": str(tmp_path / "ctl.sock"), "tcp": tcp.getsockname()[1]}
            out = json.loads(await run_task(registry, "net.probe",
                                            json.dumps(target).encode()))
            assert host.supervisors["net"].sandbox.endswith("+seccomp")
    finally:
        control.close()
        tcp.close()
    assert out["unix"] == "PermissionError"  # never, whatever the capabilities
    assert out["pair"] == "ok"  # socketpair (asyncio's self-pipe) still works
    if network:
        assert (out["tcp"], out["udp"]) == ("ok", "ok")
    else:
        assert (out["tcp"], out["udp"]) == ("PermissionError", "PermissionError")
