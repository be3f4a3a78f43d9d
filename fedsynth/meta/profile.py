"""Profile likelihood of tau²: confidence intervals and profile plots.

As metafor's ``confint(fit, type = "PL")`` and ``profile.rma.uni``.

Why
---
The Q-profile interval (:func:`fedsynth.meta.regdiag.confint`) does not depend on the
tau² estimator; for ML and REML fits the likelihood itself gives an interval: the tau²
values whose (restricted) log-likelihood, maximised over the coefficients, lies within
``qchisq(level, 1) / 2`` of the maximum (Hardy & Thompson 1996, "A likelihood approach
to meta-analysis with random effects", Stat. Med. 15:619-629). The profile plot shows
that likelihood over a grid of tau² values, which is how one checks that an ML/REML
estimate is a proper maximum (Viechtbauer 2010, J. Stat. Softw. 36(3)).

The log-likelihood at a given tau² is that of :func:`fedsynth.meta.metareg.fit_rma` with
``tau2`` fixed (metafor's ``logLik`` of the refit with ``tau2 = val``), so weights,
``weighted=False`` and the method's ML/REML likelihood carry over as in metafor.

Pure statistics (the plot is drawn only by :meth:`ProfileResult.plot`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta.metareg import MetaRegressionResult, refit
from fedsynth.meta.regdiag import Tau2Confint, confint
from fedsynth.meta.stats import chi2_isf, norm_isf, trace_p
from fedsynth.results import ResultMixin

__all__ = ["ProfileResult", "profile", "confint_pl", "profile_loglik"]


def _check(fit: MetaRegressionResult) -> None:
    if fit.method == "FE":
        raise InputError("profile: a fixed-effect model has no tau² to profile")
    if fit.tau2_fixed:
        raise InputError("profile: tau² is fixed by the user; there is nothing to profile")
    if fit.yi is None or fit.X is None:
        raise InputError("fit: carries no data to refit")


def profile_loglik(fit: MetaRegressionResult, tau2: Any) -> np.ndarray:
    """The fit's (restricted under REML) log-likelihood at each tau² (coefficients refit)."""
    _check(fit)
    values = np.atleast_1d(np.asarray(tau2, dtype=float))
    if np.any(~np.isfinite(values) | (values < 0)):
        raise InputError(f"tau2: profile values must be finite and >= 0, got {tau2!r}")
    return np.array([refit(fit, tau2=float(t), compute_r2=False).logLik for t in values])


def confint_pl(fit: MetaRegressionResult, level: float | None = None) -> Tau2Confint:
    """Profile-likelihood CI of tau² (and tau, I², H²), metafor's ``confint(type="PL")``.

    The bounds solve ``-2 (ll(tau²) - ll(tau²_hat)) = qchisq(level, 1)``; a bound is 0
    when the likelihood at 0 is still inside, and the search stops at metafor's
    ``tau2.max = max(100, 10 tau²_hat)``.
    """
    _check(fit)
    assert fit.vi is not None and fit.X is not None
    lvl = fit.level if level is None else float(level if level > 1 else 100 * level)
    crit = float(chi2_isf(1 - lvl / 100, 1))
    ll_hat = fit.logLik
    t_hat = fit.tau2
    tau2_max = max(100.0, 10.0 * t_hat)

    def gap(t: float) -> float:
        return float(-2.0 * (profile_loglik(fit, t)[0] - ll_hat) - crit)

    scale = max(t_hat, float(np.mean(fit.vi)))
    xtol = 1e-12 * scale
    converged = True
    if t_hat <= 0 or gap(0.0) <= 0:
        lo = 0.0
    else:
        lo = float(optimize.brentq(gap, 0.0, t_hat, xtol=xtol, rtol=1e-13))
    if gap(tau2_max) <= 0:
        hi, converged = tau2_max, False
    else:
        hi = float(optimize.brentq(gap, t_hat, tau2_max, xtol=xtol, rtol=1e-13))
    w0 = 1.0 / fit.vi
    vt = (fit.k - fit.p) / float(trace_p(w0[None], fit.X[None])[0])

    def i2(t: float) -> float:
        return 100.0 * t / (vt + t)

    def h2(t: float) -> float:
        return (vt + t) / vt
    return Tau2Confint(tau2=(t_hat, lo, hi), tau=(np.sqrt(t_hat), np.sqrt(lo), np.sqrt(hi)),
                       I2=(i2(t_hat), i2(lo), i2(hi)), H2=(h2(t_hat), h2(lo), h2(hi)),
                       level=lvl, converged=converged)


