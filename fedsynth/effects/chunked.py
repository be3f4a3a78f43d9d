"""Every site estimator on an aggregate engine: rows stay where they are, sums come back.

Why
---
:mod:`fedsynth.effects.patient_level` computes an analysis from a DataFrame in memory. A
site whose data outgrow one machine (a warehouse table, a Spark cluster, a folder of
Parquet files) needs the same numbers from sums computed where the data live
(:mod:`fedsynth.effects.aggregates` states each estimator's decomposition). This module is
the one place that turns those sums into an :class:`~fedsynth.effects.Estimate` or a
:class:`~fedsynth.effects.Refusal`, with the checks, refusal reasons and disclosure
``cells`` of the DataFrame estimators in the same order, so that the result is the same
whatever the engine.

An *engine* (:class:`AggregateEngine`) knows how to evaluate per-row terms over the
complete rows of an analysis and sum them: :class:`BlockEngine` does it with numpy over an
iterable of DataFrame blocks (pandas chunks, pyarrow record batches);
``site_agent.connectors`` adds SQLAlchemy and Spark engines. Terms are written once, as
functions of the engine's operations (``ops.exp``, ``ops.log``, ``ops.where``,
``ops.abs``) and its columns, so the same expression becomes numpy arithmetic, a SQL
expression or a Spark column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from fedsynth.effects.aggregates import (
    AucPlacements,
    CoxTimeSums,
    auc_from_counts,
    cox_newton_terms,
    cox_row_terms,
    glm_row_terms,
    glm_step,
    matrix_terms,
    newton_maximise,
)
from fedsynth.effects.effect_sizes import escalc
from fedsynth.effects.patient_level import (
    _SEPARATION_COEF,
    CATEGORICAL_LEVELS,
    Refuse,
    _estimate,
)
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.errors import InputError
from fedsynth.models.coding import CodingError, level_codes
from fedsynth.spec import AnalysisSpec, Spec, parse_spec

__all__ = ["AggregateEngine", "BlockEngine", "NumpyOps", "Terms", "estimate_on_engine",
           "estimate_all_on_engine"]

#: ``terms(ops, columns) -> {name: per-row expression}``; the engine sums each expression
#: over the complete rows of the analysis.
Terms = Callable[[Any, Mapping[str, Any]], dict[str, Any]]
Categorical = Mapping[str, tuple[str, ...]]


class AggregateEngine(Protocol):
    """Where an analysis's sums are computed (numpy blocks, a database, Spark).

    Every method works on the *complete rows* of ``columns`` (rows with no missing value
    in any of them), as the DataFrame estimators drop incomplete rows. Categorical
    columns (``categorical``) are given to the terms as their level index (float,
    :func:`fedsynth.models.coding.level_codes`), numeric columns as floats.
    """

    def screen(self, columns: Sequence[str], categorical: Categorical) -> tuple[int, int]:
        """``(rows, complete rows)`` of ``columns``.

        Raises :class:`Refuse` for a missing column, a value that is not a number or not a
        declared level, or an infinite value (in that order of precedence per column,
        columns in the order given).
        """
        ...

    def sums(self, columns: Sequence[str], categorical: Categorical, terms: Terms,
             maxima: Terms | None = None) -> dict[str, float]:
        """The sum of each term (and ``n``, the complete rows).

        Also the maximum of each term of ``maxima``.
        """
        ...

    def level_counts(self, columns: Sequence[str], categorical: Categorical,
                     levels_of: str, by: str, max_levels: int) -> np.ndarray | None:
        """Counts of each distinct value of ``levels_of`` by the 0/1 column ``by``.

        A ``(levels, 2)`` array, or None beyond ``max_levels`` values.
        """
        ...

    def auc(self, columns: Sequence[str], categorical: Categorical, outcome: str,
            score: str) -> AucPlacements:
        """DeLong's placements from counts of cases and controls per distinct score."""
        ...

    def event_time_sums(self, columns: Sequence[str], categorical: Categorical, time: str,
                        event: str, terms: Terms) -> dict[str, np.ndarray]:
        """The sums of ``terms`` per bucket of the distinct event times.

        Bucket ``k`` holds the rows with ``t_k ≤ time < t_{k+1}`` (``t_k`` increasing);
        rows before the first event time are left out.
        """
        ...


class NumpyOps:
    """The operations terms may use, on numpy arrays."""

    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    abs = staticmethod(np.abs)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        """``a`` where ``condition`` holds, else ``b`` (SQL's CASE)."""
        return np.where(condition, a, b)


