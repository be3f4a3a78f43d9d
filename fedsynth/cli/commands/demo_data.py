"""``fedsynth demo-data``: seeded synthetic sites for demonstrations and tests."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("patients", "trauma"), default="patients",
                        help="patients: the effect-estimate demo (default); trauma: a "
                             "traumatic-brain-injury registry of military treatment "
                             "facilities for model development")
    parser.add_argument("--sites", type=int, default=None, metavar="N",
                        help="number of sites (mtf-alpha, mtf-bravo, ...; default 6, or 10 "
                             "for --kind trauma)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for DIR/<site>.csv and DIR/spec.toml")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--heterogeneity", choices=("none", "low", "high"), default=None,
                        help="between-site spread: patients (low by default, or high) "
                             "spreads the treatment effects; trauma (high by default, low, "
                             "or none: the homogeneous variant) spreads the baseline risk "
                             "and the hypotension slope")
    parser.add_argument("--rows", type=int, default=None, metavar="N",
                        help="patients per site (default: varying by site, 600-2000 for "
                             "patients, about 200-2400 for trauma)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing files in DIR")


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.datasets import write_demo

    paths = write_demo(args.out, args.sites, seed=args.seed,
                       heterogeneity=args.heterogeneity, rows=args.rows, force=args.force,
                       kind=args.kind)
    for path in paths:
        print(path)
    return 0


COMMANDS = [Command(
    ("demo-data",), "write seeded synthetic patient data for N sites and an example spec",
    _add_arguments, _run,
    description=(
        "Write one CSV per site and DIR/spec.toml. The same arguments always give the same\n"
        "files.\n\n"
        "--kind patients (default): columns patient_id, age, sex, treated, outcome,\n"
        "los_days, time, event, risk_score; the spec has one analysis per estimator.\n\n"
        "--kind trauma: a traumatic-brain-injury registry of ~10 military treatment\n"
        "facilities of different sizes: patient_id, age, motor_score (GCS motor: 5/6, 4,\n"
        "3, 1/2), pupil (Both, One, None reactive), ct (Marshall I/II, III, IV/V), hypox,\n"
        "hypots, tsah, edh (0/1), mort (6-month mortality), los_days, log_los,\n"
        "complications. Baseline risk and the hypotension slope vary by site\n"
        "(--heterogeneity none gives the homogeneous variant). The spec holds adjusted\n"
        "analyses with categorical covariates and [[model]] tables (binomial, gaussian,\n"
        "poisson with an offset) for federated model fitting."))]
