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

from fedsynth.effects import estimate_all
from fedsynth.effects.effect_sizes import escalc
from fedsynth.effects.patient_level import CATEGORICAL_LEVELS
from fedsynth.effects.results import Estimate, Refusal
from site_agent.connectors.sql import DataProblem, SqlSource

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
        return _refuse(analysis, "zero_variance", cells=cells, n=n,
                       detail="the estimate or its variance is not finite and positive")
    return Estimate(analysis=analysis.name, estimator=analysis.estimator, measure=measure,
                    yi=yi, vi=vi, se=math.sqrt(vi), n=n, n_dropped=n_dropped,
                    cells=cells or {}, details={"source": "sql", **details})


def _refuse(analysis: Any, key: str, *, cells: Mapping[str, int] | None = None,
            n: int | None = None, detail: str | None = None, **params: Any) -> Refusal:
    """A refusal in the fixed vocabulary, with the counts behind it (kept at the site)."""
    details = {k: getattr(analysis, k, None) for k in ("outcome", "exposure", "score",
                                                        "event") if getattr(analysis, k, None)}
    return Refusal.of(key, analysis.name, cells=cells, n=n, detail=detail,
                      details=details, estimator=analysis.estimator, **params)


def _margins(events: int, n: int) -> dict[str, int]:
    return {"events": int(events), "non_events": int(n - events)}


def _table_mins(counts: Any, margin: str) -> dict[str, int]:
    """The smallest cells of a level-counts table.

    ``table_min`` and the smallest level (``margin``) of a level-counts table, as
    :mod:`fedsynth.effects.patient_level` reports them for a categorical column.
    """
    if counts is None or not len(counts):
        return {}
    return {"table_min": int(counts.min()), margin: int(counts.sum(axis=1).min())}


