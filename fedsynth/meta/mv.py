"""Multilevel and multivariate random-effects models: metafor's ``rma.mv``.

Why
---
Effect sizes are often not independent: several schools of one district, several effects
reported by one study, two outcomes measured on the same patients. ``rma.mv`` (Viechtbauer
2010, *J Stat Softw* 36(3); Konstantopoulos 2011, "Fixed effects and variance components
estimation in three-level meta-analysis", *Res Synth Methods* 2; Berkey et al. 1998,
"Meta-analysis of multiple outcomes by regression with random effects", *Stat Med* 17)
models them as

    y = X β + Σ_l Z_l u_l + Z_g g + e,   e ~ N(0, V),

with ``V`` the known within-study (sampling) covariance, ``u_l ~ N(0, σ²_l I)`` one random
effect per level of each ``~ 1 | a/b`` term (nested terms add ``a`` and ``a/b``), and ``g``
the correlated random effects of an ``~ inner | outer`` term whose covariance ``G`` has a
structure: ``CS`` (compound symmetry), ``HCS`` (heteroscedastic CS), ``UN`` (unstructured),
``DIAG`` or ``ID``.

Estimation maximises metafor's ML or REML log-likelihood (constants included, REML with
``+ ½ log|XᵀX|``, metafor's ``REMLf = TRUE``), so logLik, deviance, AIC, BIC and AICc are
metafor's. The marginal covariance is block-diagonal over the connected components of
``V`` and the grouping variables; blocks of equal size are stacked and factorised in one
batched numpy call. The optimiser is L-BFGS-B on the variance components (divided by the
mean sampling variance, so the problem has no units: issue 16's scale-free rule) and
correlations in [-1, 1], with the analytic score (Harville 1977, *JASA* 72: ``∂ℓ/∂θ =
-½ tr(P Σ_θ) + ½ yᵀ P Σ_θ P y``), followed by Newton steps on a finite-difference Hessian of
that score, which reach the optimum to ~1e-10 relative (tighter than metafor's nlminb).

Multilevel I² follows the metafor FAQ (Nakagawa & Santos 2012, "Methodological issues and
advances in biological meta-analysis", *Evol Ecol* 26): ``100 σ²_l / (Σ σ² + s²)`` with the
typical within-study variance ``s² = (k - p) / tr(P)``, ``P`` from ``V`` alone.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, sparse, stats
from scipy.sparse import csgraph

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta._format import btt_label
from fedsynth.meta._format import p as _pvalue
from fedsynth.results import Interval, ResultMixin

__all__ = ["RmaMvResult", "rma_mv", "bldiag", "vcalc", "parse_random", "RandomTerm",
           "MV_STRUCTS", "MV_METHODS", "MV_TESTS"]

#: Covariance structures of an ``~ inner | outer`` term (metafor's ``struct``).
MV_STRUCTS = ("CS", "HCS", "UN", "DIAG", "ID")
#: Estimation methods of ``rma.mv``.
MV_METHODS = ("REML", "ML")
#: Tests of the fixed effects.
MV_TESTS = ("z", "t")
_LOG2PI = math.log(2 * math.pi)
_TERM = re.compile(r"^\s*~\s*(?P<inner>[^|]+?)\s*\|\s*(?P<outer>.+?)\s*$")
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects formula as parsed (``~ 1 | a/b`` or ``~ inner | outer``).

    Attributes
    ----------
    formula
        The formula as given.
    inner
        ``None`` for ``~ 1 | ...`` terms, else the inner variable (``outcome``).
    outer
        The grouping variables: nested levels for ``~ 1 | a/b`` (``("a", "b")``), one
        variable for ``~ inner | outer``.
    """

    formula: str
    inner: str | None
    outer: tuple[str, ...]


def parse_random(random: str | Sequence[str]) -> tuple[RandomTerm, ...]:
    """Parse metafor's ``random`` argument: one formula or a list of formulas.

    Parameters
    ----------
    random
        ``"~ 1 | study"``, ``"~ 1 | district/school"`` (nested: one σ² per level),
        ``"~ outcome | trial"`` (correlated effects with a ``struct``), or a list of such
        formulas (at most one ``~ inner | outer`` term).

    Returns
    -------
    tuple of RandomTerm

    Raises
    ------
    fedsynth.errors.InputError
        A formula that is not of these forms, or two ``~ inner | outer`` terms.
    """
    formulas = [random] if isinstance(random, str) else list(random)
    if not formulas:
        raise InputError("random: at least one formula is needed, e.g. '~ 1 | study'")
    terms = []
    for formula in formulas:
        match = _TERM.match(str(formula))
        if match is None:
            raise InputError(f"random: {formula!r} is not of the form '~ 1 | group', "
                             "'~ 1 | outer/inner' or '~ inner | outer'")
        inner = match.group("inner").strip()
        outer = tuple(part.strip() for part in match.group("outer").split("/"))
        for name in outer + (() if inner == "1" else (inner,)):
            if not _NAME.match(name):
                raise InputError(f"random: {name!r} in {formula!r} is not a variable name")
        if inner != "1" and len(outer) != 1:
            raise InputError(f"random: {formula!r}: an '~ inner | outer' term takes one "
                             "outer variable")
        terms.append(RandomTerm(str(formula), None if inner == "1" else inner, outer))
    if sum(t.inner is not None for t in terms) > 1:
        raise InputError("random: at most one '~ inner | outer' term is supported")
    return tuple(terms)


def bldiag(*blocks: Any) -> np.ndarray:
    """Block-diagonal matrix of the given square blocks (metafor's ``bldiag``).

    Parameters
    ----------
    *blocks
        Square matrices (or scalars, or one list of them).

    Returns
    -------
    numpy.ndarray
    """
    if len(blocks) == 1 and isinstance(blocks[0], (list, tuple)):
        blocks = tuple(blocks[0])
    mats = [np.atleast_2d(np.asarray(b, dtype=float)) for b in blocks]
    for i, m in enumerate(mats):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InputError(f"bldiag: block {i + 1} is not a square matrix (shape {m.shape})")
    n = sum(m.shape[0] for m in mats)
    out = np.zeros((n, n))
    at = 0
    for m in mats:
        s = m.shape[0]
        out[at:at + s, at:at + s] = m
        at += s
    return out


