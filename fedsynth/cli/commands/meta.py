"""``fedsynth meta``: meta-analysis of effect sizes in a CSV file (metafor's ``rma``).

The command is built from small parts so that further options (effect-size measures,
subgroups, moderators, diagnostics, Bayesian pooling, forest plots) can be added next to
the existing ones:

* :func:`add_arguments` calls one ``_add_*_options`` function per option group;
* :func:`load_input` turns the CSV into a :class:`MetaInput` (arrays of shape
  ``(analyses, sites)`` with a mask; one row per ``--by`` group);
* :func:`compute` pools every analysis in ONE call of :func:`fedsynth.meta.pool`;
* the heterogeneity flag of every analysis comes from ONE call of
  :func:`fedsynth.meta.heterogeneity.assess_heterogeneity_batch`
  (:func:`_batch_flags`) when ``--by`` gives several analyses and no option asks for
  per-analysis extras; otherwise :func:`_analysis` runs
  :func:`fedsynth.meta.analysis.analyse` per analysis (same flags);
* :func:`records` builds the JSON/CSV objects (extra keys go in :func:`_extend_record`),
  :func:`render_table`, :func:`render_json` and :func:`render_csv` print them; extra text
  sections of the table output go in :func:`_extra_sections`.

Errors (missing column, non-numeric cell, bad option) raise
:class:`fedsynth.errors.InputError`: one line on stderr, exit code 2, nothing on stdout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fedsynth.cli.commands import meta_mv, meta_rare
from fedsynth.cli.registry import Command
from fedsynth.errors import InputError
from fedsynth.terminal import printable
from fedsynth.vocabulary import (
    COUNT_METHODS,
    ESCALC_MEASURES,
    ESTIMATOR_MEASURES,
    METHODS,
    RATIO_MEASURES,
    RMA_TESTS,
    VTYPES,
)

# numpy, pandas (through fedsynth.tabular), the statistics and matplotlib are imported
# inside the functions that use them: this module is imported to build the parser of
# every fedsynth command, and those imports cost about 2 s of start-up on this machine
# (measured with python -X importtime), which `fedsynth version` or `fedsynth site run`
# should not pay.

if TYPE_CHECKING:  # pragma: no cover
    from fedsynth.meta import BatchPoolingResult, PoolingResult

METHOD_CHOICES = (*METHODS, *COUNT_METHODS)
TEST_CHOICES = RMA_TESTS
FORMAT_CHOICES = ("table", "json", "csv")
#: Measures ``--plot-measure`` accepts: escalc's, the site estimators' and the ratio
#: measures (HR), each once, in vocabulary order.
PLOT_MEASURES: tuple[str, ...] = tuple(dict.fromkeys(
    [*ESCALC_MEASURES, *(m for ms in ESTIMATOR_MEASURES.values() for m in ms),
     *sorted(RATIO_MEASURES)]))
#: escalc's raw-data arguments that ``fedsynth meta`` adds as options (the 2x2 ones,
#: ai, bi, ci, di, n1i, n2i, come from :mod:`meta_rare`, which shares them).
RAW_OPTIONS: tuple[tuple[str, str], ...] = (
    ("m1i", "means of group 1"), ("sd1i", "standard deviations of group 1"),
    ("m2i", "means of group 2"), ("sd2i", "standard deviations of group 2"),
    ("ri", "correlations"), ("ni", "sample sizes (ZCOR, PLO, PR)"),
    ("xi", "events (PLO, PR)"), ("x1i", "events in group 1 (IRR)"),
    ("t1i", "person-time of group 1 (IRR)"), ("x2i", "events in group 2 (IRR)"),
    ("t2i", "person-time of group 2 (IRR)"))
#: Label columns used when ``--label`` is not given (first one present wins).
DEFAULT_LABEL_COLUMNS = ("study", "label", "site", "name")

DESCRIPTION = """\
Fixed- and random-effects meta-analysis of effect sizes (yi) and their sampling
variances (vi) or standard errors (sei), as R's metafor::rma. Reports the pooled
estimate with its CI, tau^2 with its Q-profile CI, I^2, H^2, Cochran's Q test and the
prediction interval.

examples:
  fedsynth meta --example
  fedsynth meta studies.csv --yi logor --sei se --label study --method DL
  fedsynth meta all.csv --by outcome --format json
  fedsynth meta europe.csv --sep ';' --decimal , --drop-na
  fedsynth meta trials.csv --measure OR --ai tpos --bi tneg --ci cpos --di cneg
  fedsynth meta round.json --diagnostics      # a round document (round show --format json)
  fedsynth meta bcg.csv --mods "~ ablat + factor(alloc)" --test knha --btt 3:4
  fedsynth meta bcg.csv --tau2 0.1 --weights n --test adhoc
  fedsynth meta bcg.csv --mods "~ ablat" --newmods "10;30;50" --transf exp --permutest

""" + meta_rare.EXAMPLES + meta_mv.EXAMPLES


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------

def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE.csv",
                        help="CSV file with one row per study/site, or a round document "
                             "(FILE.json, from 'fedsynth round show --format json')")
    parser.add_argument("--example", action="store_true",
                        help="run on the bundled seed example (8 sites)")
    parser.add_argument("--yi", metavar="COL", default=None,
                        help="column of effect sizes (default: yi)")
    parser.add_argument("--vi", metavar="COL", default=None,
                        help="column of sampling variances (default: vi, else sei squared)")
    parser.add_argument("--sei", metavar="COL", default=None,
                        help="column of standard errors (instead of --vi)")
    parser.add_argument("--label", metavar="COL", default=None,
                        help="column of study labels (default: study, label, site or name "
                             "if present)")
    parser.add_argument("--measure", type=str.upper, default=None,
                        choices=ESCALC_MEASURES,
                        help="compute yi, vi from raw columns named as metafor's escalc "
                             "(ai,bi,ci,di or ai,n1i,ci,n2i; m1i,sd1i,n1i,m2i,sd2i,n2i; "
                             "mi,sdi,ni; m1i,m2i,sd1i,sd2i,ni,ri; ri,ni; x1i,t1i,x2i,t2i; "
                             "xi,ni or xi,mi) before pooling")
    parser.add_argument("--add", type=float, default=None, metavar="X",
                        help="with --measure: continuity correction added to count cells "
                             "(metafor's add; default 1/2, 0 for AS, PHI, PFT, IRSD)")
    parser.add_argument("--to", choices=("only0", "all", "if0all", "none"), default="only0",
                        help="with --measure: which tables get --add (default: only0)")
    parser.add_argument("--drop00", action="store_true",
                        help="with --measure: studies with no events (or only events) in "
                             "both groups are left out, as metafor's drop00")
    parser.add_argument("--vtype", type=str.upper, default="LS", choices=VTYPES,
                        help="with --measure: sampling-variance estimator (metafor's vtype; "
                             "default LS)")
    parser.add_argument("--by", metavar="COL", default=None,
                        help="pool each group of rows separately (all groups in one batch)")
    parser.add_argument("--sep", type=_sep, default=None, metavar="SEP",
                        help="cell separator: , ; tab or | (default: detected from the "
                             "file; comma when unclear)")
    parser.add_argument("--decimal", choices=(".", ","), default=None, metavar="MARK",
                        help="decimal mark of numbers, . or , (default: detected; ',' "
                             "only in a file not separated by commas)")
    parser.add_argument("--drop-na", action="store_true",
                        help="drop rows with a missing (empty or NA) cell in a column the "
                             "analysis uses, with a note on stderr (default: refuse them)")
    group = parser.add_argument_group(
        "raw columns for --measure (named as metafor's escalc arguments)",
        "map escalc's arguments to your columns, e.g. --measure OR --ai tpos --bi tneg "
        "--ci cpos --di cneg (--ai, --bi, --ci, --di, --n1i, --n2i are listed under 'rare "
        "events'; they serve --measure too); default: the column of that name")
    for name, what in RAW_OPTIONS:
        group.add_argument(f"--{name}", metavar="COL", default=None, dest=f"raw_{name}",
                           help=f"column of {what} (default: {name})")


_SEP_WORDS = {",": ",", "comma": ",", ";": ";", "semicolon": ";", "tab": "\t",
              "\t": "\t", "\\t": "\t", "|": "|", "pipe": "|"}


def _sep(text: str) -> str:
    """Parse ``--sep``: a separator (``,`` ``;`` ``|``) or the word ``tab``."""
    sep = _SEP_WORDS.get(text.strip().lower() if text.strip() else text)
    if sep is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a separator fedsynth reads (use ',', ';', 'tab' or '|')")
    return sep


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    # None until run() resolves them: a round document's own pooling settings are the
    # defaults when it is the input, REML / z / 95 otherwise
    parser.add_argument("--method", type=str.upper, choices=METHOD_CHOICES, default=None,
                        help="tau^2 estimator, FE for the fixed-effect model (default: REML, "
                             "or the round's method for a round document); MH, PETO or GLMM "
                             "pool 2x2 counts (see 'rare events')")
    parser.add_argument("--test", type=str.lower, choices=TEST_CHOICES, default=None,
                        help="z (Wald), t (t with k-p df), knha (Knapp-Hartung t) or adhoc "
                             "(Knapp-Hartung, scale factor at least 1), as metafor's test "
                             "(default: z, or the round's test)")
    parser.add_argument("--level", type=_level, default=None, metavar="PCT",
                        help="confidence level in percent (default: 95, or the round's)")
    parser.add_argument("--tau2", type=_tau2, default=None, metavar="X",
                        help="fix tau^2 at X instead of estimating it (metafor's tau2=)")
    parser.add_argument("--weights", metavar="COL", default=None,
                        help="user weights from column COL for the estimate and the "
                             "coefficients (metafor's weights=); tau^2 is estimated as "
                             "without them")
    parser.add_argument("--unweighted", action="store_true",
                        help="unweighted least squares (metafor's weighted=FALSE)")
    parser.add_argument("--mods", metavar="FORMULA", default=None,
                        help="meta-regression on a one-sided formula, as metafor's mods: "
                             "'~ year + factor(alloc)', '~ ablat * factor(alloc)', "
                             "'~ 0 + factor(alloc)'")
    parser.add_argument("--newmods", metavar="ROWS", default=None,
                        help="with --mods: predicted effects at these moderator values, "
                             "rows separated by ';', values by ',' in the order of the "
                             "coefficients without the intercept ('30,1,0;45,0,0'), as "
                             "metafor's predict(newmods=)")
    parser.add_argument("--transf", metavar="NAME", default=None,
                        help="back-transform --newmods predictions: exp, transf.ilogit, "
                             "transf.ztor, ... (metafor's names)")
    parser.add_argument("--permutest", metavar="ITER", nargs="?", const="exact", default=None,
                        help="with --mods: permutation p-values (metafor's permutest); no "
                             "value or 'exact' = exact where feasible, else ITER seeded "
                             "permutations (--seed)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of --permutest's random permutations")
    parser.add_argument("--profile", metavar="OUT", default=None,
                        help="with --mods (ML/REML): write the profile plot of tau^2 "
                             "(metafor's profile) to OUT (.png, .pdf, .svg)")
    parser.add_argument("--btt", metavar="SPEC", default=None,
                        help="coefficients of the --mods omnibus test: 1-based positions "
                             "as metafor ('3:4', '2,5') or a name pattern ('alloc')")


def _tau2(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau2: {text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"--tau2: {text!r} must be finite and >= 0")
    return value


def parse_btt(text: str | None) -> Any:
    """``--btt``: ``"3:4"``/``"2,5"``/``"-1"`` as 1-based positions, else a name pattern."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    positions: list[int] = []
    for part in parts:
        match = re.fullmatch(r"(-?\d+)(?::(-?\d+))?", part)
        if match is None:
            if len(parts) > 1:
                raise InputError(f"--btt: {text!r}: give positions ('3:4', '2,5') or one "
                                 "name pattern")
            return text
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        step = 1 if hi >= lo else -1
        positions.extend(range(lo, hi + step, step))
    return positions


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", type=str.lower, choices=FORMAT_CHOICES, default="table",
                        help="output format (default: table)")


