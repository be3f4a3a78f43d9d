"""``fedsynth site score``: score this site's patients with a signed model artifact.

The deployment end of issue 14: the coordinator exports a fitted model as a signed
artifact (``fedsynth model export``); a site checks the signature against the project CA
it already trusts (``--ca``, or the ``[tls]`` CA of ``--config site.toml``) and writes each
row's linear predictor and prediction (probability for a logistic model). An unsigned or
tampered artifact, or one not signed by the coordinator, is refused (exit 2) before any
row is scored. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsynth.cli.registry import Command
from fedsynth.errors import InputError
from fedsynth.terminal import printable

_DESCRIPTION = """\
Score the rows of a data file with a signed model artifact ('fedsynth model export'):
verify the artifact's signature against the project CA, then write every row with two
new columns, linear_predictor and prediction (the probability for a binomial model, the
mean for gaussian and poisson, offset included). Rows with a missing covariate are
written with empty scores; a value outside a categorical column's declared levels stops
the command naming the column, the value and the row.

Examples:
  fedsynth site score --model model.json --data patients.csv --ca pki/ca.crt \\
      --out scores.csv
  fedsynth site score --model model.json --config site.toml --data patients.csv
  fedsynth site score --model model.json --config site.toml --data patients.csv \\
      --site mtf-alpha     (a hierarchical or stratified model: this site's intercept)

Exit codes: 0 scored; 2 bad input (an unsigned, tampered or foreign artifact; a missing
column; an undeclared level)."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="model.json",
                        help="the signed model artifact")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="rows to score (CSV, TSV or Parquet); default: the file data "
                             "source of --config")
    parser.add_argument("--ca", default=None, metavar="PEM",
                        help="the project CA certificate (default: [tls] ca of --config)")
    parser.add_argument("--config", default=None, metavar="site.toml",
                        help="the site's configuration (its CA and data file)")
    parser.add_argument("--site", default=None, metavar="NAME",
                        help="score with this site's intercept (hierarchical: its "
                             "deviation; stratified: required); default: the mean")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the scored rows here (CSV) instead of standard output")


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps pandas, numpy and cryptography out of `fedsynth --help` start-up
    from fedsynth.config import load_site_config
    from fedsynth.fileio import atomic_write
    from fedsynth.models.artifact import read_artifact
    from fedsynth.models.coding import CodingError
    from site_agent.data import load_table

    config = load_site_config(args.config) if args.config else None
    ca_path = args.ca
    if ca_path is None and config is not None and config.tls is not None:
        ca_path = config.tls.ca
    if ca_path is None:
        raise InputError("--ca (the project CA certificate) or --config site.toml is needed "
                         "to check who signed the model")
    data_path = args.data
    if data_path is None and config is not None:
        data_path = config.data.path
    if data_path is None:
        raise InputError("--data: no data file given (and --config has no file source)")
    try:
        ca_pem = Path(ca_path).read_bytes()
    except OSError as error:
        raise InputError(f"--ca {str(ca_path)!r} cannot be read: {error.strerror}") from None
    try:
        text = Path(args.model).read_bytes()
    except OSError as error:
        raise InputError(f"--model {args.model!r} cannot be read: {error.strerror}") from None
    artifact = read_artifact(text, ca_pem=ca_pem, label=f"--model {args.model!r}")
    frame = load_table(data_path)
    try:
        scores = artifact.score(frame, site=args.site)
    except CodingError as error:
        raise InputError(f"--data {str(data_path)!r}: {error}") from None
    out = frame.copy()
    out["linear_predictor"] = scores.linear_predictor
    out["prediction"] = scores.prediction
    text_out = out.to_csv(index=False)
    if args.out:
        atomic_write(args.out, text_out)
        m = artifact.model
        print(printable(f"{args.out}: {scores.n_scored} of {len(frame)} rows scored with "
                        f"model {m.name!r} ({artifact.variant}, {m.family}, signed by "
                        f"{artifact.signer}, created {artifact.created})"))
    else:
        sys.stdout.write(text_out)
    if scores.n_scored < len(frame):
        print(f"note: {len(frame) - scores.n_scored} rows have a missing value in a column "
              "the model uses and were not scored", file=sys.stderr)
    return 0


COMMANDS = [Command(("site", "score"),
                    "score local rows with a signed model artifact (verifies the signature)",
                    _add_arguments, _run, description=_DESCRIPTION)]
