"""Coordinator side of likelihood sharing: pooling the sites' approximated log-likelihoods.

Why
---
Sites with rare outcomes release an approximation of their (profile) log-likelihood of one
parameter instead of ``(yi, vi)`` (:mod:`fedsynth.effects.likelihood`). The coordinator

* **fixed effect**: sums the log-likelihoods, takes the maximum as the estimate and the
  likelihood-ratio interval ``{b : 2 (l(b_hat) - l(b)) <= chi2_1(level)}`` (Schuemie et al.,
  *Stat Methods Med Res* 31(3), 2022). For a univariable Cox model with the sites as strata
  this is the stratified Cox fit on the pooled rows, up to the approximation error;
* **random effects**: integrates the site effects ``theta_i ~ N(mu, tau^2)`` out of each
  site's likelihood and the posterior over ``mu`` (flat prior) and ``tau`` (the priors of
  :mod:`fedsynth.meta.bayes`) on a tensor grid: per site and grid point,
  ``int exp(l_i(theta)) N(theta; mu, tau^2) d theta`` by adaptive Gauss-Hermite quadrature
  at the mode of the integrand. When every site's likelihood is normal this is exactly the
  conjugate normal-normal model of :func:`fedsynth.meta.bayes.bayes_pool` (a test checks it).

A site with no events in one arm has no estimate, so the normal approximation drops it, but
its likelihood is informative (it rules out large effects in one direction) and contributes
here. Both results carry, for comparison, the inverse-variance pooling of the sites that do
have an estimate (``normal_*``), and the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial import hermite_e
from scipy import interpolate, optimize, special, stats

from fedsynth.effects.likelihood import (
    CustomApproximation,
    GridWithGradients,
    LikelihoodApproximation,
    NormalApproximation,
    approximation_from_dict,
)
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none as _num
from fedsynth.meta.bayes import get_prior

__all__ = [
    "LikelihoodFixedEffectResult",
    "LikelihoodRandomEffectsResult",
    "as_approximations",
    "pool_likelihoods",
    "pool_likelihoods_random",
]

_SEARCH = 20.0            # the pooled maximum is searched in [-20, 20] (log scale)


def as_approximations(sites: Sequence[Any]) -> list[LikelihoodApproximation]:
    """Approximation objects from objects or their dicts (validated, naming the site)."""
    if isinstance(sites, (str, bytes, Mapping)) or not isinstance(sites, Sequence):
        raise InputError("likelihoods: expected a list of site likelihoods")
    out: list[LikelihoodApproximation] = []
    for i, s in enumerate(sites):
        if isinstance(s, (GridWithGradients, CustomApproximation, NormalApproximation)):
            out.append(s)
        else:
            out.append(approximation_from_dict(s, where=f"likelihoods[{i}]"))
    if not out:
        raise InputError("likelihoods: no sites to pool")
    return out


def _level(level: Any) -> float:
    try:
        lev = float(level)
    except (TypeError, ValueError):
        raise InputError(f"level: expected a percentage, got {level!r}") from None
    if not 0 < lev < 100:
        raise InputError(f"level: must lie strictly between 0 and 100, got {level!r}")
    return lev


def _normal_pool(sites: Sequence[LikelihoodApproximation], level: float):
    """Inverse-variance fixed-effect pooling of the sites with a finite estimate."""
    y = np.array([s.estimate for s in sites], dtype=float)
    se = np.array([s.se for s in sites], dtype=float)
    ok = np.isfinite(y) & np.isfinite(se) & (se > 0)
    if not ok.any():
        return math.nan, math.nan, math.nan, math.nan, 0
    w = 1.0 / se[ok] ** 2
    est = float((w * y[ok]).sum() / w.sum())
    s = math.sqrt(1.0 / float(w.sum()))
    z = float(special.ndtri(1 - (1 - level / 100) / 2))
    return est, s, est - z * s, est + z * s, int(ok.sum())


# ----------------------------------------------------------------------------------------------
# Fixed effect
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LikelihoodFixedEffectResult:
    """Fixed-effect pooling of site log-likelihoods.

    Attributes
    ----------
    estimate, ci_lb, ci_ub, level
        Maximum of the summed log-likelihood and the likelihood-ratio interval (a bound is
        ``-inf``/``inf`` when the likelihood does not fall far enough on that side within
        ``[-20, 20]``).
    se
        ``1 / sqrt(-l''(estimate))`` (curvature at the maximum), for comparison only.
    k, k_without_estimate
        Sites pooled and how many of them have no finite estimate of their own.
    normal_estimate, normal_se, normal_ci_lb, normal_ci_ub, normal_k
        Inverse-variance pooling of the sites with a finite estimate (the normal
        approximation, which drops the others); ``difference = estimate - normal_estimate``.
    """

    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    level: float
    loglik: float
    k: int
    k_without_estimate: int
    normal_estimate: float
    normal_se: float
    normal_ci_lb: float
    normal_ci_ub: float
    normal_k: int

    @property
    def difference(self) -> float:
        """Likelihood-pooled minus normal-approximation estimate."""
        return self.estimate - self.normal_estimate

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for JSON (``None`` where a value does not exist)."""
        return {"method": "likelihood_fixed", "estimate": _num(self.estimate),
                "se": _num(self.se), "ci_lb": _num(self.ci_lb), "ci_ub": _num(self.ci_ub),
                "level": self.level, "k": self.k,
                "k_without_estimate": self.k_without_estimate,
                "normal": {"estimate": _num(self.normal_estimate), "se": _num(self.normal_se),
                           "ci_lb": _num(self.normal_ci_lb), "ci_ub": _num(self.normal_ci_ub),
                           "k": self.normal_k},
                "difference": _num(self.difference)}

    def summary(self) -> str:
        """A text summary for the command line and reports."""
        def f(x: float) -> str:
            return f"{x:.4f}" if math.isfinite(x) else ("-inf" if x < 0 else "inf")
        lines = [f"Fixed-effect pooling of site likelihoods (k = {self.k}, "
                 f"{self.k_without_estimate} without an estimate of their own)",
                 f"  estimate {f(self.estimate)}, {self.level:g}% likelihood-ratio CI "
                 f"[{f(self.ci_lb)}, {f(self.ci_ub)}]",
                 f"  normal approximation (k = {self.normal_k}): {f(self.normal_estimate)} "
                 f"[{f(self.normal_ci_lb)}, {f(self.normal_ci_ub)}]; difference "
                 f"{f(self.difference)}"]
        return "\n".join(lines)


