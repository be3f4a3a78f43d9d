"""Site estimators as mergeable aggregates: per-row terms, sums, and a finishing step.

Why
---
Every site estimator depends on the rows only through sums that add up across any split
of the rows into blocks (pandas chunks, Parquet row groups, database pages, Spark
partitions, or sites in a one-stage federated fit). Computing those sums where the data
live and finishing in Python keeps memory flat and lets a database or a Spark cluster do
the heavy work; the finishing step is the same code whatever engine produced the sums, so
the engines cannot drift apart. The decomposition of each estimator is documented in
``docs/decisions/warehouse.md``:

* **counts** (2×2 tables, margins, level tables), **sums and centred sums of squares**
  (two-group means/SDs, Brier, O/E): the two-pass scheme of Chan, Golub & LeVeque ("Algorithms
  for computing the sample variance", *Am Stat* 37(3), 1983) with the first pass's means
  bound into the second;
* **DeLong's placement values** (DeLong, DeLong & Clarke-Pearson, *Biometrics* 44(3),
  1988): a case's placement is the share of controls below it (ties ½), so all cases with
  the same score share one placement. The counts of cases and controls per distinct score
  add across blocks; cumulative sums over the sorted distinct scores then give every
  placement, hence the AUC and its variance exactly (:func:`auc_from_counts`);
* **one IRLS/Newton step of a GLM** (binomial logit, McCullagh & Nelder 1989, §2.5):
  ``XᵀWX``, ``Xᵀ(y − μ)`` and the log-likelihood at the current ``β`` are sums over rows
  (:func:`glm_row_terms`); the linear model is the same with ``W = I`` in one step;
* **one Newton step of the Cox partial likelihood** (Cox 1972; ties by Efron, *JASA*
  72(359), 1977, or Breslow, *Biometrics* 30, 1974): per distinct event time ``t_k`` the
  sums of ``w = exp(xβ)``, ``w x`` and ``w x xᵀ`` over rows with ``t_k ≤ time < t_{k+1}``
  (a *bucket*) and over the events at ``t_k``. Bucket sums add across blocks; reverse
  cumulative sums over the buckets are the risk-set sums, from which
  :func:`cox_newton_terms` forms the log partial likelihood, score and information of
  both tie methods, vectorised over events.

Everything here is numpy on arrays that are already sums: no rows, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AucPlacements", "auc_from_counts", "CoxTimeSums", "CoxStep",
           "cox_newton_terms", "cox_row_terms", "GlmStep", "glm_row_terms", "glm_step",
           "NewtonFit", "newton_maximise", "matrix_terms", "vector_terms", "EXP_CLIP"]

#: Linear predictors are clipped to ±EXP_CLIP before ``exp``: ``exp(±700)`` is finite in
#: IEEE doubles, and PostgreSQL raises on an overflowing or underflowing ``exp`` instead of
#: returning ``inf``/0. Only a diverging fit ever reaches the clip.
EXP_CLIP = 700.0


# --------------------------------------------------------------------------- helpers

def matrix_terms(prefix: str, p: int) -> list[tuple[str, int, int]]:
    """The names of the upper-triangle entries of a symmetric ``p × p`` sum."""
    return [(f"{prefix}_{i}_{j}", i, j) for i in range(p) for j in range(i, p)]


def vector_terms(prefix: str, p: int) -> list[tuple[str, int]]:
    """The names of the entries of a length-``p`` sum."""
    return [(f"{prefix}_{i}", i) for i in range(p)]


def _matrix(sums: Mapping[str, Any], prefix: str, p: int) -> np.ndarray:
    """Assemble a symmetric matrix (or a stack of them, one per bucket) from its terms."""
    first = np.asarray(sums[f"{prefix}_0_0"], dtype=float) if p else np.zeros(0)
    out = np.zeros(first.shape + (p, p))
    for name, i, j in matrix_terms(prefix, p):
        value = np.asarray(sums[name], dtype=float)
        out[..., i, j] = value
        out[..., j, i] = value
    return out


def _vector(sums: Mapping[str, Any], prefix: str, p: int) -> np.ndarray:
    first = np.asarray(sums[f"{prefix}_0"], dtype=float) if p else np.zeros(0)
    out = np.zeros(first.shape + (p,))
    for name, i in vector_terms(prefix, p):
        out[..., i] = np.asarray(sums[name], dtype=float)
    return out


def _clip(ops: Any, eta: Any) -> Any:
    return ops.where(eta > EXP_CLIP, EXP_CLIP, ops.where(eta < -EXP_CLIP, -EXP_CLIP, eta))


def _stage(ops: Any, name: str, value: Any) -> Any:
    """``value`` computed once per row where the engine supports it (Spark: a column).

    An engine whose expressions are trees (Spark) would otherwise repeat the linear
    predictor in every term; ``ops.stage`` makes it a column of its own. Numpy and SQL
    engines take the expression as it is.
    """
    stage = getattr(ops, "stage", None)
    return stage(name, value) if stage is not None else value


def _clip_above(ops: Any, value: Any) -> Any:
    return ops.where(value > EXP_CLIP, EXP_CLIP, value)


# --------------------------------------------------------------------------- DeLong

@dataclass(frozen=True)
class AucPlacements:
    """AUC with DeLong's variance components.

    Attributes
    ----------
    auc
        Mean placement of the cases (the Mann-Whitney AUC, ties ½).
    s10, s01
        Sample variances (``n - 1`` denominator) of the placement values of the cases and
        of the controls; DeLong's variance of the AUC is ``s10 / n_pos + s01 / n_neg``.
    n_pos, n_neg
        Number of cases (outcome 1) and controls (outcome 0).
    """

    auc: float
    s10: float
    s01: float
    n_pos: int
    n_neg: int

    @property
    def n(self) -> int:
        """Number of cases and controls."""
        return self.n_pos + self.n_neg

    @property
    def variance(self) -> float:
        """DeLong's variance of the AUC from the placement variances."""
        return self.s10 / self.n_pos + self.s01 / self.n_neg


