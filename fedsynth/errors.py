"""Exceptions shared by every part of fedsynth.

The command line maps them to exit codes: :class:`InputError` (bad user input, a bad
option, a malformed file) exits with 2, any other :class:`FedsynthError` with 1. Messages
always name the offending field and value, so the user can fix the input without reading
a traceback.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

__all__ = ["FedsynthError", "InputError", "ConfigError", "show_value"]

#: numpy 2 scalar reprs (``np.float64(-1.0)``, ``np.int64(3)``, ``np.str_('a')``,
#: ``np.True_``) as they appear when a message was built with ``{value!r}``.
_NUMPY_REPR = re.compile(r"np\.(?:float|int|uint|complex)\d*\(([^()]*)\)"
                         r"|np\.str_\(('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\)"
                         r"|np\.(True|False)_")


def show_value(value: Any) -> str:
    """A value as an error message shows it: numbers plain, text quoted.

    The one helper for numbers in messages. ``repr`` of a numpy scalar is
    ``np.float64(-1.0)`` under numpy 2, which tells a user nothing about their input;
    this gives ``-1.0`` for any real number (numpy or Python), ``3`` for a whole number
    type, ``nan``/``inf`` for non-finite ones, ``True``/``False`` for booleans and
    ``'text'`` (quoted, as ``repr``) for strings, so an empty or padded cell stays
    visible.

    Examples
    --------
    >>> import numpy as np
    >>> show_value(np.float64(-1.0)), show_value(np.int64(3)), show_value("a b")
    ('-1.0', '3', "'a b'")
    """
    # numpy's bool is not a numbers.Integral; recognised by name so that this module (on
    # every command's import path) does not import numpy
    if isinstance(value, bool) or (type(value).__module__ == "numpy"
                                   and type(value).__name__ in ("bool_", "bool")):
        return repr(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        return repr(x) if math.isfinite(x) else str(x)
    if isinstance(value, str):
        return repr(str(value))
    return _plain_numpy(repr(value))


def _plain_numpy(text: str) -> str:
    """``text`` with numpy scalar reprs replaced by plain numbers (and plain quoted text)."""
    def plain(match: re.Match[str]) -> str:
        return next(g for g in match.groups() if g is not None)

    return _NUMPY_REPR.sub(plain, text)


class FedsynthError(Exception):
    """Base class of every error fedsynth raises on purpose.

    The message is normalised once, here: a numpy scalar formatted with ``!r`` somewhere
    (``np.float64(-1.0)``) is shown as the plain number (``-1.0``), so no message of any
    part of fedsynth shows numpy's spelling. New code formats values with
    :func:`show_value`; this is the net under the places that do not.
    """

    exit_code: int = 1

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (_plain_numpy(args[0]), *args[1:])
        super().__init__(*args)


class InputError(FedsynthError, ValueError):
    """Invalid user input: a file, a column, a cell, an option or a configuration value.

    The message names the field (column, row, key) and the offending value.
    """

    exit_code = 2


class ConfigError(InputError):
    """Invalid configuration file (TOML) or analysis spec."""
