"""Program-wide logging: set up once, human-readable by default, JSON lines on request.

``configure()`` is called once by each console script (``meshnode``, ``sim``) before any
work. Human output goes to stderr through rich (time, level, logger, message); with
``json_lines=True`` every record is one JSON object per line on stderr with the keys
``ts`` (Unix seconds, float), ``level``, ``logger``, ``msg`` and any ``extra`` fields,
so a log shipper can parse it.

py-libp2p configures its own ``libp2p`` logger when it is first imported (level WARNING,
handlers cleared, ``propagate=False``: its records would reach only Python's
last-resort handler, unformatted). :func:`adopt_libp2p_logger` undoes that so libp2p's
records flow through our handler at the level the operator chose. Call it right after
the first ``import libp2p`` (``configure`` calls it too when libp2p is already loaded).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["adopt_libp2p_logger", "configure", "parse_level"]

_STATE: dict[str, Any] = {"configured": False, "libp2p_level": logging.WARNING}

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=True)


def parse_level(name: str | int) -> int:
    """``"debug"|"info"|"warning"|"error"`` (any case) or an int -> logging level.

    Raises ValueError with a one-line message for anything else.
    """
    if isinstance(name, int):
        return name
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {name!r}: use debug, info, warning or error")
    return level


def configure(
    level: str | int = "info",
    *,
    json_lines: bool = False,
    libp2p_level: str | int = "warning",
    stream: Any = None,
) -> None:
    """Install the program's one log handler on the root logger (idempotent: a second
    call replaces the handler). ``stream`` defaults to ``sys.stderr``.
    """
    stream = stream or sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_meshnode", False):
            root.removeHandler(handler)
    if json_lines:
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonLinesFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=stream, stderr=stream is sys.stderr, emoji=False),
            show_path=False,
            rich_tracebacks=False,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._meshnode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    _STATE["configured"] = True
    _STATE["libp2p_level"] = parse_level(libp2p_level)
    if "libp2p" in sys.modules:
        adopt_libp2p_logger()


def adopt_libp2p_logger() -> None:
    """Route the ``libp2p`` logger into our handler at the configured libp2p level.

    Safe to call many times; a no-op until :func:`configure` has run.
    """
    if not _STATE["configured"]:
        return
    lg = logging.getLogger("libp2p")
    lg.handlers.clear()
    lg.propagate = True
    lg.setLevel(_STATE["libp2p_level"])
    # Some libp2p modules pin their own level (auto_connector sets INFO at import):
    # make every child inherit the level chosen for libp2p as a whole.
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)
