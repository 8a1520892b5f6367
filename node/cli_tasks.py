"""`meshnode task submit|list|show|cancel` commands (talk to the running node).

Registered on the main parser by :func:`register`; each command is ``cmd_*(args) ->
int``. The node serves them through :func:`node.tasks.control.task_handlers`.
Task input is JSON text on the command line, handed to the handler as its UTF-8 bytes;
output is printed as text when it is UTF-8, else as hex.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

__all__ = ["parse_duration", "register"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"30s"``, ``"500ms"``, ``"5m"``, ``"1h"`` or ``"12.5"`` (seconds).
    Raises argparse.ArgumentTypeError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 30s, 5m)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _json_input(text: str) -> bytes:
    try:
        json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--input is not valid JSON: {exc}") from None
    return text.encode("utf-8")


def _control(args: argparse.Namespace, method: str, params: dict, **kw) -> Any:
    from node.cli_node import _control as call

    return call(args, method, params, **kw)


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "hex:" + value.hex()
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _show(row: dict, as_json: bool) -> None:
    row = _printable(row)
    if as_json:
        print(json.dumps(row, indent=2, sort_keys=True))
        return
    for key in ("id", "type", "state", "attempt", "max_attempts", "priority", "assignee",
                "reason", "output", "accepted", "rejected", "history"):
        if key in row and row[key] not in (None, "", []):
            print(f"{key:>14}: {row[key]}")


def cmd_task_submit(args: argparse.Namespace) -> int:
    params = {"type": args.type, "input": args.input,
              "deadline_ms": int(args.deadline * 1000), "mesh": args.mesh,
              "wait": args.wait, "priority": args.priority}
    if args.max_attempts is not None:
        params["max_attempts"] = args.max_attempts
    if args.idempotency_key is not None:
        if args.mesh:
            from node.cli import _fail

            _fail("--idempotency-key is for local tasks (mesh task ids are unique already)")
        params["idempotency_key"] = args.idempotency_key
    timeout = args.deadline * 4 + 30 if args.wait else 30.0
    row = _control(args, "task.submit", params, timeout_s=timeout)
    if args.json or args.wait:
        _show(row, args.json)
    else:
        print(row["id"])
    return 0 if not args.wait or row.get("state") in ("succeeded", "done") else 1


def cmd_task_list(args: argparse.Namespace) -> int:
    rows = _control(args, "task.list", {"state": args.state, "limit": args.limit,
                                        "mesh": args.mesh})
    if args.json:
        print(json.dumps(_printable(rows), indent=2, sort_keys=True))
        return 0
    for r in rows:
        where = (r.get("assignee") or "") if args.mesh else f"attempt {r['attempt']}"
        print(f"{r['id']}  {r['state']:<10}  {r['type']:<20}  {where}")
    return 0


def cmd_task_show(args: argparse.Namespace) -> int:
    _show(_control(args, "task.show", {"id": args.id}), args.json)
    return 0


def cmd_task_cancel(args: argparse.Namespace) -> int:
    _show(_control(args, "task.cancel", {"id": args.id}), args.json)
    return 0


def register(sub: argparse._SubParsersAction, add_home) -> None:
    """Add ``task submit|list|show|cancel`` to the main parser's sub-commands."""
    task = sub.add_parser("task", help="submit and inspect tasks (local or on the mesh)")
    tsub = task.add_subparsers(dest="task_cmd", required=True, metavar="COMMAND")

    p = tsub.add_parser("submit", help="queue a task and print its id")
    add_home(p)
    p.add_argument("type", metavar="TYPE", help="task type (a registered handler)")
    p.add_argument("--input", type=_json_input, default=b"null", metavar="JSON",
                   help="task input as JSON (default: null)")
    p.add_argument("--mesh", action="store_true",
                   help="run it on the mesh (assigned by consensus) instead of locally")
    p.add_argument("--deadline", type=parse_duration, default=30.0, metavar="DURATION",
                   help="deadline from submission, e.g. 30s, 5m (default 30s; on the mesh: "
                        "per attempt)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (local)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N")
    p.add_argument("--idempotency-key", default=None, metavar="KEY",
                   help="a second submit with the same key returns the first task")
    p.add_argument("--wait", action="store_true", help="wait for the task to finish")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_task_submit)

    p = tsub.add_parser("list", help="recent tasks, newest first")
    add_home(p)
    p.add_argument("--state", default=None, metavar="STATE",
                   help="only tasks in STATE (queued, running, succeeded, failed, "
                        "cancelled, timed_out; mesh: assigned, done, failed, expired)")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--mesh", action="store_true", help="list mesh tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_task_list)

    for name, func, helptext in [("show", cmd_task_show, "one task: state, output, history"),
                                 ("cancel", cmd_task_cancel, "cancel a queued or running task")]:
        p = tsub.add_parser(name, help=helptext)
        add_home(p)
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