def _add_diagnostics_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "heterogeneity and diagnostics",
        "every analysis carries a heterogeneity flag; these options add diagnostics")
    group.add_argument("--diagnostics", action="store_true",
                       help="add leave-one-out, influence, BLUPs and small-study tests "
                            "(Egger, Begg, trim-and-fill)")
    group.add_argument("--subgroup", metavar="COL", default=None,
                       help="subgroup analysis by the levels of COL")
    group.add_argument("--moderator", metavar="COL", action="append", default=None,
                       help="meta-regression on COL (numeric or categorical; repeatable)")
    group.add_argument("--i2-threshold", metavar="PCT", type=_i2_threshold, default=50.0,
                       help="I^2 (percent) at or above which an analysis is flagged "
                            "(default: 50)")
    group.add_argument("--null-value", metavar="X", type=float, default=0.0,
                       help="effect of no difference on the analysis scale, for the flag's "
                            "prediction-interval rule (default: 0; log scale for ratios)")
    group.add_argument("--cumulative-by", metavar="COL", default=None,
                       help="cumulative meta-analysis, adding sites in increasing order of "
                            "COL (e.g. year or round; ties keep file order)")


def _i2_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--i2-threshold: {text!r} is not a number (use e.g. 50)") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(
            f"--i2-threshold: {text!r} must lie between 0 and 100 (percent)")
    return value


def _needs_per_analysis(args: argparse.Namespace) -> bool:
    """Whether an option needs the per-analysis path of :func:`fedsynth.meta.analysis.analyse`.

    Whether an option asks for per-analysis extras that only
    :func:`fedsynth.meta.analysis.analyse` computes (diagnostics sections,
    subgroups, meta-regression, cumulative meta-analysis).
    """
    return bool(getattr(args, "diagnostics", False) or getattr(args, "subgroup", None)
                or getattr(args, "moderator", None) or getattr(args, "cumulative_by", None))


def _batch_flags(args: argparse.Namespace, batch: BatchPoolingResult):
    """The heterogeneity flags of all analyses in one vectorised computation (cached).

    The heterogeneity flags of all analyses in one vectorised computation (cached), or
    None when there is one analysis or an option needs the per-analysis path.

    :func:`fedsynth.meta.heterogeneity.assess_heterogeneity_batch` gives the same
    flags as ``analyse`` per analysis (tests/unit/test_heterogeneity_batch.py) without k
    refits per analysis in a Python loop. The CSV and table outputs show only the
    verdict, level, sites and reasons, so they skip the site drivers of unflagged
    analyses; JSON lists the drivers of every analysis.
    """
    if len(batch) < 2 or _needs_per_analysis(args):
        return None
    cache = args.__dict__.setdefault("_flags", {})
    if "batch" not in cache:
        # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
        from fedsynth.meta.heterogeneity import assess_heterogeneity_batch

        cache["batch"] = assess_heterogeneity_batch(
            batch, i2_threshold=args.i2_threshold, null_value=args.null_value,
            drivers_of="all" if args.format == "json" else "flagged")
    return cache["batch"]


def _analysis(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult,
              index: int):
    """The flag and diagnostics of analysis ``index`` (computed once, then cached)."""
    # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
    from fedsynth.meta.analysis import AnalysisResult, analyse

    cache = args.__dict__.setdefault("_analyses", {})
    flags = _batch_flags(args, batch)
    if flags is not None and index not in cache:
        # no extras requested: the analysis is its pooled fit and its flag
        cache[index] = AnalysisResult(pooling=batch[index], heterogeneity=flags[index])
    if index not in cache:
        sel = data.mask[index]
        rows = data.rows[index][sel]
        group = mods = order = order_values = None
        if args.cumulative_by or args.subgroup or args.moderator:
            # lazy: pandas only for the options that read another column
            from fedsynth import tabular
        if args.cumulative_by:
            order = _cumulative_order(data.frame, args.cumulative_by, rows)
            col = tabular.text_column(data.frame, args.cumulative_by, option="--cumulative-by")
            order_values = [col[r] for r in rows]
        if args.subgroup:
            col = tabular.text_column(data.frame, args.subgroup, option="--subgroup")
            group = [col[r] for r in rows]
        if args.moderator:
            mods = {}
            for name in args.moderator:
                col = tabular.text_column(data.frame, name, option="--moderator")
                mods[name] = [col[r] for r in rows]
        cache[index] = analyse(
            data.yi[index][sel], data.vi[index][sel], labels=list(data.labels[index][sel]),
            method=args.method, test=args.test, level=args.level,
            i2_threshold=args.i2_threshold, null_value=args.null_value,
            diagnostics=args.diagnostics, subgroup=group, subgroup_name=args.subgroup or "group",
            moderators=mods, cumulative_order=order, pooled=batch[index],
            cumulative_by=args.cumulative_by, cumulative_values=order_values)
    return cache[index]


def _cumulative_order(frame, column: str, rows) -> list[int]:
    """The order of an analysis' sites by ``column`` for a cumulative meta-analysis.

    0-based order of an analysis' sites by ``column`` (numeric if every value is a
    number, else text); a stable sort keeps the file order among ties.
    """
    # lazy: keeps numpy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    col = tabular.text_column(frame, column, option="--cumulative-by")
    values = [col[r] for r in rows]
    empty = [int(r) for r in rows if col[r] == ""]
    if empty:
        raise InputError(f"column {column!r} (given by --cumulative-by), row {empty[0] + 1}: "
                         "the value is empty")
    try:
        keys = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(keys)):
            raise ValueError
    except ValueError:
        keys = np.asarray(values, dtype=object)
    return [int(i) for i in np.argsort(keys, kind="stable")]


