"""Multivariate random-effects meta-analysis (metafor's ``rma.mv`` with ``~ outcome | study``).

Why
---
A two-stage IPD analysis of a regression model gives each site a *vector* of coefficients
with a within-site covariance matrix. Pooling each coefficient alone ignores those
covariances; the multivariate model (Jackson, Riley & White, "Multivariate meta-analysis:
potential and promise", *Stat Med* 30, 2011; Berkey et al., "Meta-analysis of multiple
outcomes by regression with random effects", *Stat Med* 17, 1998) uses them:

    y_i = β + u_i + e_i,   u_i ~ N(0, T),   e_i ~ N(0, S_i),

with ``y_i`` the observed coefficients of site ``i`` (a site may lack some: a level it does
not have), ``S_i`` their covariance, and ``T`` the between-site covariance: ``DIAG``
(independent random effects, one τ² per coefficient) or ``UN`` (unstructured: τ² and a
correlation per pair), as ``rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | study,
struct = ...)``. Estimation by REML (default) or ML.

The model is fitted by the one ``rma.mv`` of the project
(:func:`fedsynth.meta.mv.rma_mv`): the sites' vectors are laid out in long format (one row
per observed coefficient, design ``~ outcome - 1``, within-site covariances as the
block-diagonal ``V``, random term ``~ outcome | site``), so the log-likelihood, its
optimiser and its fit statistics are those checked against metafor there. This module
keeps the coefficient-vector interface of the two-stage fit and its result type.
Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta.mv import rma_mv

__all__ = ["MvMetaResult", "mv_meta", "STRUCTS"]

#: Between-site covariance structures.
STRUCTS = ("UN", "DIAG")


@dataclass(frozen=True, eq=False)
class MvMetaResult:
    """A fitted multivariate random-effects model (fields as metafor's ``rma.mv``).

    Attributes
    ----------
    names
        Outcome (coefficient) names.
    k, N
        Studies (sites) and observed estimates in total.
    method, struct
        ``REML``/``ML`` and ``UN``/``DIAG``.
    estimate, se, stat, pval, ci_lb, ci_ub
        Pooled coefficients with Wald z inference.
    vb
        Covariance of the pooled coefficients.
    tau2, rho, G
        Between-site variances, their correlation matrix (identity off-diagonal zeros for
        DIAG) and the covariance matrix ``G = T``.
    pi_lb, pi_ub
        Prediction interval of each coefficient in a new site (``estimate ± z sqrt(se² +
        tau2)``, metafor's ``predict(..., tau2.levels = j)``).
    k_per
        Sites that estimate each coefficient.
    logLik, AIC, BIC
        As metafor's ``fit.stats`` (REML or ML).
    QE, QE_df, QE_pval
        Test for residual heterogeneity.
    converged, iterations, message
        Optimiser outcome.
    labels
        Site labels.
    """

    names: tuple[str, ...]
    k: int
    N: int
    method: str
    struct: str
    level: float
    estimate: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    vb: np.ndarray
    tau2: np.ndarray
    rho: np.ndarray
    G: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray
    k_per: np.ndarray
    logLik: float
    AIC: float
    BIC: float
    QE: float
    QE_df: int
    QE_pval: float
    converged: bool
    iterations: int
    message: str
    labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: one object per coefficient, then the matrices and fit statistics."""
        per = {}
        for j, name in enumerate(self.names):
            per[name] = {"k": int(self.k_per[j]), **{
                key: finite_or_none(getattr(self, key)[j])
                for key in ("estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2",
                            "pi_lb", "pi_ub")}}
        matrix = lambda m: [[finite_or_none(v) for v in row] for row in m]  # noqa: E731
        return {"method": self.method, "struct": self.struct, "level": self.level,
                "k": self.k, "N": self.N, "names": list(self.names), "coefficients": per,
                "rho": matrix(self.rho), "G": matrix(self.G), "vb": matrix(self.vb),
                "logLik": finite_or_none(self.logLik), "AIC": finite_or_none(self.AIC),
                "BIC": finite_or_none(self.BIC), "QE": finite_or_none(self.QE), "QE_df": self.QE_df,
                "QE_pval": finite_or_none(self.QE_pval), "converged": self.converged,
                "iterations": self.iterations, "message": self.message,
                "sites": list(self.labels)}


def mv_meta(y: Any, S: Any, *, struct: str = "UN", method: str = "REML",
            names: Sequence[str] | None = None, labels: Sequence[str] | None = None,
            level: float = 95.0, maxit: int = 500, tol: float = 1e-10) -> MvMetaResult:
    """Fit the multivariate random-effects model.

    Parameters
    ----------
    y : array_like, shape (k, p)
        Each site's estimates; ``NaN`` where a site has no estimate of a coefficient.
    S : array_like, shape (k, p, p)
        Within-site covariance matrices (only the observed rows/columns are used).
    struct : {"UN", "DIAG"}
        Between-site covariance: unstructured or diagonal (metafor's ``struct``).
    method : {"REML", "ML"}
    names, labels
        Coefficient names and site labels.
    level
        Confidence level in percent.

    Returns
    -------
    MvMetaResult

    Raises
    ------
    fedsynth.errors.InputError
        Shapes that do not match, a non-finite observed estimate or covariance, a
        within-site covariance that is not positive definite, a coefficient estimated by
        fewer than two sites, or too few estimates for the model.
    """
    if struct not in STRUCTS:
        raise InputError(f"struct: unknown value {struct!r} (known: {', '.join(STRUCTS)})")
    if method not in ("REML", "ML"):
        raise InputError(f"method: unknown value {method!r} (known: REML, ML)")
    y = np.array(y, dtype=float, ndmin=2)
    S = np.array(S, dtype=float)
    if y.ndim != 2:
        raise InputError(f"y: expected a (sites, coefficients) array, got shape {y.shape}")
    k, p = y.shape
    if S.shape != (k, p, p):
        raise InputError(f"S: shape {S.shape} does not match y {y.shape}; expected "
                         f"{(k, p, p)}")
    names = tuple(names) if names is not None else tuple(f"y{j + 1}" for j in range(p))
    labels = tuple(labels) if labels is not None else tuple(str(i + 1) for i in range(k))
    if len(names) != p or len(labels) != k:
        raise InputError("names/labels: lengths do not match the data")
    observed = np.isfinite(y)
    for i in range(k):
        obs = observed[i]
        block = S[i][np.ix_(obs, obs)]
        if not np.all(np.isfinite(block)):
            raise InputError(f"S: site {labels[i]!r} has a non-finite covariance entry")
        if obs.any():
            if not np.allclose(block, block.T, rtol=1e-8, atol=0):
                raise InputError(f"S: the covariance matrix of site {labels[i]!r} is not "
                                 "symmetric")
            if np.linalg.eigvalsh((block + block.T) / 2).min() <= 0:
                raise InputError(f"S: the covariance matrix of site {labels[i]!r} is not "
                                 "positive definite")
    per = observed.sum(axis=0)
    if np.any(per < 2):
        j = int(np.flatnonzero(per < 2)[0])
        raise InputError(f"y: coefficient {names[j]!r} is estimated by fewer than two sites")
    # Long format: one row per observed coefficient, the design ``~ outcome - 1`` and the
    # random term ``~ outcome | site``, fitted by the one rma.mv (fedsynth.meta.mv).
    site_idx, coef_idx = np.nonzero(observed)
    N = len(site_idx)
    if N - p < 1:
        raise InputError(f"y: {N} estimates are too few for {p} coefficients")
    yl = y[site_idx, coef_idx]
    V = np.zeros((N, N))
    for i in range(k):
        rows = np.flatnonzero(site_idx == i)
        V[np.ix_(rows, rows)] = S[i][np.ix_(coef_idx[rows], coef_idx[rows])]
    X = np.eye(p)[coef_idx]
    data = {"outcome": [f"{j:09d}" for j in coef_idx], "site": list(site_idx)}
    fit = rma_mv(yl, V, mods=X, names=names, random="~ outcome | site", struct=struct,
                 method=method, level=level, data=data, maxit=maxit)
    del tol  # the optimiser's own stationarity rule (fedsynth.meta.mv) applies
    beta, vb, se = fit.beta, fit.vb, fit.se
    T = fit.G
    tau2 = np.diag(T).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(tau2)
        rho = T / np.outer(sd, sd)
    np.fill_diagonal(rho, 1.0)
    if struct == "DIAG":
        rho = np.eye(p)
    crit = stats.norm.ppf(0.5 + level / 200)
    half = crit * np.sqrt(se ** 2 + tau2)
    return MvMetaResult(
        names=names, k=k, N=N, method=method, struct=struct, level=float(level),
        estimate=beta, se=se, stat=fit.zval, pval=fit.pval, ci_lb=fit.ci_lb,
        ci_ub=fit.ci_ub, vb=vb, tau2=tau2, rho=rho, G=T, pi_lb=beta - half,
        pi_ub=beta + half, k_per=per, logLik=fit.logLik, AIC=fit.AIC, BIC=fit.BIC,
        QE=fit.QE, QE_df=fit.QE_df, QE_pval=fit.QEp if fit.QE_df > 0 else float("nan"),
        converged=fit.converged, iterations=0, message=fit.message, labels=labels)
