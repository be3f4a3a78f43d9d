"""Case diagnostics and small-study tests for a random-effects meta-analysis.

What each function reproduces (metafor 3.8, Viechtbauer 2010, J. Stat. Softw. 36(3)):

- :func:`leave_one_out` - ``leave1out()``: the analysis refitted without each site.
- :func:`influence` - ``influence.rma.uni()``: studentized deleted residuals, DFFITS,
  Cook's distance, covariance ratio, tau² and Q with the site deleted, hat values,
  weights, DFBETAS and metafor's ``is.infl`` rule (Viechtbauer & Cheung 2010,
  "Outlier and influence diagnostics for meta-analysis", Res. Synth. Methods 1:112-125).
- :func:`blup` - ``blup()``: each site's shrunken (empirical Bayes) estimate of its own
  true effect with a prediction interval (Raudenbush & Bryk 1985, J. Educ. Stat. 10:75-98).
- :func:`publication_bias` - ``regtest()`` (Egger et al. 1997, BMJ 315:629-634; as a
  mixed-effects meta-regression on the standard error, and as the classical weighted
  linear regression), ``ranktest()`` (Begg & Mazumdar 1994, Biometrics 50:1088-1101) and
  ``trimfill()`` with the L0 estimator (Duval & Tweedie 2000, Biometrics 56:455-463).
- :func:`cumulative` - ``cumul()``: the analysis after each site in a given order (in the
  federation: by round of arrival).

The k refits of leave-one-out, influence and cumulative meta-analysis are a single
vectorised call of :func:`fedsynth.meta.metareg.fit_batch` on a (k, k) mask, whose tau² is
the pooling engine's (:func:`fedsynth.meta.stats.tau2_estimate`).

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth.errors import FedsynthError, InputError
from fedsynth.meta import stats as st
from fedsynth.meta._format import f, grid, peq
from fedsynth.meta.metareg import (
    BatchFit,
    MetaRegressionResult,
    _json_safe,
    fit_batch,
    fit_rma,
    validate_yi_vi,
)
from fedsynth.results import Interval, ResultMixin, check_fraction
from fedsynth.vocabulary import check_level

__all__ = [
    "LeaveOneOutResult", "InfluenceResult", "BlupResult", "PublicationBiasResult",
    "CumulativeResult", "leave_one_out", "influence", "blup", "publication_bias",
    "cumulative", "kendall_tau_test", "KendallResult", "deleted_fits",
]


def _labels(labels: Sequence[Any] | None, k: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(f"Study {i + 1}" for i in range(k))
    out = tuple(str(x) for x in labels)
    if len(out) != k:
        raise InputError(f"labels: {len(out)} labels for {k} studies")
    return out


def _floats(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, dtype=float)]


def _site_frame(result: Any, index_name: str = "site"):
    """The per-site lists of ``result.to_dict()`` as a DataFrame indexed by label."""
    # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
    import pandas as pd

    data = {key: value for key, value in result.to_dict().items()
            if key != "labels" and isinstance(value, list)
            and len(value) == len(result.labels)}
    return pd.DataFrame(data, index=pd.Index(list(result.labels), name=index_name))


def _crits(confidence_level: float, test: str, df: Any) -> np.ndarray:
    """Two-sided critical values: t with ``df`` under knha (NaN where df < 1), else z."""
    q = 1 - (1 - confidence_level) / 2
    dfa = np.asarray(df, dtype=float)
    if test == "knha":
        with np.errstate(invalid="ignore"):
            return np.where(dfa >= 1, st.t_ppf(q, np.maximum(dfa, 1)), np.nan)
    return np.full(dfa.shape, st.norm_ppf(q))


def _crit(level: float, test: str, df: int) -> float:
    q = 1 - (1 - level / 100) / 2
    return float(st.t_ppf(q, df)) if test == "knha" else float(st.norm_ppf(q))


def _s2w_batch(y: np.ndarray, v: np.ndarray, mask: np.ndarray, fit: BatchFit) -> np.ndarray:
    """Knapp-Hartung scale factor of each masked fit: sum w (y - mu)^2 / (k - 1)."""
    w = np.where(mask, 1.0 / (v + fit.tau2[:, None]), 0.0)
    r2 = np.where(mask, (y - fit.estimate[:, None]) ** 2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w * r2).sum(axis=1) / (fit.k - 1)


# ---------------------------------------------------------------------------------------
# leave-one-out
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaveOneOutResult(ResultMixin):
    """The analysis refitted with each site left out (row i: without site i).

    ``estimate, se, pval, ci_lb, ci_ub`` of the pooled effect, ``tau2``, ``I2``, ``H2``
    and the heterogeneity statistic ``Q`` (df k - 2) of the remaining k - 1 sites.
    """

    labels: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    tau2: np.ndarray
    I2: np.ndarray
    H2: np.ndarray
    Q: np.ndarray
    Q_pval: np.ndarray
    level: float
    test: str

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of the pooled effect with each site left out.

        Confidence intervals of the pooled effect with each site left out (arrays;
        t with k - 2 df under Knapp-Hartung, as ``leave1out``).
        """
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        crit = _crits(level, self.test, len(self.labels) - 2)
        return Interval(self.estimate - crit * self.se, self.estimate + crit * self.se,
                        level=level)

    def summary(self, digits: int = 4) -> str:
        """The leave-one-out table as ``fedsynth meta --diagnostics`` prints it."""
        d = digits
        rows = [[lab, f(self.estimate[i], d), f(self.se[i], d), f(self.ci_lb[i], d),
                 f(self.ci_ub[i], d), f(self.tau2[i], d), f(self.I2[i], 2), f(self.Q[i], d)]
                for i, lab in enumerate(self.labels)]
        return "\n".join(["Leave-one-out (each row: the analysis without that site):",
                          *grid(["omitted", "estimate", "se", "ci.lb", "ci.ub", "tau^2",
                                 "I^2(%)", "Q"], rows)])

    def to_frame(self):
        """One row per omitted site."""
        return _site_frame(self, "omitted")

    def to_dict(self) -> dict[str, Any]:
        """JSON form: one list per column, NaN as None."""
        return {"labels": list(self.labels), "estimate": _floats(self.estimate),
                "se": _floats(self.se), "stat": _floats(self.stat), "pval": _floats(self.pval),
                "ci_lb": _floats(self.ci_lb), "ci_ub": _floats(self.ci_ub),
                "tau2": _floats(self.tau2), "I2": _floats(self.I2), "H2": _floats(self.H2),
                "Q": _floats(self.Q), "Q_pval": _floats(self.Q_pval)}


