"""Effect sizes from summary data: metafor's ``escalc``, vectorised over studies.

Why
---
Meta-analysis pools effect sizes on a scale where they are approximately normal with a
known sampling variance. For published studies (or sites that only report counts and
means), the effect size and its variance are computed from summary data with the
standard large-sample formulas; users compare against R's metafor (Viechtbauer,
"Conducting meta-analyses in R with the metafor package", *J Stat Softw* 36(3), 2010),
so this module follows ``escalc``'s defaults exactly:

* 2x2 tables (``ai, bi, ci, di`` or ``ai, n1i, ci, n2i``): ``OR`` (log odds ratio, Woolf
  variance), ``RR`` (log risk ratio), ``RD`` (risk difference, unbiased-free large-sample
  variance). Continuity correction: ``add = 1/2`` added to *every* cell of only those tables
  with a zero cell (``to = "only0"``); ``"all"``, ``"if0all"`` and ``"none"`` as in metafor.
* Two-group means (``m1i, sd1i, n1i, m2i, sd2i, n2i``): ``MD``; ``SMD`` is Hedges' g with
  the *exact* small-sample correction ``c(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))``, m = n1+n2-2
  (Hedges, "Distribution theory for Glass's estimator of effect size and related
  estimators", *J Educ Stat* 6(2), 1981) and the large-sample variance
  ``1/n1 + 1/n2 + g²/(2(n1+n2))``; ``ROM`` is the log ratio of means (Hedges, Gurevitch &
  Curtis, *Ecology* 80(4), 1999).
* ``ZCOR`` (``ri, ni``): Fisher's z, variance ``1/(n-3)``.
* ``IRR`` (``x1i, t1i, x2i, t2i``): log incidence rate ratio, variance ``1/x1 + 1/x2``;
  the correction is added to both event counts of a pair with a zero.
* ``PLO`` / ``PR`` (``xi, ni``): logit and raw proportion; the correction is added to
  events and non-events where a proportion is 0 or 1.

Impossible rows (negative counts, ``sd <= 0``, ``|r| >= 1``, ``n <= 3`` for ZCOR, events
above the group size, non-positive person-time or means for ROM, missing values) are an
:class:`~fedsynth.errors.InputError` naming the row and the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln

from fedsynth.effects.results import EffectSizes
from fedsynth.errors import InputError, show_value
from fedsynth.vocabulary import ESCALC_MEASURES, MEASURE_INFO

__all__ = ["escalc", "escalc_frame", "ESCALC_MEASURES", "COLUMN_SETS", "hedges_correction"]

#: Measure -> accepted column sets (first match wins), named as metafor's arguments
#: (from :data:`fedsynth.vocabulary.MEASURE_INFO`).
COLUMN_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    name: info.columns for name, info in MEASURE_INFO.items()}
_CORRECTION_TARGETS = ("only0", "all", "if0all", "none")


def hedges_correction(m: Any) -> np.ndarray:
    """Exact bias correction ``c(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))`` of Hedges (1981).

    Computed on the log scale (``gammaln``) so that it stays exact for large ``m``, where
    the ratio of gamma functions would overflow.
    """
    m = np.asarray(m, dtype=float)
    return np.exp(gammaln(m / 2) - 0.5 * np.log(m / 2) - gammaln((m - 1) / 2))


def _row_name(i: int, labels: Sequence[Any] | None) -> str:
    if labels is not None:
        return f"row {i + 1} ({labels[i]!s})"
    return f"row {i + 1}"


def _check(bad: np.ndarray, message: str, column: str, values: np.ndarray,
           labels: Sequence[Any] | None) -> None:
    """Raise an InputError naming the first row where ``bad`` holds."""
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"escalc: {_row_name(i, labels)}: column {column!r} = "
                         f"{show_value(values[i])}: {message}")


def _as_array(name: str, value: Any, labels: Sequence[Any] | None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"escalc: column {name!r} must be numeric, got {value!r}") from None
    arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise InputError(f"escalc: column {name!r} must be one-dimensional")
    _check(~np.isfinite(arr), "missing or not finite", name, arr, labels)
    return arr


def _correct(counts: dict[str, np.ndarray], names: Sequence[str], zero: np.ndarray,
             add: float, to: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Add the continuity correction to ``names`` of the rows chosen by ``to``."""
    if to == "all":
        rows = np.ones_like(zero, dtype=bool)
    elif to == "only0":
        rows = zero
    elif to == "if0all":
        rows = np.full_like(zero, bool(np.any(zero)), dtype=bool)
    else:  # "none"
        rows = np.zeros_like(zero, dtype=bool)
    if add == 0:
        rows = np.zeros_like(zero, dtype=bool)
    out = dict(counts)
    for name in names:
        out[name] = np.where(rows, counts[name] + add, counts[name])
    return out, rows


