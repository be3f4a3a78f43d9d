"""Estimates from a SQL source: sufficient statistics from the database, same results.

:func:`estimate_all_sql` is the SQL counterpart of
:func:`site_agent.estimators.estimate_all` (which takes a DataFrame) and returns the same
``{analysis name: Estimate | Refusal}``. Count- and moment-based estimators are computed
from aggregates the database returns (see :mod:`site_agent.connectors.sql`); regression
estimators get a DataFrame with only the columns they name and go through
``estimate_all`` itself, so the two paths cannot drift for them.

The formulas turning aggregates into ``yi, vi`` are metafor's ``escalc`` (Viechtbauer,
*J Stat Softw* 36(3), 2010) for 2×2 tables and two-group means, the log O/E with
``vi = (1 - O/N)/O`` (Debray et al., *BMJ* 356, 2017), the Brier score with
``vi = var((p - y)²)/N``, and the AUC with DeLong's variance (optionally on the logit
scale by the delta method, as Debray et al. recommend for pooling discrimination). The
reference tests check them against the CSV path on the same rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from scipy.special import gammaln

from site_agent.connectors.sql import DataProblem, SqlSource
from site_agent.estimators.results import Estimate, Refusal

#: estimators answered from SQL aggregates (only the aggregates leave the database)
PUSHDOWN_ESTIMATORS = frozenset({"two_by_two", "two_group", "oe_ratio", "brier", "auc"})
#: estimators that need rows: only the named columns are streamed
STREAMED_ESTIMATORS = frozenset({"logistic", "linear", "cox", "calibration_slope",
                                 "calibration_in_the_large"})


def _needed_columns(analysis: Any) -> list[str]:
    """Columns an analysis reads, in a stable order without duplicates."""
    names: list[str] = []
    for attr in ("outcome", "exposure", "time", "event", "score"):
        value = getattr(analysis, attr, None)
        if value:
            names.append(value)
    names.extend(getattr(analysis, "covariates", None) or ())
    return list(dict.fromkeys(names))


def _estimate(analysis: Any, measure: str, yi: float, vi: float, n: int, n_dropped: int,
              cells: Mapping[str, int] | None = None, **details: Any) -> Estimate | Refusal:
    if not (math.isfinite(yi) and math.isfinite(vi)) or vi <= 0:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: the estimate or its "
                       "variance is not finite and positive (no spread, no events or too "
                       "few rows)", "zero_variance")
    return Estimate(analysis=analysis.name, estimator=analysis.estimator, measure=measure,
                    yi=yi, vi=vi, se=math.sqrt(vi), n=n, n_dropped=n_dropped,
                    cells=cells or {}, details={"source": "sql", **details})


def _two_by_two(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    t = source.two_by_two(analysis.name, analysis.outcome, analysis.exposure)
    cells = {"exposed_events": t.exposed_events, "exposed_non_events": t.exposed_non_events,
             "unexposed_events": t.unexposed_events,
             "unexposed_non_events": t.unexposed_non_events}
    n1 = t.exposed_events + t.exposed_non_events
    n2 = t.unexposed_events + t.unexposed_non_events
    if n1 == 0 or n2 == 0:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: exposure "
                       f"{analysis.exposure!r} takes one value only", "constant_exposure")
    if t.exposed_events + t.unexposed_events == 0 or \
            t.exposed_non_events + t.unexposed_non_events == 0:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: outcome "
                       f"{analysis.outcome!r} never or always happens", "no_events")
    a, b, c, d = (float(t.exposed_events), float(t.exposed_non_events),
                  float(t.unexposed_events), float(t.unexposed_non_events))
    # metafor's default (add = 1/2, to = "only0"): a table with a zero cell gets 1/2 in
    # every cell, so log OR and log RR and their variances exist.
    if min(a, b, c, d) == 0:
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    m1, m2 = a + b, c + d
    measure = (getattr(analysis, "measure", None) or "OR").upper()
    if measure == "OR":
        yi, vi = math.log(a * d / (b * c)), 1 / a + 1 / b + 1 / c + 1 / d
    elif measure == "RR":
        yi, vi = math.log((a / m1) / (c / m2)), 1 / a - 1 / m1 + 1 / c - 1 / m2
    elif measure == "RD":
        p1, p2 = a / m1, c / m2
        yi, vi = p1 - p2, p1 * (1 - p1) / m1 + p2 * (1 - p2) / m2
    else:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: measure {measure!r} "
                       "is not OR, RR or RD", "invalid_values")
    return _estimate(analysis, measure, yi, vi, t.n, dropped, cells)


def _two_group(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    g = source.two_group(analysis.name, analysis.outcome, analysis.exposure)
    e, u = g.exposed, g.unexposed
    if e.n == 0 or u.n == 0:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: exposure "
                       f"{analysis.exposure!r} takes one value only", "constant_exposure")
    if e.n < 2 or u.n < 2:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: a group has fewer "
                       "than two rows", "too_few_rows")
    measure = (getattr(analysis, "measure", None) or "MD").upper()
    sd1, sd2 = e.sd, u.sd
    if measure == "MD":
        yi, vi = e.mean - u.mean, sd1 ** 2 / e.n + sd2 ** 2 / u.n
    elif measure == "SMD":
        # Hedges' g: Cohen's d with the pooled SD, times the exact small-sample
        # correction J(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2)), m = n1 + n2 - 2; variance
        # metafor's large-sample "LS": 1/n1 + 1/n2 + g² / (2 (n1 + n2)).
        m = e.n + u.n - 2
        sp = math.sqrt((e.ss + u.ss) / m)
        j = math.exp(gammaln(m / 2) - 0.5 * math.log(m / 2) - gammaln((m - 1) / 2))
        yi = j * (e.mean - u.mean) / sp
        vi = 1 / e.n + 1 / u.n + yi ** 2 / (2 * (e.n + u.n))
    elif measure == "ROM":
        if e.mean <= 0 or u.mean <= 0:
            return Refusal(analysis.name, f"analysis {analysis.name!r}: ROM needs positive "
                           "group means", "invalid_values")
        yi = math.log(e.mean / u.mean)
        vi = sd1 ** 2 / (e.n * e.mean ** 2) + sd2 ** 2 / (u.n * u.mean ** 2)
    else:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: measure {measure!r} "
                       "is not MD, SMD or ROM", "invalid_values")
    return _estimate(analysis, measure, yi, vi, g.n, dropped,
                     {"exposed": e.n, "unexposed": u.n})


def _oe_ratio(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    oe = source.observed_expected(analysis.name, analysis.outcome, analysis.score)
    if oe.observed <= 0 or oe.observed >= oe.n or oe.expected <= 0:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: outcome "
                       f"{analysis.outcome!r} never or always happens", "no_events")
    yi = math.log(oe.observed / oe.expected)
    vi = (1 - oe.observed / oe.n) / oe.observed
    return _estimate(analysis, "OE", yi, vi, oe.n, dropped,
                     {"events": int(oe.observed), "non_events": int(oe.n - oe.observed)})


def _brier(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    b = source.brier(analysis.name, analysis.outcome, analysis.score)
    if b.n < 2:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: fewer than two "
                       "complete rows", "too_few_rows")
    vi = (b.ss / (b.n - 1)) / b.n
    return _estimate(analysis, "Brier", b.mean, vi, b.n, dropped,
                     {"events": b.events, "non_events": b.n - b.events})


def _auc(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    p = source.auc(analysis.name, analysis.outcome, analysis.score)
    if p.n_pos < 2 or p.n_neg < 2:
        return Refusal(analysis.name, f"analysis {analysis.name!r}: outcome "
                       f"{analysis.outcome!r} has too few events or non-events",
                       "no_events")
    cells = {"events": p.n_pos, "non_events": p.n_neg}
    scale = (getattr(analysis, "scale", None) or "raw").lower()
    if scale == "logit":
        if not 0 < p.auc < 1:
            return Refusal(analysis.name, f"analysis {analysis.name!r}: AUC is 0 or 1, its "
                           "logit is infinite", "zero_variance")
        # delta method: d logit(a) / da = 1 / (a (1 - a))
        yi = math.log(p.auc / (1 - p.auc))
        vi = p.variance / (p.auc * (1 - p.auc)) ** 2
        return _estimate(analysis, "logit_AUC", yi, vi, p.n, dropped, cells, auc=p.auc)
    return _estimate(analysis, "AUC", p.auc, p.variance, p.n, dropped, cells)


_PUSHDOWN = {"two_by_two": _two_by_two, "two_group": _two_group, "oe_ratio": _oe_ratio,
             "brier": _brier, "auc": _auc}


def estimate_all_sql(source: SqlSource, spec: Any) -> dict[str, Estimate | Refusal]:
    """Every analysis of ``spec`` on a SQL source, in the spec's order.

    Parameters
    ----------
    source
        The site's data in a database.
    spec
        The analysis spec (:class:`fedsynth.spec.Spec`; anything with ``analyses``).

    Returns
    -------
    dict
        ``{analysis name: Estimate | Refusal}``, as
        :func:`site_agent.estimators.estimate_all` returns for a DataFrame.
    """
    analyses = list(spec.analyses)
    results: dict[str, Estimate | Refusal] = {}
    streamed = []
    for analysis in analyses:
        if analysis.estimator in _PUSHDOWN:
            try:
                columns = _needed_columns(analysis)
                source.require(analysis.name, columns)
                total, complete = source.count_rows(columns)
                results[analysis.name] = _PUSHDOWN[analysis.estimator](
                    source, analysis, total - complete)
            except DataProblem as problem:
                results[analysis.name] = Refusal(analysis.name, str(problem), problem.code)
        else:
            streamed.append(analysis)
    if streamed:
        results.update(_streamed(source, spec, streamed))
    return {a.name: results[a.name] for a in analyses}


def _streamed(source: SqlSource, spec: Any, analyses: list[Any]) -> dict[str, Any]:
    """Regression analyses: fetch only their columns, then the DataFrame estimators."""
    from site_agent.estimators import estimate_all

    present = set(source.columns())
    wanted = list(dict.fromkeys(c for a in analyses for c in _needed_columns(a)
                                if c in present))
    arrays = source.fetch_columns(wanted, analysis=", ".join(a.name for a in analyses))
    frame = pd.DataFrame(arrays, columns=wanted)
    sub_spec = _with_analyses(spec, analyses)
    return dict(estimate_all(frame, sub_spec))


def _with_analyses(spec: Any, analyses: list[Any]) -> Any:
    """The same spec restricted to ``analyses`` (a missing column stays a refusal there)."""
    if dataclasses.is_dataclass(spec):
        original = getattr(spec, "analyses")
        return dataclasses.replace(spec, analyses=type(original)(analyses)
                                   if isinstance(original, (tuple, list)) else tuple(analyses))
    return type("SubSpec", (), {"analyses": tuple(analyses)})()
