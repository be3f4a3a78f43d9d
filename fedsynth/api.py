"""The Python API for people who never run a federation: data frames in, results out.

Why
---
A statistician with a table of published effect sizes should not need to know that the
federation's coordinator pools arrays of shape ``(analyses, sites)``. These functions take
a :class:`pandas.DataFrame` and metafor's argument names (``yi``, ``vi``, ``sei``, ``ai``,
``n1i``, ``method``, ``test``, ``level``, ``add``, ``to``, ``drop00``, ``mods``), so a
metafor user can move over without relearning (Viechtbauer 2010, "Conducting
meta-analyses in R with the metafor package", J. Stat. Softw. 36(3)). Each argument that
names data accepts a column name of ``data`` or the values themselves.

They are thin: the statistics are those of :mod:`fedsynth.meta` (one tau² engine for
pooling, meta-regression and the diagnostics) and :mod:`fedsynth.effects`, checked
against R in ``tests/reference``. ``import fedsynth`` loads this module only when one of
its functions is first used (see ``fedsynth/__init__.py``).

Missing values follow metafor's default ``na.action = "na.omit"``: a study with a missing
effect size, variance or moderator is left out with a warning naming it (``na_action=
"fail"`` makes it an error instead). A value that is present but not a number, a
variance that is not positive, or an unknown column is always an error that names the
column, the row and the value.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.effects.effect_sizes import escalc as _escalc
from fedsynth.errors import InputError
from fedsynth.meta.bayes import BayesBatchResult, BayesResult, bayes_pool
from fedsynth.meta.formula import is_formula, model_matrix
from fedsynth.meta.metareg import MetaRegressionResult, anova, design_matrix, fit_rma, predict
from fedsynth.meta.mv import RmaMvResult, bldiag, rma_mv, vcalc
from fedsynth.meta.permutation import permutest
from fedsynth.meta.pooling import BatchPoolingResult, PoolingResult, pool
from fedsynth.meta.pooling import meta_analysis as _meta_analysis
from fedsynth.meta.robust import RobustResult, robust
from fedsynth.meta.subgroups import SubgroupResult, subgroup_analysis
from fedsynth.vocabulary import (
    DEFAULT_LEVEL,
    DEFAULT_METHOD,
    DEFAULT_PRIOR,
    DEFAULT_PRIOR_SCALE,
    DEFAULT_TEST,
    MEASURE_INFO,
    check_measure,
)

__all__ = ["meta_analysis", "escalc", "meta_regression", "subgroups", "bayes_meta_analysis",
           "example_data", "anova", "permutest", "predict", "rma_mv", "bldiag", "vcalc",
           "RmaMvResult", "robust", "RobustResult", "DEFAULT_LABEL_COLUMNS"]

#: Label columns used when ``label`` is not given (the first one present wins), as the
#: command line's ``--label``.
DEFAULT_LABEL_COLUMNS = ("study", "label", "site", "name", "author", "trial")
_NA_ACTIONS = ("omit", "fail")
#: Example data sets shipped with the package (``fedsynth/data``).
_EXAMPLES = {"bcg": "bcg.csv", "seed": "seed_example.csv",
             "konstantopoulos2011": "konstantopoulos2011.csv",
             "berkey1998": "berkey1998.csv", "assink2016": "assink2016.csv"}


# ---------------------------------------------------------------------------------------
# reading columns or values
# ---------------------------------------------------------------------------------------

def _frame(data: Any) -> pd.DataFrame | None:
    if data is None or isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pd.DataFrame(dict(data))
    raise InputError(f"data: expected a pandas DataFrame (or a mapping of columns), got "
                     f"{type(data).__name__}")


def _raw(data: pd.DataFrame | None, spec: Any, name: str) -> tuple[np.ndarray, str]:
    """The values ``spec`` names or is, with a description for messages.

    The values ``spec`` names (a column of ``data``) or is, as an object array, and a
    description for messages.
    """
    if isinstance(spec, str):
        if data is None:
            raise InputError(f"{name}: {spec!r} names a column, but no data frame was given "
                             "(pass data=..., or the values themselves)")
        if spec not in data.columns:
            raise InputError(f"{name}: column {spec!r} not found; available columns: "
                             f"{', '.join(map(repr, data.columns))}")
        return data[spec].to_numpy(dtype=object), f"column {spec!r}"
    values = np.asarray(spec.to_numpy() if isinstance(spec, pd.Series) else spec,
                        dtype=object)
    if values.ndim != 1:
        raise InputError(f"{name}: expected one value per study (1-D), got shape "
                         f"{values.shape}")
    if data is not None and values.size != len(data):
        raise InputError(f"{name}: {values.size} values for the {len(data)} rows of data")
    return values, name


def _missing(values: np.ndarray) -> np.ndarray:
    return np.array([x is None or (isinstance(x, float) and np.isnan(x))
                     or (isinstance(x, str) and not x.strip()) for x in values], dtype=bool)


def _numeric(data: pd.DataFrame | None, spec: Any, name: str,
             labels: np.ndarray | None = None) -> np.ndarray:
    """The numbers ``spec`` names or is, checked value by value.

    Numbers (NaN where missing); a value that is present but not a number is an
    :class:`InputError` naming the column, row and value.
    """
    raw, where = _raw(data, spec, name)
    miss = _missing(raw)
    out = np.full(raw.size, np.nan)
    for i in np.flatnonzero(~miss):
        value = raw[i]
        try:
            if isinstance(value, bool):
                raise ValueError
            out[i] = float(value)
        except (TypeError, ValueError):
            study = f" (study {labels[i]!r})" if labels is not None else ""
            raise InputError(f"{name}: {where}, row {i + 1}{study}: {value!r} is not a "
                             "number") from None
    return out


def _labels(data: pd.DataFrame | None, label: Any, n: int) -> np.ndarray:
    if label is None:
        column = next((c for c in DEFAULT_LABEL_COLUMNS
                       if data is not None and c in data.columns), None)
        if column is None:
            return np.array([str(i + 1) for i in range(n)], dtype=object)
        label = column
    raw, _ = _raw(data, label, "label")
    if raw.size != n:
        raise InputError(f"label: {raw.size} labels for {n} studies")
    return np.array(["" if m else str(x).strip() for x, m in zip(raw, _missing(raw))],
                    dtype=object)


def _effects(data: pd.DataFrame | None, yi: Any, vi: Any, sei: Any,
             label: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effect sizes, sampling variances (from ``vi`` or ``sei``) and labels."""
    if vi is not None and sei is not None:
        raise InputError(f"vi and sei: give only one of them (vi={vi!r}, sei={sei!r})")
    if vi is None and sei is None:
        if data is not None and "vi" in data.columns:
            vi = "vi"
        elif data is not None and "sei" in data.columns:
            sei = "sei"
        else:
            raise InputError("vi: no sampling variances; name the variance column with "
                             "vi=... or the standard-error column with sei=..., or pass "
                             "the values")
    if isinstance(yi, str) and data is None:
        raise InputError(f"yi: {yi!r} names a column, but no data frame was given (pass "
                         "data=..., or yi=[...] with vi=[...])")
    n = len(data) if data is not None else np.asarray(yi, dtype=object).size
    labels = _labels(data, label, n)
    y = _numeric(data, yi, "yi", labels)
    if sei is not None:
        se = _numeric(data, sei, "sei", labels)
        bad = np.flatnonzero(~np.isnan(se) & ~(np.isfinite(se) & (se > 0)))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"sei: row {i + 1} (study {labels[i]!r}): standard error "
                             f"{float(se[i])!r} must be finite and > 0")
        v = se * se
    else:
        v = _numeric(data, vi, "vi", labels)
    if y.size != v.size:
        raise InputError(f"yi and vi: lengths differ ({y.size} vs {v.size})")
    return y, v, labels


