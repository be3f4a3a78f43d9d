"""Mixed-effects meta-regression (one or more site-level moderators), REML by default.

The model is ``y_i = x_i' beta + u_i + e_i`` with ``u_i ~ N(0, tau2)`` (residual
between-site heterogeneity) and ``e_i ~ N(0, v_i)`` with the sampling variances ``v_i``
known, as in Raudenbush (2009), "Analyzing effect sizes: random-effects models", in *The
Handbook of Research Synthesis and Meta-Analysis*, and Viechtbauer (2010), "Conducting
meta-analyses in R with the metafor package", J. Stat. Softw. 36(3). Results reproduce
``metafor::rma(yi, vi, mods = ~ ..., method = "REML")`` (see ``tests/reference``).

Besides :func:`meta_regression` (the user-facing call with named moderators, numeric or
categorical) the module exposes :func:`fit_rma`, a fit on an explicit design matrix that
the diagnostics (Egger's regression test, influence refits, the subgroup model with a
common tau²) reuse, and :func:`fit_batch`, a vectorised fit of many masked
intercept-only analyses at once (the refits of leave-one-out, influence and cumulative
meta-analysis are one call of it, not a Python loop of fits).

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

# scipy.stats and scipy.optimize are imported where used: importing them at module level
# costs more than `fedsynth meta --by` computes for thousands of analyses (see
# benchmarks/README.md); the distribution tails come from the pooling layer's scipy.special
# wrappers.
from fedsynth.meta.stats import chi2_sf, norm_isf, norm_sf, t_isf, t_sf

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none

__all__ = [
    "Bounds",
    "MetaRegressionResult",
    "BatchFit",
    "fit_rma",
    "fit_batch",
    "meta_regression",
    "design_matrix",
    "validate_yi_vi",
]

#: tau² estimators of meta-regression (metafor's ``rma.uni`` with ``mods``).
SUPPORTED_METHODS = ("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")

# Fisher scoring stops when |Δtau²| falls below this (metafor: 1e-5 by default; the
# reference values were produced with 1e-12, and we must match them to 1e-6 relative).
_TOL = 1e-12
_MAX_ITER = 500
# metafor's control$tol (.Machine$double.eps^0.25), used by its 'll0check'
_LL0_TOL = float(np.finfo(float).eps ** 0.25)


@dataclass(frozen=True)
class Bounds:
    """Per-coefficient (or per-site) interval bounds: ``low[i]`` to ``high[i]``."""

    low: np.ndarray
    high: np.ndarray

    def __iter__(self):
        return iter((self.low, self.high))


def validate_yi_vi(yi: Any, vi: Any, *, min_k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check effect sizes and sampling variances; return them as float arrays.

    Raises :class:`fedsynth.errors.InputError` naming the field and the offending value:
    non-finite values, non-positive variances, mismatched lengths, too few studies.
    """
    try:
        y = np.asarray(yi, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"yi: not numeric ({yi!r})") from exc
    try:
        v = np.asarray(vi, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"vi: not numeric ({vi!r})") from exc
    if y.shape != v.shape:
        raise InputError(f"yi and vi: lengths differ ({y.size} != {v.size})")
    if y.size < min_k:
        raise InputError(f"yi: {y.size} studies given, at least {min_k} needed")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise InputError(f"yi[{bad[0]}]: must be finite, got {y[bad[0]]!r}")
    bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
    if bad.size:
        raise InputError(f"vi[{bad[0]}]: must be a finite positive variance, got {v[bad[0]]!r}")
    return y, v


def _check_method(method: str) -> str:
    m = str(method).upper()
    if m not in SUPPORTED_METHODS:
        raise InputError(
            f"method: {method!r} is not supported here (choose one of {', '.join(SUPPORTED_METHODS)})")
    return m


def _check_test(test: str) -> str:
    t = str(test).lower()
    if t not in ("z", "knha"):
        raise InputError(f"test: {test!r} is not 'z' or 'knha'")
    return t


def _check_level(level: float) -> float:
    lv = float(level)
    if not (0.0 < lv < 100.0):
        raise InputError(f"level: {level!r} must lie strictly between 0 and 100")
    return lv


