"""Random-effects meta-analysis of 2x2 tables on the exact likelihood of the counts.

Why
---
The normal-normal model pools log odds ratios with their large-sample variances; with rare
events those variances depend on the counts, need continuity corrections at zero cells and
bias the pooled estimate (Stijnen, Hamza & Özdemir, "Random effects meta-analysis of event
outcome in the framework of the generalized linear mixed model with applications in sparse
data", *Stat Med* 29(29), 2010; Jackson et al., "A comparison of seven random-effects models
for meta-analyses that estimate the summary odds ratio", *Stat Med* 37(7), 2018). The
generalised linear mixed models below use the binomial (or hypergeometric) likelihood of the
counts themselves, so a table with a zero cell contributes what it knows without a
correction. They are metafor's ``rma.glmm(measure = "OR", model = ...)`` (Viechtbauer 2010):

``model = "UM.FS"`` (unconditional model, fixed study effects)
    ``logit p_i1 = alpha_i + beta + b_i / 2``, ``logit p_i2 = alpha_i - b_i / 2``,
    ``b_i ~ N(0, tau^2)``: a fixed intercept per study and a random treatment effect with
    metafor's ``coding = 1/2``. The likelihood integrates ``b_i`` out by adaptive
    Gauss-Hermite quadrature with ``nAGQ`` nodes (metafor's default 7) centred at the
    conditional mode and scaled by the curvature there, exactly as lme4's ``glmer``
    (Bates et al., *J Stat Softw* 67(1), 2015; Pinheiro & Bates, *J Comput Graph Stat*
    4(1), 1995).
``model = "CM.EL"`` (conditional model, exact likelihood)
    Conditioning on the margins of each table leaves Fisher's noncentral hypergeometric
    likelihood of ``a_i`` with log odds ratio ``theta_i ~ N(mu, tau^2)`` (Van Houwelingen,
    Zwinderman & Stijnen, *Stat Med* 12(24), 1993). Its integral over ``theta_i`` is computed
    by adaptive Gauss-Hermite quadrature with ``nAGQ_cm`` nodes (default 48; metafor uses R's
    ``integrate``, both are exact to ~1e-10 here).

Both are fitted by maximum likelihood. The statistics are those metafor reports for these
models: the Wald test of the pooled effect with ``se`` from the inverse observed information
of all parameters (as ``lme4::vcov`` and metafor's numerical Hessian), ``tau^2``, I² and H²
from ``tau^2`` and metafor's "typical" within-study variance
``vt = (k - 1) / (sum w - sum w^2 / sum w)`` of the escalc log odds ratios
(``w = 1/vi``, 1/2 added to tables with a zero cell), and two tests for heterogeneity
comparing the fixed-effect model with the saturated one (a log odds ratio per study): a
Wald-type test (``QE_Wld``, reported as ``Q``) and a likelihood-ratio test (``QE_LRT``), on
``k - 1`` df.

Zero cells in the saturated model: a table with a zero cell has an infinite study-specific
log odds ratio, where metafor's optimisers stop at some large value with a vanishing
weight. We report the limit, i.e. such a table adds nothing to ``QE_Wld`` and its supremum
(likelihood 1 for the conditional model, the observed proportions for the unconditional
one) to the saturated log-likelihood; the difference from metafor is below 1e-7.

Boundary: when the likelihood is maximised at ``tau^2 = 0`` we report ``tau2 = 0`` and the
fixed-effect standard error (the likelihood is even in ``tau``, so the information of
``tau`` decouples there); metafor's ``CM.EL`` optimiser fails to converge in that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.polynomial import hermite_e
from scipy import optimize, special, stats

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none as _num
from fedsynth.meta.mh import _heterogeneity, _level, _wald, as_tables
from fedsynth.vocabulary import GLMM_MODELS

__all__ = ["GLMM_MODELS", "GLMMResult", "glmm"]

#: Models of :func:`glmm`, named as metafor's ``rma.glmm(model = ...)``.


@lru_cache(maxsize=16)
def _gh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite rule for the standard normal density: nodes and weights summing to 1."""
    z, w = hermite_e.hermegauss(n)
    return z, w / w.sum()


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GLMMResult:
    """Maximum-likelihood random-effects GLMM of 2x2 tables (``metafor::rma.glmm``).

    Attributes
    ----------
    model
        ``"UM.FS"`` or ``"CM.EL"``; the measure is always the log odds ratio.
    estimate, se, zval, pval, ci_lb, ci_ub, level
        Pooled log odds ratio (``beta`` for UM.FS, ``mu`` for CM.EL), its standard error from
        the inverse observed information of all parameters, Wald test and interval.
    tau2, se_tau2
        ML estimate of the between-study variance of the log odds ratio; ``se_tau2`` by the
        delta method (CM.EL only, as metafor; ``nan`` for UM.FS).
    I2, H2, vt
        ``100 tau2 / (vt + tau2)``, ``tau2 / vt + 1`` and metafor's typical within-study
        variance ``vt``.
    QE_Wld, QEp_Wld, QE_LRT, QEp_LRT, QE_df
        Wald-type and likelihood-ratio tests of the fixed-effect against the saturated model.
    ll, ll_FE, ll_QE
        Log-likelihood of the random-effects, fixed-effect and saturated model.
    k, k_all, dropped
        Tables used, tables given, and labels of the uninformative tables (no events or only
        events in both groups).
    nAGQ
        Quadrature nodes per study.
    """

    model: str
    estimate: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    level: float
    tau2: float
    se_tau2: float
    I2: float
    H2: float
    vt: float
    QE_Wld: float
    QEp_Wld: float
    QE_LRT: float
    QEp_LRT: float
    QE_df: int
    ll: float
    ll_FE: float
    ll_QE: float
    k: int
    k_all: int
    dropped: tuple[str, ...] = ()
    nAGQ: int = 7

    measure = "OR"
    method = "GLMM"

    @property
    def Q(self) -> float:
        """The Wald-type heterogeneity statistic (metafor's ``QE.Wld``)."""
        return self.QE_Wld

    @property
    def Q_pval(self) -> float:
        """p-value of :attr:`Q`."""
        return self.QEp_Wld

    @property
    def tau(self) -> float:
        """``sqrt(tau2)``."""
        return math.sqrt(self.tau2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names; ``Q``/``Q_pval`` are the Wald-type test."""
        out: dict[str, Any] = {"method": "GLMM", "model": self.model, "measure": "OR"}
        for key in ("estimate", "se", "zval", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2",
                    "Q", "Q_pval", "QE_LRT", "QEp_LRT", "I2", "H2", "vt", "ll"):
            out[key] = _num(getattr(self, key))
        out.update(QE_df=self.QE_df, k=self.k, k_all=self.k_all, level=self.level,
                   nAGQ=self.nAGQ, dropped=list(self.dropped))
        return out

    def summary(self) -> str:
        """A metafor-like text summary."""
        kind = {"UM.FS": "Unconditional Model with Fixed Study Effects",
                "CM.EL": "Conditional Model with Exact Likelihood"}[self.model]

        def f(x: float) -> str:
            return f"{x:.4f}" if math.isfinite(x) else "NA"

        def p(x: float) -> str:
            return "NA" if not math.isfinite(x) else ("<.0001" if x < 1e-4 else f"{x:.4f}")

        def pv(x: float) -> str:
            return "p-val < .0001" if math.isfinite(x) and x < 1e-4 else f"p-val = {p(x)}"

        lines = [f"Random-Effects Model (k = {self.k}; tau^2 estimator: ML)",
                 f"Model Type: {kind}"]
        if self.dropped:
            lines.append(f"Dropped (no information): {', '.join(self.dropped)}")
        lines += [f"tau^2 = {f(self.tau2)}, tau = {f(self.tau)}, I^2 = {f(self.I2)}%, "
                  f"H^2 = {f(self.H2)}",
                  "Tests for Heterogeneity:",
                  f"Wld(df = {self.QE_df}) = {f(self.QE_Wld)}, {pv(self.QEp_Wld)}",
                  f"LRT(df = {self.QE_df}) = {f(self.QE_LRT)}, {pv(self.QEp_LRT)}",
                  "", "estimate      se     zval     pval    ci.lb    ci.ub",
                  f"{f(self.estimate):>8} {f(self.se):>7} {f(self.zval):>8} {p(self.pval):>8} "
                  f"{f(self.ci_lb):>8} {f(self.ci_ub):>8}",
                  f"OR = {math.exp(self.estimate):.4f} [{math.exp(self.ci_lb):.4f}, "
                  f"{math.exp(self.ci_ub):.4f}] ({self.level:g}% CI)"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------------------------
# Numerical helpers
# ----------------------------------------------------------------------------------------------


def _hessian(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """Hessian of ``f`` at ``x`` by central differences with one Richardson step."""
    def once(step: float) -> np.ndarray:
        n = x.size
        H = np.empty((n, n))
        f0 = f(x)
        e = np.eye(n) * step
        for i in range(n):
            fp, fm = f(x + e[i]), f(x - e[i])
            H[i, i] = (fp - 2 * f0 + fm) / step ** 2
            for j in range(i):
                v = (f(x + e[i] + e[j]) - f(x + e[i] - e[j]) - f(x - e[i] + e[j])
                     + f(x - e[i] - e[j])) / (4 * step ** 2)
                H[i, j] = H[j, i] = v
        return H
    return (4 * once(h / 2) - once(h)) / 3


def _maximise(f: Callable[[np.ndarray], float], x0: np.ndarray) -> np.ndarray:
    """Maximise a smooth function of a few parameters.

    A coarse Nelder-Mead search, then Newton steps with central-difference derivatives and
    step halving.
    """
    res = optimize.minimize(lambda x: -f(x), x0, method="Nelder-Mead",
                            options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 2000})
    x = np.asarray(res.x, dtype=float)
    fx = f(x)
    n = x.size
    h = 1e-4
    for _ in range(30):
        g = np.empty(n)
        H = np.empty((n, n))
        fp = np.array([f(x + h * e) for e in np.eye(n)])
        fm = np.array([f(x - h * e) for e in np.eye(n)])
        g = (fp - fm) / (2 * h)
        H[np.diag_indices(n)] = (fp - 2 * fx + fm) / h ** 2
        for i in range(n):
            for j in range(i):
                ei, ej = np.eye(n)[i] * h, np.eye(n)[j] * h
                H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej)
                                     + f(x - ei - ej)) / (4 * h * h)
        if np.all(np.linalg.eigvalsh(H) < 0):
            step = -np.linalg.solve(H, g)
        else:                                       # not concave here: a gradient step
            step = g / max(1.0, float(np.max(np.abs(np.diag(H)))))
        t = 1.0
        while t > 1e-8:
            cand = x + t * step
            fc = f(cand)
            if fc >= fx - 1e-13 * max(1.0, abs(fx)):
                break
            t /= 2
        else:
            break
        x, fx = cand, fc
        if np.max(np.abs(t * step)) < 1e-9:
            break
    return x


def _maximise1(f: Callable[[float], float], x0: float) -> tuple[float, float]:
    """Maximise a smooth function of one parameter: Brent, then Newton steps."""
    res = optimize.minimize_scalar(lambda t: -f(t), bracket=(x0 - 0.5, x0 + 0.5),
                                   options={"xtol": 1e-10})
    x, fx = float(res.x), -float(res.fun)
    h = 1e-4
    for _ in range(20):
        fp, fm = f(x + h), f(x - h)
        d2 = (fp - 2 * fx + fm) / (h * h)
        if not d2 < 0:
            break
        step = -(fp - fm) / (2 * h) / d2
        if abs(step) > 0.1:
            break
        fn = f(x + step)
        if fn < fx:
            break
        x, fx = x + step, fn
        if abs(step) < 1e-12:
            break
    return x, fx


def _binll(y: np.ndarray, n: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Binomial log-likelihood kernel ``y eta - n log(1 + e^eta)`` (no binomial coefficient)."""
    return y * eta - n * np.logaddexp(0.0, eta)


# ----------------------------------------------------------------------------------------------
# UM.FS: binomial-normal model with fixed study effects (lme4's adaptive quadrature)
# ----------------------------------------------------------------------------------------------


class _UnconditionalModel:
    """Log-likelihood of model UM.FS, profiled over the study intercepts."""

    def __init__(self, a, b, c, d, nagq: int) -> None:
        self.a, self.c = a, c
        self.n1, self.n2 = a + b, c + d
        self.const = (special.gammaln(self.n1 + 1) - special.gammaln(a + 1)
                      - special.gammaln(b + 1) + special.gammaln(self.n2 + 1)
                      - special.gammaln(c + 1) - special.gammaln(d + 1))
        self.z, self.w = _gh(nagq)
        # start: the control arm's log odds (1/2 added)
        self.alpha = np.log((c + 0.5) / (d + 0.5))
        self.u: np.ndarray | None = None          # last conditional modes (warm start)

    def _f(self, u, alpha, beta, tau):
        """Log integrand (binomial kernels + log N(0,1) kernel) at u, per study."""
        a, c, n1, n2 = self.a, self.c, self.n1, self.n2
        if np.ndim(u) == 2:
            a, c, n1, n2 = a[:, None], c[:, None], n1[:, None], n2[:, None]
        return (_binll(a, n1, alpha + beta + 0.5 * tau * u)
                + _binll(c, n2, alpha - 0.5 * tau * u) - 0.5 * u * u)

    def study_ll(self, alpha: np.ndarray, beta: float, tau: float) -> np.ndarray:
        """Adaptive Gauss-Hermite log-likelihood of each study (``alpha`` shape ``(k,)``)."""
        a, c, n1, n2 = self.a, self.c, self.n1, self.n2
        if tau == 0.0:
            return self.const + self._f(0.0, alpha, beta, 0.0)
        u = self.u.copy() if self.u is not None and self.u.shape == alpha.shape \
            else np.zeros_like(alpha)
        fu = self._f(u, alpha, beta, tau)
        for _ in range(60):
            p1 = special.expit(alpha + beta + 0.5 * tau * u)
            p2 = special.expit(alpha - 0.5 * tau * u)
            g = 0.5 * tau * (a - n1 * p1) - 0.5 * tau * (c - n2 * p2) - u
            H = -0.25 * tau * tau * (n1 * p1 * (1 - p1) + n2 * p2 * (1 - p2)) - 1.0
            step = -g / H
            t = np.ones_like(u)
            for _ in range(30):
                new = u + t * step
                fn = self._f(new, alpha, beta, tau)
                worse = fn < fu - 1e-13 * np.abs(fu)
                if not worse.any():
                    break
                t = np.where(worse, t / 2, t)
            u, fu = new, fn
            if np.max(np.abs(t * step)) < 1e-13:
                break
        self.u = u
        p1 = special.expit(alpha + beta + 0.5 * tau * u)
        p2 = special.expit(alpha - 0.5 * tau * u)
        L = np.sqrt(0.25 * tau * tau * (n1 * p1 * (1 - p1) + n2 * p2 * (1 - p2)) + 1.0)
        nodes = u[:, None] + self.z[None, :] / L[:, None]
        fz = self._f(nodes, alpha[:, None], beta, tau) - fu[:, None] + 0.5 * self.z ** 2
        return self.const + fu - np.log(L) + np.log(np.exp(fz) @ self.w)

    def profile(self, beta: float, tau: float) -> float:
        """``max over alpha`` of the log-likelihood (each study's intercept separately)."""
        alpha = self.alpha.copy()
        h = 1e-4
        f0 = self.study_ll(alpha, beta, tau)
        for _ in range(50):
            fp = self.study_ll(alpha + h, beta, tau)
            fm = self.study_ll(alpha - h, beta, tau)
            d1 = (fp - fm) / (2 * h)
            d2 = (fp - 2 * f0 + fm) / (h * h)
            step = np.where(d2 < 0, -d1 / np.where(d2 < 0, d2, -1.0), np.sign(d1))
            step = np.clip(step, -2.0, 2.0)
            t = np.ones_like(alpha)
            for _ in range(30):
                new = alpha + t * step
                fn = self.study_ll(new, beta, tau)
                worse = fn < f0 - 1e-13 * np.abs(f0)
                if not worse.any():
                    break
                t = np.where(worse, t / 2, t)
            alpha, f0 = new, fn
            if np.max(np.abs(t * step)) < 1e-11:
                break
        self.alpha = alpha
        return float(f0.sum())


# ----------------------------------------------------------------------------------------------
# CM.EL: noncentral hypergeometric likelihood with a normal random log odds ratio
# ----------------------------------------------------------------------------------------------


class _ConditionalModel:
    """Fisher's noncentral hypergeometric likelihood of ``a_i`` given the table margins."""

    def __init__(self, a, b, c, d, nagq: int) -> None:
        n1, n2, m1 = a + b, c + d, a + c
        lo = np.maximum(0, m1 - n2)
        hi = np.minimum(n1, m1)
        width = int((hi - lo).max()) + 1
        x = lo[:, None] + np.arange(width)[None, :]
        valid = x <= hi[:, None]
        xs = np.where(valid, x, lo[:, None])
        lw = (special.gammaln(n1 + 1)[:, None] - special.gammaln(xs + 1)
              - special.gammaln(n1[:, None] - xs + 1) + special.gammaln(n2 + 1)[:, None]
              - special.gammaln(m1[:, None] - xs + 1)
              - special.gammaln(n2[:, None] - m1[:, None] + xs + 1))
        self.x = np.where(valid, xs, 0.0)
        self.lw = np.where(valid, lw, -np.inf)
        self.a = a
        self.la = (special.gammaln(n1 + 1) - special.gammaln(a + 1) - special.gammaln(b + 1)
                   + special.gammaln(n2 + 1) - special.gammaln(c + 1) - special.gammaln(d + 1))
        self.interior = (a > lo) & (a < hi)
        self.z, self.w = _gh(nagq)

    def moments(self, theta: np.ndarray):
        """``log P(a | theta)``, ``E[x]`` and ``Var[x]``; ``theta`` shape ``(k, N)``."""
        e = self.lw[:, None, :] + theta[..., None] * self.x[:, None, :]
        m = e.max(axis=2, keepdims=True)
        p = np.exp(e - m)
        s = p.sum(axis=2)
        lse = m[..., 0] + np.log(s)
        mean = (p * self.x[:, None, :]).sum(axis=2) / s
        var = (p * self.x[:, None, :] ** 2).sum(axis=2) / s - mean ** 2
        logp = self.la[:, None] + self.a[:, None] * theta - lse
        return logp, mean, np.maximum(var, 0.0)

    def study_ll(self, mu: float, tau: float) -> np.ndarray:
        """``log int P(a_i | theta) N(theta; mu, tau^2) d theta`` per study (adaptive GH)."""
        k = self.a.size
        if abs(tau) < 1e-12:
            return self.moments(np.full((k, 1), mu))[0][:, 0]
        t2 = tau * tau
        th = np.full((k, 1), mu)
        for _ in range(60):
            _, mean, var = self.moments(th)
            g = self.a[:, None] - mean - (th - mu) / t2
            H = -var - 1.0 / t2
            step = np.clip(-g / H, -5.0, 5.0)
            th = th + step
            if np.max(np.abs(step)) < 1e-12:
                break
        _, _, var = self.moments(th)
        s = np.sqrt(var + 1.0 / t2)                                  # (k, 1)
        nodes = th + self.z[None, :] / s
        logp, _, _ = self.moments(nodes)
        h = logp - 0.5 * math.log(2 * math.pi * t2) - (nodes - mu) ** 2 / (2 * t2)
        hz = h + 0.5 * self.z[None, :] ** 2
        top = hz.max(axis=1, keepdims=True)
        total = np.log(np.exp(hz - top) @ self.w) + top[:, 0]
        return total + 0.5 * math.log(2 * math.pi) - np.log(s[:, 0])

    def loglik(self, mu: float, tau: float) -> float:
        return float(self.study_ll(mu, tau).sum())

    def saturated(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Sup of each study's conditional likelihood, its MLE and information (interior a).

        A table with ``a`` at the end of its support (a zero cell) has its supremum 1 at
        ``theta = -inf`` or ``+inf`` and no information there.
        """
        k = self.a.size
        th = np.zeros((k, 1))
        for _ in range(100):
            _, mean, var = self.moments(th)
            step = np.where(self.interior[:, None],
                            np.clip((self.a[:, None] - mean) / np.maximum(var, 1e-300), -3, 3),
                            0.0)
            th = th + step
            if np.max(np.abs(step)) < 1e-13:
                break
        logp, _, var = self.moments(th)
        sup = np.where(self.interior, logp[:, 0], 0.0)
        return float(sup.sum()), th[:, 0], np.where(self.interior, var[:, 0], 0.0)


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


def _wald_q(theta: np.ndarray, w: np.ndarray) -> float:
    """Wald test that all study log odds ratios are equal: ``sum w (theta - mean_w)^2``."""
    keep = w > 0
    if keep.sum() < 2:
        return 0.0
    t, ww = theta[keep], w[keep]
    return max(0.0, float((ww * t * t).sum() - (ww * t).sum() ** 2 / ww.sum()))


def _typical_variance(a, b, c, d) -> float:
    """Metafor's ``vt`` of the escalc log odds ratios (1/2 added to tables with a zero)."""
    zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)
    add = np.where(zero, 0.5, 0.0)
    w = 1.0 / (1 / (a + add) + 1 / (b + add) + 1 / (c + add) + 1 / (d + add))
    k = w.size
    if k < 2:
        return math.nan
    return (k - 1) / float(w.sum() - (w * w).sum() / w.sum())


def glmm(ai: Any, bi: Any = None, ci: Any = None, di: Any = None, *, n1i: Any = None,
         n2i: Any = None, model: str = "UM.FS", level: float = 95.0, nAGQ: int = 7,
         nAGQ_cm: int = 48, labels: Sequence[Any] | None = None) -> GLMMResult:
    """Random-effects GLMM of 2x2 tables by maximum likelihood (``metafor::rma.glmm``, OR).

    Parameters
    ----------
    ai, bi, ci, di
        Events and non-events in group 1 (treated) and group 2 (control); ``n1i``/``n2i``
        may replace ``bi``/``di``.
    model
        ``"UM.FS"`` (binomial-normal, fixed study intercepts) or ``"CM.EL"`` (conditional,
        exact noncentral hypergeometric likelihood).
    level
        Confidence level in percent.
    nAGQ
        Adaptive Gauss-Hermite nodes per study for UM.FS (metafor/lme4 default 7; the result
        is lme4's approximation with that many nodes, as metafor reports it).
    nAGQ_cm
        Nodes for CM.EL, where the integral is computed to full accuracy.
    labels
        Table names.

    Returns
    -------
    GLMMResult

    Raises
    ------
    InputError
        Invalid counts, an unknown model, a bad ``nAGQ``, or fewer than one informative table.

    Examples
    --------
    >>> r = glmm([0, 1, 2, 0, 5], [116, 43, 206, 130, 146], [3, 3, 9, 7, 6],
    ...          [114, 32, 186, 129, 151], model="UM.FS")
    >>> round(r.estimate, 3) < 0
    True
    """
    key = str(model).upper()
    if key not in GLMM_MODELS:
        raise InputError(f"model: expected one of {', '.join(GLMM_MODELS)}, got {model!r}")
    for name, value in (("nAGQ", nAGQ), ("nAGQ_cm", nAGQ_cm)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or \
                not 1 <= int(value) <= 100:
            raise InputError(f"{name}: expected a whole number of nodes from 1 to 100, "
                             f"got {value!r}")
    lev = _level(level)
    tabs = as_tables(ai, bi, ci, di, n1i=n1i, n2i=n2i, labels=labels)
    a, b, c, d = tabs.used()
    k = int(a.size)
    if k == 0:
        raise InputError(f"ai: none of the {tabs.k_all} tables has events in one group and "
                         "non-events in the other; nothing to pool")
    # start at the Mantel-Haenszel log odds ratio (or 0)
    R = float((a * d / (a + b + c + d)).sum())
    S = float((b * c / (a + b + c + d)).sum())
    beta0 = math.log(R / S) if R > 0 and S > 0 else 0.0
    beta0 = float(np.clip(beta0, -5, 5))
    nodes = int(nAGQ) if key == "UM.FS" else int(nAGQ_cm)

    if key == "UM.FS":
        um = _UnconditionalModel(a, b, c, d, nodes)

        def loglik(par: np.ndarray) -> float:
            return um.profile(float(par[0]), float(par[1]))

        # fixed-effect model (tau = 0) and the saturated model
        beta_fe, ll_fe = _maximise1(lambda t: um.profile(t, 0.0), beta0)
        with np.errstate(divide="ignore", invalid="ignore"):
            n1, n2 = a + b, c + d
            sat = (special.xlogy(a, a / n1) + special.xlogy(b, b / n1)
                   + special.xlogy(c, c / n2) + special.xlogy(d, d / n2))
        ll_qe = float((um.const + sat).sum())
        nz = (a > 0) & (b > 0) & (c > 0) & (d > 0)
        theta = np.where(nz, np.log(np.where(nz, a * d / np.maximum(b * c, 1e-300), 1.0)), 0.0)
        w = np.where(nz, 1.0 / (1 / np.maximum(a, 1) + 1 / np.maximum(b, 1)
                                + 1 / np.maximum(c, 1) + 1 / np.maximum(d, 1)), 0.0)
        start = np.array([beta_fe, 0.3])
    else:
        cm = _ConditionalModel(a, b, c, d, nodes)

        def loglik(par: np.ndarray) -> float:
            return cm.loglik(float(par[0]), float(par[1]))

        beta_fe, ll_fe = _maximise1(lambda t: cm.loglik(t, 0.0), beta0)
        ll_qe, theta, w = cm.saturated()
        start = np.array([beta_fe, 0.3])

    par = _maximise(loglik, start)
    # the likelihood is even in tau: compare with the boundary tau = 0 explicitly
    ll = loglik(par)
    if ll_fe >= ll - 1e-10 or abs(float(par[1])) < 1e-8:
        par = np.array([beta_fe, 0.0])
        ll = ll_fe
    beta, tau = float(par[0]), abs(float(par[1]))
    boundary = tau < 1e-5
    if boundary:
        H = _hessian(lambda x: loglik(np.array([x[0], 0.0])), np.array([beta]), 2e-3)
        info = -float(H[0, 0])
        se = math.sqrt(1.0 / info) if info > 0 else math.nan
        se_tau2 = math.nan
    else:
        H = _hessian(loglik, np.array([beta, tau]), 2e-3)
        try:
            cov = np.linalg.inv(-H)
            se = math.sqrt(cov[0, 0]) if cov[0, 0] > 0 else math.nan
            se_tau2 = 2 * tau * math.sqrt(cov[1, 1]) if cov[1, 1] > 0 else math.nan
        except np.linalg.LinAlgError:
            se = se_tau2 = math.nan
    if key == "UM.FS":
        se_tau2 = math.nan                      # metafor reports none for glmer fits
    tau2 = tau * tau
    zval, pval, lb, ub = _wald(beta, se, lev)
    qw = _wald_q(theta, w)
    qlrt = max(0.0, -2.0 * (ll_fe - ll_qe))
    df = k - 1
    qw_p = float(stats.chi2.sf(qw, df)) if df > 0 else 1.0
    qlrt_p = float(stats.chi2.sf(qlrt, df)) if df > 0 else 1.0
    vt = _typical_variance(a, b, c, d)
    if math.isfinite(vt):
        i2, h2 = 100.0 * tau2 / (vt + tau2), tau2 / vt + 1.0
    else:
        i2, h2 = _heterogeneity(0.0, 1)[2:]
    return GLMMResult(
        model=key, estimate=beta, se=se, zval=zval, pval=pval, ci_lb=lb, ci_ub=ub, level=lev,
        tau2=tau2, se_tau2=se_tau2, I2=i2, H2=h2, vt=vt, QE_Wld=qw, QEp_Wld=qw_p,
        QE_LRT=qlrt, QEp_LRT=qlrt_p, QE_df=df, ll=ll, ll_FE=ll_fe, ll_QE=ll_qe, k=k,
        k_all=tabs.k_all, dropped=tabs.dropped, nAGQ=nodes)
