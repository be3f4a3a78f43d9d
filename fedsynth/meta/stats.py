"""Vectorised statistics of fixed- and random-effects meta-analysis.

Every function works on a *batch* of analyses at once: ``yi`` and ``vi`` are arrays of
shape ``(m, K)`` (``m`` analyses, at most ``K`` sites each) and ``mask`` is a boolean array
of the same shape, ``True`` where a site contributed. Rows may have different numbers of
sites ``k``. Masked cells never influence a result: they are replaced by harmless values
(``yi = 0``, ``vi = 1``) and receive a weight of exactly zero.

The formulas are those of the normal-normal random-effects model
``y_i = mu + u_i + e_i``, ``u_i ~ N(0, tau2)``, ``e_i ~ N(0, v_i)`` with known ``v_i``
and follow ``metafor::rma.uni`` (Viechtbauer 2010, J. Stat. Softw. 36(3)) so that results
reproduce R to the precision of the project's reference values. The tau² estimators are
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
bracketed solver as fallback for rows that do not converge). Pure: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import special

__all__ = [
    "METHODS",
    "RE_METHODS",
    "TESTS",
    "BatchInput",
    "Tau2Fit",
    "QProfile",
    "as_batch",
    "exclusive_sum",
    "fixed_weights",
    "re_weights",
    "weighted_mean",
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

#: Every pooling method (``FE`` is the fixed/common-effect model, tau² = 0).
METHODS = ("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
#: The random-effects tau² estimators.
RE_METHODS = METHODS[1:]
#: Inference for the pooled estimate: Wald ``z`` or Knapp-Hartung ``knha``.
TESTS = ("z", "knha")

# Fisher scoring stops when |Δtau²| < _THRESHOLD. metafor's default is 1e-5; the project's
# reference values were produced with 1e-12 and must be matched to 1e-6 relative.
_THRESHOLD = 1e-12
_MAX_ITER = 1000
_EPS = np.finfo(float).eps


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
    """

    yi: np.ndarray
    vi: np.ndarray
    mask: np.ndarray
    k: np.ndarray

    @cached_property
    def vw(self) -> np.ndarray:
        """``vi`` with +inf outside the mask, so ``1 / (vw + tau2)`` is a weight of exactly
        zero there without a mask operation in the hot loops."""
        return np.where(self.mask, self.vi, np.inf)


def as_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean (analyses, sites) mask: all present when ``mask`` is None, a 1-D mask
    promoted to one analysis. The shape is not checked here (see ``pooling.pool``)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    msk = np.array(mask, dtype=bool, ndmin=1)
    return msk[None, :] if msk.ndim == 1 else msk


def as_batch(yi, vi, mask=None) -> BatchInput:
    """Promote ``yi``, ``vi`` (1-D or 2-D) and an optional mask to a sanitised batch.

    No validation of values is done here (see :func:`fedsynth.meta.pooling.pool`
    for the user-facing checks); cells outside the mask are overwritten so that NaN
    placeholders for missing sites are allowed.
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
    return BatchInput(y, v, msk, msk.sum(axis=1))


def _rsum(a: np.ndarray) -> np.ndarray:
    """Row sums through BLAS (``a @ 1``): much faster than ``a.sum(axis=1)`` for the
    short rows of a batch (a few dozen sites)."""
    return a @ np.ones(a.shape[1])


def _rdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(a * b)``."""
    return np.einsum("ij,ij->i", a, b)


def _weights(vw: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    w = vw + tau2[:, None]
    np.reciprocal(w, out=w)
    return w


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


def q_statistic(b: BatchInput) -> np.ndarray:
    """Cochran's Q, ``sum w_i (y_i - mu_FE)^2`` with ``w = 1 / vi`` (Cochran 1954)."""
    return generalized_q(b, np.zeros(b.yi.shape[0]))


def generalized_q(b: BatchInput, tau2, *, rows=None) -> np.ndarray:
    """Generalised Q, ``sum w_i (y_i - mu(tau2))^2`` with ``w = 1 / (vi + tau2)``.

    Decreasing in tau²; it is the pivot of the Paule-Mandel estimator and of the Q-profile
    interval (Viechtbauer 2007). ``rows`` restricts the computation to a subset.
    """
    y, vw = (b.yi, b.vw) if rows is None else (b.yi[rows], b.vw[rows])
    t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (y.shape[0],))
    q, _ = _q_and_slope(y, vw, t)
    return np.maximum(q, 0.0)


