"""``fedsynth meta`` options for rma.mv, cluster-robust inference and the bias tools.

* ``--random FORMULA`` (repeatable), ``--struct``, ``--V FILE.csv``: the multilevel /
  multivariate model of :func:`fedsynth.meta.mv.rma_mv` on the CSV's columns
  (:func:`run_mv`; ``meta`` hands over to it before its own pooling).
* ``--robust COL [--cr2]``: cluster-robust tests (:func:`fedsynth.meta.robust.robust`) of
  the rma.mv fit, or of the ordinary pooled / meta-regression fit.
* ``--fsn``, ``--regtest``, ``--trimfill``, ``--hc``, ``--selmodel``: the small-study and
  selection-model tools of :mod:`fedsynth.meta.bias`, printed after each analysis and
  added to its JSON record under their own keys.

The statistics are imported inside the functions: this module is imported to build the
parser of every command (see fedsynth/cli/commands/meta.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from fedsynth.errors import InputError

#: metafor's names of the fail-safe N types, regtest predictors and models.
FSN_TYPES = ("Rosenthal", "Orwin", "Rosenberg")
REGTEST_PREDICTORS = ("sei", "vi", "ni", "ninv", "sqrtni", "sqrtninv")
REGTEST_MODELS = ("rma", "lm")
TRIMFILL_ESTIMATORS = ("L0", "R0", "Q0")
SELMODEL_TYPES = {"step": "stepfun", "stepfun": "stepfun", "beta": "beta"}
STRUCT_CHOICES = ("CS", "HCS", "UN", "DIAG", "ID")
MV_METHOD_CHOICES = ("REML", "ML")

EXAMPLES = """\
  fedsynth meta konstantopoulos2011.csv --random "~ 1 | district/school"
  fedsynth meta konstantopoulos2011.csv --random "~ 1 | district/school" --robust district --cr2
  fedsynth meta berkey1998.csv --random "~ outcome | trial" --struct UN --V V.csv \\
      --moderator is_AL --moderator is_PD --no-intercept
  fedsynth meta bcg.csv --measure RR --ai tpos --bi tneg --ci cpos --di cneg \\
      --fsn Orwin --regtest --regtest-predictor vi --trimfill --estimator R0 --hc \\
      --selmodel step --steps 0.025 1