def escalc(measure: str, *, add: float = 0.5, to: str = "only0", drop00: bool = False,
           undefined: str = "raise", labels: Sequence[Any] | None = None,
           **columns: Any) -> EffectSizes:
    """Compute effect sizes and sampling variances from summary data (metafor ``escalc``).

    Parameters
    ----------
    measure
        One of ``OR, RR, RD, MD, SMD, ROM, ZCOR, IRR, PLO, PR``.
    add, to
        Continuity correction for counts (2x2 tables, rates, proportions): ``add`` is added
        to every cell of the rows chosen by ``to``: ``"only0"`` (default, rows with a zero
        cell; for proportions also rows where all are events), ``"all"``, ``"if0all"``
        (every row if any row has a zero) or ``"none"``.
    drop00
        As metafor's ``drop00``: a 2x2 table with no events in both groups (or only
        events), or a rate pair with no events in both groups, gets ``yi = vi = NaN`` and
        takes no part in the continuity correction.
    undefined
        ``"raise"`` (default): an effect size that is undefined without a continuity
        correction (e.g. a log odds ratio of a table with a zero cell and ``to="none"``)
        is an :class:`InputError`. ``"nan"``: it is NaN, as metafor gives NA (a finite
        value such as a variance of 0 is kept, as metafor keeps it).
    labels
        Optional study labels used in error messages.
    **columns
        The data, as metafor's argument names (see :data:`COLUMN_SETS`): array-likes of
        equal length.

    Returns
    -------
    EffectSizes
        ``yi`` and ``vi`` arrays (and where a correction was applied).

    Raises
    ------
    InputError
        Unknown measure, missing or extra columns, unequal lengths, or an impossible row
        (naming the row and the column).
    """
    key = str(measure).upper()
    if key not in COLUMN_SETS:
        raise InputError(f"escalc: unknown measure {measure!r} (known: "
                         f"{', '.join(ESCALC_MEASURES)})")
    if undefined not in ("raise", "nan"):
        raise InputError(f"escalc: 'undefined' must be 'raise' or 'nan', got {undefined!r}")
    strict = undefined == "raise"
    if to not in _CORRECTION_TARGETS:
        raise InputError(f"escalc: 'to' must be one of {', '.join(_CORRECTION_TARGETS)}, "
                         f"got {to!r}")
    try:
        add = float(add)
    except (TypeError, ValueError):
        raise InputError(f"escalc: 'add' must be a number, got {add!r}") from None
    if not np.isfinite(add) or add < 0:
        raise InputError(f"escalc: 'add' must be a finite number >= 0, got {add!r}")
    given = {k for k, v in columns.items() if v is not None}
    chosen = next((s for s in COLUMN_SETS[key] if set(s) <= given), None)
    if chosen is None:
        wanted = " or ".join(",".join(s) for s in COLUMN_SETS[key])
        missing = sorted(set(COLUMN_SETS[key][0]) - given)
        raise InputError(f"escalc: measure {key} needs columns {wanted}; missing "
                         f"{', '.join(repr(m) for m in missing)}")
    extra = sorted(given - set(chosen))
    if extra:
        raise InputError(f"escalc: column {extra[0]!r} is not used by measure {key} "
                         f"(it uses {', '.join(chosen)})")
    data = {name: _as_array(name, columns[name], labels) for name in chosen}
    lengths = {name: len(v) for name, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"escalc: columns have different lengths: {lengths}")
    k = next(iter(lengths.values()))
    if k == 0:
        raise InputError("escalc: no rows")
    if labels is not None and len(labels) != k:
        raise InputError(f"escalc: {len(labels)} labels for {k} rows")

    def nonneg(*names: str) -> None:
        for name in names:
            _check(data[name] < 0, "a count must not be negative", name, data[name], labels)

    def positive(*names: str, what: str = "must be > 0") -> None:
        for name in names:
            _check(data[name] <= 0, what, name, data[name], labels)

    def integer(*names: str) -> None:
        for name in names:
            _check(data[name] != np.round(data[name]), "a count must be a whole number",
                   name, data[name], labels)

    if key in ("OR", "RR", "RD"):
        if chosen[1] == "bi":
            nonneg("ai", "bi", "ci", "di")
            integer("ai", "bi", "ci", "di")
            ai, bi, ci, di = (data[c] for c in chosen)
        else:
            nonneg("ai", "ci")
            positive("n1i", "n2i", what="a group size must be > 0")
            integer("ai", "n1i", "ci", "n2i")
            _check(data["ai"] > data["n1i"], "more events than patients (n1i)", "ai",
                   data["ai"], labels)
            _check(data["ci"] > data["n2i"], "more events than patients (n2i)", "ci",
                   data["ci"], labels)
            ai, ci = data["ai"], data["ci"]
            bi, di = data["n1i"] - ai, data["n2i"] - ci
        _check((ai + bi) == 0, "the first group is empty", chosen[0], ai, labels)
        _check((ci + di) == 0, "the second group is empty", "ci", ci, labels)
        dropped = (((ai == 0) & (ci == 0)) | ((bi == 0) & (di == 0))) if drop00 else (
            np.zeros(k, dtype=bool))
        zero = ((ai == 0) | (bi == 0) | (ci == 0) | (di == 0)) & ~dropped
        cells, corrected = _correct({"ai": ai, "bi": bi, "ci": ci, "di": di},
                                    ("ai", "bi", "ci", "di"), zero, add, to)
        ai, bi, ci, di = cells["ai"], cells["bi"], cells["ci"], cells["di"]
        n1, n2 = ai + bi, ci + di
        with np.errstate(divide="ignore", invalid="ignore"):
            if key == "OR":
                yi = np.log(ai * di / (bi * ci))
                vi = 1 / ai + 1 / bi + 1 / ci + 1 / di
                bad = (ai == 0) | (bi == 0) | (ci == 0) | (di == 0)
            elif key == "RR":
                yi = np.log((ai / n1) / (ci / n2))
                vi = 1 / ai - 1 / n1 + 1 / ci - 1 / n2
                bad = (ai == 0) | (ci == 0)
            else:
                p1, p2 = ai / n1, ci / n2
                yi = p1 - p2
                vi = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
                bad = vi <= 0
        if strict:
            _check(bad & ~dropped, f"{key} is undefined for this table without a continuity "
                   f"correction (to={to!r}, add={add})", chosen[0], data[chosen[0]], labels)
        yi, vi = np.where(dropped, np.nan, yi), np.where(dropped, np.nan, vi)
        corrected = corrected & ~dropped
    elif key in ("MD", "SMD", "ROM"):
        positive("sd1i", "sd2i", what="a standard deviation must be > 0")
        _check(data["n1i"] < 2, "a group needs n >= 2 for a standard deviation", "n1i",
               data["n1i"], labels)
        _check(data["n2i"] < 2, "a group needs n >= 2 for a standard deviation", "n2i",
               data["n2i"], labels)
        m1, s1, n1 = data["m1i"], data["sd1i"], data["n1i"]
        m2, s2, n2 = data["m2i"], data["sd2i"], data["n2i"]
        corrected = np.zeros(k, dtype=bool)
        if key == "MD":
            yi = m1 - m2
            vi = s1 ** 2 / n1 + s2 ** 2 / n2
        elif key == "SMD":
            # Pooled SD, Cohen's d, then the exact gamma-function correction (Hedges 1981).
            mi = n1 + n2 - 2
            sdp = np.sqrt(((n1 - 1) * s1 ** 2 + (n2 - 1) * s2 ** 2) / mi)
            yi = hedges_correction(mi) * (m1 - m2) / sdp
            # metafor's default large-sample variance (vtype "LS"), evaluated at g.
            vi = 1 / n1 + 1 / n2 + yi ** 2 / (2 * (n1 + n2))
        else:
            positive("m1i", "m2i", what="ROM needs positive means")
            yi = np.log(m1 / m2)
            vi = s1 ** 2 / (n1 * m1 ** 2) + s2 ** 2 / (n2 * m2 ** 2)
    elif key == "ZCOR":
        r, n = data["ri"], data["ni"]
        _check(np.abs(r) >= 1, "a correlation must lie strictly between -1 and 1", "ri", r,
               labels)
        _check(n <= 3, "ZCOR needs n > 3 (its variance is 1/(n-3))", "ni", n, labels)
        corrected = np.zeros(k, dtype=bool)
        yi = np.arctanh(r)
        vi = 1 / (n - 3)
    elif key == "IRR":
        nonneg("x1i", "x2i")
        positive("t1i", "t2i", what="person-time must be > 0")
        dropped = ((data["x1i"] == 0) & (data["x2i"] == 0)) if drop00 else (
            np.zeros(k, dtype=bool))
        zero = ((data["x1i"] == 0) | (data["x2i"] == 0)) & ~dropped
        cells, corrected = _correct({"x1i": data["x1i"], "x2i": data["x2i"]},
                                    ("x1i", "x2i"), zero, add, to)
        x1, x2 = cells["x1i"], cells["x2i"]
        with np.errstate(divide="ignore", invalid="ignore"):
            yi = np.log((x1 / data["t1i"]) / (x2 / data["t2i"]))
            vi = 1 / x1 + 1 / x2
        if strict:
            _check(((x1 == 0) | (x2 == 0)) & ~dropped, f"IRR is undefined with a zero count "
                   f"without a continuity correction (to={to!r}, add={add})", "x1i",
                   data["x1i"], labels)
        yi, vi = np.where(dropped, np.nan, yi), np.where(dropped, np.nan, vi)
        corrected = corrected & ~dropped
    else:  # PLO, PR
        nonneg("xi")
        positive("ni", what="a group size must be > 0")
        _check(data["xi"] > data["ni"], "more events than patients (ni)", "xi", data["xi"],
               labels)
        xi, ni = data["xi"], data["ni"]
        # A proportion of 0 or 1 has a zero cell (events or non-events): correct both.
        zero = (xi == 0) | (xi == ni)
        cells, corrected = _correct({"xi": xi, "mi": ni - xi}, ("xi", "mi"), zero, add, to)
        xi, mi = cells["xi"], cells["mi"]
        ni = xi + mi
        p = xi / ni
        with np.errstate(divide="ignore", invalid="ignore"):
            if key == "PLO":
                yi = np.log(xi / mi)
                vi = 1 / xi + 1 / mi
                bad = (xi == 0) | (mi == 0)
            else:
                yi = p
                vi = p * (1 - p) / ni
                bad = vi <= 0
        if strict:
            _check(bad, f"{key} is undefined for a proportion of 0 or 1 without a "
                   f"continuity correction (to={to!r}, add={add})", "xi", data["xi"], labels)
    yi, vi = np.asarray(yi, dtype=float), np.asarray(vi, dtype=float)
    if not strict:   # metafor: an infinite or undefined value is NA
        yi = np.where(np.isfinite(yi), yi, np.nan)
        vi = np.where(np.isfinite(vi), vi, np.nan)
    return EffectSizes(measure=key, yi=yi, vi=vi, corrected=np.asarray(corrected))