def deleted_fits(yi: Any, vi: Any, *, method: str = "REML") -> BatchFit:
    """The k leave-one-out fits and the full fit in one vectorised batch.

    The k fits with one site deleted (rows 0..k-1) and the full fit (row k), in one
    vectorised batch; :func:`leave_one_out` and :func:`influence` can share it.
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    k = y.size
    mask = np.vstack([~np.eye(k, dtype=bool), np.ones((1, k), dtype=bool)])
    return fit_batch(y, v, mask, method=method)


def _rows(fit: BatchFit, rows: slice) -> BatchFit:
    return BatchFit(k=fit.k[rows], estimate=fit.estimate[rows], se=fit.se[rows],
                    tau2=fit.tau2[rows], Q=fit.Q[rows], I2=fit.I2[rows], H2=fit.H2[rows])


def leave_one_out(yi: Any, vi: Any, *, labels: Sequence[Any] | None = None,
                  method: str = "REML", test: str = "z", level: float = 95.0,
                  refits: BatchFit | None = None) -> LeaveOneOutResult:
    """Refit the random-effects model k times, each time without one site.

    One vectorised batch of k masked fits (or ``refits`` from :func:`deleted_fits` of the
    same data and method). With ``test="knha"`` the standard errors are Knapp-Hartung's
    and the intervals use t with k - 2 df, as ``leave1out`` does.
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    level = check_level(level)
    k = y.size
    mask = ~np.eye(k, dtype=bool)
    fit = _rows(refits if refits is not None else deleted_fits(y, v, method=method),
                slice(0, k))
    se = fit.se
    if test == "knha":
        se = se * np.sqrt(_s2w_batch(y, v, mask, fit))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = fit.estimate / se
    q = 1 - (1 - level / 100) / 2
    if test != "knha":
        pval = 2 * st.norm_sf(np.abs(stat))
        crit = st.norm_ppf(q)
    elif k > 2:
        pval = 2 * st.t_sf(np.abs(stat), k - 2)
        crit = st.t_ppf(q, k - 2)
    else:
        pval = np.full(k, np.nan)
        crit = np.nan
    qp = st.chi2_sf(fit.Q, k - 2) if k > 2 else np.ones(k)
    return LeaveOneOutResult(
        labels=_labels(labels, k), estimate=fit.estimate, se=se, stat=stat, pval=pval,
        ci_lb=fit.estimate - crit * se, ci_ub=fit.estimate + crit * se, tau2=fit.tau2,
        I2=fit.I2, H2=fit.H2, Q=fit.Q, Q_pval=np.asarray(qp, dtype=float), level=level, test=test)


