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

The iterative parts are vectorised over analyses: Fisher scoring runs on all rows at
once with a per-row convergence mask, and :func:`bracketed_root` (a safeguarded
Newton / Illinois / bisection hybrid on arrays) finishes the rows that need a root of a
monotone or bracketed equation (Paule-Mandel, Q-profile bounds, fallback for Fisher
scoring). Pure: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

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


def as_batch(yi, vi, mask=None) -> BatchInput:
    """Promote ``yi``, ``vi`` (1-D or 2-D) and an optional mask to a sanitised batch.

    No validation of values is done here (see :func:`coordinator.synthesis.pooling.pool`
    for the user-facing checks); cells outside the mask are overwritten so that NaN
    placeholders for missing sites are allowed.
    """
    y = np.array(yi, dtype=float, ndmin=1, copy=True)
    v = np.array(vi, dtype=float, ndmin=1, copy=True)
    if y.ndim == 1:
        y = y[None, :]
    if v.ndim == 1:
        v = v[None, :]
    if mask is None:
        msk = np.ones(y.shape, dtype=bool)
    else:
        msk = np.array(mask, dtype=bool, ndmin=1)
        if msk.ndim == 1:
            msk = msk[None, :]
    y[~msk] = 0.0
    v[~msk] = 1.0
    return BatchInput(y, v, msk, msk.sum(axis=1))


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
    return np.where(b.mask, 1.0 / b.vi, 0.0)


def re_weights(b: BatchInput, tau2) -> np.ndarray:
    """Random-effects weights ``1 / (vi + tau2)`` (zero outside the mask)."""
    t = np.asarray(tau2, dtype=float).reshape(-1, 1)
    return np.where(b.mask, 1.0 / (b.vi + t), 0.0)