def _complete(keep: np.ndarray, labels: np.ndarray, na_action: str, what: str) -> None:
    """Warn about (or refuse) the studies with a missing value, as metafor's na.action."""
    if na_action not in _NA_ACTIONS:
        raise InputError(f"na_action: {na_action!r} is not one of {', '.join(_NA_ACTIONS)}")
    dropped = np.flatnonzero(~keep)
    if dropped.size == 0:
        return
    names = ", ".join(f"row {i + 1} ({labels[i]!r})" for i in dropped[:5])
    more = f" and {dropped.size - 5} more" if dropped.size > 5 else ""
    if na_action == "fail":
        raise InputError(f"{what}: missing value in {names}{more} (na_action='fail')")
    warnings.warn(f"{dropped.size} studies with missing values omitted from the model: "
                  f"{names}{more}", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------

def meta_analysis(data: Any = None, yi: Any = "yi", vi: Any = None, *, sei: Any = None,
                  label: Any = None, by: Any = None, method: str = DEFAULT_METHOD,
                  test: str = DEFAULT_TEST, level: float = DEFAULT_LEVEL,
                  na_action: str = "omit", weights: Any = None, weighted: bool = True,
                  tau2: float | None = None) -> PoolingResult | BatchPoolingResult:
    """Fixed- or random-effects meta-analysis of a table (metafor's ``rma``).

    Parameters
    ----------
    data : pandas.DataFrame, optional
        One row per study or site.
    yi, vi, sei
        Effect sizes and their sampling variances (``vi``) or standard errors (``sei``):
        column names of ``data`` or the values. Without ``vi`` and ``sei`` a ``vi``
        column, else a ``sei`` column, of ``data`` is used.
    label
        Study labels (a column or values); default: the first of ``study``, ``label``,
        ``site``, ``name``, ``author``, ``trial`` present, else row numbers.
    by
        A grouping column (or values): every group is pooled as its own analysis, all in
        one vectorised call; the result is then a batch (``result["group"]``,
        ``result.to_frame()``).
    method : {"REML", "FE", "DL", "HE", "HS", "SJ", "ML", "EB", "PM"}
        tau² estimator (``FE``: the fixed/common-effect model).
    test : {"z", "t", "knha", "adhoc"}
        Wald z, t with k - 1 df, Knapp-Hartung t, or Knapp-Hartung with its scale factor
        floored at 1 (``adhoc``), as metafor's ``test``.
    level : float
        Confidence level as a fraction (0.95; 95 is read as a percentage, as metafor).
    na_action : {"omit", "fail"}
        Studies with a missing effect size or variance are left out with a warning
        (metafor's default ``na.omit``), or are an error.
    weights
        User weights (a column or values; metafor's ``weights``): the estimate is
        ``sum(w y) / sum(w)``, tau² is estimated as without them.
    weighted
        ``False``: the unweighted mean (metafor's ``weighted = FALSE``).
    tau2
        Fix tau² at this value instead of estimating it (metafor's ``tau2 =``).

    Returns
    -------
    PoolingResult or BatchPoolingResult
        With ``by``, a batch with one analysis per group (in order of appearance).

    Raises
    ------
    fedsynth.errors.InputError
        An unknown column, a value that is not a number, a variance that is not positive,
        a bad option: the message names the column, the row, the study and the value.

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> res = fedsynth.meta_analysis(dat, yi="yi", vi="vi", label="author")
    >>> round(res.estimate, 4), round(res.tau2, 4), res.k
    (-0.7452, 0.3378, 13)
    >>> ci = res.confidence_interval()
    >>> round(ci.low, 4), round(ci.high, 4)
    (-1.1098, -0.3806)
    >>> batch = fedsynth.meta_analysis(dat, by="alloc", label="author")
    >>> batch.names
    ('random', 'alternate', 'systematic')
    >>> round(batch["random"].estimate, 4)
    -0.9954
    """
    frame = _frame(data)
    y, v, labels = _effects(frame, yi, vi, sei, label)
    keep = ~(np.isnan(y) | np.isnan(v))
    wts = None
    if weights is not None:
        wts = _numeric(frame, weights, "weights", labels)
        keep &= ~np.isnan(wts)
    groups = None
    if by is not None:
        raw, _ = _raw(frame, by, "by")
        missing = _missing(raw)
        keep &= ~missing
        groups = np.array([str(x).strip() for x in raw], dtype=object)
    _complete(keep, labels, na_action, "yi/vi")
    y, v, labels = y[keep], v[keep], labels[keep]
    if y.size == 0:
        raise InputError("yi: no study with both an effect size and a variance")
    if groups is None:
        if wts is None and weighted and tau2 is None:
            return _meta_analysis(y, v, labels=list(labels), method=method, test=test,
                                  level=level)
        return pool(y, v, method=method, test=test, level=level, labels=list(labels),
                    tau2=tau2, weighted=weighted,
                    weights=None if wts is None else wts[keep])[0]
    codes, names = pd.factorize(pd.Series(groups[keep]), sort=False)
    position = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    m, width = len(names), int(position.max()) + 1
    yy, vv = np.full((m, width), np.nan), np.full((m, width), np.nan)
    ll = np.full((m, width), "", dtype=object)
    mask = np.zeros((m, width), dtype=bool)
    yy[codes, position], vv[codes, position] = y, v
    ll[codes, position], mask[codes, position] = labels, True
    ww = None
    if wts is not None:
        ww = np.zeros((m, width))
        ww[codes, position] = wts[keep]
    return pool(yy, vv, mask=mask, method=method, test=test, level=level,
                names=[str(n) for n in names], labels=ll, tau2=tau2, weights=ww,
                weighted=weighted)


def escalc(measure: str, data: Any = None, *, ai: Any = None, bi: Any = None,
           ci: Any = None, di: Any = None, n1i: Any = None, n2i: Any = None,
           x1i: Any = None, x2i: Any = None, t1i: Any = None, t2i: Any = None,
           m1i: Any = None, m2i: Any = None, sd1i: Any = None, sd2i: Any = None,
           xi: Any = None, mi: Any = None, ri: Any = None, ni: Any = None,
           sdi: Any = None, add: float | None = None, to: str = "only0",
           drop00: bool = False, vtype: str | Sequence[str] = "LS",
           var_names: tuple[str, str] = ("yi", "vi")) -> pd.DataFrame:
    """Effect sizes and sampling variances from summary data (metafor's ``escalc``).

    Parameters
    ----------
    measure : str
        The effect-size measure, one of :data:`fedsynth.vocabulary.ESCALC_MEASURES`:
        2x2 tables ``OR, RR, RD, AS, PHI, OR2D``; two-group means ``MD, SMD, SMDH, ROM,
        CVR, VR``; one mean ``MN``; paired designs ``MC, SMCC, SMCR``; correlations
        ``COR, UCOR, ZCOR``; incidence rates ``IRR, IRD, IRSD``; proportions ``PR, PLN,
        PLO, PFT`` (metafor's definitions, see :mod:`fedsynth.effects.effect_sizes`).
    data : pandas.DataFrame, optional
        The studies; the result is a copy of it with the two new columns.
    ai, bi, ci, di, n1i, n2i, x1i, x2i, t1i, t2i, m1i, m2i, sd1i, sd2i, xi, mi, ri, ni, sdi
        The summary data as metafor names them (column names of ``data`` or values):
        2x2 tables ``ai, bi, ci, di`` (or ``ai, n1i, ci, n2i``); means ``m1i, sd1i, n1i,
        m2i, sd2i, n2i`` (``VR`` needs only the SDs and sizes); one mean ``mi, sdi, ni``;
        paired designs ``m1i, m2i, sd1i, sd2i, ni, ri`` (``SMCR``: no ``sd2i``);
        correlations ``ri, ni``; rates ``x1i, t1i, x2i, t2i``; proportions ``xi, ni`` (or
        ``xi, mi``, the non-events, as metafor).
    add, to
        Continuity correction: ``add`` is added to the cells of the tables chosen by
        ``to``: ``"only0"`` (tables with a zero cell, default), ``"all"``, ``"if0all"``
        (all tables if any has a zero cell) or ``"none"``. ``add=None`` is metafor's
        default: 1/2, but 0 for ``AS``, ``PHI``, ``PFT`` and ``IRSD``.
    drop00
        Studies with no events (or only events) in both groups get missing values.
    vtype
        metafor's sampling-variance estimator (``"LS"`` default; ``"UB"``, ``"LS2"``,
        ``"HO"``, ``"ST"``, ``"CS"``, ``"AV"``, ``"AVHO"`` where the measure has them), one
        value or one per study.
    var_names
        Names of the two new columns.

    Returns
    -------
    pandas.DataFrame
        ``data`` (or an empty frame) with the columns ``yi`` and ``vi``. A study whose
        effect size is undefined (a zero cell with ``to="none"``, ``drop00``) or whose
        summary data are missing gets NaN, as metafor gives NA; ``meta_analysis`` omits
        such studies with a warning.

    Examples
    --------
    >>> import fedsynth
    >>> bcg = fedsynth.example_data("bcg")
    >>> dat = fedsynth.escalc("RR", bcg, ai="tpos", bi="tneg", ci="cpos", di="cneg")
    >>> dat[["author", "yi", "vi"]].head(3).round(4)
                 author      yi      vi
    0           Aronson -0.8893  0.3256
    1  Ferguson & Simes -1.5854  0.1946
    2   Rosenthal et al -1.3481  0.4154
    """
    key = check_measure(measure)
    frame = _frame(data)
    if not (isinstance(var_names, (tuple, list)) and len(var_names) == 2
            and all(isinstance(n, str) and n for n in var_names)):
        raise InputError(f"var_names: expected two column names, got {var_names!r}")
    given = {"ai": ai, "bi": bi, "ci": ci, "di": di, "n1i": n1i, "n2i": n2i, "x1i": x1i,
             "x2i": x2i, "t1i": t1i, "t2i": t2i, "m1i": m1i, "m2i": m2i, "sd1i": sd1i,
             "sd2i": sd2i, "xi": xi, "mi": mi, "ri": ri, "ni": ni, "sdi": sdi}
    given = {k: v for k, v in given.items() if v is not None}
    columns = {k: _numeric(frame, v, k) for k, v in given.items()}
    if "mi" in columns and "ni" in columns and "xi" in columns:
        # metafor's xi, mi (events and non-events) or xi, ni: not both
        raise InputError("mi and ni: give one of them for proportions (ni = xi + mi)")
    sets = MEASURE_INFO[key].columns
    chosen = next((s for s in sets if set(s) <= set(columns)), None)
    if chosen is None:
        wanted = " or ".join(", ".join(s) for s in sets)
        raise InputError(f"escalc: measure {key} needs {wanted}; given: "
                         f"{', '.join(sorted(given)) or 'none'}")
    extra = sorted(set(columns) - set(chosen))
    if extra:
        raise InputError(f"escalc: {extra[0]!r} is not used by measure {key} (it uses "
                         f"{', '.join(chosen)})")
    n = next(iter(columns[c] for c in chosen)).size
    complete = ~np.any([np.isnan(columns[c]) for c in chosen], axis=0)
    yi = np.full(n, np.nan)
    vi = np.full(n, np.nan)
    if complete.any():
        vt: str | list[str]
        if isinstance(vtype, str):
            vt = vtype
        else:
            per_study = np.asarray(list(vtype), dtype=object)
            if per_study.size != n:
                raise InputError(f"vtype: {per_study.size} values for {n} studies")
            vt = [str(v) for v in per_study[complete]]
        res = _escalc(key, add=add, to=to, drop00=drop00, vtype=vt, undefined="nan",
                      **{c: columns[c][complete] for c in chosen})
        yi[complete], vi[complete] = res.yi, res.vi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        out = frame.copy() if frame is not None else pd.DataFrame(index=range(n))
        out[var_names[0]], out[var_names[1]] = yi, vi
    out.attrs["measure"] = key
    return out


def meta_regression(data: Any = None, yi: Any = "yi", vi: Any = None, *, sei: Any = None,
                    mods: Any = None, categorical: Sequence[str] = (), label: Any = None,
                    method: str = DEFAULT_METHOD, test: str = DEFAULT_TEST,
                    level: float = DEFAULT_LEVEL, na_action: str = "omit",
                    weights: Any = None, weighted: bool = True, tau2: float | None = None,
                    btt: Any = None, intercept: bool = True) -> MetaRegressionResult:
    """Mixed-effects meta-regression on study-level moderators (``rma(..., mods = )``).

    Parameters
    ----------
    data, yi, vi, sei, label, method, test, level, na_action
        As :func:`meta_analysis`.
    mods
        The moderators: a one-sided formula as in metafor, ``"~ year + factor(alloc)"``,
        ``"~ ablat * factor(alloc)"``, ``"~ 0 + factor(alloc)"`` (R's term order,
        treatment contrasts and column names; see :mod:`fedsynth.meta.formula`); or a
        column name, a list of column names, or a mapping ``{name: values}``: numeric
        columns enter linearly, text columns (and those named in ``categorical``) as
        treatment-coded factors against their first level in sorted order, as R's
        ``factor``.
    categorical
        Moderators to treat as factors even though their values are numbers (names, not
        formulas: write ``factor(x)`` in a formula).
    weights, weighted
        User weights (a column or values) or unweighted least squares for the
        coefficients, as metafor's ``weights`` and ``weighted``.
    tau2
        Fix the residual tau² (metafor's ``tau2 =``).
    btt
        Coefficients of the omnibus test ``fit.omnibus``: metafor's 1-based positions
        (``[3, 4]`` is R's ``btt = 3:4``) or a name pattern (``"alloc"``).
    intercept
        With names (not a formula): ``False`` drops the intercept column, as metafor's
        ``intercept = FALSE``. A formula says it itself (``~ 0 + ...``).

    Returns
    -------
    MetaRegressionResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> fit = fedsynth.meta_regression(dat, mods=["ablat", "alloc"])
    >>> fit.names
    ('intrcpt', 'ablat', 'allocrandom', 'allocsystematic')
    >>> fit.coef.round(4).tolist()
    [0.2609, -0.0294, -0.1801, 0.1461]
    >>> round(fit.R2, 2)
    58.5
    >>> fit = fedsynth.meta_regression(dat, mods="~ year + factor(alloc)", test="knha",
    ...                                btt="alloc")
    >>> fit.names
    ('intrcpt', 'year', 'factor(alloc)random', 'factor(alloc)systematic')
    >>> fit.omnibus.QMdf, round(fit.omnibus.QM, 4)
    ((2, 9), 1.0287)
    """
    frame = _frame(data)
    y, v, labels = _effects(frame, yi, vi, sei, label)
    if mods is None or (not isinstance(mods, (str, Mapping)) and len(mods) == 0):
        raise InputError("mods: at least one moderator is needed (a formula such as "
                         "'~ year + factor(alloc)', a column name, a list of names, or a "
                         "mapping of values)")
    keep = ~(np.isnan(y) | np.isnan(v))
    wts = None
    if weights is not None:
        wts = _numeric(frame, weights, "weights", labels)
        keep &= ~np.isnan(wts)
    if is_formula(mods):
        if categorical:
            raise InputError("categorical: with a formula write factor(x) instead "
                             f"(categorical={list(categorical)!r})")
        table = frame if frame is not None else pd.DataFrame(index=range(y.size))
        complete = model_matrix(mods, table).keep
        _complete(keep & complete, labels, na_action, "yi/vi/mods")
        mm = model_matrix(mods, table, keep=keep)
        rows = mm.keep
        X, names, has_int = mm.X, mm.names, mm.intercept
    else:
        if isinstance(mods, str):
            mods = [mods]
        if isinstance(mods, Mapping):
            raw = {str(k): _raw(frame, vals, f"mods[{k!r}]")[0] for k, vals in mods.items()}
        else:
            raw = {str(k): _raw(frame, k, "mods")[0] for k in mods}
        for values in raw.values():
            keep &= ~_missing(values)
        _complete(keep, labels, na_action, "yi/vi/mods")
        rows = keep
        moderators = {name: list(values[keep]) for name, values in raw.items()}
        X, names = design_matrix(moderators, int(keep.sum()), categorical)
        has_int = bool(intercept)
        if not intercept:
            X, names = X[:, 1:], names[1:]
    return fit_rma(y[rows], v[rows], X, names=names, method=method, test=test, level=level,
                   labels=list(labels[rows]), weights=None if wts is None else wts[rows],
                   weighted=weighted, tau2=tau2, btt=btt, intercept=has_int)


def subgroups(data: Any = None, yi: Any = "yi", vi: Any = None, *, sei: Any = None,
              group: Any = None, label: Any = None, method: str = DEFAULT_METHOD,
              level: float = DEFAULT_LEVEL, na_action: str = "omit") -> SubgroupResult:
    """Subgroup analysis: a random-effects fit per level of ``group`` and the tests between them.

    Subgroup analysis: a random-effects fit per level of ``group``, the test of
    subgroup differences, and the mixed-effects model with a common tau².

    Parameters
    ----------
    group
        The grouping column (or values).
    data, yi, vi, sei, label, method, level, na_action
        As :func:`meta_analysis`.

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> sg = fedsynth.subgroups(dat, group="alloc", label="author")
    >>> [(g.group, g.k, round(g.estimate, 4)) for g in sg.groups]
    [('alternate', 2, -0.6171), ('random', 7, -0.9954), ('systematic', 4, -0.4295)]
    >>> round(sg.Q_between_pval, 4)
    0.4404
    """
    frame = _frame(data)
    if group is None:
        raise InputError("group: name the grouping column (or pass the values)")
    y, v, labels = _effects(frame, yi, vi, sei, label)
    raw, _ = _raw(frame, group, "group")
    keep = ~(np.isnan(y) | np.isnan(v) | _missing(raw))
    _complete(keep, labels, na_action, "yi/vi/group")
    variable = group if isinstance(group, str) else "group"
    return subgroup_analysis(y[keep], v[keep], [str(x).strip() for x in raw[keep]],
                             labels=list(labels[keep]), variable=variable, method=method,
                             level=level)


def bayes_meta_analysis(data: Any = None, yi: Any = "yi", vi: Any = None, *,
                        sei: Any = None, label: Any = None, by: Any = None,
                        prior: str = DEFAULT_PRIOR, scale: float = DEFAULT_PRIOR_SCALE,
                        level: float = DEFAULT_LEVEL,
                        na_action: str = "omit") -> BayesResult | BayesBatchResult:
    """Bayesian random-effects meta-analysis: flat prior on mu, ``prior`` on tau.

    Deterministic quadrature over tau (no MCMC), see :mod:`fedsynth.meta.bayes`.

    Parameters
    ----------
    prior, scale
        Prior on the between-study standard deviation tau (``"half_normal"``,
        ``"half_cauchy"``) and its scale on the effect's scale.
    data, yi, vi, sei, label, by, level, na_action
        As :func:`meta_analysis`; ``level`` is the credibility level.

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> post = fedsynth.bayes_meta_analysis(dat, prior="half_cauchy", scale=0.5)
    >>> cri = post.credible_interval("mu")
    >>> round(post.mu_median, 3), round(cri.low, 3), round(cri.high, 3), cri.kind
    (-0.741, -1.147, -0.356, 'credible')
    """
    frame = _frame(data)
    y, v, labels = _effects(frame, yi, vi, sei, label)
    keep = ~(np.isnan(y) | np.isnan(v))
    if by is None:
        _complete(keep, labels, na_action, "yi/vi")
        return bayes_pool(y[keep], v[keep], prior=prior, scale=scale, level=level,
                          labels=list(labels[keep]))
    batch = meta_analysis(frame, y, v, label=labels, by=by, na_action=na_action)
    assert isinstance(batch, BatchPoolingResult)
    return bayes_pool(batch.yi, batch.vi, mask=batch.mask, prior=prior, scale=scale,
                      level=level)


def example_data(name: str = "bcg") -> pd.DataFrame:
    """A data set shipped with fedsynth, as a DataFrame.

    ``"bcg"``: the 13 BCG vaccine trials of Colditz et al. (1994), JAMA 271:698-702, as
    metafor's ``dat.bcg`` (columns ``trial, author, year, tpos, tneg, cpos, cneg, ablat,
    alloc``); ``"seed"``: the 8-site example of ``fedsynth meta --example`` (``study, yi,
    sei``). For ``rma_mv`` and ``robust``, as metafor's data sets (exported by
    ``tests/data/metafor/rma_mv.R``): ``"konstantopoulos2011"`` (56 schools in 11
    districts: ``district, school, study, year, yi, vi``), ``"berkey1998"`` (two
    correlated outcomes of 5 trials: ``trial, author, year, outcome, yi, vi, v1i, v2i``)
    and ``"assink2016"`` (100 effects of 17 studies: ``study, esid, yi, vi, deltype,
    year``).

    Examples
    --------
    >>> import fedsynth
    >>> fedsynth.example_data("bcg").shape
    (13, 9)
    """
    if name not in _EXAMPLES:
        raise InputError(f"name: unknown example data set {name!r} (known: "
                         f"{', '.join(_EXAMPLES)})")
    with resources.as_file(resources.files("fedsynth") / "data" / _EXAMPLES[name]) as path:
        return pd.read_csv(path)