# ---------------------------------------------------------------------------------------
# influence
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfluenceResult(ResultMixin):
    """Outlier and influence diagnostics per site (metafor's ``influence.rma.uni``).

    Attributes
    ----------
    rstudent
        Studentized deleted residual: the site's effect minus the pooled effect of the
        other sites, over the standard deviation of that difference (which includes the
        other sites' tau²). Beyond ±1.96 the site is an outlier at the 5% level.
    dffits
        Change of the fitted value when the site is deleted, in standard deviations.
    cooks_distance
        Mahalanobis distance between the coefficients with and without the site.
    cov_ratio
        Variance of the pooled effect without the site over that with it (< 1: the site
        makes the pooled estimate less precise).
    tau2_deleted, Q_deleted
        tau² and Q of the other k - 1 sites.
    hat, weight_percent
        Leverage and weight (percent) of the site in the full model.
    dfbetas
        Change of the pooled estimate when the site is deleted, in standard errors.
    influential
        metafor's rule: |DFFITS| > 3 sqrt(p/(k-p)), or the chi-square(p) CDF at Cook's
        distance > 0.5, or hat > 3p/k, or |DFBETAS| > 1 (p = 1 here).
    """

    labels: tuple[str, ...]
    rstudent: np.ndarray
    dffits: np.ndarray
    cooks_distance: np.ndarray
    cov_ratio: np.ndarray
    tau2_deleted: np.ndarray
    Q_deleted: np.ndarray
    hat: np.ndarray
    weight_percent: np.ndarray
    dfbetas: np.ndarray
    influential: np.ndarray

    def outliers(self, crit: float = float(st.norm_ppf(0.975))) -> tuple[str, ...]:
        """Sites whose studentized residual lies beyond ±``crit`` (default 1.96)."""
        return tuple(lab for lab, r in zip(self.labels, self.rstudent) if abs(r) > crit)

    def influential_sites(self) -> tuple[str, ...]:
        """Sites flagged by metafor's ``is.infl`` rule."""
        return tuple(lab for lab, flag in zip(self.labels, self.influential) if flag)

    def summary(self, digits: int = 4) -> str:
        """The influence table as ``fedsynth meta --diagnostics`` prints it."""
        d = digits
        rows = [[lab, f(self.rstudent[i], d), f(self.dffits[i], d),
                 f(self.cooks_distance[i], d), f(self.cov_ratio[i], d),
                 f(self.tau2_deleted[i], d), f(self.Q_deleted[i], d), f(self.hat[i], d),
                 f(self.weight_percent[i], 2), "*" if self.influential[i] else ""]
                for i, lab in enumerate(self.labels)]
        return "\n".join(["Influence diagnostics (* = influential by metafor's rule):",
                          *grid(["site", "rstudent", "dffits", "cook.d", "cov.r", "tau2.del",
                                 "QE.del", "hat", "weight", "inf"], rows)])

    def to_frame(self):
        """One row per site."""
        return _site_frame(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: one list per column, NaN as None."""
        return {"labels": list(self.labels), "rstudent": _floats(self.rstudent),
                "dffits": _floats(self.dffits), "cooks_distance": _floats(self.cooks_distance),
                "cov_ratio": _floats(self.cov_ratio), "tau2_deleted": _floats(self.tau2_deleted),
                "Q_deleted": _floats(self.Q_deleted), "hat": _floats(self.hat),
                "weight_percent": _floats(self.weight_percent), "dfbetas": _floats(self.dfbetas),
                "influential": [bool(x) for x in self.influential]}


def influence(yi: Any, vi: Any, *, labels: Sequence[Any] | None = None,
              method: str = "REML", test: str = "z",
              refits: BatchFit | None = None) -> InfluenceResult:
    """Case diagnostics of the intercept-only random-effects model.

    The full model and the k deleted models are fitted in one batch (or passed as
    ``refits`` from :func:`deleted_fits`). Formulas follow
    Viechtbauer & Cheung (2010); with ``test="knha"`` the deleted models' Knapp-Hartung
    factor ``s2w`` scales the variances, as metafor does.
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    k = y.size
    # row 0..k-1: site i deleted; row k: the full model
    mask = np.vstack([~np.eye(k, dtype=bool), np.ones((1, k), dtype=bool)])
    fit = refits if refits is not None else deleted_fits(y, v, method=method)
    if fit.k.shape != (k + 1,):
        raise InputError(f"refits: expected {k + 1} fits (k deleted + full), got {fit.k.shape[0]}")
    mu, t2 = fit.estimate[k], fit.tau2[k]
    mu_del, t2_del, se_del = fit.estimate[:k], fit.tau2[:k], fit.se[:k]
    w = 1.0 / (v + t2)
    vb = 1.0 / w.sum()                       # variance of the pooled effect, full model
    hat = w * vb                             # diag of X (X'WX)^-1 X'W for p = 1
    if test == "knha":
        s2w_all = _s2w_batch(y, v, mask, fit)
        s2w_del, s2w_full = s2w_all[:k], s2w_all[k]
    else:
        s2w_del, s2w_full = np.ones(k), 1.0
    # knha with k = 2: the deleted fits have one site, so their Knapp-Hartung factor
    # divides by k - 2 = 0; the NaN/inf measures that follow are intended (no warning)
    with np.errstate(invalid="ignore", divide="ignore"):
        vb_full = vb * s2w_full
        vdelpred = se_del**2 * s2w_del          # var of the deleted model's prediction
        resid = y - mu_del
        resid = np.where(np.abs(resid) < 100 * np.finfo(float).eps, 0.0, resid)
        rstudent = resid / np.sqrt(v * s2w_del + vdelpred + t2_del * s2w_del)
        dfb = mu - mu_del
        dffits = dfb / np.sqrt(s2w_del * hat * (t2_del + v))
        # variance of the full model's estimate with the deleted model's tau² plugged in
        vb_plug = 1.0 / (1.0 / (v[None, :] + t2_del[:, None])).sum(axis=1)
        dfbetas = dfb / np.sqrt(s2w_del * vb_plug)
        cooks = dfb**2 / vb_full
        cov_ratio = vdelpred / vb_full
        p = 1
        influential = ((np.abs(dffits) > 3 * np.sqrt(p / (k - p)))
                       | (st.chi2_cdf(cooks, p) > 0.5)
                       | (hat > 3 * p / k)
                       | (np.abs(dfbetas) > 1))
    return InfluenceResult(
        labels=_labels(labels, k), rstudent=rstudent, dffits=dffits, cooks_distance=cooks,
        cov_ratio=cov_ratio, tau2_deleted=t2_del, Q_deleted=fit.Q[:k], hat=hat,
        weight_percent=100.0 * hat, dfbetas=dfbetas, influential=influential)


# ---------------------------------------------------------------------------------------
# BLUPs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlupResult(ResultMixin):
    """Best linear unbiased predictions of each site's true effect.

    ``pred = l_i y_i + (1 - l_i) mu`` with shrinkage ``l_i = tau² / (tau² + v_i)``: a
    small, noisy site is pulled towards the pooled effect. ``se`` includes the
    uncertainty of ``mu``; ``pi_lb``/``pi_ub`` bound the site's true effect.
    """

    labels: tuple[str, ...]
    pred: np.ndarray
    se: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray
    estimate: float
    level: float
    test: str = "z"

    def prediction_interval(self, confidence_level: float = 0.95) -> Interval:
        """Prediction intervals of each site's true effect.

        Prediction intervals of each site's true effect (arrays; t with k - 1 df under
        Knapp-Hartung, as metafor's ``blup``).
        """
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.pi_lb, self.pi_ub, level=level, kind="prediction")
        crit = _crits(level, self.test, len(self.labels) - 1)
        return Interval(self.pred - crit * self.se, self.pred + crit * self.se, level=level,
                        kind="prediction")

    def summary(self, digits: int = 4) -> str:
        """The BLUP table as ``fedsynth meta --diagnostics`` prints it."""
        d = digits
        rows = [[lab, f(self.pred[i], d), f(self.se[i], d), f(self.pi_lb[i], d),
                 f(self.pi_ub[i], d)] for i, lab in enumerate(self.labels)]
        return "\n".join(["Site-specific estimates (BLUPs, shrunken towards the pooled "
                          "effect):", *grid(["site", "pred", "se", "pi.lb", "pi.ub"], rows)])

    def to_frame(self):
        """One row per site."""
        return _site_frame(self)

    def outlying(self) -> tuple[str, ...]:
        """Sites whose prediction interval excludes the pooled estimate.

        Sites whose prediction interval excludes the pooled estimate: their own true
        effect differs credibly from the average even after shrinkage.
        """
        return tuple(lab for lab, lo, hi in zip(self.labels, self.pi_lb, self.pi_ub)
                     if self.estimate < lo or self.estimate > hi)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: one list per column, NaN as None."""
        return {"labels": list(self.labels), "pred": _floats(self.pred), "se": _floats(self.se),
                "pi_lb": _floats(self.pi_lb), "pi_ub": _floats(self.pi_ub)}


def blup(yi: Any, vi: Any, *, labels: Sequence[Any] | None = None, method: str = "REML",
         test: str = "z", level: float = 95.0,
         fit: MetaRegressionResult | None = None) -> BlupResult:
    """Shrunken site-specific estimates (empirical Bayes / BLUP) with prediction intervals.

    ``fit`` may pass an existing intercept-only fit of the same data to avoid refitting.
    """
    y, v = validate_yi_vi(yi, vi, min_k=1)
    level = check_level(level)
    k = y.size
    if fit is None:
        fit = fit_rma(y, v, None, method=method, test=test, level=level)
    mu, t2 = float(fit.coef[0]), float(fit.tau2)
    vb = float(fit.vb[0, 0])                 # includes the Knapp-Hartung factor under knha
    li = t2 / (t2 + v)
    pred = li * y + (1 - li) * mu
    # var(theta_i - pred_i) = l_i v_i + (1 - l_i)^2 var(mu)
    se = np.sqrt(li * v + (1 - li) ** 2 * vb)
    crit = _crit(level, fit.test, k - 1)
    return BlupResult(labels=_labels(labels, k), pred=pred, se=se, pi_lb=pred - crit * se,
                      pi_ub=pred + crit * se, estimate=mu, level=level, test=fit.test)


# ---------------------------------------------------------------------------------------
# small-study effects / publication bias
# ---------------------------------------------------------------------------------------


def _kendall_null_cdf(n: int) -> np.ndarray:
    """The null distribution of Kendall's discordant pairs (Mahonian distribution).

    P(T <= q), q = 0..n(n-1)/2, for the number of discordant pairs of a random
    permutation (Mahonian distribution), built by convolution in probabilities so it
    does not overflow for large n.
    """
    dist = np.array([1.0])
    for j in range(2, n + 1):
        # adding element j contributes 0..j-1 inversions uniformly
        dist = np.convolve(dist, np.full(j, 1.0 / j))
    return np.cumsum(dist)


#: Above this many sites the exact null distribution (O(n^3) to build; 0.4 s at n = 300,
#: 3 s at n = 500) gives way to the normal approximation, which is then accurate to
#: many digits; R's cor.test would still run its exact recursion.
_KENDALL_EXACT_MAX_N = 300


@dataclass(frozen=True)
class KendallResult(ResultMixin):
    """Kendall's tau-b and its two-sided p-value."""

    tau: float
    pval: float

    def summary(self, digits: int = 4) -> str:
        """Kendall's tau and its p-value on one line."""
        return f"Kendall's tau = {f(self.tau, digits)}, p {peq(self.pval, digits)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``tau`` and ``pval``."""
        return {"tau": self.tau, "pval": self.pval}


