"""One plugin process as the host sees it: spawn, frames in and out, kill (trio).

Theory of operation
-------------------
:func:`spawn` starts ``python -I -B -u -m plugins.runner`` in its own session, with a clean
environment (no ``SOFTHSM2_CONF``, no ``MESHNODE_HSM_PIN``, nothing of the node's
environment but a fixed ``PATH`` and locale), a fresh scratch directory as working
directory, ``HOME`` and ``TMPDIR``, and only three descriptors: the stdin/stdout pipe
(RPC) and a stderr pipe (forwarded to the node's log). ``close_fds`` keeps every other
descriptor of the node (HSM session, sqlite, sockets) out of the child.

:class:`PluginProcess` reads frames with the pure :class:`FrameDecoder`: undecodable or
ill-shaped frames are dropped and counted in ``drops`` and never raise; a declared
length far over the limit ends the connection (the supervisor kills and restarts the
process). :meth:`serve` returns when the process is gone; callers then fail every
task still in flight.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from node.transport.framing import Dropped, FrameDecoder, FramingError, encode_frame
from plugins.protocol import MAX_FRAME_BYTES, parse_from_plugin

__all__ = ["ChildSpec", "PluginProcess", "clean_env", "spawn"]

log = logging.getLogger("meshnode.plugins")

MAX_STDERR_LINE = 2000
#: Seconds to keep reading frames after the process exited.
DRAIN_S = 1.0
#: stderr lines forwarded to the log: per second, and burst.
STDERR_RATE_PER_S = 50
STDERR_BURST = 200


@dataclass(frozen=True)
class ChildSpec:
    """What the runner needs: see :mod:`plugins.runner`."""

    name: str
    entry: str
    package_dir: str | None
    paths: tuple[str, ...]
    cpu_seconds: int
    memory_bytes: int
    concurrency: int
    allow_network: bool
    protect: tuple[str, ...] = ()


def clean_env(scratch: Path) -> dict[str, str]:
    """The whole environment of a plugin process (nothing inherited from the node)."""
    # No PYTHON* variables: ``-I`` ignores them (``-B -u`` say the same on the command
    # line). MALLOC_ARENA_MAX keeps glibc's per-thread arenas from eating RLIMIT_AS.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(scratch), "TMPDIR": str(scratch), "MALLOC_ARENA_MAX": "2"}


class PluginProcess:
    """A running plugin child. ``on_message(msg)`` gets each valid frame (a dict)."""

    def __init__(self, proc: trio.Process, scratch: Path, name: str) -> None:
        self.proc = proc
        self.scratch = scratch
        self.name = name
        self.drops: Counter[str] = Counter()
        self.stderr_dropped = 0
        self.killed_because: str | None = None
        self._send_lock = trio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, msg: dict) -> bool:
        """Send one frame; False when the pipe is closed or the value cannot be framed."""
        try:
            data = encode_frame(msg, max_frame_bytes=MAX_FRAME_BYTES)
        except FramingError:
            return False
        try:
            async with self._send_lock:
                await self.proc.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        return True

    def kill(self, reason: str) -> None:
        """SIGKILL the plugin's whole session (it may have forked). Idempotent."""
        if self.killed_because is None:
            self.killed_because = reason
        if self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    async def serve(self, on_message: Callable[[dict], Awaitable[None] | None]) -> int:
        """Pump frames and stderr until the process exits; returns its exit status."""
        drained = trio.Event()

        async def read_frames() -> None:
            try:
                await self._read_frames(on_message)
            finally:
                drained.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_frames)
            nursery.start_soon(self._read_stderr)
            status = await self.proc.wait()
            # Frames written just before the exit are still in the pipe: read them (a
            # result sent before os._exit counts), unless a forked child holds it open.
            with trio.move_on_after(DRAIN_S):
                await drained.wait()
            nursery.cancel_scope.cancel()
        return status

    async def _read_frames(self, on_message) -> None:
        decoder = FrameDecoder(max_frame_bytes=MAX_FRAME_BYTES)
        stream = self.proc.stdout
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not chunk:
                return
            for item in decoder.feed(chunk):
                if isinstance(item, Dropped):
                    self.drops[item.reason] += 1
                    if item.fatal:
                        log.warning("plugin %s sent a %d-byte frame: killed", self.name,
                                    item.size)
                        self.kill("oversized frame")
                        return
                    continue
                msg = parse_from_plugin(item.value)
                if msg is None:
                    self.drops["invalid"] += 1
                    continue
                result = on_message(msg)
                if result is not None:
                    await result

    async def _read_stderr(self) -> None:
        buf = b""
        plog = logging.getLogger(f"meshnode.plugin.{self.name}")
        tokens, last = float(STDERR_BURST), trio.current_time()
        while True:
            try:
                chunk = await self.proc.stderr.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                if buf:
                    plog.warning("stderr: %s", buf[:MAX_STDERR_LINE].decode(errors="replace"))
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            buf = buf[-MAX_STDERR_LINE:]
            now = trio.current_time()
            tokens = min(STDERR_BURST, tokens + (now - last) * STDERR_RATE_PER_S)
            last = now
            for line in lines:
                if not line.strip():
                    continue
                if tokens < 1:
                    self.stderr_dropped += 1
                    continue
                tokens -= 1
                plog.warning("stderr: %s", line[:MAX_STDERR_LINE].decode(errors="replace"),
                             extra={"plugin": self.name})

    async def close(self) -> None:
        """Kill if still running, reap, remove the scratch directory."""
        self.kill("closed")
        with trio.CancelScope(shield=True):
            await self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.aclose()
        shutil.rmtree(self.scratch, ignore_errors=True)


async def spawn(spec: ChildSpec, *, scratch_root: Path | None = None) -> PluginProcess:
    """Start the plugin process for ``spec``. Raises OSError when it cannot start."""
    scratch = Path(tempfile.mkdtemp(prefix=f"meshnode-plugin-{spec.name}-",
                                    dir=None if scratch_root is None else str(scratch_root)))
    config = {
        "name": spec.name, "entry": spec.entry, "package_dir": spec.package_dir,
        "paths": list(spec.paths), "cpu_seconds": spec.cpu_seconds,
        "memory_bytes": spec.memory_bytes, "concurrency": spec.concurrency,
        "allow_network": spec.allow_network, "scratch": str(scratch),
        "protect": list(spec.protect),
    }
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-B", "-u", "-m", "plugins.runner", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=clean_env(scratch), cwd=str(scratch), start_new_session=True, close_fds=True,
        )
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return PluginProcess(proc, scratch, spec.name)
