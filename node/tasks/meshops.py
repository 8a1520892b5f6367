"""Mesh task operations: builders, signing bytes and the strict parser (pure).

Each operation is the canonical msgpack encoding (:mod:`identity.canonical`) of a map
with a type tag ``"t"``:

* ``{"t": "task.submit", "id": str, "type": str, "input": bytes, "deadline": int,
  "max_attempts": int, "by": str, "at": int, "sig": bytes(64)}``
* ``{"t": "task.result", "id": str, "attempt": int, "node": str, "ok": bool,
  "retry": bool, "output": bytes, "error": str, "sig": bytes(64)}``
* ``{"t": "task.tick", "node": str, "clock": int, "sig": bytes(64)}``

Signatures are Ed25519 (the node's key, through the HSM in a node) over
:func:`submit_signing_bytes` (by the submitting member ``by``),
:func:`result_signing_bytes` (by the executor) and :func:`tick_signing_bytes`: canonical
arrays that start with a domain string, so a signature on one kind of message is never
valid as another. Input and output enter as their SHA-256, so the HSM signs a short
message whatever their size. ``at`` in a submission is the mesh clock the submitter saw:
the core refuses submissions older than its submit window, so an old submission cannot
be replayed once its task has been pruned.
"""

from __future__ import annotations

import hashlib
from typing import Any

from identity.canonical import DecodeError, decode, encode

__all__ = [
    "HRW_DOMAIN", "MAX_DEADLINE_TICKS", "MAX_INPUT_BYTES", "RESULT_DOMAIN", "TICK_DOMAIN",
    "SUBMIT_DOMAIN", "decode_result", "op_tag", "parse_op", "result_op",
    "result_signing_bytes", "sign_result", "sign_submit", "sign_tick", "submit_op",
    "submit_signing_bytes", "tick_op", "tick_signing_bytes",
]

SUBMIT_DOMAIN = "meshnode/task-submit/1"
RESULT_DOMAIN = "meshnode/task-result/1"
TICK_DOMAIN = "meshnode/task-tick/1"
HRW_DOMAIN = "meshnode/task-hrw/1"
MAX_ID = 128
MAX_INPUT_BYTES = 256 * 1024
MAX_OUTPUT_BYTES = 256 * 1024
MAX_DEADLINE_TICKS = 1_000_000
MAX_ATTEMPTS = 64


def result_signing_bytes(task_id: str, attempt: int, node: str, ok: bool, retry: bool,
                         output: bytes, error: str) -> bytes:
    """The bytes an executor signs for its result of ``task_id``'s ``attempt``."""
    return encode([RESULT_DOMAIN, task_id, attempt, node, ok, retry,
                   hashlib.sha256(output).digest(), error])


def tick_signing_bytes(node: str, clock: int) -> bytes:
    """The bytes a member signs to vote that the mesh clock moves on from ``clock``."""
    return encode([TICK_DOMAIN, node, clock])


def submit_signing_bytes(task_id: str, task_type: str, input: bytes, deadline: int,
                         max_attempts: int, by: str, at: int) -> bytes:
    """The bytes the submitting member ``by`` signs for a ``task.submit``."""
    return encode([SUBMIT_DOMAIN, task_id, task_type, hashlib.sha256(input).digest(),
                   deadline, max_attempts, by, at])


def submit_op(task_id: str, task_type: str, input: bytes, *, deadline_ticks: int,
              max_attempts: int, by: str, at: int, sig: bytes) -> bytes:
    """A ``task.submit`` operation (``deadline_ticks`` per attempt, in mesh-clock ticks)
    carrying the submitter's signature ``sig``."""
    return encode({"t": "task.submit", "id": task_id, "type": task_type, "input": input,
                   "deadline": deadline_ticks, "max_attempts": max_attempts, "by": by,
                   "at": at, "sig": sig})


def sign_submit(signer: Any, task_id: str, task_type: str, input: bytes = b"", *, by: str,
                at: int, deadline_ticks: int = 30, max_attempts: int = 5) -> bytes:
    """``submit_op`` signed with ``signer`` (the member ``by``'s key)."""
    sig = signer.sign(submit_signing_bytes(task_id, task_type, input, deadline_ticks,
                                           max_attempts, by, at))
    return submit_op(task_id, task_type, input, deadline_ticks=deadline_ticks,
                     max_attempts=max_attempts, by=by, at=at, sig=sig)