def kendall_tau_test(x: Any, y: Any, *, exact: bool = True) -> KendallResult:
    """Kendall's tau-b and its two-sided p-value, as R's ``cor.test(method="kendall")``.

    Exact null distribution when requested, there are no ties and n <= 300; otherwise
    the normal approximation with the tie-corrected variance of S.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    n = a.size
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    S = float(np.sum(da[iu] * db[iu]))
    n0 = n * (n - 1) / 2
    _, ca = np.unique(a, return_counts=True)
    _, cb = np.unique(b, return_counts=True)
    t1 = float(np.sum(ca * (ca - 1)) / 2)
    t2 = float(np.sum(cb * (cb - 1)) / 2)
    tau = S / np.sqrt((n0 - t1) * (n0 - t2))
    ties = t1 > 0 or t2 > 0
    if exact and not ties and n <= _KENDALL_EXACT_MAX_N:
        q = int(round((tau + 1) * n * (n - 1) / 4))  # number of concordant pairs
        cdf = _kendall_null_cdf(n)
        if q > n * (n - 1) / 4:
            p = 1.0 - cdf[q - 1]
        else:
            p = cdf[q]
        return KendallResult(float(tau), float(min(1.0, 2 * p)))
    xt, yt = ca[ca > 1], cb[cb > 1]
    v0 = n * (n - 1) * (2 * n + 5)
    vt = np.sum(xt * (xt - 1) * (2 * xt + 5))
    vu = np.sum(yt * (yt - 1) * (2 * yt + 5))
    v1 = np.sum(xt * (xt - 1)) * np.sum(yt * (yt - 1))
    v2 = np.sum(xt * (xt - 1) * (xt - 2)) * np.sum(yt * (yt - 1) * (yt - 2))
    var_s = ((v0 - vt - vu) / 18 + v1 / (2 * n * (n - 1))
             + (v2 / (9 * n * (n - 1) * (n - 2)) if n > 2 else 0))
    z = S / np.sqrt(var_s)
    return KendallResult(float(tau), float(2 * st.norm_sf(abs(z))))


@dataclass(frozen=True)
class PublicationBiasResult(ResultMixin):
    """Small-study effect tests and trim-and-fill.

    Attributes
    ----------
    egger_rma_stat, egger_rma_pval, egger_rma_limit
        Egger's test as a mixed-effects meta-regression on the standard error (metafor's
        ``regtest`` default): z (or t) of the slope, its p-value, and the intercept (the
        "limit estimate", the effect expected from an infinitely large site).
    egger_lm_stat, egger_lm_pval, egger_lm_df
        The classical Egger test: weighted least squares of yi on sei, weights 1/vi,
        t test of the slope with k - 2 df.
    rank_tau, rank_pval
        Begg's rank correlation between standardized effects and variances.
    trimfill_k0, trimfill_side, trimfill_estimate, trimfill_se
        Duval & Tweedie's L0 estimate of missing sites, the side they are missing on,
        and the pooled effect after filling them in (equal to the original when k0 = 0).
    """

    egger_rma_stat: float
    egger_rma_pval: float
    egger_rma_limit: float
    egger_lm_stat: float
    egger_lm_pval: float
    egger_lm_df: int
    rank_tau: float
    rank_pval: float
    trimfill_k0: int
    trimfill_side: str
    trimfill_estimate: float
    trimfill_se: float
    trimfill_tau2: float
    trimfill_filled_yi: tuple[float, ...]
    trimfill_filled_vi: tuple[float, ...]

    def summary(self, digits: int = 4) -> str:
        """The small-study tests as ``fedsynth meta --diagnostics`` prints them."""
        d = digits
        return "\n".join([
            "Small-study effects:",
            f"Egger's test (mixed-effects, predictor sei): z = {f(self.egger_rma_stat, d)}, "
            f"p {peq(self.egger_rma_pval, d)}; limit estimate {f(self.egger_rma_limit, d)}",
            f"Egger's test (classical regression): t({self.egger_lm_df}) = "
            f"{f(self.egger_lm_stat, d)}, p {peq(self.egger_lm_pval, d)}",
            f"Begg's rank test: Kendall's tau = {f(self.rank_tau, d)}, "
            f"p {peq(self.rank_pval, d)}",
            f"Trim-and-fill (L0): {self.trimfill_k0} site(s) estimated missing on the "
            f"{self.trimfill_side} side; adjusted estimate {f(self.trimfill_estimate, d)} "
            f"(se = {f(self.trimfill_se, d)})"])

    def to_dict(self) -> dict[str, Any]:
        """JSON form of every test statistic, NaN as None."""
        return _json_safe({
            "egger_rma_stat": self.egger_rma_stat, "egger_rma_pval": self.egger_rma_pval,
            "egger_rma_limit": self.egger_rma_limit, "egger_lm_stat": self.egger_lm_stat,
            "egger_lm_pval": self.egger_lm_pval, "egger_lm_df": self.egger_lm_df,
            "rank_tau": self.rank_tau, "rank_pval": self.rank_pval,
            "trimfill_k0": self.trimfill_k0, "trimfill_side": self.trimfill_side,
            "trimfill_estimate": self.trimfill_estimate, "trimfill_se": self.trimfill_se,
            "trimfill_tau2": self.trimfill_tau2,
            "trimfill_filled_yi": list(self.trimfill_filled_yi),
            "trimfill_filled_vi": list(self.trimfill_filled_vi)})


#: metafor 3.8's trimfill refits the data with rma's default control (Fisher scoring
#: stopped at |Δtau²| < 1e-5), not with the control of the model it was given; k0 and the
#: filled-in estimate depend on it (visibly so when tau² is ~1e-4, e.g. risk differences),
#: so trim-and-fill uses the same threshold to give metafor's answer. See
#: docs/decisions/diagnostics.md.
_METAFOR_DEFAULT_THRESHOLD = 1e-5


@dataclass(frozen=True)
class _TrimFill:
    k0: int
    side: str
    fit: MetaRegressionResult
    filled_yi: np.ndarray
    filled_vi: np.ndarray
    se_k0: float = float("nan")
    threshold: float = _METAFOR_DEFAULT_THRESHOLD


def _trimfill(y: np.ndarray, v: np.ndarray, method: str, maxiter: int = 100,
              estimator: str = "L0", side: str | None = None) -> _TrimFill:
    """Duval & Tweedie's trim-and-fill (metafor's algorithm; L0, R0 or Q0 estimator).

    ``side`` None: estimated from the sign of the slope of the regression on sei.
    """
    thr = _METAFOR_DEFAULT_THRESHOLD
    k = y.size
    if side is None:
        slope = fit_rma(y, v, np.column_stack([np.ones(k), np.sqrt(v)]), method=method,
                        compute_r2=False, threshold=thr).coef[1]
        side = "right" if slope < 0 else "left"
    # work on the side where sites are missing on the left: flip when it is the right
    ys = -y if side == "right" else y.copy()
    order = np.argsort(ys, kind="stable")
    ys, vs = ys[order], v[order]
    k0_prev, k0, it = -1, 0, 0
    beta = 0.0
    yc = ys
    while k0 != k0_prev:
        k0_prev = k0
        it += 1
        if it > maxiter:
            raise FedsynthError(f"trimfill: the L0 estimate of missing sites did not settle "
                                f"within {maxiter} iterations (last k0 = {k0})")
        beta = float(fit_rma(ys[: k - k0], vs[: k - k0], None, method=method,
                             threshold=thr).coef[0])
        yc = ys - beta
        # ranks of |centred| values, ties broken by position (R's ties.method="first")
        ranks = np.empty(k)
        ranks[np.argsort(np.abs(yc), kind="stable")] = np.arange(1, k + 1)
        signed = np.sign(yc) * ranks
        Sr = signed[signed > 0].sum()
        if estimator == "R0":
            # R0 = k - (largest rank among the negative deviations) - 1
            neg = -signed[signed < 0]
            if neg.size == 0:
                raise FedsynthError("trimfill: R0 is undefined when no study lies below "
                                    "the trimmed estimate")
            k0f = float(k - neg.max() - 1)
            se_k0 = float(np.sqrt(2 * max(0.0, k0f) + 2))
        else:
            if estimator == "L0":
                # L0 = (4 S_r - k(k+1)) / (2k - 1)
                k0f = (4 * Sr - k * (k + 1)) / (2 * k - 1)
            else:  # Q0
                k0f = k - 0.5 - float(np.sqrt(2 * k**2 - 4 * Sr + 0.25))
            var_sr = (k * (k + 1) * (2 * k + 1) + 10 * k0f**3 + 27 * k0f**2 + 17 * k0f
                      - 18 * k * k0f**2 - 18 * k * k0f + 6 * k**2 * k0f) / 24
            # a negative variance gives NaN, as R's sqrt and max(0, NaN) do
            with np.errstate(invalid="ignore"):
                if estimator == "L0":
                    se_k0 = 4 * float(np.sqrt(var_sr)) / (2 * k - 1)
                else:
                    se_k0 = 2 * float(np.sqrt(var_sr)) / float(
                        np.sqrt((k - 0.5) ** 2 - k0f * (2 * k - k0f - 1)))
            se_k0 = se_k0 if np.isnan(se_k0) else max(0.0, se_k0)
        # rounded, never negative; R's round() rounds half to even, as Python's does
        k0 = max(0, round(k0f))
    if k0 > 0:
        # mirror the k0 most extreme sites around the trimmed estimate
        mirrored = 2 * beta - ys[k - k0:]
        fill_y = -mirrored if side == "right" else mirrored
        fill_v = vs[k - k0:]
        yy = np.concatenate([y, fill_y])
        vv = np.concatenate([v, fill_v])
    else:
        fill_y = np.array([])
        fill_v = np.array([])
        yy, vv = y, v
    # with k0 = 0 metafor returns the model it was given (the exact fit)
    res = fit_rma(yy, vv, None, method=method, threshold=thr if k0 > 0 else None)
    return _TrimFill(int(k0), side, res, fill_y, fill_v, se_k0, thr)


def publication_bias(yi: Any, vi: Any, *, method: str = "REML",
                     test: str = "z") -> PublicationBiasResult:
    """Egger's regression tests, Begg's rank test and trim-and-fill on the same data.

    Needs at least 3 sites (the regression tests have k - 2 degrees of freedom).
    """
    y, v = validate_yi_vi(yi, vi, min_k=3)
    k = y.size
    sei = np.sqrt(v)
    X = np.column_stack([np.ones(k), sei])
    eg = fit_rma(y, v, X, names=("intrcpt", "sei"), method=method, test=test, compute_r2=False)
    # classical Egger: WLS with weights 1/vi and an estimated residual scale, which is the
    # fixed-effect meta-regression with the Knapp-Hartung scale factor
    lm = fit_rma(y, v, X, names=("intrcpt", "sei"), method="FE", test="knha", compute_r2=False)
    # Begg & Mazumdar: standardized deviations from the fixed-effect estimate
    fe = fit_rma(y, v, None, method="FE", compute_r2=False)
    b, vb = float(fe.coef[0]), float(fe.vb[0, 0])
    ystar = (y - b) / np.sqrt(v - vb)
    rank = kendall_tau_test(ystar, v, exact=True)
    tf = _trimfill(y, v, method)
    return PublicationBiasResult(
        egger_rma_stat=float(eg.stat[1]), egger_rma_pval=float(eg.pval[1]),
        egger_rma_limit=float(eg.coef[0]),
        egger_lm_stat=float(lm.knha_stat[1]), egger_lm_pval=float(lm.knha_pval[1]),
        egger_lm_df=k - 2, rank_tau=rank.tau, rank_pval=rank.pval,
        trimfill_k0=tf.k0, trimfill_side=tf.side, trimfill_estimate=float(tf.fit.coef[0]),
        trimfill_se=float(tf.fit.z_se[0]), trimfill_tau2=float(tf.fit.tau2),
        trimfill_filled_yi=tuple(float(x) for x in tf.filled_yi),
        trimfill_filled_vi=tuple(float(x) for x in tf.filled_vi))


# ---------------------------------------------------------------------------------------
# cumulative
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CumulativeResult(ResultMixin):
    """The pooled analysis after each added site, in ``order`` (step j: first j+1 sites)."""

    labels: tuple[str, ...]
    order: tuple[int, ...]
    k: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    tau2: np.ndarray
    I2: np.ndarray
    Q: np.ndarray
    test: str = "z"
    level: float = 95.0
    #: Name of the ordering variable (``--cumulative-by``), None for "as given".
    order_by: str | None = None
    #: Its value at each step (same order as ``labels``), None without ``order_by``.
    order_values: tuple[str, ...] | None = None

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of the pooled effect after each step.

        Confidence intervals of the pooled effect after each step (arrays; t with
        k_j - 1 df under Knapp-Hartung, none for the first step).
        """
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        crit = _crits(level, self.test, np.asarray(self.k) - 1)
        return Interval(self.estimate - crit * self.se, self.estimate + crit * self.se,
                        level=level)

    def summary(self, digits: int = 4) -> str:
        """The cumulative table as ``fedsynth meta --cumulative-by`` prints it."""
        d = digits
        rows = [[lab, str(int(self.k[i])), f(self.estimate[i], d), f(self.se[i], d),
                 f(self.ci_lb[i], d), f(self.ci_ub[i], d), f(self.tau2[i], d),
                 f(self.I2[i], 2)] for i, lab in enumerate(self.labels)]
        header = ["added", "k", "estimate", "se", "ci.lb", "ci.ub", "tau^2", "I^2(%)"]
        title = "Cumulative meta-analysis (in the given order):"
        if self.order_by is not None and self.order_values is not None:
            # say the order and show the ordering column next to the site added
            title = (f"Cumulative meta-analysis (sites added in increasing order of "
                     f"{self.order_by}; ties in file order):")
            header.insert(1, self.order_by)
            for row, value in zip(rows, self.order_values):
                row.insert(1, value)
        return "\n".join([title, *grid(header, rows)])

    def to_frame(self):
        """One row per step (the site added)."""
        return _site_frame(self, "added")

    def to_dict(self) -> dict[str, Any]:
        """JSON form: one list per column, NaN as None."""
        extra: dict[str, Any] = {}
        if self.order_by is not None:
            extra = {"order_by": self.order_by,
                     "order_values": (None if self.order_values is None
                                      else list(self.order_values))}
        return {"labels": list(self.labels), "order": list(self.order), **extra,
                "k": [int(x) for x in self.k], "estimate": _floats(self.estimate),
                "se": _floats(self.se), "ci_lb": _floats(self.ci_lb), "ci_ub": _floats(self.ci_ub),
                "tau2": _floats(self.tau2), "I2": _floats(self.I2), "Q": _floats(self.Q)}


