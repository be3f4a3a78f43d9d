"""Logging set-up shared by the coordinator and the site agent: text or JSON lines.

Why
---
In production the logs are read by machines (journald, Loki, Elasticsearch, Cloud
Logging) before people read them; one JSON object per line with stable keys (``ts``,
``level``, ``logger``, ``message`` and any ``extra=`` fields) can be filtered by site or
round without regular expressions. Text stays the default for people at a terminal.
``fedsynth --log-format json COMMAND`` selects JSON (owned by the deployment helper).

Log lines carry text that came from the other side (a coordinator's rejection reason, a
site's name or refusal, a spec's column names). Both formatters render control characters
visibly (:func:`fedsynth.terminal.printable`): a message cannot forge a second log line
with an embedded newline, nor rewrite or hide what an operator sees with terminal escape
sequences (``tests/unit/test_terminal_safety.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from fedsynth.errors import InputError
from fedsynth.terminal import json_safe, printable

LOG_FORMATS = ("text", "json")

# attributes every LogRecord has; anything else came from ``extra=`` and is emitted
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format log records as JSON lines.

    One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``exc`` (traceback text, if any) and the record's ``extra`` fields.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object on one line (what log collectors parse)."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
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
        # JSON escapes C0 controls itself; json_safe escapes the rest (C1, bidi overrides)
        return json_safe(json.dumps(doc, default=str, ensure_ascii=False))


#: The text log line (people at a terminal, journald).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeTextFormatter(logging.Formatter):
    r"""The text log line with every control character of the message shown escaped.

    The message is one line whatever it holds (``\n`` is shown as ``\n``); a traceback
    keeps its line breaks but no other control character.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as text with control characters escaped, so a log line cannot be forged."""
        # Another handler may have cached the raw traceback on the record (exc_text):
        # format it again through formatException, and leave the cache as it was.
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None
        elif cached:                    # a traceback without exc_info (a relayed record)
            record.exc_text = printable(cached, keep_newlines=True)
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        """The message with control characters escaped."""
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging API
        """The traceback with control characters escaped (newlines kept)."""
        return printable(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging API
        """The stack with control characters escaped (newlines kept)."""
        return printable(super().formatStack(stack_info), keep_newlines=True)


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
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeTextFormatter(TEXT_FORMAT))
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
    handler = logging.StreamHandler()
    handler.setFormatter(SafeTextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("grpc").setLevel(logging.WARNING)