# --------------------------------------------------------------------------- numpy blocks

class BlockEngine:
    """An :class:`AggregateEngine` over blocks of rows, summed with numpy.

    Parameters
    ----------
    blocks
        ``columns ↦`` an iterable of DataFrames holding (at least) those columns; called
        once per pass, so it must be re-iterable (a Parquet dataset scanned again, a
        DataFrame split again). Memory holds one block and the aggregates, never the
        whole table.

    Notes
    -----
    Each pass cleans a block as :func:`fedsynth.effects.patient_level` cleans the whole
    DataFrame (numbers from text, booleans as 0/1, categorical levels as codes), keeps
    its complete rows and adds the block's sums to the running totals.
    """

    ops = NumpyOps()

    def __init__(self, blocks: Callable[[list[str]], Iterable[pd.DataFrame]]) -> None:
        self._blocks = blocks
        self._event_times: dict[tuple[Any, ...], np.ndarray] = {}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, chunk_rows: int | None = None) -> BlockEngine:
        """An engine over one DataFrame split into blocks of ``chunk_rows`` rows."""
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"data must be a pandas DataFrame, got {type(frame).__name__}")
        size = max(1, int(chunk_rows or max(len(frame), 1)))

        def blocks(columns: list[str]) -> Iterable[pd.DataFrame]:
            selected = frame[[c for c in columns if c in frame.columns]]
            for start in range(0, max(len(frame), 1), size):
                yield selected.iloc[start:start + size]

        return cls(blocks)

    # ------------------------------------------------------------------ cleaning
    def _clean(self, columns: Sequence[str], categorical: Categorical
               ) -> Iterable[tuple[dict[str, np.ndarray], int]]:
        """Per block: the complete rows of ``columns`` as float arrays, and the block's rows."""
        for block in self._blocks(list(columns)):
            missing = [c for c in columns if c not in block.columns]
            if missing:
                raise Refuse("missing_column", column=missing[0])
            arrays: dict[str, np.ndarray] = {}
            for column in columns:
                arrays[column] = _numeric(block[column], column, categorical)
            rows = len(block)
            values = np.column_stack([arrays[c] for c in columns]) if columns else \
                np.zeros((rows, 0))
            complete = ~np.isnan(values).any(axis=1)
            yield {c: a[complete] for c, a in arrays.items()}, rows

    def screen(self, columns: Sequence[str], categorical: Categorical) -> tuple[int, int]:
        """See :meth:`AggregateEngine.screen`."""
        problems: dict[str, str] = {}
        infinite: set[str] = set()
        total = complete = 0
        for block in self._blocks(list(columns)):
            missing = [c for c in columns if c not in block.columns]
            if missing:
                raise Refuse("missing_column", column=missing[0])
            arrays = []
            for column in columns:
                try:
                    values = _numeric(block[column], column, categorical)
                except Refuse as refusal:
                    problems.setdefault(column, refusal.key)
                    values = np.full(len(block), np.nan)
                if np.isinf(values).any():
                    infinite.add(column)
                arrays.append(values)
            total += len(block)
            if arrays:
                complete += int((~np.isnan(np.column_stack(arrays)).any(axis=1)).sum())
            else:
                complete += len(block)
        for column in columns:
            if column in problems:
                raise Refuse(problems[column], column=column)
        for column in columns:
            if column in infinite:
                raise Refuse("infinite_values", column=column)
        return total, complete

    # ------------------------------------------------------------------ aggregates
    def sums(self, columns: Sequence[str], categorical: Categorical, terms: Terms,
             maxima: Terms | None = None) -> dict[str, float]:
        """See :meth:`AggregateEngine.sums`."""
        out: dict[str, float] = {"n": 0.0}
        for arrays, _ in self._clean(columns, categorical):
            if not len(next(iter(arrays.values()), ())):
                continue
            out["n"] += len(next(iter(arrays.values())))
            for name, value in terms(self.ops, arrays).items():
                out[name] = out.get(name, 0.0) + float(np.sum(value))
            for name, value in (maxima(self.ops, arrays) if maxima else {}).items():
                out[name] = max(out.get(name, -math.inf), float(np.max(value)))
        return out

    def level_counts(self, columns: Sequence[str], categorical: Categorical,
                     levels_of: str, by: str, max_levels: int) -> np.ndarray | None:
        """See :meth:`AggregateEngine.level_counts`."""
        counts: dict[float, list[int]] = {}
        for arrays, _ in self._clean(columns, categorical):
            values, inverse = np.unique(arrays[levels_of], return_inverse=True)
            table = np.zeros((len(values), 2), dtype=np.int64)
            np.add.at(table, (inverse.ravel(), (arrays[by] == 1).astype(int)), 1)
            for value, row in zip(values.tolist(), table):
                entry = counts.setdefault(value, [0, 0])
                entry[0] += int(row[0])
                entry[1] += int(row[1])
            if len(counts) > max_levels:
                return None
        return np.array(list(counts.values()), dtype=np.int64).reshape(-1, 2)

    def auc(self, columns: Sequence[str], categorical: Categorical, outcome: str,
            score: str) -> AucPlacements:
        """See :meth:`AggregateEngine.auc` (counts per distinct score merged by value)."""
        keys: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        neg: list[np.ndarray] = []
        for arrays, _ in self._clean(columns, categorical):
            values, inverse = np.unique(arrays[score], return_inverse=True)
            y = arrays[outcome]
            keys.append(values)
            pos.append(np.bincount(inverse.ravel(), weights=(y == 1), minlength=len(values)))
            neg.append(np.bincount(inverse.ravel(), weights=(y == 0), minlength=len(values)))
            if len(keys) > 1:  # merge as we go: memory holds distinct scores, not rows
                merged, inv = np.unique(np.concatenate(keys), return_inverse=True)
                inv = inv.ravel()
                pos = [np.bincount(inv, weights=np.concatenate(pos), minlength=len(merged))]
                neg = [np.bincount(inv, weights=np.concatenate(neg), minlength=len(merged))]
                keys = [merged]
        if not keys:
            return auc_from_counts(np.zeros(0), np.zeros(0))
        return auc_from_counts(pos[0], neg[0])

    def event_time_sums(self, columns: Sequence[str], categorical: Categorical, time: str,
                        event: str, terms: Terms) -> dict[str, np.ndarray]:
        """See :meth:`AggregateEngine.event_time_sums`."""
        key = (tuple(columns), tuple(categorical.items()), time, event)
        times = self._event_times.get(key)
        if times is None:
            found: np.ndarray = np.zeros(0)
            for arrays, _ in self._clean(columns, categorical):
                found = np.union1d(found, arrays[time][arrays[event] == 1])
            times = self._event_times[key] = found
        out: dict[str, np.ndarray] = {}
        for arrays, _ in self._clean(columns, categorical):
            bucket = np.searchsorted(times, arrays[time], side="right") - 1
            keep = bucket >= 0
            if not keep.any():
                continue
            kept = {c: a[keep] for c, a in arrays.items()}
            for name, value in terms(self.ops, kept).items():
                summed = np.bincount(bucket[keep], weights=np.broadcast_to(
                    np.asarray(value, dtype=float), bucket[keep].shape), minlength=len(times))
                out[name] = out[name] + summed if name in out else summed
        return out


