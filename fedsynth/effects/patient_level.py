"""Estimators from patient-level data (a pandas DataFrame), one per spec estimator.

Why
---
Each site turns its rows into one estimate ``yi`` with its sampling variance ``vi`` on the
scale on which the coordinator pools (two-stage individual-participant-data meta-analysis:
Riley, Lambert & Abo-Zaid, "Meta-analysis of individual participant data: rationale,
conduct, and reporting", *BMJ* 340, 2010; Debray et al., "Meta-analysis and aggregation of
multiple published prediction models", *Stat Med* 33, 2014, for the model-evaluation
measures). Where a well-kept library is exact we use it: statsmodels GLM (logistic, same
IRLS maximum likelihood as R's ``glm``; the variance is the inverse information at the
converged coefficients, not at the iterate before, so every engine of
:mod:`fedsynth.effects.chunked` gives the same number), OLS (R's ``lm``). The Cox partial
likelihood (Efron or Breslow ties, as R's ``coxph``) is maximised by the vectorised Newton
step of :mod:`fedsynth.effects.aggregates` (faster than statsmodels' PHReg and the same
risk-set sums the chunked, SQL and Spark engines add up). What none provides is written
here: the DeLong variance of the AUC (:mod:`.delong`) and the calibration summaries of Van
Calster et al. ("A calibration hierarchy for risk models was defined", *J Clin Epidemiol*
74, 2016).

Contract
--------
* Rows with a missing value in a column the analysis uses are dropped *for that analysis*
  and counted in ``Estimate.n_dropped``.
* Anything that makes an estimate impossible or meaningless (unknown column, non-numeric
  values, non-binary outcome, constant exposure, no events, perfect separation, too few
  rows, a singular design) is a :class:`Refusal` with a plain reason and a machine code,
  never an exception: one failing analysis does not stop the others.
* Refusal reasons are sentences of the fixed vocabulary
  (:data:`fedsynth.effects.results.REFUSAL_VOCABULARY`) naming only the spec's columns;
  they never contain counts or data. The counts behind a refusal (``events = 0``, a zero
  cell, an empty exposure group) travel with it in ``Refusal.cells`` (kept at the site),
  so that disclosure control can reword a refusal caused by a count below the limit.
* Every estimate reports in ``Estimate.cells`` the counts its ``yi, vi, n`` may determine
  (see ``docs/decisions/security.md``, "What each estimator's numbers determine").
* Categorical covariates (``[analysis.categorical]``, logistic, linear and Cox) are coded
  as the federated models code them (:mod:`fedsynth.models.coding`: treatment contrasts
  against the first declared level; a value outside the levels refuses the analysis). A
  declared level this site lacks is an all-zero column and is left out of the site's fit,
  which is R's ``glm``/``coxph`` with that coefficient ``NA``: the exposure's estimate is
  unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.effects.aggregates import fit_cox
from fedsynth.effects.delong import delong_auc
from fedsynth.effects.effect_sizes import escalc
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.errors import InputError
from fedsynth.models.coding import CodingError, encode_covariates, level_codes
from fedsynth.spec import AnalysisSpec, Spec, parse_spec

__all__ = ["estimate", "estimate_all", "Refuse"]

_LOG = logging.getLogger(__name__)

#: A fitted coefficient beyond this (on the log-odds / log-hazard scale, per unit of a 0/1
#: exposure) only arises when the likelihood has no finite maximum (separation).
_SEPARATION_COEF = 25.0

#: A column with at most this many distinct values on an analysis's complete rows is a
#: categorical variable for disclosure control: the table it forms with the outcome (a
#: score's levels x the 0/1 outcome, an exposure x a few-valued outcome's levels) is what
#: the released ``yi, vi, n`` may identify by integer search, so its smallest cell is
#: reported in ``Estimate.cells`` (see docs/decisions/security.md, "What each estimator's
#: numbers determine").
CATEGORICAL_LEVELS = 20


class Refuse(Exception):
    """Raised inside an estimator to refuse the analysis; turned into a Refusal.

    Parameters
    ----------
    key
        The sentence of :data:`fedsynth.effects.results.REFUSAL_VOCABULARY`.
    cells, n
        The counts known when refusing (kept at the site for disclosure control, which
        rewords the refusal when one of them is below the limit).
    detail
        Local detail for the site's log (never sent).
    params
        The words of the sentence (``column``, ``estimator``).
    """

    def __init__(self, key: str, *, cells: Mapping[str, int] | None = None,
                 n: int | None = None, detail: str | None = None, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.cells = dict(cells or {})
        self.n = n
        self.detail = detail
        self.params = params

    def refusal(self, analysis: AnalysisSpec) -> Refusal:
        """The :class:`Refusal` of ``analysis`` for this reason, worded from the vocabulary."""
        params = {"estimator": analysis.estimator, **self.params}
        return Refusal.of(self.key, analysis.name, detail=self.detail, cells=self.cells,
                          n=self.n, details=_roles(analysis), **params)


def _roles(analysis: AnalysisSpec) -> dict[str, Any]:
    """The columns an analysis uses in a table role (for disclosure control)."""
    return {key: getattr(analysis, key) for key in ("outcome", "exposure", "score", "event")
            if getattr(analysis, key)}


# --------------------------------------------------------------------------- helpers

def _complete(df: pd.DataFrame, analysis: AnalysisSpec) -> tuple[pd.DataFrame, int]:
    """The numeric columns the analysis uses, complete rows only, and the rows dropped."""
    columns = list(analysis.columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise Refuse("missing_column", column=missing[0])
    sub = df.loc[:, columns].copy()
    levels = dict(analysis.categorical)
    for column in columns:
        series = sub[column]
        if column in levels:
            # Level index (NaN where missing), expanded to dummies by _design.
            try:
                sub[column] = level_codes(series, levels[column], column)
            except CodingError as error:
                raise Refuse("undeclared_level", column=column,
                             detail=str(error)) from None
            continue
        if series.dtype == bool:
            sub[column] = series.astype(float)
            continue
        converted = pd.to_numeric(series, errors="coerce")
        # Values present but not numbers: refuse rather than silently treat as missing.
        if bool((converted.isna() & series.notna()).any()):
            raise Refuse("not_numeric", column=column)
        sub[column] = converted.astype(float)
    values = sub.to_numpy(dtype=float)
    infinite = np.isinf(values).any(axis=0)
    if infinite.any():
        column = columns[int(np.flatnonzero(infinite)[0])]
        raise Refuse("infinite_values", column=column)
    complete = ~np.isnan(values).any(axis=1)
    kept = sub.loc[complete]
    return kept, int(len(sub) - len(kept))


def _binary(values: np.ndarray, column: str, role: str) -> np.ndarray:
    unique = np.unique(values)
    if not set(unique.tolist()) <= {0.0, 1.0}:
        raise Refuse("non_binary", column=column, detail=f"the {role} column must be 0/1")
    return values.astype(int)


def _require_rows(n: int, minimum: int) -> None:
    if n < max(minimum, 1):
        raise Refuse("too_few_rows", n=n,
                     detail=f"{n} complete rows; the analysis needs at least {minimum}")


def _group_sizes(exposure: np.ndarray) -> dict[str, int]:
    return {"n_exposed": int(np.sum(exposure == 1)), "n_unexposed": int(np.sum(exposure == 0))}


def _require_both_groups(exposure: np.ndarray, column: str,
                         cells: Mapping[str, int] | None = None) -> None:
    if len(np.unique(exposure)) < 2:
        # One group is empty: a count of 0, which disclosure control turns into a
        # suppression without saying which.
        raise Refuse("constant_exposure", column=column,
                     cells={**_group_sizes(exposure), **(cells or {})})


def _margins(outcome: np.ndarray) -> dict[str, int]:
    events = int(np.sum(outcome == 1))
    return {"events": events, "non_events": int(len(outcome) - events)}


def _require_events(outcome: np.ndarray, column: str,
                    cells: Mapping[str, int] | None = None) -> None:
    margins = _margins(outcome)
    if min(margins.values()) == 0:
        raise Refuse("no_events", column=column, cells={**margins, **(cells or {})})


def _design(data: pd.DataFrame, columns: list[str], intercept: bool,
            cells: Mapping[str, int] | None = None,
            categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> np.ndarray:
    if categorical:
        levels = dict(categorical)
        x = encode_covariates({c: data[c].to_numpy(dtype=float) for c in columns}, columns,
                              levels)
        # A declared level absent here is an all-zero column: left out (R: NA), so the
        # other coefficients are estimated as if the level did not exist at this site.
        x = x[:, np.any(x != 0, axis=0) | ~_dummy_mask(columns, levels)]
        numeric = [c for c in columns if c not in levels]
        constant = [c for c in numeric if len(data) and np.ptp(data[c].to_numpy(float)) == 0]
    else:
        x = data.loc[:, columns].to_numpy(dtype=float)
        constant = [c for c, column in zip(columns, x.T) if len(column) and np.ptp(column) == 0]
    if intercept:
        x = np.column_stack([np.ones(len(data)), x])
    if np.linalg.matrix_rank(x) < x.shape[1]:
        # A constant column means no complete row has any other value: a count of 0.
        zero = {"constant_column": 0} if constant else {}
        raise Refuse("singular", cells={**(cells or {}), **zero},
                     detail=f"constant: {constant}" if constant else "collinear columns")
    return x


def _dummy_mask(columns: list[str], levels: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    """True for the design columns that are dummies of a categorical covariate."""
    return np.concatenate([np.full(len(levels[c]) - 1, True) if c in levels else [False]
                           for c in columns]).astype(bool)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _score_probabilities(values: np.ndarray, column: str) -> np.ndarray:
    if np.any((values <= 0) | (values >= 1)):
        raise Refuse("probability_open", column=column)
    return values


def _two_by_two_cells(outcome: np.ndarray, exposure: np.ndarray) -> dict[str, int]:
    # metafor's convention: group 1 = exposed; ai/bi events/non-events among the exposed.
    return {"ai": int(np.sum((exposure == 1) & (outcome == 1))),
            "bi": int(np.sum((exposure == 1) & (outcome == 0))),
            "ci": int(np.sum((exposure == 0) & (outcome == 1))),
            "di": int(np.sum((exposure == 0) & (outcome == 0)))}


def _level_table(levels_of: np.ndarray, by: np.ndarray) -> tuple[int, np.ndarray] | None:
    """The counts of a categorical column against a 0/1 column.

    ``(number of levels, counts[level, by])`` of a categorical column against a 0/1
    column, or None when the column has more than :data:`CATEGORICAL_LEVELS` values.
    """
    values, inverse = np.unique(levels_of, return_inverse=True)
    k = len(values)
    if k > CATEGORICAL_LEVELS:
        return None
    counts = np.zeros((k, 2), dtype=np.int64)
    np.add.at(counts, (inverse, by.astype(int)), 1)
    return k, counts


def _implied_table_cells(outcome: np.ndarray, exposure: np.ndarray) -> dict[str, int]:
    """The exposure x outcome table behind an estimate that is not count-based.

    A mean difference or linear model of a 0/1 outcome is a risk difference, and its
    ``yi``, ``vi`` and ``n`` identify the 2x2 table by integer search (a Cox model of a 0/1
    event carries the event x exposure table likewise). The estimate is released as it
    is, but the table's cells and outcome margins are reported (in ``Estimate.cells``,
    never sent) so that disclosure control checks them on every data source without the
    rows (:mod:`site_agent.privacy`, rule 4). An outcome with a few more values (at most
    :data:`CATEGORICAL_LEVELS`, e.g. a 0-4 grade) forms a table with the exposure too: its
    smallest cell (``table_min``) and smallest level (``outcome_level_min``) are reported.
    Empty for an outcome with more values.
    """
    if np.isin(outcome, (0.0, 1.0)).all():
        y = outcome.astype(int)
        return {**_two_by_two_cells(y, exposure), **_margins(y)}
    table = _level_table(outcome, exposure)
    if table is None:
        return {}
    _, counts = table
    return {"table_min": int(counts.min()), "outcome_level_min": int(counts.sum(1).min())}


def _score_table_cells(score: np.ndarray, outcome: np.ndarray) -> dict[str, int]:
    """The score-level x outcome table of a score with few distinct values.

    A model-evaluation estimate (AUC, Brier score, calibration, O/E) is a function of the
    joint distribution of score and outcome; when the score takes at most
    :data:`CATEGORICAL_LEVELS` values (a 0/1 column such as the exposure or sex, a points
    score) that distribution is a table whose cells ``yi``, ``vi`` and ``n`` can identify
    by integer search (DeLong's variance of a 0/1 score's AUC identifies the 2x2 table).
    Its smallest cell (``table_min``) and smallest score level (``score_level_min``, which
    the O/E ratio's ``E = sum of the scores`` can reveal) are reported for disclosure
    control. Empty for a score with more distinct values.
    """
    table = _level_table(score, outcome)
    if table is None:
        return {}
    _, counts = table
    return {"table_min": int(counts.min()), "score_level_min": int(counts.sum(1).min())}


def _fit_glm_binomial(y: np.ndarray, x: np.ndarray, offset: np.ndarray | None = None,
                      cells: Mapping[str, int] | None = None):
    # lazy: statsmodels (~2 s) is imported only by the estimators that fit with it
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # Tight tolerance: R's glm stops at a relative deviance change of 1e-8, which
            # leaves ~1e-8 in the coefficients; we converge further so both agree to 1e-6.
            # statsmodels compares deviances with an absolute tolerance; the relative one
            # (1e-14, above rounding of a large deviance) keeps big sites from failing to
            # "converge" on the last bit. IRLS converges quadratically, so the estimate
            # returned one step after such a change is exact to rounding.
            result = sm.GLM(y, x, family=sm.families.Binomial(), offset=offset).fit(
                method="IRLS", tol=1e-12, rtol=1e-14, maxiter=200)
            if getattr(result, "converged", False):
                # statsmodels' covariance uses the weights of the iterate *before* the
                # estimate (~1e-8 relative off); one more step from the estimate puts
                # them at the estimate, as R's glm refitted from its own coefficients.
                result = sm.GLM(y, x, family=sm.families.Binomial(), offset=offset).fit(
                    method="IRLS", start_params=result.params, tol=1e-12, rtol=1e-14,
                    maxiter=3)
        except PerfectSeparationError:
            raise Refuse("separation", cells=cells) from None
    kinds = {type(w.message) for w in caught} | {w.category for w in caught}
    if PerfectSeparationWarning in kinds:
        raise Refuse("separation", cells=cells)
    if ConvergenceWarning in kinds or not getattr(result, "converged", True):
        raise Refuse("not_converged", cells=cells)
    return result


def _glm_covariance(fit: Any, x: np.ndarray, offset: np.ndarray | None = None
                    ) -> np.ndarray:
    """The inverse Fisher information of a binomial-logit fit at its final coefficients.

    statsmodels (and R's ``vcov``) use the IRLS weights of the iterate before the last,
    which differ by ~1e-9 relative from the information at the estimate; the information
    at the estimate is what one more aggregate pass gives on every engine.
    """
    eta = x @ np.asarray(fit.params, dtype=float)
    if offset is not None:
        eta = eta + offset
    mu = 0.5 * (1.0 + np.tanh(eta / 2.0))
    return np.linalg.inv((x * (mu * (1.0 - mu))[:, None]).T @ x)


def _estimate(analysis: AnalysisSpec, measure: str, yi: float, vi: float, n: int,
              dropped: int, cells: Mapping[str, int], details: Mapping[str, Any]
              ) -> Estimate:
    if not np.isfinite(yi) or not np.isfinite(vi):
        raise Refuse("not_converged", cells=cells, n=n,
                     detail="the estimate or its variance is not finite")
    if vi <= 0:
        raise Refuse("zero_variance", cells=cells, n=n)
    base = {"outcome": analysis.outcome, "exposure": analysis.exposure,
            "columns": list(analysis.columns)}
    base.update(details)
    return Estimate(analysis=analysis.name, estimator=analysis.estimator, measure=measure,
                    yi=float(yi), vi=float(vi), se=float(np.sqrt(vi)), n=int(n),
                    n_dropped=int(dropped), cells=dict(cells), details=base)


# --------------------------------------------------------------------------- estimators

def _two_by_two(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    exposure = a.required("exposure")
    measure = a.required("measure")
    data, dropped = _complete(df, a)
    _require_rows(len(data), 2)
    y = _binary(data[outcome].to_numpy(), outcome, "outcome")
    x = _binary(data[exposure].to_numpy(), exposure, "exposure")
    cells = _two_by_two_cells(y, x)
    _require_both_groups(x, exposure, cells)
    try:
        es = escalc(measure, ai=[cells["ai"]], bi=[cells["bi"]], ci=[cells["ci"]],
                    di=[cells["di"]])
    except InputError:  # pragma: no cover - both groups non-empty, counts valid
        raise Refuse("numerical_failure", cells=cells)
    return _estimate(a, measure, es.yi[0], es.vi[0], len(data), dropped, cells,
                     {"corrected": bool(es.corrected[0]),
                      "method": f"escalc {measure} (add 1/2 to tables with a zero cell)"})


def _two_group(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    exposure = a.required("exposure")
    measure = a.required("measure")
    data, dropped = _complete(df, a)
    _require_rows(len(data), 4)
    x = _binary(data[exposure].to_numpy(), exposure, "exposure")
    y = data[outcome].to_numpy(dtype=float)
    cells = {**_group_sizes(x), **_implied_table_cells(y, x)}
    _require_both_groups(x, exposure, cells)
    g1, g0 = y[x == 1], y[x == 0]
    if len(g1) < 2 or len(g0) < 2:
        raise Refuse("too_few_per_group", cells=cells, n=len(data))
    sd1, sd0 = float(np.std(g1, ddof=1)), float(np.std(g0, ddof=1))
    if sd1 == 0 or sd0 == 0:
        raise Refuse("constant_within_group", column=outcome, cells=cells, n=len(data))
    if measure == "ROM" and (g1.mean() <= 0 or g0.mean() <= 0):
        raise Refuse("rom_non_positive", column=outcome, cells=cells, n=len(data))
    es = escalc(measure, m1i=[g1.mean()], sd1i=[sd1], n1i=[len(g1)], m2i=[g0.mean()],
                sd2i=[sd0], n2i=[len(g0)])
    return _estimate(a, measure, es.yi[0], es.vi[0], len(data), dropped, cells,
                     {"method": f"escalc {measure}, exposed minus unexposed"})


def _logistic(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    exposure = a.required("exposure")
    data, dropped = _complete(df, a)
    _require_rows(len(data), len(a.covariates) + 4)
    y = _binary(data[outcome].to_numpy(), outcome, "outcome")
    e = _binary(data[exposure].to_numpy(), exposure, "exposure")
    cells = {**_two_by_two_cells(y, e), **_margins(y)}
    _require_both_groups(e, exposure, cells)
    _require_events(y, outcome, cells)
    if min(cells.values()) == 0:
        # A zero cell of outcome x exposure makes the exposure's coefficient infinite.
        raise Refuse("separation", cells=cells, n=len(data),
                     detail="a zero cell of exposure x outcome (quasi-complete separation)")
    x = _design(data, [exposure, *a.covariates], intercept=True, cells=cells,
                categorical=a.categorical)
    fit = _fit_glm_binomial(y.astype(float), x, cells=cells)
    if abs(fit.params[1]) > _SEPARATION_COEF:
        raise Refuse("separation", cells=cells, n=len(data),
                     detail="the fitted odds ratio is unbounded")
    cov = _glm_covariance(fit, x)
    formula = f"glm({outcome} ~ {' + '.join([exposure, *a.covariates])}, binomial)"
    return _estimate(a, "OR", fit.params[1], cov[1, 1], len(data), dropped, cells,
                     {"model": formula, "scale": "log odds ratio"})


def _linear(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    exposure = a.required("exposure")
    # lazy: statsmodels (~2 s) is imported only by the estimators that fit with it
    import statsmodels.api as sm

    data, dropped = _complete(df, a)
    _require_rows(len(data), len(a.covariates) + 4)
    e = _binary(data[exposure].to_numpy(), exposure, "exposure")
    y = data[outcome].to_numpy(dtype=float)
    cells = {**_group_sizes(e), **_implied_table_cells(y, e)}
    _require_both_groups(e, exposure, cells)
    x = _design(data, [exposure, *a.covariates], intercept=True, cells=cells,
                categorical=a.categorical)
    fit = sm.OLS(y, x).fit()
    # 1 - R² at rounding level: the outcome is an exact linear function of the design.
    if not fit.df_resid > 0 or fit.ssr <= 1e-12 * max(fit.centered_tss, 1e-300):
        raise Refuse("exact_fit", cells=cells, n=len(data))
    formula = f"lm({outcome} ~ {' + '.join([exposure, *a.covariates])})"
    return _estimate(a, "MD", fit.params[1], fit.cov_params()[1, 1], len(data), dropped,
                     cells, {"model": formula})


def _cox(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    exposure = a.required("exposure")
    time_col = a.required("time")
    event = a.required("event")
    data, dropped = _complete(df, a)
    _require_rows(len(data), len(a.covariates) + 4)
    time = data[time_col].to_numpy(dtype=float)
    if np.any(time < 0):
        raise Refuse("negative_time", column=time_col)
    status = _binary(data[event].to_numpy(), event, "event")
    e = _binary(data[exposure].to_numpy(), exposure, "exposure")
    events_exposed = int(np.sum(status[e == 1]))
    events_unexposed = int(np.sum(status[e == 0]))
    cells = {"events": int(status.sum()), "events_exposed": events_exposed,
             "events_unexposed": events_unexposed, **_implied_table_cells(status, e)}
    _require_both_groups(e, exposure, cells)
    if status.sum() == 0:
        raise Refuse("no_events", column=event, cells=cells, n=len(data))
    if events_exposed == 0 or events_unexposed == 0:
        # Monotone partial likelihood: the hazard ratio estimate is 0 or infinite.
        raise Refuse("separation", cells=cells, n=len(data),
                     detail="one exposure group has no events (monotone likelihood)")
    x = _design(data, [exposure, *a.covariates], intercept=False, cells=cells,
                categorical=a.categorical)
    # Newton-Raphson on the risk-set sums (fedsynth.effects.aggregates, the same step the
    # chunked, SQL and Spark engines take), past R's coxph tolerance so the estimate
    # matches coxph to 1e-10 (tests/reference/test_warehouse_reference.py).
    fit = fit_cox(time, status, x, a.ties or "efron")
    params = fit.beta
    converged = fit.converged
    if not converged or not np.all(np.isfinite(params)) or \
            np.max(np.abs(params)) > _SEPARATION_COEF * max(1.0, np.max(np.abs(x))):
        # Typically a monotone partial likelihood: a covariate orders events perfectly,
        # so its coefficient runs off to infinity and the exposure's estimate is unusable.
        raise Refuse("monotone_likelihood", cells=cells, n=len(data))
    cov = np.linalg.inv(fit.information)
    formula = (f"coxph(Surv({time_col}, {event}) ~ {' + '.join([exposure, *a.covariates])}"
               f", ties = '{a.ties}')")
    return _estimate(a, "HR", params[0], cov[0, 0], len(data), dropped, cells,
                     {"model": formula, "ties": a.ties, "scale": "log hazard ratio",
                      "event": event})


def _model_eval_data(df: pd.DataFrame, a: AnalysisSpec, minimum: int = 4
                     ) -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """The data of a model evaluation and the counts its estimate may reveal.

    Outcome, score, rows dropped and the counts the estimate may reveal: the outcome's
    margins and, for a score with few distinct values, its table with the outcome.
    """
    outcome = a.required("outcome")
    score = a.required("score")
    data, dropped = _complete(df, a)
    _require_rows(len(data), minimum)
    y = _binary(data[outcome].to_numpy(), outcome, "outcome")
    p = data[score].to_numpy(dtype=float)
    cells = {**_margins(y), **_score_table_cells(p, y)}
    return y, p, dropped, cells


def _auc(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    score = a.required("score")
    y, p, dropped, cells = _model_eval_data(df, a)
    _require_events(y, outcome, cells)
    if min(cells["events"], cells["non_events"]) < 2:
        raise Refuse("too_few_events", cells=cells, n=len(y))
    result = delong_auc(p, y)
    auc, var = result.auc, result.variance
    if a.scale == "logit":
        if not 0 < auc < 1:
            raise Refuse("perfect_discrimination", cells=cells, n=len(y))
        # Delta method: d logit(A)/dA = 1 / (A (1 - A)).
        return _estimate(a, "logit_AUC", np.log(auc / (1 - auc)),
                         var / (auc * (1 - auc)) ** 2, len(y), dropped, cells,
                         {"method": "DeLong variance, delta method to the logit scale",
                          "score": score, "scale": "logit"})
    if var <= 0:
        raise Refuse("perfect_discrimination", cells=cells, n=len(y))
    return _estimate(a, "AUC", auc, var, len(y), dropped, cells,
                     {"method": "DeLong", "score": score, "scale": "raw"})


def _calibration_slope(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    score = a.required("score")
    y, p, dropped, cells = _model_eval_data(df, a)
    _require_events(y, outcome, cells)
    lp = _logit(_score_probabilities(p, score))
    if np.ptp(lp) == 0:
        raise Refuse("constant_score", column=score, cells=cells, n=len(y))
    design = np.column_stack([np.ones(len(y)), lp])
    fit = _fit_glm_binomial(y.astype(float), design, cells=cells)
    return _estimate(a, "slope", fit.params[1], _glm_covariance(fit, design)[1, 1], len(y),
                     dropped, cells, {"model": f"glm({outcome} ~ qlogis({score}), binomial)",
                             "score": score})


def _calibration_in_the_large(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    score = a.required("score")
    y, p, dropped, cells = _model_eval_data(df, a)
    _require_events(y, outcome, cells)
    lp = _logit(_score_probabilities(p, score))
    # Intercept with the linear predictor as offset (slope fixed at 1): the log-odds
    # shift that makes the mean prediction match the observed rate.
    ones = np.ones((len(y), 1))
    fit = _fit_glm_binomial(y.astype(float), ones, offset=lp, cells=cells)
    return _estimate(a, "intercept", fit.params[0], _glm_covariance(fit, ones, lp)[0, 0],
                     len(y), dropped, cells,
                     {"model": f"glm({outcome} ~ offset(qlogis({score})), binomial)",
                      "score": score})


def _oe_ratio(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    outcome = a.required("outcome")
    score = a.required("score")
    y, p, dropped, cells = _model_eval_data(df, a, minimum=2)
    _score_probabilities(p, score)
    observed, expected, n = float(y.sum()), float(p.sum()), len(y)
    cells = {**cells, "observed": int(observed)}
    # log(O/E) is undefined without events and has no variance with only events.
    _require_events(y, outcome, cells)
    # Poisson-binomial approximation of Debray et al. (2017, BMJ 356:i6460, Table 2):
    # var(log O/E) = (1 - O/N) / O.
    return _estimate(a, "OE", np.log(observed / expected), (1 - observed / n) / observed,
                     n, dropped, cells,
                     {"method": "log(O/E), variance (1 - O/N)/O", "score": score})


def _brier(df: pd.DataFrame, a: AnalysisSpec) -> Estimate:
    score = a.required("score")
    y, p, dropped, cells = _model_eval_data(df, a, minimum=2)
    if np.any((p < 0) | (p > 1)):
        raise Refuse("probability_closed", column=score)
    squared = (p - y) ** 2
    return _estimate(a, "Brier", squared.mean(), np.var(squared, ddof=1) / len(y), len(y),
                     dropped, cells, {"method": "mean squared error, variance var(sq)/N",
                                      "score": score})


def _scored_by_model(df: pd.DataFrame, a: AnalysisSpec) -> tuple[pd.DataFrame, AnalysisSpec]:
    """The rows with the embedded model artifact's risks as the analysis's score column.

    An evaluation analysis may name a signed model artifact (``model``) instead of a
    ``score`` column; the site scores its own rows with it (rows with a missing covariate
    get no score and drop out as any incomplete row) and runs the same estimator on the
    predicted risks. The artifact was verified when the spec was parsed; a column it needs
    that the data lack, a non-numeric value or an undeclared level refuse the analysis.
    """
    # lazy: models.artifact imports cryptography (signature checks), which no other
    # estimator needs; every `import fedsynth.effects.patient_level` paid for it
    from fedsynth.models.artifact import RecalibrationError, embedded_artifact

    artifact = embedded_artifact(a.required("model"))
    absent = [c for c in artifact.columns if c not in df.columns]
    if absent:
        raise Refuse("missing_column", column=absent[0])
    try:
        scores = artifact.score(df)
    except CodingError as error:
        key = "undeclared_level" if error.column in artifact.model.levels else "not_numeric"
        raise Refuse(key, column=error.column, detail=str(error)) from None
    except RecalibrationError as error:      # a recalibrated model and unusable outcomes
        raise Refuse(error.refusal, column=error.column, detail=str(error)) from None
    column = f"model:{artifact.model.name}"
    return (df.assign(**{column: scores.prediction}),
            dataclasses.replace(a, score=column, model=None, model_columns=()))


_ESTIMATORS: dict[str, Callable[[pd.DataFrame, AnalysisSpec], Estimate]] = {
    "two_by_two": _two_by_two, "two_group": _two_group, "logistic": _logistic,
    "linear": _linear, "cox": _cox, "auc": _auc, "calibration_slope": _calibration_slope,
    "calibration_in_the_large": _calibration_in_the_large, "oe_ratio": _oe_ratio,
    "brier": _brier,
}


def estimate(df: pd.DataFrame, analysis: AnalysisSpec | Mapping[str, Any]
             ) -> Estimate | Refusal:
    """Compute one analysis on a site's rows.

    Parameters
    ----------
    df
        The site's data, one row per patient.
    analysis
        An :class:`~fedsynth.spec.AnalysisSpec` (or a dict validated into one).

    Returns
    -------
    Estimate or Refusal
        A refusal (with a plain reason) whenever the analysis cannot be computed; this
        function does not raise for data problems.

    Raises
    ------
    InputError
        Only when ``df`` is not a DataFrame or ``analysis`` is not a valid analysis (a
        programming or spec error, not a data problem).
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"estimate: data must be a pandas DataFrame, got "
                         f"{type(df).__name__}")
    analysis = AnalysisSpec.coerce(analysis, "estimate")
    try:
        if analysis.model is not None:
            df, analysis = _scored_by_model(df, analysis)
        return _ESTIMATORS[analysis.estimator](df, analysis)
    except Refuse as refusal:
        return refusal.refusal(analysis)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError,
            OverflowError) as error:
        # A numerical failure inside a library: refuse this analysis, keep the others. The
        # library's message stays at the site (it may quote data).
        return Refusal.of("numerical_failure", analysis.name, estimator=analysis.estimator,
                          detail=f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - one analysis must never stop the others
        # An unexpected failure is a bug: log it with its traceback for the site operator,
        # and refuse this analysis only (the sentence sent names neither type nor data).
        _LOG.exception("analysis %r (%s) failed", analysis.name, analysis.estimator)
        return Refusal.of("internal_error", analysis.name, estimator=analysis.estimator,
                          detail=f"{type(error).__name__}: {error}")


def estimate_all(df: pd.DataFrame, spec: Spec | Mapping[str, Any] | str
                 ) -> dict[str, Estimate | Refusal]:
    """Run every analysis of ``spec`` on ``df``: ``{name: Estimate | Refusal}`` in order."""
    if not isinstance(spec, Spec):
        spec = parse_spec(spec)
    return {a.name: estimate(df, a) for a in spec.analyses}
