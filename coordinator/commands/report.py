"""``fedsynth report round|trend``: HTML/JSON reports of one round or across rounds.

Round documents come from the coordinator's state store (``--config coordinator.toml``) or,
offline, from a folder of round JSON documents (``--rounds-dir``, e.g. the ``<round>.json``
files the coordinator writes into its ``report_dir``, or ``fedsynth round show --format
json`` output saved to files).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsynth.cli.registry import Command
from fedsynth.errors import InputError

# Imported when a command runs, not when the command line builds its parser (see
# coordinator/commands/round.py).
if TYPE_CHECKING:
    from fedsynth.round_document import RoundDocument


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="COORDINATOR.TOML",
                        help="coordinator configuration: read rounds from its state store")
    parser.add_argument("--rounds-dir", metavar="DIR",
                        help="read round JSON documents from DIR instead of the store")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default: report_dir of --config)")


def _add_trend(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--analysis", metavar="NAME", action="append",
                        help="only this analysis (repeatable)")
    parser.add_argument("--i2-threshold", type=float, default=None, metavar="PCT",
                        help="I² threshold drawn on the plot (default: [pooling] of --config, "
                             "else 50)")


def _add_round(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("round", metavar="ID", help="round id")
    _common(parser)


def _load_dir(folder: str) -> list[RoundDocument]:
    """Every round document (``*.json`` but our own ``trend.json``) of a folder, validated."""
    # lazy: fedsynth.round_document is not loaded by `fedsynth --help` (start-up)
    from fedsynth.round_document import RoundDocument

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"--rounds-dir {folder!r}: not a directory")
    docs = []
    for file in sorted(path.glob("*.json")):
        if file.name == "trend.json":          # our own output, not a round
            continue
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"--rounds-dir: {file}: not a JSON round document ({error})") \
                from None
        if not isinstance(doc, dict) or "round" not in doc:
            raise InputError(f"--rounds-dir: {file}: not a round document (no 'round' field)")
        docs.append(RoundDocument.from_dict(doc, where=f"--rounds-dir: {file}:"))
    return docs


def _load_store(config) -> list[RoundDocument]:
    """Every round's document from the coordinator's state store (read-only use)."""
    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.rounds import round_document

    # lazy: keeps sqlalchemy out of `fedsynth --help` start-up
    from coordinator.store import Store

    with Store(config.state) as store:
        return [round_document(store, record) for record in store.list_rounds()]


def _sources(args: argparse.Namespace) -> tuple[Any, list[RoundDocument]]:
    """Return (config or None, round documents)."""
    if not args.config and not args.rounds_dir:
        raise InputError("give --config COORDINATOR.TOML (the store) or --rounds-dir DIR")
    config = None
    if args.config:
        # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
        from fedsynth.config import load_coordinator_config

        config = load_coordinator_config(args.config, insecure=True)
    docs = _load_dir(args.rounds_dir) if args.rounds_dir else _load_store(config)
    return config, docs


def _out_dir(args: argparse.Namespace, config: Any) -> Path:
    if args.out:
        return Path(args.out)
    if config is not None:
        return Path(config.report_dir)
    raise InputError("--out DIR is required without --config")


def _run_trend(args: argparse.Namespace) -> int:
    # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
    from coordinator.reports import write_trend_report

    config, docs = _sources(args)
    docs = [d for d in docs if d.status != "open"]
    if not docs:
        raise InputError("no closed round found (need at least one pooled or failed round)")
    threshold = args.i2_threshold
    if threshold is None:
        threshold = config.pooling.i2_threshold if config is not None else 50.0
    if not 0 <= threshold <= 100:
        raise InputError(f"--i2-threshold {threshold!r}: must be in [0, 100]")
    out = write_trend_report(docs, _out_dir(args, config), analyses=args.analysis,
                             i2_threshold=threshold)
    print(out)
    return 0


def _run_round(args: argparse.Namespace) -> int:
    # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
    from coordinator.reports import write_round_report

    config, docs = _sources(args)
    matches = [d for d in docs if d.round == args.round]
    if not matches:
        known = ", ".join(sorted(d.round for d in docs)[-5:]) or "none"
        raise InputError(f"round {args.round!r} not found (latest rounds: {known})")
    paths = write_round_report(matches[0], _out_dir(args, config))
    print(paths.html)
    if paths.pages is not None:
        print(paths.pages)
    print(paths.json)
    return 0


COMMANDS = [
    Command(("report", "trend"), "trend report across rounds (HTML + JSON)", _add_trend,
            _run_trend,
            description=("Plot each analysis's pooled estimate, CI, prediction interval and I² "
                         "per round,\nand every site's estimate per round, highlighting a site "
                         "that starts to diverge.\nWrites DIR/trend.html and DIR/trend.json.")),
    Command(("report", "round"), "HTML + JSON report of one round", _add_round, _run_round,
            description=("Write DIR/<round>.html (forest plots, heterogeneity, participation, "
                         "refusals)\nand DIR/<round>.json for one round. A big round (more "
                         "than 25 analyses or 5,000\nsite rows) gets DIR/<round>.html as a "
                         "summary page and one page per analysis\nin DIR/<round>/ (forest "
                         "plot, reasons, site table); the paths are printed.")),
]