def _q_and_slope(y, vw, tau2):
    """Generalised Q and its derivative ``dQ/dtau2 = -sum w^2 r^2`` (mu drops out, dQ/dmu = 0)."""
    w = _weights(vw, tau2)
    mu = _rdot(w, y) / _rsum(w)
    r = y - mu[:, None]
    wr = w * r
    return _rdot(wr, r), -_rdot(wr, wr)


#: Above this share of the total weight held by one site, ``S - w_i`` is computed by
#: exclusive sums instead of a subtraction (which would lose digits).
_DOMINANCE = 0.5


def _dominated(w: np.ndarray) -> np.ndarray:
    """Rows where one weight holds more than ``_DOMINANCE`` of the total."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return ~(w.max(axis=1) <= _DOMINANCE * _rsum(w))


def trace_p(w: np.ndarray) -> np.ndarray:
    """``tr(P)`` of ``P = W - w w' / sum(w)`` (intercept-only model): ``sum w_i (S - w_i) / S``.

    ``S - sum(w^2)/S`` is exact enough unless one weight dominates; those rows use
    prefix/suffix sums of the other weights instead.
    """
    s = _rsum(w)
    out = s - _rdot(w, w) / s
    rows = np.flatnonzero(_dominated(w))
    if rows.size:
        wr = w[rows]
        out[rows] = _rdot(wr, exclusive_sum(wr)) / _rsum(wr)
    return out


def _sum_p2(w: np.ndarray, a=None, b=None) -> np.ndarray:
    """``sum_ij P_ij^2 a_i b_j`` for ``P = W - w w' / S`` without cancellation.

    With ``a = b = 1`` this is ``sum(P * P) = tr(P P)``; with ``a = b = vi`` it is
    ``sum(PV * t(PV))`` and with ``a = 1, b = vi`` it is ``sum(PV * P)`` (metafor's
    se(tau²) formulas). Diagonal: ``P_ii = w_i (S - w_i) / S``; off-diagonal:
    ``P_ij = -w_i w_j / S``.
    """
    a = np.ones_like(w) if a is None else a
    b = np.ones_like(w) if b is None else b
    s = _rsum(w)
    w2 = w * w
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


def typical_variance(b: BatchInput) -> np.ndarray:
    """metafor's "typical" within-study variance ``(k - 1) / tr(P)`` with ``w = 1 / vi``.

    Equal to ``(k-1) sum(w) / (sum(w)^2 - sum(w^2))`` (Higgins & Thompson 2002); I² and H²
    are defined through it, so that ``I2 = (Q - df) / Q`` for DL.
    """
    w = fixed_weights(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b.k - 1) / trace_p(w)


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


def chi2_ppf(p, df):
    """Inverse lower tail of the chi-square distribution (accurate for small ``p``)."""
    return 2.0 * special.gammaincinv(np.asarray(df, dtype=float) / 2.0, p)


def per_distinct(fn: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """``fn(values)`` evaluated once per distinct value (quantiles that depend on k only:
    a batch of 20,000 analyses has a handful of distinct k)."""
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
    xtol: float = 1e-15,
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
    zero. ``x0`` is an optional first guess inside the bracket (default: the midpoint).
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
        tol = xtol + rtol * np.abs(xa)
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
        Estimate, truncated at zero (0 for ``FE`` and for rows with ``k < 2``).
    se_tau2 : ndarray, shape (m,)
        Standard error as metafor reports it (NaN for ``FE`` and ``k < 2``).
    converged : ndarray of bool, shape (m,)
    iterations : ndarray of int, shape (m,)
        Fisher-scoring iterations (0 for closed-form estimators and the Newton solver).
    """

    tau2: np.ndarray
    se_tau2: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def _centered(b: BatchInput) -> BatchInput:
    """The batch with ``yi`` minus its unweighted row mean (metafor centres ``yi`` for
    numerical stability; tau² and Q do not depend on a shift)."""
    mean = _rsum(b.yi) / np.maximum(b.k, 1)
    y = np.where(b.mask, b.yi - mean[:, None], 0.0)
    out = BatchInput(y, b.vi, b.mask, b.k)
    out.__dict__["vw"] = b.vw  # share the cached +inf-padded variances
    return out