def vcalc(vi: Any, cluster: Any, rho: float, obs: Any | None = None) -> np.ndarray:
    """Sampling covariance with a constant correlation within clusters (metafor's ``vcalc``).

    The simplest and most used form of ``vcalc(vi, cluster, obs, rho)``: estimates from one
    cluster (study) that come from the same participants are correlated with ``rho``, so
    ``V[i, j] = rho sqrt(vi[i] vi[j])`` within a cluster, 0 across clusters (Pustejovsky &
    Tipton 2022, "Meta-analysis with robust variance estimation", *Prev Sci* 23).

    Parameters
    ----------
    vi
        Sampling variances.
    cluster
        Cluster (study) of each estimate.
    rho
        The within-cluster correlation, in [-1, 1].
    obs
        Observation identifiers within clusters (accepted for metafor's signature; two
        rows of one cluster with the same ``obs`` are the same observation: correlation 1).

    Returns
    -------
    numpy.ndarray
        The ``(k, k)`` covariance matrix, in the order of ``vi``.
    """
    v = np.asarray(vi, dtype=float)
    cl = np.asarray(cluster, dtype=object)
    if v.ndim != 1 or len(cl) != len(v):
        raise InputError("vcalc: vi and cluster must be vectors of one length")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise InputError("vcalc: vi must be finite and non-negative")
    if not -1 <= float(rho) <= 1:
        raise InputError(f"vcalc: rho must be in [-1, 1], got {rho!r}")
    same = cl[:, None] == cl[None, :]
    R = np.where(same, float(rho), 0.0)
    if obs is not None:
        ob = np.asarray(obs, dtype=object)
        R = np.where(same & (ob[:, None] == ob[None, :]), 1.0, R)
    np.fill_diagonal(R, 1.0)
    sd = np.sqrt(v)
    return R * np.outer(sd, sd)


# ----------------------------------------------------------------------------- model

@dataclass(frozen=True, eq=False)
class _Group:
    """Blocks of one size, stacked: everything the likelihood needs per block."""

    rows: np.ndarray       # (nb, s) row indices
    y: np.ndarray          # (nb, s)
    X: np.ndarray          # (nb, s, p)
    V: np.ndarray          # (nb, s, s)
    same: np.ndarray       # (nsig, nb, s, s) same-level masks of the σ² terms
    outer: np.ndarray      # (nb, s, s) same-outer mask of the G term
    onehot: np.ndarray     # (nb, s, L) inner levels of the G term


@dataclass(frozen=True, eq=False)
class _Model:
    groups: tuple[_Group, ...]
    N: int
    p: int
    nsig: int
    L: int
    struct: str | None
    reml: bool
    logdet_xtx: float
    scale: float