def weighted_mean(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(w y) / sum(w)``."""
    return (w * y).sum(axis=1) / w.sum(axis=1)


def q_statistic(b: BatchInput) -> np.ndarray:
    """Cochran's Q, ``sum w_i (y_i - mu_FE)^2`` with ``w = 1 / vi`` (Cochran 1954)."""
    return generalized_q(b, np.zeros(b.yi.shape[0]))


def generalized_q(b: BatchInput, tau2, *, rows=None) -> np.ndarray:
    """Generalised Q, ``sum w_i (y_i - mu(tau2))^2`` with ``w = 1 / (vi + tau2)``.

    Decreasing in tau²; it is the pivot of the Paule-Mandel estimator and of the Q-profile
    interval (Viechtbauer 2007). ``rows`` restricts the computation to a subset.
    """
    y, v, m = (b.yi, b.vi, b.mask) if rows is None else (b.yi[rows], b.vi[rows], b.mask[rows])
    t = np.asarray(tau2, dtype=float).reshape(-1, 1)
    w = np.where(m, 1.0 / (v + t), 0.0)
    r = y - ((w * y).sum(axis=1) / w.sum(axis=1))[:, None]
    return np.maximum((w * r * r).sum(axis=1), 0.0)


def _q_and_slope(y, v, m, tau2):
    """Generalised Q and its derivative ``dQ/dtau2 = -sum w^2 r^2`` (mu drops out, dQ/dmu = 0)."""
    w = np.where(m, 1.0 / (v + tau2[:, None]), 0.0)
    r = y - ((w * y).sum(axis=1) / w.sum(axis=1))[:, None]
    wr2 = w * r * r
    return wr2.sum(axis=1), -(w * wr2).sum(axis=1)


def trace_p(w: np.ndarray) -> np.ndarray:
    """``tr(P)`` of ``P = W - w w' / sum(w)`` (intercept-only model): ``sum w_i (S - w_i) / S``."""
    s = w.sum(axis=1)
    return (w * exclusive_sum(w)).sum(axis=1) / s


def _sum_p2(w: np.ndarray, a=None, b=None) -> np.ndarray:
    """``sum_ij P_ij^2 a_i b_j`` for ``P = W - w w' / S`` without cancellation.

    With ``a = b = 1`` this is ``sum(P * P) = tr(P P)``; with ``a = b = vi`` it is
    ``sum(PV * t(PV))`` and with ``a = 1, b = vi`` it is ``sum(PV * P)`` (metafor's
    se(tau²) formulas). Diagonal: ``P_ii = w_i (S - w_i) / S``; off-diagonal:
    ``P_ij = -w_i w_j / S``.
    """
    a = np.ones_like(w) if a is None else a
    b = np.ones_like(w) if b is None else b
    s = w.sum(axis=1, keepdims=True)
    pii = w * exclusive_sum(w) / s
    w2 = w * w
    off = (w2 * a * exclusive_sum(w2 * b)).sum(axis=1) / (s[:, 0] ** 2)
    return (pii * pii * a * b).sum(axis=1) + off


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


def critical_value(level_alpha: float, df, test: str):
    """Two-sided critical value: normal for ``z``, t with ``df`` for ``knha``."""
    if test == "knha":
        with np.errstate(invalid="ignore"):
            return stats.t.isf(level_alpha / 2, df)
    return stats.norm.isf(level_alpha / 2) + np.zeros(np.shape(df))


def two_sided_p(stat, df, test: str):
    """Two-sided p-value of a z or t statistic."""
    a = np.abs(np.asarray(stat, dtype=float))
    if test == "knha":
        with np.errstate(invalid="ignore"):
            return 2.0 * stats.t.sf(a, df)
    return 2.0 * stats.norm.sf(a)


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
    ``xtol + rtol |x|`` or ``f`` is exactly zero.

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
    active = np.flatnonzero(~done)
    # first evaluation at the midpoint gives a derivative for a Newton step
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
            tiny = np.isfinite(step) & (np.abs(step) <= tol) & ~finished
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
        Fisher-scoring iterations (0 for closed-form estimators).
    """

    tau2: np.ndarray
    se_tau2: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def _centered(b: BatchInput) -> np.ndarray:
    """``yi`` minus its unweighted row mean (metafor centres for numerical stability)."""
    mean = (b.yi * b.mask).sum(axis=1) / np.maximum(b.k, 1)
    return np.where(b.mask, b.yi - mean[:, None], 0.0)


def _he(b: BatchInput, y: np.ndarray):
    """Hedges' unweighted method of moments; also the start of ML/REML/EB."""
    k = b.k.astype(float)
    v = np.where(b.mask, b.vi, 0.0)
    dev = np.where(b.mask, y - (y.sum(axis=1) / k)[:, None], 0.0)
    rss = (dev * dev).sum(axis=1)
    sv = v.sum(axis=1)
    tr_pv = sv * (k - 1) / k
    tau2 = (rss - tr_pv) / (k - 1)
    return tau2, v, sv, tr_pv


def tau2_estimate(yi, vi, mask=None, method: str = "REML", *,
                  threshold: float = _THRESHOLD, max_iter: int = _MAX_ITER) -> Tau2Fit:
    """Estimate tau² for every analysis of a batch with one method.

    Parameters
    ----------
    yi, vi : array_like, shape (m, K) or (K,)
    mask : array_like of bool, optional
    method : {"FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM"}
    threshold : float
        Fisher scoring stops when ``|Δtau2| < threshold``.
    max_iter : int
        Fisher-scoring iterations before the bracketed fallback takes over.

    Notes
    -----
    Closed forms (metafor's, with ``P = W - w w'/sum(w)``):

    * DL ``(Q - (k-1)) / tr(P)`` with ``w = 1/v``;
    * HS ``(Q - k) / sum(w)``;
    * HE ``(sum (y - ybar)^2 - (k-1)/k sum v) / (k - 1)``;
    * SJ ``tau0 Q(tau0) / (k - 1)`` with ``tau0 = mean((y - ybar)^2)``.

    ML, REML and EB use Fisher scoring from the (truncated) HE estimate with step halving
    at the zero boundary, exactly as ``rma.uni``; a row that has not converged after
    ``max_iter`` steps gets the root of its estimating equation by :func:`bracketed_root`
    instead. PM is the root of ``Q(tau2) = k - 1`` (zero if ``Q(0) < k - 1``).
    """
    method = str(method).upper()
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    b = yi if isinstance(yi, BatchInput) else as_batch(yi, vi, mask)
    m = b.yi.shape[0]
    k = b.k.astype(float)
    nan = np.full(m, np.nan)
    iters = np.zeros(m, dtype=int)
    ok = np.ones(m, dtype=bool)
    if method == "FE":
        return Tau2Fit(np.zeros(m), nan, ok, iters)
    multi = b.k >= 2
    y = _centered(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method in ("DL", "HS"):
            w = fixed_weights(b)
            q = generalized_q(b, np.zeros(m))
            trp = trace_p(w)
            sw = w.sum(axis=1)
            pp = _sum_p2(w)
            if method == "DL":
                tau2 = np.maximum((q - (k - 1)) / trp, 0.0)
                se = np.sqrt((2 * (k - 1) + 4 * tau2 * trp + 2 * tau2**2 * pp) / trp**2)
            else:
                tau2 = np.maximum((q - k) / sw, 0.0)
                se = np.sqrt((2 * (k - 1) + 4 * tau2 * trp + 2 * tau2**2 * pp) / sw**2)
        elif method == "HE":
            tau2, v, sv, tr_pv = _he(b, y)
            tau2 = np.maximum(tau2, 0.0)
            # sum(PV * t(PV)) with P = I - J/k: sum v^2 (1 - 2/k) + (sum v)^2 / k^2
            s_pv = (v * v).sum(axis=1) * (1 - 2 / k) + sv**2 / k**2
            se = np.sqrt((2 * s_pv + 4 * tau2 * tr_pv + 2 * tau2**2 * (k - 1)) / (k - 1) ** 2)
        elif method == "SJ":
            dev = np.where(b.mask, y - (y.sum(axis=1) / k)[:, None], 0.0)
            tau0 = (dev * dev).sum(axis=1) / k
            w = re_weights(b, tau0)
            q = generalized_q(b, tau0)
            tau2 = np.maximum(tau0 * q / (k - 1), 0.0)
            v = np.where(b.mask, b.vi, 0.0)
            one = np.where(b.mask, 1.0, 0.0)
            s_pvpv = _sum_p2(w, v, v)
            s_pvp = _sum_p2(w, one, v)
            s_pp = _sum_p2(w)
            se = np.sqrt(tau0**2 / (k - 1) ** 2
                         * (2 * s_pvpv + 4 * tau2 * s_pvp + 2 * tau2**2 * s_pp))
        elif method == "PM":
            tau2, ok = _paule_mandel(b, y)
            w = re_weights(b, tau2)
            se = np.sqrt(2 * k**2 / (k - 1)) / w.sum(axis=1)
        else:  # ML, REML, EB
            tau2, ok, iters = _fisher_scoring(b, y, method, threshold, max_iter)
            w = re_weights(b, tau2)
            if method == "ML":
                se = np.sqrt(2 / (w * w).sum(axis=1))
            elif method == "REML":
                se = np.sqrt(2 / _sum_p2(w))
            else:
                se = np.sqrt(2 * k**2 / (k - 1)) / w.sum(axis=1)
    tau2 = np.where(multi, tau2, 0.0)
    se = np.where(multi, se, np.nan)
    ok = np.where(multi, ok, True)
    return Tau2Fit(tau2, se, ok, np.where(multi, iters, 0))


def _upper_bracket(b: BatchInput, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A tau² where the generalised Q has certainly fallen below ``target``.

    ``Q(tau2) <= sum (y - ybar)^2 / (v + tau2) <= sum (y - ybar)^2 / tau2`` because the
    weighted mean minimises the weighted sum of squares.
    """
    k = np.maximum(b.k, 1)
    dev = np.where(b.mask, y - (y.sum(axis=1) / k)[:, None], 0.0)
    ss = (dev * dev).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = 2.0 * ss / target
    return np.where(np.isfinite(hi) & (hi > 0), hi, 1.0) + 1e-300


def _solve_q_equals(b: BatchInput, y: np.ndarray, rows: np.ndarray,
                    target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tau² solving ``Q(tau2) = target`` for ``rows`` whose ``Q(0) > target``."""
    if rows.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    yy, vv, mm = y[rows], b.vi[rows], b.mask[rows]
    hi = _upper_bracket(BatchInput(yy, vv, mm, b.k[rows]), yy, target)
    q0, _ = _q_and_slope(yy, vv, mm, np.zeros(rows.size))
    qhi, _ = _q_and_slope(yy, vv, mm, hi)

    def f(x, sub):
        q, dq = _q_and_slope(yy[sub], vv[sub], mm[sub], x)
        return q - target[sub], dq

    return bracketed_root(f, np.zeros(rows.size), hi, q0 - target, qhi - target)


def _paule_mandel(b: BatchInput, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = b.yi.shape[0]
    k = b.k.astype(float)
    q0 = generalized_q(BatchInput(y, b.vi, b.mask, b.k), np.zeros(m))
    tau2 = np.zeros(m)
    ok = np.ones(m, dtype=bool)
    rows = np.flatnonzero((b.k >= 2) & (q0 > k - 1))
    root, conv = _solve_q_equals(b, y, rows, (k - 1)[rows])
    tau2[rows] = root
    ok[rows] = conv
    return tau2, ok


def _score_parts(y, v, m, tau2, method):
    """Fisher-scoring step (numerator / information) of ML, REML or EB at ``tau2``."""
    w = np.where(m, 1.0 / (v + tau2[:, None]), 0.0)
    sw = w.sum(axis=1)
    r = y - ((w * y).sum(axis=1) / sw)[:, None]
    wr = w * r
    if method == "ML":
        num = (wr * wr).sum(axis=1) - sw
        info = (w * w).sum(axis=1)
    elif method == "REML":
        num = (wr * wr).sum(axis=1) - trace_p(w)
        info = _sum_p2(w)
    else:  # EB: Morris's estimating equation Q(tau2) k/(k-1) = k
        k = m.sum(axis=1)
        num = (wr * r).sum(axis=1) * k / (k - 1) - k
        info = sw
    return num, info


def _fisher_scoring(b: BatchInput, y: np.ndarray, method: str, threshold: float,
                    max_iter: int):
    """Vectorised Fisher scoring of rma.uni with a per-row convergence mask."""
    m = b.yi.shape[0]
    he, *_ = _he(b, y)
    tau2 = np.where(b.k >= 2, np.maximum(he, 0.0), 0.0)
    tau2 = np.where(np.isfinite(tau2), tau2, 0.0)
    iters = np.zeros(m, dtype=int)
    converged = b.k < 2
    active = np.flatnonzero(~converged)
    for _ in range(max_iter):
        if active.size == 0:
            break
        t = tau2[active]
        num, info = _score_parts(y[active], b.vi[active], b.mask[active], t, method)
        adj = num / info
        adj = np.where(np.isfinite(adj), adj, 0.0)
        # step halving keeps tau2 >= 0 (as rma.uni); at tau2 = 0 a negative step vanishes
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
        new = t + adj
        iters[active] += 1
        tau2[active] = new
        done = np.abs(adj) <= threshold
        converged[active[done]] = True
        active = active[~done]
    if method in ("ML", "REML"):
        tau2 = _ll0_check(b, y, tau2, converged, method, threshold)
    if active.size:
        # Fisher scoring did not settle: solve the estimating equation by bracketing.
        root, ok = _score_root(b, y, active, method)
        tau2[active] = root
        converged[active] = ok
    return tau2, converged, iters


def _ll0_check(b, y, tau2, converged, method, threshold):
    """rma.uni's check: set tau2 = 0 when the likelihood is larger there (local maximum)."""
    rows = np.flatnonzero(converged & (b.k >= 2) & (tau2 > threshold))
    if rows.size == 0:
        return tau2
    sub = BatchInput(y[rows], b.vi[rows], b.mask[rows], b.k[rows])
    ll0 = log_likelihood(sub, np.zeros(rows.size), reml=method == "REML")
    ll1 = log_likelihood(sub, tau2[rows], reml=method == "REML")
    out = tau2.copy()
    # metafor's control default tol = .Machine$double.eps^0.25
    out[rows[ll0 - ll1 > _EPS ** 0.25]] = 0.0
    return out


def _score_root(b: BatchInput, y: np.ndarray, rows: np.ndarray, method: str):
    """Fallback: the root of the ML / REML / EB estimating equation on a bracket."""
    k = b.k[rows].astype(float)
    if method == "EB":
        # EB solves Q(tau2) = k - 1, the Paule-Mandel equation
        q0, _ = _q_and_slope(y[rows], b.vi[rows], b.mask[rows], np.zeros(rows.size))
        out = np.zeros(rows.size)
        ok = np.ones(rows.size, dtype=bool)
        pos = np.flatnonzero(q0 > k - 1)
        root, conv = _solve_q_equals(b, y, rows[pos], k[pos] - 1)
        out[pos], ok[pos] = root, conv
        return out, ok
    yy, vv, mm = y[rows], b.vi[rows], b.mask[rows]

    def f(x, sub):
        num, _ = _score_parts(yy[sub], vv[sub], mm[sub], x, method)
        return num, None

    s0, _ = _score_parts(yy, vv, mm, np.zeros(rows.size), method)
    hi = _upper_bracket(BatchInput(yy, vv, mm, b.k[rows]), yy, np.maximum(k - 1, 1.0))
    hi = hi + vv.max(axis=1)
    shi, _ = _score_parts(yy, vv, mm, hi, method)
    for _ in range(60):  # widen until the score is negative
        bad = shi >= 0
        if not bad.any():
            break
        hi = np.where(bad, hi * 4, hi)
        shi[bad], _ = _score_parts(yy[bad], vv[bad], mm[bad], hi[bad], method)
    out = np.zeros(rows.size)
    ok = np.ones(rows.size, dtype=bool)
    pos = np.flatnonzero(s0 > 0)
    if pos.size:
        root, conv = bracketed_root(lambda x, sub: f(x, pos[sub]),
                                    np.zeros(pos.size), hi[pos], s0[pos], shi[pos])
        out[pos], ok[pos] = root, conv & (shi[pos] < 0)
    return out, ok


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
    b = yi if isinstance(yi, BatchInput) else as_batch(yi, vi, mask)
    alpha = _alpha(level)
    m = b.yi.shape[0]
    y = _centered(b)
    df = (b.k - 1).astype(float)
    multi = b.k >= 2
    q0 = np.where(multi, generalized_q(BatchInput(y, b.vi, b.mask, b.k), np.zeros(m)), np.nan)
    low = np.where(multi, 0.0, np.nan)
    high = np.where(multi, 0.0, np.nan)
    conv = np.ones(m, dtype=bool)
    with np.errstate(invalid="ignore"):
        crit_low = stats.chi2.isf(alpha / 2, df)   # upper quantile -> lower bound
        crit_high = stats.chi2.ppf(alpha / 2, df)  # lower quantile -> upper bound
    for out, crit in ((low, crit_low), (high, crit_high)):
        rows = np.flatnonzero(multi & (q0 > crit))
        root, ok = _solve_q_equals(b, y, rows, crit[rows])
        out[rows] = root
        conv[rows] &= ok
    return QProfile(low, high, conv)


def log_likelihood(b: BatchInput, tau2, *, reml: bool) -> np.ndarray:
    """Log-likelihood of the random-effects model at ``tau2`` (metafor's ``logLik``).

    ML: ``-k/2 log 2pi - 1/2 sum log(v + tau2) - 1/2 RSS``; REML adds
    ``+1/2 log 2pi + 1/2 log k - 1/2 log sum(w)`` (metafor's full REML likelihood with
    ``REMLf = TRUE``), where ``RSS = sum w (y - mu)^2``.
    """
    t = np.asarray(tau2, dtype=float)
    k = b.k.astype(float)
    w = re_weights(b, t)
    sw = w.sum(axis=1)
    r = b.yi - ((w * b.yi).sum(axis=1) / sw)[:, None]
    rss = (w * r * r).sum(axis=1)
    logv = np.where(b.mask, np.log(b.vi + t[:, None]), 0.0).sum(axis=1)
    ll = -0.5 * k * np.log(2 * np.pi) - 0.5 * logv - 0.5 * rss
    if reml:
        ll = ll + 0.5 * np.log(2 * np.pi) + 0.5 * np.log(k) - 0.5 * np.log(sw)
    return ll


def _alpha(level: float) -> float:
    """metafor's ``.level``: 95 -> 0.05; a value in (0, 1) is a proportion (0.95 -> 0.05)."""
    level = float(level)
    return (100.0 - level) / 100.0 if level > 1 else 1.0 - level

