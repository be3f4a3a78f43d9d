"""The tau² engine: vectorised statistics of fixed-, random- and mixed-effects meta-analysis.

Every function works on a *batch* of analyses at once: ``yi`` and ``vi`` are arrays of
shape ``(m, K)`` (``m`` analyses, at most ``K`` sites each) and ``mask`` is a boolean array
of the same shape, ``True`` where a site contributed. Rows may have different numbers of
sites ``k``. Masked cells never influence a result: they are replaced by harmless values
(``yi = 0``, ``vi = 1``) and receive a weight of exactly zero.

The model is ``y_i = x_i' beta + u_i + e_i``, ``u_i ~ N(0, tau2)``, ``e_i ~ N(0, v_i)``
with known ``v_i``. Without a design matrix it is the intercept-only random-effects model
of pooling (``x_i = 1``; closed forms with ``P = W - w w'/sum(w)``); with a design matrix
``X`` (shape ``(K, p)`` or ``(m, K, p)``) it is the mixed-effects meta-regression model,
with ``P = W - W X (X'WX)^-1 X'W`` never formed as a K x K matrix (every trace comes from
p x p identities). Both follow ``metafor::rma.uni`` (Viechtbauer 2010, J. Stat. Softw.
36(3)), so results reproduce R to the precision of the project's reference values.

This module is the project's ONE tau² engine: pooling (:mod:`.pooling`), meta-regression
(:mod:`.metareg`), and the leave-one-out, influence, cumulative and subgroup refits
(:mod:`.diagnostics`, :mod:`.heterogeneity`, :mod:`.subgroups`) all estimate tau² with
:func:`tau2_estimate`, so they cannot settle on different roots. The estimators are
reviewed by Veroniki et al. (2016), Res. Synth. Methods 7(1):55-79:

* DL   DerSimonian & Laird (1986), Control. Clin. Trials 7:177-188.
* HE   Hedges (1983), Psychol. Bull. 93:388-395 (unweighted method of moments).
* HS   Hunter & Schmidt (2004), Methods of Meta-Analysis, 2nd ed.
* SJ   Sidik & Jonkman (2005), J. Biopharm. Stat. 15:823-838.
* ML, REML  Viechtbauer (2005), J. Educ. Behav. Stat. 30:261-293 (Fisher scoring).
* EB   Morris (1983), J. Am. Stat. Assoc. 78:47-55 (empirical Bayes).
* PM   Paule & Mandel (1982), J. Res. Natl. Bur. Stand. 87:377-385.

Q-profile confidence intervals for tau² are those of Viechtbauer (2007), Stat. Med.
26:37-52; Knapp-Hartung inference is Knapp & Hartung (2003), Stat. Med. 22:2693-2710;
I² and H² follow Higgins & Thompson (2002), Stat. Med. 21:1539-1558, with metafor's
"typical" within-study variance.

The iterative parts are vectorised over analyses, never a Python loop over rows:
:func:`bracketed_root` (a safeguarded Newton / Illinois / bisection hybrid on arrays,
with per-row convergence masks) solves the ML and REML score equations, the
Paule-Mandel / empirical Bayes equation and the Q-profile bounds for all rows at once;
metafor's Fisher scoring is available as ``solver="fisher"`` (also vectorised, with the
bracketed solver as fallback for rows that do not converge). Without moderators, ML and
REML run a fused copy of the same iteration block by block, so that the (m, K) arrays
stay in cache (:func:`_ml_reml_intercept`; docs/decisions/reml-batch.md).

Scale: every root and optimum is found to a tolerance relative to the row's own scale
(its mean sampling variance), never to an absolute one, so multiplying ``yi`` and
``sqrt(vi)`` by any ``c > 0`` multiplies tau² by ``c²`` and leaves the other results
equivariant: measurements with variances of 1e-16 are pooled as accurately as log odds
ratios. The one absolute tolerance left is metafor's own Fisher-scoring ``threshold``,
used only when a caller asks for ``solver="fisher"`` to reproduce metafor's stopping rule.
Pure: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import special

from fedsynth.vocabulary import METHODS, RE_METHODS, TESTS

__all__ = [
    "METHODS",
    "RE_METHODS",
    "TESTS",
    "BatchInput",
    "Tau2Fit",
    "QProfile",
    "as_batch",
    "as_mask",
    "exclusive_sum",
    "fixed_weights",
    "re_weights",
    "weighted_mean",
    "wls",
    "q_statistic",
    "generalized_q",
    "trace_p",
    "typical_variance",
    "heterogeneity_indices",
    "tau2_estimate",
    "qprofile_tau2_ci",
    "log_likelihood",
    "bracketed_root",
    "critical_value",
    "two_sided_p",
    "norm_sf",
    "norm_isf",
    "t_sf",
    "t_isf",
    "chi2_sf",
    "chi2_isf",
    "chi2_ppf",
    "SOLVERS",
    "per_distinct",
]

# Fisher scoring (solver="fisher" only) stops when |Δtau²| < _THRESHOLD, an absolute
# threshold as metafor's control$threshold. metafor's default is 1e-5; the project's
# reference values were produced with 1e-12 and must be matched to 1e-6 relative.
_THRESHOLD = 1e-12
_MAX_ITER = 1000
_EPS = np.finfo(float).eps
#: Root tolerance relative to the row's scale (its mean sampling variance): the bracket
#: of a tau² root stops below _XTOL_REL x scale (plus 4 eps |tau²|), whatever the units.
_XTOL_REL = 1e-15


@dataclass(frozen=True)
class BatchInput:
    """A sanitised batch: masked cells hold ``yi = 0`` and ``vi = 1``.

    Attributes
    ----------
    yi, vi : ndarray, shape (m, K)
        Effect sizes and sampling variances.
    mask : ndarray of bool, shape (m, K)
        ``True`` where a site contributed.
    k : ndarray of int, shape (m,)
        Number of contributing sites per analysis.
    X : ndarray, shape (m, K, p), optional
        Design matrix of a meta-regression (zero rows outside the mask); ``None`` for the
        intercept-only model (``p = 1``).
    """

    yi: np.ndarray
    vi: np.ndarray
    mask: np.ndarray
    k: np.ndarray
    X: np.ndarray | None = None

    @property
    def p(self) -> int:
        """Number of model coefficients (1 without a design matrix)."""
        return 1 if self.X is None else int(self.X.shape[2])

    @cached_property
    def vw(self) -> np.ndarray:
        """``vi`` with +inf outside the mask.

        ``vi`` with +inf outside the mask, so ``1 / (vw + tau2)`` is a weight of exactly
        zero there without a mask operation in the hot loops.
        """
        return np.where(self.mask, self.vi, np.inf)

    def take(self, rows: Any) -> BatchInput:
        """The analyses ``rows`` (indices) as a batch of their own.

        The analyses ``rows`` (indices) as a batch of their own, sharing the cached
        ``vw``; the batch itself when ``rows`` are all of its rows in order.
        """
        idx = np.asarray(rows)
        if idx.dtype != bool and idx.size == self.yi.shape[0] and (
                idx.size == 0 or (idx[0] == 0 and np.all(np.diff(idx) == 1))):
            return self
        out = BatchInput(self.yi[rows], self.vi[rows], self.mask[rows], self.k[rows],
                         None if self.X is None else self.X[rows])
        if "vw" in self.__dict__:
            out.__dict__["vw"] = self.__dict__["vw"][rows]
        return out


def as_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean (analyses, sites) mask.

    A boolean (analyses, sites) mask: all present when ``mask`` is None, a 1-D mask
    promoted to one analysis. The shape is not checked here (see ``pooling.pool``).
    """
    if mask is None:
        return np.ones(shape, dtype=bool)
    msk = np.array(mask, dtype=bool, ndmin=1)
    return msk[None, :] if msk.ndim == 1 else msk


def as_batch(yi, vi, mask=None, X=None) -> BatchInput:
    """Promote effect sizes, variances, a mask and a design matrix to a sanitised batch.

    Promote ``yi``, ``vi`` (1-D or 2-D), an optional mask and an optional design matrix
    ``X`` (``(K, p)`` shared by every analysis, or ``(m, K, p)``) to a sanitised batch.

    No validation of values is done here (see :func:`fedsynth.meta.pooling.pool` and
    :func:`fedsynth.meta.metareg.fit_rma` for the user-facing checks); cells outside the
    mask are overwritten so that NaN placeholders for missing sites are allowed.
    """
    if isinstance(yi, BatchInput):
        return yi
    y = np.array(yi, dtype=float, ndmin=1, copy=True)
    v = np.array(vi, dtype=float, ndmin=1, copy=True)
    if y.ndim == 1:
        y = y[None, :]
    if v.ndim == 1:
        v = v[None, :]
    msk = as_mask(mask, y.shape)
    y[~msk] = 0.0
    v[~msk] = 1.0
    design = None
    if X is not None:
        design = np.array(X, dtype=float, copy=True)
        if design.ndim == 2:
            design = np.broadcast_to(design, (y.shape[0],) + design.shape).copy()
        design[~msk] = 0.0
    return BatchInput(y, v, msk, msk.sum(axis=1), design)