def auc_from_counts(n_pos: np.ndarray, n_neg: np.ndarray) -> AucPlacements:
    """The AUC and DeLong's variance from case and control counts per distinct score.

    Parameters
    ----------
    n_pos, n_neg
        Counts of cases and controls at each distinct score, in increasing score order
        (the merged aggregate: counts per score add across blocks).

    Notes
    -----
    A case at score ``s`` has placement ``V10 = (controls below s + ½ controls at s) / n0``
    and a control ``V01 = (cases above s + ½ cases at s) / n1`` (DeLong et al. 1988); every
    row at one score shares its placement, so the means and the two-pass sample variances
    are weighted sums over the distinct scores. Counts are integers, so the result does
    not depend on how rows were split into blocks.
    """
    pos = np.asarray(n_pos, dtype=float)
    neg = np.asarray(n_neg, dtype=float)
    n1, n0 = float(pos.sum()), float(neg.sum())
    if n1 == 0 or n0 == 0:
        return AucPlacements(float("nan"), float("nan"), float("nan"), int(n1), int(n0))
    neg_below = np.cumsum(neg) - neg
    pos_above = n1 - np.cumsum(pos)
    v10 = (neg_below + 0.5 * neg) / n0
    v01 = (pos_above + 0.5 * pos) / n1
    auc = float(np.sum(pos * v10) / n1)
    s10 = float(np.sum(pos * (v10 - auc) ** 2) / (n1 - 1)) if n1 > 1 else float("nan")
    s01 = float(np.sum(neg * (v01 - auc) ** 2) / (n0 - 1)) if n0 > 1 else float("nan")
    return AucPlacements(auc, s10, s01, int(n1), int(n0))


# --------------------------------------------------------------------------- GLM step

