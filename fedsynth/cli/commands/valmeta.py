"""``fedsynth valmeta``: meta-analysis of prediction-model performance from a CSV file.

One row per validation study; the options name the columns as metamisc's ``valmeta``
names its arguments (``--cstat``, ``--cstat-se``, ..., ``--O``, ``--E``, ``--N``, ``--Po``,
``--Pe``, ``--Po-se``). Missing cells (empty, ``NA``) are normal: each study uses what it
reports, in metamisc's order of preference, and a study with too little information is left
out with a note. The statistics are :func:`fedsynth.meta.valmeta.valmeta`.

Errors (missing column, non-numeric cell, value out of range, bad option) raise
:class:`fedsynth.errors.InputError`: one line on stderr, exit code 2, nothing on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedsynth.cli.registry import Command
from fedsynth.vocabulary import METHODS, TESTS

MEASURES = {"cstat": "cstat", "oe": "OE"}
METHOD_CHOICES = METHODS
TEST_CHOICES = TESTS
FORMAT_CHOICES = ("table", "json")
MODEL_CHOICES = ("normal/logit", "normal/log", "normal/identity")
#: Label columns used when ``--slab`` is not given (first one present wins).
DEFAULT_LABEL_COLUMNS = ("Study", "study", "label", "site", "name", "slab")

#: (option, argument of fedsynth.meta.valmeta.valmeta, help), per measure.
CSTAT_COLUMNS = (
    ("--cstat", "cstat", "column of c-statistics (AUCs)"),
    ("--cstat-se", "cstat_se", "column of their standard errors"),
    ("--cstat-cilb", "cstat_cilb", "column of the lower confidence bounds"),
    ("--cstat-ciub", "cstat_ciub", "column of the upper confidence bounds"),
    ("--sd-LP", "sd_LP", "column of standard deviations of the linear predictor (used "
                         "where the c-statistic is missing)"),
)
OE_COLUMNS = (
    ("--OE", "OE", "column of O:E ratios"),
    ("--OE-se", "OE_se", "column of their standard errors"),
    ("--OE-cilb", "OE_cilb", "column of the lower confidence bounds of O:E"),
    ("--OE-ciub", "OE_ciub", "column of the upper confidence bounds of O:E"),
    ("--EO", "EO", "column of E:O ratios"),
    ("--EO-se", "EO_se", "column of their standard errors"),
    ("--E", "E", "column of expected numbers of events"),
    ("--Pe", "Pe", "column of expected event probabilities"),
    ("--Po-se", "Po_se", "column of standard errors of Po"),
)
SHARED_COLUMNS = (
    ("--N", "N", "column of numbers of patients"),
    ("--O", "O", "column of observed numbers of events"),
    ("--Po", "Po", "column of observed event probabilities"),
)
LEVEL_OPTIONS = (("--cstat-cilv", "cstat_cilv", "cstat"), ("--OE-cilv", "OE_cilv", "OE"))

DESCRIPTION = """\
Meta-analysis of the c-statistic or the total O:E ratio of a prediction model over its
validation studies, as R's metamisc::valmeta: each study's estimate and standard error are
restored from what it reports (in metamisc's order of preference), pooled on the logit
(c-statistic) or log (O:E) scale with REML and the Knapp-Hartung test by default, with a
prediction interval on t(k-2), and back-transformed.

c-statistic: the standard error comes from --cstat-se, else the confidence interval
(--cstat-cilb, --cstat-ciub at level --cstat-cilv, on the logit scale), else Hanley-McNeil
from --N and --O (or --Po).
O:E: from the first usable of (OE, SE), (OE, CI), (O, E, N), (O, Pe, N), (E, Po, N),
(Po, Pe, N), (EO, SE(EO)), (O, E, Po), (O, E, Pe), (O, E), (Po, Pe, SE(Po)).
Empty or NA cells are missing values; a study with too little information is left out
with a note.

examples:
  fedsynth valmeta EuroSCORE.csv --cstat c.index --cstat-se se.c.index \\
      --cstat-cilb c.index.95CIl --cstat-ciub c.index.95CIu --N n --O n.events
  fedsynth valmeta EuroSCORE.csv --measure OE --O n.events --E e.events --N n
  fedsynth valmeta studies.csv --measure OE --Po po --Pe pe --N n --format json
"""


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------

def _measure(text: str) -> str:
    key = MEASURES.get(text.lower())
    if key is None:
        raise argparse.ArgumentTypeError(f"--measure: {text!r} is not cstat or OE")
    return key


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--level: {text!r} is not a number (use e.g. 95 or 0.95)") from None
    if not 0 < value < 100 or value == 1:
        raise argparse.ArgumentTypeError(
            f"--level: {text!r} must be a percentage (95) or a proportion (0.95)")
    return value / 100.0 if value > 1 else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All options of ``fedsynth valmeta``."""
    parser.add_argument("file", metavar="FILE.csv", help="CSV file, one row per validation")
    parser.add_argument("--measure", type=_measure, default="cstat",
                        help="cstat (c-statistic, default) or OE (total observed:expected)")
    parser.add_argument("--slab", "--label", dest="slab", metavar="COL", default=None,
                        help="column of study labels (default: Study, study, label, site or "
                             "name if present, else row numbers)")
    cstat = parser.add_argument_group("c-statistic (--measure cstat)")
    for option, dest, text in CSTAT_COLUMNS:
        cstat.add_argument(option, dest=dest, metavar="COL", default=None, help=text)
    cstat.add_argument("--cstat-cilv", dest="cstat_cilv", metavar="LEVEL|COL", default=None,
                       help="level of the confidence intervals: a number (default 0.95) or "
                            "a column of levels")
    cstat.add_argument("--approx-se-method", type=int, choices=(4, 2), default=4,
                       help="Newcombe's method for Hanley-McNeil (default 4)")
    oe = parser.add_argument_group("O:E ratio (--measure OE)")
    for option, dest, text in OE_COLUMNS:
        oe.add_argument(option, dest=dest, metavar="COL", default=None, help=text)
    oe.add_argument("--OE-cilv", dest="OE_cilv", metavar="LEVEL|COL", default=None,
                    help="level of the O:E confidence intervals: a number (default 0.95) or "
                         "a column")
    both = parser.add_argument_group("both measures")
    for option, dest, text in SHARED_COLUMNS:
        both.add_argument(option, dest=dest, metavar="COL", default=None, help=text)
    model = parser.add_argument_group("model")
    model.add_argument("--method", type=str.upper, choices=METHOD_CHOICES, default="REML",
                       help="tau^2 estimator, FE for the fixed-effect model (default: REML)")
    model.add_argument("--test", type=str.lower, choices=TEST_CHOICES, default="knha",
                       help="knha (Knapp-Hartung t, default) or z; FE always uses z")
    model.add_argument("--level", type=_level, default=0.95, metavar="PCT",
                       help="level of the confidence and prediction intervals (default: 95)")
    model.add_argument("--model", choices=MODEL_CHOICES, default=None,
                       help="normal/logit (c-statistic, default), normal/log (O:E, default) "
                            "or normal/identity (pool the untransformed measure)")
    parser.add_argument("--format", type=str.lower, choices=FORMAT_CHOICES, default="table",
                        help="output format (default: table)")


# ---------------------------------------------------------------------------------------
# input
# ---------------------------------------------------------------------------------------

def _numeric(frame, column: str, option: str, labels) -> Any:
    """Column ``column`` as floats; empty and NA cells are missing (NaN), any other text is
    an error naming the column, row, study and value."""
    import numpy as np
    import pandas as pd

    from fedsynth import tabular
    from fedsynth.errors import InputError

    tabular.require_columns(frame, [column], option=option)
    series = frame[column]
    if pd.api.types.is_bool_dtype(series):
        raise InputError(f"column {column!r} (given by {option}) holds TRUE/FALSE values, "
                         "not numbers")
    converted = pd.to_numeric(series, errors="coerce")
    text = series.where(series.notna(), "").astype(str).str.strip()
    bad = np.flatnonzero((converted.isna() & (text != "")).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise InputError(f"column {column!r} (given by {option}), row {i + 1} (study "
                         f"{labels[i]!r}) of {frame.attrs.get('source', 'input')}: value "
                         f"{text.iloc[i]!r} is not a number (line {i + 2} of the file; leave "
                         "the cell empty or NA when it is not reported)")
    return converted.to_numpy(dtype=float)


def _level_or_column(frame, text: str, option: str, labels) -> tuple[Any, str]:
    """``--cstat-cilv``/``--OE-cilv``: a level (0.95 or 95) or a column of levels."""
    import numpy as np

    from fedsynth.errors import InputError

    try:
        value = float(text)
    except ValueError:
        values = _numeric(frame, text, option, labels)
        scaled = np.where(values > 1, values / 100.0, values)
        return scaled, f"column {text!r} ({option})"
    if not (0 < value < 1 or 10 <= value < 100):   # 1.5 is no sensible CI level
        raise InputError(f"{option}: {text!r} must be a level such as 0.95 (or 95)")
    return (value / 100.0 if value > 1 else value), option


def _labels(frame, args) -> list[str]:
    from fedsynth import tabular

    column = args.slab or tabular.pick_column(frame, DEFAULT_LABEL_COLUMNS)
    if column is None:
        return [str(i + 1) for i in range(len(frame))]
    return tabular.text_column(frame, column, option="--slab" if args.slab else None)


def load_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The keyword arguments of :func:`~fedsynth.meta.valmeta.valmeta` read from the CSV,
    and how error messages name each (its column and option)."""
    from fedsynth import tabular
    from fedsynth.errors import InputError

    frame = tabular.read_csv(args.file)
    labels = _labels(frame, args)
    own = {"cstat": CSTAT_COLUMNS, "OE": OE_COLUMNS}[args.measure] + SHARED_COLUMNS
    other = OE_COLUMNS if args.measure == "cstat" else CSTAT_COLUMNS
    for option, dest, _ in other:
        if getattr(args, dest) is not None:
            raise InputError(f"{option}: is an input of --measure "
                             f"{'OE' if args.measure == 'cstat' else 'cstat'}, not of "
                             f"--measure {args.measure}")
    for option, dest, measure in LEVEL_OPTIONS:
        if measure != args.measure and getattr(args, dest) is not None:
            raise InputError(f"{option}: is an input of --measure {measure}, not of "
                             f"--measure {args.measure}")
    if args.measure != "cstat" and args.approx_se_method != 4:
        raise InputError("--approx-se-method: applies to --measure cstat only")
    kwargs: dict[str, Any] = {}
    names: dict[str, str] = {}
    for option, dest, _ in own:
        column = getattr(args, dest)
        if column is not None:
            kwargs[dest] = _numeric(frame, column, option, labels)
            names[dest] = f"column {column!r} ({option})"
    if not kwargs:
        needed = ("--cstat (and --cstat-se, --cstat-cilb/--cstat-ciub, or --N and --O)"
                  if args.measure == "cstat" else "e.g. --O, --E and --N")
        raise InputError(f"no input columns given for --measure {args.measure}: name "
                         f"{needed}")
    for option, dest, measure in LEVEL_OPTIONS:
        if measure == args.measure and getattr(args, dest) is not None:
            kwargs[dest], names[dest] = _level_or_column(frame, getattr(args, dest), option,
                                                         labels)
    kwargs["slab"] = labels
    return kwargs, names


# ---------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------

def compute(args: argparse.Namespace):
    """Read the CSV and run :func:`fedsynth.meta.valmeta.valmeta`."""
    from fedsynth.meta.valmeta import valmeta

    kwargs, names = load_arguments(args)
    return valmeta(args.measure, method=args.method, test=args.test, level=args.level,
                   model=args.model, approx_se_method=args.approx_se_method,
                   field_names=names, **kwargs)


def render_json(result) -> str:
    import json

    return json.dumps(result.to_dict(), indent=2, allow_nan=False)


def render_table(result) -> str:
    return result.summary()


def run(args: argparse.Namespace) -> int:
    """Read, restore, pool, print. Output is built completely before anything is printed."""
    result = compute(args)
    text = render_json(result) if args.format == "json" else render_table(result)
    print(text)
    return 0


COMMANDS = [Command(("valmeta",),
                    "meta-analysis of prediction-model performance (c-statistic, O:E), like "
                    "metamisc::valmeta", add_arguments, run, description=DESCRIPTION)]