def _diagnostics_record(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult,
                        index: int, record: dict[str, Any]) -> None:
    """Add ``heterogeneity`` (always) and the diagnostics sections to a record."""
    flags = _batch_flags(args, batch)
    if flags is not None:   # the flag alone, without rebuilding the pooled record
        if args.format == "csv":
            f = flags[index]
            record["heterogeneity_flagged"] = f.flagged
            record["heterogeneity_level"] = f.level
            record["heterogeneity_sites"] = ";".join(f.sites)
            record["heterogeneity_reasons"] = " ".join(f.reasons)
        else:
            record["heterogeneity"] = flags[index].to_dict()
        return
    result = _analysis(args, data, batch, index).to_dict()
    flag = result["heterogeneity"]
    if args.format == "csv":  # flat columns; per-site sections do not fit one CSV row
        record["heterogeneity_flagged"] = flag["flagged"]
        record["heterogeneity_level"] = flag["level"]
        record["heterogeneity_sites"] = ";".join(flag["sites"])
        record["heterogeneity_reasons"] = " ".join(flag["reasons"])
        return
    for key in ("heterogeneity", "leave_one_out", "influence", "blup", "publication_bias",
                "cumulative", "subgroup", "meta_regression", "notes"):
        if key in result:
            record[key] = result[key]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All options of ``fedsynth meta`` (one function per option group)."""
    _add_input_options(parser)
    _add_model_options(parser)
    _add_output_options(parser)
    _add_diagnostics_options(parser)
    _add_bayes_plot_options(parser)
    meta_rare.add_rare_options(parser)
    meta_mv.add_bias_options(parser)
    meta_mv.add_mv_options(parser)


# --- Bayesian pooling and plots (owner: bayes-plots; fedsynth/meta/bayes.py, plots.py)

def _add_bayes_plot_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Bayesian pooling and plots",
        "normal-normal hierarchical model (flat prior on mu) and forest/funnel plots")
    group.add_argument("--bayes", metavar="PRIOR:SCALE", default=None,
                       help="add Bayesian pooling with this prior on tau, e.g. half_normal:0.5 "
                            "or half_cauchy:0.5 (scale on the effect's scale)")
    group.add_argument("--forest", metavar="OUT", default=None,
                       help="write a forest plot to OUT.png, OUT.svg or OUT.pdf (with --by: "
                            "one file per analysis, OUT-NAME.ext)")
    group.add_argument("--funnel", metavar="OUT", default=None,
                       help="write a funnel plot (with trim-and-fill points under "
                            "--diagnostics) to OUT.png, OUT.svg or OUT.pdf")
    group.add_argument("--plot", nargs=2, action="append", metavar=("KIND", "OUT"),
                       default=None,
                       help="write a radial, qqnorm, baujat, gosh, labbe (with --measure "
                            "OR|RR|RD on 2x2 columns) or bubble (with one --moderator) plot "
                            "to OUT.png, OUT.svg or OUT.pdf; repeatable")
    group.add_argument("--plot-measure", metavar="NAME", default=None, type=_plot_measure,
                       help="effect measure of yi for the plots' axis (default: --measure); "
                            f"one of {', '.join(PLOT_MEASURES)}; "
                            f"{', '.join(sorted(RATIO_MEASURES))} get a log axis with ratio "
                            "tick labels")


def _plot_measure(text: str) -> str:
    """Check ``--plot-measure`` against the vocabulary (case-insensitive).

    A typo would otherwise silently draw a linear axis.
    """
    name = text.strip().upper()
    if name not in PLOT_MEASURES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a known measure (known: "
            f"{', '.join(PLOT_MEASURES)})")
    return name


def _bayes_batch(args: argparse.Namespace, data: MetaInput):
    """Bayesian pooling of every analysis in one vectorised call (cached); None without --bayes."""
    if not getattr(args, "bayes", None):
        return None
    cache = args.__dict__.setdefault("_bayes", {})
    if "batch" not in cache:
        # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
        from fedsynth.meta.bayes import bayes_pool, parse_prior_spec

        prior, scale = parse_prior_spec(args.bayes)
        cache["batch"] = bayes_pool(data.yi, data.vi, mask=data.mask, prior=prior, scale=scale,
                                    level=args.level)
    return cache["batch"]


def _bayes_record(args: argparse.Namespace, data: MetaInput, index: int,
                  record: dict[str, Any]) -> None:
    batch = _bayes_batch(args, data)
    if batch is None:
        return
    bayes = batch[index].to_dict()
    if args.format == "csv":
        for key in ("prior", "tau_scale", "mu_mean", "mu_sd", "mu_median", "mu_ci", "tau_mean",
                    "tau_median", "tau_ci", "prob_mu_positive", "pred_lb", "pred_ub"):
            record[f"bayes_{key}"] = bayes[key]
    else:
        record["bayes"] = bayes


def _bayes_section(args: argparse.Namespace, data: MetaInput, index: int) -> list[str]:
    batch = _bayes_batch(args, data)
    if batch is None:
        return []
    return [batch[index].summary()]


def _plot_path(out: str, name: str, grouped: bool) -> str:
    if not grouped:
        return out
    stem, ext = os.path.splitext(out)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "analysis"
    return f"{stem}-{safe}{ext}"


def _check_plot_target(option: str, out: str) -> None:
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".svg", ".pdf"):
        raise InputError(f"{option}: {out!r} must end in .png, .svg or .pdf")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise InputError(f"{option}: directory {parent!r} of {out!r} does not exist")


def _plots(args: argparse.Namespace, data: MetaInput,
           batch: BatchPoolingResult) -> list[tuple[Any, str]]:
    """Build the requested figures (nothing written yet): (figure, path) pairs."""
    extra = getattr(args, "plot", None) or []
    if not (getattr(args, "forest", None) or getattr(args, "funnel", None) or extra):
        return []
    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
    from fedsynth.plots import PLOT_KINDS, forest_plot, funnel_plot

    for option in ("forest", "funnel"):
        if getattr(args, option):
            _check_plot_target(f"--{option}", getattr(args, option))
    for kind, out in extra:
        if kind.lower() not in PLOT_KINDS:
            raise InputError(f"--plot: kind {kind!r} is not one of {', '.join(PLOT_KINDS)}")
        _check_plot_target(f"--plot {kind}", out)
        if kind.lower() == "labbe" and (getattr(args, "measure", None) or "") not in (
                "OR", "RR", "RD"):
            raise InputError("--plot labbe: needs --measure OR, RR or RD on the 2x2 columns "
                             "(ai, bi, ci, di or ai, n1i, ci, n2i)")
        if kind.lower() == "bubble" and not args.moderator:
            raise InputError("--plot bubble: needs one numeric --moderator")
    measure = args.plot_measure or getattr(args, "measure", None)
    bayes = _bayes_batch(args, data)
    figures = []
    for i in range(len(batch)):
        result = batch[i]
        name = data.names[i]
        title = name or None
        analysis = _analysis(args, data, batch, i)
        if args.forest:
            groups = None
            if args.subgroup:
                col = tabular.text_column(data.frame, args.subgroup, option="--subgroup")
                groups = [col[r] for r in data.rows[i][data.mask[i]]]
                if len(set(groups)) < 2:
                    groups = None
            fig = forest_plot(result, measure=measure, title=title, subgroups=groups,
                              blup=analysis.blup if args.diagnostics else None,
                              bayes=None if bayes is None else bayes[i])
            figures.append((fig, _plot_path(args.forest, name, data.grouped)))
        if args.funnel:
            pb = analysis.publication_bias
            fig = funnel_plot(result, measure=measure, title=title,
                              filled=pb if pb is not None and pb.trimfill_k0 > 0 else None)
            figures.append((fig, _plot_path(args.funnel, name, data.grouped)))
        for kind, out in extra:
            fig = _extra_plot(kind.lower(), args, data, i, result, analysis, title)
            figures.append((fig, _plot_path(out, name, data.grouped)))
    return figures


def _extra_plot(kind: str, args: argparse.Namespace, data: MetaInput, i: int, result: Any,
                analysis: Any, title: str | None) -> Any:
    """One of the ``--plot KIND`` figures of analysis ``i``."""
    # lazy: keeps matplotlib, scipy and numpy out of `fedsynth --help` start-up
    from fedsynth import plots
    from fedsynth.effects.effect_sizes import COLUMN_SETS

    if kind == "radial":
        return plots.radial_plot(result, title=title)
    if kind == "qqnorm":
        return plots.qqnorm_plot(result, title=title)
    if kind == "baujat":
        return plots.baujat_plot(result, title=title)
    if kind == "gosh":
        return plots.gosh_plot(result.yi, result.vi, method=args.method, title=title)
    if kind == "bubble":
        if analysis.meta_regression is None:
            raise InputError("--plot bubble: needs one numeric --moderator")
        return plots.bubble_plot(analysis.meta_regression, title=title)
    # labbe: the analysis' own rows of the 2x2 columns
    rows = data.rows[i][data.mask[i]]
    chosen = next(s for s in COLUMN_SETS["OR"] if all(c in data.frame.columns for c in s))
    cols = {c: data.frame[c].to_numpy(dtype=float)[rows] for c in chosen}
    return plots.labbe_plot(measure=args.measure, estimate=result.estimate, title=title,
                            **cols)


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--level: {text!r} is not a number (use e.g. 95)") from None
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(
            f"--level: {text!r} must lie strictly between 0 and 100 (e.g. 95)")
    return value


# ---------------------------------------------------------------------------------------
# input
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetaInput:
    """The analyses of one invocation, ready for :func:`fedsynth.meta.pool`.

    Attributes
    ----------
    yi, vi : ndarray, shape (m, K)
        Effect sizes and sampling variances (NaN outside ``mask``).
    mask : ndarray of bool, shape (m, K)
    labels : ndarray of object, shape (m, K)
        Study labels.
    names : tuple of str
        Analysis names (the ``--by`` groups; ``("",)`` without ``--by``).
    grouped : bool
        Whether ``--by`` was given.
    frame : pandas.DataFrame or None
        The CSV as read (for options that need more columns); None for the bundled
        example read without pandas (:func:`_example_input`), which no option reads.
    rows : ndarray of int, shape (m, K)
        Row index in ``frame`` of each cell (-1 outside the mask).
    """

    yi: Any
    vi: Any
    mask: Any
    labels: Any
    names: tuple[str, ...]
    grouped: bool
    frame: Any
    rows: Any


def _read_frame(args: argparse.Namespace):
    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    if args.example and args.file:
        raise InputError(f"FILE: give either a file ({args.file!r}) or --example, not both")
    if args.example:
        with resources.as_file(resources.files("fedsynth") / "data" / "seed_example.csv") as p:
            frame = tabular.read_csv(p)
        frame.attrs["source"] = "the seed example"
        return frame
    if not args.file:
        raise InputError("FILE: no input given; name a CSV file or use --example")
    if _is_round_document(args.file):
        return _read_round(args)
    sep, decimal = getattr(args, "sep", None), getattr(args, "decimal", None)
    if sep == "," and decimal == ",":
        raise InputError("--decimal ',': the cells are separated by commas (--sep ','); a "
                         "decimal comma needs another separator (e.g. --sep ';')")
    frame = tabular.read_csv(args.file, sep=sep, decimal=decimal)
    dialect = frame.attrs["dialect"]
    if (dialect.sep, dialect.decimal) != (",", ".") and (sep is None or decimal is None):
        print(f"fedsynth: note: read {args.file} as {dialect.describe()} (set with --sep "
              "and --decimal)", file=sys.stderr)
    return _missing_values(args, frame)


#: Largest round document ``fedsynth meta`` reads (a round of 10,000 analyses of 100
#: sites is about 150 MB).
MAX_ROUND_BYTES = 512 << 20


def _is_round_document(path: str) -> bool:
    """A ``.json`` file is a round document (``fedsynth round show --format json``)."""
    return str(path).lower().endswith(".json")


def _read_round(args: argparse.Namespace):
    """The ``site_estimates`` of a round document as a frame (analysis, study, yi, vi).

    The document is validated by :meth:`fedsynth.round_document.RoundDocument.from_dict`;
    each analysis is one ``--by analysis`` group, its sites the studies; a site whose
    estimate is null (refused) is left out with a note. The round's pooling settings
    (method, test, level) are the defaults of the options.
    """
    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    import pandas as pd

    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    from fedsynth.round_document import RoundDocument

    for option in ("yi", "vi", "sei", "measure", "label"):
        if getattr(args, option, None):
            raise InputError(f"--{option.replace('_', '-')}: a round document "
                             f"({args.file}) carries the site estimates (yi, vi); the "
                             "option is for CSV input")
    if args.by not in (None, "analysis"):
        raise InputError(f"--by {args.by!r}: a round document is pooled by analysis "
                         "(--by analysis)")
    if args.method in COUNT_METHODS:
        raise InputError(f"--method {args.method}: a round document holds site estimates, "
                         "not 2x2 counts")
    try:
        size = os.path.getsize(args.file)
        if size > MAX_ROUND_BYTES:
            raise InputError(f"file: {args.file!r} is {size >> 20} MiB, more than the "
                             f"{MAX_ROUND_BYTES >> 20} MiB of a round document fedsynth "
                             "reads")
        with open(args.file, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"file: {args.file!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"file: {args.file!r} is a directory") from None
    except OSError as error:
        raise InputError(f"file: {args.file!r} cannot be read "
                         f"({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"file: {args.file!r} is not a JSON round document: {error}") \
            from None
    doc = RoundDocument.from_dict(data, where=f"file {args.file!r}: round document")
    rows: list[tuple[str, str, float, float]] = []
    skipped: list[str] = []
    for analysis in doc.analyses:
        used = 0
        for est in analysis.site_estimates:
            vi = est.vi if est.vi is not None else (
                est.se * est.se if est.se is not None else None)
            if est.yi is None or vi is None:
                skipped.append(f"site {est.site!r} of analysis {analysis.analysis!r} "
                               "(no estimate)")
                continue
            rows.append((analysis.analysis, est.site, float(est.yi), float(vi)))
            used += 1
        if not used:
            skipped.append(f"analysis {analysis.analysis!r} (no site estimates)")
    if skipped:
        print(f"fedsynth: note: round {doc.round}: left out {'; '.join(skipped[:10])}"
              + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""),
              file=sys.stderr)
    if not rows:
        raise InputError(f"file: {args.file!r}: round {doc.round} ({doc.status}) has no "
                         "site estimates to pool (is it still open, or failed?)")
    frame = pd.DataFrame(rows, columns=["analysis", "study", "yi", "vi"])
    frame.attrs["source"] = f"round {doc.round} ({args.file})"
    frame.attrs["round"] = doc
    args.by = "analysis"
    pooling = doc.pooling
    if pooling is not None:
        if args.method is None and pooling.method:
            args.method = str(pooling.method).upper()
        if args.test is None and pooling.test:
            args.test = str(pooling.test).lower()
        if args.level is None and pooling.level is not None:
            args.level = float(pooling.level)
    return frame


def _used_columns(args: argparse.Namespace, frame) -> list[str]:
    """The columns this invocation reads numbers or groups from (for the NA check)."""
    cols: list[str] = []
    if args.method in COUNT_METHODS:
        given = {n: getattr(args, f"rare_{n}", None) for n in meta_rare.COUNT_OPTIONS}
        cols += [given[n] or n for n in meta_rare.COUNT_OPTIONS]
    elif getattr(args, "measure", None):
        # lazy: only --measure needs escalc's column sets (scipy.integrate, and before
        # 2026-11-28 scipy.stats through fedsynth.effects: the regression of issue 17)
        from fedsynth.effects.effect_sizes import COLUMN_SETS

        mapping = _raw_mapping(args)
        names = dict.fromkeys(c for s in COLUMN_SETS[args.measure] for c in s)
        cols += [mapping.get(n, n) for n in names]
    else:
        cols += [args.yi or "yi"]
        if args.vi or args.sei:
            cols.append(args.vi or args.sei)
        else:
            cols.append("vi" if "vi" in frame.columns else "sei")
    for option in ("by", "subgroup", "cumulative_by"):
        if getattr(args, option, None):
            cols.append(getattr(args, option))
    cols += list(getattr(args, "moderator", None) or [])
    if getattr(args, "weights", None):
        cols.append(args.weights)
    if getattr(args, "mods", None):
        # lazy: formulaic is imported only when a formula is given
        from fedsynth.meta.formula import formula_variables

        cols += list(formula_variables(args.mods, frame.columns))
    return cols


def _missing_values(args: argparse.Namespace, frame):
    """Refuse missing cells (empty or NA) in the columns used, naming rows and columns.

    With ``--drop-na`` those rows are dropped instead, with a note on stderr.
    """
    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    from fedsynth import tabular

    missing = tabular.missing_cells(frame, _used_columns(args, frame))
    if not missing:
        return frame
    shown = "; ".join(
        f"row {i + 1}: " + (f"column {cols[0]!r} is empty or NA" if len(cols) == 1 else
                            f"columns {', '.join(map(repr, cols))} are empty or NA")
        for i, cols in list(missing.items())[:8])
    more = f" and {len(missing) - 8} more rows" if len(missing) > 8 else ""
    if not getattr(args, "drop_na", False):
        raise InputError(
            f"{frame.attrs.get('source', 'input')}: missing values in {len(missing)} "
            f"row(s): {shown}{more}; fill them in or use --drop-na to leave those rows out")
    out = tabular.drop_rows(frame, list(missing))
    if out.empty:
        raise InputError(f"{frame.attrs.get('source', 'input')}: --drop-na leaves no rows "
                         f"(every row has a missing value: {shown}{more})")
    print(f"fedsynth: note: --drop-na dropped {len(missing)} of {len(frame)} rows with "
          f"missing values: {shown}{more}", file=sys.stderr)
    return out


def _variance_column(args, frame):
    """Resolve (column, is_standard_error) from --vi / --sei and the defaults."""
    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    if args.vi and args.sei:
        raise InputError(f"--vi {args.vi!r} and --sei {args.sei!r}: give only one of them")
    if args.vi:
        return args.vi, False, "--vi"
    if args.sei:
        return args.sei, True, "--sei"
    col = tabular.pick_column(frame, ("vi",))
    if col:
        return col, False, None
    col = tabular.pick_column(frame, ("sei",))
    if col:
        return col, True, None
    raise InputError(
        f"column 'vi' (or 'sei') not found in {frame.attrs.get('source', 'input')}; name the "
        f"variance column with --vi COL or the standard-error column with --sei COL; "
        f"available columns: {', '.join(map(repr, frame.columns))}")


def _text_values(frame, column: str, *, option: str | None = None):
    """Column ``column`` as a pandas Series of stripped strings.

    Column ``column`` as a pandas Series of stripped strings (empty cells ``""``):
    :func:`fedsynth.tabular.text_column` without the conversion to a Python list, so
    labels and ``--by`` groups of 400,000 rows stay vectorised.
    """
    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    tabular.require_columns(frame, [column], option=option)
    series = frame[column]
    return series.where(series.notna(), "").astype(str).str.strip()


def _object_strings(series):
    """A Series of strings as an object array (one Python string per distinct text), codes.

    The object array and the integer code of each row's text (0, 1, ... in order of
    first appearance).

    ``to_numpy(dtype=object)`` makes a Python string per row (4 million at 200,000
    analyses of 20 sites, for 20 distinct site names); the distinct texts taken by their
    codes give equal strings at a fraction of the time and memory (issue 17).
    """
    # lazy: keeps numpy and pandas out of `fedsynth --help` start-up
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(series, sort=False)
    return np.asarray(uniques, dtype=object)[codes], codes


def _raw_mapping(args: argparse.Namespace) -> dict[str, str]:
    """``{escalc argument: column}`` of the raw-column options given on the command line."""
    names = [*meta_rare.COUNT_OPTIONS, *(n for n, _ in RAW_OPTIONS)]
    mapping = {}
    for name in names:
        value = (getattr(args, f"raw_{name}", None) if name not in meta_rare.COUNT_OPTIONS
                 else getattr(args, f"rare_{name}", None))
        if value:
            mapping[name] = value
    return mapping


def _mapped_frame(frame, mapping: dict[str, str]):
    """The columns escalc reads, under escalc's names.

    ``mapping`` first (``--ai tpos`` reads column ``tpos`` as ``ai``), then the frame's
    own columns of those names.
    """
    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    import pandas as pd

    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    from fedsynth import tabular
    from fedsynth.effects.effect_sizes import COLUMN_SETS

    if not mapping:
        return frame
    for name, column in mapping.items():
        tabular.require_columns(frame, [column], option=f"--{name}")
    wanted = dict.fromkeys(c for sets in COLUMN_SETS.values() for s in sets for c in s)
    data = {name: frame[mapping[name]] if name in mapping else frame[name]
            for name in wanted if name in mapping or name in frame.columns}
    out = pd.DataFrame(data, index=frame.index)
    out.attrs.update(frame.attrs)
    return out


def _name_user_columns(message: str, mapping: dict[str, str]) -> str:
    """Say ``column 'tpos' (--ai)`` where escalc's message says ``column 'ai'``."""
    for name, column in mapping.items():
        message = message.replace(f"column {name!r}", f"column {column!r} (--{name})")
    return message


