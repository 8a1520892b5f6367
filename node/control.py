"""Local control API: the CLI talks to a running node over a Unix socket (mode 0600).

Protocol: the client connects, sends one frame (4-byte big-endian length + canonical
msgpack ``{"method": str, "params": {str: value}}``) and reads one frame back:
``{"ok": True, "result": value}`` or ``{"ok": False, "error": str}``. One request per
connection keeps the server trivially robust. Only the owner of the node's home
directory can connect (the socket file is created with mode 0600 inside the 0700 home).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from identity import canonical

log = logging.getLogger("meshnode.control")

__all__ = ["ControlError", "ControlServer", "call"]

MAX_CONTROL_FRAME = 16 * 1024 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(RuntimeError):
    """The node is not running, or it answered with an error (one line)."""


class ControlServer:
    """Serves ``handlers`` (method name -> async function of params) on ``path``."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = Path(path)
        self.handlers = handlers

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind (replacing a stale socket file), serve until cancelled, then unlink."""
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._serve, [listener], handler_nursery=nursery)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = canonical.decode(await _read_frame(stream))
                method, params = request["method"], request.get("params", {})
                handler = self.handlers.get(method)
                if handler is None:
                    reply = {"ok": False, "error": f"unknown method {method!r}"}
                else:
                    reply = {"ok": True, "result": await handler(params)}
            except (canonical.DecodeError, KeyError, TypeError, EOFError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except ControlError as exc:
                reply = {"ok": False, "error": str(exc)}
            except trio.BrokenResourceError:
                return
            data = canonical.encode(reply)
            try:
                await stream.send_all(len(data).to_bytes(4, "big") + data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("control client went away before the reply")


async def _read_frame(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        if len(buf) >= 4 and int.from_bytes(buf[:4], "big") > MAX_CONTROL_FRAME:
            raise EOFError("request too large")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("connection closed mid-request")
        buf += chunk
    return bytes(buf[4:])


def call(path: Path, method: str, params: dict[str, Any] | None = None, *,
         timeout_s: float = 30.0) -> Any:
    """Call ``method`` on the node listening at ``path`` (blocking client for the CLI).

    Raises ControlError when no node listens there, the call times out after
    ``timeout_s`` seconds, or the node answers with an error.
    """
    data = canonical.encode({"method": method, "params": params or {}})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(len(data).to_bytes(4, "big") + data)
            reply = canonical.decode(_recv_frame(s))
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no node is running with control socket {path} "
                           "(start it with `meshnode start`)") from None
    except TimeoutError:
        raise ControlError(f"the node did not answer {method!r} within {timeout_s:g} s") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply["result"]


def _recv_frame(s: socket.socket) -> bytes:
    buf = bytearray()
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        chunk = s.recv(65536)
        if not chunk:
            raise ControlError("the node closed the control connection")
        buf += chunk
    return bytes(buf[4:])