def _rsum(a: np.ndarray) -> np.ndarray:
    """Row sums through BLAS (``a @ 1``).

    Row sums through BLAS (``a @ 1``): much faster than ``a.sum(axis=1)`` for the
    short rows of a batch (a few dozen sites).
    """
    return a @ np.ones(a.shape[1])


def _rdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(a * b)``."""
    return np.einsum("ij,ij->i", a, b)


def _weights(vw: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    w = vw + tau2[:, None]
    np.reciprocal(w, out=w)
    return w


def _xtol(b: BatchInput) -> np.ndarray:
    """Per-row root tolerance proportional to the row's mean sampling variance.

    Per-row root tolerance proportional to the row's mean sampling variance: tau² has
    the units of ``vi``, so a root found to this tolerance is found to the same relative
    accuracy whatever the units of the effect sizes.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = _rsum(np.where(b.mask, b.vi, 0.0)) / np.maximum(b.k, 1)
    return _XTOL_REL * np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def exclusive_sum(x: np.ndarray) -> np.ndarray:
    """``out[..., i] = sum_{j != i} x[..., j]`` computed without cancellation.

    ``x.sum() - x[i]`` loses every significant digit when ``x[i]`` dominates the sum
    (weights of sites whose variances differ by 1e12); the sum of a prefix and a suffix
    of non-negative terms does not.
    """
    prefix = np.cumsum(x, axis=-1)
    suffix = np.cumsum(x[..., ::-1], axis=-1)[..., ::-1]
    out = np.zeros_like(x)
    out[..., 1:] += prefix[..., :-1]
    out[..., :-1] += suffix[..., 1:]
    return out


def fixed_weights(b: BatchInput) -> np.ndarray:
    """Inverse-variance weights ``1 / vi`` (zero outside the mask)."""
    return 1.0 / b.vw


def re_weights(b: BatchInput, tau2) -> np.ndarray:
    """Random-effects weights ``1 / (vi + tau2)`` (zero outside the mask)."""
    t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (b.yi.shape[0],))
    return _weights(b.vw, t)