def _two_by_two(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    t = source.two_by_two(analysis.name, analysis.outcome, analysis.exposure)
    # metafor's names, as the CSV path: group 1 = exposed, ai/bi its events/non-events
    cells = {"ai": t.exposed_events, "bi": t.exposed_non_events,
             "ci": t.unexposed_events, "di": t.unexposed_non_events}
    if t.n < 2:
        return _refuse(analysis, "too_few_rows", n=t.n)
    if cells["ai"] + cells["bi"] == 0 or cells["ci"] + cells["di"] == 0:
        return _refuse(analysis, "constant_exposure", column=analysis.exposure,
                       cells={**cells, "n_exposed": cells["ai"] + cells["bi"],
                              "n_unexposed": cells["ci"] + cells["di"]})
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
    cells: dict[str, int] = {"n_exposed": e.n, "n_unexposed": u.n}
    # A 0/1 outcome makes the mean difference a risk difference that identifies the
    # exposure x outcome table, and an outcome with a few more values a larger table:
    # report its cells (never sent) for disclosure control, as the DataFrame estimator
    # does. Counted before any refusal, whose reason may hinge on them.
    if g.n:
        table = source.binary_outcome_table(analysis.name, analysis.outcome,
                                            analysis.exposure)
        if table is not None:
            cells.update(_binary_outcome_cells(table))
        else:
            cells.update(_table_mins(source.level_counts(
                analysis.name, analysis.outcome, analysis.exposure, CATEGORICAL_LEVELS),
                "outcome_level_min"))
    if g.n < 4:
        return _refuse(analysis, "too_few_rows", n=g.n, cells=cells)
    if e.n == 0 or u.n == 0:
        return _refuse(analysis, "constant_exposure", column=analysis.exposure, cells=cells)
    if e.n < 2 or u.n < 2:
        return _refuse(analysis, "too_few_per_group", cells=cells, n=g.n)
    if e.ss == 0 or u.ss == 0:
        return _refuse(analysis, "constant_within_group", column=analysis.outcome,
                       cells=cells, n=g.n)
    measure = analysis.measure or "MD"
    if measure == "ROM" and (e.mean <= 0 or u.mean <= 0):
        return _refuse(analysis, "rom_non_positive", column=analysis.outcome, cells=cells,
                       n=g.n)
    # means and SDs from the database's two-pass sums; escalc as for CSV input (SMD is
    # Hedges' g with the exact correction, metafor's large-sample variance)
    es = escalc(measure, m1i=[e.mean], sd1i=[e.sd], n1i=[e.n], m2i=[u.mean],
                sd2i=[u.sd], n2i=[u.n])
    return _estimate(analysis, measure, float(es.yi[0]), float(es.vi[0]), g.n, dropped,
                     cells)


def _binary_outcome_cells(t: Any) -> dict[str, int]:
    """The 2x2 cells and outcome margins of a :class:`TwoByTwoCounts`, metafor's names."""
    events = t.exposed_events + t.unexposed_events
    return {"ai": t.exposed_events, "bi": t.exposed_non_events, "ci": t.unexposed_events,
            "di": t.unexposed_non_events, "events": events, "non_events": t.n - events}


def _score_cells(source: SqlSource, analysis: Any) -> dict[str, int]:
    """The score-level x outcome table of a score with few distinct values.

    The score-level x outcome table of a score with few distinct values (see
    :func:`fedsynth.effects.patient_level._score_table_cells`).
    """
    return _table_mins(source.level_counts(analysis.name, analysis.score, analysis.outcome,
                                           CATEGORICAL_LEVELS), "score_level_min")


def _oe_ratio(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    oe = source.observed_expected(analysis.name, analysis.outcome, analysis.score)
    if oe.n < 2:
        return _refuse(analysis, "too_few_rows", n=oe.n)
    cells = {**_margins(int(oe.observed), oe.n), **_score_cells(source, analysis),
             "observed": int(oe.observed)}
    if oe.observed == 0 or oe.observed == oe.n:
        # log(O/E) is undefined without events and has no variance with only events
        return _refuse(analysis, "no_events", column=analysis.outcome, cells=cells, n=oe.n)
    yi = math.log(oe.observed / oe.expected)
    vi = (1 - oe.observed / oe.n) / oe.observed
    return _estimate(analysis, "OE", yi, vi, oe.n, dropped, cells)


def _brier(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    b = source.brier(analysis.name, analysis.outcome, analysis.score)
    if b.n < 2:
        return _refuse(analysis, "too_few_rows", n=b.n)
    vi = (b.ss / (b.n - 1)) / b.n
    return _estimate(analysis, "Brier", b.mean, vi, b.n, dropped,
                     {**_margins(b.events, b.n), **_score_cells(source, analysis)})


def _auc(source: SqlSource, analysis: Any, dropped: int) -> Estimate | Refusal:
    p = source.auc(analysis.name, analysis.outcome, analysis.score)
    if p.n < 4:
        return _refuse(analysis, "too_few_rows", n=p.n)
    cells = {**_margins(p.n_pos, p.n), **_score_cells(source, analysis)}
    if p.n_pos == 0 or p.n_neg == 0:
        return _refuse(analysis, "no_events", column=analysis.outcome, cells=cells, n=p.n)
    if p.n_pos < 2 or p.n_neg < 2:
        return _refuse(analysis, "too_few_events", cells=cells, n=p.n)
    scale = (getattr(analysis, "scale", None) or "raw").lower()
    if scale == "logit":
        if not 0 < p.auc < 1:
            return _refuse(analysis, "perfect_discrimination", cells=cells, n=p.n)
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
        # An analysis scored by a model artifact needs the rows (the site scores them).
        if analysis.estimator in _PUSHDOWN and getattr(analysis, "model", None) is None:
            try:
                columns = _needed_columns(analysis)
                source.require(analysis.name, columns)
                total, complete = source.count_rows(columns)
                results[analysis.name] = _PUSHDOWN[analysis.estimator](
                    source, analysis, total - complete)
            except DataProblem as problem:
                # The message may quote the database, the query or the table's columns:
                # it stays at the site as the refusal's detail; the sentence sent is the
                # vocabulary's, naming at most a column of the spec.
                results[analysis.name] = _refuse(analysis, problem.key, detail=str(problem),
                                                 column=problem.column)
        else:
            streamed.append(analysis)
    if streamed:
        results.update(_streamed(source, spec, streamed))
    return {a.name: results[a.name] for a in analyses}


def _streamed(source: SqlSource, spec: Any, analyses: list[Any]) -> dict[str, Any]:
    """Regression analyses: fetch only their columns, then the DataFrame estimators."""
    present = set(source.columns())
    wanted = list(dict.fromkeys(c for a in analyses for c in _needed_columns(a)
                                if c in present))
    arrays = source.fetch_columns(wanted, analysis=", ".join(a.name for a in analyses))
    frame = pd.DataFrame(arrays, columns=wanted)
    sub_spec = _with_analyses(spec, analyses)
    return dict(estimate_all(frame, sub_spec))


def _with_analyses(spec: Any, analyses: list[Any]) -> Any:
    """The same spec restricted to ``analyses`` (a missing column stays a refusal there)."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        original = getattr(spec, "analyses")
        return dataclasses.replace(spec, analyses=type(original)(analyses)
                                   if isinstance(original, (tuple, list)) else tuple(analyses))
    return type("SubSpec", (), {"analyses": tuple(analyses)})()