def _unique_labels(labels, codes, names: tuple[str, ...], args: argparse.Namespace,
                   label_codes=None):
    """Number study labels that occur more than once in one analysis, as metafor does.

    Labels name the sites that drive heterogeneity, the rows of leave-one-out, BLUPs and
    the forest plot: two rows called "Rosenthal et al" would make every such list
    ambiguous. metafor's ``rma`` numbers every copy of a repeated ``slab``
    (``Rosenthal et al.1``, ``Rosenthal et al.2``; its own BCG example has two such
    pairs), so fedsynth does the same rather than refuse the textbook data set, and says
    so on stderr (docs/decisions/cli.md). With ``--by`` labels are numbered within each
    analysis.
    """
    # lazy: keeps numpy, pandas and the statistics out of `fedsynth --help` start-up
    import numpy as np
    import pandas as pd

    if not _repeated_pairs(codes, labels, label_codes).any():
        return labels
    table = pd.DataFrame({"code": codes, "label": labels})
    dup = table.duplicated(["code", "label"], keep=False).to_numpy()
    number = table.groupby(["code", "label"], sort=False).cumcount().to_numpy() + 1
    out = np.asarray(labels, dtype=object).copy()
    out[dup] = [f"{lab}.{n}" for lab, n in zip(out[dup], number[dup])]
    repeated = table[dup].drop_duplicates(["code", "label"])
    shown = []
    for code, label in zip(repeated["code"].tolist()[:5], repeated["label"].tolist()[:5]):
        rows = table.index[dup & (table["code"] == code).to_numpy()
                           & (table["label"] == label).to_numpy()]
        where = f" in analysis {names[int(code)]!r}" if args.by else ""
        shown.append(f"{str(label)!r}{where} (rows {', '.join(str(int(r) + 1) for r in rows)})")
    more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    print(f"fedsynth: note: study labels repeated: {'; '.join(shown)}{more}; numbered "
          f"'{repeated['label'].iloc[0]}.1', '{repeated['label'].iloc[0]}.2', ... as metafor "
          "numbers a repeated slab (name another column with --label to choose)",
          file=sys.stderr)
    return out