def glm_row_terms(ops: Any, x: Sequence[Any], y: Any, beta: np.ndarray,
                  offset: Any = None) -> dict[str, Any]:
    """Per-row terms of one binomial-logit Newton (IRLS) step at ``beta``.

    Parameters
    ----------
    ops
        The engine's operations (``exp``, ``log``, ``where``, ``abs``) on its columns
        (numpy arrays, SQLAlchemy expressions, Spark columns).
    x
        The design columns (the intercept is a column of ones, as the engine gives it).
    y
        The 0/1 outcome.
    beta
        The current coefficients.
    offset
        A column added to the linear predictor (calibration-in-the-large), or None.

    Returns
    -------
    dict
        ``info_i_j`` (``Σ w x_i x_j``, ``w = μ(1-μ)``), ``score_i`` (``Σ x_i (y - μ)``)
        and ``loglik`` (``Σ y η - log(1 + e^η)``), whose sums over rows are the step's
        aggregate. ``μ`` and ``log(1 + e^η)`` are written with ``e^{-|η|}`` so no engine
        overflows.
    """
    eta: Any = offset if offset is not None else 0.0
    for coef, column in zip(beta, x):
        eta = eta + float(coef) * column
    if offset is None and not len(beta):
        raise ValueError("a GLM step needs at least one coefficient")
    eta = _stage(ops, "eta_", eta)
    small = _stage(ops, "small_", ops.exp(-_clip_above(ops, ops.abs(eta))))  # e^{-|η|}
    mu = _stage(ops, "mu_", ops.where(eta >= 0, 1.0 / (1.0 + small), small / (1.0 + small)))
    # μ(1 − μ) = e^{-|η|} / (1 + e^{-|η|})² whatever the sign of η (a shorter SQL tree)
    weight = small / ((1.0 + small) * (1.0 + small))
    residual = y - mu
    softplus = ops.where(eta >= 0, eta, 0.0) + ops.log(1.0 + small)
    terms: dict[str, Any] = {"loglik": y * eta - softplus}
    p = len(x)
    for name, i, j in matrix_terms("info", p):
        terms[name] = weight * x[i] * x[j]
    for name, i in vector_terms("score", p):
        terms[name] = x[i] * residual
    return terms


@dataclass(frozen=True)
class GlmStep:
    """The merged aggregate of one GLM Newton step: log-likelihood, score, information."""

    loglik: float
    score: np.ndarray
    information: np.ndarray


def glm_step(sums: Mapping[str, Any], p: int) -> GlmStep:
    """Assemble :class:`GlmStep` from the summed :func:`glm_row_terms`."""
    return GlmStep(float(sums["loglik"]), _vector(sums, "score", p),
                   _matrix(sums, "info", p))


# --------------------------------------------------------------------------- Cox step

def cox_row_terms(ops: Any, x: Sequence[Any], event: Any, beta: np.ndarray
                  ) -> dict[str, Any]:
    """Per-row terms of one Cox Newton step at ``beta`` (summed per event-time bucket).

    ``r0 = w``, ``r1_i = w x_i``, ``r2_i_j = w x_i x_j`` (``w = exp(xβ)``) over all rows
    of a bucket, and the same times ``event`` (``e0``, ``e1_i``, ``e2_i_j``) plus ``d``
    (events) and ``sx_i`` (``Σ event x_i``) over its events.
    """
    eta: Any = 0.0
    for coef, column in zip(beta, x):
        eta = eta + float(coef) * column
    w = _stage(ops, "w_", ops.exp(_clip(ops, eta)))
    ew = event * w
    terms: dict[str, Any] = {"d": event, "r0": w, "e0": ew}
    p = len(x)
    for (name, i) in vector_terms("r1", p):
        terms[name] = w * x[i]
        terms[f"e1_{i}"] = ew * x[i]
        terms[f"sx_{i}"] = event * x[i]
    for (name, i, j) in matrix_terms("r2", p):
        wx = w * x[i] * x[j]
        terms[name] = wx
        terms[f"e2_{i}_{j}"] = event * wx
    return terms


