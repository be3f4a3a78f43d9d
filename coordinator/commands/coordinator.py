"""``fedsynth coordinator serve --config coordinator.toml``."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")
    parser.add_argument("--insecure", action="store_true",
                        help="NO TLS: plain-text transport for local experiments only")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _run(args: argparse.Namespace) -> int:
    # lazy: asyncio is not loaded by `fedsynth --help` (start-up)
    import asyncio

    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.server import serve

    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config

    # lazy: fedsynth.logs is not loaded by `fedsynth --help` (start-up)
    from fedsynth.logs import setup_logging

    config = load_coordinator_config(args.config, insecure=args.insecure)
    setup_logging(args.verbose)
    asyncio.run(serve(config))
    return 0


COMMANDS = [Command(("coordinator", "serve"), "run the coordinator (gRPC over mutual TLS)",
                    _args, _run)]