def _numeric(series: pd.Series, column: str, categorical: Categorical) -> np.ndarray:
    """A block's column as floats (level codes for a categorical one), NaN where missing."""
    if column in categorical:
        try:
            return level_codes(series, categorical[column], column)
        except CodingError as error:
            raise Refuse("undeclared_level", column=column, detail=str(error)) from None
    if series.dtype == bool or pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype=float, na_value=np.nan)
    converted = pd.to_numeric(series, errors="coerce")
    if bool((converted.isna() & series.notna()).any()):
        raise Refuse("not_numeric", column=column)
    return converted.to_numpy(dtype=float)


# --------------------------------------------------------------------------- estimators

def _ind(ops: Any, condition: Any) -> Any:
    return ops.where(condition, 1.0, 0.0)


def _not01(ops: Any, column: Any) -> Any:
    return _ind(ops, (column != 0) & (column != 1))


class _Run:
    """One analysis on one engine: the analysis's columns and the engine's passes."""

    def __init__(self, engine: AggregateEngine, analysis: AnalysisSpec) -> None:
        self.engine = engine
        self.a = analysis
        self.columns = list(analysis.columns)
        self.categorical = dict(analysis.categorical)
        total, complete = engine.screen(self.columns, self.categorical)
        self.n = complete
        self.dropped = total - complete

    def sums(self, terms: Terms, maxima: Terms | None = None) -> dict[str, float]:
        return self.engine.sums(self.columns, self.categorical, terms, maxima)

    def require_rows(self, minimum: int) -> None:
        if self.n < max(minimum, 1):
            raise Refuse("too_few_rows", n=self.n,
                         detail=f"{self.n} complete rows; the analysis needs at least "
                                f"{minimum}")

    def levels(self, levels_of: str, by: str) -> np.ndarray | None:
        return self.engine.level_counts(self.columns, self.categorical, levels_of, by,
                                        CATEGORICAL_LEVELS)

    def estimate(self, measure: str, yi: float, vi: float, cells: Mapping[str, int],
                 details: Mapping[str, Any], n: int | None = None) -> Estimate:
        return _estimate(self.a, measure, yi, vi, self.n if n is None else n, self.dropped,
                         cells, details)


