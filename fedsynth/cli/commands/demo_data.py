"""``fedsynth demo-data``: seeded synthetic sites for demonstrations and tests."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, required=True, metavar="N",
                        help="number of sites (mtf-alpha, mtf-bravo, ...)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for DIR/<site>.csv and DIR/spec.toml")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--heterogeneity", choices=("low", "high"), default="low",
                        help="between-site spread of the treatment effects (default low; "
                             "high makes the pooled analyses flagged)")
    parser.add_argument("--rows", type=int, default=None, metavar="N",
                        help="patients per site (default: 600-2000, varying by site)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing files in DIR")


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.datasets import write_demo

    paths = write_demo(args.out, args.sites, seed=args.seed,
                       heterogeneity=args.heterogeneity, rows=args.rows, force=args.force)
    for path in paths:
        print(path)
    return 0


COMMANDS = [Command(
    ("demo-data",), "write seeded synthetic patient data for N sites and an example spec",
    _add_arguments, _run,
    description=(
        "Write one CSV per site (columns patient_id, age, sex, treated, outcome, los_days,\n"
        "time, event, risk_score) and DIR/spec.toml, the example spec with one analysis\n"
        "per estimator. The same arguments always give the same files."))]
