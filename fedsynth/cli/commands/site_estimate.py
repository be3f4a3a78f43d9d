"""``fedsynth site estimate``: what this site would send for a spec, computed locally.

A site operator runs it before joining a round to see exactly what would leave: per
analysis ``yi, vi, se, n``, or the refusal and its reason, after the site's disclosure
control (:func:`site_agent.privacy.guard`).
"""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="FILE",
                        help="the site's patient-level data (CSV or Parquet)")
    parser.add_argument("--spec", required=True, metavar="SPEC.toml",
                        help="the analysis spec (TOML)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--min-cell-count", type=int, default=5, metavar="N",
                        help="disclosure control: smallest count behind an estimate "
                             "(default 5)")
    parser.add_argument("--min-n", type=int, default=20, metavar="N",
                        help="disclosure control: fewest patients an analysis may rest on "
                             "(default 20)")


def _number(value: float) -> str:
    return f"{value:.6g}"


def _run(args: argparse.Namespace) -> int:
    import json

    from fedsynth.spec import load_spec
    from site_agent.data import load_table
    from site_agent.estimators import estimate_all
    from site_agent.privacy import PrivacyLimits, guard

    # Validate everything before computing, so bad input prints nothing on stdout.
    limits = PrivacyLimits(min_cell_count=args.min_cell_count, min_n=args.min_n)
    spec = load_spec(args.spec)
    frame = load_table(args.data)
    results = guard(estimate_all(frame, spec), limits, spec=spec, data=frame)
    if args.format == "json":
        document = {"n": int(len(frame)),
                    "analyses": {name: r.to_dict() for name, r in results.items()}}
        print(json.dumps(document, indent=2))
        return 0
    rows = [("analysis", "estimator", "measure", "yi", "se", "vi", "n", "note")]
    for analysis in spec.analyses:
        r = results[analysis.name]
        if getattr(r, "refused", False):
            rows.append((analysis.name, analysis.estimator, "", "", "", "", "",
                         f"refused: {r.reason}"))
        else:
            note = f"{r.n_dropped} rows with missing values dropped" if r.n_dropped else ""
            rows.append((analysis.name, analysis.estimator, r.measure, _number(r.yi),
                         _number(r.se), _number(r.vi), str(r.n), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    print(f"data: {args.data} ({len(frame)} rows); spec: {args.spec}; disclosure limits: "
          f"min_cell_count={limits.min_cell_count}, min_n={limits.min_n}")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


COMMANDS = [Command(
    ("site", "estimate"),
    "compute a spec's estimates on local data and print exactly what would be sent",
    _add_arguments, _run,
    description=(
        "Compute every analysis of SPEC on the site's data and print what the site would\n"
        "send: per analysis yi, vi, se, n, or the refusal and its reason, after the site's\n"
        "disclosure control (minimum cell count, minimum n). Nothing leaves the machine.\n\n"
        "JSON output: {\"n\": rows, \"analyses\": {name: {yi, vi, se, n} | {refused}}}"))]
