"""Design matrices at a site: the same columns at every site, whatever its rows hold.

Why
---
A federated fit adds up each site's ``XᵀWX``; that is only meaningful when every site's
column ``j`` is the same coefficient. Automatic dummy coding (pandas ``get_dummies``, or
R's ``factor`` without ``levels``) makes the columns depend on the levels a site happens to
have. So the levels come from the spec (:mod:`fedsynth.models.spec`) and the coding is
fixed: treatment contrasts against the first declared level (R's ``contr.treatment`` on
``factor(x, levels = declared)``), one column ``column=level`` per other level.

* A declared level a site lacks is fine: its column is all zero at that site. In a
  one-stage (pooled-information) fit that column simply adds nothing to the site's
  ``XᵀWX``; only a level absent at *every* site makes the summed information singular, and
  the coefficient is then reported as not estimable (``NaN``, R's ``NA``: aliased). In a
  site's own fit (two-stage) the column is aliased at that site: its coefficient is
  ``NaN`` there and the site does not contribute to that coefficient's pooling.
* A value outside the declared levels is an error (:class:`CodingError`), never silently
  the reference level: a typo at one site would otherwise change the model there.
* Data values are compared as text: a level ``"4"`` (or the TOML integer ``4``) matches
  the data value ``4``, ``4.0`` or ``"4"``; booleans are ``true``/``false``.

Rows with a missing value in any column the model uses are dropped (R's ``na.omit``) and
counted. Everything here is vectorised (pandas/numpy) and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.errors import InputError
from fedsynth.models.spec import INTERCEPT, ModelSpec, coefficient_names
from fedsynth.tabular import CSV_NA_VALUES

__all__ = ["CodingError", "Design", "build_design", "level_codes", "encode_covariates",
           "canonical_text", "CSV_NA_VALUES"]


class CodingError(InputError):
    """A column cannot be coded.

    It is missing, not numeric, holds a value outside the declared levels, or is an
    outcome the family cannot use.

    Attributes
    ----------
    column
        The column at fault.
    reason
        The problem without any data value or count: safe to send to the coordinator as
        a refusal reason (the message itself names the value, for the site operator).
    code
        A machine code as :data:`fedsynth.effects.REFUSAL_CODES` (``missing_column``,
        ``invalid_values``, ``non_binary``).
    """

    def __init__(self, message: str, *, column: str, reason: str,
                 code: str = "invalid_values") -> None:
        super().__init__(message)
        self.column = column
        self.reason = reason
        self.code = code


def canonical_text(series: pd.Series) -> np.ndarray:
    """Each value as the text a declared level is compared with; ``None`` where missing.

    Integral numbers lose their decimal point (``4.0`` -> ``"4"``), other numbers use
    Python's shortest repr, booleans are ``true``/``false``, strings stay as they are.
    """
    missing = series.isna().to_numpy()
    out = np.full(len(series), None, dtype=object)
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy()
        out[~missing] = np.where(values[~missing].astype(bool), "true", "false")
        return out
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=float)
        ok = ~missing
        integral = ok & np.isfinite(values) & (np.floor(values) == values) & \
            (np.abs(values) < 2.0**53)
        out[integral] = values[integral].astype(np.int64).astype(str)
        other = ok & ~integral
        out[other] = [repr(float(v)) for v in values[other]]
        return out
    present = series[~missing]
    if pd.api.types.infer_dtype(present, skipna=True) in ("string", "empty"):
        out[~missing] = present.to_numpy(dtype=object)
        return out
    out[~missing] = [_text(v) for v in present]
    return out


def _text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return str(int(v)) if np.isfinite(v) and v == np.floor(v) and abs(v) < 2**53 \
            else repr(v)
    return str(value)


def level_codes(series: pd.Series, levels: Sequence[str], column: str) -> np.ndarray:
    """Index of each value in ``levels`` (float; ``NaN`` where missing).

    Raises
    ------
    CodingError
        A present value that is not one of ``levels`` (the message names the column, the
        value and its data row; the ``reason`` names neither).
    """
    text = canonical_text(series)
    codes = pd.Index(list(levels), dtype=object).get_indexer(
        pd.Index(text, dtype=object)).astype(float)
    missing = np.array([t is None for t in text], dtype=bool) if len(text) else \
        np.zeros(0, dtype=bool)
    unknown = (codes < 0) & ~missing
    if unknown.any():
        pos = int(np.flatnonzero(unknown)[0])
        raise CodingError(
            f"column {column!r}: value {text[pos]!r} (data row {pos + 1}) is not one of its "
            f"declared levels ({', '.join(map(repr, levels))})", column=column,
            reason=f"column {column!r} holds a value outside its declared levels")
    codes[missing] = np.nan
    return codes


def _numeric(series: pd.Series, column: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=float)
    converted = pd.to_numeric(series, errors="coerce")
    bad = (converted.isna() & series.notna()).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise CodingError(
            f"column {column!r}: value {series.iloc[pos]!r} (data row {pos + 1}) is not a "
            "number (declare the column's levels under 'categorical' if it is categorical)",
            column=column, reason=f"column {column!r} holds values that are not numbers")
    values = converted.to_numpy(dtype=float)
    if np.isinf(values).any():
        raise CodingError(f"column {column!r} holds infinite values", column=column,
                          reason=f"column {column!r} holds infinite values")
    return values


def encode_covariates(columns: Mapping[str, np.ndarray], covariates: Sequence[str],
                      categorical: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The covariate part of the design (no intercept) from numeric values and level codes.

    ``columns[c]`` holds the numbers of a numeric covariate or the level codes
    (:func:`level_codes`) of a categorical one, complete rows only. The result has one
    column per coefficient of :func:`~fedsynth.models.spec.coefficient_names` after the
    intercept.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    blocks: list[np.ndarray] = []
    for column in covariates:
        values = np.asarray(columns[column], dtype=float)
        if column in categorical:
            k = len(categorical[column])
            # Treatment contrasts: one 0/1 column per non-reference level.
            blocks.append((values[:, None] == np.arange(1, k)[None, :]).astype(float))
        else:
            blocks.append(values[:, None])
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))


@dataclass(frozen=True, eq=False)
class Design:
    """A site's design for one model. Private: it holds patient rows, never sent.

    Attributes
    ----------
    model
        The model it codes.
    names
        Coefficient names, one per column of ``x``.
    x
        ``(n, p)`` design matrix (intercept first).
    y
        ``(n,)`` outcome.
    offset
        ``(n,)`` offset (zeros when the model has none).
    n_dropped
        Rows dropped for a missing value in a column the model uses.
    level_counts
        ``{column: {level: rows}}`` for every categorical covariate (all declared levels,
        absent ones 0), every numeric covariate with at most two distinct values (a binary
        covariate) and an outcome with at most two distinct values. Used by disclosure
        control (:mod:`fedsynth.models.disclosure`); never sent.
    """

    model: ModelSpec
    names: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    n_dropped: int = 0
    level_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Rows (patients) the model rests on."""
        return int(self.x.shape[0])

    @property
    def p(self) -> int:
        """Number of coefficients."""
        return int(self.x.shape[1])


