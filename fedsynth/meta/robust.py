"""Cluster-robust (sandwich) inference for meta-analytic models: metafor's ``robust()``.

Why
---
A multilevel model is only as good as its random-effects structure; when effects within
a cluster (a study, a research group) are dependent in ways the model does not capture,
model-based standard errors are too small. The sandwich estimator (Hedges, Tipton &
Johnson 2010, "Robust variance estimation in meta-regression with dependent effect size
estimates", *Res Synth Methods* 1) replaces the model's "meat" by the observed
cross-products of the residuals of each cluster, and stays consistent when the working
model is wrong, as long as the clusters are independent.

Two flavours, as metafor's ``robust(x, cluster, adjust = TRUE, clubSandwich = FALSE)``:

- **default** (``clubSandwich=False``): ``vb = B (Σ_c e_c e_cᵀ) Bᵀ`` with the bread
  ``B = vb X'W``, multiplied by ``n / (n - p)`` (``adjust=True``: CR1, metafor's default;
  ``n`` clusters); t tests and CIs with ``n - p`` df, the omnibus test an F with
  ``(m, n - p)`` df.
- **clubSandwich** (``clubSandwich=True``): the bias-reduced linearisation CR2
  (Bell & McCaffrey 2002; Pustejovsky & Tipton 2018, "Small-sample methods for
  cluster-robust variance estimation and hypothesis testing in fixed effects models",
  *J Bus Econ Stat* 36): each cluster's residuals are adjusted by
  ``A_j = R_jᵀ (R_j (I - H)_jj Θ_j R_jᵀ)^{-1/2} R_j`` (``Θ_j = R_jᵀR_j`` the model's
  marginal covariance of the cluster), t tests with Satterthwaite df per coefficient
  (``coef_test``) and the omnibus test by the HTZ Hotelling approximation (``Wald_test``),
  which is what ``metafor::robust(..., clubSandwich = TRUE)`` reports. The working
  weights are the inverse marginal covariances (clubSandwich's ``inverse_var = TRUE``).

Pure statistics: vectorised numpy per cluster; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta._format import btt_label
from fedsynth.meta._format import p as _pvalue
from fedsynth.meta.metareg import MetaRegressionResult
from fedsynth.meta.mv import RmaMvResult
from fedsynth.meta.pooling import PoolingResult
from fedsynth.results import Interval, ResultMixin

__all__ = ["RobustResult", "robust"]


@dataclass(frozen=True, eq=False)
class RobustResult(ResultMixin):
    """Cluster-robust inference of a fitted model (metafor's ``robust.rma`` object).

    Attributes
    ----------
    names
        Coefficient names.
    beta
        The model's coefficients (unchanged).
    se, zval, pval, ci_lb, ci_ub
        Robust standard errors, t statistics, p-values and confidence intervals.
    vb
        Robust covariance of the coefficients.
    dfs
        The t df: ``n - p`` (default) or the Satterthwaite df of each coefficient (CR2).
    QM, QM_df, QMp
        Omnibus test of ``btt``: F with ``(m, n - p)`` df (default) or the HTZ test
        (CR2); for an intercept-only model ``zval²`` with ``(1, dfs)``.
    n, k, p
        Clusters, estimates, coefficients.
    vbest
        ``CR0``, ``CR1`` or ``CR2``.
    robumethod
        ``default`` or ``clubSandwich``.
    cluster_sizes
        Estimates per cluster (metafor's ``tcl``), in order of first appearance.
    level
        Confidence level in percent.
    btt
        The coefficients (0-based) of the omnibus test.
    """

    names: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    zval: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    vb: np.ndarray
    dfs: np.ndarray
    QM: float
    QM_df: tuple[float, float]
    QMp: float
    n: int
    k: int
    p: int
    vbest: str
    robumethod: str
    cluster_sizes: dict[str, int]
    level: float
    btt: tuple[int, ...]
    int_only: bool = field(default=False, repr=False)

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Robust confidence intervals (t with ``dfs``) at ``confidence_level``."""
        level = confidence_level if confidence_level <= 1 else confidence_level / 100
        crit = stats.t.ppf(0.5 + level / 2, self.dfs)
        return Interval(self.beta - crit * self.se, self.beta + crit * self.se, level,
                        "confidence")

    def summary(self) -> str:
        """As metafor prints a ``robust.rma`` object (the model results part)."""
        counts = np.array(list(self.cluster_sizes.values()))
        lines = [f"Number of estimates:   {self.k}",
                 f"Number of clusters:    {self.n}",
                 f"Estimates per cluster: {counts.mean():.2f} (mean), "
                 f"{np.median(counts):g} (median)", ""]
        if self.robumethod == "clubSandwich":
            lines.append("Variance-covariance matrix estimated with the CR2 small-sample "
                         "correction (clubSandwich);")
            lines.append("t tests with Satterthwaite df, omnibus test by the HTZ "
                         "approximation.")
        else:
            lines.append(f"Robust variance estimator ({self.vbest}), t and F tests with "
                         f"{self.dfs[0]:g} df.")
        lines.append("")
        if not self.int_only:
            lines.append(f"Test of Moderators (coefficients {btt_label(self.btt)}):")
            lines.append(f"F(df1 = {self.QM_df[0]:g}, df2 = {self.QM_df[1]:.4g}) = "
                         f"{self.QM:.4f}, p-val = {_pvalue(self.QMp, 4)}")
            lines.append("")
        lines.append("Model Results:")
        lines.append("")
        lines.append(f"{'':12s} {'estimate':>9s} {'se':>8s} {'tval':>8s} {'df':>6s} "
                     f"{'pval':>8s} {'ci.lb':>8s} {'ci.ub':>8s}")
        for j, name in enumerate(self.names):
            lines.append(f"{name[:12]:12s} {self.beta[j]:9.4f} {self.se[j]:8.4f} "
                         f"{self.zval[j]:8.4f} {self.dfs[j]:6.4g} {_pvalue(self.pval[j], 4):>8s} "
                         f"{self.ci_lb[j]:8.4f} {self.ci_ub[j]:8.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, metafor's names."""
        vec = lambda a: [finite_or_none(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
        return {"robust": self.robumethod, "vbest": self.vbest, "level": self.level,
                "n": self.n, "k": self.k, "p": self.p, "names": list(self.names),
                "beta": vec(self.beta), "se": vec(self.se), "zval": vec(self.zval),
                "pval": vec(self.pval), "ci_lb": vec(self.ci_lb), "ci_ub": vec(self.ci_ub),
                "dfs": vec(self.dfs), "vb": [vec(r) for r in self.vb],
                "QM": finite_or_none(self.QM), "QM_df": vec(self.QM_df),
                "QMp": finite_or_none(self.QMp), "btt": [b + 1 for b in self.btt],
                "cluster_sizes": dict(self.cluster_sizes)}

    def to_frame(self) -> Any:
        """One row per coefficient."""
        # lazy: pandas only for frames (see fedsynth/results.py)
        import pandas as pd
        return pd.DataFrame({"coefficient": list(self.names), "estimate": self.beta,
                             "se": self.se, "tval": self.zval, "df": self.dfs,
                             "pval": self.pval, "ci_lb": self.ci_lb, "ci_ub": self.ci_ub})


@dataclass(frozen=True, eq=False)
class _Fit:
    """What the sandwich needs of a fitted model."""

    names: tuple[str, ...]
    y: np.ndarray
    X: np.ndarray
    beta: np.ndarray
    vb: np.ndarray                       # the fit's covariance (metafor's x$vb)
    blocks: tuple[tuple[np.ndarray, np.ndarray], ...]   # marginal covariance blocks
    btt: tuple[int, ...]
    level: float


def _fit_of(fit: Any) -> _Fit:
    if isinstance(fit, RmaMvResult):
        return _Fit(fit.names, fit.yi, fit.X, fit.beta, fit.vb, fit.M_blocks, fit.btt,
                    fit.level)
    if isinstance(fit, MetaRegressionResult):
        if fit.yi is None or fit.vi is None or fit.X is None:
            raise InputError("robust: the meta-regression result carries no data")
        y = np.asarray(fit.yi, dtype=float)
        m = np.asarray(fit.vi, dtype=float) + fit.tau2
        X = np.asarray(fit.X, dtype=float)
        blocks = tuple((np.array([i]), np.array([[m[i]]])) for i in range(len(y)))
        has_int = fit.names[0] == "intrcpt"
        btt = tuple(range(1, fit.p)) if has_int and fit.p > 1 else tuple(range(fit.p))
        return _Fit(tuple(fit.names), y, X, np.asarray(fit.coef, dtype=float),
                    np.asarray(fit.vb, dtype=float), blocks, btt, fit.level)
    if isinstance(fit, PoolingResult):
        y = np.asarray(fit.yi, dtype=float)
        tau2 = fit.tau2 if np.isfinite(fit.tau2) else 0.0
        m = np.asarray(fit.vi, dtype=float) + tau2
        blocks = tuple((np.array([i]), np.array([[m[i]]])) for i in range(len(y)))
        return _Fit(("intrcpt",), y, np.ones((len(y), 1)), np.array([fit.estimate]),
                    np.array([[fit.se ** 2]]), blocks, (0,), fit.level)
    raise InputError(f"robust: expects a fitted model (rma_mv, meta_analysis or "
                     f"meta_regression result), got {type(fit).__name__}")


def robust(fit: Any, cluster: Any, adjust: bool = True,
           clubSandwich: bool = False) -> RobustResult:  # noqa: N803 - metafor's name
    """Cluster-robust tests and confidence intervals (metafor's ``robust``).

    Parameters
    ----------
    fit
        A fitted model: :func:`fedsynth.meta.mv.rma_mv` (``rma.mv``),
        :func:`fedsynth.meta_analysis` or a meta-regression result (``rma.uni``).
    cluster
        The cluster of each estimate (values, in the order of the fit's data).
    adjust
        Multiply the sandwich by ``n / (n - p)`` (CR1, metafor's default); ``False``
        gives CR0. Ignored with ``clubSandwich=True``.
    clubSandwich
        Use clubSandwich's CR2 estimator with Satterthwaite df and the HTZ omnibus test.

    Returns
    -------
    RobustResult

    Raises
    ------
    fedsynth.errors.InputError
        A cluster vector of the wrong length or with missing values, no more clusters
        than coefficients, or (CR2) random effects that are not nested within the
        clusters.

    Examples
    --------
    >>> from fedsynth.meta.mv import rma_mv
    >>> data = {"district": [1, 1, 2, 2, 3, 3, 4, 4], "school": [1, 2] * 4}
    >>> fit = rma_mv([0.1, 0.3, -0.2, 0.0, 0.5, 0.6, 0.2, 0.1], [0.02] * 8,
    ...              random="~ 1 | district/school", data=data)
    >>> rob = robust(fit, cluster=data["district"])
    >>> rob.n, rob.vbest, float(rob.dfs[0])
    (4, 'CR1', 3.0)
    """
    f = _fit_of(fit)
    k, p = f.X.shape
    values = list(cluster)
    if len(values) != k:
        raise InputError(f"cluster: {len(values)} values for {k} estimates (the length of "
                         "the data the model was fitted to)")
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise InputError(f"cluster: missing value in row {i + 1}")
    levels: dict[Any, int] = {}
    codes = np.array([levels.setdefault(v, len(levels)) for v in values])
    n = len(levels)
    dfs_resid = n - p
    if dfs_resid <= 0:
        raise InputError(f"cluster: the number of clusters ({n}) must be larger than the "
                         f"number of coefficients ({p})")
    members = [np.flatnonzero(codes == c) for c in range(n)]
    sizes = {str(v): int(len(members[c])) for v, c in levels.items()}
    e = f.y - f.X @ f.beta
    # W = M⁻¹ by blocks of the marginal covariance.
    XtW = np.zeros((p, k))
    for rows, block in f.blocks:
        XtW[:, rows] = np.linalg.solve(block, f.X[rows]).T
    level = f.level
    alpha = 1 - level / 100
    if not clubSandwich:
        bread = f.vb @ XtW
        u = np.stack([bread[:, rows] @ e[rows] for rows in members])
        vb = u.T @ u
        vbest = "CR0"
        if adjust:
            vb = vb * n / dfs_resid
            vbest = "CR1"
        se = np.sqrt(np.diag(vb))
        zval = f.beta / se
        dfs = np.full(p, float(dfs_resid))
        pval = 2 * stats.t.sf(np.abs(zval), dfs_resid)
        crit = stats.t.isf(alpha / 2, dfs_resid)
        bt = list(f.btt)
        QM = float(f.beta[bt] @ np.linalg.solve(vb[np.ix_(bt, bt)], f.beta[bt])) / len(bt)
        QM_df = (float(len(bt)), float(dfs_resid))
        QMp = float(stats.f.sf(QM, len(bt), dfs_resid))
        return RobustResult(
            names=f.names, beta=f.beta, se=se, zval=zval, pval=pval, ci_lb=f.beta - crit * se,
            ci_ub=f.beta + crit * se, vb=vb, dfs=dfs, QM=QM, QM_df=QM_df, QMp=QMp, n=n, k=k,
            p=p, vbest=vbest, robumethod="default", cluster_sizes=sizes, level=level,
            btt=f.btt, int_only=_int_only(f))
    return _cr2(f, codes, members, e, XtW, sizes, alpha)


def _int_only(f: _Fit) -> bool:
    return f.X.shape[1] == 1 and bool(np.allclose(f.X[:, 0], 1.0))


def _cluster_theta(f: _Fit, codes: np.ndarray, members: list[np.ndarray]) -> list[np.ndarray]:
    """Marginal covariance of each cluster (the blocks must nest within the clusters)."""
    thetas = [np.zeros((len(rows), len(rows))) for rows in members]
    position = np.empty(len(codes), dtype=int)
    for rows in members:
        position[rows] = np.arange(len(rows))
    for rows, block in f.blocks:
        c = codes[rows]
        if np.any(c != c[0]):
            raise InputError("cluster: the random effects (or the covariances in V) are not "
                             "nested within the clustering variable, which the CR2 "
                             "estimator (clubSandwich) requires")
        pos = position[rows]
        thetas[c[0]][np.ix_(pos, pos)] = block
    return thetas


def _inv_sqrt(mat: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root, eigenvalues <= 1e-12 set to 0 (clubSandwich)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    wp = np.where(w > 1e-12, 1 / np.sqrt(np.where(w > 1e-12, w, 1.0)), 0.0)
    return (v * wp) @ v.T


def _cr2(f: _Fit, codes: np.ndarray, members: list[np.ndarray], e: np.ndarray,
         XtW: np.ndarray, sizes: dict[str, int], alpha: float) -> RobustResult:
    """The CR2 estimator of clubSandwich, its Satterthwaite df and HTZ Wald test."""
    k, p = f.X.shape
    n = len(members)
    thetas = _cluster_theta(f, codes, members)
    M = np.linalg.inv(XtW @ f.X)
    M = (M + M.T) / 2
    Lm = np.linalg.cholesky(M)
    comps = np.empty((n, p))
    Gs = []
    Hs = np.empty((n, p, p))
    for j, rows in enumerate(members):
        theta = thetas[j]
        Xj = f.X[rows]
        XWj = XtW[:, rows]                               # X_jᵀ W_j (p, n_j)
        Lc = np.linalg.cholesky(theta)                   # Θ = Lc Lcᵀ; R = Lcᵀ
        R = Lc.T
        IH = np.eye(len(rows)) - Xj @ M @ XWj
        G = R @ IH @ theta @ R.T
        A = R.T @ _inv_sqrt(G) @ R
        E = XWj @ A                                      # adjusted estimating matrix
        comps[j] = E @ e[rows]
        ME = M @ E
        Gs.append(ME @ Lc)                               # (p, n_j)
        Hs[j] = ME @ Xj @ Lm                             # (p, p)
    vb = M @ (comps.T @ comps) @ M
    se = np.sqrt(np.diag(vb))
    zval = f.beta / se
    # Satterthwaite df per coefficient (clubSandwich's coef_test).
    Gdiag = np.stack([np.einsum("ic,ic->i", g, g) for g in Gs])        # (n, p)
    dfs = np.empty(p)
    for i in range(p):
        P = -Hs[:, i, :] @ Hs[:, i, :].T
        P[np.diag_indices(n)] += Gdiag[:, i]
        dfs[i] = np.trace(P) ** 2 / float(np.sum(P * P))
    pval = 2 * stats.t.sf(np.abs(zval), dfs)
    crit = stats.t.isf(alpha / 2, dfs)
    if _int_only(f):
        QM, QM_df, QMp = float(zval[0] ** 2), (1.0, float(dfs[0])), float(pval[0])
    else:
        QM, QM_df, QMp = _htz(f, vb, Gs, Hs, list(f.btt))
    return RobustResult(
        names=f.names, beta=f.beta, se=se, zval=zval, pval=pval, ci_lb=f.beta - crit * se,
        ci_ub=f.beta + crit * se, vb=vb, dfs=dfs, QM=QM, QM_df=QM_df, QMp=QMp, n=n, k=k,
        p=p, vbest="CR2", robumethod="clubSandwich", cluster_sizes=sizes,
        level=f.level, btt=f.btt, int_only=_int_only(f))


def _htz(f: _Fit, vb: np.ndarray, Gs: list[np.ndarray], Hs: np.ndarray,
         btt: list[int]) -> tuple[float, tuple[float, float], float]:
    """HTZ test of ``beta[btt] = 0`` (Pustejovsky & Tipton 2018; clubSandwich's Wald_test)."""
    q = len(btt)
    n = len(Gs)
    Hc = Hs[:, btt, :]                                   # (n, q, p)
    # P[s, t, j, k] = -Σ_u H_j[s, u] H_k[t, u] + δ_jk Σ_c G_j[s, c] G_j[t, c]
    P = -np.einsum("jsu,ktu->stjk", Hc, Hc)
    GG = np.stack([g[btt] @ g[btt].T for g in Gs])       # (n, q, q)
    idx = np.arange(n)
    P[:, :, idx, idx] += np.transpose(GG, (1, 2, 0))
    Omega = np.einsum("stjj->st", P)
    On = _inv_sqrt(Omega)
    B = np.einsum("as,stjk,tb->abjk", On, P, On)
    var = np.einsum("stjk,tsjk->st", B, B) + np.einsum("ssjk,ttjk->st", B, B)
    nu = q * (q + 1) / float(var.sum())
    b = f.beta[btt]
    Q = float(b @ np.linalg.solve(vb[np.ix_(btt, btt)], b))
    delta = max((nu - q + 1) / nu, 0.0)
    df2 = nu - q + 1
    F = max(0.0, delta * Q / q)
    pv = float(stats.f.sf(F, q, df2)) if df2 > 0 else float("nan")
    return F, (float(q), float(df2)), pv
