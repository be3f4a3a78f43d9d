"""Logging set-up shared by the coordinator and the site agent: text or JSON lines.

Why
---
In production the logs are read by machines (journald, Loki, Elasticsearch, Cloud
Logging) before people read them; one JSON object per line with stable keys (``ts``,
``level``, ``logger``, ``message`` and any ``extra=`` fields) can be filtered by site or
round without regular expressions. Text stays the default for people at a terminal.
``fedsynth --log-format json COMMAND`` selects JSON (owned by the deployment helper).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from fedsynth.errors import InputError

LOG_FORMATS = ("text", "json")

# attributes every LogRecord has; anything else came from ``extra=`` and is emitted
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``exc`` (traceback text, if any) and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: int | str = logging.INFO,
                      stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as ``text`` or ``json``.

    Replaces handlers a previous call installed, so calling it twice does not duplicate
    lines. Returns the handler.
    """
    if fmt not in LOG_FORMATS:
        raise InputError(f"--log-format = {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name("fedsynth")
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "fedsynth"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def setup_logging(verbose: bool = False) -> None:
    """Timestamped log lines on stderr (what operators and systemd/journald read).

    Used by the long-running roles (``coordinator serve``, ``site run``); a handler that
    ``--log-format`` installed earlier is kept (``basicConfig`` does nothing then).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.WARNING)