def _repeated_pairs(codes, labels, label_codes=None):
    """Whether each row's (analysis, label) pair occurs more than once (a bool array).

    The labels are numbered as integers (``label_codes``, equal codes for equal texts;
    from :func:`pandas.factorize` when not given) and the pairs counted as integers: at
    4 million rows this is several times faster than ``DataFrame.duplicated`` on the two
    columns (issue 17), which :func:`_unique_labels` still uses to number the repeats
    when there are any.
    """
    # lazy: keeps numpy and pandas out of `fedsynth --help` start-up
    import numpy as np
    import pandas as pd

    codes = np.asarray(codes, dtype=np.int64)
    if label_codes is None:
        label_codes = pd.factorize(np.asarray(labels, dtype=object))[0]
    label_codes = np.asarray(label_codes, dtype=np.int64)
    width = int(label_codes.max()) + 1 if label_codes.size else 1
    key = codes * width + label_codes
    cells = (int(codes.max()) + 1) * width if codes.size else 0
    if cells <= 4 * codes.size + 1024:   # a dense count is cheap: one pass, no hashing
        counts = np.bincount(key, minlength=cells)
        if counts.max() <= 1:           # the usual case: no gather of 4 million counts
            return np.zeros(codes.size, dtype=bool)
        return counts[key] > 1
    return pd.Series(key).duplicated(keep=False).to_numpy()


def _positions(codes):
    """Position of every row inside its group (0, 1, ... in file order), as an int array.

    The ``cumcount`` of a groupby, computed as ``row - first row of its group`` when the
    rows of each group are contiguous (files written one analysis after another; about
    20x faster at 4 million rows, issue 17), else by pandas' ``cumcount``.
    """
    # lazy: keeps numpy and pandas out of `fedsynth --help` start-up
    import numpy as np
    import pandas as pd

    codes = np.asarray(codes, dtype=np.int64)
    n = codes.size
    starts = np.flatnonzero(np.diff(codes)) + 1
    # contiguous groups: each code appears in one run, so there are as many runs as codes
    if n and starts.size + 1 == int(codes.max()) + 1:
        first = np.concatenate(([0], starts))
        runs = np.repeat(np.arange(first.size), np.diff(np.concatenate((first, [n]))))
        return np.arange(n, dtype=np.int64) - first[runs]
    return pd.Series(codes).groupby(codes).cumcount().to_numpy()


#: Options that ``fedsynth meta --example`` may set and still be read without pandas:
#: none of them reads a column of the input beyond the example's study, yi and sei.
_LIGHT_EXAMPLE_OPTIONS = frozenset({"file", "example", "method", "test", "level", "tau2",
                                    "format", "i2_threshold", "null_value"})


def _light_example(args: argparse.Namespace) -> bool:
    """Whether ``--example`` can be read without pandas (no option needs a data frame).

    Importing pandas costs more CPU than the whole analysis of the 8-site example
    (docs/decisions/startup.md), so the bundled example is read with the csv module
    unless an option outside :data:`_LIGHT_EXAMPLE_OPTIONS` differs from its default
    (that option may read a column: the pandas path serves it).
    """
    return bool(args.example and not args.file
                and _only_options(args, _LIGHT_EXAMPLE_OPTIONS))