@dataclass(frozen=True)
class ProfileResult(ResultMixin):
    """The profiled log-likelihood of tau² over a grid (metafor's ``profile.rma.uni``).

    Attributes
    ----------
    tau2, ll
        Grid of tau² values and the log-likelihood at each (restricted under REML).
    beta, ci_lb, ci_ub
        Coefficients and their confidence bounds at each grid value, shape (steps, p).
    tau2_hat, ll_hat
        The estimate and the maximum.
    """

    tau2: np.ndarray
    ll: np.ndarray
    beta: np.ndarray = field(repr=False)
    ci_lb: np.ndarray = field(repr=False)
    ci_ub: np.ndarray = field(repr=False)
    names: tuple[str, ...] = ()
    tau2_hat: float = float("nan")
    ll_hat: float = float("nan")
    method: str = "REML"

    def summary(self, digits: int = 4) -> str:
        """The grid and its log-likelihood."""
        lines = [f"Profile of tau^2 ({self.method}; estimate {self.tau2_hat:.{digits}f}, "
                 f"logLik {self.ll_hat:.{digits}f}):"]
        lines += [f"  tau^2 = {t:.{digits}f}  ll = {v:.{digits}f}"
                  for t, v in zip(self.tau2, self.ll)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metafor's ``tau2`` and ``ll``)."""
        return {"tau2": [finite_or_none(x) for x in self.tau2],
                "ll": [finite_or_none(x) for x in self.ll],
                "beta": [[finite_or_none(x) for x in row] for row in self.beta],
                "names": list(self.names), "tau2_hat": finite_or_none(self.tau2_hat),
                "ll_hat": finite_or_none(self.ll_hat), "method": self.method}

    def plot(self, ax: Any = None) -> Any:
        """The profile plot: ll against tau², the estimate marked, as metafor draws it."""
        # lazy: matplotlib (~0.5 s) only when a plot is drawn
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4.5))
        else:
            fig = ax.figure
        ax.plot(self.tau2, self.ll, "o-", color="black", markersize=4)
        ax.axvline(self.tau2_hat, linestyle="--", color="gray")
        ax.axhline(self.ll_hat, linestyle=":", color="gray")
        ax.set_xlabel(r"$\tau^2$")
        ax.set_ylabel("Restricted Log-Likelihood" if self.method == "REML"
                      else "Log-Likelihood")
        ax.set_title(r"Profile plot for $\tau^2$")
        return fig


def profile(fit: MetaRegressionResult, *, xlim: Any = None, steps: int = 20) -> ProfileResult:
    """Profile the log-likelihood over tau² (metafor's ``profile.rma.uni``).

    ``xlim`` defaults as in metafor: from ``min(tau², Q-profile lower bound)`` to
    ``max(0.1, tau², Q-profile upper bound)`` (else tau² ± 2.576 se, else tau²/4 to 4
    tau²); ``steps`` evenly spaced values.
    """
    _check(fit)
    if int(steps) < 2:
        raise InputError(f"steps: must be >= 2, got {steps!r}")
    if xlim is None:
        lo = hi = float("nan")
        try:
            ci = confint(fit)
            lo, hi = min(fit.tau2, ci.tau2[1]), max(0.1, fit.tau2, ci.tau2[2])
        except InputError:
            pass
        if not (np.isfinite(lo) and np.isfinite(hi)):
            z = float(norm_isf(0.005))
            lo = max(0.0, fit.tau2 - z * fit.se_tau2)
            hi = max(0.1, fit.tau2 + z * fit.se_tau2)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = max(0.0, fit.tau2 / 4), max(0.1, fit.tau2 * 4)
    else:
        bounds = np.sort(np.asarray(xlim, dtype=float).ravel())
        if bounds.size != 2 or bounds[0] < 0 or not np.all(np.isfinite(bounds)):
            raise InputError(f"xlim: expected two finite tau² values >= 0, got {xlim!r}")
        lo, hi = float(bounds[0]), float(bounds[1])
    grid = np.linspace(lo, hi, int(steps))
    fits = [refit(fit, tau2=float(t), compute_r2=False) for t in grid]
    return ProfileResult(tau2=grid, ll=np.array([f_.logLik for f_ in fits]),
                         beta=np.array([f_.coef for f_ in fits]),
                         ci_lb=np.array([f_.ci_lb for f_ in fits]),
                         ci_ub=np.array([f_.ci_ub for f_ in fits]), names=fit.names,
                         tau2_hat=fit.tau2, ll_hat=fit.logLik, method=fit.method)