def _total(sites: Sequence[LikelihoodApproximation], x: np.ndarray) -> np.ndarray:
    return np.sum([np.asarray(s(x), dtype=float) for s in sites], axis=0)


def pool_likelihoods(sites: Sequence[Any], *, level: float = 95.0
                     ) -> LikelihoodFixedEffectResult:
    """Fixed-effect pooling: the maximum of the summed site log-likelihoods.

    The interval is the likelihood-ratio interval.

    Parameters
    ----------
    sites
        :class:`~fedsynth.effects.likelihood.GridWithGradients`,
        :class:`~fedsynth.effects.likelihood.CustomApproximation` or
        :class:`~fedsynth.effects.likelihood.NormalApproximation` objects, or their dicts.
    level
        Confidence level in percent.

    Raises
    ------
    InputError
        Invalid approximations, or a summed likelihood without a finite maximum (every site
        monotone in the same direction).

    Examples
    --------
    >>> from fedsynth.effects.likelihood import NormalApproximation
    >>> r = pool_likelihoods([NormalApproximation(0.2, 0.1), NormalApproximation(0.4, 0.1)])
    >>> round(r.estimate, 6), round(r.ci_ub - r.ci_lb, 4)
    (0.3, 0.2772)
    """
    approx = as_approximations(sites)
    lev = _level(level)
    grid = np.linspace(-_SEARCH, _SEARCH, 8001)
    ll = _total(approx, grid)
    i = int(np.argmax(ll))
    if i in (0, grid.size - 1):
        raise InputError("likelihoods: the pooled likelihood has no finite maximum (every "
                         "site's likelihood keeps rising towards one end); no estimate")
    res = optimize.minimize_scalar(lambda b: -float(_total(approx, np.array([b]))[0]),
                                   bounds=(grid[i - 1], grid[i + 1]), method="bounded",
                                   options={"xatol": 1e-12})
    est = float(res.x)
    for _ in range(20):            # Newton polish on the analytic derivatives
        d1 = sum(float(np.asarray(a.evaluate(np.array([est]))[1])[0]) for a in approx)
        d2 = sum(float(np.asarray(a.evaluate(np.array([est]))[2])[0]) for a in approx)
        if not d2 < 0:
            break
        step = float(np.clip(-d1 / d2, grid[i - 1] - est, grid[i + 1] - est))
        est += step
        if abs(step) < 1e-14:
            break
    top = float(_total(approx, np.array([est]))[0])
    drop = float(stats.chi2.ppf(lev / 100.0, 1)) / 2.0

    def g(b: float) -> float:
        return float(_total(approx, np.array([b]))[0]) - (top - drop)

    below = ll < top - drop
    left = np.flatnonzero(below[:i])
    right = np.flatnonzero(below[i:])
    lb = (optimize.brentq(g, grid[left[-1]], est, xtol=1e-12) if left.size else -math.inf)
    ub = (optimize.brentq(g, est, grid[i + right[0]], xtol=1e-12) if right.size else math.inf)
    curv = -float(np.sum([np.asarray(s.second_derivative(np.array([est])))[0]
                          for s in approx]))
    se = 1.0 / math.sqrt(curv) if curv > 0 else math.nan
    n_est, n_se, n_lb, n_ub, n_k = _normal_pool(approx, lev)
    return LikelihoodFixedEffectResult(
        estimate=est, se=se, ci_lb=lb, ci_ub=ub, level=lev, loglik=top, k=len(approx),
        k_without_estimate=len(approx) - sum(math.isfinite(s.estimate) for s in approx),
        normal_estimate=n_est, normal_se=n_se, normal_ci_lb=n_lb, normal_ci_ub=n_ub,
        normal_k=n_k)


