"""Estimates from a SQL source: sufficient statistics from the database, same results.

:func:`estimate_all_sql` is the SQL counterpart of
:func:`fedsynth.effects.estimate_all` (which takes a DataFrame) and returns the same
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

from site_agent.connectors.sql import DataProblem, SqlSource
from fedsynth.effects.effect_sizes import escalc
from fedsynth.effects.results import Estimate, Refusal

#: estimators answered from SQL aggregates (only the aggregates leave the database)
PUSHDOWN_ESTIMATORS = frozenset({"two_by_two", "two_group", "oe_ratio", "brier", "auc"})
#: estimators that need rows: only the named columns are streamed
STREAMED_ESTIMATORS = frozenset({"logistic", "linear", "cox", "calibration_slope",
                                 "calibration_in_the_large"})


def _needed_columns(analysis: Any) -> list[str]:
    """Columns an analysis reads, in a stable order without duplicates."""
    if getattr(analysis, "columns", None):  # AnalysisSpec knows them
        return list(dict.fromkeys(analysis.columns))
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


def _refuse(analysis: Any, code: str, reason: str) -> Refusal:
    return Refusal(analysis=analysis.name, reason=reason, code=code)


def _two_by_two(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    t = source.two_by_two(analysis.name, analysis.outcome, analysis.exposure)
    # metafor's names, as the CSV path: group 1 = exposed, ai/bi its events/non-events
    cells = {"ai": t.exposed_events, "bi": t.exposed_non_events,
             "ci": t.unexposed_events, "di": t.unexposed_non_events}
    if t.n < 2:
        return _refuse(analysis, "too_few_rows", "too few complete rows for this analysis "
                       "(it needs at least 2)")
    if cells["ai"] + cells["bi"] == 0 or cells["ci"] + cells["di"] == 0:
        return _refuse(analysis, "constant_exposure", f"the exposure column "
                       f"{analysis.exposure!r} takes a single value, so there is nothing "
                       "to compare")
    measure = analysis.measure or "OR"
    # escalc applies metafor's default correction (1/2 in every cell of a table with a
    # zero cell), exactly as for CSV input.
    es = escalc(measure, ai=[cells["ai"]], bi=[cells["bi"]], ci=[cells["ci"]],
                di=[cells["di"]])
    return _estimate(analysis, measure, float(es.yi[0]), float(es.vi[0]), t.n, dropped,
                     cells, corrected=bool(es.corrected[0]))


def _two_group(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    g = source.two_group(analysis.name, analysis.outcome, analysis.exposure)
    e, u = g.exposed, g.unexposed
    if g.n < 4:
        return _refuse(analysis, "too_few_rows", "too few complete rows for this analysis "
                       "(it needs at least 4)")
    if e.n == 0 or u.n == 0:
        return _refuse(analysis, "constant_exposure", f"the exposure column "
                       f"{analysis.exposure!r} takes a single value, so there is nothing "
                       "to compare")
    if e.n < 2 or u.n < 2:
        return _refuse(analysis, "too_few_rows", "each exposure group needs at least two "
                       "rows for a standard deviation")
    if e.ss == 0 or u.ss == 0:
        return _refuse(analysis, "zero_variance", f"the outcome column {analysis.outcome!r}"
                       " is constant within an exposure group")
    measure = analysis.measure or "MD"
    if measure == "ROM" and (e.mean <= 0 or u.mean <= 0):
        return _refuse(analysis, "invalid_values", f"ROM needs a positive mean of "
                       f"{analysis.outcome!r} in both groups")
    # means and SDs from the database's two-pass sums; escalc as for CSV input (SMD is
    # Hedges' g with the exact correction, metafor's large-sample variance)
    es = escalc(measure, m1i=[e.mean], sd1i=[e.sd], n1i=[e.n], m2i=[u.mean],
                sd2i=[u.sd], n2i=[u.n])
    cells = {"n_exposed": e.n, "n_unexposed": u.n}
    # A 0/1 outcome makes the mean difference a risk difference that identifies the
    # exposure x outcome table: report its cells (never sent) for disclosure control, as
    # the DataFrame estimator does.
    table = source.binary_outcome_table(analysis.name, analysis.outcome, analysis.exposure)
    if table is not None:
        cells.update(_binary_outcome_cells(table))
    return _estimate(analysis, measure, float(es.yi[0]), float(es.vi[0]), g.n, dropped,
                     cells)


def _binary_outcome_cells(t: Any) -> dict[str, int]:
    """The 2x2 cells and outcome margins of a :class:`TwoByTwoCounts`, metafor's names."""
    events = t.exposed_events + t.unexposed_events
    return {"ai": t.exposed_events, "bi": t.exposed_non_events, "ci": t.unexposed_events,
            "di": t.unexposed_non_events, "events": events, "non_events": t.n - events}


def _oe_ratio(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    oe = source.observed_expected(analysis.name, analysis.outcome, analysis.score)
    if oe.n < 2:
        return _refuse(analysis, "too_few_rows", "too few complete rows for this analysis "
                       "(it needs at least 2)")
    if oe.observed == 0:
        return _refuse(analysis, "no_events", f"the outcome column {analysis.outcome!r} "
                       "has no events, so log(O/E) is undefined")
    if oe.observed == oe.n:
        return _refuse(analysis, "no_events", f"the outcome column {analysis.outcome!r} "
                       "has only events, so the variance of log(O/E) is zero")
    yi = math.log(oe.observed / oe.expected)
    vi = (1 - oe.observed / oe.n) / oe.observed
    return _estimate(analysis, "OE", yi, vi, oe.n, dropped,
                     {"events": int(oe.observed), "non_events": int(oe.n - oe.observed),
                      "observed": int(oe.observed)})


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
    if p.n < 4:
        return _refuse(analysis, "too_few_rows", "too few complete rows for this analysis "
                       "(it needs at least 4)")
    if p.n_pos == 0 or p.n_neg == 0:
        return _refuse(analysis, "no_events", f"the outcome column {analysis.outcome!r} "
                       f"has {'no events' if p.n_pos == 0 else 'only events'}")
    if p.n_pos < 2 or p.n_neg < 2:
        return _refuse(analysis, "too_few_rows", "the DeLong variance needs at least two "
                       "events and two non-events")
    cells = {"cases": p.n_pos, "controls": p.n_neg}
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
        :func:`fedsynth.effects.estimate_all` returns for a DataFrame.
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
    from fedsynth.effects import estimate_all

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
