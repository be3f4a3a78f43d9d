"""GLM families with their canonical links, vectorised, with R's numerical conventions.

Why
---
The federated fit must equal R's ``glm`` on the pooled rows, so each family does exactly
what R's ``binomial()``, ``poisson()`` and ``gaussian()`` objects do (McCullagh & Nelder,
*Generalized Linear Models*, 2nd ed., Chapman & Hall 1989, ch. 2): the same starting
values (``mustart``), the same clamping of the inverse link (R's C code thresholds the
logit at +-30 and keeps ``mu.eta`` at least machine epsilon), the same unit deviances and
the same AIC. Only canonical links are offered (logit, identity, log), so IRLS is Newton's
method and its information matrix is the observed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from fedsynth.errors import InputError

__all__ = ["Family", "get_family", "EPS"]

#: R's ``.Machine$double.eps``.
EPS = float(np.finfo(float).eps)
_THRESH = 30.0  # R's logit THRESH / MTHRESH (src/library/stats/src/family.c)


@dataclass(frozen=True)
class Family:
    """One GLM family with its canonical link.

    Every method takes and returns numpy arrays (one value per row).
    """

    name: str
    link: str

    # ---- link
    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        """Eta = g(mu)."""
        if self.name == "binomial":
            return np.log(mu / (1.0 - mu))
        if self.name == "poisson":
            return np.log(mu)
        return np.asarray(mu, dtype=float)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """Mu = g^-1(eta), clamped as R does."""
        if self.name == "binomial":
            tmp = np.where(eta < -_THRESH, EPS,
                           np.where(eta > _THRESH, 1.0 / EPS, np.exp(np.clip(eta, -_THRESH,
                                                                              _THRESH))))
            return tmp / (1.0 + tmp)
        if self.name == "poisson":
            with np.errstate(over="ignore"):
                return np.maximum(np.exp(eta), EPS)
        return np.asarray(eta, dtype=float)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """D mu / d eta."""
        if self.name == "binomial":
            inner = np.exp(np.clip(eta, -_THRESH, _THRESH))
            return np.where(np.abs(eta) > _THRESH, EPS, inner / (1.0 + inner) ** 2)
        if self.name == "poisson":
            with np.errstate(over="ignore"):
                return np.maximum(np.exp(eta), EPS)
        return np.ones_like(eta, dtype=float)

    # ---- variance and deviance
    def variance(self, mu: np.ndarray) -> np.ndarray:
        """Var(y) / dispersion as a function of mu."""
        if self.name == "binomial":
            return mu * (1.0 - mu)
        if self.name == "poisson":
            return np.asarray(mu, dtype=float)
        return np.ones_like(mu, dtype=float)

    def dev_resids(self, y: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Unit deviances (R's ``dev.resids`` with unit prior weights)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.name == "binomial":
                return np.where(y > 0, -2.0 * np.log(mu), 0.0) + \
                    np.where(y < 1, -2.0 * np.log1p(-mu), 0.0)
            if self.name == "poisson":
                ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)
                return 2.0 * (ylogy - (y - mu))
            return (y - mu) ** 2

    def minus_twice_loglik(self, y: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """``-2 log f(y; mu)`` per row (binomial, poisson; R's family ``aic`` terms).

        The gaussian AIC needs the total deviance and n, so it is computed from them
        (:meth:`aic`), not row by row; this returns NaN for gaussian.
        """
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.name == "binomial":
                return self.dev_resids(y, mu)  # a 0/1 outcome: -2 log dbinom = deviance
            if self.name == "poisson":
                return -2.0 * (np.where(y > 0, y * np.log(mu), 0.0) - mu - gammaln(y + 1.0))
        return np.full(np.shape(y), np.nan)

    def aic(self, minus_twice_loglik: float, deviance: float, n: int, rank: int) -> float:
        """R's ``glm`` AIC: the family's ``aic`` plus ``2 * rank``."""
        if self.name == "gaussian":
            return float(n * (np.log(2 * np.pi * deviance / n) + 1) + 2 + 2 * rank)
        return float(minus_twice_loglik + 2 * rank)

    def loglik(self, minus_twice_loglik: float, deviance: float, n: int) -> float:
        """R's ``logLik`` of the fit (gaussian at the ML dispersion ``deviance / n``)."""
        if self.name == "gaussian":
            return float(-n / 2 * (np.log(2 * np.pi * deviance / n) + 1))
        return float(-minus_twice_loglik / 2)

    # ---- start, validity
    def mustart(self, y: np.ndarray) -> np.ndarray:
        """R's starting fitted values (``family$initialize`` with unit weights)."""
        if self.name == "binomial":
            return (y + 0.5) / 2.0
        if self.name == "poisson":
            return y + 0.1
        return np.asarray(y, dtype=float)

    def at_boundary(self, mu: np.ndarray) -> bool:
        """R's warning: fitted probabilities numerically 0 or 1 (rates numerically 0)."""
        eps = 10 * EPS
        if self.name == "binomial":
            return bool(np.any(mu > 1 - eps) or np.any(mu < eps))
        if self.name == "poisson":
            return bool(np.any(mu < eps))
        return False

    @property
    def estimated_dispersion(self) -> bool:
        """Whether the dispersion is estimated (gaussian) rather than fixed at 1."""
        return self.name == "gaussian"


_FAMILIES = {"binomial": Family("binomial", "logit"), "gaussian": Family("gaussian", "identity"),
             "poisson": Family("poisson", "log")}


def get_family(name: str) -> Family:
    """The family called ``name`` (``binomial``, ``gaussian``, ``poisson``)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise InputError(f"family: unknown value {name!r} (known: "
                         f"{', '.join(_FAMILIES)})") from None