def _counts_2x2(ops: Any, y: Any, x: Any) -> dict[str, Any]:
    return {"ai": _ind(ops, (x == 1) & (y == 1)), "bi": _ind(ops, (x == 1) & (y == 0)),
            "ci": _ind(ops, (x == 0) & (y == 1)), "di": _ind(ops, (x == 0) & (y == 0))}


def _cells_2x2(s: Mapping[str, float]) -> dict[str, int]:
    return {k: int(round(s[k])) for k in ("ai", "bi", "ci", "di")}


def _margins(events: int, n: int) -> dict[str, int]:
    return {"events": int(events), "non_events": int(n - events)}


def _require_both_groups(n_exposed: int, n_unexposed: int, column: str,
                         cells: Mapping[str, int]) -> None:
    if n_exposed == 0 or n_unexposed == 0:
        raise Refuse("constant_exposure", column=column,
                     cells={"n_exposed": n_exposed, "n_unexposed": n_unexposed, **cells})


def _require_events(events: int, n: int, column: str, cells: Mapping[str, int]) -> None:
    margins = _margins(events, n)
    if min(margins.values()) == 0:
        raise Refuse("no_events", column=column, cells={**margins, **cells})


def _check_binary(s: Mapping[str, float], key: str, column: str, role: str) -> None:
    if s[key]:
        raise Refuse("non_binary", column=column, detail=f"the {role} column must be 0/1")


def _implied_table_cells(run: _Run, outcome: str, exposure: str, other: float,
                         s: Mapping[str, float]) -> dict[str, int]:
    """As :func:`fedsynth.effects.patient_level._implied_table_cells`, from sums."""
    if not other:
        cells = _cells_2x2(s)
        return {**cells, **_margins(cells["ai"] + cells["ci"], run.n)}
    table = run.levels(outcome, exposure)
    if table is None or not len(table):
        return {}
    return {"table_min": int(table.min()), "outcome_level_min": int(table.sum(1).min())}


def _score_table_cells(run: _Run, score: str, outcome: str) -> dict[str, int]:
    table = run.levels(score, outcome)
    if table is None or not len(table):
        return {}
    return {"table_min": int(table.min()), "score_level_min": int(table.sum(1).min())}


def _two_by_two(run: _Run) -> Estimate:
    a = run.a
    outcome, exposure, measure = a.required("outcome"), a.required("exposure"), \
        a.required("measure")
    run.require_rows(2)
    s = run.sums(lambda ops, c: {"bad_y": _not01(ops, c[outcome]),
                                 "bad_x": _not01(ops, c[exposure]),
                                 **_counts_2x2(ops, c[outcome], c[exposure])})
    _check_binary(s, "bad_y", outcome, "outcome")
    _check_binary(s, "bad_x", exposure, "exposure")
    cells = _cells_2x2(s)
    _require_both_groups(cells["ai"] + cells["bi"], cells["ci"] + cells["di"], exposure,
                         cells)
    es = escalc(measure, ai=[cells["ai"]], bi=[cells["bi"]], ci=[cells["ci"]],
                di=[cells["di"]])
    return run.estimate(measure, es.yi[0], es.vi[0], cells,
                        {"corrected": bool(es.corrected[0]),
                         "method": f"escalc {measure} (add 1/2 to tables with a zero cell)"})


