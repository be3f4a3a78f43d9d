"""Fixed-effect pooling of 2x2 tables without continuity corrections: Mantel-Haenszel and Peto.

Why
---
With rare events the inverse-variance method needs a continuity correction for every table
with a zero cell, and the corrected log odds ratios are biased towards the null (Sweeting,
Sutton & Lambert, "What to add to nothing? Use and avoidance of continuity corrections in
meta-analysis of sparse data", *Stat Med* 23(9), 2004; Bradburn et al., "Much ado about
nothing: a comparison of the performance of meta-analytical methods with rare events",
*Stat Med* 26(1), 2007). The Mantel-Haenszel estimators pool the counts themselves, so a
table with a zero cell contributes without a correction, and Peto's one-step estimator uses
only observed minus expected events and the hypergeometric variance.

What is computed (exactly as R's ``metafor::rma.mh`` and ``metafor::rma.peto``, 3.8-1):

* Mantel-Haenszel pooled OR, RR and RD (Mantel & Haenszel, *J Natl Cancer Inst* 22, 1959),
  with the Robins-Breslow-Greenland variance of log OR (Robins, Breslow & Greenland,
  *Biometrics* 42(2), 1986) and the Greenland-Robins variances of log RR and RD (Greenland &
  Robins, *Biometrics* 41(1), 1985; for RD the Sato form metafor uses, Sato, Greenland &
  Robins, *Biometrics* 45, 1989).
* The Cochran-Mantel-Haenszel test (with continuity correction, hypergeometric variance),
  the Breslow-Day test and Tarone's correction of it (Tarone, *Biometrika* 72(1), 1985),
  for the OR.
* Peto's one-step log odds ratio ``sum(O - E) / sum(V)`` (Yusuf et al., "Beta blockade during
  and after myocardial infarction", *Prog Cardiovasc Dis* 27(5), 1985), its Q statistic
  from the same O - E and V.
* Cochran's Q, I² and H² as metafor reports them: for MH, Q is computed from the escalc
  effect sizes (``add = 1/2`` to tables with a zero cell) around the MH estimate.

Tables with no events in both groups, or events for everyone in both groups, carry no
information about a relative effect and are dropped (metafor's ``drop00 = TRUE``); they are
named in ``dropped``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from fedsynth.effects.effect_sizes import escalc
from fedsynth.errors import InputError, show_value
from fedsynth.jsonsafe import finite_or_none as _num
from fedsynth.meta._format import p as _pvalue
from fedsynth.meta._format import peq

__all__ = [
    "MH_MEASURES",
    "TwoByTwoTables",
    "MantelHaenszelResult",
    "PetoResult",
    "as_tables",
    "mantel_haenszel",
    "peto",
]

#: Measures the Mantel-Haenszel method pools.
MH_MEASURES: tuple[str, ...] = ("OR", "RR", "RD")


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoByTwoTables:
    """Validated 2x2 tables in metafor's layout.

    Group 1 (treated/exposed) events ``ai`` and non-events ``bi``, group 2 (control) events
    ``ci`` and non-events ``di``.

    ``keep`` marks the tables that carry information (not double-zero / double-all);
    ``labels`` names every table (given labels, else ``"1"``, ``"2"``, ...).
    """

    ai: np.ndarray
    bi: np.ndarray
    ci: np.ndarray
    di: np.ndarray
    labels: tuple[str, ...]
    keep: np.ndarray

    @property
    def k_all(self) -> int:
        """Number of tables given."""
        return int(self.ai.size)

    @property
    def dropped(self) -> tuple[str, ...]:
        """Labels of the tables without information (no or only events in both groups)."""
        return tuple(lab for lab, k in zip(self.labels, self.keep) if not k)

    def used(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``ai, bi, ci, di`` of the informative tables."""
        m = self.keep
        return self.ai[m], self.bi[m], self.ci[m], self.di[m]