@dataclass(frozen=True)
class CoxTimeSums:
    """Sums per distinct event time of one Cox Newton step (the merged aggregate).

    Attributes
    ----------
    d
        Events at each distinct event time ``t_k`` (increasing).
    sx
        ``Σ x`` over those events, ``(K, p)``.
    e0, e1, e2
        ``Σ w``, ``Σ w x``, ``Σ w x xᵀ`` over those events.
    r0, r1, r2
        The same over every row of bucket ``k`` (``t_k ≤ time < t_{k+1}``); their reverse
        cumulative sums are the risk-set sums at ``t_k``.
    """

    d: np.ndarray
    sx: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    r2: np.ndarray

    @classmethod
    def from_sums(cls, sums: Mapping[str, Any], p: int) -> CoxTimeSums:
        """Assemble from the per-bucket sums of :func:`cox_row_terms`."""
        return cls(np.asarray(sums["d"], dtype=float), _vector(sums, "sx", p),
                   np.asarray(sums["e0"], dtype=float), _vector(sums, "e1", p),
                   _matrix(sums, "e2", p), np.asarray(sums["r0"], dtype=float),
                   _vector(sums, "r1", p), _matrix(sums, "r2", p))

    def __add__(self, other: CoxTimeSums) -> CoxTimeSums:
        return CoxTimeSums(*(a + b for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[np.ndarray, ...]:
        return (self.d, self.sx, self.e0, self.e1, self.e2, self.r0, self.r1, self.r2)


@dataclass(frozen=True)
class CoxStep:
    """Log partial likelihood, score and information of a Cox model at one ``β``."""

    loglik: float
    score: np.ndarray
    information: np.ndarray


#: Tied events expanded at once by Efron's step (:func:`cox_newton_terms`): the unit of
#: its memory (~65,536 × p floats per temporary), whatever the number of events.
EFRON_EVENTS_PER_SLICE = 65_536


def cox_newton_terms(sums: CoxTimeSums, beta: np.ndarray, ties: str) -> CoxStep:
    """The Newton step's quantities from per-event-time sums (Efron or Breslow ties).

    Parameters
    ----------
    sums
        The merged bucket sums at ``beta``.
    beta
        The coefficients the sums were computed at (for the events' ``Σ xβ``).
    ties
        ``"efron"`` or ``"breslow"``.

    Notes
    -----
    With risk-set sums ``R0, R1, R2`` at ``t_k`` and event sums ``E0, E1, E2`` of its
    ``d_k`` tied events, Efron's approximation subtracts the fraction ``f = l / d_k``
    (``l = 0 … d_k − 1``) of the tied events' weight from the risk set:
    ``A = R0 − f E0``, ``B = R1 − f E1``, ``C = R2 − f E2``;
    ``ℓ = Σ_events xβ − Σ log A``, ``U = Σ_events x − Σ B/A`` and
    ``I = Σ (C/A − (B/A)(B/A)ᵀ)`` over all ``(k, l)``. Breslow's is ``f = 0``. The pairs
    ``(k, l)`` are expanded into arrays (one entry per event) a slice of
    :data:`EFRON_EVENTS_PER_SLICE` events at a time, so a step costs ``O(events · p²)``
    time after the ``O(rows · p²)`` sums, and bounded memory.
    """
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    p = len(beta)
    keep = sums.d > 0
    d = np.rint(sums.d[keep]).astype(np.int64)
    # risk-set sums: every bucket at or after t_k (reverse cumulative sums)
    r0 = np.cumsum(sums.r0[::-1])[::-1][keep]
    r1 = np.cumsum(sums.r1[::-1], axis=0)[::-1][keep]
    r2 = np.cumsum(sums.r2[::-1], axis=0)[::-1][keep]
    e0, e1, e2 = sums.e0[keep], sums.e1[keep], sums.e2[keep]
    sx_total = sums.sx[keep].sum(axis=0)
    if ties == "breslow":
        a = r0
        b = r1 / a[:, None]
        loglik = float(sx_total @ beta - np.sum(d * np.log(a)))
        score = sx_total - np.sum(d[:, None] * b, axis=0)
        info = np.einsum("k,kij->ij", d / a, r2) - np.einsum("k,ki,kj->ij", d, b, b)
        return CoxStep(loglik, score, info.reshape(p, p))
    # The (k, l) pairs are expanded a slice of event times at a time, each slice holding
    # about EFRON_EVENTS_PER_SLICE events, so memory stays bounded however many events
    # the site has (one expansion of 10 million events would be ~1 GB of temporaries).
    info = np.zeros((p, p))
    log_a_total = 0.0
    b_total = np.zeros(p)
    ends = np.cumsum(d)
    lo = 0
    while lo < len(d):
        base = ends[lo] - d[lo]
        hi = max(lo + 1, int(np.searchsorted(ends, base + EFRON_EVENTS_PER_SLICE,
                                             side="right")))
        ds = d[lo:hi]
        k = np.repeat(np.arange(hi - lo), ds)
        start = np.repeat(np.cumsum(ds) - ds, ds)
        frac = (np.arange(len(k)) - start) / ds[k]
        a = r0[lo:hi][k] - frac * e0[lo:hi][k]
        b = (r1[lo:hi][k] - frac[:, None] * e1[lo:hi][k]) / a[:, None]
        # Σ_l C_l / A_l = R2 Σ_l 1/A_l − E2 Σ_l f_l/A_l: two sums per time, not per event
        inv = np.bincount(k, weights=1.0 / a, minlength=hi - lo)
        finv = np.bincount(k, weights=frac / a, minlength=hi - lo)
        info += (np.einsum("k,kij->ij", inv, r2[lo:hi])
                 - np.einsum("k,kij->ij", finv, e2[lo:hi]) - b.T @ b)
        log_a_total += float(np.sum(np.log(a)))
        b_total += b.sum(axis=0)
        lo = hi
    loglik = float(sx_total @ beta - log_a_total)
    score = sx_total - b_total
    return CoxStep(loglik, score, info.reshape(p, p))


# --------------------------------------------------------------------------- Newton

@dataclass(frozen=True)
class NewtonFit:
    """A maximised log-likelihood: coefficients, information there, and how it ended.

    Attributes
    ----------
    beta
        The maximiser.
    information
        The observed information (negative Hessian) at ``beta``; its inverse is the
        coefficients' covariance.
    loglik
        The log-likelihood at ``beta``.
    iterations
        Newton steps taken (each one pass over the data).
    converged
        False when ``max_iter`` steps did not reach the tolerance.
    """

    beta: np.ndarray
    information: np.ndarray
    loglik: float
    iterations: int
    converged: bool


def newton_maximise(evaluate: Callable[[np.ndarray], Any], p: int, *,
                    start: np.ndarray | None = None, max_iter: int = 100,
                    tol: float = 1e-11) -> NewtonFit:
    """Maximise a concave log-likelihood by Newton steps with step halving.

    Parameters
    ----------
    evaluate
        ``β ↦`` an object with ``loglik``, ``score`` and ``information`` (one pass over
        the data: :class:`GlmStep` or :class:`CoxStep`).
    p
        Number of coefficients.
    start
        Starting coefficients (zeros by default, as R's ``coxph``).
    max_iter
        Most steps.
    tol
        Converged when the largest step is below ``tol · max(1, |β|)``; the step is then
        taken and the information re-evaluated there, so the estimate is one quadratic
        step past the tolerance (exact to rounding) and the variance is at that estimate.

    Notes
    -----
    A step that lowers the log-likelihood is halved (up to 30 times), as R's ``coxph`` and
    ``glm`` do; on a concave likelihood this keeps every step an ascent.
    """
    beta = np.zeros(p) if start is None else np.asarray(start, dtype=float).copy()
    current = evaluate(beta)
    for iteration in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(current.information, current.score)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(current.information, current.score, rcond=None)[0]
        small = float(np.max(np.abs(step), initial=0.0)) <= tol * max(
            1.0, float(np.max(np.abs(beta), initial=0.0)))
        candidate = beta + step
        trial = evaluate(candidate)
        halvings = 0
        while (not np.isfinite(trial.loglik) or trial.loglik < current.loglik
               - 1e-12 * abs(current.loglik)) and halvings < 30 and not small:
            step = step / 2
            candidate = beta + step
            trial = evaluate(candidate)
            halvings += 1
        beta, current = candidate, trial
        if small:
            return NewtonFit(beta, current.information, current.loglik, iteration, True)
    return NewtonFit(beta, current.information, current.loglik, max_iter, False)


def cox_bucket_sums(time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray,
                    event_times: np.ndarray) -> CoxTimeSums:
    """The per-bucket sums of one block of rows (arrays), as :func:`cox_row_terms` sums.

    Parameters
    ----------
    time, event, x
        The block's complete rows: times, 0/1 events and the ``(rows, p)`` design.
    beta
        The coefficients of this step.
    event_times
        The distinct event times of *all* blocks (increasing); a block's sums are then
        indexed alike and merge by addition.
    """
    time = np.asarray(time, dtype=float)
    x = np.asarray(x, dtype=float).reshape(len(time), -1)
    p = x.shape[1]
    k = len(event_times)
    bucket = np.searchsorted(event_times, time, side="right") - 1
    keep = bucket >= 0
    bucket, x, ev = bucket[keep], x[keep], np.asarray(event, dtype=float)[keep]
    w = np.exp(np.clip(x @ beta, -EXP_CLIP, EXP_CLIP))
    ew = ev * w

    def by_bucket(values: np.ndarray) -> np.ndarray:
        return np.bincount(bucket, weights=values, minlength=k)

    r1 = np.column_stack([by_bucket(w * x[:, i]) for i in range(p)]) if p else np.zeros((k, 0))
    e1 = np.column_stack([by_bucket(ew * x[:, i]) for i in range(p)]) if p else \
        np.zeros((k, 0))
    sx = np.column_stack([by_bucket(ev * x[:, i]) for i in range(p)]) if p else \
        np.zeros((k, 0))
    r2 = np.zeros((k, p, p))
    e2 = np.zeros((k, p, p))
    for i in range(p):
        wx = w * x[:, i]
        for j in range(i, p):
            r2[:, i, j] = r2[:, j, i] = by_bucket(wx * x[:, j])
            e2[:, i, j] = e2[:, j, i] = by_bucket(ev * wx * x[:, j])
    return CoxTimeSums(by_bucket(ev), sx, by_bucket(ew), e1, e2, by_bucket(w), r1, r2)


class _SortedCoxRows:
    """Rows sorted by time once, so that every bucket is a contiguous segment."""

    def __init__(self, time: np.ndarray, event: np.ndarray, x: np.ndarray) -> None:
        order = np.argsort(time, kind="stable")
        t, ev = time[order], event[order]
        self.event_times = np.unique(t[ev == 1])
        bucket = np.searchsorted(self.event_times, t, side="right") - 1
        first = int(np.searchsorted(bucket, 0))        # rows before the first event time
        bucket = bucket[first:]
        self.xt = np.ascontiguousarray(x[order][first:].T)
        ev = ev[first:]
        self.starts = np.flatnonzero(np.r_[True, np.diff(bucket) != 0])
        self.events = np.flatnonzero(ev == 1)
        self.event_starts = np.flatnonzero(np.r_[True, np.diff(bucket[self.events]) != 0])
        self.d = np.diff(np.r_[self.event_starts, len(self.events)]).astype(float)
        self.sx = np.add.reduceat(self.xt[:, self.events], self.event_starts, axis=1).T \
            if len(self.events) else np.zeros((0, x.shape[1]))
        p = x.shape[1]
        self.pairs = [(i, j) for i in range(p) for j in range(i, p)]

    def sums(self, beta: np.ndarray) -> CoxTimeSums:
        """The bucket sums at ``beta``: one ``reduceat`` over all rows, one over events."""
        xt = self.xt
        p, n = xt.shape
        w = np.exp(np.clip(beta @ xt, -EXP_CLIP, EXP_CLIP))
        # one row per term (w, w x_i, w x_i x_j), each contiguous for reduceat
        m = np.empty((1 + p + len(self.pairs), n))
        m[0] = w
        np.multiply(w, xt, out=m[1:1 + p])
        for c, (i, j) in enumerate(self.pairs):
            np.multiply(m[1 + i], xt[j], out=m[1 + p + c])
        risk = np.add.reduceat(m, self.starts, axis=1).T
        ev = np.add.reduceat(m[:, self.events], self.event_starts, axis=1).T
        k = len(self.starts)

        def square(flat: np.ndarray) -> np.ndarray:
            out = np.zeros((k, p, p))
            for c, (i, j) in enumerate(self.pairs):
                out[:, i, j] = out[:, j, i] = flat[:, c]
            return out

        return CoxTimeSums(self.d, self.sx, ev[:, 0], ev[:, 1:1 + p], square(ev[:, 1 + p:]),
                           risk[:, 0], risk[:, 1:1 + p], square(risk[:, 1 + p:]))


def fit_cox(time: np.ndarray, event: np.ndarray, x: np.ndarray, ties: str = "efron",
            *, max_iter: int = 200) -> NewtonFit:
    """Cox proportional-hazards fit by Newton steps on the risk-set sums (all rows at hand).

    The covariates are centred first (the partial likelihood does not change; ``exp``
    stays in range), as R's ``coxph`` does, and the rows are sorted by time once, so each
    step's bucket sums are contiguous segment sums. Checked against ``survival::coxph``
    to 1e-10 (tests/reference/test_warehouse_reference.py).

    Parameters
    ----------
    time, event
        Follow-up times and 0/1 event indicators.
    x
        The ``(rows, p)`` design (no intercept).
    ties
        ``"efron"`` (R's default) or ``"breslow"``.
    max_iter
        Most Newton steps.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    x = np.asarray(x, dtype=float).reshape(len(time), -1)
    rows = _SortedCoxRows(time, event, x - x.mean(axis=0))
    return newton_maximise(lambda beta: cox_newton_terms(rows.sums(beta), beta, ties),
                           x.shape[1], max_iter=max_iter)
