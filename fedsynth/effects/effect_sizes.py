"""Effect sizes from summary data: metafor's ``escalc``, vectorised over studies.

Why
---
Meta-analysis pools effect sizes on a scale where they are approximately normal with a
known sampling variance. For published studies (or sites that only report counts and
means), the effect size and its variance are computed from summary data with the
standard large-sample formulas; users compare against R's metafor (Viechtbauer,
"Conducting meta-analyses in R with the metafor package", *J Stat Softw* 36(3), 2010),
so this module follows ``escalc`` (metafor 3.8) exactly: its measure names, argument
names (``ai, bi, ci, di, n1i, n2i, m1i, sd1i, ..., ri, ni, xi, mi, sdi, x1i, t1i``), its
defaults (``add = 1/2``, ``to = "only0"``, ``vtype = "LS"``) and its definitions:

* **2x2 tables** (``ai, bi, ci, di`` or ``ai, n1i, ci, n2i``): ``OR`` (log odds ratio,
  Woolf variance), ``RR`` (log risk ratio), ``RD`` (risk difference), ``AS`` (arcsine
  square-root risk difference, Rücker et al. 2009, *Stat Med* 28:721), ``PHI`` (phi
  coefficient; ``vtype="ST"`` for stratified sampling, Yule 1912), ``OR2D`` (log odds ratio
  transformed to a standardized mean difference, ``sqrt(3)/pi log OR``, Chinn 2000,
  *Stat Med* 19:3127). Continuity correction: ``add`` added to every cell of the tables
  chosen by ``to``; metafor's default ``add`` is 1/2, but 0 for ``AS``, ``PHI``, ``PFT``
  and ``IRSD`` (their transformations are defined at zero counts).
* **Two-group means** (``m1i, sd1i, n1i, m2i, sd2i, n2i``): ``MD``; ``SMD`` (Hedges' g
  with the *exact* correction ``c(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))``, Hedges 1981,
  *J Educ Stat* 6(2)); ``SMDH`` (heteroscedastic SMD, Bonett 2009, *Psychol Methods*
  14:225); ``ROM`` (log ratio of means, Hedges, Gurevitch & Curtis 1999, *Ecology*
  80(4)); ``CVR`` and ``VR`` (log coefficient-of-variation ratio and log variability
  ratio, Nakagawa et al. 2015, *Methods Ecol Evol* 6:143; ``VR`` needs only ``sd1i,
  n1i, sd2i, n2i``).
* **One group**: ``MN`` (raw mean, ``mi, sdi, ni``).
* **Paired (pre-post) designs** (``m1i, m2i, sd1i, sd2i, ni, ri``; Morris 2008, *Organ
  Res Methods* 11:364; Becker 1988): ``MC`` (mean change), ``SMCC`` (standardized by the
  change-score SD), ``SMCR`` (standardized by the raw-score SD ``sd1i``; no ``sd2i``).
* **Correlations** (``ri, ni``): ``COR`` (raw), ``UCOR`` (Olkin & Pratt 1958's unbiased
  estimator, with the Gauss hypergeometric function), ``ZCOR`` (Fisher's z).
* **Incidence rates** (``x1i, t1i, x2i, t2i``): ``IRR`` (log rate ratio), ``IRD`` (rate
  difference), ``IRSD`` (square-root rate difference).
* **Proportions** (``xi, ni`` or ``xi, mi`` with ``mi`` the non-events): ``PR``, ``PLN``
  (log), ``PLO`` (logit), ``PFT`` (Freeman-Tukey double arcsine, Freeman & Tukey 1950,
  *Ann Math Stat* 21:607).

``vtype`` selects metafor's alternative sampling-variance estimators where it has them
(``UB`` unbiased, ``LS`` large-sample, ``LS2``, ``HO`` homoscedastic, ``ST``
stratified, ``CS``, ``AV`` averaged over the studies, ``AVHO``); one value, or one per
study.

Impossible rows (negative counts, standard deviations that are not positive, ``|r| > 1``,
events above the group size, non-positive person-time or means for ROM/CVR, missing
values) are an :class:`~fedsynth.errors.InputError` naming the row and the column.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.integrate import IntegrationWarning, quad
from scipy.special import gammaln

from fedsynth.effects.results import EffectSizes
from fedsynth.errors import InputError, show_value
from fedsynth.vocabulary import ESCALC_MEASURES, MEASURE_INFO, VTYPES

__all__ = ["escalc", "escalc_frame", "ESCALC_MEASURES", "COLUMN_SETS", "VTYPES",
           "VTYPE_CHOICES", "default_add", "hedges_correction"]

#: Measure -> accepted column sets (first match wins), named as metafor's arguments
#: (from :data:`fedsynth.vocabulary.MEASURE_INFO`).
COLUMN_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    name: info.columns for name, info in MEASURE_INFO.items()}
_CORRECTION_TARGETS = ("only0", "all", "if0all", "none")
#: The variance estimators each measure offers (metafor 3.8); a measure not listed has
#: one variance formula and ignores ``vtype``, as metafor does.
VTYPE_CHOICES: dict[str, tuple[str, ...]] = {
    "RD": ("UB", "LS", "AV"), "PHI": ("ST", "LS", "CS"), "MD": ("UB", "LS", "HO"),
    "SMD": ("UB", "LS", "LS2", "AV"), "SMDH": ("LS", "LS2"),
    "ROM": ("LS", "HO", "AV", "AVHO"), "COR": ("LS", "AV"), "UCOR": ("UB", "LS", "AV"),
    "PR": ("UB", "LS", "AV"), "PLN": ("LS", "AV"), "PLO": ("LS", "AV"),
    "SMCC": ("LS", "LS2"), "SMCR": ("LS", "LS2")}
#: Measures whose default continuity correction is 0 in metafor (their transformations
#: are finite at zero counts).
_ZERO_ADD = frozenset({"AS", "PHI", "PFT", "IRSD"})
_TABLES = frozenset({"OR", "RR", "RD", "AS", "PHI", "OR2D"})
_MEANS = frozenset({"MD", "SMD", "SMDH", "ROM", "CVR", "VR"})
_PAIRED = frozenset({"MC", "SMCC", "SMCR"})
_CORRELATIONS = frozenset({"COR", "UCOR", "ZCOR"})
_RATES = frozenset({"IRR", "IRD", "IRSD"})
_PROPORTIONS = frozenset({"PR", "PLN", "PLO", "PFT"})


def default_add(measure: str) -> float:
    """Return metafor's default continuity correction for ``measure``.

    0 for ``AS``, ``PHI``, ``PFT`` and ``IRSD`` (defined at zero counts), 1/2 otherwise.
    """
    return 0.0 if str(measure).upper() in _ZERO_ADD else 0.5


def _hyp2f1(a: float, b: float, c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gauss's hypergeometric function for ``0 <= x <= 1`` and ``c > a + b``, ``c > b``.

    ``scipy.special.hyp2f1`` returns NaN for large even ``c``-arguments near ``x = 1``
    (``hyp2f1(0.5, 0.5, 162, 0.9975)``, i.e. UCOR with ``n = 326, r = 0.05``), so this
    evaluates Euler's integral ``Γ(c)/(Γ(b)Γ(c-b)) ∫ t^(b-1) (1-t)^(c-b-1) (1-xt)^(-a)
    dt`` with QUADPACK's algebraic-weight rule (the endpoint singularities are in the
    weight, the integrand left is smooth) and Gauss's closed form at ``x = 1``
    (Abramowitz & Stegun 15.3.1 and 15.1.20). Checked against mpmath to 1e-10.
    """
    c, x = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(x, dtype=float))
    out = np.full(c.shape, np.nan)
    for i in np.ndindex(c.shape):
        ci, xi = float(c[i]), float(x[i])
        if not (np.isfinite(ci) and np.isfinite(xi) and ci > a + b and 0 <= xi <= 1):
            continue
        if xi == 1.0:
            out[i] = np.exp(gammaln(ci) + gammaln(ci - a - b) - gammaln(ci - a)
                            - gammaln(ci - b))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IntegrationWarning)
            val, _ = quad(lambda t, xi=xi: (1 - xi * t) ** (-a), 0.0, 1.0, weight="alg",
                          wvar=(b - 1, ci - b - 1), epsabs=0.0, epsrel=1e-12, limit=200)
        out[i] = np.exp(gammaln(ci) - gammaln(b) - gammaln(ci - b)) * val
    return out


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
                         f"{show_value(np.asarray(values)[i].item())}: {message}")


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