def _column(name: str, values: Any, labels: Sequence[str] | None) -> np.ndarray:
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected counts (numbers), got {values!r}") from None
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a one-dimensional sequence of counts")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr != np.round(arr))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"table {i + 1}" + (f" ({labels[i]})" if labels is not None and
                                     i < len(labels) else "")
        raise InputError(f"{name}: {where}: {show_value(arr[i])} is not a count (a whole "
                         "number >= 0)")
    return arr


def as_tables(ai: Any, bi: Any = None, ci: Any = None, di: Any = None, *,
              n1i: Any = None, n2i: Any = None,
              labels: Sequence[Any] | None = None) -> TwoByTwoTables:
    """Validate 2x2 tables given as ``ai, bi, ci, di`` or ``ai, n1i, ci, n2i`` (metafor's names).

    Raises
    ------
    InputError
        A missing column, unequal lengths, a value that is not a count, more events than
        patients, an empty group, or no table at all (naming the column, table and value).
    """
    labs = None if labels is None else [str(x) for x in labels]
    if ci is None:
        raise InputError("ci: the control group's events are required")
    a = _column("ai", ai, labs)
    c = _column("ci", ci, labs)
    if bi is None and n1i is None:
        raise InputError("bi: give the treated group's non-events (bi) or its size (n1i)")
    if di is None and n2i is None:
        raise InputError("di: give the control group's non-events (di) or its size (n2i)")
    if bi is not None and n1i is not None:
        raise InputError("bi/n1i: give either bi or n1i, not both")
    if di is not None and n2i is not None:
        raise InputError("di/n2i: give either di or n2i, not both")
    if bi is not None:
        b = _column("bi", bi, labs)
    else:
        n1 = _column("n1i", n1i, labs)
        _check_le(a, n1, "ai", "n1i", labs)
        b = n1 - a
    if di is not None:
        d = _column("di", di, labs)
    else:
        n2 = _column("n2i", n2i, labs)
        _check_le(c, n2, "ci", "n2i", labs)
        d = n2 - c
    sizes = {"ai": a.size, "bi": b.size, "ci": c.size, "di": d.size}
    if len(set(sizes.values())) != 1:
        raise InputError(f"ai, bi, ci, di: columns have different lengths {sizes}")
    k = a.size
    if k == 0:
        raise InputError("ai: no tables given")
    if labs is not None and len(labs) != k:
        raise InputError(f"labels: {len(labs)} labels for {k} tables")
    names = tuple(labs) if labs is not None else tuple(str(i + 1) for i in range(k))
    for g, (x, y, col) in enumerate(((a, b, "ai"), (c, d, "ci")), start=1):
        empty = (x + y) == 0
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise InputError(f"{col}: table {i + 1} ({names[i]}): group {g} has no patients")
    keep = ~(((a == 0) & (c == 0)) | ((b == 0) & (d == 0)))
    ro = [np.array(x, dtype=float) for x in (a, b, c, d)]
    for x in ro:
        x.setflags(write=False)
    keep.setflags(write=False)
    return TwoByTwoTables(ro[0], ro[1], ro[2], ro[3], names, keep)


def _check_le(x: np.ndarray, n: np.ndarray, xname: str, nname: str,
              labels: Sequence[str] | None) -> None:
    if x.size == n.size and (x > n).any():
        i = int(np.flatnonzero(x > n)[0])
        where = f"table {i + 1}" + (f" ({labels[i]})" if labels is not None else "")
        raise InputError(f"{xname}: {where}: {x[i]:g} events but {nname} = {n[i]:g} patients")


def _level(level: Any) -> float:
    try:
        lev = float(level)
    except (TypeError, ValueError):
        raise InputError(f"level: expected a percentage, got {level!r}") from None
    if not 0 < lev < 100:
        raise InputError(f"level: must lie strictly between 0 and 100, got {level!r}")
    return lev


def _wald(beta: float, se: float, level: float) -> tuple[float, float, float, float]:
    """``zval, pval, ci_lb, ci_ub`` of a Wald test and interval (nan if undefined)."""
    if not (math.isfinite(beta) and math.isfinite(se) and se > 0):
        return (math.nan,) * 4
    crit = float(special.ndtri(1.0 - (1.0 - level / 100.0) / 2.0))
    z = beta / se
    return z, float(2.0 * special.ndtr(-abs(z))), beta - crit * se, beta + crit * se


