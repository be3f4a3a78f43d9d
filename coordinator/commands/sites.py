"""``fedsynth sites --config coordinator.toml``: the site registry."""

from __future__ import annotations

import argparse
import json

from fedsynth.cli.registry import Command
from fedsynth.terminal import printable


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _run(args: argparse.Namespace) -> int:
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config
    from fedsynth.timeutil import utcnow

    config = load_coordinator_config(args.config, insecure=True)
    with Store(config.state) as store:
        known = {s.name: s for s in store.list_sites()}
    now = utcnow()
    rows = []
    for name in sorted(set(config.allow) | set(known)):
        record = known.get(name)
        rows.append({
            "site": name, "allowed": name in config.allow,
            "status": record.status(now, config.online_within) if record else "never seen",
            "last_heartbeat": record.last_heartbeat if record else None,
            "agent_version": record.agent_version if record else None,
            "registered_at": record.registered_at if record else None})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'site':<20} {'allowed':<7} {'status':<10} {'agent':<8} last_heartbeat")
    for r in rows:
        # The site name and agent version came from the site: shown escaped, never raw.
        print(f"{printable(r['site']):<20} {'yes' if r['allowed'] else 'NO':<7} "
              f"{r['status']:<10} {printable(r['agent_version'] or '-'):<8} "
              f"{printable(r['last_heartbeat'] or '-')}")
    return 0


COMMANDS = [Command(("sites",), "the coordinator's site registry (status, last heartbeat)",
                    _args, _run)]
