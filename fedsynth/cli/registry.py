"""How command modules declare their subcommands.

Every module in :mod:`fedsynth.cli.commands` exposes ``COMMANDS``, a list of
:class:`Command`. The root parser (:func:`fedsynth.cli.build_parser`) discovers them, so a new
part of the project adds a command by adding a module, never by editing a shared file.
Command modules import only :mod:`argparse` at top level and import heavy dependencies
inside ``run`` so that ``fedsynth --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One leaf of the command tree.

    Parameters
    ----------
    path
        Words that select the command, e.g. ``("site", "estimate")`` for
        ``fedsynth site estimate``.
    help
        One line shown in ``fedsynth --help``.
    add_arguments
        Adds the command's options to its parser.
    run
        Executes the parsed command and returns the process exit code.
    description
        Longer text for ``fedsynth PATH --help`` (defaults to ``help``).
    """

    path: tuple[str, ...]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


#: One-line help of command groups (the inner nodes of the tree).
GROUP_HELP: dict[tuple[str, ...], str] = {
    ("site",): "site-agent commands: estimate, run, approve, pending",
    ("ca",): "project certificate authority: init, issue, revoke",
    ("coordinator",): "coordinator commands: serve",
    ("round",): "federated rounds: start, show, wait, list",
    ("audit",): "hash-chained audit logs: verify, show",
    ("report",): "round reports: round, trend",
    ("model",): "regression models across sites: fit, export",
    ("init",): "write a commented, working coordinator.toml or site.toml",
}