def cumulative(yi: Any, vi: Any, order: Sequence[int] | None = None, *,
               labels: Sequence[Any] | None = None, method: str = "REML",
               test: str = "z", level: float = 95.0, order_by: str | None = None,
               order_values: Sequence[Any] | None = None) -> CumulativeResult:
    """Cumulative meta-analysis: refit after adding each site in ``order``.

    ``order`` holds 0-based indices (a permutation of the sites); default: as given.
    All k fits are one batch call on a lower-triangular mask. With ``test="knha"`` each
    step uses Knapp-Hartung standard errors and t with k_j - 1 df (as metafor's ``cumul``
    refits with the model's test); the first step (one site) has no such interval.
    ``order_by`` names the variable the order came from and ``order_values`` gives its
    value per site (in input order): the summary then states the order and shows the
    column, so a reader sees why the sites come in this sequence.
    """
    y, v = validate_yi_vi(yi, vi, min_k=1)
    level = check_level(level)
    k = y.size
    ordr = list(range(k)) if order is None else [int(i) for i in order]
    if sorted(ordr) != list(range(k)):
        raise InputError(f"order: must be a permutation of 0..{k - 1}, got {list(order or [])!r}")
    yo, vo = y[ordr], v[ordr]
    mask = np.tril(np.ones((k, k), dtype=bool))
    fit = fit_batch(yo, vo, mask, method=method)
    q = 1 - (1 - level / 100) / 2
    if test == "knha":
        with np.errstate(divide="ignore", invalid="ignore"):
            se = fit.se * np.sqrt(_s2w_batch(yo, vo, mask, fit))
            crit = np.where(fit.k > 1, st.t_ppf(q, np.maximum(fit.k - 1, 1)), np.nan)
    else:
        se = fit.se
        crit = np.full(k, st.norm_ppf(q))
    labs = _labels(labels, k)
    return CumulativeResult(labels=tuple(labs[i] for i in ordr), order=tuple(ordr), k=fit.k,
                            estimate=fit.estimate, se=se, ci_lb=fit.estimate - crit * se,
                            ci_ub=fit.estimate + crit * se, tau2=fit.tau2, I2=fit.I2, Q=fit.Q,
                            test=test, level=float(level), order_by=order_by,
                            order_values=(None if order_values is None else
                                          tuple(str(order_values[i]) for i in ordr)))
