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

The log-likelihood is metafor's, constants included (REML adds ``½ log|XᵀX|``, metafor's
default ``REMLf = TRUE``), so ``logLik``, AIC and BIC agree with R. It is maximised by
Fisher scoring on the elements of ``T`` (the derivatives of ``V`` are constant, so score
and expected information are closed-form traces: Harville, "Maximum likelihood approaches
to variance component estimation", *JASA* 72, 1977), with step-halving, an active set for
τ² at 0 (DIAG) and, should scoring leave the positive semi-definite cone (UN), a
quasi-Newton fallback on the Cholesky factor of ``T``. Converged to a relative change of
1e-10 in ``T``, tighter than metafor's optimiser.

Every site is padded to the full set of coefficients (missing ones get an identity block
and a zero residual), so all per-site algebra is one batched numpy operation.
Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none

__all__ = ["MvMetaResult", "mv_meta", "STRUCTS"]

#: Between-site covariance structures.
STRUCTS = ("UN", "DIAG")
_LOG2PI = math.log(2 * math.pi)


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


@dataclass(frozen=True, eq=False)
class _Data:
    y: np.ndarray        # (k, p), 0 where missing
    S: np.ndarray        # (k, p, p), identity block where missing
    M: np.ndarray        # (k, p) float mask
    MM: np.ndarray       # (k, p, p) outer masks
    N: int
    p: int
    logdet_xtx: float


def _basis(struct: str, p: int) -> np.ndarray:
    """Derivatives of T with respect to each parameter (q, p, p)."""
    if struct == "DIAG":
        return np.stack([np.diag(np.eye(p)[j]) for j in range(p)])
    mats = []
    for j in range(p):
        for m in range(j, p):
            d = np.zeros((p, p))
            d[j, m] = d[m, j] = 1.0
            mats.append(d)
    return np.stack(mats)


def _evaluate(theta: np.ndarray, basis: np.ndarray, data: _Data, reml: bool,
              derivatives: bool = True) -> dict[str, Any] | None:
    """Log-likelihood (and score, expected information, β) at ``theta``; None if V not PD."""
    T = np.einsum("a,ajl->jl", theta, basis)
    V = data.MM * (data.S + T) + (1 - data.MM) * data.S   # S holds the identity padding
    try:
        L = np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return None
    eye = np.broadcast_to(np.eye(data.p), V.shape)
    W = np.linalg.solve(V, eye)
    W = (W + np.swapaxes(W, 1, 2)) / 2
    Wm = W * data.MM
    H = Wm.sum(axis=0)
    g = np.einsum("ijl,il->j", Wm, data.y)
    try:
        Hc = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None
    Hinv = np.linalg.inv(H)
    beta = Hinv @ g
    r = data.M * (data.y - beta)
    u = np.einsum("ijl,il->ij", W, r)
    rss = float(np.einsum("ij,ij->", r, u))
    logdet_v = float(2 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum())
    logdet_h = float(2 * np.log(np.diag(Hc)).sum())
    if reml:
        ll = -0.5 * ((data.N - data.p) * _LOG2PI - data.logdet_xtx + logdet_v + logdet_h
                     + rss)
    else:
        ll = -0.5 * (data.N * _LOG2PI + logdet_v + rss)
    out: dict[str, Any] = {"ll": ll, "beta": beta, "vb": Hinv, "T": T}
    if not derivatives:
        return out
    q = basis.shape[0]
    quad = np.einsum("ij,ajl,il->a", u, basis, u, optimize=True)
    WD = Wm[:, None] @ basis[None]                            # W_i D_a (k, q, p, p)
    tr_wd = np.einsum("iajj->a", WD)
    flat = WD.transpose(1, 0, 2, 3).reshape(q, -1)
    flat_t = WD.transpose(1, 0, 3, 2).reshape(q, -1)
    tr_wdwd = flat @ flat_t.T                                 # Σ_i tr(W D_a W D_b)
    if reml:
        C = (WD @ Wm[:, None]).sum(axis=0)                    # Σ_i W D_a W (q, p, p)
        tr_pv = tr_wd - np.einsum("jl,alj->a", Hinv, C)
        F = (Wm[:, None] @ Hinv[None, None]) @ WD             # W H⁻¹ W D_a (k, q, p, p)
        tr_e = F.transpose(1, 0, 2, 3).reshape(q, -1) @ flat_t.T   # Σ_i tr(H⁻¹ W D_a W D_b W)
        HC = (Hinv[None] @ C)
        tr_hc = HC.reshape(q, -1) @ HC.transpose(0, 2, 1).reshape(q, -1).T
        info = 0.5 * (tr_wdwd - 2 * tr_e + tr_hc)
        grad = -0.5 * tr_pv + 0.5 * quad
    else:
        info = 0.5 * tr_wdwd
        grad = -0.5 * tr_wd + 0.5 * quad
    # y'P V_a P V_b P y: the data part of the observed information (same for REML and ML).
    z = (basis[None] @ u[:, None, :, None])[..., 0] * data.M[:, None, :]   # V_a P y (k, q, p)
    wz = (W[:, None] @ z[..., None])[..., 0]
    pz = wz - np.einsum("ijl,lm,am->iaj", Wm, Hinv, wz.sum(axis=0), optimize=True)
    q2 = np.einsum("iaj,ibj->ab", z, pz, optimize=True)
    info = (info + info.T) / 2
    out["grad"] = grad
    out["info"] = info                       # expected information (Fisher scoring)
    out["observed"] = (q2 + q2.T) / 2 - info  # observed information (Newton)
    return out


def _prepare(y: np.ndarray, S: np.ndarray) -> _Data:
    k, p = y.shape
    observed = np.isfinite(y)
    M = observed.astype(float)
    MM = M[:, :, None] * M[:, None, :]
    y0 = np.where(observed, y, 0.0)
    S0 = np.where(MM > 0, np.nan_to_num(S), 0.0) + (1 - M)[:, :, None] * np.eye(p)[None]
    counts = observed.sum(axis=0)
    return _Data(y=y0, S=S0, M=M, MM=MM, N=int(observed.sum()), p=p,
                 logdet_xtx=float(np.log(counts).sum()))


def _start(data: _Data, struct: str) -> np.ndarray:
    # Method-of-moments-like start: between-site variance of each coefficient minus its
    # mean within-site variance, at least a tenth of the between-site variance.
    p = data.p
    tau2 = np.empty(p)
    for j in range(p):
        obs = data.M[:, j] > 0
        yj = data.y[obs, j]
        vj = data.S[obs, j, j]
        spread = float(np.var(yj, ddof=1)) if obs.sum() > 1 else float(vj.mean())
        tau2[j] = max(spread - float(vj.mean()), 0.1 * spread, 1e-4 * float(vj.mean()))
    if struct == "DIAG":
        return tau2
    theta = []
    for j in range(p):
        for m in range(j, p):
            theta.append(tau2[j] if j == m else 0.0)
    return np.array(theta)


def _feasible(theta: np.ndarray, basis: np.ndarray, struct: str) -> bool:
    if struct == "DIAG":
        return bool(np.all(theta >= 0))
    T = np.einsum("a,ajl->jl", theta, basis)
    scale = max(float(np.max(np.abs(np.diag(T)))), 1e-300)
    return bool(np.linalg.eigvalsh(T).min() >= -1e-12 * scale)


def _scales(basis: np.ndarray, data: _Data) -> np.ndarray:
    """Natural scale of each parameter: the mean within-site variance (covariance) it adds to."""
    within = np.array([data.S[data.M[:, j] > 0, j, j].mean() for j in range(data.p)])
    scale = []
    for d in basis:
        j, m = np.argwhere(np.triu(d) > 0)[0]
        scale.append(float(np.sqrt(within[j] * within[m])))
    return np.array(scale)


def _step(current: dict[str, Any], free: np.ndarray) -> np.ndarray | None:
    """Return the Newton step, or the Fisher scoring step where Newton's is not usable.

    Newton uses the observed information where it is positive definite, else the
    expected information (Fisher scoring).
    """
    grad = current["grad"][free]
    for key in ("observed", "info"):
        mat = current[key][np.ix_(free, free)]
        try:
            np.linalg.cholesky(mat)
            return np.linalg.solve(mat, grad)
        except np.linalg.LinAlgError:
            continue
    return None


def _scoring(theta: np.ndarray, basis: np.ndarray, data: _Data, reml: bool, struct: str,
             maxit: int, tol: float) -> tuple[np.ndarray, bool, int]:
    """Newton / Fisher scoring with step-halving (and, for DIAG, an active set at τ² = 0).

    Newton's observed-information step reaches a boundary optimum (τ² = 0) in a step or
    two where Fisher scoring only creeps towards it; the expected information is used where
    the observed one is not positive definite (far from the optimum).
    """
    current = _evaluate(theta, basis, data, reml)
    if current is None:
        return theta, False, 0
    scale = _scales(basis, data)
    outside = 0
    for it in range(1, maxit + 1):
        grad = current["grad"]
        free = np.ones(len(theta), dtype=bool)
        if struct == "DIAG":
            free = ~((theta <= 0) & (grad <= 0))
        step = np.zeros(len(theta))
        if free.any():
            solved = _step(current, free)
            if solved is None:
                return theta, False, it
            step[free] = solved
        factor = 1.0
        accepted = None
        for _ in range(60):
            trial = theta + factor * step
            if struct == "DIAG":
                trial = np.maximum(trial, 0.0)
            elif factor == 1.0 and not _feasible(trial, basis, struct):
                # Five full steps in a row out of the positive semi-definite cone: the
                # optimum is on its boundary (a singular T), which scoring cannot follow;
                # the caller switches to the Cholesky parametrisation.
                outside += 1
                if outside >= 5:
                    return theta, False, it
            elif factor == 1.0:
                outside = 0
            if _feasible(trial, basis, struct):
                cand = _evaluate(trial, basis, data, reml)
                if cand is not None and cand["ll"] >= current["ll"] - 1e-12 * abs(
                        current["ll"]):
                    accepted = (trial, cand)
                    break
            factor /= 2
        if accepted is None:
            return theta, False, it
        change = np.max(np.abs(accepted[0] - theta) / np.maximum(scale, np.abs(theta)))
        theta, current = accepted
        if change <= tol and factor == 1.0:
            gfree = current["grad"] if struct != "DIAG" else np.where(
                (theta <= 0) & (current["grad"] <= 0), 0.0, current["grad"])
            # Converged: the step vanished; the score is (near) zero on the free set.
            return theta, bool(np.all(np.isfinite(gfree))), it
    return theta, False, maxit


def _cholesky_fallback(theta: np.ndarray, basis: np.ndarray, data: _Data, reml: bool,
                       p: int) -> tuple[np.ndarray, bool, int]:
    """Maximise over the Cholesky factor of T (always PSD): quasi-Newton with the chain rule."""
    T0 = np.einsum("a,ajl->jl", theta, basis)
    w, v = np.linalg.eigh(T0)
    T0 = (v * np.maximum(w, 1e-8 * max(w.max(), 1e-12))) @ v.T
    tril = np.tril_indices(p)
    x0 = np.linalg.cholesky(T0)[tril]
    index = {}
    a = 0
    for j in range(p):
        for m in range(j, p):
            index[(j, m)] = a
            a += 1

    def to_theta(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = np.zeros((p, p))
        L[tril] = x
        T = L @ L.T
        return np.array([T[j, m] for (j, m) in index]), L

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        th, L = to_theta(x)
        ev = _evaluate(th, basis, data, reml)
        if ev is None:
            return 1e300, np.zeros_like(x)
        G = np.zeros((p, p))      # d ll / d T (symmetric; off-diagonals split in two)
        for (j, m), a in index.items():
            if j == m:
                G[j, j] = ev["grad"][a]
            else:
                G[j, m] = G[m, j] = ev["grad"][a] / 2
        dL = 2 * G @ L
        return -ev["ll"], -dL[tril]

    res = optimize.minimize(objective, x0, jac=True, method="BFGS",
                            options={"gtol": 1e-10, "maxiter": 5000})
    th, _ = to_theta(res.x)
    # On the boundary (a singular T) BFGS often stops with "precision loss" although the
    # gradient is negligible: accept when a relative change of 1e-3 in every factor entry
    # would change the log-likelihood by less than 1e-8 (relative).
    size = np.maximum(np.abs(res.x), 1e-3 * float(np.sqrt(np.mean(np.abs(x0) ** 2))))
    flat = float(np.max(np.abs(res.jac) * size)) <= 1e-8 * max(1.0, abs(float(res.fun)))
    return th, bool(res.success or flat), int(res.nit)


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
    reml = method == "REML"
    data = _prepare(y, S)
    basis = _basis(struct, p)
    q = len(basis)
    if data.N - (p if reml else 0) < 1 or data.N - p < 1:
        raise InputError(f"y: {data.N} estimates are too few for {p} coefficients")
    theta0 = _start(data, struct)
    theta, converged, iterations = _scoring(theta0, basis, data, reml, struct, maxit, tol)
    message = ""
    if not converged and struct == "UN":
        theta, converged, extra = _cholesky_fallback(theta, basis, data, reml, p)
        iterations += extra
        message = "Fisher scoring left the positive semi-definite cone; finished by " \
                  "quasi-Newton on the Cholesky factor"
    final = _evaluate(theta, basis, data, reml, derivatives=False)
    if final is None:  # pragma: no cover - theta is feasible by construction
        raise InputError("mv_meta: the model could not be evaluated at its estimate")
    if not converged:
        message = (message + "; " if message else "") + "the optimiser did not converge"
    T = final["T"]
    beta, vb = final["beta"], final["vb"]
    se = np.sqrt(np.diag(vb))
    stat = beta / se
    pval = 2 * stats.norm.sf(np.abs(stat))
    crit = stats.norm.ppf(0.5 + level / 200)
    tau2 = np.diag(T).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(tau2)
        rho = T / np.outer(sd, sd)
    np.fill_diagonal(rho, 1.0)
    if struct == "DIAG":
        rho = np.eye(p)
    half = crit * np.sqrt(se ** 2 + tau2)
    # Residual heterogeneity (fixed-effect GLS with the within-site covariances).
    fe = _evaluate(np.zeros(q), basis, data, reml=False, derivatives=False)
    assert fe is not None
    r0 = data.M * (data.y - fe["beta"])
    Sinv = np.linalg.solve(data.S, np.broadcast_to(np.eye(p), data.S.shape))
    qe = float(np.einsum("ij,ijl,il->", r0, Sinv, r0))
    qe_df = data.N - p
    parms = p + q
    ll = float(final["ll"])
    n_bic = data.N - p if reml else data.N
    return MvMetaResult(
        names=names, k=k, N=data.N, method=method, struct=struct, level=float(level),
        estimate=beta, se=se, stat=stat, pval=pval, ci_lb=beta - crit * se,
        ci_ub=beta + crit * se, vb=vb, tau2=tau2, rho=rho, G=T, pi_lb=beta - half,
        pi_ub=beta + half, k_per=per, logLik=ll, AIC=-2 * ll + 2 * parms,
        BIC=-2 * ll + parms * math.log(n_bic), QE=qe, QE_df=int(qe_df),
        QE_pval=float(stats.chi2.sf(qe, qe_df)) if qe_df > 0 else float("nan"),
        converged=converged, iterations=iterations, message=message, labels=labels)