def _check_outcome(y: np.ndarray, model: ModelSpec) -> None:
    column = model.outcome
    if model.family == "binomial" and not np.isin(y, (0.0, 1.0)).all():
        raise CodingError(f"outcome column {column!r} must be 0/1 for family binomial",
                          column=column, code="non_binary",
                          reason=f"the outcome column {column!r} must be 0/1 for family "
                                 "binomial")
    if model.family == "poisson" and not ((y >= 0) & (np.floor(y) == y)).all():
        raise CodingError(f"outcome column {column!r} must hold counts (integers >= 0) for "
                          "family poisson", column=column,
                          reason=f"the outcome column {column!r} must hold counts "
                                 "(integers >= 0) for family poisson")


def _binary_counts(values: np.ndarray) -> dict[str, int] | None:
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) > 2:
        return None
    return {_text(v): int(c) for v, c in zip(distinct, counts)}


def build_design(frame: pd.DataFrame, model: ModelSpec) -> Design:
    """Code a site's rows for ``model`` (complete rows only).

    Parameters
    ----------
    frame
        The site's data, one row per patient.
    model
        The validated model.

    Returns
    -------
    Design

    Raises
    ------
    CodingError
        A missing column, a non-numeric value in a numeric column, a value outside the
        declared levels, or an outcome the family cannot use (binomial: 0/1; poisson:
        counts). Its ``reason`` is safe to send; its message names the value for the site.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"build_design: data must be a pandas DataFrame, got "
                         f"{type(frame).__name__}")
    columns = model.columns
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise CodingError(f"the data has no column {absent[0]!r} (model {model.name!r})",
                          column=absent[0], code="missing_column",
                          reason=f"the data has no column {absent[0]!r}")
    levels = model.levels
    values: dict[str, np.ndarray] = {}
    for column in columns:
        series = frame[column]
        if column in levels:
            values[column] = level_codes(series, levels[column], column)
        else:
            values[column] = _numeric(series, column)
    complete = np.ones(len(frame), dtype=bool)
    for array in values.values():
        complete &= ~np.isnan(array)
    kept = {c: v[complete] for c, v in values.items()}
    y = kept[model.outcome]
    _check_outcome(y, model)
    covariates = encode_covariates(kept, model.covariates, levels)
    n = int(complete.sum())
    x = np.concatenate([np.ones((n, 1)), covariates], axis=1)
    offset = kept[model.offset] if model.offset else np.zeros(n)
    counts: dict[str, dict[str, int]] = {}
    for column in model.covariates:
        if column in levels:
            tally = np.bincount(kept[column].astype(int), minlength=len(levels[column]))
            counts[column] = {lvl: int(c) for lvl, c in zip(levels[column], tally)}
        else:
            binary = _binary_counts(kept[column])
            if binary is not None:
                counts[column] = binary
    outcome_counts = _binary_counts(y)
    if outcome_counts is not None:
        if model.family == "binomial":
            outcome_counts = {"0": outcome_counts.get("0", 0), "1": outcome_counts.get("1", 0)}
        counts[model.outcome] = outcome_counts
    names = coefficient_names(model.covariates, model.categorical)
    assert names[0] == INTERCEPT and len(names) == x.shape[1]
    return Design(model=model, names=names, x=x, y=y, offset=offset,
                  n_dropped=int(len(frame) - n), level_counts=counts)
