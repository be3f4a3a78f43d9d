"""``fedsynth round start | show | wait | list``: rounds, on the coordinator's host.

These commands read and write the coordinator's state store named in coordinator.toml; the
running coordinator serves a new round to the sites within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from fedsynth.cli.registry import Command
from fedsynth.vocabulary import METHODS, TESTS

# The command line imports every command module to build its parser, so the modules a
# command needs are imported when it runs. Measured on the shared 2-core machine (loaded):
# importing coordinator.store takes 1.2 s and fedsynth.round_document 0.18 s, against
# 0.6-0.9 s for the whole `fedsynth --help`; at module level every call would pay them.
if TYPE_CHECKING:
    from fedsynth.round_document import RoundDocument
from fedsynth.terminal import printable


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")


def _open(args: argparse.Namespace):
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config

    config = load_coordinator_config(args.config, insecure=True)
    return config, Store(config.state)


def _start_args(parser: argparse.ArgumentParser) -> None:
    _config_arg(parser)
    parser.add_argument("--spec", required=True, help="analysis spec (TOML)")
    parser.add_argument("--deadline", default=None,
                        help="how long the round stays open, e.g. 30s, 10m, 2h (default: "
                             "default_deadline of coordinator.toml, 10m)")
    parser.add_argument("--quorum", type=int, default=None,
                        help="sites needed to pool (default: every allowed site)")
    parser.add_argument("--method", default=None,
                        choices=METHODS,
                        help="pooling method of this round (default: [pooling] method)")
    parser.add_argument("--test", default=None, choices=TESTS,
                        help="test of this round (default: [pooling] test)")


def _start(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coordinator.rounds import open_round
    from coordinator.server import pooling_dict
    from fedsynth.errors import InputError
    from fedsynth.timeutil import iso, parse_duration, utcnow

    config, store = _open(args)
    deadline = (parse_duration(args.deadline, "--deadline") if args.deadline is not None
                else config.default_deadline)
    try:
        text = Path(args.spec).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"--spec {args.spec!r} cannot be read: {error.strerror}") from None
    quorum = args.quorum if args.quorum is not None else config.default_quorum
    pooling = pooling_dict(config)
    if args.method is not None:
        pooling["method"] = args.method
    if args.test is not None:
        pooling["test"] = args.test
    with store:
        record = open_round(store, spec_source=text, deadline=deadline, quorum=quorum,
                            allowed=config.allow, pooling=pooling,
                            now=utcnow(), source=f"round start --spec {args.spec}")
        if config.audit_log is not None:
            from fedsynth.audit import AuditLog

            AuditLog(config.audit_log).append("round.opened", {
                "round": record.id, "source": "cli", "deadline": iso(record.deadline),
                "quorum": record.quorum})
    print(f"round {record.id} opened: {len(record.spec.get('analyses', []))} analyses, "
          f"{len(record.allowed)} sites, quorum {record.quorum}, deadline "
          f"{iso(record.deadline)}", file=sys.stderr)
    print(record.id)
    return 0


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_table(doc: RoundDocument) -> str:
    """Plain-text view of a round document.

    Site names, statuses, refusal reasons and analysis names came from sites or from the
    spec: each is shown through :func:`fedsynth.terminal.printable`, so a control sequence
    in a refusal reason is displayed (``\\x1b``), not executed by the terminal.
    """
    from fedsynth.round_document import PooledEstimate

    p = printable
    lines = [f"round {p(doc.round)}  status {p(doc.status)}  quorum {p(doc.quorum)}",
             f"opened {p(doc.opened_at)}  deadline {p(doc.deadline)}  closed "
             f"{p(doc.closed_at or '-')}"]
    if doc.failure_reason:
        lines.append(f"failed: {p(doc.failure_reason)}")
    lines.append("")
    lines.append(f"{'site':<20} {'status':<10} submitted_at")
    for site in doc.sites:
        lines.append(f"{p(site.site):<20} {p(site.status or '-'):<10} "
                     f"{p(site.submitted_at or '-')}")
        for name, reason in site.refusals.items():
            lines.append(f"    refused {p(name)}: {p(reason)}")
    if doc.analyses:
        lines.append("")
        header = (f"{'analysis':<26} {'k':>2} {'method':<6} {'estimate':>10} {'ci_lb':>10} "
                  f"{'ci_ub':>10} {'tau2':>9} {'I2':>6}  flag")
        lines.append(header)
        for a in doc.analyses:
            het = a.heterogeneity
            flag = (het.level or "yes") if het is not None and het.flagged else ""
            pooled = a.pooled or PooledEstimate()
            lines.append(f"{p(a.analysis):<26} {a.k or 0:>2} {p(a.method or ''):<6} "
                         f"{_fmt(pooled.estimate):>10} {_fmt(pooled.ci_lb):>10} "
                         f"{_fmt(pooled.ci_ub):>10} {_fmt(pooled.tau2):>9} "
                         f"{_fmt(pooled.I2, 1):>6}  {p(flag)}")
    return "\n".join(lines)


def _show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="round id")
    _config_arg(parser)
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _show(args: argparse.Namespace) -> int:
    from coordinator.rounds import round_document

    _config, store = _open(args)
    with store:
        doc = round_document(store, store.get_round(args.id))
    if args.format == "json":
        print(json.dumps(doc.to_dict(), indent=2, allow_nan=False))
    else:
        print(render_table(doc))
    return 0


def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="round id")
    _config_arg(parser)
    parser.add_argument("--timeout", type=float, required=True, help="seconds to wait")


def _wait(args: argparse.Namespace) -> int:
    import time

    from fedsynth.errors import FedsynthError, InputError
    from fedsynth.timeutil import iso

    if not args.timeout > 0:
        raise InputError(f"--timeout = {args.timeout!r} must be positive")
    _config, store = _open(args)
    end = time.monotonic() + args.timeout
    with store:
        while True:
            record = store.get_round(args.id)
            if not record.is_open:
                print(f"round {printable(record.id)} {record.status}"
                      + (f": {printable(record.failure_reason)}" if record.failure_reason
                         else ""))
                return 0
            if time.monotonic() >= end:
                raise FedsynthError(f"round {args.id} still open after {args.timeout:g} s "
                                    f"(deadline {iso(record.deadline)})")
            time.sleep(0.2)


def _list_args(parser: argparse.ArgumentParser) -> None:
    _config_arg(parser)
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _list(args: argparse.Namespace) -> int:
    from fedsynth.timeutil import iso

    _config, store = _open(args)
    with store:
        records = store.list_rounds()
        rows = [{"round": r.id, "status": r.status, "opened_at": iso(r.opened_at),
                 "deadline": iso(r.deadline), "closed_at": iso(r.closed_at),
                 "quorum": r.quorum, "submissions": r.n_submissions,
                 "sites": len(r.allowed)} for r in records]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'round':<18} {'status':<7} {'subm':>4}/{'sites':<5} {'opened_at':<25} deadline")
    for row in rows:
        print(f"{printable(row['round']):<18} {row['status']:<7} "
              f"{row['submissions']:>4}/{row['sites']:<5} {row['opened_at']:<25} "
              f"{row['deadline']}")
    return 0


COMMANDS = [
    Command(("round", "start"), "open a federated round (prints its id last)", _start_args,
            _start),
    Command(("round", "show"), "show a round (pooled results when closed)", _show_args, _show),
    Command(("round", "wait"), "wait until a round has closed", _wait_args, _wait),
    Command(("round", "list"), "list rounds", _list_args, _list),
]