# ---------------------------------------------------------------------------------------
# single fit on a design matrix
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proj:
    """The projection ``P = W - W X (X'WX)^-1 X'W`` for diagonal weights ``w``, never
    formed as a k x k matrix (memory and time O(k p²), so 10,000 studies are cheap).

    ``vb`` is ``(X'WX)^-1``; ``Py`` is ``P y``; ``trP`` is ``tr(P)`` and ``trPP`` is
    ``tr(P P)``, from the identities ``tr(P) = sum w - tr(A X'W²X)`` and
    ``tr(PP) = sum w² - 2 tr(A X'W³X) + tr(A X'W²X A X'W²X)`` with ``A = (X'WX)^-1``.
    """

    vb: np.ndarray
    Py: np.ndarray
    trP: float
    trPP: float


def _proj(X: np.ndarray, w: np.ndarray, y: np.ndarray) -> _Proj:
    """See :class:`_Proj`."""
    XtW = X.T * w
    vb = np.linalg.inv(XtW @ X)
    Py = w * y - XtW.T @ (vb @ (XtW @ y))
    B2 = vb @ ((X.T * (w * w)) @ X)          # A X'W²X
    B3 = vb @ ((X.T * (w * w * w)) @ X)      # A X'W³X
    trP = float(w.sum() - np.trace(B2))
    trPP = float(np.sum(w * w) - 2.0 * np.trace(B3) + np.sum(B2 * B2.T))
    return _Proj(vb=vb, Py=Py, trP=trP, trPP=trPP)


def _tau2_exact(y: np.ndarray, v: np.ndarray, X: np.ndarray, method: str,
                threshold: float = _TOL) -> float:
    """Exact (ML/REML) maximiser of the likelihood in tau², truncated at zero.

    Fisher scoring from the Hedges (method-of-moments) start with metafor's step halving
    at the boundary, stopped when |Δtau²| < ``threshold`` (1e-12: the exact maximiser;
    metafor's default is 1e-5, which :func:`fit_rma` can emulate). When it does not
    converge, the score equation is solved by Brent's method on a bracket, which always
    converges because the score changes sign on [0, upper] (or tau² = 0).
    """
    k, p = X.shape

    def score_info(t2: float) -> tuple[float, float]:
        w = 1.0 / (v + t2)
        pr = _proj(X, w, y)
        Py = pr.Py
        if method == "REML":
            # dlogL/dtau2 = (y'PPy - tr P)/2 ; expected information tr(PP)/2
            return float(Py @ Py - pr.trP), pr.trPP
        # ML: residuals from the GLS fit, score sum w^2 r^2 - sum w, information sum w^2
        return float(Py @ Py - w.sum()), float(np.sum(w * w))

    # starting value: Hedges (method of moments, OLS residuals), as metafor does
    t2 = _tau2_he(y, v, X) if k > p else 0.0
    converged = False
    for _ in range(_MAX_ITER):
        s, info = score_info(t2)
        if info <= 0 or not np.isfinite(s):
            break
        adj = s / info
        while t2 + adj < 0.0:        # metafor halves a step that would leave [0, inf)
            adj /= 2.0
        new = t2 + adj
        if abs(new - t2) < threshold:
            t2 = max(0.0, new)
            converged = True
            break
        t2 = new
    if converged:
        return _ll0_check(y, v, X, method, t2, threshold)

    def score(t2v: float) -> float:
        return score_info(t2v)[0]

    if score(0.0) <= 0.0:
        return 0.0
    upper = max(1.0, 10.0 * float(np.var(y)) + float(np.max(v)))
    while score(upper) > 0.0:
        upper *= 4.0
        if upper > 1e12:
            raise InputError("tau2: the likelihood has no finite maximum for these data")
    from scipy import optimize

    root = float(optimize.brentq(score, 0.0, upper, xtol=1e-15, rtol=1e-14, maxiter=500))
    return _ll0_check(y, v, X, method, root, threshold)


def _loglik(y: np.ndarray, v: np.ndarray, X: np.ndarray, method: str, t2: float) -> float:
    """(Restricted) log-likelihood up to a constant that does not depend on tau²."""
    w = 1.0 / (v + t2)
    pr = _proj(X, w, y)
    ll = -0.5 * float(np.sum(np.log(v + t2))) - 0.5 * float(y @ pr.Py)
    if method == "REML":
        ll += 0.5 * float(np.linalg.slogdet(pr.vb)[1])   # -1/2 log det(X'WX)
    return ll