def _two_group(run: _Run) -> Estimate:
    a = run.a
    outcome, exposure, measure = a.required("outcome"), a.required("exposure"), \
        a.required("measure")
    run.require_rows(4)

    def first(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        y, x = c[outcome], c[exposure]
        return {"bad_x": _not01(ops, x), "other_y": _not01(ops, y),
                "n1": _ind(ops, x == 1), "sum1": ops.where(x == 1, y, 0.0),
                "sum0": ops.where(x == 0, y, 0.0), **_counts_2x2(ops, y, x)}

    s = run.sums(first)
    _check_binary(s, "bad_x", exposure, "exposure")
    n1 = int(round(s["n1"]))
    n0 = run.n - n1
    cells = {"n_exposed": n1, "n_unexposed": n0,
             **_implied_table_cells(run, outcome, exposure, s["other_y"], s)}
    _require_both_groups(n1, n0, exposure, cells)
    if n1 < 2 or n0 < 2:
        raise Refuse("too_few_per_group", cells=cells, n=run.n)
    m1, m0 = s["sum1"] / n1, s["sum0"] / n0

    def second(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        y, x = c[outcome], c[exposure]
        d1, d0 = y - m1, y - m0
        return {"ss1": ops.where(x == 1, d1 * d1, 0.0), "ss0": ops.where(x == 0, d0 * d0, 0.0)}

    q = run.sums(second)
    sd1, sd0 = math.sqrt(q["ss1"] / (n1 - 1)), math.sqrt(q["ss0"] / (n0 - 1))
    if sd1 == 0 or sd0 == 0:
        raise Refuse("constant_within_group", column=outcome, cells=cells, n=run.n)
    if measure == "ROM" and (m1 <= 0 or m0 <= 0):
        raise Refuse("rom_non_positive", column=outcome, cells=cells, n=run.n)
    es = escalc(measure, m1i=[m1], sd1i=[sd1], n1i=[n1], m2i=[m0], sd2i=[sd0], n2i=[n0])
    return run.estimate(measure, es.yi[0], es.vi[0], cells,
                        {"method": f"escalc {measure}, exposed minus unexposed"})


def _design_columns(run: _Run, names: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """The design's columns: ``(label, data column, level index or None)``."""
    out: list[tuple[str, str, int | None]] = []
    for column in names:
        if column in run.categorical:
            out.extend((f"{column}={level}", column, j)
                       for j, level in enumerate(run.categorical[column]) if j)
        else:
            out.append((column, column, None))
    return out


def _design_values(ops: Any, c: Mapping[str, Any], design: Sequence[tuple[str, str, int | None]],
                   centre: Sequence[float] | np.ndarray | None = None) -> list[Any]:
    values = [c[column] if level is None else _ind(ops, c[column] == float(level))
              for _, column, level in design]
    if centre is not None:
        values = [v - float(m) for v, m in zip(values, centre)]
    return values


def _centred_design(run: _Run, names: Sequence[str], cells: Mapping[str, int]
                    ) -> tuple[list[tuple[str, str, int | None]], np.ndarray, np.ndarray]:
    """The design (without absent levels), its column means and centred cross-products.

    Refuses ``singular`` as :func:`fedsynth.effects.patient_level._design` does: a
    constant column or collinear columns (rank of the centred cross-products, with the
    intercept, below the number of columns).
    """
    design = _design_columns(run, names)
    s = run.sums(lambda ops, c: {f"m_{i}": v for i, v in
                                 enumerate(_design_values(ops, c, design))})
    means = np.array([s[f"m_{i}"] for i in range(len(design))]) / max(run.n, 1)
    # A declared level absent here: an all-zero column, left out (R: NA).
    keep = [i for i, (_, _, level) in enumerate(design) if level is None or means[i] != 0]
    design = [design[i] for i in keep]
    means = means[keep]
    p = len(design)
    q = run.sums(lambda ops, c: _cross_terms(_design_values(ops, c, design, means)))
    sxx = _symmetric(q, "c", p)
    diag = np.diag(sxx)
    constant = [label for (label, column, level), d in zip(design, diag)
                if level is None and d == 0]
    scale = np.where(diag > 0, 1 / np.sqrt(np.where(diag > 0, diag, 1)), 0.0)
    corr = sxx * scale[:, None] * scale[None, :]
    if constant or np.linalg.matrix_rank(corr, tol=1e-10) < p:
        zero = {"constant_column": 0} if constant else {}
        raise Refuse("singular", cells={**cells, **zero},
                     detail=f"constant: {constant}" if constant else "collinear columns")
    return design, means, sxx


def _cross_terms(values: Sequence[Any]) -> dict[str, Any]:
    return {name: values[i] * values[j] for name, i, j in matrix_terms("c", len(values))}


def _symmetric(sums: Mapping[str, float], prefix: str, p: int) -> np.ndarray:
    out = np.zeros((p, p))
    for name, i, j in matrix_terms(prefix, p):
        out[i, j] = out[j, i] = sums[name]
    return out


def _fit_logistic(run: _Run, outcome: str, x: Callable[[Any, Mapping[str, Any]], list[Any]],
                  p: int, cells: Mapping[str, int], offset: str | None = None) -> Any:
    """Binomial-logit maximum likelihood by Newton steps, one pass over the data each."""
    def evaluate(beta: np.ndarray) -> Any:
        def terms(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
            off = None if offset is None else _logit(ops, c[offset])
            return glm_row_terms(ops, x(ops, c), c[outcome], beta, off)
        return glm_step(run.sums(terms), p)

    fit = newton_maximise(evaluate, p, max_iter=200)
    if not fit.converged or not np.all(np.isfinite(fit.beta)):
        raise Refuse("not_converged", cells=cells)
    return fit


def _logit(ops: Any, p: Any) -> Any:
    return ops.log(p / (1.0 - p))


def _logistic(run: _Run) -> Estimate:
    a = run.a
    outcome, exposure = a.required("outcome"), a.required("exposure")
    run.require_rows(len(a.covariates) + 4)
    s = run.sums(lambda ops, c: {"bad_y": _not01(ops, c[outcome]),
                                 "bad_x": _not01(ops, c[exposure]),
                                 **_counts_2x2(ops, c[outcome], c[exposure])})
    _check_binary(s, "bad_y", outcome, "outcome")
    _check_binary(s, "bad_x", exposure, "exposure")
    table = _cells_2x2(s)
    cells = {**table, **_margins(table["ai"] + table["ci"], run.n)}
    _require_both_groups(table["ai"] + table["bi"], table["ci"] + table["di"], exposure,
                         cells)
    _require_events(cells["events"], run.n, outcome, cells)
    if min(cells.values()) == 0:
        raise Refuse("separation", cells=cells, n=run.n,
                     detail="a zero cell of exposure x outcome (quasi-complete separation)")
    design, means, _ = _centred_design(run, [exposure, *a.covariates], cells)
    p = len(design) + 1
    fit = _fit_logistic(run, outcome, lambda ops, c: [1.0, *_design_values(ops, c, design,
                                                                           means)], p, cells)
    if abs(fit.beta[1]) > _SEPARATION_COEF:
        raise Refuse("separation", cells=cells, n=run.n,
                     detail="the fitted odds ratio is unbounded")
    cov = np.linalg.inv(fit.information)
    formula = f"glm({outcome} ~ {' + '.join([exposure, *a.covariates])}, binomial)"
    return run.estimate("OR", fit.beta[1], cov[1, 1], cells,
                        {"model": formula, "scale": "log odds ratio"})


def _linear(run: _Run) -> Estimate:
    a = run.a
    outcome, exposure = a.required("outcome"), a.required("exposure")
    run.require_rows(len(a.covariates) + 4)

    def first(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        y, x = c[outcome], c[exposure]
        return {"bad_x": _not01(ops, x), "other_y": _not01(ops, y), "n1": _ind(ops, x == 1),
                "sum_y": y, **_counts_2x2(ops, y, x)}

    s = run.sums(first)
    _check_binary(s, "bad_x", exposure, "exposure")
    n1 = int(round(s["n1"]))
    cells = {"n_exposed": n1, "n_unexposed": run.n - n1,
             **_implied_table_cells(run, outcome, exposure, s["other_y"], s)}
    _require_both_groups(n1, run.n - n1, exposure, cells)
    design, means, sxx = _centred_design(run, [exposure, *a.covariates], cells)
    p = len(design)
    my = s["sum_y"] / run.n

    def cross(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        yc = c[outcome] - my
        return {"yy": yc * yc, **{f"xy_{i}": v * yc for i, v in
                                  enumerate(_design_values(ops, c, design, means))}}

    q = run.sums(cross)
    sxy = np.array([q[f"xy_{i}"] for i in range(p)])
    beta = np.linalg.solve(sxx, sxy)

    def residual(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        r: Any = c[outcome] - my
        for coef, v in zip(beta, _design_values(ops, c, design, means)):
            r = r - float(coef) * v
        return {"rss": r * r}

    rss = run.sums(residual)["rss"]
    df_resid = run.n - p - 1
    if not df_resid > 0 or rss <= 1e-12 * max(q["yy"], 1e-300):
        raise Refuse("exact_fit", cells=cells, n=run.n)
    cov = rss / df_resid * np.linalg.inv(sxx)
    formula = f"lm({outcome} ~ {' + '.join([exposure, *a.covariates])})"
    return run.estimate("MD", beta[0], cov[0, 0], cells, {"model": formula})


def _cox(run: _Run) -> Estimate:
    a = run.a
    exposure, time, event = a.required("exposure"), a.required("time"), a.required("event")
    run.require_rows(len(a.covariates) + 4)
    s = run.sums(lambda ops, c: {
        "neg_t": _ind(ops, c[time] < 0), "bad_d": _not01(ops, c[event]),
        "bad_x": _not01(ops, c[exposure]), **_counts_2x2(ops, c[event], c[exposure])})
    if s["neg_t"]:
        raise Refuse("negative_time", column=time)
    _check_binary(s, "bad_d", event, "event")
    _check_binary(s, "bad_x", exposure, "exposure")
    table = _cells_2x2(s)
    events = table["ai"] + table["ci"]
    cells = {"events": events, "events_exposed": table["ai"],
             "events_unexposed": table["ci"], **table, **_margins(events, run.n)}
    _require_both_groups(table["ai"] + table["bi"], table["ci"] + table["di"], exposure,
                         cells)
    if events == 0:
        raise Refuse("no_events", column=event, cells=cells, n=run.n)
    if table["ai"] == 0 or table["ci"] == 0:
        raise Refuse("separation", cells=cells, n=run.n,
                     detail="one exposure group has no events (monotone likelihood)")
    design, means, _ = _centred_design(run, [exposure, *a.covariates], cells)
    p = len(design)
    ties = a.ties or "efron"

    def evaluate(beta: np.ndarray) -> Any:
        def terms(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
            return cox_row_terms(ops, _design_values(ops, c, design, means), c[event], beta)
        sums = run.engine.event_time_sums(run.columns, run.categorical, time, event, terms)
        return cox_newton_terms(CoxTimeSums.from_sums(sums, p), beta, ties)

    fit = newton_maximise(evaluate, p, max_iter=200)
    biggest = run.sums(lambda ops, c: {}, lambda ops, c: {
        f"abs_{i}": ops.abs(v) for i, v in enumerate(_design_values(ops, c, design))})
    scale = max([1.0, *[biggest[f"abs_{i}"] for i in range(p)]])
    if not fit.converged or not np.all(np.isfinite(fit.beta)) or \
            np.max(np.abs(fit.beta)) > _SEPARATION_COEF * scale:
        raise Refuse("monotone_likelihood", cells=cells, n=run.n)
    cov = np.linalg.inv(fit.information)
    formula = (f"coxph(Surv({time}, {event}) ~ {' + '.join([exposure, *a.covariates])}"
               f", ties = '{ties}')")
    return run.estimate("HR", fit.beta[0], cov[0, 0], cells,
                        {"model": formula, "ties": ties, "scale": "log hazard ratio",
                         "event": event})


def _model_eval(run: _Run, minimum: int, extra: Terms | None = None
                ) -> tuple[dict[str, float], dict[str, int]]:
    """The outcome check, margins and score table of a model evaluation (and ``extra``)."""
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")
    run.require_rows(minimum)

    def terms(ops: Any, c: Mapping[str, Any]) -> dict[str, Any]:
        p = c[score]
        out = {"bad_y": _not01(ops, c[outcome]), "events": c[outcome],
               "open": _ind(ops, (p <= 0) | (p >= 1)),
               "closed": _ind(ops, (p < 0) | (p > 1))}
        return {**out, **(extra(ops, c) if extra else {})}

    s = run.sums(terms, lambda ops, c: {"max": c[score], "neg_min": -c[score]})
    _check_binary(s, "bad_y", outcome, "outcome")
    events = int(round(s["events"]))
    cells = {**_margins(events, run.n), **_score_table_cells(run, score, outcome)}
    return s, cells


def _auc(run: _Run) -> Estimate:
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")
    s, cells = _model_eval(run, 4)
    _require_events(cells["events"], run.n, outcome, cells)
    if min(cells["events"], cells["non_events"]) < 2:
        raise Refuse("too_few_events", cells=cells, n=run.n)
    placements = run.engine.auc(run.columns, run.categorical, outcome, score)
    auc, var = placements.auc, placements.variance
    if a.scale == "logit":
        if not 0 < auc < 1:
            raise Refuse("perfect_discrimination", cells=cells, n=run.n)
        return run.estimate("logit_AUC", math.log(auc / (1 - auc)),
                            var / (auc * (1 - auc)) ** 2, cells,
                            {"method": "DeLong variance, delta method to the logit scale",
                             "score": score, "scale": "logit"})
    if var <= 0:
        raise Refuse("perfect_discrimination", cells=cells, n=run.n)
    return run.estimate("AUC", auc, var, cells,
                        {"method": "DeLong", "score": score, "scale": "raw"})


def _open_scores(s: Mapping[str, float], score: str) -> None:
    if s["open"]:
        raise Refuse("probability_open", column=score)


def _calibration_slope(run: _Run) -> Estimate:
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")
    s, cells = _model_eval(run, 4)
    _require_events(cells["events"], run.n, outcome, cells)
    _open_scores(s, score)
    if s["max"] == -s["neg_min"]:
        raise Refuse("constant_score", column=score, cells=cells, n=run.n)
    centre = run.sums(lambda ops, c: {"lp": _logit(ops, c[score])})["lp"] / run.n
    fit = _fit_logistic(run, outcome, lambda ops, c: [1.0, _logit(ops, c[score]) - centre],
                        2, cells)
    cov = np.linalg.inv(fit.information)
    return run.estimate("slope", fit.beta[1], cov[1, 1], cells,
                        {"model": f"glm({outcome} ~ qlogis({score}), binomial)",
                         "score": score})


def _calibration_in_the_large(run: _Run) -> Estimate:
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")
    s, cells = _model_eval(run, 4)
    _require_events(cells["events"], run.n, outcome, cells)
    _open_scores(s, score)
    fit = _fit_logistic(run, outcome, lambda ops, c: [1.0], 1, cells, offset=score)
    return run.estimate("intercept", fit.beta[0], 1.0 / fit.information[0, 0], cells,
                        {"model": f"glm({outcome} ~ offset(qlogis({score})), binomial)",
                         "score": score})


def _oe_ratio(run: _Run) -> Estimate:
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")
    s, cells = _model_eval(run, 2, lambda ops, c: {"expected": c[score]})
    _open_scores(s, score)
    observed, n = cells["events"], run.n
    cells = {**cells, "observed": observed}
    _require_events(observed, n, outcome, cells)
    return run.estimate("OE", math.log(observed / s["expected"]), (1 - observed / n) / observed,
                        cells, {"method": "log(O/E), variance (1 - O/N)/O", "score": score})


def _brier(run: _Run) -> Estimate:
    a = run.a
    outcome, score = a.required("outcome"), a.required("score")

    def squared(c: Mapping[str, Any]) -> Any:
        e = c[score] - c[outcome]
        return e * e

    s, cells = _model_eval(run, 2, lambda ops, c: {"sq": squared(c)})
    if s["closed"]:
        raise Refuse("probability_closed", column=score)
    mean = s["sq"] / run.n
    q = run.sums(lambda ops, c: {"dev": (squared(c) - mean) * (squared(c) - mean)})
    return run.estimate("Brier", mean, q["dev"] / (run.n - 1) / run.n, cells,
                        {"method": "mean squared error, variance var(sq)/N", "score": score})


_ESTIMATORS: dict[str, Callable[[_Run], Estimate]] = {
    "two_by_two": _two_by_two, "two_group": _two_group, "logistic": _logistic,
    "linear": _linear, "cox": _cox, "auc": _auc, "calibration_slope": _calibration_slope,
    "calibration_in_the_large": _calibration_in_the_large, "oe_ratio": _oe_ratio,
    "brier": _brier,
}


def estimate_on_engine(engine: AggregateEngine, analysis: AnalysisSpec | Mapping[str, Any]
                       ) -> Estimate | Refusal:
    """One analysis from an engine's aggregates: the same result as on a DataFrame.

    Parameters
    ----------
    engine
        Where the sums are computed (:class:`BlockEngine`, a SQL or Spark engine).
    analysis
        An :class:`~fedsynth.spec.AnalysisSpec` (or a dict validated into one).

    Returns
    -------
    Estimate or Refusal
        As :func:`fedsynth.effects.estimate` returns for the same rows; a data problem
        (including one the engine reports, worded from the fixed vocabulary) is a
        refusal, never an exception.
    """
    analysis = AnalysisSpec.coerce(analysis, "estimate")
    try:
        return _ESTIMATORS[analysis.estimator](_Run(engine, analysis))
    except Refuse as refusal:
        return refusal.refusal(analysis)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError,
            OverflowError) as error:
        return Refusal.of("numerical_failure", analysis.name, estimator=analysis.estimator,
                          detail=f"{type(error).__name__}: {error}")


def estimate_all_on_engine(engine: AggregateEngine, spec: Spec | Mapping[str, Any] | str
                           ) -> dict[str, Estimate | Refusal]:
    """Every analysis of ``spec`` on ``engine``: ``{name: Estimate | Refusal}`` in order."""
    if not isinstance(spec, Spec):
        spec = parse_spec(spec)
    return {a.name: estimate_on_engine(engine, a) for a in spec.analyses}
