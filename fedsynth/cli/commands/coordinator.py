"""``fedsynth coordinator serve --config coordinator.toml``."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def setup_logging(verbose: bool = False) -> None:
    """Timestamped log lines on stderr (what operators and systemd/journald read)."""
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.WARNING)


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")
    parser.add_argument("--insecure", action="store_true",
                        help="NO TLS: plain-text transport for local experiments only")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from fedsynth.config import load_coordinator_config
    from coordinator.server import serve

    config = load_coordinator_config(args.config, insecure=args.insecure)
    setup_logging(args.verbose)
    asyncio.run(serve(config))
    return 0


COMMANDS = [Command(("coordinator", "serve"), "run the coordinator (gRPC over mutual TLS)",
                    _args, _run)]
