"""Time in fedsynth: the clock, the one timestamp form, and the one duration grammar.

Why one module
--------------
Every part of a federation writes times that another part reads back or compares: the
coordinator's store compares deadlines as text, the round document shows when a round
opened and closed, the schedule table claims cron slots by compare-and-set on their text,
audit logs and the site's state files are read by people. Three copies of "now", two
timestamp forms (milliseconds in the store, microseconds in the schedule table and the audit
logs) and two duration grammars (``"1h30m"`` in ``[[schedule]]`` but not in ``[pooling]``)
made those places subtly disagree; this module is the single definition.

Timestamps
    One ISO-8601 form, always UTC, always with milliseconds and a ``Z``:
    ``2026-11-25T14:00:00.000Z`` (:func:`iso`). Fixed width, so the text sorts in time
    order on every database (SQLite has no timezone-aware type), and readable by
    :meth:`datetime.datetime.fromisoformat` in Python 3.11 and by every ISO-8601 parser.
    :func:`parse_iso` reads this form and any other ISO-8601 text with an offset (older
    files written with ``+00:00`` or microseconds stay readable).

Durations
    The grammar of every duration in a configuration file or on the command line
    (``deadline``, ``--deadline``, ``poll_interval``, ``submission_window``, ...):

    * a number of seconds: ``30``, ``2.5`` (TOML number or text);
    * one or more ``NUMBER UNIT`` terms, units ``d`` (day), ``h``, ``m`` (minute), ``s``
      and ``ms``, case-insensitive, optionally separated by spaces: ``10m``, ``2h``,
      ``1.5h``, ``500ms``, ``1h30m``, ``1d 12h``;
    * the total must be positive.

Examples
--------
>>> import datetime as dt
>>> iso(dt.datetime(2026, 11, 25, 14, 0, 5, 123456, tzinfo=dt.timezone.utc))
'2026-11-25T14:00:05.123Z'
>>> parse_iso("2026-11-25T14:00:05.123Z")
datetime.datetime(2026, 11, 25, 14, 0, 5, 123000, tzinfo=datetime.timezone.utc)
>>> parse_duration("1h30m")
datetime.timedelta(seconds=5400)
>>> parse_duration("500ms").total_seconds()
0.5
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, overload

from fedsynth.errors import ConfigError, InputError

__all__ = ["utcnow", "iso", "parse_iso", "parse_duration", "DURATION_UNITS"]

#: Seconds per unit of the duration grammar.
DURATION_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0,
                                     "ms": 0.001}

# "ms" before "m" and "s": alternation is tried left to right.
_TERM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)", re.IGNORECASE)
_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*")
_EXAMPLES = "e.g. '30s', '10m', '2h', '1h30m', '500ms' or a number of seconds"


def utcnow() -> _dt.datetime:
    """The current time, timezone-aware UTC (the clock every part of fedsynth uses)."""
    return _dt.datetime.now(_dt.UTC)


@overload
def iso(when: _dt.datetime) -> str: ...


@overload
def iso(when: None) -> None: ...


def iso(when: _dt.datetime | None) -> str | None:
    """The one timestamp form: ISO-8601 UTC with milliseconds and ``Z``; None stays None.

    Parameters
    ----------
    when
        A timezone-aware datetime (converted to UTC), or None.

    Raises
    ------
    fedsynth.errors.InputError
        When ``when`` is naive: a time without a zone cannot be written as UTC honestly.
    """
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        raise InputError(f"time = {when!r}: must be timezone-aware (UTC)")
    when = when.astimezone(_dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@overload
def parse_iso(text: str, field: str = ...) -> _dt.datetime: ...


@overload
def parse_iso(text: None, field: str = ...) -> None: ...


def parse_iso(text: str | None, field: str = "time") -> _dt.datetime | None:
    """Read an ISO-8601 timestamp with a zone (``Z`` or an offset) as a UTC datetime.

    Parameters
    ----------
    text
        The timestamp text (any ISO-8601 form with a zone), or None.
    field
        The name used in the error message.

    Raises
    ------
    fedsynth.errors.InputError
        Naming ``field`` and the value, when the text is not a timestamp or has no zone.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(f"{field} = {text!r}: expected an ISO-8601 timestamp text "
                         "such as '2026-11-25T14:00:00.000Z'")
    try:
        when = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00")
                                          .replace("z", "+00:00"))
    except ValueError:
        raise InputError(f"{field} = {text!r}: not an ISO-8601 timestamp such as "
                         "'2026-11-25T14:00:00.000Z'") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise InputError(f"{field} = {text!r}: the timestamp has no zone (write 'Z' for UTC)")
    return when.astimezone(_dt.UTC)


def parse_duration(value: Any, key: str = "duration") -> _dt.timedelta:
    """Read a duration in the grammar of the module docstring.

    Parameters
    ----------
    value
        A number of seconds (int or float, not bool) or a text such as ``"10m"``,
        ``"1h30m"``, ``"500ms"``, ``"45"``.
    key
        The configuration key or command-line option the value came from, for the error.

    Returns
    -------
    datetime.timedelta
        The positive duration.

    Raises
    ------
    fedsynth.errors.ConfigError
        Naming ``key`` and the value, when it is not a positive duration.

    Examples
    --------
    >>> parse_duration("2h").total_seconds(), parse_duration(45).total_seconds()
    (7200.0, 45.0)
    >>> parse_duration("10 minutes", "deadline")
    Traceback (most recent call last):
    ...
    fedsynth.errors.ConfigError: deadline = '10 minutes' is not a duration (e.g. '30s', \
'10m', '2h', '1h30m', '500ms' or a number of seconds)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} is not a duration ({_EXAMPLES})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, key)
    else:
        raise ConfigError(f"{key} = {value!r} is not a duration ({_EXAMPLES})")
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{key} = {value!r} must be a positive, finite duration")
    return _dt.timedelta(seconds=seconds)


def _parse_text(text: str, key: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)
    seconds, pos = 0.0, 0
    for match in _TERM.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ConfigError(f"{key} = {text!r} is not a duration ({_EXAMPLES})")
    return seconds