def _chi2_sf(x: float, df: float) -> float:
    if not (math.isfinite(x) and df > 0):
        return math.nan
    return float(stats.chi2.sf(x, df))


def _heterogeneity(q: float, k: int) -> tuple[float, float, float, float]:
    """``Q, Q_pval, I2, H2`` as metafor reports them for ``k`` tables (k = 1: 0, 1, 0, 1)."""
    if k <= 1:
        return 0.0, 1.0, 0.0, 1.0
    if not math.isfinite(q):
        return (math.nan,) * 4
    q = max(0.0, q)
    i2 = max(0.0, 100.0 * (q - (k - 1)) / q) if q > 0 else math.nan
    return q, _chi2_sf(q, k - 1), i2, q / (k - 1)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MantelHaenszelResult:
    """Mantel-Haenszel fixed-effect pooling of 2x2 tables (``metafor::rma.mh``).

    Attributes
    ----------
    measure
        ``"OR"``, ``"RR"`` or ``"RD"``; ``estimate`` is on the log scale for OR and RR.
    estimate, se, zval, pval, ci_lb, ci_ub, level
        Pooled effect, its standard error (Robins-Breslow-Greenland for log OR,
        Greenland-Robins for log RR and RD), Wald test and interval; ``nan`` when the MH
        estimate does not exist (e.g. no events in one group of every table).
    Q, Q_pval, I2, H2
        Cochran's Q of the escalc effect sizes (1/2 added to tables with a zero cell) around
        the MH estimate, its p-value on ``k - 1`` df, I² (%) and H².
    cmh, cmh_pval
        Cochran-Mantel-Haenszel test of no association (continuity-corrected; OR only).
    tarone, tarone_pval, breslow_day, breslow_day_pval
        Tarone's test and the Breslow-Day test of homogeneous odds ratios (OR only), on
        ``k_pos - 1`` df.
    k, k_yi, k_pos
        Tables given (all enter the MH sums, as in metafor), tables with an effect size
        (entering Q), and tables entering the Breslow-Day/Tarone tests.
    dropped
        Labels of tables without an effect size (no events, or only events, in both
        groups); they add nothing to the OR but enter the MH sums of RR and RD.
    correct
        Whether the CMH test used the continuity correction.
    """

    measure: str
    estimate: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    level: float
    Q: float
    Q_pval: float
    I2: float
    H2: float
    cmh: float
    cmh_pval: float
    tarone: float
    tarone_pval: float
    breslow_day: float
    breslow_day_pval: float
    k: int
    k_yi: int
    k_pos: int
    dropped: tuple[str, ...] = ()
    correct: bool = True

    method = "MH"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names (``None`` for a value that does not exist)."""
        out: dict[str, Any] = {"method": "MH", "measure": self.measure}
        for key in ("estimate", "se", "zval", "pval", "ci_lb", "ci_ub", "Q", "Q_pval", "I2",
                    "H2"):
            out[key] = _num(getattr(self, key))
        if self.measure == "OR":
            for key in ("cmh", "cmh_pval", "tarone", "tarone_pval", "breslow_day",
                        "breslow_day_pval"):
                out[key] = _num(getattr(self, key))
        out.update(k=self.k, k_yi=self.k_yi, level=self.level, dropped=list(self.dropped))
        return out

    def summary(self) -> str:
        """A metafor-like text summary."""
        scale = {"OR": "log odds ratio", "RR": "log risk ratio", "RD": "risk difference"}
        lines = [f"Fixed-effect model, Mantel-Haenszel method (k = {self.k}; "
                 f"{scale[self.measure]})"]
        if self.dropped:
            lines.append(f"Without an effect size (not in Q): {', '.join(self.dropped)}")
        lines += _test_lines(self)
        if self.measure == "OR":
            lines.append(f"Cochran-Mantel-Haenszel test: CMH = {_f(self.cmh)}, df = 1, "
                         f"{_pv(self.cmh_pval)}")
            lines.append(f"Tarone's test for heterogeneity: X^2 = {_f(self.tarone)}, "
                         f"df = {max(self.k_pos - 1, 0)}, {_pv(self.tarone_pval)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class PetoResult:
    """Peto's one-step pooled log odds ratio (``metafor::rma.peto``).

    Attributes
    ----------
    estimate, se, zval, pval, ci_lb, ci_ub, level
        ``sum(O - E) / sum(V)`` with ``se = 1 / sqrt(sum(V))``, Wald test and interval.
    Q, Q_pval, I2, H2
        ``sum((O - E)^2 / V) - sum(O - E)^2 / sum(V)`` on ``k - 1`` df, I² (%), H².
    k, k_yi
        Tables given (uninformative ones add nothing) and tables with an effect size (Q's
        df is ``k_yi - 1``); ``dropped`` names the uninformative ones.
    """

    estimate: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    level: float
    Q: float
    Q_pval: float
    I2: float
    H2: float
    k: int
    k_yi: int
    dropped: tuple[str, ...] = ()

    measure = "OR"
    method = "PETO"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names."""
        out: dict[str, Any] = {"method": "PETO", "measure": "OR"}
        for key in ("estimate", "se", "zval", "pval", "ci_lb", "ci_ub", "Q", "Q_pval", "I2",
                    "H2"):
            out[key] = _num(getattr(self, key))
        out.update(k=self.k, k_yi=self.k_yi, level=self.level, dropped=list(self.dropped))
        return out

    def summary(self) -> str:
        """A metafor-like text summary."""
        lines = [f"Fixed-effect model, Peto's method (k = {self.k}; log odds ratio)"]
        if self.dropped:
            lines.append(f"Without an effect size (not in Q): {', '.join(self.dropped)}")
        lines += _test_lines(self)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _f(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "NA"


def _pv(x: float) -> str:
    """``p-val = 0.0602`` or ``p-val < .0001`` as metafor prints them."""
    return f"p-val {peq(x, 4)}"


def _test_lines(r: Any) -> list[str]:
    lines = [f"Test for heterogeneity: Q(df = {max(r.k_yi - 1, 0)}) = {_f(r.Q)}, "
             f"{_pv(r.Q_pval)}; I^2 = {_f(r.I2)}%, H^2 = {_f(r.H2)}",
             "", "estimate      se     zval     pval    ci.lb    ci.ub",
             f"{_f(r.estimate):>8} {_f(r.se):>7} {_f(r.zval):>8} {_pvalue(r.pval, 4):>8} "
             f"{_f(r.ci_lb):>8} {_f(r.ci_ub):>8}"]
    if r.measure in ("OR", "RR") and math.isfinite(r.estimate):
        lines.append(f"{r.measure} = {math.exp(r.estimate):.4f} "
                     f"[{math.exp(r.ci_lb):.4f}, {math.exp(r.ci_ub):.4f}] "
                     f"({r.level:g}% CI)")
    return lines


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


def _escalc_q(measure: str, a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray,
              beta: float) -> float:
    """Q of the escalc effect sizes (1/2 added to tables with a zero cell) around ``beta``."""
    if not math.isfinite(beta):
        return math.nan
    es = escalc(measure, ai=a, bi=b, ci=c, di=d, add=0.5, to="only0")
    return float(np.sum((es.yi - beta) ** 2 / es.vi))


def mantel_haenszel(ai: Any, bi: Any = None, ci: Any = None, di: Any = None, *,
                    n1i: Any = None, n2i: Any = None, measure: str = "OR",
                    level: float = 95.0, correct: bool = True,
                    labels: Sequence[Any] | None = None) -> MantelHaenszelResult:
    """Mantel-Haenszel pooled OR, RR or RD of 2x2 tables, as ``metafor::rma.mh``.

    Parameters
    ----------
    ai, bi, ci, di
        Events and non-events in group 1 (treated) and group 2 (control) of each table;
        instead of ``bi``/``di`` the group sizes ``n1i``/``n2i`` may be given.
    measure
        ``"OR"`` (log odds ratio), ``"RR"`` (log risk ratio) or ``"RD"`` (risk difference).
    level
        Confidence level in percent.
    correct
        Continuity correction of the CMH test (metafor's default ``TRUE``).
    labels
        Table names (used in messages and in ``dropped``).

    Returns
    -------
    MantelHaenszelResult

    Raises
    ------
    InputError
        Invalid counts (see :func:`as_tables`), an unknown measure, or no informative table.

    Notes
    -----
    No continuity correction enters the estimate; tables with no events (or only events) in
    both groups are dropped. Robins, Breslow & Greenland, *Biometrics* 42, 1986; Greenland &
    Robins, *Biometrics* 41, 1985; Tarone, *Biometrika* 72, 1985.

    Examples
    --------
    >>> r = mantel_haenszel([0, 4, 1], [50, 96, 99], [3, 9, 2], [47, 91, 98])
    >>> round(r.estimate, 4), r.k
    (-1.0811, 3)
    """
    key = str(measure).upper()
    if key not in MH_MEASURES:
        raise InputError(f"measure: the Mantel-Haenszel method pools {', '.join(MH_MEASURES)}, "
                         f"got {measure!r}")
    lev = _level(level)
    tabs = as_tables(ai, bi, ci, di, n1i=n1i, n2i=n2i, labels=labels)
    # metafor's drop00 = c(TRUE, FALSE): uninformative tables leave the escalc effect sizes
    # (and so Q), not the MH sums (where they add nothing to OR, but do to RR and RD)
    a, b, c, d = tabs.ai, tabs.bi, tabs.ci, tabs.di
    k = tabs.k_all
    n1, n2 = a + b, c + d
    n = n1 + n2
    nan = math.nan
    cmh = cmh_p = bd = bd_p = ta = ta_p = nan
    k_pos = 0
    if key == "OR":
        P = a / n + d / n
        Qm = b / n + c / n
        R_i = (a / n) * d
        S_i = (b / n) * c
        R, S = float(R_i.sum()), float(S_i.sum())
        if R == 0 or S == 0:
            beta = se = nan
        else:
            beta = math.log(R / S)
            se = math.sqrt(0.5 * (float((P * R_i).sum()) / R ** 2
                                  + float((P * S_i + Qm * R_i).sum()) / (R * S)
                                  + float((Qm * S_i).sum()) / S ** 2))
        xt, yt = a + c, b + d
        if xt.sum() > 0 and yt.sum() > 0:
            num = (abs(float((a - n1 / n * xt).sum())) - (0.5 if correct else 0.0)) ** 2
            cmh = num / float((n1 / n * (n2 / n) * (xt * (yt / (n - 1)))).sum())
            cmh_p = _chi2_sf(cmh, 1)
        if math.isfinite(beta):
            psi = R / S
            if psi == 1:
                n11 = n1 / n * xt
            else:
                A = psi * (n1 + xt) + (n2 - xt)
                B = np.sqrt(A * A - 4 * n1 * xt * psi * (psi - 1))
                n11 = (A - B) / (2 * (psi - 1))
            pos = (n11 > 0) & (xt > 0) & (yt > 0)
            k_pos = int(pos.sum())
            e11 = n11[pos]
            e12 = n1[pos] - e11
            e21 = xt[pos] - e11
            e22 = e11 - n1[pos] - xt[pos] + n[pos]
            var = 1.0 / (1 / e11 + 1 / e12 + 1 / e21 + 1 / e22)
            dev = a[pos] - e11
            bd = max(0.0, float((dev ** 2 / var).sum()))
            ta = max(0.0, bd - float(dev.sum()) ** 2 / float(var.sum()))
            if k_pos > 1:
                bd_p, ta_p = _chi2_sf(bd, k_pos - 1), _chi2_sf(ta, k_pos - 1)
    elif key == "RR":
        R = float((a * (n2 / n)).sum())
        S = float((c * (n1 / n)).sum())
        if a.sum() == 0 or c.sum() == 0:
            beta = se = nan
        else:
            beta = math.log(R / S)
            se = math.sqrt(float((n1 / n * (n2 / n) * (a + c) - (a / n) * c).sum()) / (R * S))
    else:  # RD
        w = float((n1 * (n2 / n)).sum())
        beta = float((a * (n2 / n) - c * (n1 / n)).sum()) / w
        var = (beta * float((c * (n1 / n) ** 2 - a * (n2 / n) ** 2
                             + (n1 / n) * (n2 / n) * (n2 - n1) / 2).sum())
               + float((a * (n2 - c) / n + c * (n1 - a) / n).sum()) / 2) / w ** 2
        se = math.sqrt(var) if var > 0 else nan
    zval, pval, lb, ub = _wald(beta, se, lev)
    k_yi = int(tabs.keep.sum())
    q, q_p, i2, h2 = (_heterogeneity(_escalc_q(key, *tabs.used(), beta), k_yi) if k_yi
                      else (math.nan,) * 4)
    return MantelHaenszelResult(
        measure=key, estimate=beta, se=se, zval=zval, pval=pval, ci_lb=lb, ci_ub=ub,
        level=lev, Q=q, Q_pval=q_p, I2=i2, H2=h2, cmh=cmh, cmh_pval=cmh_p, tarone=ta,
        tarone_pval=ta_p, breslow_day=bd, breslow_day_pval=bd_p, k=k, k_yi=k_yi,
        k_pos=k_pos, dropped=tabs.dropped, correct=bool(correct))


def peto(ai: Any, bi: Any = None, ci: Any = None, di: Any = None, *, n1i: Any = None,
         n2i: Any = None, level: float = 95.0,
         labels: Sequence[Any] | None = None) -> PetoResult:
    """Peto's one-step pooled log odds ratio of 2x2 tables, as ``metafor::rma.peto``.

    Each table contributes its observed minus expected events ``O - E`` in group 1 and the
    hypergeometric variance ``V`` under no effect; the pooled log odds ratio is
    ``sum(O - E) / sum(V)`` with variance ``1 / sum(V)`` (Yusuf et al., *Prog Cardiovasc Dis*
    27(5), 1985). No continuity correction; double-zero tables are dropped.

    Raises
    ------
    InputError
        Invalid counts, or no table with both outcomes (``sum(V) = 0``).

    Examples
    --------
    >>> r = peto([0, 4, 1], [50, 96, 99], [3, 9, 2], [47, 91, 98])
    >>> round(r.estimate, 4)
    -0.9931
    """
    lev = _level(level)
    tabs = as_tables(ai, bi, ci, di, n1i=n1i, n2i=n2i, labels=labels)
    a, b, c, d = tabs.ai, tabs.bi, tabs.ci, tabs.di      # uninformative tables add 0
    k, k_yi = tabs.k_all, int(tabs.keep.sum())
    n1, n2 = a + b, c + d
    n = n1 + n2
    xt, yt = a + c, b + d
    E = xt * n1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        V = np.where(n > 1, xt * yt * (n1 / n) * (n2 / n) / np.where(n > 1, n - 1, 1), 0.0)
    sv = float(V.sum())
    if k == 0 or sv == 0:
        raise InputError("ai: one of the two outcomes never occurs in any table; Peto's "
                         "method cannot be used")
    oe = a - E
    beta = float(oe.sum()) / sv
    se = math.sqrt(1.0 / sv)
    zval, pval, lb, ub = _wald(beta, se, lev)
    pos = V > 0
    k_pos = int(pos.sum())
    q = max(0.0, float((oe[pos] ** 2 / V[pos]).sum()) - float(oe.sum()) ** 2 / sv)
    if k_pos > 1:
        q_p = _chi2_sf(q, k_yi - 1)
        i2 = max(0.0, 100.0 * (q - (k_yi - 1)) / q) if q > 0 else math.nan
        h2 = q / (k_yi - 1)
    else:
        q_p, i2, h2 = 1.0, 0.0, 1.0
    return PetoResult(estimate=beta, se=se, zval=zval, pval=pval, ci_lb=lb, ci_ub=ub,
                      level=lev, Q=q, Q_pval=q_p, I2=i2, H2=h2, k=k, k_yi=k_yi,
                      dropped=tabs.dropped)