def result_op(task_id: str, attempt: int, node: str, sig: bytes, *, output: bytes = b"",
              ok: bool = True, retry: bool = False, error: str = "") -> bytes:
    """A ``task.result`` operation carrying the signature ``sig``."""
    return encode({"t": "task.result", "id": task_id, "attempt": attempt, "node": node,
                   "ok": ok, "retry": retry, "output": output, "error": error, "sig": sig})


def sign_result(signer: Any, task_id: str, attempt: int, node: str, *, output: bytes = b"",
                ok: bool = True, retry: bool = False, error: str = "") -> bytes:
    """``result_op`` signed with ``signer`` (an :class:`identity.signer.Signer`)."""
    sig = signer.sign(result_signing_bytes(task_id, attempt, node, ok, retry, output, error))
    return result_op(task_id, attempt, node, sig, output=output, ok=ok, retry=retry,
                     error=error)


def tick_op(node: str, clock: int, sig: bytes) -> bytes:
    return encode({"t": "task.tick", "node": node, "clock": clock, "sig": sig})


def sign_tick(signer: Any, node: str, clock: int) -> bytes:
    """A ``task.tick`` for ``clock`` signed with ``signer``."""
    return tick_op(node, clock, signer.sign(tick_signing_bytes(node, clock)))


def decode_result(result: bytes) -> dict[str, Any]:
    """The map inside an operation's result bytes (``ok`` plus fields or ``reason``)."""
    value = decode(result)
    if not isinstance(value, dict) or "ok" not in value:
        raise DecodeError("not a mesh task result")
    return value


def op_tag(op: bytes) -> str | None:
    """The ``"t"`` tag of an operation, or None when it is not a tagged canonical map."""
    if not isinstance(op, (bytes, bytearray)) or not op or op[0] & 0xF0 != 0x80 \
            and op[0] not in (0xDE, 0xDF):
        return None
    try:
        value = decode(bytes(op))
    except DecodeError:
        return None
    tag = value.get("t") if isinstance(value, dict) else None
    return tag if isinstance(tag, str) else None


_INT, _STR, _BYTES, _BOOL = "int", "str", "bytes", "bool"
_FIELDS = {
    "task.submit": {"id": _STR, "type": _STR, "input": _BYTES, "deadline": _INT,
                    "max_attempts": _INT, "by": _STR, "at": _INT, "sig": _BYTES},
    "task.result": {"id": _STR, "attempt": _INT, "node": _STR, "ok": _BOOL, "retry": _BOOL,
                    "output": _BYTES, "error": _STR, "sig": _BYTES},
    "task.tick": {"node": _STR, "clock": _INT, "sig": _BYTES},
}
_PY = {_INT: int, _STR: str, _BYTES: bytes, _BOOL: bool}
_LIMITS = {"id": MAX_ID, "type": MAX_ID, "by": MAX_ID, "node": MAX_ID, "error": 1024,
           "input": MAX_INPUT_BYTES, "output": MAX_OUTPUT_BYTES}


def parse_op(op: bytes) -> tuple[str, dict[str, Any]] | str:
    """``(tag, fields)`` of a well-formed task operation, or the reason it is not one."""
    try:
        value = decode(bytes(op))
    except (DecodeError, TypeError) as exc:
        return f"malformed operation: {exc}"
    if not isinstance(value, dict) or value.get("t") not in _FIELDS:
        return "malformed operation: unknown task operation"
    tag = value.pop("t")
    spec = _FIELDS[tag]
    if set(value) != set(spec):
        return f"malformed {tag}: fields must be {', '.join(sorted(spec))}"
    for name, typ in spec.items():
        v = value[name]
        if type(v) is not _PY[typ]:
            return f"malformed {tag}: {name} must be {typ}"
        if typ in (_STR, _BYTES) and len(v) > _LIMITS.get(name, 64):
            return f"malformed {tag}: {name} too long"
        if typ == _INT and not 0 <= v < 2**62:
            return f"malformed {tag}: {name} out of range"
    if tag == "task.submit":
        if not value["id"] or not value["type"]:
            return "malformed task.submit: empty id or type"
        if not 1 <= value["deadline"] <= MAX_DEADLINE_TICKS:
            return f"malformed task.submit: deadline must be 1..{MAX_DEADLINE_TICKS} ticks"
        if not 1 <= value["max_attempts"] <= MAX_ATTEMPTS:
            return f"malformed task.submit: max_attempts must be 1..{MAX_ATTEMPTS}"
    return tag, value