"""


def add_mv_options(parser: argparse.ArgumentParser) -> None:
    """``--random``, ``--struct``, ``--V``, ``--robust``, ``--cr2``, ``--no-intercept``."""
    group = parser.add_argument_group(
        "multilevel and multivariate models (metafor's rma.mv), cluster-robust inference",
        "random effects by formula on the CSV's columns; cluster-robust (sandwich) tests "
        "as metafor's robust()")
    group.add_argument("--random", metavar="FORMULA", action="append", default=None,
                       help="random effects, e.g. '~ 1 | district/school' (one variance "
                            "per level) or '~ outcome | trial' (correlated effects, see "
                            "--struct); repeat for several terms")
    group.add_argument("--struct", type=str.upper, choices=STRUCT_CHOICES, default="CS",
                       help="covariance structure of an '~ inner | outer' term (default: CS)")
    group.add_argument("--V", metavar="FILE.csv", default=None, dest="V",
                       help="the k x k within-study covariance matrix (a CSV of numbers, "
                            "rows in the order of the data; a header row and a first "
                            "column of labels are skipped) instead of --vi/--sei")
    group.add_argument("--no-intercept", action="store_true",
                       help="with --random: no intercept in the design (--moderator "
                            "columns only, as metafor's mods = ~ x - 1)")
    group.add_argument("--robust", metavar="COL", default=None,
                       help="cluster-robust tests with the clusters in column COL "
                            "(metafor's robust(): CR1, t tests with n - p df)")
    group.add_argument("--cr2", action="store_true",
                       help="with --robust: clubSandwich's CR2 estimator, Satterthwaite df "
                            "and the HTZ omnibus test (robust(clubSandwich = TRUE))")


def add_bias_options(parser: argparse.ArgumentParser) -> None:
    """The small-study and selection-model tools of :mod:`fedsynth.meta.bias`."""
    group = parser.add_argument_group(
        "small-study and bias tools (metafor's fsn, regtest, trimfill, hc, selmodel)")
    group.add_argument("--fsn", metavar="TYPE", type=_fsn_type, default=None,
                       help="fail-safe N: Rosenthal, Orwin or Rosenberg")
    group.add_argument("--regtest", action="store_true",
                       help="regression test for funnel plot asymmetry (Egger)")
    group.add_argument("--regtest-predictor", choices=REGTEST_PREDICTORS, default="sei",
                       help="regtest's predictor (default: sei; ni, ninv, sqrtni, "
                            "sqrtninv need --ni COL)")
    group.add_argument("--regtest-model", choices=REGTEST_MODELS, default="rma",
                       help="regtest's model: rma (default) or lm (weighted regression "
                            "with multiplicative dispersion)")
    group.add_argument("--trimfill", action="store_true", help="trim-and-fill")
    group.add_argument("--estimator", type=str.upper, choices=TRIMFILL_ESTIMATORS,
                       default="L0", help="trim-and-fill estimator (default: L0)")
    group.add_argument("--side", choices=("left", "right"), default=None,
                       help="side of the missing studies (default: estimated as metafor)")
    group.add_argument("--hc", action="store_true",
                       help="Henmi-Copas confidence interval")
    group.add_argument("--selmodel", metavar="TYPE", type=_selmodel_type, default=None,
                       help="selection model: step (step function, with --steps) or beta")
    group.add_argument("--steps", metavar="P", type=float, nargs="+", default=None,
                       help="p-value cut points of --selmodel step, ending with 1 (e.g. "
                            "0.025 1)")
    group.add_argument("--alternative", choices=("greater", "less", "two.sided"),
                       default="greater",
                       help="--selmodel: direction of the one-sided p-values (default: "
                            "greater)")


def _fsn_type(text: str) -> str:
    for name in FSN_TYPES:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"unknown type {text!r} (known: {', '.join(FSN_TYPES)})")


def _selmodel_type(text: str) -> str:
    try:
        return SELMODEL_TYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown type {text!r} (known: step, beta)") from None


# ---------------------------------------------------------------------------------------
# bias tools, per analysis of the ordinary pipeline
# ---------------------------------------------------------------------------------------

def bias_requested(args: argparse.Namespace) -> bool:
    """Whether any bias tool was asked for."""
    return bool(getattr(args, "fsn", None) or getattr(args, "regtest", False)
                or getattr(args, "trimfill", False) or getattr(args, "hc", False)
                or getattr(args, "selmodel", None))


def check_bias_options(args: argparse.Namespace) -> None:
    """Refuse options that need another one, before any work is done."""
    if getattr(args, "steps", None) is not None and getattr(args, "selmodel", None) != "stepfun":
        raise InputError("--steps: only used by --selmodel step")
    if getattr(args, "selmodel", None) == "stepfun" and not getattr(args, "steps", None):
        raise InputError("--selmodel step: give the p-value cut points with --steps "
                         "(e.g. --steps 0.025 1)")
    if getattr(args, "side", None) and not getattr(args, "trimfill", False):
        raise InputError("--side: only used by --trimfill")
    if getattr(args, "estimator", "L0") != "L0" and not getattr(args, "trimfill", False):
        raise InputError("--estimator: only used by --trimfill")
    if (getattr(args, "regtest_predictor", "sei") != "sei"
            or getattr(args, "regtest_model", "rma") != "rma") and not getattr(
                args, "regtest", False):
        raise InputError("--regtest-predictor/--regtest-model: only used by --regtest")
    if getattr(args, "cr2", False) and not getattr(args, "robust", None):
        raise InputError("--cr2: only used with --robust COL")


def bias_results(args: argparse.Namespace, data: Any, index: int) -> dict[str, Any]:
    """The bias tools asked for, fitted to analysis ``index`` (name -> result)."""
    if not bias_requested(args):
        return {}
    # lazy: keeps numpy and scipy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: the statistics (numpy, scipy, pandas) stay out of `fedsynth --help`
    from fedsynth.meta import bias
    from fedsynth.tabular import numeric_column

    mask = np.asarray(data.mask[index], dtype=bool)
    yi = np.asarray(data.yi[index], dtype=float)[mask]
    vi = np.asarray(data.vi[index], dtype=float)[mask]
    level = args.level / 100
    method = args.method
    out: dict[str, Any] = {}
    if args.fsn:
        out["fsn"] = bias.fsn(yi, vi, type=args.fsn)
    if args.regtest:
        ni = None
        if args.regtest_predictor in ("ni", "ninv", "sqrtni", "sqrtninv"):
            column = getattr(args, "raw_ni", None)
            if not column:
                raise InputError(f"--regtest-predictor {args.regtest_predictor}: name the "
                                 "sample-size column with --ni COL")
            rows = np.asarray(data.rows[index])[mask]
            ni = numeric_column(data.frame, column, option="--ni")[rows]
        out["regtest"] = bias.regtest(yi, vi, ni=ni, model=args.regtest_model,
                                      predictor=args.regtest_predictor, method=method,
                                      test=args.test, level=level)
    if args.trimfill:
        out["trimfill"] = bias.trimfill(yi, vi, estimator=args.estimator, side=args.side,
                                        method=method, level=level)
    if args.hc:
        out["hc"] = bias.hc(yi, vi, method=method, level=level)
    if args.selmodel:
        out["selmodel"] = bias.selmodel(yi, vi, type=args.selmodel, steps=args.steps,
                                        alternative=args.alternative, level=level)
    return out


def robust_of_analysis(args: argparse.Namespace, data: Any, batch: Any,
                       index: int) -> Any | None:
    """``--robust COL`` on the ordinary (rma.uni) fit of analysis ``index``."""
    if not getattr(args, "robust", None):
        return None
    # lazy: keeps numpy and scipy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: the statistics (numpy, scipy, pandas) stay out of `fedsynth --help`
    from fedsynth.meta.metareg import fit_rma
    from fedsynth.meta.robust import robust
    from fedsynth.tabular import numeric_column, require_columns

    mask = np.asarray(data.mask[index], dtype=bool)
    rows = np.asarray(data.rows[index])[mask]
    require_columns(data.frame, [args.robust], option="--robust")
    cluster = [str(v) for v in data.frame[args.robust].to_numpy()[rows]]
    moderators = getattr(args, "moderator", None) or []
    if moderators:
        yi = np.asarray(data.yi[index], dtype=float)[mask]
        vi = np.asarray(data.vi[index], dtype=float)[mask]
        cols = [numeric_column(data.frame, c, option="--moderator")[rows] for c in moderators]
        X = np.column_stack([np.ones(len(yi)), *cols])
        fit: Any = fit_rma(yi, vi, X, names=["intrcpt", *moderators], method=args.method,
                           test=args.test, level=args.level / 100)
    else:
        fit = batch[index]
    return robust(fit, cluster, clubSandwich=args.cr2)


def sections(args: argparse.Namespace, data: Any, batch: Any, index: int) -> list[str]:
    """Text sections of the bias tools and ``--robust`` for analysis ``index``."""
    out = [result.summary() for result in bias_results(args, data, index).values()]
    rob = robust_of_analysis(args, data, batch, index)
    if rob is not None:
        out.append("Cluster-robust inference (--robust " + args.robust + ")\n\n"
                   + rob.summary())
    return out


def extend_record(args: argparse.Namespace, data: Any, batch: Any, index: int,
                  record: dict[str, Any]) -> None:
    """JSON keys ``fsn``, ``regtest``, ``trimfill``, ``hc``, ``selmodel``, ``robust``.

    With ``--format csv`` the scalar entries become flat columns ``NAME_KEY`` (one number
    per cell; vectors are taken element-wise for a one-coefficient ``robust``).
    """
    results = dict(bias_results(args, data, index))
    rob = robust_of_analysis(args, data, batch, index)
    if rob is not None:
        results["robust"] = rob
    for name, result in results.items():
        values = result.to_dict()
        if args.format != "csv":
            record[name] = values
            continue
        for key, value in values.items():
            if isinstance(value, list) and len(value) == 1 and not isinstance(
                    value[0], (list, dict)):
                value = value[0]
            if value is None or isinstance(value, (str, bool, int, float)):
                record[f"{name}_{key}"] = value


# ---------------------------------------------------------------------------------------
# rma.mv
# ---------------------------------------------------------------------------------------

#: Options of the ordinary pipeline that the rma.mv path does not combine with.
_NOT_WITH_RANDOM = (("by", "--by"), ("subgroup", "--subgroup"),
                    ("diagnostics", "--diagnostics"), ("cumulative_by", "--cumulative-by"),
                    ("bayes", "--bayes"), ("forest", "--forest"), ("funnel", "--funnel"),
                    ("plot", "--plot"), ("measure", "--measure"), ("example", "--example"))


def run_mv(args: argparse.Namespace, read_frame: Any) -> int | None:
    """Run ``fedsynth meta --random ...``; ``None`` when ``--random`` was not given.

    Parameters
    ----------
    args
        The parsed options.
    read_frame
        ``meta``'s CSV reader (separator, decimal mark and size checks as for every
        ``fedsynth meta`` input).
    """
    if not getattr(args, "random", None):
        for option, flag in (("V", "--V"), ("no_intercept", "--no-intercept")):
            if getattr(args, option, None):
                raise InputError(f"{flag}: only used with --random FORMULA")
        if getattr(args, "struct", "CS") != "CS":
            raise InputError("--struct: only used with --random '~ inner | outer'")
        return None
    for option, flag in _NOT_WITH_RANDOM:
        if getattr(args, option, None):
            raise InputError(f"{flag}: not available with --random (rma.mv)")
    if bias_requested(args):
        raise InputError("--random: the bias tools (--fsn, --regtest, --trimfill, --hc, "
                         "--selmodel) are for the ordinary model, not rma.mv")
    if args.method not in MV_METHOD_CHOICES:
        raise InputError(f"--method {args.method}: rma.mv estimates by REML or ML")
    if args.test not in ("z", "t"):
        raise InputError(f"--test {args.test}: rma.mv tests with z or t")
    # lazy: keeps numpy, pandas and scipy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: the statistics (numpy, scipy, pandas) stay out of `fedsynth --help`
    from fedsynth import tabular
    from fedsynth.meta.mv import rma_mv
    from fedsynth.meta.robust import robust

    frame = read_frame(args)
    k = len(frame)
    yi_col = args.yi or "yi"
    yi = tabular.numeric_column(frame, yi_col, option="--yi" if args.yi else None)
    if args.V:
        if args.vi or args.sei:
            raise InputError("--V: give either the covariance matrix (--V) or the variances "
                             "(--vi/--sei), not both")
        V: Any = read_matrix(args.V, k)
    else:
        if args.vi and args.sei:
            raise InputError(f"--vi {args.vi!r} and --sei {args.sei!r}: give only one of them")
        if args.sei:
            V = tabular.numeric_column(frame, args.sei, option="--sei") ** 2
        else:
            V = tabular.numeric_column(frame, args.vi or "vi",
                                       option="--vi" if args.vi else None)
    moderators = getattr(args, "moderator", None) or []
    cols = [tabular.numeric_column(frame, c, option="--moderator") for c in moderators]
    intercept = not args.no_intercept
    if not intercept and not cols:
        raise InputError("--no-intercept: needs at least one --moderator column")
    X = np.column_stack(([np.ones(k)] if intercept else []) + cols)
    names = (["intrcpt"] if intercept else []) + list(moderators)
    label = args.label if args.label in frame.columns else None
    random = args.random if len(args.random) > 1 else args.random[0]
    fit = rma_mv(yi, V, mods=X, names=names, random=random, struct=args.struct,
                 method=args.method, test=args.test, level=args.level, data=frame,
                 slab=frame[label].astype(str).tolist() if label else None)
    i2 = fit.i2() if fit.struct is None else None
    rob = None
    if args.robust:
        tabular.require_columns(frame, [args.robust], option="--robust")
        rob = robust(fit, [str(v) for v in frame[args.robust]], clubSandwich=args.cr2)
    if args.format == "json":
        payload: dict[str, Any] = fit.to_dict()
        if i2 is not None:
            payload["I2"] = i2.to_dict()
        if rob is not None:
            payload["robust"] = rob.to_dict()
        text = json.dumps(payload, indent=2, allow_nan=False)
    elif args.format == "csv":
        text = _coefficients_csv(fit, rob)
    else:
        parts = [fit.summary()]
        if i2 is not None:
            parts.append("Multilevel I^2 (metafor FAQ):\n" + i2.summary())
        if rob is not None:
            parts.append(f"Cluster-robust inference (--robust {args.robust}):\n\n"
                         + rob.summary())
        text = "\n\n".join(parts)
    if not fit.converged:
        print(f"fedsynth: warning: {fit.message}", file=sys.stderr)
    print(text)
    return 0


def _coefficients_csv(fit: Any, rob: Any | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["coefficient", "estimate", "se", "zval", "pval", "ci_lb", "ci_ub"]
    if rob is not None:
        header += ["robust_se", "robust_tval", "robust_df", "robust_pval", "robust_ci_lb",
                   "robust_ci_ub"]
    writer.writerow(header)
    for j, name in enumerate(fit.names):
        row = [name, *(float(getattr(fit, key)[j]) for key in ("beta", "se", "zval", "pval",
                                                                "ci_lb", "ci_ub"))]
        if rob is not None:
            row += [float(rob.se[j]), float(rob.zval[j]), float(rob.dfs[j]),
                    float(rob.pval[j]), float(rob.ci_lb[j]), float(rob.ci_ub[j])]
        writer.writerow(row)
    return buf.getvalue().rstrip("\n")


def read_matrix(path: str, k: int) -> Any:
    """A ``k x k`` numeric matrix from a CSV file (optional header row and label column).

    Raises
    ------
    fedsynth.errors.InputError
        An unreadable file, a cell that is not a number (named by row and column), or a
        matrix that is not ``k x k``.
    """
    # lazy: keeps numpy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: the statistics (numpy, scipy, pandas) stay out of `fedsynth --help`
    from fedsynth.tabular import check_csv_size

    check_csv_size(path, label="--V")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [r for r in csv.reader(handle) if any(c.strip() for c in r)]
    except OSError as exc:
        raise InputError(f"--V: cannot read {path!r}: {exc.strerror}") from None
    if not rows:
        raise InputError(f"--V: {path!r} is empty")

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    if any(number(c) is None for c in rows[0][1:]):
        rows = rows[1:]                                  # a header row
    if rows and (number(rows[0][0]) is None or len(rows[0]) == k + 1):
        rows = [r[1:] for r in rows]                     # a column of labels
    if len(rows) != k or any(len(r) != k for r in rows):
        shape = f"{len(rows)} x {max((len(r) for r in rows), default=0)}"
        raise InputError(f"--V: {path!r} holds a {shape} matrix; the data have {k} rows, so "
                         f"a {k} x {k} matrix is needed")
    out = np.empty((k, k))
    for i, r in enumerate(rows):
        for j, cell in enumerate(r):
            value = number(cell)
            if value is None:
                raise InputError(f"--V: row {i + 1}, column {j + 1} of {path!r} is not a "
                                 f"number ({cell!r})")
            out[i, j] = value
    return out