# ----------------------------------------------------------------------------------------------
# Random effects
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LikelihoodRandomEffectsResult:
    """Bayesian random-effects pooling of site log-likelihoods (flat prior on ``mu``).

    Attributes
    ----------
    mu_mean, mu_sd, mu_median, mu_ci_lb, mu_ci_ub
        Posterior of the average effect (equal-tailed interval at ``level``).
    tau_mean, tau_median, tau_ci_lb, tau_ci_ub
        Posterior of the between-site standard deviation.
    prob_mu_positive
        ``P(mu > 0 | data)``.
    prior, tau_scale, level, k, k_without_estimate
        The prior on ``tau`` and its scale, the credible level, sites pooled and how many
        have no estimate of their own.
    """

    mu_mean: float
    mu_sd: float
    mu_median: float
    mu_ci_lb: float
    mu_ci_ub: float
    tau_mean: float
    tau_median: float
    tau_ci_lb: float
    tau_ci_ub: float
    prob_mu_positive: float
    prior: str
    tau_scale: float
    level: float
    k: int
    k_without_estimate: int

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for JSON (``None`` where a value does not exist)."""
        return {"method": "likelihood_random", "prior": self.prior,
                "tau_scale": self.tau_scale, "level": self.level, "k": self.k,
                "k_without_estimate": self.k_without_estimate,
                "mu_mean": _num(self.mu_mean), "mu_sd": _num(self.mu_sd),
                "mu_median": self.mu_median, "mu_ci": [self.mu_ci_lb, self.mu_ci_ub],
                "tau_mean": _num(self.tau_mean), "tau_median": self.tau_median,
                "tau_ci": [self.tau_ci_lb, self.tau_ci_ub],
                "prob_mu_positive": self.prob_mu_positive}

    def summary(self) -> str:
        """A text summary for the command line and reports."""
        lev = f"{self.level:g}%"
        return "\n".join([
            f"Random-effects pooling of site likelihoods (flat prior on mu, {self.prior} "
            f"prior on tau with scale {self.tau_scale:g}; k = {self.k})",
            f"  mu   median {self.mu_median:.4f}, {lev} CrI [{self.mu_ci_lb:.4f}, "
            f"{self.mu_ci_ub:.4f}], P(mu > 0) = {self.prob_mu_positive:.4f}",
            f"  tau  median {self.tau_median:.4f}, {lev} CrI [{self.tau_ci_lb:.4f}, "
            f"{self.tau_ci_ub:.4f}]"])


_N_GH = 24
_GH_Z, _GH_W = hermite_e.hermegauss(_N_GH)
_GH_W = _GH_W / _GH_W.sum()


def _site_marginal(site: LikelihoodApproximation, mu: np.ndarray, tau: np.ndarray
                   ) -> np.ndarray:
    """``log int exp(l(theta)) N(theta; mu, tau^2) d theta`` for arrays ``mu``, ``tau``.

    Broadcast over ``mu`` and ``tau``; adaptive Gauss-Hermite quadrature at the mode of the
    integrand.
    """
    if isinstance(site, NormalApproximation):     # closed form
        v = site.se ** 2
        s2 = v + tau * tau
        return 0.5 * np.log(v / s2) - (mu - site.estimate) ** 2 / (2 * s2)
    t2 = tau * tau
    mu_b, t2_b = np.broadcast_arrays(np.asarray(mu, dtype=float), t2)
    th = np.array(mu_b, dtype=float).ravel()
    mu_f, t2_f = mu_b.ravel(), t2_b.ravel()
    # Newton steps for the mode of each integrand; a point leaves the iteration once its
    # step is below 1e-9 (most of a grid converges in a few steps, a few need many)
    active = np.arange(th.size)
    for _ in range(50):
        x, mu_a, t2_a = th[active], mu_f[active], t2_f[active]
        _, d1, d2 = site.evaluate(x)
        h = np.minimum(d2, 0.0) - 1.0 / t2_a
        step = np.clip(-(d1 - (x - mu_a) / t2_a) / h, -2.0, 2.0)
        th[active] = x + step
        active = active[np.abs(step) >= 1e-9]
        if active.size == 0:
            break
    mode = th.reshape(mu_b.shape)
    s = np.sqrt(1.0 / t2 - np.minimum(site.evaluate(mode)[2], 0.0))
    nodes = mode[..., None] + _GH_Z / s[..., None]
    hz = (np.asarray(site(nodes)) - (nodes - mu[..., None]) ** 2 / (2 * t2[..., None])
          + 0.5 * _GH_Z ** 2)
    top = hz.max(axis=-1, keepdims=True)
    total = np.log(np.exp(hz - top) @ _GH_W) + top[..., 0]
    # the N(theta; mu, tau^2) normalisation and the Jacobian 1/s of theta = th + z/s
    return total - np.log(s * tau)


def _trapezoid(y: np.ndarray, x: np.ndarray, axis: int = -1) -> Any:
    """Trapezoid rule on a uniform grid ``x`` along ``axis``."""
    h = x[1] - x[0]
    y = np.moveaxis(y, axis, -1)
    return h * (y.sum(axis=-1) - 0.5 * (y[..., 0] + y[..., -1]))


def _quantile_cdf(x: np.ndarray, f: np.ndarray, q: float) -> float:
    """CDF at ``q`` of the normalised density ``f`` on the grid ``x`` (cubic spline)."""
    F = interpolate.CubicSpline(x, f).antiderivative()
    return float(np.clip(F(np.clip(q, x[0], x[-1])) / F(x[-1]), 0.0, 1.0))


def _quantiles(x: np.ndarray, f: np.ndarray, probs: Sequence[float]) -> list[float]:
    """Quantiles of the density ``f`` on the grid ``x``.

    The CDF is the antiderivative of the cubic spline through the density (error O(h^4),
    where the trapezoid's is O(h^2)), inverted by Brent's method.
    """
    F = interpolate.CubicSpline(x, f).antiderivative()
    total = float(F(x[-1]))
    cdf = F(x) / total
    out = []
    for p in probs:
        j = int(np.clip(np.searchsorted(cdf, p), 1, x.size - 1))
        lo, hi = x[j - 1], x[j]
        if (F(lo) / total - p) * (F(hi) / total - p) > 0:
            out.append(float(np.interp(p, cdf, x)))
            continue
        out.append(float(optimize.brentq(lambda t: float(F(t)) / total - p, lo, hi,
                                         xtol=1e-13)))
    return out


def pool_likelihoods_random(sites: Sequence[Any], *, prior: str = "half_normal",
                            scale: float = 0.5, level: float = 95.0
                            ) -> LikelihoodRandomEffectsResult:
    """Random-effects pooling of site log-likelihoods, Bayesian with a flat prior on ``mu``.

    ``theta_i ~ N(mu, tau^2)`` is integrated out of each site's approximated likelihood;
    ``(mu, log tau)`` is integrated on a tensor grid refined to where the posterior mass is.
    The prior on ``tau`` is one of :func:`fedsynth.meta.bayes.available_priors` (as
    ``--bayes NAME:SCALE``).

    Raises
    ------
    InputError
        Invalid approximations, an unknown prior, a bad scale or level.
    """
    approx = as_approximations(sites)
    lev = _level(level)
    tau_prior = get_prior(prior)
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"scale: expected a number > 0, got {scale!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise InputError(f"scale: prior scale must be finite and > 0, got {scale!r}")
    fe = pool_likelihoods(approx, level=lev)
    width = (fe.ci_ub - fe.ci_lb) if math.isfinite(fe.ci_ub - fe.ci_lb) else 4.0

    def logpost(mu: np.ndarray, x: np.ndarray) -> np.ndarray:
        M, X = np.meshgrid(mu, x, indexing="ij")
        T = np.exp(X)
        out = tau_prior.logpdf(T, s) + X
        for site in approx:
            out = out + _site_marginal(site, M, T)
        return out

    # pass 1: a wide coarse grid; pass 2: the region holding all but ~e^-25 of the mass
    mu_lo, mu_hi = fe.estimate - 6 * width - 10 * s, fe.estimate + 6 * width + 10 * s
    x_lo, x_hi = math.log(s) - 14.0, math.log(s) + 6.0
    for n_mu, n_x in ((81, 61), (241, 161)):
        mu = np.linspace(mu_lo, mu_hi, n_mu)
        x = np.linspace(x_lo, x_hi, n_x)
        lp = logpost(mu, x)
        keep = lp >= lp.max() - 25.0
        rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
        dm, dx = mu[1] - mu[0], x[1] - x[0]
        mu_lo, mu_hi = mu[rows[0]] - 2 * dm, mu[rows[-1]] + 2 * dm
        x_lo = x[cols[0]] - 2 * dx if cols[0] > 0 else x_lo
        x_hi = x[cols[-1]] + 2 * dx if cols[-1] < x.size - 1 else x_hi
    dens = np.exp(lp - lp.max())
    # marginal densities of mu and x = log tau (trapezoid over the other variable)
    f_mu = _trapezoid(dens, x, axis=1)
    f_x = _trapezoid(dens, mu, axis=0)
    z = _trapezoid(f_mu, mu)
    f_mu, f_x = f_mu / z, f_x / _trapezoid(f_x, x)
    tau = np.exp(x)
    alpha = 1 - lev / 100
    probs = (alpha / 2, 0.5, 1 - alpha / 2)
    mq = _quantiles(mu, f_mu, probs)
    tq = np.exp(_quantiles(x, f_x, probs))
    mean = _trapezoid(f_mu * mu, mu)
    sd = math.sqrt(max(_trapezoid(f_mu * mu * mu, mu) - mean ** 2, 0.0))
    p_pos = 1.0 - _quantile_cdf(mu, f_mu, 0.0)
    return LikelihoodRandomEffectsResult(
        mu_mean=mean, mu_sd=sd, mu_median=mq[1], mu_ci_lb=mq[0], mu_ci_ub=mq[2],
        tau_mean=_trapezoid(f_x * tau, x), tau_median=float(tq[1]), tau_ci_lb=float(tq[0]),
        tau_ci_ub=float(tq[2]), prob_mu_positive=p_pos,
        prior=tau_prior.name, tau_scale=s, level=lev, k=len(approx),
        k_without_estimate=len(approx) - sum(math.isfinite(a.estimate) for a in approx))