def _unpack(theta: np.ndarray, model: _Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ², τ² and ρ from the parameter vector (variances in data units)."""
    ns = model.nsig
    sigma2 = theta[:ns]
    nt = _n_tau(model.struct, model.L)
    tau2 = theta[ns:ns + nt]
    rho = theta[ns + nt:]
    return sigma2, tau2, rho


def _n_tau(struct: str | None, L: int) -> int:
    if struct is None:
        return 0
    return 1 if struct in ("CS", "ID") else L


def _n_rho(struct: str | None, L: int) -> int:
    if struct in ("CS", "HCS"):
        return 1
    if struct == "UN":
        return L * (L - 1) // 2
    return 0


def _low(L: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-triangle indices in R's column-major order (metafor's order of ``rho``)."""
    cols, rows = np.triu_indices(L, 1)
    return rows, cols


def _G(tau2: np.ndarray, rho: np.ndarray, struct: str | None, L: int) -> np.ndarray:
    """Between-cluster covariance of the ``~ inner | outer`` term."""
    if struct is None:
        return np.zeros((0, 0))
    if struct == "ID":
        return float(tau2[0]) * np.eye(L)
    if struct == "DIAG":
        return np.diag(tau2)
    R = np.eye(L)
    if struct in ("CS", "HCS"):
        R = np.where(np.eye(L) > 0, 1.0, float(rho[0]))
    else:
        low = _low(L)
        R[low] = rho
        R[(low[1], low[0])] = rho
    sd = np.sqrt(np.maximum(tau2 if struct != "CS" else np.repeat(tau2, L), 0.0))
    return R * np.outer(sd, sd)


def _dG(tau2: np.ndarray, rho: np.ndarray, struct: str | None, L: int,
        floor: float) -> list[np.ndarray]:
    """Derivatives of G with respect to each τ² and ρ parameter."""
    out: list[np.ndarray] = []
    if struct is None:
        return out
    if struct == "ID":
        return [np.eye(L)]
    if struct == "DIAG":
        return [np.diag(np.eye(L)[j]) for j in range(L)]
    t = np.maximum(tau2 if struct != "CS" else np.repeat(tau2, L), floor)
    sd = np.sqrt(t)
    Gs = _G(t if struct != "CS" else t[:1], rho, struct, L)   # at the floored τ²
    if struct == "CS":
        R = Gs / float(t[0])
        out.append(R)
        d = float(t[0]) * (1 - np.eye(L))
        out.append(d)
        return out
    for j in range(L):
        d = np.zeros((L, L))
        d[j, :] = Gs[j, :] / (2 * t[j])
        d[:, j] += Gs[:, j] / (2 * t[j])
        out.append(d)
    outer = np.outer(sd, sd)
    if struct == "HCS":
        out.append(outer * (1 - np.eye(L)))
        return out
    for a, b in zip(*_low(L), strict=True):
        d = np.zeros((L, L))
        d[a, b] = d[b, a] = outer[a, b]
        out.append(d)
    return out


def _evaluate(theta: np.ndarray, model: _Model, gradient: bool = True) -> dict[str, Any] | None:
    """Log-likelihood, β, its covariance and (optionally) the score; None if Σ is not PD."""
    sigma2, tau2, rho = _unpack(theta, model)
    G = _G(tau2, rho, model.struct, model.L)
    out = _evaluate_G(sigma2, G, model, gradient)
    if out is None or not gradient:
        return out
    floor = 1e-12 * model.scale
    derivs = _dG(tau2, rho, model.struct, model.L, floor)
    grad_g = np.array([float(np.sum(out["dG"] * d)) for d in derivs])
    out["grad"] = np.concatenate([out["grad_sigma"], grad_g])
    return out


def _evaluate_G(sigma2: np.ndarray, G: np.ndarray, model: _Model,
                gradient: bool) -> dict[str, Any] | None:
    """Log-likelihood at σ² and G; with ``gradient``, ∂ℓ/∂σ² and ∂ℓ/∂G (entrywise)."""
    p = model.p
    parts = []
    H = np.zeros((p, p))
    g = np.zeros(p)
    logdet = 0.0
    for grp in model.groups:
        S = grp.V + np.einsum("t,tbij->bij", sigma2, grp.same) if model.nsig else grp.V.copy()
        if model.struct is not None:
            S = S + grp.outer * np.einsum("bia,ac,bjc->bij", grp.onehot, G, grp.onehot)
        try:
            C = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return None
        logdet += float(2 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum())
        eye = np.broadcast_to(np.eye(S.shape[1]), S.shape)
        W = np.linalg.solve(S, eye)
        W = (W + np.swapaxes(W, 1, 2)) / 2
        WX = W @ grp.X
        H += np.einsum("bip,biq->pq", grp.X, WX)
        g += np.einsum("bip,bi->p", WX, grp.y)
        parts.append((S, W, WX))
    try:
        Hc = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None
    Hinv = np.linalg.inv(H)
    Hinv = (Hinv + Hinv.T) / 2
    beta = Hinv @ g
    rss = 0.0
    us = []
    for grp, (_, W, _) in zip(model.groups, parts, strict=True):
        r = grp.y - grp.X @ beta
        u = np.einsum("bij,bj->bi", W, r)
        rss += float(np.einsum("bi,bi->", r, u))
        us.append(u)
    logdet_h = float(2 * np.log(np.diag(Hc)).sum())
    if model.reml:
        ll = -0.5 * ((model.N - p) * _LOG2PI - model.logdet_xtx + logdet + logdet_h + rss)
    else:
        ll = -0.5 * (model.N * _LOG2PI + logdet + rss)
    out: dict[str, Any] = {"ll": ll, "beta": beta, "vb": Hinv, "G": G, "blocks": parts}
    if not gradient:
        return out
    ns = model.nsig
    grad_sigma = np.zeros(ns)
    dG = np.zeros((model.L, model.L))
    for grp, (_, W, WX), u in zip(model.groups, parts, us, strict=True):
        D = -0.5 * W + 0.5 * np.einsum("bi,bj->bij", u, u)
        if model.reml:
            D = D + 0.5 * np.einsum("bip,pq,bjq->bij", WX, Hinv, WX)
        if ns:
            grad_sigma += np.einsum("tbij,bij->t", grp.same, D)
        if model.struct is not None:
            dG += np.einsum("bia,bij,bjc->ac", grp.onehot, D * grp.outer, grp.onehot)
    out["grad_sigma"] = grad_sigma
    out["dG"] = dG
    return out


def _components(N: int, Vdense: np.ndarray | None, Vdiag: np.ndarray,
                groupings: list[np.ndarray]) -> list[np.ndarray]:
    """Rows of each independent block (connected components of V and the groupings)."""
    rows_list = []
    cols_list = []
    if Vdense is not None:
        r, c = np.nonzero(Vdense)
        rows_list.append(r)
        cols_list.append(c)
    for codes in groupings:
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        same_next = sorted_codes[1:] == sorted_codes[:-1]
        rows_list.append(order[:-1][same_next])
        cols_list.append(order[1:][same_next])
    rows_list.append(np.arange(N))
    cols_list.append(np.arange(N))
    r = np.concatenate(rows_list)
    c = np.concatenate(cols_list)
    graph = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(N, N))
    n, labels = csgraph.connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    del Vdiag, n
    return np.split(order, bounds)


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes of values in order of first appearance, and the levels."""
    levels: dict[Any, int] = {}
    codes = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        codes[i] = levels.setdefault(v, len(levels))
    return codes, list(levels)


# ----------------------------------------------------------------------------- result

@dataclass(frozen=True, eq=False)
class RmaMvResult(ResultMixin):
    """A fitted ``rma.mv`` model (fields named as metafor's object).

    Attributes
    ----------
    names
        Coefficient names.
    beta, se, zval, pval, ci_lb, ci_ub
        Coefficients with Wald z (``test="z"``) or t inference (``test="t"``: ``zval``
        holds the t statistics, df in ``ddf``, as metafor).
    vb
        Covariance of the coefficients.
    sigma2, s_names, s_nlevels
        Variance components of the ``~ 1 | ...`` terms (one per nesting level), their
        names (``district``, ``district/school``) and level counts.
    tau2, rho, G, g_levels, struct
        The ``~ inner | outer`` term: variances (one for CS/ID), correlations (CS/HCS:
        one; UN: the lower triangle by column), the covariance matrix, the inner levels.
    QE, QEp, QE_df
        Test of residual heterogeneity (weights from ``V`` alone).
    QM, QMp, QM_df
        Omnibus test of the coefficients except the intercept (``btt``); an F statistic
        with ``(m, k - p)`` df when ``test="t"``.
    logLik, deviance, AIC, BIC, AICc
        metafor's ``fit.stats`` for ``method``.
    k, p, method, test, level, ddf
        Estimates, coefficients, estimation method, test, level (percent) and the t df.
    converged, message
        Optimiser outcome.
    """

    names: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    zval: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    vb: np.ndarray
    sigma2: np.ndarray
    s_names: tuple[str, ...]
    s_nlevels: tuple[int, ...]
    tau2: np.ndarray
    rho: np.ndarray
    G: np.ndarray
    g_levels: tuple[str, ...]
    struct: str | None
    QE: float
    QEp: float
    QE_df: int
    QM: float
    QMp: float
    QM_df: tuple[float, float]
    logLik: float
    deviance: float
    AIC: float
    BIC: float
    AICc: float
    k: int
    p: int
    method: str
    test: str
    level: float
    ddf: float
    btt: tuple[int, ...]
    converged: bool
    message: str
    random: tuple[str, ...]
    yi: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    V: np.ndarray = field(repr=False)
    M_blocks: tuple[tuple[np.ndarray, np.ndarray], ...] = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)

    # -- metafor-style accessors
    @property
    def coef(self) -> np.ndarray:
        """The coefficients (``coef(fit)``)."""
        return self.beta

    @property
    def vi(self) -> np.ndarray:
        """The sampling variances (diagonal of ``V``)."""
        return np.diag(self.V).copy()

    def marginal_covariance(self) -> np.ndarray:
        """The fitted marginal covariance ``M = V + Z G Z'`` (metafor's ``fit$M``)."""
        M = np.zeros((self.k, self.k))
        for rows, block in self.M_blocks:
            M[np.ix_(rows, rows)] = block
        return M

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of the coefficients at ``confidence_level``."""
        level = confidence_level if confidence_level <= 1 else confidence_level / 100
        if self.test == "t":
            crit = float(stats.t.ppf(0.5 + level / 2, self.ddf))
        else:
            crit = float(stats.norm.ppf(0.5 + level / 2))
        return Interval(self.beta - crit * self.se, self.beta + crit * self.se, level,
                        "confidence")

    def i2(self) -> MultilevelI2:
        """Multilevel I² (total and per σ² level), the metafor FAQ's definition.

        ``100 σ²_l / (Σ σ² + s²)``, ``s² = (k - p) / tr(P)`` the typical within-study
        variance with ``P = W - W X (XᵀWX)⁻¹ XᵀW``, ``W = V⁻¹`` (Nakagawa & Santos 2012).
        Needs ``~ 1 | ...`` terms only (no ``~ inner | outer`` term).
        """
        if self.struct is not None:
            raise InputError("i2: multilevel I² is defined for '~ 1 | ...' terms only")
        W = np.linalg.inv(self.V)
        WX = W @ self.X
        P = W - WX @ np.linalg.solve(self.X.T @ WX, WX.T)
        typical = (self.k - self.p) / float(np.trace(P))
        total = float(self.sigma2.sum())
        return MultilevelI2(I2=100 * total / (total + typical),
                            I2_levels=100 * self.sigma2 / (total + typical),
                            s_names=self.s_names, typical=typical)

    def robust(self, cluster: Any, adjust: bool = True,
               clubSandwich: bool = False) -> Any:  # noqa: N803 - metafor's name
        """Cluster-robust inference (:func:`fedsynth.meta.robust.robust`)."""
        # lazy: robust imports this module (cycle)
        from fedsynth.meta.robust import robust
        return robust(self, cluster, adjust=adjust, clubSandwich=clubSandwich)

    def summary(self) -> str:
        """The fit as metafor's ``print.rma.mv`` lays it out."""
        lines = [f"Multivariate Meta-Analysis Model (k = {self.k}; method: {self.method})", ""]
        lines.append("  logLik  Deviance       AIC       BIC      AICc")
        lines.append(" ".join(f"{v:9.4f}" for v in (self.logLik, self.deviance, self.AIC,
                                                    self.BIC, self.AICc)))
        lines.append("")
        if len(self.sigma2):
            lines.append("Variance Components:")
            lines.append("")
            lines.append(f"{'':10s} {'estim':>8s} {'sqrt':>8s} {'nlvls':>6s}  factor")
            for j, name in enumerate(self.s_names):
                lines.append(f"sigma^2.{j + 1:<2d} {self.sigma2[j]:8.4f} "
                             f"{math.sqrt(max(self.sigma2[j], 0)):8.4f} "
                             f"{self.s_nlevels[j]:6d}  {name}")
            lines.append("")
        if self.struct is not None:
            lines.append(f"outer factor: {self.random[-1].split('|')[1].strip()}  "
                         f"inner factor: {self.random[-1].split('|')[0].strip(' ~')}  "
                         f"struct: {self.struct}")
            lines.append("")
            for j, lev in enumerate(self.g_levels):
                t2 = self.tau2[0] if len(self.tau2) == 1 else self.tau2[j]
                lines.append(f"tau^2.{j + 1:<2d} {t2:8.4f} {math.sqrt(max(t2, 0)):8.4f}  "
                             f"{lev}")
            if len(self.rho):
                lines.append("rho: " + " ".join(f"{r:.4f}" for r in self.rho))
            lines.append("")
        lines.append(f"Test for Residual Heterogeneity:\nQE(df = {self.QE_df}) = "
                     f"{self.QE:.4f}, p-val = {_pvalue(self.QEp, 4)}")
        lines.append("")
        if self.p > 1 or self.btt != (0,):
            if self.test == "t":
                lines.append(f"Test of Moderators (coefficients {btt_label(self.btt)}):\n"
                             f"F(df1 = {self.QM_df[0]:g}, df2 = {self.QM_df[1]:g}) = "
                             f"{self.QM:.4f}, p-val = {_pvalue(self.QMp, 4)}")
            else:
                lines.append(f"Test of Moderators (coefficients {btt_label(self.btt)}):\n"
                             f"QM(df = {self.QM_df[0]:g}) = {self.QM:.4f}, "
                             f"p-val = {_pvalue(self.QMp, 4)}")
            lines.append("")
        lines.append("Model Results:")
        lines.append("")
        stat = "tval" if self.test == "t" else "zval"
        head = f"{'':12s} {'estimate':>9s} {'se':>8s} {stat:>8s} "
        head += f"{'df':>4s} " if self.test == "t" else ""
        head += f"{'pval':>8s} {'ci.lb':>8s} {'ci.ub':>8s}"
        lines.append(head)
        for j, name in enumerate(self.names):
            row = (f"{name[:12]:12s} {self.beta[j]:9.4f} {self.se[j]:8.4f} "
                   f"{self.zval[j]:8.4f} ")
            row += f"{self.ddf:4g} " if self.test == "t" else ""
            row += f"{_pvalue(self.pval[j], 4):>8s} {self.ci_lb[j]:8.4f} {self.ci_ub[j]:8.4f}"
            lines.append(row)
        if not self.converged:
            lines.append("")
            lines.append(f"Warning: {self.message}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: metafor's names (``beta``, ``sigma2``, ``tau2``, ``rho``, ...)."""
        vec = lambda a: [finite_or_none(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
        return {
            "model": "rma.mv", "method": self.method, "test": self.test,
            "level": self.level, "k": self.k, "p": self.p, "random": list(self.random),
            "struct": self.struct, "names": list(self.names), "beta": vec(self.beta),
            "se": vec(self.se), "zval": vec(self.zval), "pval": vec(self.pval),
            "ci_lb": vec(self.ci_lb), "ci_ub": vec(self.ci_ub),
            "vb": [vec(r) for r in self.vb], "ddf": finite_or_none(self.ddf),
            "sigma2": vec(self.sigma2), "s_names": list(self.s_names),
            "s_nlevels": list(self.s_nlevels), "tau2": vec(self.tau2),
            "rho": vec(self.rho), "G": [vec(r) for r in self.G],
            "g_levels": list(self.g_levels),
            "QE": finite_or_none(self.QE), "QE_df": self.QE_df,
            "QEp": finite_or_none(self.QEp), "QM": finite_or_none(self.QM),
            "QM_df": [finite_or_none(v) for v in self.QM_df],
            "QMp": finite_or_none(self.QMp), "btt": [b + 1 for b in self.btt],
            "logLik": finite_or_none(self.logLik),
            "deviance": finite_or_none(self.deviance), "AIC": finite_or_none(self.AIC),
            "BIC": finite_or_none(self.BIC), "AICc": finite_or_none(self.AICc),
            "converged": self.converged, "message": self.message}

    def to_frame(self) -> Any:
        """One row per coefficient."""
        # lazy: pandas only for frames (see fedsynth/results.py)
        import pandas as pd
        return pd.DataFrame({"coefficient": list(self.names), "estimate": self.beta,
                             "se": self.se, "zval": self.zval, "pval": self.pval,
                             "ci_lb": self.ci_lb, "ci_ub": self.ci_ub})


@dataclass(frozen=True)
class MultilevelI2(ResultMixin):
    """Multilevel I² (metafor FAQ; Nakagawa & Santos 2012).

    Attributes
    ----------
    I2
        Total I² in percent.
    I2_levels
        I² of each σ² level, in the order of ``s_names``.
    s_names
        The levels.
    typical
        The typical within-study variance ``(k - p) / tr(P)``.
    """

    I2: float
    I2_levels: np.ndarray
    s_names: tuple[str, ...]
    typical: float
    level: float = 95.0

    def summary(self) -> str:
        """One line per level, then the total."""
        rows = [f"I^2 ({name}): {v:.2f}%" for name, v in zip(self.s_names, self.I2_levels,
                                                             strict=True)]
        return "\n".join(rows + [f"I^2 (total): {self.I2:.2f}%"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"I2": finite_or_none(self.I2),
                "I2_levels": {n: finite_or_none(v) for n, v in zip(
                    self.s_names, self.I2_levels, strict=True)},
                "typical": finite_or_none(self.typical)}


# ----------------------------------------------------------------------------- fitting

def _column(data: Any, name: str, what: str, k: int | None = None) -> list[Any]:
    if data is None:
        raise InputError(f"{what}: {name!r} names a column but no data was given")
    try:
        values = list(data[name])
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{what}: unknown column {name!r}") from None
    if k is not None and len(values) != k:
        raise InputError(f"{what}: column {name!r} has {len(values)} rows, expected {k}")
    return values


def _values(arg: Any, data: Any, what: str) -> Any:
    if isinstance(arg, str):
        return _column(data, arg, what)
    return arg


def rma_mv(yi: Any, V: Any, mods: Any | None = None,
           random: str | Sequence[str] | None = None,
           struct: str = "CS", method: str = "REML", test: str = "z", level: float = 95,
           data: Any | None = None, slab: Any | None = None,
           names: Sequence[str] | None = None, intercept: bool = True,
           btt: Sequence[int] | None = None, maxit: int = 1000) -> RmaMvResult:
    """Fit a multilevel / multivariate random-effects model (metafor's ``rma.mv``).

    Parameters
    ----------
    yi
        Effect sizes: a column name of ``data`` or the values.
    V
        Sampling variances (a vector, a column name) or the ``(k, k)`` within-study
        covariance matrix (block-diagonal; :func:`bldiag`, :func:`vcalc`).
    mods
        Moderators: a ``(k, p)`` design matrix (``intercept`` is then ignored: the matrix
        is used as given), or a list of column names of ``data`` (numeric; an intercept
        is added unless ``intercept=False``), or ``None`` (intercept only).
    random
        ``"~ 1 | study"``, ``"~ 1 | district/school"`` (one σ² per nesting level),
        ``"~ outcome | trial"`` (with ``struct``), or a list of formulas. The variables are
        columns of ``data``. ``"~ 1 | id"`` with no ``id`` column means one random effect
        per row (the default, as metafor's ``~ 1 | id`` with ``id = 1:k``).
    struct
        Structure of the ``~ inner | outer`` term: ``CS`` (metafor's default), ``HCS``,
        ``UN``, ``DIAG`` or ``ID``.
    method
        ``REML`` (default) or ``ML``.
    test
        ``z`` (default) or ``t`` (t tests with ``k - p`` df and an F omnibus test,
        metafor's ``dfs = "residual"``).
    level
        Confidence level (percent, or a fraction).
    data
        A :class:`pandas.DataFrame` or mapping of columns.
    slab
        Study labels (a column name or values).
    names
        Coefficient names for a matrix ``mods``.
    intercept
        Add an intercept to column-list ``mods``.
    btt
        Coefficients (0-based) of the omnibus test; default all but the intercept.
    maxit
        Optimiser iterations.

    Returns
    -------
    RmaMvResult

    Raises
    ------
    fedsynth.errors.InputError
        Unknown columns or options, non-finite values, a ``V`` that is not a symmetric
        positive semi-definite matrix of the right size, too few estimates.

    Examples
    --------
    >>> import numpy as np
    >>> from fedsynth.meta.mv import rma_mv
    >>> data = {"district": [1, 1, 2, 2, 3, 3], "school": [1, 2, 1, 2, 1, 2],
    ...         "yi": [0.1, 0.3, -0.2, 0.0, 0.5, 0.6], "vi": [0.02] * 6}
    >>> fit = rma_mv("yi", "vi", random="~ 1 | district/school", data=data)
    >>> fit.s_names
    ('district', 'district/school')
    """
    if struct not in MV_STRUCTS:
        raise InputError(f"struct: unknown value {struct!r} (known: {', '.join(MV_STRUCTS)})")
    if method not in MV_METHODS:
        raise InputError(f"method: unknown value {method!r} (known: {', '.join(MV_METHODS)})")
    if test not in MV_TESTS:
        raise InputError(f"test: unknown value {test!r} (known: {', '.join(MV_TESTS)})")
    level = float(level) * (100 if float(level) <= 1 else 1)
    if not 0 < level < 100:
        raise InputError(f"level: must be in (0, 100), got {level!r}")
    y = np.asarray(_values(yi, data, "yi"), dtype=float).ravel()
    k = len(y)
    if k < 2:
        raise InputError(f"yi: {k} estimates are too few")
    if not np.all(np.isfinite(y)):
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise InputError(f"yi: row {i + 1} is not a finite number ({y[i]!r})")
    Vm = _values(V, data, "V")
    Vm = np.asarray(Vm, dtype=float)
    if Vm.ndim == 1:
        if len(Vm) != k:
            raise InputError(f"V: {len(Vm)} variances for {k} estimates")
        if not np.all(np.isfinite(Vm)) or np.any(Vm < 0):
            i = int(np.flatnonzero(~(np.isfinite(Vm) & (Vm >= 0)))[0])
            raise InputError(f"V: row {i + 1} is not a non-negative number ({Vm[i]!r})")
        Vmat = np.diag(Vm)
    elif Vm.shape == (k, k):
        if not np.all(np.isfinite(Vm)):
            raise InputError("V: the covariance matrix has non-finite entries")
        if not np.allclose(Vm, Vm.T, rtol=1e-10, atol=0):
            raise InputError("V: the covariance matrix is not symmetric")
        Vmat = (Vm + Vm.T) / 2
        if np.any(np.diag(Vmat) < 0):
            raise InputError("V: negative variances on the diagonal")
    else:
        raise InputError(f"V: expected {k} variances or a ({k}, {k}) matrix, got shape "
                         f"{Vm.shape}")
    # Design matrix.
    if isinstance(mods, str) and mods.strip().startswith("~"):
        # The formula library (fedsynth/meta/formula.py) comes with the meta-regression
        # branch; until it is merged, a formula is refused rather than misread.
        raise InputError(f"mods: formulas ({mods!r}) are not available here yet; pass a "
                         "design matrix or a list of numeric column names")
    if mods is None:
        X = np.ones((k, 1))
        xnames: tuple[str, ...] = ("intrcpt",)
    elif isinstance(mods, str) or (isinstance(mods, Sequence) and mods and all(
            isinstance(m, str) for m in mods)):
        cols = [mods] if isinstance(mods, str) else list(mods)
        mats = []
        for c in cols:
            column = np.asarray(_column(data, c, "mods", k), dtype=object)
            try:
                mats.append(column.astype(float))
            except (TypeError, ValueError):
                raise InputError(f"mods: column {c!r} is not numeric (pass a design "
                                 "matrix for factors)") from None
        X = np.column_stack(([np.ones(k)] if intercept else []) + mats)
        xnames = (("intrcpt",) if intercept else ()) + tuple(cols)
    else:
        X = np.asarray(mods, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[0] != k:
            raise InputError(f"mods: {X.shape[0]} rows for {k} estimates")
        xnames = tuple(names) if names is not None else (
            tuple(getattr(mods, "columns", [])) or tuple(f"X{j + 1}" for j in range(
                X.shape[1])))
    if not np.all(np.isfinite(X)):
        raise InputError("mods: the design matrix has non-finite entries")
    p = X.shape[1]
    if len(xnames) != p:
        raise InputError(f"names: {len(xnames)} names for {p} coefficients")
    if np.linalg.matrix_rank(X) < p:
        raise InputError("mods: the design matrix is not of full column rank")
    if k - p < 1:
        raise InputError(f"yi: {k} estimates are too few for {p} coefficients")
    labels = tuple(str(s) for s in (_values(slab, data, "slab") if slab is not None
                                    else range(1, k + 1)))
    # Random effects.
    terms = parse_random(random) if random is not None else ()
    sig_codes: list[np.ndarray] = []
    s_names: list[str] = []
    s_nlevels: list[int] = []
    g_term = None
    for term in terms:
        if term.inner is None:
            parts: list[list[Any]] = []
            for name in term.outer:
                if name == "id" and (data is None or name not in _keys(data)):
                    vals: list[Any] = list(range(k))
                else:
                    vals = _column(data, name, "random", k)
                _check_no_missing(vals, name)
                parts.append(vals)
                key = list(zip(*parts, strict=True))
                codes, levels = _codes(key)
                sig_codes.append(codes)
                s_names.append("/".join(term.outer[:len(parts)]))
                s_nlevels.append(len(levels))
        else:
            inner_vals = _column(data, term.inner, "random", k)
            outer_vals = _column(data, term.outer[0], "random", k)
            _check_no_missing(inner_vals, term.inner)
            _check_no_missing(outer_vals, term.outer[0])
            g_term = (term, inner_vals, outer_vals)
    L = 0
    g_levels: tuple[str, ...] = ()
    inner_codes = outer_codes = None
    gstruct: str | None = None
    if g_term is not None:
        gstruct = struct
        _, inner_vals, outer_vals = g_term
        # metafor sorts the inner levels (factor levels).
        levels_sorted = sorted(set(inner_vals), key=lambda v: (str(type(v)), v))
        index = {v: j for j, v in enumerate(levels_sorted)}
        inner_codes = np.array([index[v] for v in inner_vals])
        outer_codes, _ = _codes(outer_vals)
        L = len(levels_sorted)
        g_levels = tuple(str(v) for v in levels_sorted)
        if L < 2 and struct in ("CS", "HCS", "UN"):
            raise InputError(f"random: the inner variable {g_term[0].inner!r} has one level; "
                             f"struct {struct!r} needs at least two")
    groupings = sig_codes + ([outer_codes] if outer_codes is not None else [])
    offdiag = Vmat - np.diag(np.diag(Vmat))
    comps = _components(k, Vmat if np.any(offdiag != 0) else None, np.diag(Vmat), groupings)
    scale = float(np.mean(np.diag(Vmat)))
    if not scale > 0:
        scale = float(np.var(y)) or 1.0
    by_size: dict[int, list[np.ndarray]] = {}
    for rows in comps:
        by_size.setdefault(len(rows), []).append(np.sort(rows))
    groups = []
    for s, blocks in sorted(by_size.items()):
        rows = np.stack(blocks)
        same = np.stack([(c[rows][:, :, None] == c[rows][:, None, :]).astype(float)
                         for c in sig_codes]) if sig_codes else np.zeros((0,) + rows.shape + (s,))
        if outer_codes is not None and inner_codes is not None:
            oc = outer_codes[rows]
            outer = (oc[:, :, None] == oc[:, None, :]).astype(float)
            onehot = np.eye(L)[inner_codes[rows]]
        else:
            outer = np.zeros((len(rows), s, s))
            onehot = np.zeros((len(rows), s, 0))
        groups.append(_Group(rows=rows, y=y[rows], X=X[rows],
                             V=Vmat[rows[:, :, None], rows[:, None, :]], same=same,
                             outer=outer, onehot=onehot))
    reml = method == "REML"
    sign, logdet_xtx = np.linalg.slogdet(X.T @ X)
    model = _Model(groups=tuple(groups), N=k, p=p, nsig=len(sig_codes), L=L, struct=gstruct,
                   reml=reml, logdet_xtx=float(logdet_xtx), scale=scale)
    theta, converged, message = _optimise(model, y, X, Vmat, maxit)
    final = _evaluate(theta, model, gradient=False)
    if final is None:  # pragma: no cover - the optimiser keeps Σ positive definite
        raise InputError("rma_mv: the model could not be evaluated at its estimate")
    beta, vb = final["beta"], final["vb"]
    se = np.sqrt(np.diag(vb))
    zval = beta / se
    ddf = float(k - p) if test == "t" else float("nan")
    alpha = 1 - level / 100
    if test == "t":
        pval = 2 * stats.t.sf(np.abs(zval), ddf)
        crit = float(stats.t.isf(alpha / 2, ddf))
    else:
        pval = 2 * stats.norm.sf(np.abs(zval))
        crit = float(stats.norm.isf(alpha / 2))
    if btt is None:
        has_int = bool(np.allclose(X[:, 0], 1.0)) and p > 1
        bt = tuple(range(1, p)) if has_int else tuple(range(p))
    else:
        bt = tuple(int(b) for b in btt)
        if not bt or any(b < 0 or b >= p for b in bt):
            raise InputError(f"btt: coefficients must be in 0..{p - 1}, got {list(btt)}")
    m = len(bt)
    sub = np.ix_(bt, bt)
    QM = float(beta[list(bt)] @ np.linalg.solve(vb[sub], beta[list(bt)]))
    if test == "t":
        QM /= m
        QM_df: tuple[float, float] = (float(m), ddf)
        QMp = float(stats.f.sf(QM, m, ddf))
    else:
        QM_df = (float(m), float("nan"))
        QMp = float(stats.chi2.sf(QM, m))
    # QE with W = V⁻¹ (metafor: the sampling covariance only).
    Wv = np.linalg.pinv(Vmat) if np.any(np.diag(Vmat) == 0) else np.linalg.inv(Vmat)
    WX = Wv @ X
    b0 = np.linalg.solve(X.T @ WX, WX.T @ y)
    r0 = y - X @ b0
    QE_df = k - p
    QE = float(r0 @ Wv @ r0) if QE_df > 0 else 0.0
    QEp = float(stats.chi2.sf(QE, QE_df)) if QE_df > 0 else 1.0
    sigma2, tau2, rho = _unpack(theta, model)
    G = final["G"]
    parms = p + len(theta)
    ll = float(final["ll"])
    if reml:
        deviance = -2 * ll
        n_eff = k - p
    else:
        sign_v, logdet_v = np.linalg.slogdet(Vmat)
        ll_qe = -0.5 * k * _LOG2PI - 0.5 * logdet_v
        deviance = -2 * (ll - ll_qe) if np.all(np.diag(Vmat) > 0) else -2 * ll
        n_eff = k
    aicc_n = max(n_eff, parms + 2)
    M_blocks = []
    for grp, (S, _, _) in zip(model.groups, final["blocks"], strict=True):
        for rows, block in zip(grp.rows, S, strict=True):
            M_blocks.append((rows, block))
    return RmaMvResult(
        names=xnames, beta=beta, se=se, zval=zval, pval=pval, ci_lb=beta - crit * se,
        ci_ub=beta + crit * se, vb=vb, sigma2=sigma2.copy(), s_names=tuple(s_names),
        s_nlevels=tuple(s_nlevels), tau2=tau2.copy(), rho=rho.copy(), G=G,
        g_levels=g_levels, struct=gstruct, QE=QE, QEp=QEp, QE_df=QE_df, QM=QM, QMp=QMp,
        QM_df=QM_df, logLik=ll, deviance=float(deviance), AIC=-2 * ll + 2 * parms,
        BIC=-2 * ll + parms * math.log(n_eff),
        AICc=-2 * ll + 2 * parms * aicc_n / (aicc_n - parms - 1),
        k=k, p=p, method=method, test=test, level=level, ddf=ddf, btt=bt,
        converged=converged, message=message, random=tuple(t.formula for t in terms),
        yi=y, X=X, V=Vmat, M_blocks=tuple(M_blocks), labels=labels)


def _keys(data: Any) -> list[str]:
    return list(data.keys()) if hasattr(data, "keys") else list(getattr(data, "columns", []))


def _check_no_missing(values: list[Any], name: str) -> None:
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise InputError(f"random: column {name!r} has a missing value in row {i + 1}")


def _start(model: _Model, y: np.ndarray, X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Start values: the residual variance beyond the sampling variance, split evenly."""
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    r = y - X @ b
    spread = float(r @ r) / max(len(y) - X.shape[1], 1)
    total = max(spread - float(np.mean(np.diag(V))), 0.1 * spread, 0.01 * model.scale)
    nt = _n_tau(model.struct, model.L)
    ncomp = model.nsig + (1 if model.struct is not None else 0)
    each = total / max(ncomp, 1)
    return np.concatenate([np.full(model.nsig, each), np.full(nt, each),
                           np.zeros(_n_rho(model.struct, model.L))])


def _optimise(model: _Model, y: np.ndarray, X: np.ndarray, V: np.ndarray,
              maxit: int) -> tuple[np.ndarray, bool, str]:
    """Maximise the (RE)ML log-likelihood: L-BFGS-B, then Newton on the free parameters.

    ``UN`` is optimised over the Cholesky factor of G (always positive semi-definite,
    metafor's default ``cholesky = TRUE`` for UN); the other structures over σ², τ² (>= 0)
    and ρ (in [-1, 1]). Variances are divided by the mean sampling variance.
    """
    theta0 = _start(model, y, X, V)
    if len(theta0) == 0:
        return theta0, True, ""
    ns, L = model.nsig, model.L
    worst = 1e300
    if model.struct == "UN":
        low = np.tril_indices(L)
        root = math.sqrt(model.scale)
        unit = np.concatenate([np.full(ns, model.scale), np.full(len(low[0]), root)])
        lo = np.concatenate([np.zeros(ns), np.full(len(low[0]), -np.inf)])
        hi = np.full(len(unit), np.inf)

        def to_theta(x: np.ndarray) -> np.ndarray:
            Lc = np.zeros((L, L))
            Lc[low] = x[ns:] * root
            G = Lc @ Lc.T
            t2 = np.diag(G).copy()
            sd = np.sqrt(np.maximum(t2, 0))
            with np.errstate(invalid="ignore", divide="ignore"):
                r = G[_low(L)] / (sd[_low(L)[0]] * sd[_low(L)[1]])
            return np.concatenate([x[:ns] * model.scale, t2, np.nan_to_num(r)])

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            Lc = np.zeros((L, L))
            Lc[low] = x[ns:] * root
            ev = _evaluate_G(x[:ns] * model.scale, Lc @ Lc.T, model, True)
            if ev is None:
                return worst, np.zeros_like(x)
            dL = (ev["dG"] + ev["dG"].T) @ Lc
            return -ev["ll"], -np.concatenate([ev["grad_sigma"], dL[low]]) * unit

        t2 = theta0[ns:ns + L]
        chol0 = np.diag(np.sqrt(t2))[low]
        x0 = np.concatenate([theta0[:ns], chol0]) / unit
    else:
        nvar = ns + _n_tau(model.struct, L)
        nrho = len(theta0) - nvar
        unit = np.concatenate([np.full(nvar, model.scale), np.ones(nrho)])
        lo = np.concatenate([np.zeros(nvar), np.full(nrho, -1.0)]) / unit
        hi = np.concatenate([np.full(nvar, np.inf), np.full(nrho, 1.0)]) / unit

        def to_theta(x: np.ndarray) -> np.ndarray:
            return x * unit

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            ev = _evaluate(x * unit, model)
            if ev is None:
                return worst, np.zeros_like(x)
            return -ev["ll"], -ev["grad"] * unit

        x0 = theta0 / unit
    best_x = x0
    best = objective(best_x)[0]
    bounds = list(zip(lo, hi, strict=True))
    for start in (x0, x0 * np.where(lo < 0, 1.0, 3.0)):
        res = optimize.minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": maxit, "ftol": 1e-15, "gtol": 1e-12,
                                         "maxcor": 20})
        if res.fun < best:
            best, best_x = float(res.fun), np.asarray(res.x, dtype=float)
    x, ok = _newton(best_x, objective, lo, hi)
    message = "" if ok else "the optimiser did not reach a stationary point"
    return to_theta(x), ok, message


def _newton(x: np.ndarray, objective: Any, lo: np.ndarray,
            hi: np.ndarray) -> tuple[np.ndarray, bool]:
    """Polish with Newton steps (finite-difference Hessian of the analytic score).

    Parameters at a bound with the score pointing outwards stay there (active set).
    """
    f, g = objective(x)
    for _ in range(50):
        active = ((x <= lo + 1e-12) & (g > 0)) | ((x >= hi - 1e-12) & (g < 0))
        free = ~active
        if not free.any():
            return x, True
        if _flat(x, g, free, f, 1e-11):
            return x, True
        idx = np.flatnonzero(free)
        n = len(idx)
        Hm = np.empty((n, n))
        for a, j in enumerate(idx):
            h = 1e-6 * max(abs(x[j]), 1e-2)
            xp, xm = x.copy(), x.copy()
            xp[j] += h
            xm[j] -= h
            gp = objective(xp)[1]
            gm = objective(xm)[1]
            Hm[:, a] = (gp[idx] - gm[idx]) / (2 * h)
        Hm = (Hm + Hm.T) / 2
        try:
            np.linalg.cholesky(Hm)
            step = -np.linalg.solve(Hm, g[idx])
        except np.linalg.LinAlgError:
            step = -g[idx] / np.maximum(np.abs(np.diag(Hm)), 1e-8)
        factor = 1.0
        moved = False
        for _ in range(40):
            trial = x.copy()
            trial[idx] = np.clip(x[idx] + factor * step, lo[idx], hi[idx])
            ft, gt = objective(trial)
            if ft <= f + 1e-13 * abs(f):
                small = np.max(np.abs(trial - x) / np.maximum(np.abs(x), 1e-3)) < 1e-12
                x, f, g = trial, ft, gt
                moved = not small
                break
            factor /= 2
        if not moved:
            # No further improvement: stationary if a relative change of 1e-3 in every
            # free parameter changes the log-likelihood by < 1e-8 (relative); on the
            # boundary of a Cholesky parametrisation the Hessian is singular and Newton
            # stalls there.
            return x, _flat(x, g, free, f, 1e-8)
    return x, _flat(x, g, ~np.zeros(len(x), dtype=bool), f, 1e-8)


def _flat(x: np.ndarray, g: np.ndarray, free: np.ndarray, f: float, tol: float) -> bool:
    """Whether the score is negligible on the free parameters (relative to ℓ)."""
    if not free.any():
        return True
    size = np.maximum(np.abs(x[free]), 1e-3 * max(float(np.sqrt(np.mean(x ** 2))), 1e-3))
    return float(np.max(np.abs(g[free]) * size)) <= tol * max(1.0, abs(f))