def escalc_frame(frame: Any, measure: str, *, labels: Sequence[Any] | None = None,
                 add: float = 0.5, to: str = "only0") -> EffectSizes:
    """:func:`escalc` on the columns of a DataFrame named as metafor's arguments.

    The first of the measure's column sets (:data:`COLUMN_SETS`) present in ``frame`` is
    used (e.g. ``ai, bi, ci, di``, else ``ai, n1i, ci, n2i``). A missing column or a cell
    that is not a number is an :class:`InputError` naming the column (and the row).
    """
    key = str(measure).upper()
    if key not in COLUMN_SETS:
        raise InputError(f"--measure: unknown measure {measure!r} (known: "
                         f"{', '.join(ESCALC_MEASURES)})")
    chosen = next((s for s in COLUMN_SETS[key] if all(c in frame.columns for c in s)), None)
    if chosen is None:
        wanted = " or ".join(", ".join(s) for s in COLUMN_SETS[key])
        missing = [c for c in COLUMN_SETS[key][0] if c not in frame.columns]
        raise InputError(f"--measure {key}: column {missing[0]!r} not found; {key} needs "
                         f"the columns {wanted} (named as metafor's escalc); available: "
                         f"{', '.join(map(repr, frame.columns))}")
    columns = {}
    for name in chosen:
        raw = frame[name]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bool(bad.any()):
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"escalc: {_row_name(i, labels)}: column {name!r} = "
                             f"{show_value(raw.iloc[i])} is not a number")
        columns[name] = values.to_numpy(dtype=float)
    return escalc(key, add=add, to=to, labels=labels, **columns)