def _ll0_check(y: np.ndarray, v: np.ndarray, X: np.ndarray, method: str, t2: float,
               threshold: float) -> float:
    """metafor's check: Fisher scoring can stop at a stationary point that is not the
    maximum; when the likelihood at tau² = 0 is larger (by more than eps^(1/4), metafor's
    tolerance), the estimate is 0."""
    if t2 <= threshold:
        return t2
    if _loglik(y, v, X, method, 0.0) - _loglik(y, v, X, method, t2) > _LL0_TOL:
        return 0.0
    return t2


def _tau2_dl(y: np.ndarray, v: np.ndarray, X: np.ndarray) -> float:
    """DerSimonian-Laird (1986) moment estimator generalised to meta-regression."""
    k, p = X.shape
    w = 1.0 / v
    pr = _proj(X, w, y)
    Q = float(y @ pr.Py)
    return max(0.0, (Q - (k - p)) / pr.trP)


def _q_gen(y: np.ndarray, v: np.ndarray, X: np.ndarray, t2: float) -> float:
    """Generalised residual Q statistic y'P(tau²)y, decreasing in tau²."""
    return float(y @ _proj(X, 1.0 / (v + t2), y).Py)


def _tau2_pm(y: np.ndarray, v: np.ndarray, X: np.ndarray) -> float:
    """Paule & Mandel (1982): the root of y'P(tau²)y = k - p (0 when Q(0) < k - p)."""
    k, p = X.shape
    target = k - p
    if _q_gen(y, v, X, 0.0) <= target:
        return 0.0
    upper = max(1.0, 10.0 * float(np.var(y)) + float(np.max(v)))
    while _q_gen(y, v, X, upper) > target:
        upper *= 4.0
    from scipy import optimize

    return float(optimize.brentq(lambda t: _q_gen(y, v, X, t) - target, 0.0, upper,
                                 xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))


def _tau2_he(y: np.ndarray, v: np.ndarray, X: np.ndarray) -> float:
    """Hedges (1983): (OLS residual sum of squares - tr(P V)) / (k - p), truncated at 0,
    with the hat matrix diagonal computed row-wise (no k x k matrix)."""
    k, p = X.shape
    XtX_inv = np.linalg.pinv(X.T @ X)
    r = y - X @ (XtX_inv @ (X.T @ y))
    hat = np.einsum("ij,jk,ik->i", X, XtX_inv, X)
    return max(0.0, float((r @ r - np.sum(v * (1.0 - hat))) / (k - p)))


def _tau2_moments(y: np.ndarray, v: np.ndarray, X: np.ndarray, method: str) -> float:
    """Closed-form estimators with moderators, as in metafor's ``rma.uni``.

    HS: Hunter & Schmidt (2004), ``(Q - k) / sum(1/v)``; HE: Hedges (1983), OLS residual
    sum of squares minus tr(P V), over k - p; SJ: Sidik & Jonkman (2005), one weighted
    step from ``tau0 = var(y) (k-1)/k``.
    """
    k, p = X.shape
    if method == "HS":
        w = 1.0 / v
        return max(0.0, (float(y @ _proj(X, w, y).Py) - k) / float(w.sum()))
    if method == "HE":
        return _tau2_he(y, v, X)
    # SJ
    tau0 = float(np.mean((y - y.mean()) ** 2))
    if tau0 <= 0.0:
        return 0.0
    return max(0.0, tau0 * _q_gen(y, v, X, tau0) / (k - p))


