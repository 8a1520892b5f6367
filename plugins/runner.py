"""The plugin process: ``python -I -m plugins.runner CONFIG_JSON`` (started by the host).

Theory of operation
-------------------
1. Move the RPC pipe off stdin/stdout to private descriptors, point stdin at /dev/null
   and stdout at stderr, so a stray ``print`` in plugin code cannot corrupt a frame.
2. Confine the process (:mod:`plugins.sandbox`): parent-death signal, rlimits, and —
   after importing what the runner itself needs — Landlock.
3. Import the plugin's entry point (the first plugin code to run), check it is a
   :class:`plugins.sdk.Plugin` with the expected name, bind it to the RPC services and
   send ``hello`` with its task types and topics.
4. Read frames on the main thread; run tasks and message receivers on a thread pool of
   ``concurrency`` workers; RPC calls from handlers block their worker until the node's
   reply arrives. EOF or ``stop`` ends the process.

The host never trusts anything said here: it validates every frame, enforces
capabilities, deadlines and quotas on its side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

from node.transport.framing import Dropped, FrameDecoder, FramingError, encode_frame
from plugins import sandbox, sdk
from plugins.protocol import MAX_FRAME_BYTES, parse_from_host

EXIT_LOAD_FAILED = 3
_ETC = ["/etc/localtime", "/etc/ssl", "/etc/ca-certificates", "/etc/hosts", "/etc/resolv.conf",
        "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/services",
        "/etc/protocols", "/etc/mime.types"]


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict | None = None


class Channel:
    """The RPC pipe, usable from any thread; implements :class:`plugins.sdk.Services`."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}

    def send(self, msg: dict[str, Any]) -> None:
        data = encode_frame(msg, max_frame_bytes=MAX_FRAME_BYTES)
        with self._lock:
            view = memoryview(data)
            while view:
                n = os.write(self.wfd, view)
                view = view[n:]

    def call(self, method: str, args: dict[str, Any]) -> Any:
        call_id = next(self._ids)
        pending = self._pending[call_id] = _Pending()
        try:
            self.send({"t": "call", "id": call_id, "method": method, "args": args})
        except FramingError as exc:
            del self._pending[call_id]
            raise sdk.NodeError(f"{method}: {exc}") from None
        pending.event.wait()
        reply = pending.reply
        if not reply["ok"]:
            raise sdk.NodeError(reply["error"])
        return reply["value"]

    def emit_log(self, level: int, msg: str) -> None:
        try:
            self.send({"t": "log", "level": max(0, min(100, int(level))), "msg": msg})
        except (FramingError, OSError):
            pass

    def resolve(self, reply: dict) -> None:
        pending = self._pending.pop(reply["id"], None)
        if pending is not None:
            pending.reply = reply
            pending.event.set()


def _move_pipe() -> tuple[int, int]:
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return rfd, wfd


def _confine(cfg: dict) -> str:
    import identity
    import node
    import plugins

    sandbox.set_parent_death_signal()
    sandbox.set_limits(cpu_seconds=cfg["cpu_seconds"], memory_bytes=cfg["memory_bytes"])
    sys.path[:0] = [p for p in cfg["paths"] if p not in sys.path]
    read_only = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/lib", "/lib64",
                 "/bin", "/dev/null", "/dev/urandom", "/dev/random", *_ETC,
                 *[p for p in sys.path if p and os.path.exists(p)]}
    for pkg in (plugins, identity, node):
        read_only.update(pkg.__path__)
    if cfg.get("package_dir"):
        read_only.add(cfg["package_dir"])
    exposing = sorted(r for r in read_only for p in cfg.get("protect", ())
                      if _is_under(p, r))
    read_only.difference_update(exposing)
    desc = sandbox.landlock(read_only, [cfg["scratch"]], allow_network=cfg["allow_network"])
    desc += "+" + sandbox.restrict_sockets(allow_network=cfg["allow_network"])
    if exposing:
        desc += f" (not readable, they hold protected data: {', '.join(exposing)})"
    return desc


def _is_under(path: str, root: str) -> bool:
    try:
        return os.path.realpath(path) == os.path.realpath(root) or os.path.realpath(
            path).startswith(os.path.realpath(root).rstrip("/") + "/")
    except OSError:
        return False


