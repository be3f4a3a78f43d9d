"""The ``fedsynth`` command line: the top layer of the project.

Each part contributes its commands through the ``fedsynth.commands`` entry-point group
(pyproject.toml): the library's own (:mod:`fedsynth.cli.commands`: ``meta``, ``ca``,
``audit``, ``version``, ...), the coordinator's (:mod:`coordinator.commands`) and the site
agent's (:mod:`site_agent.commands`). Every module of a contributed package exposes
``COMMANDS``, a list of :class:`~fedsynth.cli.registry.Command`. The library therefore
never imports a role (tests/unit/test_layering.py checks it). A line that starts with one
of the library's own command words is parsed by that command alone
(:data:`LIBRARY_COMMANDS`), without importing the other commands or scanning the entry
points: start-up is most of a small command's time (docs/decisions/startup.md).

Errors fedsynth raises on purpose (:class:`fedsynth.errors.FedsynthError`) are printed as
one line on stderr, never as a traceback, and map to exit codes: 2 for bad input, 1
otherwise. Nothing that looks like a result is printed to stdout when a command fails.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from fedsynth import __version__
from fedsynth.cli import commands as library_commands
from fedsynth.cli.registry import GROUP_HELP, Command
from fedsynth.errors import FedsynthError
from fedsynth.terminal import printable

#: The entry-point group through which packages contribute command modules.
ENTRY_POINT_GROUP = "fedsynth.commands"

#: The library's own commands by first word: the modules of :mod:`fedsynth.cli.commands`
#: that declare every command starting with that word. :func:`main` builds only these
#: modules' parsers when the command line starts with such a word, instead of importing
#: every command module of every installed part and scanning the entry points (about a
#: fifth of ``fedsynth meta --example``'s CPU; docs/decisions/startup.md). Words that a
#: role shares (``model``) or owns are not here: they take :func:`discover_commands`.
#: tests/unit/test_cli_fastpath.py checks that this table equals what discovery finds.
LIBRARY_COMMANDS: dict[str, tuple[str, ...]] = {
    "audit": ("audit",),
    "ca": ("ca", "ca_revoke"),
    "demo-data": ("demo_data",),
    "health": ("health",),
    "init": ("init",),
    "meta": ("meta",),
    "valmeta": ("valmeta",),
    "version": ("version",),
}


def commands_of_package(package: ModuleType) -> list[Command]:
    """Import every module of ``package`` and collect its ``COMMANDS``."""
    found: list[Command] = []
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        found.extend(getattr(module, "COMMANDS", []))
    return found


def discover_commands() -> list[Command]:
    """Collect the commands of every package registered under ``fedsynth.commands``.

    The library's own commands are always present; the roles' commands appear once the
    distribution is installed (``pip install -e .`` writes the entry points).
    """
    # lazy: importlib.metadata (about 30 ms) only when every command is needed, never on
    # the path of a library command named first (LIBRARY_COMMANDS)
    from importlib.metadata import entry_points

    packages: dict[str, ModuleType] = {library_commands.__name__: library_commands}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        package = entry_point.load()
        packages.setdefault(package.__name__, package)
    found: list[Command] = []
    for name in sorted(packages):
        found.extend(commands_of_package(packages[name]))
    paths = [command.path for command in found]
    duplicated = sorted({" ".join(path) for path in paths if paths.count(path) > 1})
    if duplicated:
        raise RuntimeError(f"commands registered twice: {', '.join(duplicated)}")
    return found


def library_commands_for(argv: Sequence[str]) -> list[Command] | None:
    """The commands a command line needs when it names a library command first.

    Returns the ``COMMANDS`` of the modules :data:`LIBRARY_COMMANDS` lists for
    ``argv[0]``, or ``None`` when the line starts with an option or a word that is not
    there (the whole tree is then built by :func:`discover_commands`). Parsing with
    this subset gives the same namespace, help and errors as the whole tree for such a
    line: argparse consults only the chosen subcommand's parser after its name.
    """
    if not argv or argv[0] not in LIBRARY_COMMANDS:
        return None
    found: list[Command] = []
    for name in LIBRARY_COMMANDS[argv[0]]:
        module = importlib.import_module(f"{library_commands.__name__}.{name}")
        found.extend(getattr(module, "COMMANDS", []))
    return found


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """Build the root parser with a nested subparser per command path."""
    parser = argparse.ArgumentParser(
        prog="fedsynth",
        description="Federated multisite evidence synthesis.",
    )
    parser.add_argument("--version", action="version", version=f"fedsynth {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log lines as text or one JSON object per line")
    root_sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    root_sub.required = True
    # (path prefix) -> subparsers action of that group
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): root_sub}
    for command in sorted(commands if commands is not None else discover_commands(),
                          key=lambda c: c.path):
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=GROUP_HELP.get(prefix, f"{' '.join(prefix)} commands"))
                sub = group_parser.add_subparsers(dest=f"command_{depth}", metavar="COMMAND")
                sub.required = True
                groups[prefix] = sub
        leaf = groups[command.path[:-1]].add_parser(
            command.path[-1], help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(leaf)
        leaf.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedsynth`` console script."""
    line = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(library_commands_for(line))
    args = parser.parse_args(line)
    try:
        if args.log_format:
            # lazy: fedsynth.logs is not loaded by `fedsynth --help` (start-up)
            from fedsynth.logs import configure_logging

            configure_logging(args.log_format)
        return int(args._run(args) or 0)
    except FedsynthError as error:
        # Messages may quote remote text (a spec, a site's answer): never print it raw.
        print(f"fedsynth: error: {printable(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fedsynth: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