def _wmean(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean of the finite pairs (metafor's ``.wmean(x, w, na.rm = TRUE)``)."""
    ok = np.isfinite(x) & np.isfinite(w)
    return float(np.sum(x[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")


def _vtypes(vtype: Any, key: str, k: int) -> np.ndarray:
    """``vtype`` as one value per row, checked against the measure's estimators."""
    if isinstance(vtype, str):
        vt = np.full(k, vtype.upper(), dtype=object)
    else:
        try:
            vt = np.array([str(v).upper() for v in vtype], dtype=object)
        except TypeError:
            raise InputError(f"escalc: 'vtype' must be a string or one string per study, "
                             f"got {vtype!r}") from None
        if vt.size != k:
            raise InputError(f"escalc: 'vtype' has {vt.size} values for {k} studies")
    unknown = sorted({v for v in vt if v not in VTYPES})
    if unknown:
        raise InputError(f"escalc: vtype {unknown[0]!r} is not one of {', '.join(VTYPES)}")
    if key == "ZCOR" and "UB" in set(vt):      # metafor: UB only for UCOR
        raise InputError("escalc: vtype 'UB' is only available for measure UCOR among the "
                         "correlations")
    allowed = VTYPE_CHOICES.get(key)
    if allowed is not None:
        wrong = sorted({v for v in vt if v not in allowed})
        if wrong:
            raise InputError(f"escalc: vtype {wrong[0]!r} is not available for measure "
                             f"{key} (it offers {', '.join(allowed)})")
    return vt


def _select(vt: np.ndarray, options: dict[str, Callable[[], np.ndarray]]) -> np.ndarray:
    """The variance of each row from its ``vtype`` (each formula evaluated once)."""
    out = np.full(vt.shape, np.nan)
    for name, formula in options.items():
        rows = vt == name
        if rows.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(rows, formula(), out)
    return out


def escalc(measure: str, *, add: float | None = None, to: str = "only0",
           drop00: bool = False, vtype: str | Sequence[str] = "LS",
           undefined: str = "raise", labels: Sequence[Any] | None = None,
           **columns: Any) -> EffectSizes:
    """Compute effect sizes and sampling variances from summary data (metafor ``escalc``).

    Parameters
    ----------
    measure
        One of :data:`fedsynth.vocabulary.ESCALC_MEASURES` (``OR, RR, RD, AS, PHI, OR2D,
        MD, SMD, SMDH, ROM, CVR, VR, MN, MC, SMCC, SMCR, COR, UCOR, ZCOR, IRR, IRD, IRSD,
        PR, PLN, PLO, PFT``).
    add, to
        Continuity correction for counts (2x2 tables, rates, proportions): ``add`` is added
        to every cell of the rows chosen by ``to``: ``"only0"`` (default, rows with a zero
        cell; for proportions also rows where all are events), ``"all"``, ``"if0all"``
        (every row if any row has a zero) or ``"none"``. ``add=None`` is metafor's
        default: 1/2, but 0 for ``AS``, ``PHI``, ``PFT`` and ``IRSD``.
    drop00
        As metafor's ``drop00``: a 2x2 table with no events in both groups (or only
        events), or a rate pair with no events in both groups, gets ``yi = vi = NaN`` and
        takes no part in the continuity correction.
    vtype
        Sampling-variance estimator (metafor's ``vtype``; default ``"LS"``): one value or
        one per study, from :data:`VTYPE_CHOICES` for the measures that have several.
    undefined
        ``"raise"`` (default): an effect size or variance that is undefined (e.g. a log
        odds ratio of a table with a zero cell and ``to="none"``, or a variance of 0) is an
        :class:`InputError`. ``"nan"``: it is NaN, as metafor gives NA (a finite value such
        as a variance of 0 is kept, as metafor keeps it; a negative variance is NaN, as
        metafor's).
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

    Examples
    --------
    >>> r = escalc("PHI", ai=[20, 5], bi=[80, 95], ci=[10, 5], di=[90, 95])
    >>> r.yi.round(4).tolist(), r.vi.round(5).tolist()
    ([0.14, 0.0], [0.00462, 0.005])
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
    if add is None:
        add = default_add(key)
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
    vt = _vtypes(vtype, key, k)
    ctx = _Context(key, data, labels, add, to, bool(drop00), vt, strict)

    if key in _TABLES:
        yi, vi, corrected, bad = _tables(ctx, chosen)
    elif key in _MEANS:
        yi, vi, corrected, bad = _means(ctx, chosen)
    elif key == "MN":
        yi, vi, corrected, bad = _mean(ctx)
    elif key in _PAIRED:
        yi, vi, corrected, bad = _paired(ctx)
    elif key in _CORRELATIONS:
        yi, vi, corrected, bad = _correlations(ctx)
    elif key in _RATES:
        yi, vi, corrected, bad = _rates(ctx)
    else:
        yi, vi, corrected, bad = _proportions(ctx, chosen)
    yi, vi = np.asarray(yi, dtype=float), np.asarray(vi, dtype=float)
    dropped = ctx.dropped
    if strict:
        # the measure's own test first (its message names the cause), then metafor's NA
        _check(bad & ~dropped, f"{key} is undefined for this row without a continuity "
               f"correction (to={to!r}, add={add})", chosen[0], data[chosen[0]], labels)
        undefined_rows = ~(np.isfinite(yi) & np.isfinite(vi) & (vi > 0)) & ~dropped
        if undefined_rows.any():
            _check(undefined_rows, f"{key} is undefined for this row (metafor gives NA: "
                   f"yi = {_first(yi, undefined_rows)}, vi = {_first(vi, undefined_rows)})",
                   chosen[0], data[chosen[0]], labels)
    # metafor's drop00 sets the counts to NA; IRSD's variance 1/(4 t1) + 1/(4 t2) does
    # not use them, so metafor keeps it (and so do we)
    yi = np.where(dropped, np.nan, yi)
    vi = np.where(dropped & (key != "IRSD"), np.nan, vi)
    if not strict:   # metafor: an infinite or undefined value is NA, as is a negative vi
        yi = np.where(np.isfinite(yi), yi, np.nan)
        vi = np.where(np.isfinite(vi) & (vi >= 0), vi, np.nan)
    return EffectSizes(measure=key, yi=yi, vi=vi,
                       corrected=np.asarray(corrected & ~dropped, dtype=bool))


def _first(values: np.ndarray, rows: np.ndarray) -> float:
    return float(values[np.flatnonzero(rows)[0]])


class _Context:
    """The validated inputs of one :func:`escalc` call, shared by the family helpers."""

    def __init__(self, key: str, data: dict[str, np.ndarray], labels: Sequence[Any] | None,
                 add: float, to: str, drop00: bool, vt: np.ndarray, strict: bool) -> None:
        self.key, self.data, self.labels = key, data, labels
        self.add, self.to, self.drop00, self.vt, self.strict = add, to, drop00, vt, strict
        self.k = next(iter(data.values())).size
        self.dropped = np.zeros(self.k, dtype=bool)

    def nonneg(self, *names: str, what: str = "a count must not be negative") -> None:
        for name in names:
            _check(self.data[name] < 0, what, name, self.data[name], self.labels)

    def positive(self, *names: str, what: str = "must be > 0") -> None:
        for name in names:
            _check(self.data[name] <= 0, what, name, self.data[name], self.labels)

    def integer(self, *names: str) -> None:
        for name in names:
            _check(self.data[name] != np.round(self.data[name]),
                   "a count must be a whole number", name, self.data[name], self.labels)

    def check(self, bad: np.ndarray, message: str, column: str) -> None:
        _check(bad, message, column, self.data[column], self.labels)


_Out = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _tables(ctx: _Context, chosen: tuple[str, ...]) -> _Out:
    """2x2 tables: OR, RR, RD, AS, PHI, OR2D."""
    key, data = ctx.key, ctx.data
    if chosen[1] == "bi":
        ctx.nonneg("ai", "bi", "ci", "di")
        ctx.integer("ai", "bi", "ci", "di")
        ai, bi, ci, di = (data[c] for c in chosen)
    else:
        ctx.nonneg("ai", "ci")
        ctx.positive("n1i", "n2i", what="a group size must be > 0")
        ctx.integer("ai", "n1i", "ci", "n2i")
        ctx.check(data["ai"] > data["n1i"], "more events than patients (n1i)", "ai")
        ctx.check(data["ci"] > data["n2i"], "more events than patients (n2i)", "ci")
        ai, ci = data["ai"], data["ci"]
        bi, di = data["n1i"] - ai, data["n2i"] - ci
    ctx.check((ai + bi) == 0, "the first group is empty", chosen[0])
    _check((ci + di) == 0, "the second group is empty", "ci", ci, ctx.labels)
    if ctx.drop00:
        ctx.dropped = ((ai == 0) & (ci == 0)) | ((bi == 0) & (di == 0))
    zero = ((ai == 0) | (bi == 0) | (ci == 0) | (di == 0)) & ~ctx.dropped
    cells, corrected = _correct({"ai": ai, "bi": bi, "ci": ci, "di": di},
                                ("ai", "bi", "ci", "di"), zero, ctx.add, ctx.to)
    ai, bi, ci, di = cells["ai"], cells["bi"], cells["ci"], cells["di"]
    n1, n2 = ai + bi, ci + di
    vt = ctx.vt
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = ai / n1, ci / n2
        if key in ("OR", "OR2D"):
            yi = np.log(ai * di / (bi * ci))
            vi = 1 / ai + 1 / bi + 1 / ci + 1 / di
            bad = (ai == 0) | (bi == 0) | (ci == 0) | (di == 0)
            if key == "OR2D":     # Chinn (2000): log OR * sqrt(3)/pi
                yi, vi = np.sqrt(3) / np.pi * yi, 3 / np.pi**2 * vi
        elif key == "RR":
            yi = np.log(p1 / p2)
            vi = 1 / ai - 1 / n1 + 1 / ci - 1 / n2
            bad = (ai == 0) | (ci == 0)
        elif key == "RD":
            yi = p1 - p2
            keep = ~ctx.dropped
            m1, m2 = _wmean(p1[keep], n1[keep]), _wmean(p2[keep], n2[keep])
            vi = _select(vt, {
                "UB": lambda: p1 * (1 - p1) / (n1 - 1) + p2 * (1 - p2) / (n2 - 1),
                "LS": lambda: p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2,
                "AV": lambda: m1 * (1 - m1) / n1 + m2 * (1 - m2) / n2})
            bad = vi <= 0
        elif key == "AS":
            yi = np.arcsin(np.sqrt(p1)) - np.arcsin(np.sqrt(p2))
            vi = 1 / (4 * n1) + 1 / (4 * n2)
            bad = np.zeros(ctx.k, dtype=bool)
        else:  # PHI
            n = n1 + n2
            yi = (ai * di - bi * ci) / np.sqrt(n1 * n2 * (ai + ci) * (bi + di))
            q1, q2 = 1 - p1, 1 - p2
            r1, r2 = n1 / n, n2 / n                 # row margins
            c1, c2 = (ai + ci) / n, (bi + di) / n   # column margins

            def st_variance() -> np.ndarray:
                # Yule (1912) for stratified sampling (fixed group sizes), as metafor
                return (n**2 * (4 * n1**3 * p1**2 * p2 * q1**2 * q2
                                + 4 * n2**3 * p1 * p2**2 * q1 * q2**2
                                + n1 * n2**2 * p2 * q2 * (p2 * q1 + p1 * q2)
                                * (p2 * q1 + p1 * (4 * q1 + q2))
                                + n1**2 * n2 * p1 * q1 * (p2 * q1 + p1 * q2)
                                * (p1 * q2 + p2 * (q1 + 4 * q2)))
                        / (4 * (ai + ci)**3 * (bi + di)**3))

            def ls_variance() -> np.ndarray:
                # large-sample variance under multinomial (cross-sectional) sampling
                return 1 / n * (1 - yi**2 + yi * (1 + yi**2 / 2) * (r1 - r2) * (c1 - c2)
                                / np.sqrt(r1 * r2 * c1 * c2)
                                - 3 / 4 * yi**2 * ((r1 - r2)**2 / (r1 * r2)
                                                   + (c1 - c2)**2 / (c1 * c2)))

            vi = _select(vt, {"ST": st_variance, "LS": ls_variance, "CS": ls_variance})
            bad = ((ai + ci) == 0) | ((bi + di) == 0)
    return yi, vi, corrected, bad


def _means(ctx: _Context, chosen: tuple[str, ...]) -> _Out:
    """Two-group means: MD, SMD, SMDH, ROM, CVR, VR."""
    key, data, vt = ctx.key, ctx.data, ctx.vt
    ctx.positive("sd1i", "sd2i", what="a standard deviation must be > 0")
    ctx.check(data["n1i"] < 2, "a group needs n >= 2 for a standard deviation", "n1i")
    ctx.check(data["n2i"] < 2, "a group needs n >= 2 for a standard deviation", "n2i")
    s1, n1, s2, n2 = data["sd1i"], data["n1i"], data["sd2i"], data["n2i"]
    if "m1i" in chosen:
        m1, m2 = data["m1i"], data["m2i"]
    corrected = np.zeros(ctx.k, dtype=bool)
    mi = n1 + n2 - 2
    sdp = np.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / mi)   # pooled SD
    with np.errstate(divide="ignore", invalid="ignore"):
        if key == "MD":
            yi = m1 - m2
            vi = _select(vt, {"UB": lambda: s1**2 / n1 + s2**2 / n2,
                              "LS": lambda: s1**2 / n1 + s2**2 / n2,
                              "HO": lambda: sdp**2 * (1 / n1 + 1 / n2)})
        elif key == "SMD":
            # Cohen's d, then the exact gamma-function correction (Hedges 1981)
            cm = hedges_correction(mi)
            d = (m1 - m2) / sdp
            yi = cm * d
            n = n1 + n2
            mean_g = _wmean(yi, n)
            vi = _select(vt, {
                "UB": lambda: 1 / n1 + 1 / n2 + (1 - (mi - 2) / (mi * cm**2)) * yi**2,
                "LS": lambda: 1 / n1 + 1 / n2 + yi**2 / (2 * n),
                "AV": lambda: 1 / n1 + 1 / n2 + mean_g**2 / (2 * n),
                "LS2": lambda: cm**2 * (1 / n1 + 1 / n2 + d**2 / (2 * n))})
        elif key == "SMDH":
            # Bonett (2009): standardized by the root mean of the two variances
            cm = hedges_correction(mi)
            sv = s1**2 + s2**2
            yi = cm * (m1 - m2) / np.sqrt(sv / 2)
            vi = _select(vt, {
                "LS": lambda: cm**2 * (yi**2 * (s1**4 / (n1 - 1) + s2**4 / (n2 - 1))
                                       / (2 * sv**2)
                                       + (s1**2 / (n1 - 1) + s2**2 / (n2 - 1)) / (sv / 2)),
                "LS2": lambda: (yi**2 * s1**2 / (2 * n1 * sv**2)
                                + yi**2 * s2**2 / (2 * n2 * sv**2)
                                + 2 * s1**2 / (n1 * sv) + 2 * s2**2 / (n2 * sv))})
        elif key in ("ROM", "CVR"):
            ctx.positive("m1i", "m2i", what=f"{key} needs positive means")
            if key == "ROM":
                yi = np.log(m1 / m2)
                cv1, cv2 = s1 / m1, s2 / m2
                mean_cv1, mean_cv2 = _wmean(cv1, n1), _wmean(cv2, n2)
                mean_cv = float((np.sum(n1 * cv1) + np.sum(n2 * cv2)) / np.sum(n1 + n2))
                vi = _select(vt, {
                    "LS": lambda: s1**2 / (n1 * m1**2) + s2**2 / (n2 * m2**2),
                    "HO": lambda: sdp**2 / (n1 * m1**2) + sdp**2 / (n2 * m2**2),
                    "AV": lambda: mean_cv1**2 / n1 + mean_cv2**2 / n2,
                    "AVHO": lambda: mean_cv**2 * (1 / n1 + 1 / n2)})
            else:   # log CV ratio with the small-sample terms of Nakagawa et al. (2015)
                yi = (np.log(s1 / m1) + 1 / (2 * (n1 - 1))
                      - np.log(s2 / m2) - 1 / (2 * (n2 - 1)))
                vi = (1 / (2 * (n1 - 1)) + s1**2 / (n1 * m1**2)
                      + 1 / (2 * (n2 - 1)) + s2**2 / (n2 * m2**2))
        else:  # VR: log ratio of the standard deviations
            yi = np.log(s1 / s2) + 1 / (2 * (n1 - 1)) - 1 / (2 * (n2 - 1))
            vi = 1 / (2 * (n1 - 1)) + 1 / (2 * (n2 - 1))
    return yi, vi, corrected, np.zeros(ctx.k, dtype=bool)


def _mean(ctx: _Context) -> _Out:
    """One group's mean: MN."""
    ctx.nonneg("sdi", what="a standard deviation must not be negative")
    ctx.positive("ni", what="a sample size must be > 0")
    data = ctx.data
    yi = data["mi"].copy()
    vi = data["sdi"]**2 / data["ni"]
    return yi, vi, np.zeros(ctx.k, dtype=bool), np.zeros(ctx.k, dtype=bool)


def _paired(ctx: _Context) -> _Out:
    """Pre-post designs: MC, SMCC, SMCR (Morris 2008; Becker 1988)."""
    key, data, vt = ctx.key, ctx.data, ctx.vt
    names = ("sd1i", "sd2i") if key != "SMCR" else ("sd1i",)
    if key == "MC":
        ctx.nonneg(*names, what="a standard deviation must not be negative")
    else:
        ctx.positive(*names, what="a standard deviation must be > 0")
    ctx.check(np.abs(data["ri"]) > 1, "a correlation must lie between -1 and 1", "ri")
    ctx.positive("ni", what="a sample size must be > 0")
    if key != "MC":
        ctx.check(data["ni"] < 3, f"{key} needs ni >= 3 (its bias correction uses ni - 1 "
                  "degrees of freedom)", "ni")
    m1, m2, s1, n, r = data["m1i"], data["m2i"], data["sd1i"], data["ni"], data["ri"]
    cm = hedges_correction(n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if key == "MC":
            s2 = data["sd2i"]
            yi = m1 - m2
            vi = (s1**2 + s2**2 - 2 * r * s1 * s2) / n
        elif key == "SMCC":
            s2 = data["sd2i"]
            d = (m1 - m2) / np.sqrt(s1**2 + s2**2 - 2 * r * s1 * s2)
            yi = cm * d
            vi = _select(vt, {"LS": lambda: 1 / n + yi**2 / (2 * n),
                              "LS2": lambda: cm**2 * (1 / n + d**2 / (2 * n))})
        else:  # SMCR
            d = (m1 - m2) / s1
            yi = cm * d
            vi = _select(vt, {"LS": lambda: 2 * (1 - r) / n + yi**2 / (2 * n),
                              "LS2": lambda: cm**2 * (2 * (1 - r) / n + d**2 / (2 * n))})
    return yi, vi, np.zeros(ctx.k, dtype=bool), np.zeros(ctx.k, dtype=bool)


def _correlations(ctx: _Context) -> _Out:
    """Correlations: COR, UCOR, ZCOR."""
    key, data, vt = ctx.key, ctx.data, ctx.vt
    r, n = data["ri"], data["ni"]
    corrected = np.zeros(ctx.k, dtype=bool)
    if key == "ZCOR":
        ctx.check(np.abs(r) > 1, "a correlation must lie between -1 and 1", "ri")
        if ctx.strict:   # undefined="nan": metafor's NA (yi = ±Inf, vi for n <= 3)
            ctx.check(np.abs(r) == 1, "a correlation must lie strictly between -1 and 1 "
                      "for ZCOR", "ri")
            ctx.check(n <= 3, "ZCOR needs n > 3 (its variance is 1/(n-3))", "ni")
        ctx.positive("ni", what="a sample size must be > 0")
        with np.errstate(divide="ignore", invalid="ignore"):
            yi, vi = np.arctanh(r), np.where(n <= 3, np.nan, 1 / (n - 3))
        return yi, vi, corrected, np.zeros(ctx.k, dtype=bool)
    ctx.check(np.abs(r) > 1, "a correlation must lie between -1 and 1", "ri")
    ctx.positive("ni", what="a sample size must be > 0")
    if ctx.strict:
        if key == "UCOR":
            ctx.check(n <= 4, "UCOR is undefined for n <= 4 (metafor gives NA)", "ni")
        ctx.check(n <= 3, f"{key}'s variance is undefined for n <= 3 (metafor gives NA)",
                  "ni")
    with np.errstate(divide="ignore", invalid="ignore"):
        if key == "COR":
            yi = r.copy()
        else:
            # Olkin & Pratt (1958): r 2F1(1/2, 1/2; (n-2)/2; 1-r^2), defined for n > 4
            yi = np.where(n > 4, r * _hyp2f1(0.5, 0.5, (n - 2) / 2, 1 - r**2), np.nan)
        mean_r = _wmean(yi, n)
        vi = _select(vt, {
            "UB": lambda: np.where(n > 4, yi**2 - (1 - (n - 3) / (n - 2) * (1 - r**2)
                                                   * _hyp2f1(1, 1, n / 2, 1 - r**2)), np.nan),
            "LS": lambda: (1 - yi**2)**2 / (n - 1),
            "AV": lambda: (1 - mean_r**2)**2 / (n - 1)})
        vi = np.where(n <= 3, np.nan, vi)
    return yi, vi, corrected, np.zeros(ctx.k, dtype=bool)


def _rates(ctx: _Context) -> _Out:
    """Incidence rates of two groups: IRR, IRD, IRSD."""
    key, data = ctx.key, ctx.data
    ctx.nonneg("x1i", "x2i")
    ctx.positive("t1i", "t2i", what="person-time must be > 0")
    t1, t2 = data["t1i"], data["t2i"]
    if ctx.drop00:
        ctx.dropped = (data["x1i"] == 0) & (data["x2i"] == 0)
    zero = ((data["x1i"] == 0) | (data["x2i"] == 0)) & ~ctx.dropped
    cells, corrected = _correct({"x1i": data["x1i"], "x2i": data["x2i"]},
                                ("x1i", "x2i"), zero, ctx.add, ctx.to)
    x1, x2 = cells["x1i"], cells["x2i"]
    ir1, ir2 = x1 / t1, x2 / t2
    with np.errstate(divide="ignore", invalid="ignore"):
        if key == "IRR":
            yi = np.log(ir1 / ir2)
            vi = 1 / x1 + 1 / x2
            bad = (x1 == 0) | (x2 == 0)
        elif key == "IRD":
            yi = ir1 - ir2
            vi = ir1 / t1 + ir2 / t2
            bad = vi <= 0
        else:  # IRSD
            yi = np.sqrt(ir1) - np.sqrt(ir2)
            vi = 1 / (4 * t1) + 1 / (4 * t2)
            bad = np.zeros(ctx.k, dtype=bool)
    return yi, vi, corrected, bad


def _proportions(ctx: _Context, chosen: tuple[str, ...]) -> _Out:
    """One group's proportion: PR, PLN, PLO, PFT (``xi, ni`` or ``xi, mi``)."""
    key, data, vt = ctx.key, ctx.data, ctx.vt
    if "mi" in chosen:     # metafor's xi, mi: events and non-events
        ctx.nonneg("xi", "mi")
        ni = data["xi"] + data["mi"]
        _check(ni <= 0, "a group size (xi + mi) must be > 0", "mi", data["mi"], ctx.labels)
    else:
        ctx.nonneg("xi")
        ctx.positive("ni", what="a group size must be > 0")
        ctx.check(data["xi"] > data["ni"], "more events than patients (ni)", "xi")
        ni = data["ni"]
    xi = data["xi"]
    # A proportion of 0 or 1 has a zero cell (events or non-events): correct both.
    zero = (xi == 0) | (xi == ni)
    cells, corrected = _correct({"xi": xi, "mi": ni - xi}, ("xi", "mi"), zero, ctx.add,
                                ctx.to)
    xi, mi = cells["xi"], cells["mi"]
    ni = xi + mi
    p = xi / ni
    mean_p = _wmean(p, ni)
    with np.errstate(divide="ignore", invalid="ignore"):
        if key == "PLO":
            yi = np.log(xi / mi)
            vi = _select(vt, {"LS": lambda: 1 / xi + 1 / mi,
                              "AV": lambda: 1 / (mean_p * ni) + 1 / ((1 - mean_p) * ni)})
            bad = (xi == 0) | (mi == 0)
        elif key == "PR":
            yi = p
            vi = _select(vt, {"UB": lambda: p * (1 - p) / (ni - 1),
                              "LS": lambda: p * (1 - p) / ni,
                              "AV": lambda: mean_p * (1 - mean_p) / ni})
            bad = vi <= 0
        elif key == "PLN":
            yi = np.log(p)
            vi = _select(vt, {"LS": lambda: 1 / xi - 1 / ni,
                              "AV": lambda: 1 / (mean_p * ni) - 1 / ni})
            bad = xi == 0
        else:  # PFT: Freeman-Tukey double arcsine
            yi = 0.5 * (np.arcsin(np.sqrt(xi / (ni + 1))) + np.arcsin(np.sqrt((xi + 1)
                                                                             / (ni + 1))))
            vi = 1 / (4 * ni + 2)
            bad = np.zeros(ctx.k, dtype=bool)
    if key in ("PLO", "PR", "PLN") and ctx.strict:
        _check(bad, f"{key} is undefined for a proportion of 0 or 1 without a continuity "
               f"correction (to={ctx.to!r}, add={ctx.add})", "xi", data["xi"], ctx.labels)
    return yi, vi, corrected, bad


def escalc_frame(frame: Any, measure: str, *, labels: Sequence[Any] | None = None,
                 add: float | None = None, to: str = "only0", drop00: bool = False,
                 vtype: str = "LS", undefined: str = "raise") -> EffectSizes:
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
        # name a column of the set closest to complete (SMCR without ri: 'ri', not 'sd2i')
        missing = min(([c for c in cols if c not in frame.columns]
                       for cols in COLUMN_SETS[key]), key=len)
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
    return escalc(key, add=add, to=to, drop00=drop00, vtype=vtype, undefined=undefined,
                  labels=labels, **columns)