def _load(cfg: dict) -> sdk.Plugin:
    module_name, _, attr = cfg["entry"].partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, sdk.Plugin):
        raise TypeError(f"{cfg['entry']} is not a plugins.sdk.Plugin (got {type(obj).__name__})")
    if obj.name != cfg["name"]:
        raise ValueError(f"{cfg['entry']} is plugin {obj.name!r}, expected {cfg['name']!r}")
    return obj


def _run_task(channel: Channel, plugin: sdk.Plugin, msg: dict) -> None:
    ctx = sdk.TaskContext(msg["task_id"], msg["task_type"], msg["input"], msg["attempt"],
                          time.monotonic() + msg["timeout_ms"] / 1000)
    reply: dict[str, Any] = {"t": "result", "id": msg["id"]}
    fn = plugin.tasks.get(msg["task_type"])
    try:
        if fn is None:
            raise sdk.TaskFailed(f"no handler for {msg['task_type']!r}", retryable=False)
        out = asyncio.run(fn(ctx)) if inspect.iscoroutinefunction(fn) else fn(ctx)
        if not isinstance(out, (bytes, bytearray, memoryview)):
            raise sdk.TaskFailed(f"handler returned {type(out).__name__}, not bytes",
                                 retryable=False)
        reply.update(ok=True, output=bytes(out))
    except sdk.TaskFailed as exc:
        reply.update(ok=False, reason=str(exc.reason)[:2000], retryable=bool(exc.retryable))
    except MemoryError:
        reply.update(ok=False, reason="out of memory (RLIMIT_AS)", retryable=True)
    except Exception as exc:  # noqa: BLE001 - a handler bug fails its task, not the process
        plugin.log.error("task %s failed: %s", msg["task_id"], traceback.format_exc()[-3000:])
        reply.update(ok=False, reason=f"{type(exc).__name__}: {exc}"[:2000], retryable=False)
    try:
        channel.send(reply)
    except FramingError as exc:
        channel.send({"t": "result", "id": msg["id"], "ok": False,
                      "reason": f"output not sendable: {exc}"[:2000], "retryable": False})


def _deliver(plugin: sdk.Plugin, msg: dict) -> None:
    fn = plugin.topics.get(msg["topic"])
    if fn is None:
        return
    try:
        message = sdk.Message(msg["topic"], msg["data"], msg["sender"])
        asyncio.run(fn(message)) if inspect.iscoroutinefunction(fn) else fn(message)
    except Exception:  # noqa: BLE001
        plugin.log.error("receiver for %r failed: %s", msg["topic"], traceback.format_exc())


def _serve(channel: Channel, plugin: sdk.Plugin, workers: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX_FRAME_BYTES)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    while True:
        chunk = os.read(channel.rfd, 65536)
        if not chunk:
            os._exit(0)
        for item in decoder.feed(chunk):
            if isinstance(item, Dropped):
                if item.fatal:
                    os._exit(4)
                continue
            msg = parse_from_host(item.value)
            if msg is None:
                continue
            kind = msg["t"]
            if kind == "reply":
                channel.resolve(msg)
            elif kind == "task":
                pool.submit(_run_task, channel, plugin, msg)
            elif kind == "message":
                pool.submit(_deliver, plugin, msg)
            elif kind == "stop":
                os._exit(0)


def main(argv: list[str] | None = None) -> None:
    cfg = json.loads((argv or sys.argv[1:])[0])
    rfd, wfd = _move_pipe()
    channel = Channel(rfd, wfd)
    try:
        sandbox_desc = _confine(cfg)
        # Compile plugin code from the .py files the manifest's digest covers: never
        # load a .pyc from the package's __pycache__ (it could be planted with the
        # source's mtime and size). -B keeps this process from writing any.
        sys.pycache_prefix = os.path.join(cfg["scratch"], "pycache")
        plugin = _load(cfg)
    except BaseException as exc:  # noqa: BLE001 - report any load failure, then exit
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        channel.send({"t": "fatal", "error": detail[-2000:]})
        os._exit(EXIT_LOAD_FAILED)
    plugin.bind(channel)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    root.addHandler(plugin.log.handlers[0])
    channel.send({"t": "hello", "name": plugin.name, "tasks": sorted(plugin.tasks),
                  "topics": sorted(plugin.topics), "sandbox": sandbox_desc,
                  "pid": os.getpid()})
    _serve(channel, plugin, cfg["concurrency"])


if __name__ == "__main__":
    main()