def _he(b: BatchInput):
    """Hedges' unweighted method of moments (untruncated); also the start of ML/REML/EB."""
    k = b.k.astype(float)
    v = np.where(b.mask, b.vi, 0.0)
    dev = np.where(b.mask, b.yi - (_rsum(b.yi) / k)[:, None], 0.0)
    rss = _rdot(dev, dev)
    sv = _rsum(v)
    tr_pv = sv * (k - 1) / k
    tau2 = (rss - tr_pv) / (k - 1)
    return tau2, v, sv, tr_pv, rss


def tau2_estimate(yi, vi=None, mask=None, method: str = "REML", *, solver: str = "newton",
                  threshold: float = _THRESHOLD, max_iter: int = _MAX_ITER) -> Tau2Fit:
    """Estimate tau² for every analysis of a batch with one method.

    Parameters
    ----------
    yi, vi : array_like, shape (m, K) or (K,)
        Or a :class:`BatchInput` as ``yi`` (then ``vi`` and ``mask`` are ignored).
    mask : array_like of bool, optional
    method : {"FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM"}
    solver : {"newton", "fisher"}
        How ML and REML are maximised (the root is the same): ``newton`` solves the score
        equation with safeguarded Newton steps inside a bracket (quadratic convergence,
        the default); ``fisher`` is rma.uni's Fisher scoring from the HE estimate with
        step halving at zero, stopped at ``|Δtau2| < threshold``, with rows still
        unconverged after ``max_iter`` steps handed to the bracketed solver.
    threshold, max_iter
        Fisher-scoring controls.

    Notes
    -----
    Closed forms (metafor's, with ``P = W - w w'/sum(w)``):

    * DL ``(Q - (k-1)) / tr(P)`` with ``w = 1/v``;
    * HS ``(Q - k) / sum(w)``;
    * HE ``(sum (y - ybar)^2 - (k-1)/k sum v) / (k - 1)``;
    * SJ ``tau0 Q(tau0) / (k - 1)`` with ``tau0 = mean((y - ybar)^2)``.

    ML and REML set the score to zero: ``y'PPy - sum(w)`` (ML) and ``y'PPy - tr(P)``
    (REML), whose derivatives are ``-2 y'PPPy + sum(w^2)`` and ``-2 y'PPPy + tr(PP)``;
    tau² = 0 when the score is not positive at zero. As in rma.uni, a stationary point
    whose likelihood is below the one at zero is replaced by zero. EB (Morris 1983) and PM
    both solve ``Q(tau2) = k - 1`` (EB's Fisher-scoring step is ``(Q k/(k-1) - k)/sum(w)``),
    zero when ``Q(0) < k - 1``; the root is found on ``1/Q``, which is nearly linear.
    """
    method = str(method).upper()
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver: {solver!r} is not one of {', '.join(SOLVERS)}")
    b = as_batch(yi, vi, mask)
    m = b.yi.shape[0]
    k = b.k.astype(float)
    nan = np.full(m, np.nan)
    iters = np.zeros(m, dtype=int)
    ok = np.ones(m, dtype=bool)
    if method == "FE":
        return Tau2Fit(np.zeros(m), nan, ok, iters)
    multi = b.k >= 2
    c = _centered(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method in ("DL", "HS"):
            w = fixed_weights(c)
            q, _ = _q_and_slope(c.yi, c.vw, np.zeros(m))
            trp = trace_p(w)
            sw = _rsum(w)
            pp = _sum_p2(w)
            if method == "DL":
                tau2 = np.maximum((q - (k - 1)) / trp, 0.0)
                se = np.sqrt((2 * (k - 1) + 4 * tau2 * trp + 2 * tau2**2 * pp) / trp**2)
            else:
                tau2 = np.maximum((q - k) / sw, 0.0)
                se = np.sqrt((2 * (k - 1) + 4 * tau2 * trp + 2 * tau2**2 * pp) / sw**2)
        elif method == "HE":
            tau2, v, sv, tr_pv, _ = _he(c)
            tau2 = np.maximum(tau2, 0.0)
            # sum(PV * t(PV)) with P = I - J/k: sum v^2 (1 - 2/k) + (sum v)^2 / k^2
            s_pv = _rdot(v, v) * (1 - 2 / k) + sv**2 / k**2
            se = np.sqrt((2 * s_pv + 4 * tau2 * tr_pv + 2 * tau2**2 * (k - 1)) / (k - 1) ** 2)
        elif method == "SJ":
            _, v, _, _, rss = _he(c)
            tau0 = rss / k  # var(y) (k-1)/k
            w = re_weights(c, tau0)
            q, _ = _q_and_slope(c.yi, c.vw, tau0)
            tau2 = np.maximum(tau0 * q / (k - 1), 0.0)
            one = b.mask.astype(float)
            s_pvpv = _sum_p2(w, v, v)
            s_pvp = _sum_p2(w, one, v)
            s_pp = _sum_p2(w)
            se = np.sqrt(tau0**2 / (k - 1) ** 2
                         * (2 * s_pvpv + 4 * tau2 * s_pvp + 2 * tau2**2 * s_pp))
        elif method == "PM" or (method == "EB" and solver == "newton"):
            tau2, ok = _paule_mandel(c)
            se = np.sqrt(2 * k**2 / (k - 1)) / _rsum(re_weights(c, tau2))
        else:  # ML, REML (and EB with Fisher scoring)
            if solver == "newton":
                tau2, ok = _newton_score(c, method)
            else:
                tau2, ok, iters = _fisher_scoring(c, method, threshold, max_iter)
            if method in ("ML", "REML"):
                tau2 = _ll0_check(c, tau2, ok, method, threshold)
            w = re_weights(c, tau2)
            if method == "ML":
                se = np.sqrt(2 / _rdot(w, w))
            elif method == "REML":
                se = np.sqrt(2 / _sum_p2(w))
            else:
                se = np.sqrt(2 * k**2 / (k - 1)) / _rsum(w)
    tau2 = np.where(multi, tau2, 0.0)
    se = np.where(multi, se, np.nan)
    ok = np.where(multi, ok, True)
    return Tau2Fit(tau2, se, ok, np.where(multi, iters, 0))


def _upper_bracket(y: np.ndarray, mask: np.ndarray, k: np.ndarray,
                   target: np.ndarray) -> np.ndarray:
    """A tau² where the generalised Q has certainly fallen below ``target``.

    ``Q(tau2) <= sum (y - ybar)^2 / (v + tau2) <= sum (y - ybar)^2 / tau2`` because the
    weighted mean minimises the weighted sum of squares.
    """
    kk = np.maximum(k, 1)
    dev = np.where(mask, y - (_rsum(y) / kk)[:, None], 0.0)
    ss = _rdot(dev, dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = 2.0 * ss / target
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
    yy, vw = b.yi[rows], b.vw[rows]
    hi = _upper_bracket(yy, b.mask[rows], b.k[rows], target)
    if q0 is None or dq0 is None:
        q0, dq0 = _q_and_slope(yy, vw, np.zeros(rows.size))
    inv_t = 1.0 / target

    def f(x, sub):
        q, dq = _q_and_slope(yy[sub], vw[sub], x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 / q - inv_t[sub], -dq / (q * q)

    with np.errstate(divide="ignore", invalid="ignore"):
        f0 = 1.0 / q0 - inv_t
        x0 = np.clip(-f0 * q0 * q0 / -dq0, 0.0, hi)  # the first Newton step from 0
        return bracketed_root(f, np.zeros(rows.size), hi, f0, np.ones(rows.size),
                              x0=np.where(np.isfinite(x0), x0, 0.0), newton_rtol=1e-9)


def _paule_mandel(b: BatchInput) -> tuple[np.ndarray, np.ndarray]:
    """Root of ``Q(tau2) = k - 1`` (0 where ``Q(0) <= k - 1``); b must be centred."""
    m = b.yi.shape[0]
    k = b.k.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0, dq0 = _q_and_slope(b.yi, b.vw, np.zeros(m))
    tau2 = np.zeros(m)
    ok = np.ones(m, dtype=bool)
    rows = np.flatnonzero((b.k >= 2) & (q0 > k - 1))
    root, conv = _solve_q_equals(b, rows, (k - 1)[rows], q0[rows], dq0[rows])
    tau2[rows] = root
    ok[rows] = conv
    return tau2, ok


def _score(y, vw, tau2, method, *, slope: bool):
    """Score of ML / REML (times 2) at ``tau2`` and its derivative or Fisher information.

    With ``u = P y = w (y - mu)``: ``y'PPy = sum u^2`` and ``y'PPPy = sum w u^2 -
    (sum w u)^2 / sum w``. Returns ``(score, d score / d tau2)`` when ``slope`` and
    ``(score, expected information)`` otherwise (the Fisher-scoring step is their ratio).
    For EB the "score" is Morris's equation ``Q k/(k-1) - k`` with information
    ``sum(w)`` (only used by Fisher scoring).
    """
    w = _weights(vw, tau2)
    sw = _rsum(w)
    r = y - (_rdot(w, y) / sw)[:, None]
    u = w * r
    uu = _rdot(u, u)
    if method == "EB":
        k = np.isfinite(vw).sum(axis=1)
        return _rdot(u, r) * k / (k - 1) - k, sw
    w2 = w * w
    sw2 = _rsum(w2)
    if method == "ML":
        num, info = uu - sw, sw2
    else:
        sw3 = _rdot(w2, w)
        num = uu - (sw - sw2 / sw)                       # y'PPy - tr(P)
        info = sw2 - 2 * sw3 / sw + (sw2 / sw) ** 2      # tr(PP)
    if not slope:
        return num, info
    wu = _rdot(w, u)
    upu = _rdot(w * u, u) - wu * wu / sw                  # y'PPPy
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
    rows = np.flatnonzero(b.k >= 2)
    if rows.size == 0:
        return tau2, ok
    n = rows.size
    yy, vw = b.yi[rows], b.vw[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        s0, _ = _score(yy, vw, np.zeros(n), method, slope=False)
    he0, *_ = _he(BatchInput(yy, b.vi[rows], b.mask[rows], b.k[rows]))
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
            with np.errstate(divide="ignore", invalid="ignore"):
                s_t, _ = _score(yy[look[pending]], vw[look[pending]], t[pending], method,
                                slope=False)
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
        sel = rows[need]
        sub = BatchInput(yy[need], b.vi[sel], b.mask[sel], b.k[sel])
        sub.__dict__["vw"] = vw[need]
        hi[need], s_hi[need], bracketed[need] = _score_bracket(sub, method)
    x0 = np.clip(he0[act], lo[act], hi[act])
    # The score behaves like A/(v+tau2)^2 - B/(v+tau2): strongly convex, so plain Newton
    # creeps towards the root. (vt + tau2)^2 * score (vt: typical within-site variance)
    # has the same root and is linear in tau2 when the variances are equal, so Newton on
    # it converges in a few steps.
    ya, va = yy[act], vw[act]
    vt = (b.k[rows[act]] - 1) / trace_p(1.0 / va)

    def f(x, idx):
        s_, ds = _score(ya[idx], va[idx], x, method, slope=True)
        c = vt[idx] + x
        return s_ * c * c, (ds * c + 2 * s_) * c

    root, conv = bracketed_root(f, lo[act], hi[act], s_lo[act], s_hi[act], x0=x0,
                                newton_rtol=1e-9)
    tau2[rows[act]] = root
    ok[rows[act]] = conv & bracketed[act]
    return tau2, ok


def _score_bracket(b: BatchInput, method: str):
    """An upper end ``hi`` with a negative score (widened geometrically if needed)."""
    k = b.k.astype(float)
    vmax = np.where(b.mask, b.vi, 0.0).max(axis=1)
    hi = _upper_bracket(b.yi, b.mask, b.k, np.maximum(k - 1, 1.0)) * k + 2 * vmax
    with np.errstate(divide="ignore", invalid="ignore"):
        s_hi, _ = _score(b.yi, b.vw, hi, method, slope=False)
        for _ in range(60):
            bad = ~(s_hi < 0)
            if not bad.any():
                break
            hi = np.where(bad, hi * 4, hi)
            s_hi[bad], _ = _score(b.yi[bad], b.vw[bad], hi[bad], method, slope=False)
    return hi, s_hi, s_hi < 0


def _fisher_scoring(b: BatchInput, method: str, threshold: float, max_iter: int):
    """rma.uni's Fisher scoring, vectorised with a per-row convergence mask.

    Starts from the truncated HE estimate; a step that would make tau² negative is
    halved until it does not (so at tau² = 0 a negative step vanishes). Rows still moving
    after ``max_iter`` steps are solved by bracketing instead.
    """
    m = b.yi.shape[0]
    he, *_ = _he(b)
    tau2 = np.where((b.k >= 2) & np.isfinite(he), np.maximum(he, 0.0), 0.0)
    iters = np.zeros(m, dtype=int)
    converged = b.k < 2
    active = np.flatnonzero(~converged)
    for _ in range(max_iter):
        if active.size == 0:
            break
        t = tau2[active]
        num, info = _score(b.yi[active], b.vw[active], t, method, slope=False)
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
        sub = BatchInput(b.yi[active], b.vi[active], b.mask[active], b.k[active])
        sub.__dict__["vw"] = b.vw[active]
        if method == "EB":
            root, ok = _paule_mandel(sub)
        else:
            # the default solver, including its interior-maximum search
            root, ok = _newton_score(sub, method)
        tau2[active] = root
        converged[active] = ok
    return tau2, converged, iters


def _ll0_check(b, tau2, converged, method, threshold):
    """rma.uni's check: set tau2 = 0 when the likelihood is larger there (local maximum)."""
    rows = np.flatnonzero(converged & (b.k >= 2) & (tau2 > threshold))
    if rows.size == 0:
        return tau2
    sub = BatchInput(b.yi[rows], b.vi[rows], b.mask[rows], b.k[rows])
    ll0 = log_likelihood(sub, np.zeros(rows.size), reml=method == "REML")
    ll1 = log_likelihood(sub, tau2[rows], reml=method == "REML")
    out = tau2.copy()
    # metafor's control default tol = .Machine$double.eps^0.25
    out[rows[ll0 - ll1 > _EPS ** 0.25]] = 0.0
    return out


# ---------------------------------------------------------------------------------------
# Q-profile interval and likelihood
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QProfile:
    """Q-profile confidence bounds for tau² (Viechtbauer 2007).

    ``low``/``high`` are NaN for rows with ``k < 2``.
    """

    low: np.ndarray
    high: np.ndarray
    converged: np.ndarray


def qprofile_tau2_ci(yi, vi=None, mask=None, *, level: float = 95.0) -> QProfile:
    """Q-profile confidence interval for tau², vectorised over analyses.

    The bounds solve ``Q(tau2) = chi2_{k-1, 1 - alpha/2}`` (lower) and
    ``Q(tau2) = chi2_{k-1, alpha/2}`` (upper) for the generalised Q statistic, which is
    decreasing in tau²; a bound is 0 when ``Q(0)`` already lies below its quantile. The
    interval does not depend on the tau² estimator.
    """
    b = _centered(as_batch(yi, vi, mask))
    alpha = _alpha(level)
    m = b.yi.shape[0]
    df = (b.k - 1).astype(float)
    multi = b.k >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        q0, dq0 = _q_and_slope(b.yi, b.vw, np.zeros(m))
        q0 = np.where(multi, q0, np.nan)
    low = np.where(multi, 0.0, np.nan)
    high = np.where(multi, 0.0, np.nan)
    conv = np.ones(m, dtype=bool)
    with np.errstate(invalid="ignore"):
        # upper quantile -> lower bound; lower quantile -> upper bound (once per distinct k)
        crit_low = per_distinct(lambda d: chi2_isf(alpha / 2, d), df)
        crit_high = per_distinct(lambda d: chi2_ppf(alpha / 2, d), df)
    for out, crit in ((low, crit_low), (high, crit_high)):
        rows = np.flatnonzero(multi & (q0 > crit))
        root, ok = _solve_q_equals(b, rows, crit[rows], q0[rows], dq0[rows])
        out[rows] = root
        conv[rows] &= ok
    return QProfile(low, high, conv)


def log_likelihood(b: BatchInput, tau2, *, reml: bool) -> np.ndarray:
    """Log-likelihood of the random-effects model at ``tau2`` (metafor's ``logLik``).

    ML: ``-k/2 log 2pi - 1/2 sum log(v + tau2) - 1/2 RSS``; REML adds
    ``+1/2 log 2pi + 1/2 log k - 1/2 log sum(w)`` (metafor's full REML likelihood with
    ``REMLf = TRUE``), where ``RSS = sum w (y - mu)^2``.
    """
    b = as_batch(b, None)
    t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (b.yi.shape[0],))
    k = b.k.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):  # rows without sites give NaN
        w = _weights(b.vw, t)
        sw = _rsum(w)
        r = b.yi - (_rdot(w, b.yi) / sw)[:, None]
        rss = _rdot(w * r, r)
        logv = _rsum(np.log(np.where(b.mask, b.vi + t[:, None], 1.0)))
        ll = -0.5 * k * np.log(2 * np.pi) - 0.5 * logv - 0.5 * rss
        if reml:
            ll = ll + 0.5 * np.log(2 * np.pi) + 0.5 * np.log(k) - 0.5 * np.log(sw)
    return ll


def _alpha(level: float) -> float:
    """metafor's ``.level``: 95 -> 0.05; a value in (0, 1) is a proportion (0.95 -> 0.05)."""
    level = float(level)
    return (100.0 - level) / 100.0 if level > 1 else 1.0 - level
