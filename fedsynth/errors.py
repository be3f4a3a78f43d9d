"""Exceptions shared by every part of fedsynth.

The command line maps them to exit codes: :class:`InputError` (bad user input, a bad
option, a malformed file) exits with 2, any other :class:`FedsynthError` with 1. Messages
always name the offending field and value, so the user can fix the input without reading
a traceback.
"""

from __future__ import annotations


class FedsynthError(Exception):
    """Base class of every error fedsynth raises on purpose."""

    exit_code: int = 1


class InputError(FedsynthError, ValueError):
    """Invalid user input: a file, a column, a cell, an option or a configuration value.

    The message names the field (column, row, key) and the offending value.
    """

    exit_code = 2


class ConfigError(InputError):
    """Invalid configuration file (TOML) or analysis spec."""
