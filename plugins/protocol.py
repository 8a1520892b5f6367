"""The plugin RPC protocol between the node (host) and a plugin process (pure).

Theory of operation
-------------------
The node and a plugin process talk over one pipe pair (the child's stdin/stdout, which
the runner moves to private descriptors before any plugin code runs). Each direction
carries length-prefixed canonical msgpack frames (:mod:`node.transport.framing`: 4-byte
big-endian length + one canonical msgpack value). Every frame is a map with a kind
``t``; :func:`parse_from_plugin` and :func:`parse_from_host` check the shape and types
of each kind and return ``None`` for anything else, so the receiver drops and counts it
and never raises on bad input (floats are not canonical: times travel as integer ms).

Plugin -> host
    ``hello``  {name, tasks: [str], topics: [str], sandbox: str, pid: int}
    ``result`` {id, ok: true, output: bytes} | {id, ok: false, reason, retryable}
    ``call``   {id, method, args: map} (methods: :data:`METHODS`)
    ``log``    {level: int, msg: str}
    ``fatal``  {error: str}   (the plugin could not load; the process then exits)
Host -> plugin
    ``task``   {id, task_id, task_type, input: bytes, attempt, timeout_ms}
    ``reply``  {id, ok: true, value} | {id, ok: false, error: str}
    ``message``{topic, data: bytes, sender: str}
    ``stop``   {}
"""

from __future__ import annotations

import re
from typing import Any

from plugins.capabilities import Capability

__all__ = [
    "MAX_FRAME_BYTES",
    "METHODS",
    "NAME_RE",
    "check_name",
    "parse_from_host",
    "parse_from_plugin",
    "protocol_id",
]

#: Largest RPC frame either side accepts (a task input or output, a KV value).
MAX_FRAME_BYTES = 1024 * 1024 + 4096
#: Plugin names: lower-case letters, digits, ``-`` and ``_``; they appear in protocol
#: IDs, task types (``<name>.<type>``), logger names and KV namespaces.
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
#: Task types and topics declared by a plugin (local part, before namespacing).
LOCAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
#: RPC methods a plugin may call, and the capability each one needs.
METHODS: dict[str, Capability] = {
    "kv.get": Capability.KV,
    "kv.put": Capability.KV,
    "kv.delete": Capability.KV,
    "kv.list": Capability.KV,
    "pubsub.publish": Capability.PUBSUB,
    "propose": Capability.PROPOSE,
}
_MAX_ID = 2**63 - 1


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid plugin name, else raise ValueError (one line)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid plugin name {name!r}: use [a-z][a-z0-9_-]{{0,39}}")
    return name


def protocol_id(name: str) -> str:
    """The plugin-scoped protocol ID ``/meshnode/plugin/<name>/1.0.0``."""
    return f"/meshnode/plugin/{check_name(name)}/1.0.0"


def _is_id(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_ID


def _str_list(v: object, pattern: re.Pattern[str], limit: int = 256) -> bool:
    return (type(v) is list and len(v) <= limit
            and all(type(s) is str and pattern.fullmatch(s) for s in v))


def _fields(msg: dict, want: dict[str, Any]) -> bool:
    """Every key of ``want`` is present with a value passing its check; no others."""
    if set(msg) != set(want) | {"t"}:
        return False
    return all(check(msg[k]) for k, check in want.items())


def _is(kind: type):
    return lambda v: type(v) is kind


_FROM_PLUGIN = {
    "hello": {"name": _is(str), "tasks": lambda v: _str_list(v, LOCAL_RE),
              "topics": lambda v: _str_list(v, LOCAL_RE), "sandbox": _is(str),
              "pid": _is_id},
    "call": {"id": _is_id, "method": lambda v: v in METHODS, "args": _is(dict)},
    "log": {"level": lambda v: type(v) is int and 0 <= v <= 100, "msg": _is(str)},
    "fatal": {"error": _is(str)},
}
_RESULT_OK = {"id": _is_id, "ok": lambda v: v is True, "output": _is(bytes)}
_RESULT_ERR = {"id": _is_id, "ok": lambda v: v is False, "reason": _is(str),
               "retryable": _is(bool)}

_FROM_HOST = {
    "task": {"id": _is_id, "task_id": _is(str), "task_type": _is(str), "input": _is(bytes),
             "attempt": _is_id, "timeout_ms": _is_id},
    "message": {"topic": _is(str), "data": _is(bytes), "sender": _is(str)},
    "stop": {},
}
_REPLY_OK = {"id": _is_id, "ok": lambda v: v is True, "value": lambda v: True}
_REPLY_ERR = {"id": _is_id, "ok": lambda v: v is False, "error": _is(str)}


def parse_from_plugin(value: object) -> dict | None:
    """``value`` if it is a well-formed plugin->host message, else None (drop it)."""
    if type(value) is not dict or type(value.get("t")) is not str:
        return None
    kind = value["t"]
    if kind == "result":
        ok = _fields(value, _RESULT_OK) or _fields(value, _RESULT_ERR)
    else:
        want = _FROM_PLUGIN.get(kind)
        ok = want is not None and _fields(value, want)
    return value if ok else None


def parse_from_host(value: object) -> dict | None:
    """``value`` if it is a well-formed host->plugin message, else None."""
    if type(value) is not dict or type(value.get("t")) is not str:
        return None
    kind = value["t"]
    if kind == "reply":
        ok = _fields(value, _REPLY_OK) or _fields(value, _REPLY_ERR)
    else:
        want = _FROM_HOST.get(kind)
        ok = want is not None and _fields(value, want)
    return value if ok else None
