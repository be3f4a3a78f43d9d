"""``fedsynth site pending`` / ``fedsynth site approve ROUND``: operator approval of specs."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _add_pending(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="SITE_TOML",
                        help="the site's site.toml (its policy file names the approvals folder)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _add_approve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("round", metavar="ROUND", help="id of the round whose spec to approve")
    parser.add_argument("--config", required=True, metavar="SITE_TOML",
                        help="the site's site.toml")
    parser.add_argument("--by", default=None, help="who approves (default: $USER)")


def _describe(analysis) -> str:
    parts = [f"{analysis.get('name')}: {analysis.get('estimator')}"]
    for key in ("measure", "outcome", "exposure", "time", "event", "score"):
        if analysis.get(key):
            parts.append(f"{key}={analysis[key]}")
    if analysis.get("covariates"):
        parts.append("covariates=" + ",".join(analysis["covariates"]))
    return " ".join(parts)


def _run_pending(args: argparse.Namespace) -> int:
    import json

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
    for item in pending:
        analyses = item.spec.get("analyses", item.spec.get("analysis", []))
        print(f"round {item.round} (received {item.received_at}, spec "
              f"{item.fingerprint[:16]}): {len(analyses)} analyses")
        for analysis in analyses:
            name = analysis.get("name")
            note = f"   [refused: {item.refusals[name]}]" if name in item.refusals else ""
            print(f"  - {_describe(analysis)}{note}")
    print(f"approve with: fedsynth site approve ROUND --config {args.config}")
    return 0


def _run_approve(args: argparse.Namespace) -> int:
    from fedsynth.config import load_site_config
    from site_agent.policy import site_audit_log, site_policy

    config = load_site_config(args.config)
    policy = site_policy(config)
    audit = site_audit_log(config)
    approved = policy.store().approve(args.round, by=args.by)
    audit.append("policy.approved", {"round": approved.round,
                                     "fingerprint": approved.fingerprint,
                                     "by": args.by, "spec": approved.spec})
    print(f"approved the spec of round {approved.round} (fingerprint "
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