def weighted_mean(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(w y) / sum(w)``."""
    return _rdot(w, y) / _rsum(w)


# ---------------------------------------------------------------------------------------
# design matrices: weighted least squares and traces without K x K matrices
# ---------------------------------------------------------------------------------------

def _xgx(X: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``X' diag(g) X`` per row: (m, K, p), (m, K) -> (m, p, p)."""
    return np.matmul((X * g[:, :, None]).transpose(0, 2, 1), X)


def _tr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``tr(a b)`` per row of two (m, p, p) stacks."""
    return np.einsum("mpq,mqp->m", a, b)


def wls(X: np.ndarray, w: np.ndarray, y: np.ndarray
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of every row.

    Weighted least squares of every row: ``A = (X'WX)^-1``, ``beta = A X'Wy`` and the
    residuals ``y - X beta`` (shapes (m, p, p), (m, p), (m, K)).
    """
    A = np.linalg.inv(_xgx(X, w))
    beta = np.einsum("mpq,mq->mp", A, np.einsum("mkp,mk->mp", X, w * y))
    return A, beta, y - np.einsum("mkp,mp->mk", X, beta)


def _residuals(y: np.ndarray, w: np.ndarray, X: np.ndarray | None) -> np.ndarray:
    """``y - X beta(w)`` (the weighted mean for the intercept-only model)."""
    if X is None:
        return y - (_rdot(w, y) / _rsum(w))[:, None]
    return wls(X, w, y)[2]


#: Above this share of the total weight held by one site, ``S - w_i`` is computed by
#: exclusive sums instead of a subtraction (which would lose digits).
_DOMINANCE = 0.5


def _dominated(w: np.ndarray) -> np.ndarray:
    """Rows where one weight holds more than ``_DOMINANCE`` of the total."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return ~(w.max(axis=1) <= _DOMINANCE * _rsum(w))


def trace_p(w: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
    """``tr(P)`` of ``P = W - W X (X'WX)^-1 X'W``.

    Intercept only: ``sum w_i (S - w_i) / S``; ``S - sum(w^2)/S`` is exact enough unless
    one weight dominates, where prefix/suffix sums of the other weights are used instead.
    With a design matrix: ``sum(w) - tr(A X'W²X)``, ``A = (X'WX)^-1``.
    """
    if X is not None:
        A = np.linalg.inv(_xgx(X, w))
        return _rsum(w) - _tr(A, _xgx(X, w * w))
    s = _rsum(w)
    out = s - _rdot(w, w) / s
    rows = np.flatnonzero(_dominated(w))
    if rows.size:
        wr = w[rows]
        out[rows] = _rdot(wr, exclusive_sum(wr)) / _rsum(wr)
    return out


def _sum_p2(w: np.ndarray, a=None, b=None, X: np.ndarray | None = None) -> np.ndarray:
    """``sum_ij P_ij^2 a_i b_j = tr(P diag(a) P diag(b))`` without cancellation.

    With ``a = b = 1`` this is ``sum(P * P) = tr(P P)``; with ``a = b = vi`` it is
    ``sum(PV * t(PV))`` and with ``a = 1, b = vi`` it is ``sum(PV * P)`` (metafor's
    se(tau²) formulas). Intercept only: ``P_ii = w_i (S - w_i) / S`` and
    ``P_ij = -w_i w_j / S``. With a design matrix:
    ``sum w² a b - 2 tr(A X'W³ab X) + tr(A X'W²aX A X'W²bX)``.
    """
    a = np.ones_like(w) if a is None else a
    b = np.ones_like(w) if b is None else b
    w2 = w * w
    if X is not None:
        A = np.linalg.inv(_xgx(X, w))
        Ma, Mb = A @ _xgx(X, w2 * a), A @ _xgx(X, w2 * b)
        return _rdot(w2 * a, b) - 2.0 * _tr(A, _xgx(X, w2 * w * a * b)) + _tr(Ma, Mb)
    s = _rsum(w)
    # fast form: sum w^2 a b - 2 sum w^3 a b / S + (sum w^2 a)(sum w^2 b) / S^2
    wab = w2 * a * b
    out = _rsum(wab) - 2 * _rdot(wab, w) / s + _rdot(w2, a) * _rdot(w2, b) / s**2
    rows = np.flatnonzero(_dominated(w))
    if rows.size:  # exact form for rows where one weight dominates
        wr, ar, br = w[rows], a[rows], b[rows]
        sr = _rsum(wr)[:, None]
        pii = wr * exclusive_sum(wr) / sr
        wr2 = wr * wr
        off = _rdot(wr2 * ar, exclusive_sum(wr2 * br)) / (sr[:, 0] ** 2)
        out[rows] = _rdot(pii * pii, ar * br) + off
    return out


def _fixed_effect_sums(y: np.ndarray, w: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q, ``tr(P)``, ``sum(w)`` and ``tr(PP)`` of intercept-only rows with weights ``w``.

    The same operations as ``_q_and_slope(y, vw, 0)``, :func:`trace_p` and
    :func:`_sum_p2` (so the same numbers, bit for bit), with each row sum computed once:
    the DL and HS estimators of a 200,000-analysis batch spent a third of their time
    recomputing ``sum(w)``, the dominance test and arrays of ones (issue 17).
    """
    sw = _rsum(w)
    r = y - (_rdot(w, y) / sw)[:, None]
    q = _rdot(w * r, r)
    trp = sw - _rdot(w, w) / sw
    w2 = w * w
    d = _rdot(w2, np.ones_like(w))
    pp = _rsum(w2) - 2 * _rdot(w2, w) / sw + d * d / sw**2
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = np.flatnonzero(~(w.max(axis=1) <= _DOMINANCE * sw))
    if rows.size:  # the exact forms where one weight dominates
        trp[rows] = trace_p(w[rows])
        pp[rows] = _sum_p2(w[rows])
    return q, trp, sw, pp


def q_statistic(b: BatchInput) -> np.ndarray:
    """Cochran's Q (``QE`` with a design matrix).

    Cochran's Q (``QE`` with a design matrix): ``sum w_i (y_i - x_i' beta_FE)^2`` with
    ``w = 1 / vi`` (Cochran 1954).
    """
    return generalized_q(b, np.zeros(b.yi.shape[0]))


def generalized_q(b: BatchInput, tau2, *, rows=None) -> np.ndarray:
    """Generalised Q, ``y'P(tau2)y = sum w_i (y_i - x_i' beta(tau2))^2``, ``w = 1/(vi+tau2)``.

    Decreasing in tau²; it is the pivot of the Paule-Mandel estimator and of the Q-profile
    interval (Viechtbauer 2007). ``rows`` restricts the computation to a subset.
    """
    sub = b if rows is None else b.take(rows)
    t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (sub.yi.shape[0],))
    q, _ = _q_and_slope(sub.yi, sub.vw, t, sub.X)
    return np.maximum(q, 0.0)


def _q_and_slope(y, vw, tau2, X=None):
    """Generalised Q and its derivative in tau².

    Generalised Q and its derivative ``dQ/dtau2 = -y'PPy = -sum (w r)^2`` (beta drops
    out: the weighted residuals are orthogonal to X).
    """
    w = _weights(vw, tau2)
    r = _residuals(y, w, X)
    wr = w * r
    return _rdot(wr, r), -_rdot(wr, wr)


def typical_variance(b: BatchInput) -> np.ndarray:
    """The "typical" (metafor) within-study variance ``(k - p) / tr(P)`` with ``w = 1 / vi``.

    Equal to ``(k-1) sum(w) / (sum(w)^2 - sum(w^2))`` for pooling (Higgins & Thompson
    2002); I² and H² are defined through it, so that ``I2 = (Q - df) / Q`` for DL.
    """
    w = fixed_weights(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b.k - b.p) / trace_p(w, b.X)


def heterogeneity_indices(tau2, vt) -> tuple[np.ndarray, np.ndarray]:
    """``I2 = 100 tau2 / (vt + tau2)`` and ``H2 = tau2 / vt + 1`` (metafor's convention)."""
    t = np.asarray(tau2, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * t / (vt + t), t / vt + 1.0


# Distribution functions straight from scipy.special (what scipy.stats calls underneath):
# importing scipy.stats costs more than the whole command line's computation.

def norm_sf(x):
    """Upper tail of the standard normal."""
    return special.ndtr(-np.asarray(x, dtype=float))


def norm_isf(p):
    """Inverse upper tail of the standard normal."""
    return -special.ndtri(np.asarray(p, dtype=float))


def t_sf(x, df):
    """Upper tail of Student's t with ``df`` degrees of freedom."""
    return special.stdtr(df, -np.asarray(x, dtype=float))


def t_isf(p, df):
    """Inverse upper tail of Student's t."""
    return -special.stdtrit(df, p)


def chi2_sf(x, df):
    """Upper tail of the chi-square distribution."""
    return special.chdtrc(df, x)


def chi2_isf(p, df):
    """Inverse upper tail of the chi-square distribution."""
    return special.chdtri(df, p)


def norm_ppf(p):
    """Inverse lower tail of the standard normal (``scipy.stats.norm.ppf``)."""
    return special.ndtri(np.asarray(p, dtype=float))


def t_ppf(p, df):
    """Inverse lower tail of Student's t (``scipy.stats.t.ppf``)."""
    return special.stdtrit(df, p)


def chi2_cdf(x, df):
    """Lower tail of the chi-square distribution (``scipy.stats.chi2.cdf``)."""
    return special.chdtr(df, x)


def chi2_ppf(p, df):
    """Inverse lower tail of the chi-square distribution (accurate for small ``p``)."""
    return 2.0 * special.gammaincinv(np.asarray(df, dtype=float) / 2.0, p)


def per_distinct(fn: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """``fn(values)`` evaluated once per distinct value.

    ``fn(values)`` evaluated once per distinct value (quantiles that depend on k only:
    a batch of 20,000 analyses has a handful of distinct k).
    """
    uniq, inverse = np.unique(values, return_inverse=True)
    return np.asarray(fn(uniq))[inverse.reshape(np.shape(values))]


def critical_value(level_alpha: float, df, test: str):
    """Two-sided critical value: normal for ``z``, t with ``df`` for ``knha``."""
    if test == "knha":
        with np.errstate(invalid="ignore"):
            return t_isf(level_alpha / 2, df)
    return norm_isf(level_alpha / 2) + np.zeros(np.shape(df))


def two_sided_p(stat, df, test: str):
    """Two-sided p-value of a z or t statistic."""
    a = np.abs(np.asarray(stat, dtype=float))
    if test == "knha":
        with np.errstate(invalid="ignore"):
            return 2.0 * t_sf(a, df)
    return 2.0 * norm_sf(a)


# ---------------------------------------------------------------------------------------
# Vectorised root finding
# ---------------------------------------------------------------------------------------

def bracketed_root(
    f: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    lo: np.ndarray,
    hi: np.ndarray,
    f_lo: np.ndarray,
    f_hi: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    newton_rtol: float = 0.0,
    xtol: float | np.ndarray = 0.0,
    rtol: float = 4 * _EPS,
    maxiter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Roots of many scalar equations at once, each bracketed by ``[lo, hi]``.

    ``f(x, rows)`` evaluates the equations of the analyses ``rows`` at ``x`` and returns
    ``(value, derivative)``; the derivative may be ``None``. ``f_lo`` and ``f_hi`` must
    have opposite signs (or be zero). Each iteration tries a Newton step (when a
    derivative is given) or an Illinois-modified regula falsi step (Dowell & Jarratt 1971,
    BIT 11:168-174), and falls back to bisection whenever the candidate leaves the bracket
    or the bracket failed to halve, so convergence is guaranteed (as in Numerical
    Recipes' ``rtsafe``). Rows stop individually once the bracket is narrower than
    ``xtol + rtol |x|``, a Newton correction is below that tolerance, or ``f`` is exactly
    zero. ``xtol`` may be an array (one per row): callers pass a tolerance proportional
    to each row's own scale (see :func:`_xtol`), so that no root depends on the units of
    the data. ``x0`` is an optional first guess inside the bracket (default: the midpoint).
    ``newton_rtol`` lets a row stop after a Newton correction smaller than
    ``newton_rtol |x|`` (quadratic convergence makes the error after it negligible; use
    only where the derivative is exact).

    Returns
    -------
    root : ndarray
    converged : ndarray of bool
    """
    lo = np.array(lo, dtype=float)
    hi = np.array(hi, dtype=float)
    f_lo = np.array(f_lo, dtype=float)
    f_hi = np.array(f_hi, dtype=float)
    n = lo.size
    xtol_rows = np.broadcast_to(np.asarray(xtol, dtype=float), (n,))
    root = np.where(f_lo == 0, lo, np.where(f_hi == 0, hi, 0.5 * (lo + hi)))
    done = (f_lo == 0) | (f_hi == 0)
    conv = done.copy()
    # Illinois bookkeeping: which end was retained last time (+1 lo, -1 hi, 0 none).
    side = np.zeros(n, dtype=np.int8)
    width_prev = np.abs(hi - lo)
    x = root.copy()
    if x0 is not None:
        guess = np.asarray(x0, dtype=float)
        ok = np.isfinite(guess) & (guess >= np.minimum(lo, hi)) & (guess <= np.maximum(lo, hi))
        x = np.where(ok & ~done, guess, x)
    active = np.flatnonzero(~done)
    for _ in range(maxiter):
        if active.size == 0:
            break
        xa = x[active]
        fx, dfx = f(xa, active)
        # update the bracket keeping opposite signs at the ends
        same_lo = np.sign(fx) == np.sign(f_lo[active])
        zero = fx == 0
        lo_a, hi_a = lo[active], hi[active]
        flo_a, fhi_a = f_lo[active], f_hi[active]
        s_a = side[active]
        # Illinois: halve the function value at the end that is retained twice in a row
        new_lo = np.where(same_lo, xa, lo_a)
        new_hi = np.where(same_lo, hi_a, xa)
        new_flo = np.where(same_lo, fx, flo_a)
        new_fhi = np.where(same_lo, fhi_a, fx)
        keep_hi_twice = same_lo & (s_a == -1)
        keep_lo_twice = ~same_lo & (s_a == 1)
        new_fhi = np.where(keep_hi_twice, 0.5 * new_fhi, new_fhi)
        new_flo = np.where(keep_lo_twice, 0.5 * new_flo, new_flo)
        side[active] = np.where(same_lo, -1, 1)
        lo[active], hi[active] = new_lo, new_hi
        f_lo[active], f_hi[active] = new_flo, new_fhi
        width = np.abs(new_hi - new_lo)
        tol = xtol_rows[active] + rtol * np.abs(xa)
        finished = zero | (width <= tol)
        root[active] = xa
        if dfx is not None:
            # rtsafe's test: a Newton correction below tolerance means xa is the root
            with np.errstate(divide="ignore", invalid="ignore"):
                step = fx / dfx
            # Newton converges quadratically: after a correction below newton_rtol |x|
            # the remaining error is far below tol
            small = np.abs(step) <= np.maximum(tol, newton_rtol * np.abs(xa))
            tiny = np.isfinite(step) & small & ~finished
            root[active[tiny]] = xa[tiny] - step[tiny]
            finished = finished | tiny
        conv[active[finished]] = True
        # next candidate
        with np.errstate(divide="ignore", invalid="ignore"):
            if dfx is not None:
                cand = xa - fx / dfx
            else:
                cand = new_lo - new_flo * (new_hi - new_lo) / (new_fhi - new_flo)
        mid = 0.5 * (new_lo + new_hi)
        inside = np.isfinite(cand) & (cand > np.minimum(new_lo, new_hi)) & (
            cand < np.maximum(new_lo, new_hi))
        # Illinois steps must at least halve the bracket every iteration; Newton steps
        # are only rejected when they leave the bracket (as in rtsafe)
        slow = (width > 0.5 * width_prev[active]) if dfx is None else np.zeros(xa.size, bool)
        cand = np.where(inside & ~slow, cand, mid)
        width_prev[active] = width
        x[active] = cand
        active = active[~finished]
    return root, conv


# ---------------------------------------------------------------------------------------
# tau² estimators
# ---------------------------------------------------------------------------------------

#: Solvers of the ML / REML / EB estimating equations.
SOLVERS = ("newton", "fisher")


@dataclass(frozen=True)
class Tau2Fit:
    """Estimated between-site variance of a batch.

    Attributes
    ----------
    tau2 : ndarray, shape (m,)
        Estimate, truncated at zero (0 for ``FE`` and for rows with ``k <= p``).
    se_tau2 : ndarray, shape (m,)
        Standard error as metafor reports it (NaN for ``FE`` and ``k <= p``).
    converged : ndarray of bool, shape (m,)
    iterations : ndarray of int, shape (m,)
        Fisher-scoring iterations (0 for closed-form estimators and the Newton solver).
    """

    tau2: np.ndarray
    se_tau2: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def _centered(b: BatchInput) -> BatchInput:
    """The batch with ``yi`` minus its unweighted row mean.

    The batch with ``yi`` minus its unweighted row mean (metafor centres ``yi`` before
    estimating tau², with or without moderators, for numerical stability).
    """
    mean = _rsum(b.yi) / np.maximum(b.k, 1)
    y = np.where(b.mask, b.yi - mean[:, None], 0.0)
    out = BatchInput(y, b.vi, b.mask, b.k, b.X)
    out.__dict__["vw"] = b.vw  # share the cached +inf-padded variances
    return out


def _he(b: BatchInput):
    """Hedges' unweighted method of moments (untruncated); also the start of ML/REML/EB.

    ``(RSS_OLS - tr(P_OLS V)) / (k - p)`` with the ordinary least-squares projection
    ``P_OLS = I - X (X'X)^-1 X'`` (``I - J/k`` without moderators). Returns the estimate
    and the pieces of its standard error: ``v`` (zero off the mask), ``tr(P V)``,
    ``sum(PV * t(PV))``.
    """
    k = b.k.astype(float)
    p = b.p
    v = np.where(b.mask, b.vi, 0.0)
    if b.X is None:
        dev = np.where(b.mask, b.yi - (_rsum(b.yi) / k)[:, None], 0.0)
        rss = _rdot(dev, dev)
        sv = _rsum(v)
        tr_pv = sv * (k - 1) / k
        # sum(PV * t(PV)) with P = I - J/k: sum v^2 (1 - 2/k) + (sum v)^2 / k^2
        s_pv = _rdot(v, v) * (1 - 2 / k) + sv**2 / k**2
    else:
        one = b.mask.astype(float)
        A, _, r = wls(b.X, one, b.yi)
        r = np.where(b.mask, r, 0.0)
        rss = _rdot(r, r)
        hat = np.einsum("mkp,mpq,mkq->mk", b.X, A, b.X)
        tr_pv = _rdot(v, 1.0 - hat)
        s_pv = _sum_p2(one, v, v, b.X)
    return (rss - tr_pv) / (k - p), v, tr_pv, s_pv


def tau2_estimate(yi, vi=None, mask=None, method: str = "REML", *, X=None,
                  solver: str = "newton", threshold: float = _THRESHOLD,
                  max_iter: int = _MAX_ITER) -> Tau2Fit:
    """Estimate tau² for every analysis of a batch with one method.

    Parameters
    ----------
    yi, vi : array_like, shape (m, K) or (K,)
        Or a :class:`BatchInput` as ``yi`` (then ``vi``, ``mask`` and ``X`` are ignored).
    mask : array_like of bool, optional
    method : {"FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM"}
    X : array_like, shape (K, p) or (m, K, p), optional
        Design matrix of a meta-regression (with its intercept column); residual tau² of
        the mixed-effects model, as ``rma(yi, vi, mods = ...)``. Default: intercept only.
    solver : {"newton", "fisher"}
        How ML and REML are maximised (the root is the same): ``newton`` solves the score
        equation with safeguarded Newton steps inside a bracket (quadratic convergence,
        the default; tolerance relative to the row's scale); ``fisher`` is rma.uni's
        Fisher scoring from the HE estimate with step halving at zero, stopped at
        ``|Δtau2| <= threshold`` (metafor's absolute stopping rule), with rows still
        unconverged after ``max_iter`` steps handed to the bracketed solver.
    threshold, max_iter
        Fisher-scoring controls.

    Notes
    -----
    Closed forms (metafor's, with ``P = W - W X (X'WX)^-1 X'W`` and p coefficients):

    * DL ``(Q - (k-p)) / tr(P)`` with ``w = 1/v``;
    * HS ``(Q - k) / sum(w)``;
    * HE ``(RSS_OLS - tr(P_OLS V)) / (k - p)``;
    * SJ ``tau0 Q(tau0) / (k - p)`` with ``tau0 = mean((y - ybar)^2)``.

    ML and REML set the score to zero: ``y'PPy - sum(w)`` (ML) and ``y'PPy - tr(P)``
    (REML), whose derivatives are ``-2 y'PPPy + sum(w^2)`` and ``-2 y'PPPy + tr(PP)``;
    tau² = 0 when the score is not positive at zero. As in rma.uni, a stationary point
    whose likelihood is below the one at zero is replaced by zero. EB (Morris 1983) and PM
    both solve ``Q(tau2) = k - p`` (EB's Fisher-scoring step is
    ``(Q k/(k-p) - k)/sum(w)``), zero when ``Q(0) < k - p``; the root is found on ``1/Q``,
    which is nearly linear.
    """
    method = str(method).upper()
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver: {solver!r} is not one of {', '.join(SOLVERS)}")
    b = as_batch(yi, vi, mask, X)
    m = b.yi.shape[0]
    k = b.k.astype(float)
    p = b.p
    nan = np.full(m, np.nan)
    iters = np.zeros(m, dtype=int)
    ok = np.ones(m, dtype=bool)
    if method == "FE":
        return Tau2Fit(np.zeros(m), nan, ok, iters)
    multi = b.k > p
    if not multi.all():
        # rows without residual degrees of freedom: tau² = 0 (as rma with k = p)
        fit = np.flatnonzero(multi)
        tau2, se, ok, iters = np.zeros(m), nan.copy(), ok, iters
        if fit.size:
            sub = tau2_estimate(b.take(fit), method=method, solver=solver,
                                threshold=threshold, max_iter=max_iter)
            tau2[fit], se[fit], ok[fit], iters[fit] = (sub.tau2, sub.se_tau2, sub.converged,
                                                       sub.iterations)
        return Tau2Fit(tau2, se, ok, iters)
    c = _centered(b)
    Xc = c.X
    with np.errstate(invalid="ignore", divide="ignore"):
        if method in ("DL", "HS"):
            w = fixed_weights(c)
            if Xc is None:
                q, trp, sw, pp = _fixed_effect_sums(c.yi, w)
            else:
                q, _ = _q_and_slope(c.yi, c.vw, np.zeros(m), Xc)
                trp = trace_p(w, Xc)
                sw = _rsum(w)
                pp = _sum_p2(w, X=Xc)
            if method == "DL":
                tau2 = np.maximum((q - (k - p)) / trp, 0.0)
                norm = trp
            else:
                tau2 = np.maximum((q - k) / sw, 0.0)
                norm = sw
            se = np.sqrt((2 * (k - p) + 4 * tau2 * trp + 2 * tau2**2 * pp) / norm**2)
        elif method == "HE":
            tau2, v, tr_pv, s_pv = _he(c)
            tau2 = np.maximum(tau2, 0.0)
            se = np.sqrt((2 * s_pv + 4 * tau2 * tr_pv + 2 * tau2**2 * (k - p)) / (k - p) ** 2)
        elif method == "SJ":
            # tau0: the unweighted total variance var(y) (k-1)/k, whatever the moderators
            # (deviations from the centred data's own mean: a second centring removes the
            # rounding of the first, so identical effect sizes give exactly 0)
            dev = np.where(c.mask, c.yi - (_rsum(c.yi) / k)[:, None], 0.0)
            tau0 = _rdot(dev, dev) / k
            v = np.where(c.mask, c.vi, 0.0)
            w = re_weights(c, tau0)
            q, _ = _q_and_slope(c.yi, c.vw, tau0, Xc)
            tau2 = np.maximum(tau0 * q / (k - p), 0.0)
            one = b.mask.astype(float)
            s_pvpv = _sum_p2(w, v, v, Xc)
            s_pvp = _sum_p2(w, one, v, Xc)
            s_pp = _sum_p2(w, X=Xc)
            se = np.sqrt(tau0**2 / (k - p) ** 2
                         * (2 * s_pvpv + 4 * tau2 * s_pvp + 2 * tau2**2 * s_pp))
        elif method == "PM" or (method == "EB" and solver == "newton"):
            tau2, ok = _paule_mandel(c)
            se = np.sqrt(2 * k**2 / (k - p)) / _rsum(re_weights(c, tau2))
        elif Xc is None and solver == "newton" and method in ("ML", "REML"):
            # the intercept-only fast path of the same solver (issue 17)
            tau2, ok, se = _ml_reml_intercept(c, method)
        else:  # ML, REML (and EB with Fisher scoring)
            if solver == "newton":
                tau2, ok = _newton_score(c, method)
            else:
                tau2, ok, iters = _fisher_scoring(c, method, threshold, max_iter)
            if method in ("ML", "REML"):
                # metafor checks only tau² > threshold, an absolute rule kept with its
                # Fisher scoring; a log-likelihood difference has no units, so the
                # scale-free solver checks every positive tau²
                tau2 = _ll0_check(c, tau2, ok, method,
                                  threshold if solver == "fisher" else 0.0)
            w = re_weights(c, tau2)
            if method == "ML":
                se = np.sqrt(2 / _rdot(w, w))
            elif method == "REML":
                se = np.sqrt(2 / _sum_p2(w, X=Xc))
            else:
                se = np.sqrt(2 * k**2 / (k - p)) / _rsum(w)
    return Tau2Fit(tau2, se, ok, iters)


def _upper_bracket(b: BatchInput, target: np.ndarray) -> np.ndarray:
    """A tau² where the generalised Q has certainly fallen below ``target``.

    ``Q(tau2) <= sum r_OLS^2 / (v + tau2) <= SS / tau2`` (``r_OLS`` the ordinary
    least-squares residuals, ``SS`` their sum of squares) because the weighted fit
    minimises the weighted sum of squares.
    """
    if b.X is None:
        kk = np.maximum(b.k, 1)
        dev = np.where(b.mask, b.yi - (_rsum(b.yi) / kk)[:, None], 0.0)
    else:
        dev = np.where(b.mask, wls(b.X, b.mask.astype(float), b.yi)[2], 0.0)
    ss = _rdot(dev, dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = 2.0 * ss / target
    # ss = 0 only when Q is 0 everywhere: no root is then sought
    return np.where(np.isfinite(hi) & (hi > 0), hi, 1.0) + 1e-300


def _solve_q_equals(b: BatchInput, rows: np.ndarray, target: np.ndarray,
                    q0: np.ndarray | None = None,
                    dq0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tau² solving ``Q(tau2) = target`` for ``rows`` whose ``Q(0) > target``.

    Solved as ``1/Q(tau2) - 1/target = 0``: for large tau² ``Q`` behaves like
    ``A / (tau2 + c)``, so its reciprocal is nearly linear and Newton's method from
    ``tau2 = 0`` converges in a handful of steps (the bracket keeps it safe). ``q0`` and
    ``dq0`` (Q and its slope at 0 for these rows) save an evaluation when the caller has
    them. The upper end needs no evaluation: ``Q(hi) <= target / 2`` by construction.
    """
    if rows.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    sub = b.take(rows)
    yy, vw, XX = sub.yi, sub.vw, sub.X
    hi = _upper_bracket(sub, target)
    if q0 is None or dq0 is None:
        q0, dq0 = _q_and_slope(yy, vw, np.zeros(rows.size), XX)
    inv_t = 1.0 / target

    def f(x, idx):
        q, dq = _q_and_slope(yy[idx], vw[idx], x, None if XX is None else XX[idx])
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 / q - inv_t[idx], -dq / (q * q)

    with np.errstate(divide="ignore", invalid="ignore"):
        f0 = 1.0 / q0 - inv_t
        x0 = np.clip(-f0 * q0 * q0 / -dq0, 0.0, hi)  # the first Newton step from 0
        return bracketed_root(f, np.zeros(rows.size), hi, f0, np.ones(rows.size),
                              x0=np.where(np.isfinite(x0), x0, 0.0), newton_rtol=1e-9,
                              xtol=_xtol(sub))


def _paule_mandel(b: BatchInput) -> tuple[np.ndarray, np.ndarray]:
    """Root of ``Q(tau2) = k - p`` (0 where ``Q(0) <= k - p``); b must be centred."""
    m = b.yi.shape[0]
    df = (b.k - b.p).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0, dq0 = _q_and_slope(b.yi, b.vw, np.zeros(m), b.X)
    tau2 = np.zeros(m)
    ok = np.ones(m, dtype=bool)
    rows = np.flatnonzero((df >= 1) & (q0 > df))
    root, conv = _solve_q_equals(b, rows, df[rows], q0[rows], dq0[rows])
    tau2[rows] = root
    ok[rows] = conv
    return tau2, ok


def _score(y, vw, tau2, method, *, slope: bool, X=None):
    """Score of ML / REML (times 2) at ``tau2`` and its derivative or Fisher information.

    With ``u = P y = w (y - X beta)``: ``y'PPy = sum u^2`` and ``y'PPPy = sum w u^2 -
    (X'Wu)' (X'WX)^-1 (X'Wu)`` (``(sum w u)^2 / sum w`` without moderators). Returns
    ``(score, d score / d tau2)`` when ``slope`` and ``(score, expected information)``
    otherwise (the Fisher-scoring step is their ratio). For EB the "score" is Morris's
    equation ``Q k/(k-p) - k`` with information ``sum(w)`` (only used by Fisher scoring).
    """
    w = _weights(vw, tau2)
    sw = _rsum(w)
    A: np.ndarray = np.empty((0, 0, 0))   # (X'WX)^-1, with a design matrix only
    if X is None:
        r = y - (_rdot(w, y) / sw)[:, None]
    else:
        A, _, r = wls(X, w, y)
    u = w * r
    uu = _rdot(u, u)
    if method == "EB":
        k = np.isfinite(vw).sum(axis=1)
        p = 1 if X is None else X.shape[2]
        return _rdot(u, r) * k / (k - p) - k, sw
    w2 = w * w
    sw2 = _rsum(w2)
    if method == "ML":
        num, info = uu - sw, sw2
    elif X is None:
        sw3 = _rdot(w2, w)
        num = uu - (sw - sw2 / sw)                       # y'PPy - tr(P)
        info = sw2 - 2 * sw3 / sw + (sw2 / sw) ** 2      # tr(PP)
    else:
        B2 = A @ _xgx(X, w2)
        num = uu - (sw - np.trace(B2, axis1=1, axis2=2))
        info = sw2 - 2 * _tr(A, _xgx(X, w2 * w)) + _tr(B2, B2)
    if not slope:
        return num, info
    if X is None:
        wu = _rdot(w, u)
        upu = _rdot(w * u, u) - wu * wu / sw                  # y'PPPy
    else:
        xwu = np.einsum("mkp,mk->mp", X, w * u)
        upu = _rdot(w * u, u) - np.einsum("mp,mpq,mq->m", xwu, A, xwu)
    return num, info - 2 * upu


def _newton_score(b: BatchInput, method: str, *,
                  probe: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised safeguarded Newton on the ML / REML score.

    Rows whose score at 0 is positive have a maximum in ``(0, hi)``. A non-positive score
    at 0 usually means tau² = 0, but the likelihood can still have an interior maximum
    beyond a local minimum (rma.uni's Fisher scoring from the HE estimate finds it). With
    ``probe``, rows with a positive HE estimate are therefore probed at ``HE``,
    ``HE/2``, ``HE/4``, ... (13 points); the first point with a positive score brackets a
    maximum with the previous one (or with ``hi`` above HE). The caller's ``ll0`` check
    keeps whichever of that maximum and 0 has the larger likelihood.
    """
    m = b.yi.shape[0]
    tau2 = np.zeros(m)
    ok = np.ones(m, dtype=bool)
    rows = np.flatnonzero(b.k > b.p)
    if rows.size == 0:
        return tau2, ok
    n = rows.size
    br = b.take(rows)
    yy, vw, XX = br.yi, br.vw, br.X

    def sub_x(idx):
        return None if XX is None else XX[idx]

    with np.errstate(divide="ignore", invalid="ignore"):
        s0, _ = _score(yy, vw, np.zeros(n), method, slope=False, X=XX)
        he0 = _he(br)[0]
    he0 = np.where(np.isfinite(he0), he0, 0.0)
    lo, s_lo = np.zeros(n), s0.copy()
    hi, s_hi = np.full(n, np.nan), np.full(n, np.nan)
    active = s0 > 0
    if probe:
        look = np.flatnonzero(~active & (he0 > 0))
        t = he0[look].copy()
        t_prev = np.full(look.size, np.nan)
        s_prev = np.full(look.size, np.nan)
        pending = np.arange(look.size)
        for _ in range(13):
            if pending.size == 0:
                break
            idx = look[pending]
            with np.errstate(divide="ignore", invalid="ignore"):
                s_t, _ = _score(yy[idx], vw[idx], t[pending], method, slope=False,
                                X=sub_x(idx))
            found = s_t > 0
            hit, miss = pending[found], pending[~found]
            lo[look[hit]], s_lo[look[hit]] = t[hit], s_t[found]
            hi[look[hit]], s_hi[look[hit]] = t_prev[hit], s_prev[hit]  # NaN at HE itself
            active[look[hit]] = True
            t_prev[miss], s_prev[miss] = t[miss], s_t[~found]
            t[miss] = t[miss] / 2
            pending = miss
    act = np.flatnonzero(active)
    if act.size == 0:
        return tau2, ok
    bracketed = np.ones(n, dtype=bool)
    need = act[np.isnan(hi[act])]
    if need.size:
        hi[need], s_hi[need], bracketed[need] = _score_bracket(br.take(need), method)
    x0 = np.clip(he0[act], lo[act], hi[act])
    # The score behaves like A/(v+tau2)^2 - B/(v+tau2): strongly convex, so plain Newton
    # creeps towards the root. (vt + tau2)^2 * score (vt: typical within-site variance)
    # has the same root and is linear in tau2 when the variances are equal, so Newton on
    # it converges in a few steps.
    # the active rows' arrays only (a full take() would also copy vi and the mask)
    ya, va = yy[act], vw[act]
    Xa = None if XX is None else XX[act]
    with np.errstate(divide="ignore", invalid="ignore"):
        vt = (br.k[act] - br.p) / trace_p(1.0 / va, Xa)

    def f(x, idx):
        s_, ds = _score(ya[idx], va[idx], x, method, slope=True,
                        X=None if Xa is None else Xa[idx])
        c = vt[idx] + x
        return s_ * c * c, (ds * c + 2 * s_) * c

    root, conv = bracketed_root(f, lo[act], hi[act], s_lo[act], s_hi[act], x0=x0,
                                newton_rtol=1e-9, xtol=_xtol(br)[act])
    tau2[rows[act]] = root
    ok[rows[act]] = conv & bracketed[act]
    return tau2, ok


def _score_bracket(b: BatchInput, method: str):
    """An upper end ``hi`` with a negative score (widened geometrically if needed)."""
    k = b.k.astype(float)
    vmax = np.where(b.mask, b.vi, 0.0).max(axis=1)
    hi = _upper_bracket(b, np.maximum(k - b.p, 1.0)) * k + 2 * vmax
    with np.errstate(divide="ignore", invalid="ignore"):
        s_hi, _ = _score(b.yi, b.vw, hi, method, slope=False, X=b.X)
        for _ in range(60):
            bad = ~(s_hi < 0)
            if not bad.any():
                break
            hi = np.where(bad, hi * 4, hi)
            s_hi[bad], _ = _score(b.yi[bad], b.vw[bad], hi[bad], method, slope=False,
                                  X=None if b.X is None else b.X[bad])
    return hi, s_hi, s_hi < 0


def _fisher_scoring(b: BatchInput, method: str, threshold: float, max_iter: int):
    """rma.uni's Fisher scoring, vectorised with a per-row convergence mask.

    Starts from the truncated HE estimate; a step that would make tau² negative is
    halved until it does not (so at tau² = 0 a negative step vanishes). Stops when
    ``|Δtau²| <= threshold``, metafor's absolute rule (this solver exists to reproduce
    metafor's answers, e.g. inside trim-and-fill; the default solver is scale-free).
    Rows still moving after ``max_iter`` steps are solved by bracketing instead.
    """
    m = b.yi.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        he = _he(b)[0]
    tau2 = np.where((b.k > b.p) & np.isfinite(he), np.maximum(he, 0.0), 0.0)
    iters = np.zeros(m, dtype=int)
    converged = b.k <= b.p
    active = np.flatnonzero(~converged)
    for _ in range(max_iter):
        if active.size == 0:
            break
        t = tau2[active]
        num, info = _score(b.yi[active], b.vw[active], t, method, slope=False,
                           X=None if b.X is None else b.X[active])
        adj = num / info
        adj = np.where(np.isfinite(adj), adj, 0.0)
        neg = t + adj < 0
        if neg.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                halvings = np.ceil(np.log2(-adj / t))
            halvings = np.where(np.isfinite(halvings), np.maximum(halvings, 0), 1100)
            scaled = np.ldexp(adj, -np.minimum(halvings, 1100).astype(int))
            # guard against rounding: halve once more where still below zero
            scaled = np.where(t + scaled < 0, scaled / 2, scaled)
            scaled = np.where(t + scaled < 0, 0.0, scaled)
            adj = np.where(neg, scaled, adj)
        iters[active] += 1
        tau2[active] = t + adj
        done = np.abs(adj) <= threshold
        converged[active[done]] = True
        active = active[~done]
    if active.size:
        # Fisher scoring did not settle: solve the estimating equation by bracketing.
        sub = b.take(active)
        if method == "EB":
            root, ok = _paule_mandel(sub)
        else:
            # the default solver, including its interior-maximum search
            root, ok = _newton_score(sub, method)
        tau2[active] = root
        converged[active] = ok
    return tau2, converged, iters


def _ll0_check(b, tau2, converged, method, floor=0.0):
    """rma.uni's check: set tau2 = 0 when the likelihood is larger there (local maximum).

    Only estimates above ``floor`` are checked (metafor: its ``threshold``).
    """
    rows = np.flatnonzero(converged & (b.k > b.p) & (tau2 > floor))
    if rows.size == 0:
        return tau2
    sub = b.take(rows)
    ll0 = log_likelihood(sub, np.zeros(rows.size), reml=method == "REML")
    ll1 = log_likelihood(sub, tau2[rows], reml=method == "REML")
    out = tau2.copy()
    # metafor's control default tol = .Machine$double.eps^0.25
    out[rows[ll0 - ll1 > _EPS ** 0.25]] = 0.0
    return out


# ---------------------------------------------------------------------------------------
# ML / REML without moderators: the same solver, fused and blocked (issue 17)
# ---------------------------------------------------------------------------------------

#: Cells per block of :func:`_ml_reml_intercept`: a block's (rows, sites) arrays and
#: temporaries stay in the processor's cache through every Newton step.
_ML_REML_BLOCK_CELLS = 1 << 17


def _ml_reml_sums(y: np.ndarray, vw: np.ndarray, tau2: np.ndarray, ones: np.ndarray,
                  reml: bool, slope: bool, se: bool = False):
    """Score of ML / REML at ``tau2`` and its derivative, intercept only, fused.

    The arithmetic of :func:`_score` (same sums in the same order) with in-place
    temporaries: ``w = 1/(v + tau2)``, ``r = y - ybar_w``, ``u = w r``; score
    ``sum u^2 - tr(P)`` (REML) or ``sum u^2 - sum w`` (ML) and, with ``slope``, its
    derivative ``tr(PP) - 2 y'PPPy`` (``sum w^2`` for ML). Also returns ``sum w``,
    ``sum w^2``, ``sum w^3`` and ``RSS = sum u r`` (the pieces of the log-likelihood and
    of the SE of tau²). ``sum w^3`` and ``RSS`` are NaN where not computed (``slope``).
    With ``se``, also the information of the SE of tau² as :func:`tau2_estimate` computes
    it (``tr(PP)`` through :func:`_sum_p2`'s sums for REML, ``sum w^2`` by ``_rdot`` for
    ML), so that the SE is the general path's bit for bit; NaN otherwise.
    """
    w = vw + tau2[:, None]
    np.reciprocal(w, out=w)
    sw = w @ ones
    r = y - (np.einsum("ij,ij->i", w, y) / sw)[:, None]
    u = np.multiply(w, r, out=r if slope else None)
    uu = np.einsum("ij,ij->i", u, u)
    rss = np.full(sw.shape, np.nan) if slope else np.einsum("ij,ij->i", u, r)
    w2 = w * w
    sw2 = w2 @ ones
    sw3 = np.einsum("ij,ij->i", w2, w) if reml or not slope else np.full(sw.shape, np.nan)
    if reml:
        num = uu - (sw - sw2 / sw)
        info = sw2 - 2 * sw3 / sw + (sw2 / sw) ** 2
    else:
        num, info = uu - sw, sw2
    if not slope:
        if not se:
            return num, info, sw, sw2, sw3, rss, np.full(sw.shape, np.nan)
        if reml:
            d = np.einsum("ij,ij->i", w2, np.ones_like(w2))
            pp = sw2 - 2 * sw3 / sw + d * d / sw**2
        else:
            pp = np.einsum("ij,ij->i", w, w)
        return num, info, sw, sw2, sw3, rss, pp
    wu = np.einsum("ij,ij->i", w, u)
    np.multiply(w, u, out=w2)
    upu = np.einsum("ij,ij->i", w2, u) - wu * wu / sw
    return num, info - 2 * upu, sw, sw2, sw3, rss, np.full(sw.shape, np.nan)


def _ml_reml_intercept(b: BatchInput, method: str
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tau², convergence and SE of tau² of ML / REML without moderators (newton solver).

    The answers of :func:`_newton_score`, :func:`_ll0_check` and the SE of
    :func:`tau2_estimate` (the same bracket, start, Newton steps and stopping rule, so the
    same roots), computed block by block with fused passes (issue 17: the general path
    took 19x the closed-form DL floor on 200,000 x 20 arrays). ``b`` is centred, every
    row has ``k >= 2``. The interior-maximum probe runs inside the blocks too. Rows the
    fast path does not take are solved by the general path: rows with a non-finite
    score, HE estimate or bracket at 0, and rows where one weight holds more than half of
    the total (the exact trace forms of :func:`trace_p`). What is skipped and why it
    cannot change an answer is in docs/decisions/reml-batch.md.
    """
    m, K = b.yi.shape
    tau2 = np.zeros(m)
    ok = np.ones(m, dtype=bool)
    se = np.full(m, np.nan)
    hard = []
    step = max(1, _ML_REML_BLOCK_CELLS // max(K, 1))
    vw = b.vw
    for i in range(0, m, step):
        sl = slice(i, min(i + step, m))
        t, o, s_, h = _ml_reml_block(b.yi[sl], vw[sl], b.mask[sl], b.k[sl], method)
        tau2[sl], ok[sl], se[sl] = t, o, s_
        hard.append(h + i)
    rows = np.concatenate(hard) if hard else np.zeros(0, dtype=int)   # m = 0: no block
    if rows.size:
        sub = b.take(rows)
        t, o = _newton_score(sub, method)
        t = _ll0_check(sub, t, o, method, 0.0)
        w = re_weights(sub, t)
        tau2[rows], ok[rows] = t, o
        se[rows] = np.sqrt(2 / (_rdot(w, w) if method == "ML" else _sum_p2(w)))
    return tau2, ok, se


def _ml_reml_block(y: np.ndarray, vw: np.ndarray, mask: np.ndarray, k_int: np.ndarray,
                   method: str):
    """One block of :func:`_ml_reml_intercept`: tau², converged, SE, rows left over."""
    n, K = y.shape
    reml = method == "REML"
    ones = np.ones(K)
    k = k_int.astype(float)
    tau2 = np.zeros(n)
    ok = np.ones(n, dtype=bool)
    # at tau2 = 0: the score, Q (RSS) and the weight sums of the SE
    s0, _, sw0, sw20, _, rss0, pp = _ml_reml_sums(y, vw, np.zeros(n), ones, reml, False,
                                                 se=True)
    # HE (the start) and the bracket's upper end, as _he and _upper_bracket compute them
    v0 = np.where(mask, vw, 0.0)
    sv = v0 @ ones
    dev = np.where(mask, y - ((y @ ones) / k)[:, None], 0.0)
    ss = np.einsum("ij,ij->i", dev, dev)
    he0 = (ss - sv * (k - 1) / k) / (k - 1)
    hi = 2.0 * ss / np.maximum(k - 1, 1.0)
    # one weight above half the total: sum(w^2) <= max(w) sum(w) rules it out cheaply
    dominated = ~(sw20 <= (_DOMINANCE * sw0) ** 2)
    if dominated.any():
        dominated[dominated] = ~(np.max(1.0 / vw[dominated], axis=1)
                                 <= _DOMINANCE * sw0[dominated])
    hard = ~(np.isfinite(s0) & np.isfinite(he0) & np.isfinite(sw0) & np.isfinite(hi)
             ) | dominated
    hi = (np.where(hi > 0, hi, 1.0) + 1e-300) * k + 2 * v0.max(axis=1)
    lo = np.zeros(n)
    x0 = np.minimum(np.maximum(he0, 0.0), hi)
    solve = ~hard & (s0 > 0)
    probe = np.flatnonzero(~hard & (s0 <= 0) & (he0 > 0))
    if probe.size:
        # _newton_score's probe at HE, HE/2, ..., HE/2^12: the first positive score
        # brackets a maximum with the previous point (with hi when HE itself is positive)
        p_lo, p_hi, found = _ml_reml_probe(y[probe], vw[probe], he0[probe], ones, reml)
        hit = probe[found]
        lo[hit] = p_lo[found]
        hi[hit] = np.where(np.isnan(p_hi[found]), hi[hit], p_hi[found])
        x0[hit] = np.minimum(np.maximum(he0[hit], lo[hit]), hi[hit])
        solve[hit] = True
    se = np.sqrt(2 / pp)
    rows = np.flatnonzero(solve)
    if rows.size:
        nk = k[rows]
        scale = sv[rows] / nk
        xtol = _XTOL_REL * np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        # tr(P) at 0 with trace_p's own sums (einsum, not the score's matmul): the
        # transformed function, and so every iterate, is then _newton_score's bit for bit
        w0 = 1.0 / vw[rows]
        vt = (nk - 1) / (sw0[rows] - np.einsum("ij,ij->i", w0, w0) / sw0[rows])
        yn, vn = y[rows], vw[rows]
        root, conv = _ml_reml_newton(yn, vn, lo[rows], x0[rows], hi[rows], xtol, vt, ones,
                                     reml)
        # the likelihood at the root and at 0 (rma.uni's check) and the SE at the root
        with np.errstate(divide="ignore", invalid="ignore"):
            _, _, sw1, _, _, rss1, pp1 = _ml_reml_sums(yn, vn, root, ones, reml, False,
                                                       se=True)
            # sum log(1 + tau2/v) as the log of one product per row (a log per cell costs
            # more than the rest of the check); log1p per cell where the product overflows
            ratio = root[:, None] / vn
            ratio += 1.0
            dlogv = np.log(np.multiply.reduce(ratio, axis=1))
            big = np.flatnonzero(~np.isfinite(dlogv))
            if big.size:
                dlogv[big] = np.log1p(root[big, None] / vn[big]) @ ones
        diff = 0.5 * (dlogv + rss1 - rss0[rows])
        if reml:
            diff += 0.5 * np.log(sw1 / sw0[rows])
        back = conv & (root > 0) & (diff > _EPS ** 0.25)
        root = np.where(back, 0.0, root)
        se[rows] = np.where(back, se[rows], np.sqrt(2 / pp1))
        tau2[rows], ok[rows] = root, conv
    return tau2, ok, se, np.flatnonzero(hard)


def _ml_reml_probe(y: np.ndarray, vw: np.ndarray, he0: np.ndarray, ones: np.ndarray,
                   reml: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_newton_score`'s probe for rows with score(0) <= 0 < HE.

    The score at ``HE / 2^j``, ``j = 0..12``, until it is positive. Returns per row the
    first point with a positive score (the bracket's lower end), the point before it
    (NaN when it is HE itself: the caller's closed-form upper end then applies) and
    whether one was found.
    """
    n = he0.size
    t = he0.copy()
    t_prev = np.full(n, np.nan)
    p_lo = np.full(n, np.nan)
    p_hi = np.full(n, np.nan)
    found = np.zeros(n, dtype=bool)
    idx = np.arange(n)
    yc, vc = y, vw
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(13):
            s_t = _ml_reml_sums(yc, vc, t[idx], ones, reml, False)[0]
            pos = s_t > 0
            h = idx[pos]
            found[h], p_lo[h], p_hi[h] = True, t[h], t_prev[h]
            # a zero score at t_prev needs no care: the solver's first step evaluates it
            # there (x0 = t_prev), finds the same exact zero and stops at it, as
            # bracketed_root does without evaluating
            miss = ~pos
            m_ = idx[miss]
            t_prev[m_] = t[m_]
            t[m_] = t[m_] / 2
            if not miss.any():
                break
            if not miss.all():
                idx, yc, vc = m_, yc[miss], vc[miss]
    return p_lo, p_hi, found


def _ml_reml_newton(y: np.ndarray, vw: np.ndarray, lo: np.ndarray, x0: np.ndarray,
                    hi: np.ndarray, xtol: np.ndarray, vt: np.ndarray, ones: np.ndarray,
                    reml: bool):
    """:func:`bracketed_root` on ``(vt + tau2)^2 score`` over ``[lo, hi]``, score(lo) > 0.

    The same iteration as :func:`_newton_score`'s call (Newton steps inside the bracket,
    bisection when a step leaves it, rtsafe's stopping rules with ``newton_rtol = 1e-9``),
    specialised: the score is positive at the lower end and negative at ``hi`` (see
    docs/decisions/reml-batch.md), so only the signs of new values matter, and the
    arrays are compacted to the rows still iterating once a fifth have stopped.
    """
    n = x0.size
    lo = lo.copy()
    hi = hi.copy()
    x = x0.copy()
    root = 0.5 * (lo + hi)
    conv = np.zeros(n, dtype=bool)
    idx = np.arange(n)          # rows of the current arrays
    live = np.ones(n, dtype=bool)
    yc, vc, xt, vtc = y, vw, xtol, vt
    rtol = 4 * _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(200):
            if idx.size == 0:
                break
            if live.sum() < 0.8 * idx.size:
                keep = np.flatnonzero(live)
                idx, yc, vc, xt, vtc = idx[keep], yc[keep], vc[keep], xt[keep], vtc[keep]
                live = live[keep]
            xa = x[idx]
            s_, ds, *_ = _ml_reml_sums(yc, vc, xa, ones, reml, True)
            c = vtc + xa
            fx = s_ * c * c
            dfx = (ds * c + 2 * s_) * c
            same_lo = fx > 0
            lo_a = np.where(same_lo, xa, lo[idx])
            hi_a = np.where(same_lo, hi[idx], xa)
            width = np.abs(hi_a - lo_a)
            tol = xt + rtol * np.abs(xa)
            finished = (fx == 0) | (width <= tol)
            step = fx / dfx
            tiny = np.isfinite(step) & (np.abs(step) <= np.maximum(tol, 1e-9 * np.abs(xa))
                                        ) & ~finished
            finished |= tiny
            cand = xa - step
            mid = 0.5 * (lo_a + hi_a)
            inside = np.isfinite(cand) & (cand > np.minimum(lo_a, hi_a)) & (
                cand < np.maximum(lo_a, hi_a))
            upd = live.copy()
            ui = idx[upd]
            lo[ui], hi[ui] = lo_a[upd], hi_a[upd]
            root[ui] = np.where(tiny, cand, xa)[upd]
            x[ui] = np.where(inside, cand, mid)[upd]
            done = upd & finished
            conv[idx[done]] = True
            live &= ~finished
            if not live.any():
                break
    return root, conv


# ---------------------------------------------------------------------------------------
# Q-profile interval and likelihood
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QProfile:
    """Q-profile confidence bounds for tau² (Viechtbauer 2007).

    ``low``/``high`` are NaN for rows with ``k <= p``.
    """

    low: np.ndarray
    high: np.ndarray
    converged: np.ndarray


def qprofile_tau2_ci(yi, vi=None, mask=None, *, level: float = 95.0, X=None) -> QProfile:
    """Q-profile confidence interval for tau², vectorised over analyses.

    The bounds solve ``Q(tau2) = chi2_{k-p, 1 - alpha/2}`` (lower) and
    ``Q(tau2) = chi2_{k-p, alpha/2}`` (upper) for the generalised Q statistic, which is
    decreasing in tau²; a bound is 0 when ``Q(0)`` already lies below its quantile. The
    interval does not depend on the tau² estimator. ``X`` is an optional design matrix
    (residual tau² of a meta-regression, as metafor's ``confint``).
    """
    b = _centered(as_batch(yi, vi, mask, X))
    alpha = _alpha(level)
    m = b.yi.shape[0]
    df = (b.k - b.p).astype(float)
    multi = df >= 1
    with np.errstate(divide="ignore", invalid="ignore"):
        q0, dq0 = _q_and_slope(b.yi, b.vw, np.zeros(m), b.X)
        q0 = np.where(multi, q0, np.nan)
    low = np.where(multi, 0.0, np.nan)
    high = np.where(multi, 0.0, np.nan)
    conv = np.ones(m, dtype=bool)
    with np.errstate(invalid="ignore"):
        # upper quantile -> lower bound; lower quantile -> upper bound (once per distinct df)
        crit_low = per_distinct(lambda d: chi2_isf(alpha / 2, d), df)
        crit_high = per_distinct(lambda d: chi2_ppf(alpha / 2, d), df)
    for out, crit in ((low, crit_low), (high, crit_high)):
        rows = np.flatnonzero(multi & (q0 > crit))
        root, ok = _solve_q_equals(b, rows, crit[rows], q0[rows], dq0[rows])
        out[rows] = root
        conv[rows] &= ok
    return QProfile(low, high, conv)


def log_likelihood(b: BatchInput, tau2, *, reml: bool) -> np.ndarray:
    """Log-likelihood of the model at ``tau2`` (metafor's ``logLik``).

    ML: ``-k/2 log 2pi - 1/2 sum log(v + tau2) - 1/2 RSS``; REML is metafor's full
    restricted likelihood (``REMLf = TRUE``): ``-(k-p)/2 log 2pi + 1/2 log|X'X| - 1/2 sum
    log(v + tau2) - 1/2 log|X'WX| - 1/2 RSS`` (``X'X = k`` and ``X'WX = sum(w)`` without
    moderators), where ``RSS = sum w (y - X beta)^2``.
    """
    b = as_batch(b, None)
    t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (b.yi.shape[0],))
    k = b.k.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):  # rows without sites give NaN
        w = _weights(b.vw, t)
        r = _residuals(b.yi, w, b.X)
        rss = _rdot(w * r, r)
        logv = _rsum(np.log(np.where(b.mask, b.vi + t[:, None], 1.0)))
        ll = -0.5 * k * np.log(2 * np.pi) - 0.5 * logv - 0.5 * rss
        if reml:
            if b.X is None:
                ll = ll + 0.5 * np.log(2 * np.pi) + 0.5 * np.log(k) - 0.5 * np.log(_rsum(w))
            else:
                ldet_xx = np.linalg.slogdet(_xgx(b.X, b.mask.astype(float)))[1]
                ldet_xwx = np.linalg.slogdet(_xgx(b.X, w))[1]
                ll = ll + 0.5 * b.p * np.log(2 * np.pi) + 0.5 * ldet_xx - 0.5 * ldet_xwx
    return ll


def _alpha(level: float) -> float:
    """Alpha of a level, as metafor's ``.level``: 95 -> 0.05, and a proportion 0.95 -> 0.05."""
    level = float(level)
    return (100.0 - level) / 100.0 if level > 1 else 1.0 - level
