"""``fedsynth site pending`` / ``fedsynth site approve ROUND``: operator approval of specs.

The spec came from the coordinator: every string of it is printed through
:func:`fedsynth.terminal.printable`, so an escape sequence cannot hide or rewrite an
analysis on the operator's screen before the operator approves the whole spec.
"""

from __future__ import annotations

import argparse
import json
import shlex

from fedsynth.cli.registry import Command
from fedsynth.terminal import printable


def _add_pending(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="SITE_TOML",
                        help="the site's site.toml (its policy file names the approvals folder)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _add_approve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("round", metavar="ROUND", help="id of the round whose spec to approve")
    parser.add_argument("--config", required=True, metavar="SITE_TOML",
                        help="the site's site.toml")
    parser.add_argument("--by", default=None, help="who approves (default: $USER)")


_SHOWN = ("measure", "outcome", "exposure", "time", "event", "score", "ties", "scale")


def _describe(analysis) -> str:
    """One line per analysis: every key the spec sets, each value escaped."""
    p = printable
    parts = [f"{p(analysis.get('name'))}: {p(analysis.get('estimator'))}"]
    for key in _SHOWN:
        if analysis.get(key):
            parts.append(f"{key}={p(analysis[key])}")
    if analysis.get("covariates"):
        parts.append("covariates=" + ",".join(p(c) for c in analysis["covariates"]))
    others = sorted(k for k in analysis if k not in (*_SHOWN, "name", "estimator",
                                                      "covariates", "description"))
    for key in others:                 # a hand-edited pending file: show, never hide
        parts.append(f"{p(key)}={p(analysis[key])}")
    if analysis.get("description"):
        parts.append(f"description={p(analysis['description'])}")
    return " ".join(parts)


def _run_pending(args: argparse.Namespace) -> int:
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from site_agent.policy import site_policy

    pending = site_policy(args.config).store().pending()
    if args.format == "json":
        print(json.dumps([{"round": p.round, "fingerprint": p.fingerprint,
                           "received_at": p.received_at, "spec": p.spec,
                           "refusals": p.refusals} for p in pending], indent=2))
        return 0
    if not pending:
        print("no spec is waiting for approval")
        return 0
    p = printable
    for item in pending:
        analyses = item.spec.get("analyses", item.spec.get("analysis", []))
        title = f" {p(item.spec['name'])}" if item.spec.get("name") else ""
        print(f"round {p(item.round)} (received {p(item.received_at)}, spec{title} "
              f"{p(item.fingerprint[:16])}): {len(analyses)} analyses")
        if item.spec.get("description"):
            print(f"  description: {p(item.spec['description'])}")
        for analysis in analyses:
            name = analysis.get("name")
            note = (f"   [refused: {p(item.refusals[name])}]" if name in item.refusals
                    else "")
            print(f"  - {_describe(analysis)}{note}")
    # the exact command for each waiting round, ready to copy (ids are checked safe
    # names, the config path is the operator's own)
    for item in pending:
        print(f"approve with: fedsynth site approve {p(item.round)} --config "
              f"{shlex.quote(str(args.config))}")
    return 0


def _run_approve(args: argparse.Namespace) -> int:
    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_site_config

    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from site_agent.policy import site_audit_log, site_policy

    config = load_site_config(args.config)
    policy = site_policy(config)
    audit = site_audit_log(config)
    approved = policy.store().approve(args.round, by=args.by)
    audit.append("policy.approved", {"round": approved.round,
                                     "fingerprint": approved.fingerprint,
                                     "by": args.by, "spec": approved.spec})
    print(f"approved the spec of round {printable(approved.round)} (fingerprint "
          f"{approved.fingerprint[:16]}); the agent computes it on its next poll")
    return 0


COMMANDS = [
    Command(("site", "pending"), "list specs waiting for the operator's approval",
            _add_pending, _run_pending),
    Command(("site", "approve"), "approve the spec of a round so the agent may compute it",
            _add_approve, _run_approve,
            description=("Approve the exact content of the spec a round brought (by its "
                         "SHA-256 fingerprint).\nLater rounds with the same spec need no new "
                         "approval; any change does. Recorded in the site's audit log.")),
]
