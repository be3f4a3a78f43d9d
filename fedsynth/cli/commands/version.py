"""``fedsynth version``: package and wire-protocol versions (and what they run on).

Operators paste this into support requests and compare it across sites before an
upgrade: a site and the coordinator must speak the same protocol version.
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.cli.registry import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (one line, default) or JSON with library versions")


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "format", "text") == "json":
        # lazy: platform is not loaded by `fedsynth --help` (start-up)
        import platform

        libraries: dict[str, str | None] = {}
        for name in ("grpcio", "protobuf", "cryptography", "sqlalchemy", "psycopg",
                     "numpy", "scipy"):
            try:
                libraries[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                libraries[name] = None
        print(json.dumps({"package": __version__, "protocol": PROTOCOL_VERSION,
                          "python": platform.python_version(), "libraries": libraries},
                         indent=2))
        return 0
    print(f"fedsynth {__version__} (protocol {PROTOCOL_VERSION})")
    return 0


COMMANDS = [Command(("version",), "print the package and protocol versions",
                    _add_arguments, _run)]