@dataclass(frozen=True)
class MetaRegressionResult:
    """A mixed-effects meta-regression fit (``rma(yi, vi, mods = ...)`` in metafor).

    Attributes
    ----------
    names
        Coefficient names (``"intrcpt"`` first, as metafor prints them).
    coef, se, stat, pval
        Coefficients with the standard errors, statistics and p-values of the chosen
        test (``z``: normal; ``knha``: Knapp-Hartung t with k - p df).
    z_se, z_stat, z_pval
        The Wald z test values, always computed.
    knha_se, knha_stat, knha_pval
        The Knapp & Hartung (2003) values, always computed (t with k - p df).
    QM, QM_df, QMp
        Omnibus Wald chi-square test of the moderators (all coefficients but the
        intercept); ``None`` for an intercept-only model.
    knha_F, knha_Fp
        The Knapp-Hartung F test of the moderators (df ``QM_df`` and ``k - p``).
    QE, QE_df, QEp
        Test of residual heterogeneity (weights 1/vi).
    tau2, I2, H2
        Residual between-site variance and metafor's I² / H² for a model with moderators.
    R2
        Pseudo-R² in percent: the share of tau² (intercept-only model, same method)
        accounted for by the moderators, truncated at 0 (Raudenbush 2009); ``None``
        for an intercept-only model.
    vb
        Covariance matrix of the coefficients under the chosen test.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    z_se: np.ndarray
    z_stat: np.ndarray
    z_pval: np.ndarray
    knha_se: np.ndarray
    knha_stat: np.ndarray
    knha_pval: np.ndarray
    QM: float | None
    QM_df: int
    QMp: float | None
    knha_F: float | None
    knha_Fp: float | None
    QE: float
    QE_df: int
    QEp: float
    tau2: float
    I2: float
    H2: float
    R2: float | None
    k: int
    p: int
    method: str
    test: str
    level: float
    vb: np.ndarray = field(repr=False)
    s2w: float = 1.0

    def confidence_interval(self) -> Bounds:
        """Confidence bounds of the coefficients at ``level`` (under the chosen test)."""
        return Bounds(self.ci_lb, self.ci_ub)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the reference's field names (``coef``, ``QM``, ``knha_F``...)."""
        def lst(a: np.ndarray) -> list[float | None]:
            return [finite_or_none(x) for x in a]
        return _json_safe({
            "names": list(self.names), "k": self.k, "method": self.method, "test": self.test,
            "coef": lst(self.coef), "se": lst(self.z_se), "zval": lst(self.z_stat),
            "pval": lst(self.z_pval), "ci_lb": lst(self.ci_lb), "ci_ub": lst(self.ci_ub),
            "QM": self.QM, "QM_df": self.QM_df, "QMp": self.QMp,
            "QE": self.QE, "QE_df": self.QE_df, "QEp": self.QEp,
            "tau2": self.tau2, "I2": self.I2, "H2": self.H2, "R2": self.R2,
            "knha_se": lst(self.knha_se), "knha_tval": lst(self.knha_stat),
            "knha_pval": lst(self.knha_pval), "knha_F": self.knha_F, "knha_Fp": self.knha_Fp,
        })


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf floats by None so that strict JSON can carry the dict."""
    return {k: (finite_or_none(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in d.items()}


def fit_rma(yi: Any, vi: Any, X: Any | None = None, *, names: Sequence[str] | None = None,
            method: str = "REML", test: str = "z", level: float = 95.0,
            tau2: float | None = None, compute_r2: bool = True,
            threshold: float = _TOL) -> MetaRegressionResult:
    """Fit the mixed-effects model on an explicit design matrix.

    Parameters
    ----------
    yi, vi
        Effect sizes and sampling variances (length k).
    X
        Design matrix (k, p) *including* the intercept column; ``None`` = intercept only.
    names
        Coefficient names (default ``intrcpt, x1, x2, ...``).
    method
        ``REML`` (default), ``ML``, ``EB``, ``PM``, ``DL``, ``HE``, ``HS``, ``SJ`` or ``FE``.
    test
        ``z`` or ``knha`` (Knapp & Hartung 2003, "Improved tests for a random effects
        meta-regression with a single covariate", Stat. Med. 22:2693-2710).
    tau2
        Fix tau² instead of estimating it.
    compute_r2
        Fit the intercept-only model too and report the pseudo-R².
    threshold
        Convergence threshold of Fisher scoring on tau² (ML/REML). The default (1e-12)
        gives the exact maximiser; 1e-5 reproduces metafor's default ``rma`` control,
        which some metafor functions (``trimfill``) use internally.
    """
    y, v = validate_yi_vi(yi, vi)
    method = _check_method(method)
    test = _check_test(test)
    level = _check_level(level)
    k = y.size
    Xm = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float)
    if Xm.ndim == 1:
        Xm = Xm[:, None]
    if Xm.shape[0] != k:
        raise InputError(f"X: {Xm.shape[0]} rows for {k} studies")
    p = Xm.shape[1]
    if not np.all(np.isfinite(Xm)):
        raise InputError("moderators: contain missing or non-finite values")
    if np.linalg.matrix_rank(Xm) < p:
        raise InputError("moderators: the design matrix is rank deficient "
                         "(a moderator is constant or collinear with others)")
    if k <= p and test == "knha":
        raise InputError(f"test: knha needs more studies ({k}) than coefficients ({p})")
    if k < p:
        raise InputError(f"moderators: {p} coefficients but only {k} studies")
    nm = tuple(names) if names is not None else ("intrcpt",) + tuple(f"x{j}" for j in range(1, p))

    if tau2 is not None:
        t2 = float(tau2)
        if not np.isfinite(t2) or t2 < 0:
            raise InputError(f"tau2: must be a finite non-negative number, got {tau2!r}")
    elif method == "FE" or k == p:
        t2 = 0.0
    elif method == "DL":
        t2 = _tau2_dl(y, v, Xm)
    elif method in ("HS", "HE", "SJ"):
        t2 = _tau2_moments(y, v, Xm, method)
    elif method in ("PM", "EB"):
        # the empirical Bayes estimator (Morris 1983) solves the same estimating equation
        # as Paule-Mandel, y'P(tau²)y = k - p, which metafor reaches by iteration
        t2 = _tau2_pm(y, v, Xm)
    else:
        t2 = _tau2_exact(y, v, Xm, method, threshold)

    w = 1.0 / (v + t2)
    vb_z = _proj(Xm, w, y).vb
    beta = vb_z @ (Xm.T * w) @ y
    resid = y - Xm @ beta

    # residual heterogeneity test (fixed-effect weights)
    w0 = 1.0 / v
    pr0 = _proj(Xm, w0, y)
    QE = float(y @ pr0.Py)
    QE_df = k - p
    QEp = float(chi2_sf(QE, QE_df)) if QE_df > 0 else 1.0
    # metafor's "typical" within-study variance for models with moderators
    if QE_df > 0 and method == "FE" and tau2 is None:
        # metafor's FE fit reports Higgins & Thompson's I² = (QE - df) / QE and H² = QE/df
        I2 = 100.0 * max(0.0, (QE - QE_df) / QE) if QE > 0 else 0.0
        H2 = QE / QE_df
    elif QE_df > 0:
        s2 = QE_df / pr0.trP
        I2 = 100.0 * t2 / (t2 + s2)
        H2 = (t2 + s2) / s2
    else:
        I2, H2 = 0.0, 1.0

    crit_z = float(norm_isf((1 - level / 100) / 2))
    z_se = np.sqrt(np.diag(vb_z))
    z_stat = beta / z_se
    z_pval = 2 * norm_sf(np.abs(z_stat))

    df = k - p
    if df > 0:
        # Knapp-Hartung: scale the covariance by the weighted residual mean square
        s2w = float(np.sum(w * resid**2) / df)
        vb_k = vb_z * s2w
        knha_se = np.sqrt(np.diag(vb_k))
        # identical effects give s2w = 0 and so a zero Knapp-Hartung se: the statistic is
        # then +-inf (or nan for a zero coefficient), as in metafor, not a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            knha_stat = beta / knha_se
        knha_pval = 2 * t_sf(np.abs(knha_stat), df)
    else:
        s2w = float("nan")
        vb_k = vb_z * np.nan
        knha_se = knha_stat = knha_pval = np.full(p, np.nan)

    QM = QMp = knha_F = knha_Fp = None
    m = p - 1
    if m >= 1:
        b = beta[1:]
        QM = float(b @ np.linalg.solve(vb_z[1:, 1:], b))
        QMp = float(chi2_sf(QM, m))
        if df > 0:
            knha_F = float(b @ np.linalg.solve(vb_k[1:, 1:], b) / m)
            knha_Fp = float(special.fdtrc(m, df, knha_F))

    R2 = None
    if compute_r2 and p > 1 and tau2 is None and method != "FE":
        t2_re = fit_rma(y, v, None, method=method, compute_r2=False).tau2
        # metafor: 100 * max(0, (tau2_RE - tau2_ME) / tau2_RE), 0 when tau2_RE is 0
        R2 = 0.0 if t2_re <= 0 else 100.0 * max(0.0, (t2_re - t2) / t2_re)

    if test == "z":
        se, stat, pval, vb, crit, s2 = z_se, z_stat, z_pval, vb_z, crit_z, 1.0
    else:
        crit = float(t_isf((1 - level / 100) / 2, df))
        se, stat, pval, vb, s2 = knha_se, knha_stat, knha_pval, vb_k, s2w
    return MetaRegressionResult(
        names=nm, coef=beta, se=se, stat=stat, pval=pval,
        ci_lb=beta - crit * se, ci_ub=beta + crit * se,
        z_se=z_se, z_stat=z_stat, z_pval=z_pval,
        knha_se=knha_se, knha_stat=knha_stat, knha_pval=knha_pval,
        QM=QM, QM_df=m, QMp=QMp, knha_F=knha_F, knha_Fp=knha_Fp,
        QE=QE, QE_df=QE_df, QEp=QEp, tau2=t2, I2=I2, H2=H2, R2=R2,
        k=k, p=p, method=method, test=test, level=level, vb=vb, s2w=s2)


# ---------------------------------------------------------------------------------------
# design matrices from named moderators
# ---------------------------------------------------------------------------------------


def _is_numeric(values: Sequence[Any]) -> bool:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isfinite(arr)))


def design_matrix(moderators: Mapping[str, Sequence[Any]], k: int,
                  categorical: Sequence[str] = ()) -> tuple[np.ndarray, tuple[str, ...]]:
    """Build the design matrix of ``~ m1 + m2 + ...`` with an intercept, as R would.

    A moderator is categorical when named in ``categorical`` or when its values are not
    all numbers; it is then dummy-coded against its first level in sorted order
    (R's ``factor`` default, treatment contrasts), columns named ``NAMElevel``.
    """
    cols: list[np.ndarray] = [np.ones(k)]
    names: list[str] = ["intrcpt"]
    if not moderators:
        return np.ones((k, 1)), ("intrcpt",)
    for name, values in moderators.items():
        vals = list(values)
        if len(vals) != k:
            raise InputError(f"moderator {name!r}: {len(vals)} values for {k} studies")
        missing = [i for i, x in enumerate(vals) if x is None or (isinstance(x, float) and np.isnan(x))
                   or (isinstance(x, str) and x.strip() == "")]
        if missing:
            raise InputError(f"moderator {name!r}: missing value in row {missing[0]}")
        if name not in categorical and _is_numeric(vals):
            col = np.asarray(vals, dtype=float)
            if np.ptp(col) == 0:
                raise InputError(f"moderator {name!r}: constant ({col[0]:g} at every site), "
                                 "so it cannot explain differences between sites")
            cols.append(col)
            names.append(str(name))
            continue
        labels = [str(x) for x in vals]
        levels = sorted(set(labels))
        if len(levels) < 2:
            raise InputError(f"moderator {name!r}: a single level ({levels[0]!r}) cannot be a moderator")
        for lvl in levels[1:]:
            cols.append(np.array([1.0 if x == lvl else 0.0 for x in labels]))
            names.append(f"{name}{lvl}")
    return np.column_stack(cols), tuple(names)


def meta_regression(yi: Any, vi: Any, moderators: Mapping[str, Sequence[Any]], *,
                    categorical: Sequence[str] = (), method: str = "REML", test: str = "z",
                    level: float = 95.0) -> MetaRegressionResult:
    """Meta-regression of site effects on named site-level moderators.

    Parameters
    ----------
    moderators
        ``{name: values}``, one value per site; numeric columns enter linearly,
        text columns (or those named in ``categorical``) as dummy variables.

    Returns
    -------
    MetaRegressionResult
        Coefficients with z and Knapp-Hartung tests, QM, QE, tau², I², R².
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    if not moderators:
        raise InputError("moderators: at least one moderator is needed")
    X, names = design_matrix(moderators, y.size, categorical)
    return fit_rma(y, v, X, names=names, method=method, test=test, level=level)


# ---------------------------------------------------------------------------------------
# vectorised batch of masked intercept-only fits
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFit:
    """Intercept-only fits of m masked analyses (row j uses the studies ``mask[j]``).

    Every field is an array of length m: ``k, estimate, se, tau2, Q, I2, H2``.
    """

    k: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    tau2: np.ndarray
    Q: np.ndarray
    I2: np.ndarray
    H2: np.ndarray


def _batch_sums(y: np.ndarray, v: np.ndarray, mask: np.ndarray, t2: np.ndarray):
    w = np.where(mask, 1.0 / (v + t2[:, None]), 0.0)
    sw = w.sum(axis=1)
    mu = (w * y).sum(axis=1) / sw
    return w, sw, mu


def fit_batch(yi: Any, vi: Any, mask: Any, *, method: str = "REML") -> BatchFit:
    """Fit ``m`` intercept-only random-effects models at once, one per row of ``mask``.

    ``yi``/``vi`` are (k,) or (m, k); ``mask`` is (m, k) with True where a study is in.
    Fisher scoring runs on all rows together (numpy, no Python loop over fits); the rare
    row that does not converge is finished by Brent's method on its score equation.
    """
    meth = str(method).upper()
    if meth in _POOL_ONLY_METHODS:
        return _fit_batch_by_pool(yi, vi, mask, meth)
    method = _check_method(method)
    msk = np.asarray(mask, dtype=bool)
    if msk.ndim != 2:
        raise InputError(f"mask: must be 2-dimensional, got shape {msk.shape}")
    # cells outside the mask may hold placeholders (even NaN): neutralise them
    y = np.where(msk, np.broadcast_to(np.asarray(yi, dtype=float), msk.shape), 0.0)
    v = np.where(msk, np.broadcast_to(np.asarray(vi, dtype=float), msk.shape), 1.0)
    kk = msk.sum(axis=1)
    if np.any(kk < 1):
        raise InputError("mask: every analysis needs at least one study")
    m = msk.shape[0]
    w0 = np.where(msk, 1.0 / v, 0.0)
    sw0 = w0.sum(axis=1)
    mu0 = (w0 * y).sum(axis=1) / sw0
    Q = (w0 * (y - mu0[:, None]) ** 2).sum(axis=1)
    sw0_2 = (w0**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.where(kk > 1, (kk - 1) * sw0 / (sw0**2 - sw0_2), np.nan)

    if method == "FE":
        t2 = np.zeros(m)
    elif method == "DL":
        with np.errstate(divide="ignore", invalid="ignore"):
            t2 = np.where(kk > 1, np.maximum(0.0, (Q - (kk - 1)) / (sw0 - sw0_2 / sw0)), 0.0)
    else:
        t2 = _batch_exact(y, v, msk, kk, method)

    w, sw, mu = _batch_sums(y, v, msk, t2)
    se = np.sqrt(1.0 / sw)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "FE":
            # metafor's FE fit: Higgins & Thompson's I² = (Q - df)/Q, H² = Q/df
            I2 = np.where((kk > 1) & (Q > 0), 100.0 * np.maximum(0.0, (Q - (kk - 1)) / Q), 0.0)
            H2 = np.where(kk > 1, Q / (kk - 1), 1.0)
        else:
            I2 = np.where(kk > 1, 100.0 * t2 / (t2 + s2), 0.0)
            H2 = np.where(kk > 1, (t2 + s2) / s2, 1.0)
    return BatchFit(k=kk, estimate=mu, se=se, tau2=t2, Q=Q, I2=I2, H2=H2)


#: tau² estimators only the pooling module implements (intercept-only models)
_POOL_ONLY_METHODS = ("HE", "HS", "SJ", "EB", "PM")


def _fit_batch_by_pool(yi: Any, vi: Any, mask: Any, method: str) -> BatchFit:
    """Batch refits with an estimator this module does not implement: one ``pool`` call."""
    from fedsynth.meta.pooling import pool

    msk = np.asarray(mask, dtype=bool)
    y = np.broadcast_to(np.asarray(yi, dtype=float), msk.shape)
    v = np.broadcast_to(np.asarray(vi, dtype=float), msk.shape)
    res = pool(y, v, mask=msk, method=method)
    return BatchFit(k=np.asarray(res.k), estimate=np.asarray(res.estimate), se=np.asarray(res.se),
                    tau2=np.asarray(res.tau2), Q=np.asarray(res.Q), I2=np.asarray(res.I2),
                    H2=np.asarray(res.H2))


def _batch_exact(y, v, msk, kk, method):
    """ML/REML tau² of every row by vectorised safeguarded Newton / Fisher scoring.

    Cells outside the mask carry ``v = inf`` (so their weight ``1/(v + tau²)`` is exactly
    0) and ``y = 0``: no mask operation inside the loop. Rows that have converged are
    dropped from the working arrays once they are at least half of them.
    """
    Y = np.where(msk, y, 0.0)
    V = np.where(msk, v, np.inf)
    # Hedges-type start (unweighted moments)
    with np.errstate(divide="ignore", invalid="ignore"):
        ybar = Y.sum(axis=1) / kk
        dev2 = np.where(msk, (Y - ybar[:, None]) ** 2, 0.0).sum(axis=1)
        t2 = np.where(kk > 1, np.maximum(0.0, dev2 / (kk - 1)
                                          - np.where(msk, v, 0.0).sum(axis=1) / kk), 0.0)
    done = kk <= 1

    def step(Ya, Va, t2a):
        """Newton step on the score where the likelihood is locally concave, else a
        Fisher-scoring step (both on 2 x the score, S = y'PPy - tr P for REML and
        y'PPy - sum w for ML; dS/dtau² = tr(PP) - 2 y'PPPy, resp. sum w² - 2 y'PPPy)."""
        w = 1.0 / (Va + t2a[:, None])
        sw = w.sum(axis=1)
        mu = (w * Ya).sum(axis=1) / sw
        a = w * (Ya - mu[:, None])                 # P y for an intercept-only model
        s_a2 = np.einsum("ij,ij->i", a, a)          # y'PPy
        wa = w * a
        aPa = np.einsum("ij,ij->i", wa, a) - wa.sum(axis=1) ** 2 / sw   # y'PPPy
        w2 = w * w
        s_w2 = w2.sum(axis=1)
        if method == "REML":
            s_w3 = np.einsum("ij,ij->i", w2, w)
            trP = sw - s_w2 / sw
            expected = s_w2 - 2 * s_w3 / sw + (s_w2 / sw) ** 2     # tr(PP)
            score = s_a2 - trP
        else:
            expected = s_w2
            score = s_a2 - sw
        observed = 2 * aPa - expected
        newton = score / np.where(observed > 0, observed, 1.0)
        fisher = score / expected
        use_newton = (observed > 0) & (t2a + newton >= 0)
        return np.where(use_newton, newton, fisher)

    active = np.flatnonzero(~done)
    Ya, Va = Y[active], V[active]
    for _ in range(_MAX_ITER):
        if active.size == 0:
            break
        new = np.maximum(0.0, t2[active] + step(Ya, Va, t2[active]))
        live = ~done[active]                      # rows kept for now but already done
        conv = np.abs(new - t2[active]) < _TOL
        t2[active[live]] = new[live]
        done[active[live & conv]] = True
        live = ~done[active]
        if live.sum() <= active.size // 2:        # compress the working arrays
            active, Ya, Va = active[live], Ya[live], Va[live]
    for j in np.flatnonzero(~done):  # rare: finish by a bracketed root search
        sel = msk[j]
        t2[j] = _tau2_exact(y[j, sel], v[j, sel], np.ones((int(kk[j]), 1)), method)
    # metafor's ll0check, on all rows at once (see _ll0_check)
    rows = np.flatnonzero((t2 > _TOL) & (kk > 1))
    if rows.size:
        ll0 = _batch_loglik(Y[rows], V[rows], msk[rows], np.zeros(rows.size), method)
        ll1 = _batch_loglik(Y[rows], V[rows], msk[rows], t2[rows], method)
        t2[rows[ll0 - ll1 > _LL0_TOL]] = 0.0
    return t2


def _batch_loglik(Y, V, msk, t2, method):
    """(Restricted) log-likelihood per row, up to a constant; ``V`` is inf off the mask."""
    w = 1.0 / (V + t2[:, None])
    sw = w.sum(axis=1)
    mu = (w * Y).sum(axis=1) / sw
    r2 = (Y - mu[:, None]) ** 2
    ll = (-0.5 * np.where(msk, np.log(np.where(msk, V, 1.0) + t2[:, None]), 0.0).sum(axis=1)
          - 0.5 * (w * r2).sum(axis=1))
    if method == "REML":
        ll -= 0.5 * np.log(sw)
    return ll
