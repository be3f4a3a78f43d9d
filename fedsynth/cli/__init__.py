"""The ``fedsynth`` command line.

The tree of subcommands is assembled from :mod:`fedsynth.cli.commands` (see
:mod:`fedsynth.cli.registry`). Errors fedsynth raises on purpose
(:class:`fedsynth.errors.FedsynthError`) are printed as one line on stderr, never as a
traceback, and map to exit codes: 2 for bad input, 1 otherwise. Nothing that looks like a
result is printed to stdout when a command fails.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from fedsynth import __version__
from fedsynth.cli.registry import GROUP_HELP, Command
from fedsynth.errors import FedsynthError


def discover_commands() -> list[Command]:
    """Import every module of :mod:`fedsynth.cli.commands` and collect its ``COMMANDS``."""
    from fedsynth.cli import commands as package

    found: list[Command] = []
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.log_format:
            from fedsynth.logs import configure_logging

            configure_logging(args.log_format)
        return int(args._run(args) or 0)
    except FedsynthError as error:
        print(f"fedsynth: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fedsynth: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
