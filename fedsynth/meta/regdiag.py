"""Case diagnostics and tau² intervals of meta-regression models (metafor's ``rma.uni`` methods).

Why
---
:mod:`fedsynth.meta.diagnostics` gives leave-one-out, influence and BLUPs of pooled
(intercept-only) analyses. A meta-regression needs them too: a single study with an
extreme moderator value can carry a slope (a high hat value) without looking odd on the
effect scale. This module implements, for any fit of
:func:`fedsynth.meta.metareg.fit_rma` (with or without moderators, any method, test,
user weights, ``weighted=False`` or a fixed tau²), metafor's:

- :func:`influence` (``influence.rma.uni``): externally studentized residuals, DFFITS,
  Cook's distances, covariance ratios, leave-one-out tau² and QE, hat values, weights
  and DFBETAS, with metafor's rule for flagging influential studies (Viechtbauer & Cheung
  2010, "Outlier and influence diagnostics for meta-analysis", Res. Synth. Methods
  1:112-125);
- :func:`rstandard`, :func:`rstudent`, :func:`hatvalues`, :func:`cooks_distance`,
  :func:`dfbetas`, :func:`weights`;
- :func:`blup` and :func:`ranef` (best linear unbiased predictions of the true effects
  and of the random effects, Raudenbush & Bryk 1985, J. Educ. Stat. 10:75-98);
- :func:`confint` (Q-profile confidence intervals for the residual tau², tau, I² and H²
  of a meta-regression, Viechtbauer 2007, Stat. Med. 26:37-52);
- :func:`leave1out`, which metafor offers for models without moderators only: it is the
  pooled analysis' leave-one-out, and a model with moderators is refused, as metafor.

The k deleted fits are ONE call of the tau² engine on a masked ``(k, k, p)`` batch
(:func:`fedsynth.meta.stats.tau2_estimate`), not a loop of refits.

Pure statistics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import stats as st
from fedsynth.meta._format import f, grid
from fedsynth.meta.metareg import MetaRegressionResult
from fedsynth.meta.stats import chi2_sf, norm_isf, t_isf
from fedsynth.results import Interval, ResultMixin
from fedsynth.vocabulary import TESTS

__all__ = ["RegressionInfluence", "Residuals", "RegressionBlup", "Tau2Confint",
           "influence", "rstandard", "rstudent", "hatvalues", "cooks_distance", "dfbetas",
           "weights", "blup", "ranef", "confint", "leave1out"]


def _lst(a: np.ndarray) -> list[float | None]:
    return [finite_or_none(x) for x in np.asarray(a, dtype=float).ravel()]


def _labels(fit: MetaRegressionResult) -> tuple[str, ...]:
    return fit.labels if fit.labels is not None else tuple(str(i + 1) for i in range(fit.k))


def _data(fit: MetaRegressionResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if fit.yi is None or fit.vi is None or fit.X is None:
        raise InputError("fit: carries no data (yi, vi, X) for case diagnostics")
    return fit.yi, fit.vi, fit.X


def _weight_vector(fit: MetaRegressionResult, tau2: float) -> np.ndarray:
    """The weights of the coefficients (metafor's ``weights(fit, type = "matrix")``)."""
    _, v, _ = _data(fit)
    if not fit.weighted:
        return np.full(fit.k, 1.0 / fit.k)
    if fit.weights is not None:
        return np.asarray(fit.weights, dtype=float)
    return 1.0 / (v + tau2)


def _hat_matrix(fit: MetaRegressionResult) -> np.ndarray:
    """``H = X (X'AX)^-1 X'A`` with the fit's weights (unweighted: ``A = I``)."""
    _, _, X = _data(fit)
    a = _weight_vector(fit, fit.tau2) if fit.weighted else np.ones(fit.k)
    return X @ np.linalg.solve(X.T @ (a[:, None] * X), (X * a[:, None]).T)


def hatvalues(fit: MetaRegressionResult) -> np.ndarray:
    """Diagonal of the hat matrix (metafor's ``hatvalues``), 1 where it rounds to 1."""
    h = np.diag(_hat_matrix(fit)).copy()
    h[h > 1 - 10 * np.finfo(float).eps] = 1.0
    return h


def weights(fit: MetaRegressionResult) -> np.ndarray:
    """Weights of the studies in percent (metafor's ``weights``)."""
    w = _weight_vector(fit, fit.tau2)
    return 100.0 * w / w.sum()


@dataclass(frozen=True)
class Residuals(ResultMixin):
    """Residuals with standard errors and standardized values (metafor's ``rstandard``).

    Attributes
    ----------
    resid, se, z
        Residuals, their standard errors and ``resid / se``.
    labels
        Study labels.
    kind
        ``"standardized"`` (marginal, :func:`rstandard`) or ``"studentized"``
        (externally, from the deleted fits, :func:`rstudent`).
    """

    resid: np.ndarray
    se: np.ndarray
    z: np.ndarray
    labels: tuple[str, ...]
    kind: str

    def summary(self, digits: int = 4) -> str:
        """One row per study."""
        return "\n".join(grid(["", "resid", "se", "z"],
                              [[lab, f(self.resid[i], digits), f(self.se[i], digits),
                                f(self.z[i], digits)] for i, lab in enumerate(self.labels)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metafor's names)."""
        return {"resid": _lst(self.resid), "se": _lst(self.se), "z": _lst(self.z),
                "labels": list(self.labels), "kind": self.kind}


def rstandard(fit: MetaRegressionResult) -> Residuals:
    """Standardized (marginal) residuals: ``e = y - X b``, ``var(e) = (I-H) M (I-H)'``."""
    y, v, X = _data(fit)
    H = _hat_matrix(fit)
    ImH = np.eye(fit.k) - H
    e = y - X @ fit.coef
    e[np.abs(e) < 100 * np.finfo(float).eps] = 0.0
    ve = ImH @ ((v + fit.tau2)[:, None] * ImH.T)
    se = np.sqrt(np.diag(ve))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = e / se
    return Residuals(resid=e, se=se, z=z, labels=_labels(fit), kind="standardized")


@dataclass(frozen=True)
class _Deleted:
    """The k leave-one-out fits of a model (row i leaves study i out)."""

    tau2: np.ndarray
    beta: np.ndarray
    vb: np.ndarray            # with the deleted fit's s2w, as metafor's res$vb
    s2w: np.ndarray
    QE: np.ndarray


def _deleted_fits(fit: MetaRegressionResult) -> _Deleted:
    """All k deleted fits in one batched engine call (same options as the fit)."""
    y, v, X = _data(fit)
    k, p = X.shape
    if k - 1 < p:
        raise InputError(f"fit: {k} studies and {p} coefficients leave no deleted fit")
    mask = ~np.eye(k, dtype=bool)
    yb = np.where(mask, y[None, :], 0.0)
    vb_ = np.where(mask, v[None, :], 1.0)
    Xb = np.where(mask[:, :, None], X[None, :, :], 0.0)
    if fit.tau2_fixed:
        t2 = np.full(k, fit.tau2)
    elif fit.method == "FE":
        t2 = np.zeros(k)
    else:
        t2 = st.tau2_estimate(yb, vb_, mask, fit.method, X=Xb).tau2
    w = np.where(mask, 1.0 / (vb_ + t2[:, None]), 0.0)
    ones = np.flatnonzero(np.all(X == 1.0, axis=0))
    centre = np.array([y[mask[i]].mean() for i in range(k)]) if ones.size else np.zeros(k)
    yc = np.where(mask, yb - centre[:, None], 0.0)
    A, beta, resid = st.wls(Xb, w, yc)
    if fit.weights is None and fit.weighted:
        vb = A
    else:
        a = np.where(mask, (fit.weights if fit.weights is not None else np.ones(k))[None, :],
                     0.0)
        Aa, beta, _ = st.wls(Xb, a, yc)
        bread = np.einsum("mpq,mkq->mpk", Aa, Xb * a[:, :, None])
        vb = np.einsum("mpk,mk,mqk->mpq", bread, np.where(mask, vb_ + t2[:, None], 0.0),
                       bread)
    if ones.size:
        beta[:, ones[0]] += centre
    df = k - 1 - p
    s2w = np.ones(k)
    if fit.test in ("knha", "adhoc"):
        rss = np.sum(w * resid * resid, axis=1)
        s2w = np.where(rss <= st._EPS, 0.0, rss / df) if df > 0 else np.full(k, np.nan)
        if fit.test == "adhoc":
            s2w = np.maximum(s2w, 1.0)
    w0 = np.where(mask, 1.0 / vb_, 0.0)
    r0 = st.wls(Xb, w0, yc)[2]
    QE = np.maximum(0.0, np.sum(w0 * r0 * r0, axis=1)) if df >= 0 else np.zeros(k)
    return _Deleted(tau2=t2, beta=beta, vb=vb * s2w[:, None, None], s2w=s2w, QE=QE)


def _studentized(fit: MetaRegressionResult, d: _Deleted) -> tuple[np.ndarray, np.ndarray]:
    y, v, X = _data(fit)
    delpred = np.einsum("kp,kp->k", X, d.beta)
    vdelpred = np.einsum("kp,kpq,kq->k", X, d.vb, X)
    resid = y - delpred
    resid[np.abs(resid) < 100 * np.finfo(float).eps] = 0.0
    se = np.sqrt(v * d.s2w + vdelpred + d.tau2 * d.s2w)
    return resid, se


def rstudent(fit: MetaRegressionResult) -> Residuals:
    """Externally studentized (deleted) residuals, as metafor's ``rstudent``."""
    resid, se = _studentized(fit, _deleted_fits(fit))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = resid / se
    return Residuals(resid=resid, se=se, z=z, labels=_labels(fit), kind="studentized")


@dataclass(frozen=True)
class RegressionInfluence(ResultMixin):
    """Influence diagnostics of a meta-regression (metafor's ``influence.rma.uni``).

    Attributes
    ----------
    rstudent, dffits, cook_d, cov_r, tau2_del, QE_del, hat, weight
        One value per study, as metafor's ``inf`` table (``cook.d``, ``cov.r``,
        ``tau2.del``, ``QE.del``).
    dfbs
        DFBETAS, shape (k, p), columns ``names``.
    is_infl
        metafor's flag: ``|dffits| > 3 sqrt(p/(k-p))``, ``pchisq(cook.d, p) > 0.5``,
        ``hat > 3 p/k`` or any ``|dfbs| > 1``.
    """

    labels: tuple[str, ...]
    names: tuple[str, ...]
    rstudent: np.ndarray
    dffits: np.ndarray
    cook_d: np.ndarray
    cov_r: np.ndarray
    tau2_del: np.ndarray
    QE_del: np.ndarray
    hat: np.ndarray
    weight: np.ndarray
    dfbs: np.ndarray = field(repr=False)
    is_infl: np.ndarray = field(repr=False)

    @property
    def influential(self) -> tuple[str, ...]:
        """Labels of the studies metafor marks with ``*``."""
        return tuple(lab for lab, flag in zip(self.labels, self.is_infl) if flag)

    def summary(self, digits: int = 4) -> str:
        """The ``inf`` table, as metafor prints it."""
        d = digits
        rows = [[lab, f(self.rstudent[i], d), f(self.dffits[i], d), f(self.cook_d[i], d),
                 f(self.cov_r[i], d), f(self.tau2_del[i], d), f(self.QE_del[i], d),
                 f(self.hat[i], d), f(self.weight[i], d), "*" if self.is_infl[i] else ""]
                for i, lab in enumerate(self.labels)]
        return "\n".join(grid(["", "rstudent", "dffits", "cook.d", "cov.r", "tau2.del",
                               "QE.del", "hat", "weight", "inf"], rows))

    def to_frame(self):
        """One row per study: the ``inf`` columns and ``dfbs.<name>``."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        cols: dict[str, Any] = {"rstudent": self.rstudent, "dffits": self.dffits,
                                "cook_d": self.cook_d, "cov_r": self.cov_r,
                                "tau2_del": self.tau2_del, "QE_del": self.QE_del,
                                "hat": self.hat, "weight": self.weight,
                                "inf": self.is_infl}
        for j, nm in enumerate(self.names):
            cols[f"dfbs.{nm}"] = self.dfbs[:, j]
        return pd.DataFrame(cols, index=pd.Index(self.labels, name="study"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metafor's names with ``_`` for ``.``)."""
        return {"labels": list(self.labels), "names": list(self.names),
                "rstudent": _lst(self.rstudent), "dffits": _lst(self.dffits),
                "cook_d": _lst(self.cook_d), "cov_r": _lst(self.cov_r),
                "tau2_del": _lst(self.tau2_del), "QE_del": _lst(self.QE_del),
                "hat": _lst(self.hat), "weight": _lst(self.weight),
                "dfbs": [_lst(row) for row in self.dfbs],
                "inf": [bool(x) for x in self.is_infl]}


def influence(fit: MetaRegressionResult) -> RegressionInfluence:
    """Influence diagnostics of every study (metafor's ``influence.rma.uni``)."""
    y, v, X = _data(fit)
    k, p = X.shape
    d = _deleted_fits(fit)
    hat = hatvalues(fit)
    pred_full = X @ fit.coef
    delpred = np.einsum("kp,kp->k", X, d.beta)
    if fit.weighted and fit.weights is None:
        denom = d.s2w * hat * (d.tau2 + v)
        # vb.del: the full data's (X'WX)^-1 at the deleted fit's tau²
        vb_del = np.linalg.inv(np.einsum("kp,mk,kq->mpq", X, 1.0 / (v[None, :]
                                                                     + d.tau2[:, None]), X))
    else:
        a = np.asarray(fit.weights, dtype=float) if fit.weights is not None else np.ones(k)
        if not fit.weighted:
            a = np.ones(k)
        stXAX = np.linalg.inv(X.T @ (a[:, None] * X))
        H = X @ stXAX @ (X * a[:, None]).T
        # diag(H diag(tau2_del + v) H') for every deleted tau²
        denom = d.s2w * np.einsum("ij,mj,ij->mi", H, v[None, :] + d.tau2[:, None],
                                  H)[np.arange(k), np.arange(k)]
        bread = stXAX @ (X * a[:, None]).T
        vb_del = np.einsum("pk,mk,qk->mpq", bread, v[None, :] + d.tau2[:, None], bread)
    with np.errstate(divide="ignore", invalid="ignore"):
        dffits = (pred_full - delpred) / np.sqrt(denom)
        dfb = fit.coef[None, :] - d.beta
        dfbs = dfb / np.sqrt(d.s2w[:, None] * np.einsum("mpp->mp", vb_del))
        svb = np.linalg.inv(fit.vb)
        cook = np.einsum("mp,pq,mq->m", dfb, svb, dfb)
        cov_r = np.linalg.det(d.vb) / np.linalg.det(fit.vb)
    resid, se = _studentized(fit, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        rst = resid / se
        is_infl = ((np.abs(dffits) > 3 * np.sqrt(p / (k - p)))
                   | (1.0 - chi2_sf(cook, p) > 0.5) | (hat > 3 * p / k)
                   | np.any(np.abs(dfbs) > 1, axis=1))
    return RegressionInfluence(labels=_labels(fit), names=fit.names, rstudent=rst,
                               dffits=dffits, cook_d=cook, cov_r=cov_r, tau2_del=d.tau2,
                               QE_del=d.QE, hat=hat, weight=weights(fit), dfbs=dfbs,
                               is_infl=np.asarray(is_infl, dtype=bool))


def cooks_distance(fit: MetaRegressionResult) -> np.ndarray:
    """Cook's distances (metafor's ``cooks.distance``)."""
    return influence(fit).cook_d


def dfbetas(fit: MetaRegressionResult) -> np.ndarray:
    """DFBETAS, shape (k, p) (metafor's ``dfbetas``)."""
    return influence(fit).dfbs


@dataclass(frozen=True)
class RegressionBlup(ResultMixin):
    """BLUPs of the true effects (``blup``) or of the random effects (``ranef``).

    Attributes
    ----------
    pred, se, pi_lb, pi_ub
        Predictions, standard errors and prediction bounds (z, or t with k - p df
        under the t-type tests, as metafor).
    """

    pred: np.ndarray
    se: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray
    labels: tuple[str, ...]
    kind: str
    level: float

    def prediction_interval(self) -> Interval:
        """The prediction bounds at the fit's level."""
        return Interval(self.pi_lb, self.pi_ub, level=self.level / 100.0, kind="prediction")

    def summary(self, digits: int = 4) -> str:
        """One row per study."""
        d = digits
        return "\n".join(grid(["", "pred", "se", "pi.lb", "pi.ub"],
                              [[lab, f(self.pred[i], d), f(self.se[i], d),
                                f(self.pi_lb[i], d), f(self.pi_ub[i], d)]
                               for i, lab in enumerate(self.labels)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metafor's names)."""
        return {"pred": _lst(self.pred), "se": _lst(self.se), "pi_lb": _lst(self.pi_lb),
                "pi_ub": _lst(self.pi_ub), "labels": list(self.labels), "kind": self.kind,
                "level": self.level}


def _crit(fit: MetaRegressionResult) -> float:
    alpha = 1 - fit.level / 100
    return float(norm_isf(alpha / 2) if fit.test == "z" else t_isf(alpha / 2, fit.k - fit.p))


def _check_standard_weights(fit: MetaRegressionResult, what: str) -> None:
    if fit.weights is not None or not fit.weighted:
        raise InputError(f"{what}: not available for models with non-standard weights "
                         "(user weights or weighted=False), as metafor")


def blup(fit: MetaRegressionResult) -> RegressionBlup:
    """Best linear unbiased predictions of the true effects (metafor's ``blup``)."""
    _check_standard_weights(fit, "blup")
    y, v, X = _data(fit)
    li = fit.tau2 / (fit.tau2 + v)
    xb = X @ fit.coef
    pred = li * y + (1 - li) * xb
    vpred = li * v + (1 - li) ** 2 * np.einsum("kp,pq,kq->k", X, fit.vb, X)
    se = np.sqrt(vpred)
    c = _crit(fit)
    return RegressionBlup(pred=pred, se=se, pi_lb=pred - c * se, pi_ub=pred + c * se,
                          labels=_labels(fit), kind="blup", level=fit.level)


def ranef(fit: MetaRegressionResult) -> RegressionBlup:
    """Best linear unbiased predictions of the random effects (metafor's ``ranef``)."""
    _check_standard_weights(fit, "ranef")
    y, v, X = _data(fit)
    if fit.method == "FE":
        pred = np.zeros(fit.k)
        vpred = np.zeros(fit.k)
    else:
        li = fit.tau2 / (fit.tau2 + v)
        pred = li * (y - X @ fit.coef)
        vpred = li * v + li**2 * np.einsum("kp,pq,kq->k", X, fit.vb, X)
    se = np.sqrt(vpred)
    c = _crit(fit)
    return RegressionBlup(pred=pred, se=se, pi_lb=pred - c * se, pi_ub=pred + c * se,
                          labels=_labels(fit), kind="ranef", level=fit.level)


@dataclass(frozen=True)
class Tau2Confint(ResultMixin):
    """Q-profile confidence intervals of the residual heterogeneity (metafor's ``confint``).

    Attributes
    ----------
    tau2, tau, I2, H2
        ``(estimate, ci_lb, ci_ub)`` each; I² in percent with metafor's "typical"
        within-study variance of a model with moderators.
    """

    tau2: tuple[float, float, float]
    tau: tuple[float, float, float]
    I2: tuple[float, float, float]
    H2: tuple[float, float, float]
    level: float
    converged: bool

    def summary(self, digits: int = 4) -> str:
        """The ``random`` table of metafor's ``confint``."""
        d = digits
        rows = [[nm, f(vals[0], d), f(vals[1], d), f(vals[2], d)] for nm, vals in
                (("tau^2", self.tau2), ("tau", self.tau), ("I^2(%)", self.I2),
                 ("H^2", self.H2))]
        return "\n".join(grid(["", "estimate", "ci.lb", "ci.ub"], rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"tau2": _lst(np.array(self.tau2)), "tau": _lst(np.array(self.tau)),
                "I2": _lst(np.array(self.I2)), "H2": _lst(np.array(self.H2)),
                "level": self.level, "converged": self.converged}


def confint(fit: MetaRegressionResult, level: float | None = None,
            type: str = "QP") -> Tau2Confint:
    """CIs of the residual tau², tau, I², H² (metafor's ``confint(fit, type=)``).

    ``type="QP"`` (default): the Q-profile interval; ``"PL"``: the profile-likelihood
    interval of ML/REML fits (:func:`fedsynth.meta.profile.confint_pl`).
    """
    kind = str(type).upper()
    if kind == "PL":
        # lazy: import cycle: fedsynth.meta.profile imports this module at top
        from fedsynth.meta.profile import confint_pl

        return confint_pl(fit, level)
    if kind != "QP":
        raise InputError(f"type: {type!r} is not one of QP, PL")
    y, v, X = _data(fit)
    if fit.method == "FE" or fit.tau2_fixed:
        raise InputError("confint: the model has no estimated tau² (fixed-effect model or "
                         "tau² fixed by the user), as metafor refuses")
    lvl = fit.level if level is None else float(level if level > 1 else 100 * level)
    qp = st.qprofile_tau2_ci(y, v, None, level=lvl, X=X)
    lo, hi = float(qp.low[0]), float(qp.high[0])
    w0 = 1.0 / v
    vt = (fit.k - fit.p) / float(st.trace_p(w0[None], X[None])[0])

    def i2(t: float) -> float:
        return 100.0 * t / (vt + t)

    def h2(t: float) -> float:
        return (vt + t) / vt
    return Tau2Confint(tau2=(fit.tau2, lo, hi), tau=(np.sqrt(fit.tau2), np.sqrt(lo),
                                                     np.sqrt(hi)),
                       I2=(i2(fit.tau2), i2(lo), i2(hi)), H2=(h2(fit.tau2), h2(lo), h2(hi)),
                       level=lvl, converged=bool(qp.converged[0]))


def leave1out(fit: MetaRegressionResult) -> Any:
    """Leave-one-out pooled analyses (metafor's ``leave1out``): models without moderators.

    metafor's ``leave1out`` is only for models without moderators (the pooled estimate
    is what each deletion changes); for a meta-regression use :func:`influence`
    (DFBETAS, ``tau2.del``, ``QE.del``) instead.
    """
    if not (fit.p == 1 and fit.intercept):
        raise InputError("leave1out: only for models without moderators, as metafor; use "
                         "influence() (dfbetas, tau2_del, QE_del) for a meta-regression")
    # lazy: fedsynth.meta.diagnostics imports scipy.stats (~0.5 s) at top
    from fedsynth.meta.diagnostics import leave_one_out

    if fit.test not in TESTS or fit.tau2_fixed or fit.weights is not None \
            or not fit.weighted:
        raise InputError("leave1out: available for test z or knha with inverse-variance "
                         "weights and an estimated tau²")
    y, v, _ = _data(fit)
    return leave_one_out(y, v, labels=list(_labels(fit)), method=fit.method,
                         test=fit.test, level=fit.level)
