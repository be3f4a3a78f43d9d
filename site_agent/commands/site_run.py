"""``fedsynth site run --config site.toml [--once]``."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="site.toml")
    parser.add_argument("--once", action="store_true",
                        help="exit after answering one round")
    parser.add_argument("--insecure", action="store_true",
                        help="NO TLS: plain-text transport for local experiments only")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _run(args: argparse.Namespace) -> int:
    # lazy: asyncio is not loaded by `fedsynth --help` (start-up)
    import asyncio

    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_site_config

    # lazy: fedsynth.logs is not loaded by `fedsynth --help` (start-up)
    from fedsynth.logs import setup_logging

    # lazy: keeps grpc and cryptography out of `fedsynth --help` start-up
    from site_agent.agent import run_agent

    config = load_site_config(args.config, insecure=args.insecure)
    setup_logging(args.verbose)
    return asyncio.run(run_agent(config, once=args.once))


COMMANDS = [Command(("site", "run"), "run the site agent: answer rounds of the coordinator",
                    _args, _run)]