def _example_input() -> MetaInput:
    """The bundled seed example (study, yi, sei) as a :class:`MetaInput` without pandas.

    The file is ours and fixed, so the validation of :func:`load_input` has nothing to
    catch; ``tests/unit/test_meta_startup.py`` checks that this gives the same arrays as
    the pandas path, bit for bit.
    """
    # lazy: keeps numpy out of `fedsynth --help` start-up
    import numpy as np

    text = (resources.files("fedsynth") / "data" / "seed_example.csv").read_text("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], [r for r in rows[1:] if r]
    col = {name: [r[i] for r in body] for i, name in enumerate(header)}
    yi = np.array([float(x) for x in col["yi"]])[None, :]
    sei = np.array([float(x) for x in col["sei"]])
    labels = np.array(col["study"], dtype=object)[None, :]
    k = yi.shape[1]
    return MetaInput(yi, (sei * sei)[None, :], np.ones((1, k), dtype=bool), labels, ("",),
                     False, None, np.arange(k, dtype=np.int64)[None, :])


def load_input(args: argparse.Namespace) -> MetaInput:
    """Read and validate the CSV named on the command line (or the seed example)."""
    if _light_example(args):
        _resolve_defaults(args)
        return _example_input()
    # lazy: keeps numpy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    import pandas as pd

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    frame = _read_frame(args)
    _resolve_defaults(args)     # after a round document has given its settings
    n = len(frame)
    col = args.label or tabular.pick_column(frame, DEFAULT_LABEL_COLUMNS)
    if col:
        labels, label_codes = _object_strings(
            _text_values(frame, col, option="--label" if args.label else None))
    else:
        labels = np.arange(1, n + 1).astype(str).astype(object)
        label_codes = np.arange(n, dtype=np.int64)
    if getattr(args, "measure", None):
        # Effect sizes from raw summary data (estimators helper: fedsynth.effects).
        # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
        from fedsynth.effects.effect_sizes import escalc_frame

        given = [opt for opt, value in (("--yi", args.yi), ("--vi", args.vi),
                                        ("--sei", args.sei)) if value]
        if given:
            raise InputError(f"{given[0]}: --measure {args.measure} computes yi and vi from "
                             "raw columns; do not combine it with --yi/--vi/--sei")
        mapping = _raw_mapping(args)
        try:
            effect_sizes = escalc_frame(_mapped_frame(frame, mapping), args.measure,
                                        labels=list(labels), add=args.add,
                                        to=args.to, drop00=args.drop00,
                                        vtype=args.vtype)
        except InputError as error:
            raise InputError(_name_user_columns(str(error), mapping)) from None
        yi, v = effect_sizes.yi, effect_sizes.vi
        dropped = ~(np.isfinite(yi) & np.isfinite(v))
        if dropped.all():
            source = frame.attrs.get("source", "the input")
            raise InputError(f"--drop00: every study of {source} has no events (or only "
                             "events) in both groups")
        if dropped.any():
            # metafor's drop00 leaves these studies out of the model (rma omits NA with a
            # warning): the same here, said on stderr
            left_out = ", ".join(printable(str(x)) for x in labels[dropped])
            print(f"fedsynth meta: --drop00 left out {int(dropped.sum())} "
                  f"stud{'y' if dropped.sum() == 1 else 'ies'} with no events (or only "
                  f"events) in both groups: {left_out}", file=sys.stderr)
            keep = ~dropped
            frame = frame.loc[keep].reset_index(drop=True)
            labels, yi, v, n = labels[keep], yi[keep], v[keep], int(keep.sum())
            label_codes = label_codes[keep]
    else:
        yi_col = args.yi or "yi"
        yi = tabular.numeric_column(frame, yi_col, option="--yi" if args.yi else None,
                                    labels=labels)
        v_col, is_se, v_opt = _variance_column(args, frame)
        v = tabular.numeric_column(frame, v_col, option=v_opt, labels=labels)
        if is_se:
            bad = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
            if bad.size:
                i = int(bad[0])
                raise InputError(
                    f"column {v_col!r}, row {tabular.row_number(frame, i)} (study "
                    f"{labels[i]!r}): standard error "
                    f"{float(v[i])!r} must be finite and > 0")
            v = v * v

    if args.by:
        groups = _text_values(frame, args.by, option="--by")
        empty = np.flatnonzero((groups == "").to_numpy(dtype=bool))
        if empty.size:
            raise InputError(f"column {args.by!r} (given by --by), row "
                             f"{tabular.row_number(frame, int(empty[0]))}: "
                             "the group is empty")
        codes, uniques = pd.factorize(groups, sort=False)
        names = tuple(str(u) for u in uniques.tolist())
    else:
        codes = np.zeros(n, dtype=np.int64)
        names = ("",)
    labels = _unique_labels(labels, codes, names, args, label_codes)
    m = len(names)
    # position of every row inside its group, so one (m, K) grid holds all analyses
    pos = _positions(codes)
    kmax = int(pos.max()) + 1
    grid_y = np.full((m, kmax), np.nan)
    grid_v = np.full((m, kmax), np.nan)
    grid_l = np.full((m, kmax), "", dtype=object)
    rows = np.full((m, kmax), -1, dtype=np.int64)
    mask = np.zeros((m, kmax), dtype=bool)
    grid_y[codes, pos] = yi
    grid_v[codes, pos] = v
    grid_l[codes, pos] = labels
    rows[codes, pos] = np.arange(n)
    mask[codes, pos] = True
    return MetaInput(grid_y, grid_v, mask, grid_l, names, bool(args.by), frame, rows)


# ---------------------------------------------------------------------------------------
# computation and output
# ---------------------------------------------------------------------------------------

def _weights_grid(args: argparse.Namespace, data: MetaInput):
    """The ``--weights`` column on the analyses' (m, K) grid (None without it)."""
    if not getattr(args, "weights", None):
        return None
    # lazy: keeps numpy and pandas out of `fedsynth --help` start-up
    import numpy as np

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    col = tabular.numeric_column(data.frame, args.weights, option="--weights")
    return np.where(data.mask, col[np.maximum(data.rows, 0)], 0.0)


def compute(args: argparse.Namespace, data: MetaInput) -> BatchPoolingResult:
    """Pool every analysis in one vectorised call."""
    # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
    from fedsynth.meta import pool

    _check_model_options(args)
    return pool(data.yi, data.vi, mask=data.mask, method=args.method, test=args.test,
                level=args.level, names=data.names, labels=data.labels,
                tau2=getattr(args, "tau2", None), weights=_weights_grid(args, data),
                weighted=not getattr(args, "unweighted", False))


def _check_model_options(args: argparse.Namespace) -> None:
    """Refuse combinations of the model options that have no meaning together."""
    if getattr(args, "mods", None) and getattr(args, "moderator", None):
        raise InputError("--mods: give the moderators either as a formula (--mods) or by "
                         "name (--moderator), not both")
    for option in ("btt", "newmods", "permutest", "profile"):
        if getattr(args, option, None) and not getattr(args, "mods", None):
            raise InputError(f"--{option}: needs --mods (a formula meta-regression)")
    if getattr(args, "transf", None) and not getattr(args, "newmods", None):
        raise InputError("--transf: needs --newmods (it back-transforms the predictions)")
    if getattr(args, "weights", None) and getattr(args, "unweighted", False):
        raise InputError("--weights: user weights and --unweighted exclude each other")
    special = [opt for opt, on in (("--tau2", getattr(args, "tau2", None) is not None),
                                   ("--weights", bool(getattr(args, "weights", None))),
                                   ("--unweighted", getattr(args, "unweighted", False)))
               if on]
    if special and (getattr(args, "diagnostics", False) or getattr(args, "moderator", None)
                    or getattr(args, "subgroup", None)
                    or getattr(args, "cumulative_by", None)):
        raise InputError(f"{special[0]}: not available with --diagnostics, --moderator, "
                         "--subgroup or --cumulative-by (use --mods for a meta-regression "
                         "with it)")
    if getattr(args, "test", None) in ("t", "adhoc") and (
            getattr(args, "diagnostics", False) or getattr(args, "subgroup", None)
            or getattr(args, "cumulative_by", None)):
        raise InputError(f"--test {args.test}: the diagnostics, subgroup and cumulative "
                         "sections support --test z or knha")


def _parse_newmods(text: str) -> list[list[float]]:
    rows = []
    for part in text.split(";"):
        try:
            rows.append([float(x) for x in part.split(",")])
        except ValueError:
            raise InputError(f"--newmods: {part!r} is not a list of numbers (rows separated "
                             "by ';', values by ',')") from None
    return rows


def _mods_extras(args: argparse.Namespace, fit) -> dict[str, Any]:
    """``--newmods`` predictions and ``--permutest`` of a ``--mods`` fit (cached per fit)."""
    cache = args.__dict__.setdefault("_mods_extras", {})
    if id(fit) in cache:
        return cache[id(fit)]
    out: dict[str, Any] = {}
    if getattr(args, "newmods", None):
        out["predict"] = fit.predict(_parse_newmods(args.newmods), transf=args.transf)
    if getattr(args, "diagnostics", False):
        out["influence"] = fit.influence()
        if fit.method != "FE" and not fit.tau2_fixed:
            out["confint"] = fit.confint()
            if fit.method in ("ML", "REML"):
                out["confint_pl"] = fit.confint(type="PL")
    if getattr(args, "permutest", None):
        if args.permutest == "exact":
            out["permutest"] = fit.permutest(exact=True, seed=args.seed)
        else:
            try:
                iters = int(args.permutest)
            except ValueError:
                raise InputError(f"--permutest: {args.permutest!r} is not a number of "
                                 "permutations (or 'exact')") from None
            out["permutest"] = fit.permutest(iter=iters, seed=args.seed)
    cache[id(fit)] = out
    return out


def _profile_plots(args: argparse.Namespace, data: MetaInput) -> list[tuple[Any, str]]:
    """``--profile OUT``: the tau² profile plot of each analysis' ``--mods`` fit."""
    if not getattr(args, "profile", None):
        return []
    _check_plot_target("--profile", args.profile)
    out = []
    for i in range(len(data.names)):
        fit = _mods_fit(args, data, i)
        out.append((fit.profile().plot(), _plot_path(args.profile, data.names[i],
                                                     data.grouped)))
    return out


def _mods_fit(args: argparse.Namespace, data: MetaInput, index: int):
    """The ``--mods`` meta-regression of analysis ``index`` (cached; None without --mods)."""
    if not getattr(args, "mods", None):
        return None
    cache = args.__dict__.setdefault("_mods", {})
    if index not in cache:
        # lazy: keeps numpy, pandas, formulaic and the statistics out of start-up
        import numpy as np

        # lazy: formulaic is imported only when a formula is given
        from fedsynth.meta.formula import model_matrix

        # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
        from fedsynth.meta.metareg import fit_rma

        sel = data.mask[index]
        rows = data.rows[index][sel]
        sub = data.frame.iloc[rows].reset_index(drop=True)
        mm = model_matrix(args.mods, sub)
        if not mm.keep.all():
            raise InputError(f"--mods: missing values in {int((~mm.keep).sum())} row(s) of "
                             f"the formula's columns; use --drop-na to leave them out")
        w = _weights_grid(args, data)
        cache[index] = fit_rma(
            data.yi[index][sel], data.vi[index][sel], mm.X, names=mm.names,
            method=args.method, test=args.test, level=args.level / 100.0,
            labels=list(data.labels[index][sel]), tau2=getattr(args, "tau2", None),
            weights=None if w is None else np.asarray(w[index][sel]),
            weighted=not getattr(args, "unweighted", False),
            btt=parse_btt(getattr(args, "btt", None)), intercept=mm.intercept)
    return cache[index]


def _extend_record(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult,
                   index: int, record: dict[str, Any]) -> None:
    """Hook for options that add keys to an analysis' JSON/CSV record (none yet)."""
    _diagnostics_record(args, data, batch, index, record)
    fit = _mods_fit(args, data, index)
    if fit is not None:
        if args.format == "csv":
            record.update({"mods": args.mods, "QM": fit.omnibus.QM if fit.omnibus else None,
                           "QMp": fit.omnibus.QMp if fit.omnibus else None,
                           "R2": fit.R2, "tau2_residual": fit.tau2})
        else:
            record["meta_regression"] = {"mods": args.mods, **fit.to_dict()}
            extras = _mods_extras(args, fit)
            record["meta_regression"].update({k: v.to_dict() for k, v in extras.items()})
    _bayes_record(args, data, index, record)
    meta_mv.extend_record(args, data, batch, index, record)


def _extra_sections(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult,
                    index: int) -> list[str]:
    """Hook for options that add text sections after an analysis' summary (none yet)."""
    sections = _analysis(args, data, batch, index).text_sections()
    fit = _mods_fit(args, data, index)
    if fit is not None:
        sections.append(f"mods = {printable(args.mods)}\n" + fit.summary())
        extras = _mods_extras(args, fit)
        if "predict" in extras:
            sections.append(f"Predicted values (newmods = {printable(args.newmods)}"
                            + (f", transf = {args.transf}" if args.transf else "") + "):\n"
                            + extras["predict"].summary())
        if "permutest" in extras:
            sections.append(extras["permutest"].summary())
        if "confint" in extras:
            sections.append("Residual heterogeneity (Q-profile CIs):\n"
                            + extras["confint"].summary())
        if "confint_pl" in extras:
            sections.append("Residual heterogeneity (profile-likelihood CIs):\n"
                            + extras["confint_pl"].summary())
        if "influence" in extras:
            sections.append("Influence diagnostics of the meta-regression:\n"
                            + extras["influence"].summary())
    return (sections + _bayes_section(args, data, index)
            + meta_mv.sections(args, data, batch, index))


def records(args: argparse.Namespace, data: MetaInput,
            batch: BatchPoolingResult) -> list[dict[str, Any]]:
    """One JSON-ready dict per analysis (reference keys; ``analysis`` first with --by)."""
    out = []
    for i, rec in enumerate(batch.to_dicts()):
        if data.grouped:
            rec = {"analysis": data.names[i], **rec}
        _extend_record(args, data, batch, i, rec)
        out.append(rec)
    return out


def render_table(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult) -> str:
    """metafor-like summaries, one per analysis."""
    parts = []
    for i in range(len(batch)):
        result: PoolingResult = batch[i]
        text = result.summary()
        extra = _extra_sections(args, data, batch, i)
        parts.append("\n\n".join([text, *extra]))
    sep = "\n\n" + "=" * 72 + "\n\n"
    return sep.join(parts)


def render_json(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult) -> str:
    """A JSON object (one analysis) or an array of objects (``--by``)."""
    recs = records(args, data, batch)
    payload = recs if data.grouped else recs[0]
    return json.dumps(payload, indent=None if data.grouped else 2, allow_nan=False)


def render_csv(args: argparse.Namespace, data: MetaInput, batch: BatchPoolingResult) -> str:
    """One CSV row per analysis; intervals split into ``_lb``/``_ub`` columns."""
    columns = _csv_columns(args, data, batch)
    if columns is not None:
        keys, text = columns
        return (_csv_text([_csv_header(keys)]) + text).rstrip("\n")
    return records_csv(records(args, data, batch))


#: Float columns of a pooled record, in :data:`fedsynth.meta.pooling.REFERENCE_KEYS` order.
_FLOAT_KEYS = frozenset({"estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2",
                         "se_tau2", "Q", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik"})
#: The flag's columns in a ``--by`` CSV row (:func:`_diagnostics_record`).
_FLAG_KEYS = ("heterogeneity_flagged", "heterogeneity_level", "heterogeneity_sites",
              "heterogeneity_reasons")


def _csv_cell(value: Any) -> str:
    """One cell as :class:`csv.writer` writes it (a constant column's text)."""
    return _csv_text([[value, ""]])[:-2]          # the cell without ",\n"


def _csv_columns(args: argparse.Namespace, data: MetaInput,
                 batch: BatchPoolingResult) -> tuple[list[str], str] | None:
    """The record keys and CSV lines of a ``--by`` batch, built column by column.

    The same text as ``_csv_rows(records(args, data, batch), keys)`` (byte for byte:
    tests/unit/test_meta_csv_columns.py) without a dict per analysis and a csv-module
    call per cell: each column of the pooled results is formatted at once
    (:func:`fedsynth.tabular.float_cells`), the flag's columns from the batch flags.
    A record at 200,000 analyses x 31 cells cost about 60% of the command's time
    (issue 17). None when an option adds record keys (bias tests, Bayes, meta-regression,
    per-analysis diagnostics: only the options of :data:`_STREAM_OPTIONS` are served) or
    when the flags are not computed in batch (one analysis): :func:`records` then
    serves.
    """
    if not data.grouped:
        return None
    cache = args.__dict__.setdefault("_columnar", {})
    if "ok" not in cache:
        cache["ok"] = _only_options(args, _STREAM_OPTIONS)
    flags = _batch_flags(args, batch) if cache["ok"] else None
    if flags is None:
        return None
    # lazy: keeps numpy and pandas out of `fedsynth --help` start-up
    import numpy as np

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular
    from fedsynth.meta.pooling import REFERENCE_KEYS

    n = len(batch)
    keys = ["analysis", *REFERENCE_KEYS, *_FLAG_KEYS]
    columns: list[list[str]] = [tabular.text_cells(list(data.names))]
    for key in REFERENCE_KEYS:
        if key in _FLOAT_KEYS:
            columns.append(tabular.float_cells(getattr(batch, key)))
        elif key in ("k", "Q_df"):      # str() of the ints (or floats) to_dicts holds
            columns.append(list(map(str, getattr(batch, key).tolist())))
        elif key.endswith("_ci"):       # to_dicts: no pair when the lower bound is missing
            lo = np.asarray(getattr(batch, f"{key}_lb"), dtype=float)
            hi = np.where(np.isfinite(lo), getattr(batch, f"{key}_ub"), np.nan)
            columns += [tabular.float_cells(lo), tabular.float_cells(hi)]
        else:                           # method, test, level: one value for the batch
            columns.append([_csv_cell(getattr(batch, key))] * n)
    items = flags.flags
    columns.append(np.where(np.asarray(flags.flagged, dtype=bool), "True", "False").tolist())
    columns.append(tabular.text_cells(["" if f.level is None else str(f.level)
                                       for f in items]))
    columns.append(tabular.text_cells([";".join(f.sites) for f in items]))
    columns.append(tabular.text_cells([" ".join(f.reasons) for f in items]))
    return keys, tabular.csv_lines(columns)


def records_csv(recs: list[dict[str, Any]]) -> str:
    """Write flat records as CSV text, one row per record.

    The header holds every key in order of first appearance; every ``*_ci`` pair is split
    into ``*_ci_lb``/``*_ci_ub`` columns.

    Shared by ``fedsynth meta --format csv`` and ``fedsynth round show --format csv``, so
    both write the same columns for the same pooled fields.
    """
    keys = list(dict.fromkeys(k for rec in recs for k in rec))
    return (_csv_text([_csv_header(keys)]) + _csv_rows(recs, keys)).rstrip("\n")


def _csv_header(keys: list[str]) -> list[str]:
    """CSV column names of record keys: each ``*_ci`` key becomes ``*_ci_lb``, ``*_ci_ub``."""
    header: list[str] = []
    for key in keys:
        header += [f"{key}_lb", f"{key}_ub"] if key.endswith("_ci") else [key]
    return header


def _csv_text(rows: Any) -> str:
    buf = io.StringIO()
    # the csv module writes None as an empty cell and floats with repr (round-trip exact)
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _csv_rows(recs: list[dict[str, Any]], keys: list[str]) -> str:
    """The CSV lines (each ending in a newline) of ``recs`` in the columns of ``keys``."""
    # column by column (one list comprehension per key, not a branch per cell): 20,000
    # analyses x 30 columns is 600,000 cells
    columns: list[list[Any]] = []
    for key in keys:
        values = [rec.get(key) for rec in recs]
        if key.endswith("_ci"):
            columns.append([None if v is None else v[0] for v in values])
            columns.append([None if v is None else v[1] for v in values])
        else:
            columns.append(values)
    return _csv_text(zip(*columns))


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv}


def _warn(batch: BatchPoolingResult) -> None:
    bad = [i for i in range(len(batch)) if not batch.converged[i]]
    for i in bad[:10]:
        name = f"analysis {batch.names[i]!r}: " if batch.names[i] else ""
        print(f"fedsynth: warning: {name}{batch.messages[i]}", file=sys.stderr)
    if len(bad) > 10:
        print(f"fedsynth: warning: {len(bad) - 10} more analyses did not converge",
              file=sys.stderr)


def _resolve_defaults(args: argparse.Namespace) -> None:
    """REML, z and 95% where neither the user nor a round document chose."""
    if getattr(args, "method", None) is None:
        args.method = "REML"
    if getattr(args, "test", None) is None:
        args.test = "z"
    if getattr(args, "level", None) is None:
        args.level = 95.0


def run(args: argparse.Namespace) -> int:
    """Read, pool, print.

    Output is built completely before anything is printed, except a ``--by`` CSV of
    more than :data:`STREAM_CHUNK` analyses, which is written chunk by chunk
    (:func:`_stream_csv`).
    """
    if args.file and _is_round_document(args.file) and not args.example:
        # a round document: its pooling settings are the defaults (load_input)
        return _finish(args, load_input(args))
    _resolve_defaults(args)
    if args.method in COUNT_METHODS:
        extra = [f"--{n}" for n, _ in RAW_OPTIONS if getattr(args, f"raw_{n}", None)]
        if extra:
            raise InputError(f"{extra[0]}: not used by --method {args.method}, which pools "
                             "the 2x2 counts (--ai, --bi, --ci, --di)")
    elif (_raw_mapping(args) and not getattr(args, "measure", None)):
        first = next(iter(_raw_mapping(args)))
        raise InputError(f"--{first}: raw columns need --measure (e.g. --measure OR), which "
                         "computes yi and vi from them as metafor's escalc")
    meta_mv.check_bias_options(args)
    mv = meta_mv.run_mv(args, _read_frame)  # --random: metafor's rma.mv
    if mv is not None:
        return mv
    rare = meta_rare.run_rare(args)         # --method MH|PETO|GLMM: the 2x2 counts
    if rare is not None:
        return rare
    return _finish(args, load_input(args))


#: Options ``fedsynth meta --by ... --format csv`` may set and still stream its output
#: chunk by chunk: each changes how analyses are read or pooled, none adds a section that
#: needs every analysis at once (plots, Bayes, meta-regression, per-analysis diagnostics).
_STREAM_OPTIONS = frozenset({
    "file", "yi", "vi", "sei", "label", "measure", "add", "to", "drop00", "vtype", "by",
    "sep", "decimal", "drop_na", "method", "test", "level", "tau2", "weights", "unweighted",
    "format", "i2_threshold", "null_value", *(f"raw_{n}" for n, _ in RAW_OPTIONS)})

#: Analyses per streamed chunk: large enough that the vectorised pooling and flag work
#: dominates the per-chunk overhead, small enough that the records of one chunk (Python
#: dicts, about 2 KB per analysis) stay a few tens of MB.
STREAM_CHUNK = 16_384


def _only_options(args: argparse.Namespace, allowed: frozenset[str]) -> bool:
    """Whether every option outside ``allowed`` still has its default value."""
    defaults = argparse.ArgumentParser(add_help=False)
    add_arguments(defaults)
    return all(name in allowed or getattr(args, name, None) == value
               for name, value in vars(defaults.parse_args([])).items())


def _streams(args: argparse.Namespace, data: MetaInput) -> bool:
    """Whether the output is written chunk by chunk (large ``--by --format csv`` runs)."""
    return (args.format == "csv" and data.grouped and len(data.names) > STREAM_CHUNK
            and _only_options(args, _STREAM_OPTIONS))


def _chunk(data: MetaInput, start: int, stop: int) -> MetaInput:
    """Analyses ``start:stop`` of ``data`` (rows of the analyses are independent)."""
    return MetaInput(data.yi[start:stop], data.vi[start:stop], data.mask[start:stop],
                     data.labels[start:stop], data.names[start:stop], data.grouped,
                     data.frame, data.rows[start:stop])


def _stream_csv(args: argparse.Namespace, data: MetaInput) -> int:
    """Pool, flag and write ``STREAM_CHUNK`` analyses at a time (issue 17).

    Every row of the (m, K) grid is pooled and flagged on its own (per-row convergence
    masks; the flag's refits are rows of their own), so a chunk's results equal those of
    the whole batch (to the last bit or two that numpy's SIMD loops give differently to
    the same element at another position; tests/unit/test_meta_stream.py); peak memory is one
    chunk's records instead of all of them. Non-convergence warnings go to stderr as each
    chunk is pooled.
    """
    _check_model_options(args)
    out = sys.stdout
    keys: list[str] | None = None
    for start in range(0, len(data.names), STREAM_CHUNK):
        part = _chunk(data, start, start + STREAM_CHUNK)
        for cache in ("_flags", "_analyses"):
            args.__dict__.pop(cache, None)
        batch = compute(args, part)
        _warn(batch)
        columns = _csv_columns(args, part, batch)
        if columns is not None:
            chunk_keys, text = columns
        else:       # a chunk of one analysis (flagged per analysis): the records
            recs = records(args, part, batch)
            chunk_keys = list(recs[0])
            if any(rec.keys() != recs[0].keys() for rec in recs):
                raise RuntimeError("streamed CSV records differ in their keys")
            text = _csv_rows(recs, chunk_keys)
        if keys is None:
            keys = chunk_keys
            out.write(_csv_text([_csv_header(keys)]))
        elif chunk_keys != keys:
            raise RuntimeError("streamed CSV records changed their keys between chunks")
        out.write(text)
    out.flush()
    return 0


def _finish(args: argparse.Namespace, data: MetaInput) -> int:
    """Pool the analyses read, render them, write the plots, print."""
    if _streams(args, data):
        return _stream_csv(args, data)
    batch = compute(args, data)
    text = RENDERERS[args.format](args, data, batch)
    figures = _plots(args, data, batch) + _profile_plots(args, data)
    if figures:
        # lazy: keeps scipy and numpy out of `fedsynth --help` start-up
        from fedsynth.plots import save_figure

        for fig, path in figures:
            save_figure(fig, path)
    _warn(batch)
    print(text)
    return 0


COMMANDS = [Command(("meta",), "meta-analysis of effect sizes in a CSV file (like metafor::rma)",
                    add_arguments, run, description=DESCRIPTION)]
