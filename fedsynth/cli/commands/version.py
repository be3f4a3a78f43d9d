"""``fedsynth version``: package and wire-protocol versions."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _run(args: argparse.Namespace) -> int:
    from fedsynth import PROTOCOL_VERSION, __version__

    print(f"fedsynth {__version__} (protocol {PROTOCOL_VERSION})")
    return 0


COMMANDS = [Command(("version",), "print the package and protocol versions",
                    lambda parser: None, _run)]
