"""Mixed-effects meta-regression (one or more site-level moderators), REML by default.

The model is ``y_i = x_i' beta + u_i + e_i`` with ``u_i ~ N(0, tau2)`` (residual
between-site heterogeneity) and ``e_i ~ N(0, v_i)`` with the sampling variances ``v_i``
known, as in Raudenbush (2009), "Analyzing effect sizes: random-effects models", in *The
Handbook of Research Synthesis and Meta-Analysis*, and Viechtbauer (2010), "Conducting
meta-analyses in R with the metafor package", J. Stat. Softw. 36(3). Results reproduce
``metafor::rma(yi, vi, mods = ~ ..., method = "REML")`` (see ``tests/reference``).

Besides :func:`meta_regression` (the user-facing call with named moderators, numeric or
categorical) the module exposes :func:`fit_rma`, a fit on an explicit design matrix that
the diagnostics (Egger's regression test, the subgroup model with a common tau², the
BLUPs) reuse, and :func:`fit_batch`, a vectorised fit of many masked intercept-only
analyses at once (the refits of leave-one-out, influence and cumulative meta-analysis are
one call of it, not a Python loop of fits).

tau² is estimated by the project's one engine, :func:`fedsynth.meta.stats.tau2_estimate`
(with the design matrix for meta-regression), so a meta-regression without moderators,
a pooled analysis and a leave-one-out refit of the same data agree to the last digits.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

# scipy.stats is not imported: importing it costs more than `fedsynth meta --by` computes
# for thousands of analyses (see benchmarks/README.md); the distribution tails come from
# the engine's scipy.special wrappers.
from fedsynth.errors import InputError, show_value
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import stats as st
from fedsynth.meta._format import f, grid, p, peq
from fedsynth.meta.scales import get_transform
from fedsynth.meta.stats import chi2_sf, norm_isf, norm_sf, t_isf, t_sf
from fedsynth.results import Interval, PlotMixin, ResultMixin, check_fraction
from fedsynth.vocabulary import METHODS, check_level, check_method, check_rma_test

__all__ = [
    "MetaRegressionResult",
    "WaldTest",
    "FitStatistics",
    "set_btt",
    "ContrastTest",
    "ModelComparison",
    "anova",
    "wald_test",
    "linear_contrasts",
    "compare_models",
    "refit",
    "Prediction",
    "predict",
    "BatchFit",
    "fit_rma",
    "fit_batch",
    "meta_regression",
    "design_matrix",
    "validate_yi_vi",
]

#: tau² estimators of meta-regression (metafor's ``rma.uni`` with ``mods``): all of them.
SUPPORTED_METHODS = METHODS
#: cells (rows x sites) per block of :func:`fit_batch`'s tau² estimation
_BLOCK_CELLS = 1 << 17


def validate_yi_vi(yi: Any, vi: Any, *, min_k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check effect sizes and sampling variances; return them as float arrays.

    Raises :class:`fedsynth.errors.InputError` naming the field and the offending value:
    non-finite values, non-positive variances, mismatched lengths, too few studies.
    """
    try:
        y = np.asarray(yi, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"yi: not numeric ({yi!r})") from exc
    try:
        v = np.asarray(vi, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"vi: not numeric ({vi!r})") from exc
    if y.shape != v.shape:
        raise InputError(f"yi and vi: lengths differ ({y.size} != {v.size})")
    if y.size < min_k:
        raise InputError(f"yi: {y.size} studies given, at least {min_k} needed")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise InputError(f"yi[{bad[0]}]: must be finite, got {show_value(y[bad[0]])}")
    bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
    if bad.size:
        raise InputError(f"vi[{bad[0]}]: must be a finite positive variance, got "
                         f"{show_value(v[bad[0]])}")
    return y, v


@dataclass(frozen=True)
class WaldTest(ResultMixin):
    """Omnibus Wald test of a set of coefficients (metafor's ``anova(fit, btt = ...)``).

    Attributes
    ----------
    QM, QMdf, QMp
        As metafor: under ``test = "z"`` a chi² statistic with ``QMdf = (m, None)``;
        under ``t``, ``knha`` and ``adhoc`` the F statistic ``QM / m`` with ``QMdf =
        (m, k - p)``.
    btt
        The tested coefficients (0-based positions; metafor prints them 1-based).
    names
        Their names.
    test
        The fit's test.
    """

    QM: float
    QMdf: tuple[int, int | None]
    QMp: float
    btt: tuple[int, ...]
    names: tuple[str, ...]
    test: str

    def summary(self, digits: int = 4) -> str:
        """The ``Test of Moderators`` line, as metafor prints it."""
        cols = ", ".join(str(i + 1) for i in self.btt)
        if self.QMdf[1] is None:
            return (f"Test of Moderators (coefficients {cols}):\nQM(df = {self.QMdf[0]}) = "
                    f"{f(self.QM, digits)}, p-val {peq(self.QMp, digits)}")
        return (f"Test of Moderators (coefficients {cols}):\nF(df1 = {self.QMdf[0]}, df2 = "
                f"{self.QMdf[1]}) = {f(self.QM, digits)}, p-val {peq(self.QMp, digits)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names (``btt`` 1-based, as metafor prints it)."""
        return {"QM": finite_or_none(self.QM), "QMdf": list(self.QMdf),
                "QMp": finite_or_none(self.QMp), "btt": [i + 1 for i in self.btt],
                "names": list(self.names), "test": self.test}


@dataclass(frozen=True)
class FitStatistics:
    """One column of metafor's ``fit.stats``: log-likelihood, deviance, AIC, BIC, AICc."""

    logLik: float
    deviance: float
    AIC: float
    BIC: float
    AICc: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict (``ll``, ``dev``, ``AIC``, ``BIC``, ``AICc`` as metafor)."""
        return {"ll": finite_or_none(self.logLik), "dev": finite_or_none(self.deviance),
                "AIC": finite_or_none(self.AIC), "BIC": finite_or_none(self.BIC),
                "AICc": finite_or_none(self.AICc)}


@dataclass(frozen=True)
class MetaRegressionResult(PlotMixin, ResultMixin):
    """A mixed-effects meta-regression fit (``rma(yi, vi, mods = ...)`` in metafor).

    Attributes
    ----------
    names
        Coefficient names (``"intrcpt"`` first, as metafor prints them).
    coef, se, stat, pval
        Coefficients with the standard errors, statistics and p-values of the chosen
        test (``z``: normal; ``knha``: Knapp-Hartung t with k - p df).
    z_se, z_stat, z_pval
        The Wald z test values, always computed.
    knha_se, knha_stat, knha_pval
        The Knapp & Hartung (2003) values, always computed (t with k - p df).
    QM, QM_df, QMp
        Omnibus Wald chi-square test of the moderators (all coefficients but the
        intercept); ``None`` for an intercept-only model.
    knha_F, knha_Fp
        The Knapp-Hartung F test of the moderators (df ``QM_df`` and ``k - p``).
    QE, QE_df, QEp
        Test of residual heterogeneity (weights 1/vi).
    tau2, I2, H2
        Residual between-site variance and metafor's I² / H² for a model with moderators.
    R2
        Pseudo-R² in percent: the share of tau² (intercept-only model, same method)
        accounted for by the moderators, truncated at 0 (Raudenbush 2009); ``None``
        for an intercept-only model.
    vb
        Covariance matrix of the coefficients under the chosen test.
    se_tau2, converged
        Standard error of tau² (metafor's formula for the method) and whether its
        estimation converged.
    yi, vi, X, labels
        The data of the fit (for plots and refits).
    intercept
        Whether the model has an intercept (``~ 0 + ...`` has none).
    omnibus
        metafor's ``QM``/``QMdf``/``QMp`` under the fit's test for the coefficients
        ``btt`` (F under ``t``/``knha``/``adhoc``), a :class:`WaldTest`.
    btt
        The coefficients of ``omnibus`` (0-based).
    fit_stats
        ``{"ML": FitStatistics, "REML": FitStatistics}``: metafor's ``fit.stats``.
    tau2_fixed, weighted, weights
        How the fit was asked for: tau² given by the user, weighted (default) or
        unweighted least squares, user weights (``None``: inverse-variance).
    vb_base
        Covariance of the coefficients before any Knapp-Hartung scaling.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    z_se: np.ndarray
    z_stat: np.ndarray
    z_pval: np.ndarray
    knha_se: np.ndarray
    knha_stat: np.ndarray
    knha_pval: np.ndarray
    QM: float | None
    QM_df: int
    QMp: float | None
    knha_F: float | None
    knha_Fp: float | None
    QE: float
    QE_df: int
    QEp: float
    tau2: float
    I2: float
    H2: float
    R2: float | None
    k: int
    p: int
    method: str
    test: str
    level: float
    vb: np.ndarray = field(repr=False)
    s2w: float = 1.0
    se_tau2: float = float("nan")
    converged: bool = True
    yi: np.ndarray | None = field(default=None, repr=False)
    vi: np.ndarray | None = field(default=None, repr=False)
    X: np.ndarray | None = field(default=None, repr=False)
    labels: tuple[str, ...] | None = field(default=None, repr=False)
    intercept: bool = True
    omnibus: WaldTest | None = field(default=None, repr=False)
    btt: tuple[int, ...] = ()
    fit_stats: Mapping[str, FitStatistics] | None = field(default=None, repr=False)
    tau2_fixed: bool = False
    weighted: bool = True
    weights: np.ndarray | None = field(default=None, repr=False)
    vb_base: np.ndarray | None = field(default=None, repr=False)

    def anova(self, other: MetaRegressionResult | None = None, *, btt: Any = None,
              X: Any = None, rhs: Any = 0.0,
              refit: bool = False) -> WaldTest | ContrastTest | ModelComparison:
        """Wald tests of coefficients or contrasts, or the LRT against ``other``.

        As metafor's ``anova``; see :func:`fedsynth.meta.metareg.anova`.
        """
        return anova(self, other, btt=btt, X=X, rhs=rhs, refit=refit)

    def permutest(self, *, exact: bool = False, iter: int = 1000,
                  seed: int | None = None) -> Any:
        """Permutation test of the coefficients (:func:`fedsynth.meta.permutation.permutest`)."""
        # lazy: import cycle: fedsynth.meta.permutation imports this module at top
        from fedsynth.meta.permutation import permutest

        return permutest(self, exact=exact, iter=iter, seed=seed)

    def predict(self, newmods: Any = None, *, intercept: bool | None = None,
                transf: Any = None, addx: bool = False,
                level: float | None = None) -> Prediction:
        """Predicted values with CIs and PIs (:func:`fedsynth.meta.metareg.predict`)."""
        return predict(self, newmods, intercept=intercept, transf=transf, addx=addx,
                       level=level)

    def influence(self) -> Any:
        """Influence diagnostics (:func:`fedsynth.meta.regdiag.influence`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.influence(self)

    def rstandard(self) -> Any:
        """Standardized residuals (:func:`fedsynth.meta.regdiag.rstandard`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.rstandard(self)

    def rstudent(self) -> Any:
        """Studentized deleted residuals (:func:`fedsynth.meta.regdiag.rstudent`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.rstudent(self)

    def hatvalues(self) -> np.ndarray:
        """Hat values (:func:`fedsynth.meta.regdiag.hatvalues`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.hatvalues(self)

    def blup(self) -> Any:
        """BLUPs of the true effects (:func:`fedsynth.meta.regdiag.blup`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.blup(self)

    def ranef(self) -> Any:
        """BLUPs of the random effects (:func:`fedsynth.meta.regdiag.ranef`)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.ranef(self)

    def confint(self, level: float | None = None, type: str = "QP") -> Any:
        """CIs of tau², tau, I², H², Q-profile or ``type="PL"`` (``regdiag.confint``)."""
        # lazy: import cycle: fedsynth.meta.regdiag imports this module at top
        from fedsynth.meta import regdiag

        return regdiag.confint(self, level, type)

    def profile(self, *, xlim: Any = None, steps: int = 20) -> Any:
        """Profile log-likelihood of tau² (:func:`fedsynth.meta.profile.profile`)."""
        # lazy: import cycle: fedsynth.meta.profile imports this module at top
        from fedsynth.meta.profile import profile

        return profile(self, xlim=xlim, steps=steps)

    @property
    def parms(self) -> int:
        """Number of estimated parameters (coefficients and tau², as metafor's ``parms``)."""
        return self.p + (0 if self.method == "FE" or self.tau2_fixed else 1)

    def _stats(self) -> FitStatistics:
        if self.fit_stats is None:
            raise InputError("fit: this result carries no fit statistics")
        return self.fit_stats["REML" if self.method == "REML" else "ML"]

    @property
    def logLik(self) -> float:
        """Log-likelihood (restricted under REML), as metafor's ``logLik``."""
        return self._stats().logLik

    @property
    def deviance(self) -> float:
        """Deviance, as metafor's ``deviance``."""
        return self._stats().deviance

    @property
    def AIC(self) -> float:
        """Akaike's information criterion (REML under REML), as metafor's ``AIC``."""
        return self._stats().AIC

    @property
    def BIC(self) -> float:
        """Bayesian information criterion, as metafor's ``BIC``."""
        return self._stats().BIC

    @property
    def AICc(self) -> float:
        """Corrected AIC, as metafor's ``fitstats``."""
        return self._stats().AICc

    @property
    def df(self) -> int:
        """Residual degrees of freedom ``k - p`` (of the Knapp-Hartung t tests)."""
        return self.k - self.p

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of the coefficients under the fit's test.

        Confidence intervals of the coefficients (arrays, one per coefficient), under
        the fit's test (normal, or t with k - p df under Knapp-Hartung).
        """
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        alpha = 1.0 - level
        crit = float(norm_isf(alpha / 2) if self.test == "z" else t_isf(alpha / 2, self.df))
        return Interval(self.coef - crit * self.se, self.coef + crit * self.se, level=level)

    @property
    def fitted(self) -> np.ndarray | None:
        """Fitted values ``X beta`` of the sites (None when the fit carries no data)."""
        return None if self.X is None else self.X @ self.coef

    @property
    def residuals(self) -> np.ndarray | None:
        """Residuals ``y - X beta`` (None when the fit carries no data)."""
        return None if self.yi is None or self.X is None else self.yi - self.X @ self.coef

    def summary(self, digits: int = 4) -> str:
        """Residual heterogeneity, the tests of moderators and the coefficient table.

        Residual heterogeneity, the tests of moderators and the coefficient table
        (z and Knapp-Hartung columns), as ``fedsynth meta --moderator`` prints it.
        """
        d = digits
        rows = [[nm, f(self.coef[i], d), f(self.z_se[i], d), f(self.z_stat[i], d),
                 p(self.z_pval[i], d), f(self.knha_se[i], d), p(self.knha_pval[i], d)]
                for i, nm in enumerate(self.names)]
        knha = (f"; Knapp-Hartung F({self.QM_df}, {self.k - self.p}) = {f(self.knha_F, d)}, "
                f"p {peq(self.knha_Fp, d)}" if self.knha_F is not None else "")
        extra: list[str] = []
        default_btt = tuple(j for j in range(self.p) if not (self.intercept and j == 0))
        # the knha/z omnibus of all moderators is on the "Test of moderators" line already
        if self.omnibus is not None and (self.test in ("t", "adhoc")
                                         or self.btt != default_btt):
            extra.append(f"[test = {self.test}] " + self.omnibus.summary(d).replace("\n", " "))
        if self.test in ("t", "adhoc") or self.weights is not None or not self.weighted:
            how = ("user weights" if self.weights is not None
                   else "unweighted" if not self.weighted else "inverse-variance weights")
            extra.append(f"coefficients under test = {self.test} ({how}):")
            extra.extend(grid(["", "estimate", "se", "stat", "pval", "ci.lb", "ci.ub"],
                              [[nm, f(self.coef[i], d), f(self.se[i], d), f(self.stat[i], d),
                                p(self.pval[i], d), f(self.ci_lb[i], d), f(self.ci_ub[i], d)]
                               for i, nm in enumerate(self.names)]))
        fixed = " (fixed)" if self.tau2_fixed else ""
        return "\n".join([
            f"Meta-regression (k = {self.k}; tau^2 estimator: {self.method}{fixed}):",
            f"residual tau^2 = {f(self.tau2, d)}, I^2 = {f(self.I2, 2)}%, "
            f"R^2 = {f(self.R2, 2)}% of tau^2 explained",
            f"Test for residual heterogeneity: QE(df = {self.QE_df}) = {f(self.QE, d)}, "
            f"p {peq(self.QEp, d)}",
            f"Test of moderators: QM(df = {self.QM_df}) = {f(self.QM, d)}, "
            f"p {peq(self.QMp, d)}{knha}",
            *grid(["", "estimate", "se", "zval", "pval", "se.knha", "pval.knha"], rows),
            *extra])

    def to_frame(self):
        """One row per coefficient.

        One row per coefficient: estimate, se, statistic, p-value and confidence
        bounds under the fit's test, then the z and Knapp-Hartung columns.
        """
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        return pd.DataFrame({"estimate": self.coef, "se": self.se, "stat": self.stat,
                             "pval": self.pval, "ci_lb": self.ci_lb, "ci_ub": self.ci_ub,
                             "z_se": self.z_se, "z_pval": self.z_pval,
                             "knha_se": self.knha_se, "knha_pval": self.knha_pval},
                            index=pd.Index(self.names, name="coefficient"))

    def forest(self, **options: Any):
        """Forest plot of the sites with their fitted values (``fedsynth.plots``)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import forest_plot

        return forest_plot(self, **options)

    def funnel(self, **options: Any):
        """Funnel plot of the residuals against their standard errors.

        Funnel plot of the residuals against their standard errors (metafor's
        ``funnel()`` of a model with moderators).
        """
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import funnel_plot

        return funnel_plot(self, **options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the reference's field names (``coef``, ``QM``, ``knha_F``...)."""
        def lst(a: np.ndarray) -> list[float | None]:
            return [finite_or_none(x) for x in a]
        return _json_safe({
            "names": list(self.names), "k": self.k, "method": self.method, "test": self.test,
            "coef": lst(self.coef), "se": lst(self.z_se), "zval": lst(self.z_stat),
            "pval": lst(self.z_pval), "ci_lb": lst(self.ci_lb), "ci_ub": lst(self.ci_ub),
            "QM": self.QM, "QM_df": self.QM_df, "QMp": self.QMp,
            "QE": self.QE, "QE_df": self.QE_df, "QEp": self.QEp,
            "tau2": self.tau2, "I2": self.I2, "H2": self.H2, "R2": self.R2,
            "knha_se": lst(self.knha_se), "knha_tval": lst(self.knha_stat),
            "knha_pval": lst(self.knha_pval), "knha_F": self.knha_F, "knha_Fp": self.knha_Fp,
            "test_se": lst(self.se), "test_stat": lst(self.stat), "test_pval": lst(self.pval),
            "s2w": self.s2w, "tau2_fixed": self.tau2_fixed, "weighted": self.weighted,
            "intercept": self.intercept,
            "omnibus": None if self.omnibus is None else self.omnibus.to_dict(),
            "fit_stats": None if self.fit_stats is None else
            {key: val.to_dict() for key, val in self.fit_stats.items()},
        })


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf floats by None so that strict JSON can carry the dict."""
    return {k: (finite_or_none(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in d.items()}


def set_btt(btt: Any, p: int, intercept: bool, names: Sequence[str]) -> tuple[int, ...]:
    """The coefficients an omnibus test covers, as metafor's ``.set.btt`` (0-based out).

    ``None``: every coefficient but the intercept (all of them without an intercept, the
    only one of a one-coefficient model). A string: the coefficients whose names match it
    as a regular expression (R's ``grep``). Integers: **1-based positions, as in
    metafor** (``btt=[2, 3]`` is R's ``btt=2:3``); negative ones exclude, as R's indexing.
    """
    if btt is None:
        if p > 1:
            return tuple(range(1, p)) if intercept else tuple(range(p))
        return (0,)
    if isinstance(btt, str):
        try:
            pattern = re.compile(btt)
        except re.error as exc:
            raise InputError(f"btt: {btt!r} is not a regular expression ({exc})") from None
        found = tuple(i for i, nm in enumerate(names) if pattern.search(nm))
        if not found:
            raise InputError(f"btt: no coefficient name matches {btt!r} (coefficients: "
                             f"{', '.join(names)})")
        return found
    values = np.atleast_1d(np.asarray(btt))
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"btt: expected 1-based coefficient positions or a name pattern, "
                         f"got {btt!r}")
    idx = np.unique(np.round(values).astype(int))
    if np.any(idx < 0) and np.any(idx > 0):
        raise InputError(f"btt: cannot mix positive and negative positions ({btt!r})")
    if np.all(idx < 0):
        chosen = tuple(i for i in range(p) if (i + 1) not in set(-idx))
    else:
        chosen = tuple(int(i) - 1 for i in idx if 1 <= i <= p)
    if not chosen:
        raise InputError(f"btt: positions {btt!r} name no coefficient of the {p} "
                         f"(1-based, as metafor)")
    return chosen


def _omnibus(beta: np.ndarray, vb: np.ndarray, btt: tuple[int, ...], test: str, df: int,
             names: Sequence[str]) -> WaldTest:
    """The Wald test of ``beta[btt] = 0`` (metafor): chi² under z, F = QM/m otherwise."""
    b = beta[list(btt)]
    sub = vb[np.ix_(btt, btt)]
    m = len(btt)
    try:
        QM = float(b @ np.linalg.solve(sub, b))
    except np.linalg.LinAlgError:
        QM = float("nan")
    if test == "z":
        return WaldTest(QM=QM, QMdf=(m, None), QMp=float(chi2_sf(QM, m)), btt=btt,
                        names=tuple(names[i] for i in btt), test=test)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = QM / m
    Fp = float(special.fdtrc(m, df, F)) if df > 0 else float("nan")
    return WaldTest(QM=F, QMdf=(m, df), QMp=Fp, btt=btt,
                    names=tuple(names[i] for i in btt), test=test)


def _fit_statistics(y: np.ndarray, v: np.ndarray, X: np.ndarray, beta: np.ndarray,
                    t2: float, parms: int) -> dict[str, FitStatistics]:
    """The ``fit.stats`` (ML and REML columns) of ``rma.uni``."""
    k, p = X.shape
    w = 1.0 / (v + t2)
    r = y - X @ beta
    rss = float(np.sum(w * r * r))
    slog = float(np.sum(np.log(v + t2)))
    ll_ml = -0.5 * k * np.log(2 * np.pi) - 0.5 * slog - 0.5 * rss
    ll_reml = (-0.5 * (k - p) * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(X.T @ X)[1]
               - 0.5 * slog - 0.5 * np.linalg.slogdet(X.T @ (w[:, None] * X))[1]
               - 0.5 * rss)
    # the saturated model's log-likelihood: sum of dnorm(yi, yi, sqrt(vi), log = TRUE)
    dev_ml = (-2.0 * (ll_ml - float(np.sum(-0.5 * np.log(2 * np.pi * v))))
              if k > p else 0.0)

    def stats(ll: float, dev: float, n: int) -> FitStatistics:
        big = max(n, parms + 2)
        return FitStatistics(logLik=float(ll), deviance=float(dev),
                             AIC=float(-2 * ll + 2 * parms),
                             BIC=float(-2 * ll + parms * np.log(n)) if n > 0 else float("nan"),
                             AICc=float(-2 * ll + 2 * parms * big / (big - parms - 1)))
    return {"ML": stats(ll_ml, dev_ml, k), "REML": stats(ll_reml, -2.0 * ll_reml, k - p)}


def _adjusted_r2(y: np.ndarray, X: np.ndarray, a: np.ndarray) -> float:
    """``summary(lm(yi ~ X, weights = a))$adj.r.squared`` (X holds the intercept)."""
    k, p = X.shape
    if k - p <= 0:
        return float("nan")
    sw = a.sum()
    mean = float(np.sum(a * y) / sw)
    tss = float(np.sum(a * (y - mean) ** 2))
    beta = np.linalg.lstsq(X * np.sqrt(a)[:, None], y * np.sqrt(a), rcond=None)[0]
    rss = float(np.sum(a * (y - X @ beta) ** 2))
    r2 = 1.0 - rss / tss
    return 1.0 - (1.0 - r2) * (k - 1) / (k - p)


def fit_rma(yi: Any, vi: Any, X: Any | None = None, *, names: Sequence[str] | None = None,
            method: str = "REML", test: str = "z", level: float = 0.95,
            tau2: float | None = None, compute_r2: bool = True,
            threshold: float | None = None,
            labels: Sequence[Any] | None = None, weights: Any | None = None,
            weighted: bool = True, btt: Any = None,
            intercept: bool | None = None) -> MetaRegressionResult:
    """Fit the mixed-effects model on an explicit design matrix (metafor's ``rma.uni``).

    Parameters
    ----------
    yi, vi
        Effect sizes and sampling variances (length k).
    X
        Design matrix (k, p), *including* the intercept column when the model has one;
        ``None`` = intercept only.
    names
        Coefficient names (default ``intrcpt, x1, x2, ...``).
    method
        ``REML`` (default), ``ML``, ``EB``, ``PM``, ``DL``, ``HE``, ``HS``, ``SJ`` or ``FE``.
    test
        ``z`` (normal), ``t`` (t with k - p df), ``knha`` (Knapp & Hartung 2003,
        "Improved tests for a random effects meta-regression with a single covariate",
        Stat. Med. 22:2693-2710) or ``adhoc`` (Knapp-Hartung with the scale factor
        floored at 1, Jackson et al. 2017, Stat. Med. 36:3923-3934), as metafor.
    tau2
        Fix tau² instead of estimating it (metafor's ``tau2 =``); not with ``FE``.
    compute_r2
        Fit the intercept-only model too and report the pseudo-R².
    threshold
        ``None`` (default): tau² is the exact root of its estimating equation (the
        engine's scale-free Newton solver). A number: metafor's Fisher scoring stopped at
        ``|Δtau²| <= threshold`` instead (ML/REML/EB), e.g. 1e-5 to reproduce metafor's
        default ``rma`` control, which some metafor functions (``trimfill``) use
        internally.
    labels
        Site labels, kept with the result (plots).
    weights
        User weights of the coefficients (metafor's ``weights``): ``beta = (X'AX)^-1
        X'Ay`` with ``A = diag(weights)`` and the sandwich covariance ``(X'AX)^-1 X'A M A
        X (X'AX)^-1``, ``M = diag(vi + tau²)``. tau² is estimated as without them.
    weighted
        ``False``: unweighted least squares (``A = I``) for the coefficients, as
        metafor's ``weighted = FALSE``.
    btt
        The coefficients of the omnibus test (metafor's ``btt``: 1-based positions or a
        name pattern; default all but the intercept), see :func:`set_btt`.
    intercept
        Whether ``X`` holds an intercept; default: its first column is all ones.
    """
    y, v = validate_yi_vi(yi, vi)
    method = check_method(method)
    test = check_rma_test(test)
    level = check_level(level)
    k = y.size
    Xm = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float)
    if Xm.ndim == 1:
        Xm = Xm[:, None]
    if Xm.shape[0] != k:
        raise InputError(f"X: {Xm.shape[0]} rows for {k} studies")
    p = Xm.shape[1]
    if not np.all(np.isfinite(Xm)):
        raise InputError("moderators: contain missing or non-finite values")
    if np.linalg.matrix_rank(Xm) < p:
        raise InputError("moderators: the design matrix is rank deficient "
                         "(a moderator is constant or collinear with others)")
    has_int = bool(np.all(Xm[:, 0] == 1.0)) if intercept is None else bool(intercept)
    if k <= p and test != "z":
        raise InputError(f"test: {test} needs more studies ({k}) than coefficients ({p})")
    if k < p:
        raise InputError(f"moderators: {p} coefficients but only {k} studies; the number "
                         "of parameters to be estimated is larger than the number of "
                         "observations")
    if tau2 is None and method != "FE" and k > 1 and k - p < 1:
        # metafor's rma.uni refuses a random-effects model with k - p < 1 (tau^2 is one
        # more parameter): "Number of parameters to be estimated is larger than the
        # number of observations." A fit would report QE(df = 0) = 0 and R^2 = 100%,
        # numbers with no information in them. FE with k = p is allowed, as in metafor.
        raise InputError(
            f"moderators: {p} coefficients (intercept and {p - 1} moderator terms) and "
            f"tau^2 for {k} studies: the number of parameters to be estimated is larger "
            f"than the number of observations (as metafor's rma refuses); use more studies, "
            f"fewer moderators or --method FE")
    if tau2 is not None and method == "FE" and tau2 != 0:
        raise InputError(f"tau2: a fixed tau^2 ({show_value(tau2)}) contradicts method FE "
                         "(tau^2 = 0); use a random-effects method such as REML")
    a_user: np.ndarray | None = None
    if weights is not None:
        try:
            a_user = np.asarray(weights, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"weights: not numeric ({weights!r})") from None
        if a_user.size == 1:
            a_user = np.full(k, float(a_user[0]))
        if a_user.size != k:
            raise InputError(f"weights: {a_user.size} weights for {k} studies")
        bad = np.flatnonzero(~np.isfinite(a_user) | (a_user < 0))
        if bad.size:
            raise InputError(f"weights[{bad[0]}]: must be finite and >= 0, got "
                             f"{show_value(a_user[bad[0]])}")
        if np.linalg.matrix_rank(Xm * np.sqrt(a_user)[:, None]) < p:
            raise InputError("weights: the coefficients are not estimable with these "
                             "weights (too many zero weights)")
    nm = tuple(names) if names is not None else ("intrcpt",) + tuple(f"x{j}" for j in range(1, p))
    if len(nm) != p:
        raise InputError(f"names: {len(nm)} names for {p} coefficients")
    btt_idx = set_btt(btt, p, has_int, nm)

    se_tau2 = float("nan")
    converged = True
    fixed_tau2 = tau2 is not None and method != "FE"
    if tau2 is not None and fixed_tau2:
        try:
            t2 = float(tau2)
        except (TypeError, ValueError):
            raise InputError(f"tau2: must be a finite non-negative number, got "
                             f"{tau2!r}") from None
        if not np.isfinite(t2) or t2 < 0:
            raise InputError(f"tau2: must be a finite non-negative number, got "
                             f"{show_value(t2)}")
    elif method == "FE" or k == p:
        t2 = 0.0
    else:
        fit = st.tau2_estimate(y, v, None, method, X=Xm,
                               solver="newton" if threshold is None else "fisher",
                               threshold=st._THRESHOLD if threshold is None else threshold)
        t2, se_tau2 = float(fit.tau2[0]), float(fit.se_tau2[0])
        converged = bool(fit.converged[0])

    # Coefficients from the centred effects, the mean added back to the intercept: with
    # effects such as 6.62607 +- 1e-8 the slopes would otherwise carry the rounding of
    # X'Wy at the scale of the mean (residuals and the other statistics are unchanged).
    ones = np.flatnonzero(np.all(Xm == 1.0, axis=0))
    centre = float(np.mean(y)) if ones.size else 0.0
    yc = y - centre
    w = 1.0 / (v + t2)
    A, b_hat, r_hat = st.wls(Xm[None], w[None], yc[None])
    vb_iv, beta_iv, resid_iv = A[0], b_hat[0].copy(), r_hat[0]
    if ones.size:
        beta_iv[ones[0]] += centre
    if a_user is None and weighted:
        beta, vb_base = beta_iv, vb_iv
    else:
        # user weights or unweighted least squares: the sandwich (X'AX)^-1 X'A M A X
        # (X'AX)^-1 with M = diag(vi + tau²) (metafor's rma.uni)
        a = a_user if a_user is not None else np.ones(k)
        Aa, b_a, _ = st.wls(Xm[None], a[None], yc[None])
        bread = Aa[0] @ (Xm.T * a)
        beta = b_a[0].copy()
        if ones.size:
            beta[ones[0]] += centre
        vb_base = bread @ ((v + t2)[:, None] * bread.T)

    # residual heterogeneity test (fixed-effect weights)
    w0 = 1.0 / v
    r0 = st.wls(Xm[None], w0[None], yc[None])[2][0]
    QE_df = k - p
    # k = p (FE only) fits the effects exactly: QE is 0 up to rounding, never -0.0000
    QE = max(0.0, float(np.sum(w0 * r0 * r0))) if QE_df > 0 else 0.0
    QEp = float(chi2_sf(QE, QE_df)) if QE_df > 0 else 1.0
    # metafor's "typical" within-study variance for models with moderators
    if QE_df > 0 and method == "FE":
        # metafor's FE fit reports Higgins & Thompson's I² = (QE - df) / QE and H² = QE/df
        I2 = 100.0 * max(0.0, (QE - QE_df) / QE) if QE > 0 else 0.0
        H2 = QE / QE_df
    elif QE_df > 0:
        s2 = QE_df / float(st.trace_p(w0[None], Xm[None])[0])
        I2 = 100.0 * t2 / (t2 + s2)
        H2 = (t2 + s2) / s2
    else:
        I2, H2 = 0.0, 1.0

    z_se = np.sqrt(np.diag(vb_base))
    with np.errstate(divide="ignore", invalid="ignore"):
        z_stat = beta / z_se
    z_pval = 2 * norm_sf(np.abs(z_stat))

    df = k - p
    if df > 0:
        # Knapp-Hartung: scale the covariance by the weighted residual mean square of the
        # inverse-variance fit (also under user weights, as metafor); 0 when the effects
        # lie exactly on the regression surface
        rss_knha = float(np.sum(w * resid_iv**2))
        s2w_knha = 0.0 if rss_knha <= st._EPS else rss_knha / df
        vb_k = vb_base * s2w_knha
        knha_se = np.sqrt(np.diag(vb_k))
        # identical effects give s2w = 0 and so a zero Knapp-Hartung se: the statistic is
        # then +-inf (or nan for a zero coefficient), as in metafor, not a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            knha_stat = beta / knha_se
        knha_pval = 2 * t_sf(np.abs(knha_stat), df)
    else:
        s2w_knha = float("nan")
        vb_k = vb_base * np.nan
        knha_se = knha_stat = knha_pval = np.full(p, np.nan)

    mods = tuple(j for j in range(p) if not (has_int and j == 0))
    QM = QMp = knha_F = knha_Fp = None
    if mods and (has_int or p > 0):
        QM = _omnibus(beta, vb_base, mods, "z", df, nm).QM
        QMp = float(chi2_sf(QM, len(mods)))
        if df > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                knha_F = float(np.float64(QM) / (len(mods) * s2w_knha))
            knha_Fp = float(special.fdtrc(len(mods), df, knha_F))

    if test == "z":
        s2w = 1.0
    elif test == "t":
        s2w = 1.0
    elif test == "knha":
        s2w = s2w_knha
    else:  # adhoc: the Knapp-Hartung factor, never below 1
        s2w = max(1.0, s2w_knha)
    vb = vb_base * s2w
    se = np.sqrt(np.diag(vb))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = beta / se
    if test == "z":
        pval = z_pval if s2w == 1.0 else 2 * norm_sf(np.abs(stat))
        crit = float(norm_isf((1 - level / 100) / 2))
    else:
        pval = 2 * t_sf(np.abs(stat), df)
        crit = float(t_isf((1 - level / 100) / 2, df))
    omnibus = _omnibus(beta, vb, btt_idx, test, df, nm)

    parms = p + (0 if method == "FE" or fixed_tau2 else 1)
    fit_stats = _fit_statistics(y, v, Xm, beta, t2, parms)

    R2 = None
    if compute_r2 and p > 1 and has_int:
        if method == "FE":
            if np.var(y) == 0:
                R2 = 0.0
            else:
                a_lm = (a_user if a_user is not None else w0) if weighted else np.ones(k)
                adj = _adjusted_r2(y, Xm, a_lm)
                R2 = None if not np.isfinite(adj) else 100.0 * max(0.0, adj)
        else:
            t2_re = fit_rma(y, v, None, method=method, compute_r2=False).tau2
            # metafor: 100 * max(0, (tau2_RE - tau2_ME) / tau2_RE), 0 when tau2_RE is 0
            R2 = 0.0 if t2_re <= 0 else 100.0 * max(0.0, (t2_re - t2) / t2_re)

    return MetaRegressionResult(
        names=nm, coef=beta, se=se, stat=stat, pval=pval,
        ci_lb=beta - crit * se, ci_ub=beta + crit * se,
        z_se=z_se, z_stat=z_stat, z_pval=z_pval,
        knha_se=knha_se, knha_stat=knha_stat, knha_pval=knha_pval,
        QM=QM, QM_df=len(mods), QMp=QMp, knha_F=knha_F, knha_Fp=knha_Fp,
        QE=QE, QE_df=QE_df, QEp=QEp, tau2=t2, I2=I2, H2=H2, R2=R2,
        k=k, p=p, method=method, test=test, level=level, vb=vb, s2w=s2w,
        se_tau2=se_tau2, converged=converged, yi=y, vi=v, X=Xm,
        labels=None if labels is None else tuple(str(x) for x in labels),
        intercept=has_int, omnibus=omnibus, btt=btt_idx, fit_stats=fit_stats,
        tau2_fixed=fixed_tau2, weighted=weighted,
        weights=None if a_user is None else a_user, vb_base=vb_base)


# ---------------------------------------------------------------------------------------
# design matrices from named moderators
# ---------------------------------------------------------------------------------------


def _is_numeric(values: Sequence[Any]) -> bool:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isfinite(arr)))


def design_matrix(moderators: Mapping[str, Sequence[Any]], k: int,
                  categorical: Sequence[str] = ()) -> tuple[np.ndarray, tuple[str, ...]]:
    """Build the design matrix of ``~ m1 + m2 + ...`` with an intercept, as R would.

    A moderator is categorical when named in ``categorical`` or when its values are not
    all numbers; it is then dummy-coded against its first level in sorted order
    (R's ``factor`` default, treatment contrasts), columns named ``NAMElevel``.
    """
    cols: list[np.ndarray] = [np.ones(k)]
    names: list[str] = ["intrcpt"]
    if not moderators:
        return np.ones((k, 1)), ("intrcpt",)
    for name, values in moderators.items():
        vals = list(values)
        if len(vals) != k:
            raise InputError(f"moderator {name!r}: {len(vals)} values for {k} studies")
        missing = [i for i, x in enumerate(vals)
                   if x is None or (isinstance(x, float) and np.isnan(x))
                   or (isinstance(x, str) and x.strip() == "")]
        if missing:
            raise InputError(f"moderator {name!r}: missing value in row {missing[0]}")
        if name not in categorical and _is_numeric(vals):
            col = np.asarray(vals, dtype=float)
            if np.ptp(col) == 0:
                raise InputError(f"moderator {name!r}: constant ({col[0]:g} at every site), "
                                 "so it cannot explain differences between sites")
            cols.append(col)
            names.append(str(name))
            continue
        labels = [str(x) for x in vals]
        levels = sorted(set(labels))
        if len(levels) < 2:
            raise InputError(f"moderator {name!r}: a single level ({levels[0]!r}) cannot be "
                             "a moderator")
        for lvl in levels[1:]:
            cols.append(np.array([1.0 if x == lvl else 0.0 for x in labels]))
            names.append(f"{name}{lvl}")
    return np.column_stack(cols), tuple(names)


def meta_regression(yi: Any, vi: Any, moderators: Mapping[str, Sequence[Any]], *,
                    categorical: Sequence[str] = (), method: str = "REML", test: str = "z",
                    level: float = 0.95,
                    labels: Sequence[Any] | None = None) -> MetaRegressionResult:
    """Meta-regression of site effects on named site-level moderators.

    Parameters
    ----------
    moderators
        ``{name: values}``, one value per site; numeric columns enter linearly,
        text columns (or those named in ``categorical``) as dummy variables.

    Returns
    -------
    MetaRegressionResult
        Coefficients with z and Knapp-Hartung tests, QM, QE, tau², I², R².
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    if not moderators:
        raise InputError("moderators: at least one moderator is needed")
    X, names = design_matrix(moderators, y.size, categorical)
    return fit_rma(y, v, X, names=names, method=method, test=test, level=level, labels=labels)


# ---------------------------------------------------------------------------------------
# vectorised batch of masked intercept-only fits
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFit:
    """Intercept-only fits of m masked analyses (row j uses the studies ``mask[j]``).

    Every field is an array of length m: ``k, estimate, se, tau2, Q, I2, H2``.
    """

    k: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    tau2: np.ndarray
    Q: np.ndarray
    I2: np.ndarray
    H2: np.ndarray


def fit_batch(yi: Any, vi: Any, mask: Any, *, method: str = "REML") -> BatchFit:
    """Fit ``m`` intercept-only random-effects models at once, one per row of ``mask``.

    ``yi``/``vi`` are (k,) or (m, k); ``mask`` is (m, k) with True where a study is in.
    tau² comes from the engine (:func:`fedsynth.meta.stats.tau2_estimate`) on all rows
    together, exactly as :func:`fedsynth.meta.pool` estimates it, so a refit without a
    site equals the pooled analysis of the remaining sites.
    """
    method = check_method(method)
    msk = np.asarray(mask, dtype=bool)
    if msk.ndim != 2:
        raise InputError(f"mask: must be 2-dimensional, got shape {msk.shape}")
    # cells outside the mask may hold placeholders (even NaN): neutralise them
    y = np.where(msk, np.broadcast_to(np.asarray(yi, dtype=float), msk.shape), 0.0)
    v = np.where(msk, np.broadcast_to(np.asarray(vi, dtype=float), msk.shape), 1.0)
    kk = msk.sum(axis=1)
    if np.any(kk < 1):
        raise InputError("mask: every analysis needs at least one study")
    # blocks of about _BLOCK_CELLS cells keep the engine's (rows, sites) temporaries in
    # cache (rows are independent, so the results do not depend on the blocking)
    step = max(1, _BLOCK_CELLS // msk.shape[1])
    t2 = np.concatenate([
        st.tau2_estimate(st.BatchInput(y[i:i + step], v[i:i + step], msk[i:i + step],
                                       kk[i:i + step]), method=method).tau2
        for i in range(0, msk.shape[0], step)])
    b = st.BatchInput(y, v, msk, kk)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = st.re_weights(b, t2)
        sw = w.sum(axis=1)
        mu = (w * y).sum(axis=1) / sw
        se = np.sqrt(1.0 / sw)
        Q = st.q_statistic(b)
        df = kk - 1
        if method == "FE":
            # metafor's FE fit: Higgins & Thompson's I² = (Q - df)/Q, H² = Q/df
            I2 = np.where((kk > 1) & (Q > 0), 100.0 * np.maximum(0.0, (Q - df) / Q), 0.0)
            H2 = np.where(kk > 1, Q / df, 1.0)
        else:
            i2, h2 = st.heterogeneity_indices(t2, st.typical_variance(b))
            I2 = np.where(kk > 1, i2, 0.0)
            H2 = np.where(kk > 1, h2, 1.0)
    return BatchFit(k=kk, estimate=mu, se=se, tau2=t2, Q=Q, I2=I2, H2=H2)


# ---------------------------------------------------------------------------------------
# anova: Wald tests of coefficient subsets and linear contrasts, likelihood-ratio tests
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastTest(ResultMixin):
    """Tests of linear combinations ``X beta - rhs`` (metafor's ``anova(fit, X = ...)``).

    Attributes
    ----------
    Xb, se, zval, pval
        Each combination, its standard error, statistic (t under ``t``/``knha``/
        ``adhoc``, with ``ddf`` df) and two-sided p-value.
    QM, QMdf, QMp
        Joint Wald test of all combinations (chi², or F = QM/m under the t-type
        tests); ``None`` when the rows of ``X`` are linearly dependent, as metafor.
    hyp
        The hypotheses as metafor writes them (``"ablat - year = 0"``).
    """

    Xb: np.ndarray
    se: np.ndarray
    zval: np.ndarray
    pval: np.ndarray
    QM: float | None
    QMdf: tuple[int, int | None] | None
    QMp: float | None
    hyp: tuple[str, ...]
    test: str
    ddf: int | None

    def summary(self, digits: int = 4) -> str:
        """The hypotheses table and the omnibus test, as metafor's ``print.anova.rma``."""
        d = digits
        rows = [[f"{i + 1}: {h}", f(self.Xb[i], d), f(self.se[i], d), f(self.zval[i], d),
                 p(self.pval[i], d)] for i, h in enumerate(self.hyp)]
        stat = "zval" if self.test == "z" else "tval"
        lines = ["Hypotheses:", *grid(["", "estimate", "se", stat, "pval"], rows)]
        if self.QM is not None and self.QMdf is not None:
            if self.QMdf[1] is None:
                lines.append(f"Omnibus Test of Hypotheses: QM(df = {self.QMdf[0]}) = "
                             f"{f(self.QM, d)}, p-val {peq(self.QMp, d)}")
            else:
                lines.append(f"Omnibus Test of Hypotheses: F(df1 = {self.QMdf[0]}, df2 = "
                             f"{self.QMdf[1]}) = {f(self.QM, d)}, p-val {peq(self.QMp, d)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names."""
        return {"Xb": [finite_or_none(x) for x in self.Xb],
                "se": [finite_or_none(x) for x in self.se],
                "zval": [finite_or_none(x) for x in self.zval],
                "pval": [finite_or_none(x) for x in self.pval],
                "QM": finite_or_none(self.QM), "QMdf": None if self.QMdf is None
                else list(self.QMdf), "QMp": finite_or_none(self.QMp),
                "hyp": list(self.hyp), "test": self.test, "ddf": self.ddf}


@dataclass(frozen=True)
class ModelComparison(ResultMixin):
    """Likelihood-ratio comparison of nested fits (metafor's ``anova(full, reduced)``).

    Attributes
    ----------
    fit_stats_f, fit_stats_r
        logLik, deviance, AIC, BIC, AICc of the full and the reduced model (REML
        columns for REML fits, else ML), as metafor's table.
    parms_f, parms_r
        Numbers of parameters.
    LRT, pval
        The likelihood-ratio statistic (difference of deviances, at least 0) and its
        chi² p-value with ``parms_f - parms_r`` df.
    QE_f, QE_r, tau2_f, tau2_r
        Residual heterogeneity tests and tau² of both models.
    R2
        Share of the reduced model's tau² the full model accounts for (percent; for
        fixed-effect fits the weighted residual variances of the least-squares fits).
    method
        The fits' estimation method (``ML`` after ``refit=True``).
    """

    fit_stats_f: FitStatistics
    fit_stats_r: FitStatistics
    parms_f: int
    parms_r: int
    LRT: float
    pval: float
    QE_f: float
    QE_r: float
    tau2_f: float
    tau2_r: float
    R2: float | None
    method: str

    def summary(self, digits: int = 4) -> str:
        """The comparison table, as metafor's ``print.anova.rma``."""
        d = digits
        head = ["", "df", "AIC", "BIC", "AICc", "logLik", "LRT", "pval", "QE", "tau^2", "R^2"]

        def row(name: str, s: FitStatistics, parms: int, qe: float, t2: float,
                full: bool) -> list[str]:
            return [name, str(parms), f(s.AIC, d), f(s.BIC, d), f(s.AICc, d), f(s.logLik, d),
                    f(self.LRT, d) if not full else "", p(self.pval, d) if not full else "",
                    f(qe, d), f(t2, d),
                    "" if full or self.R2 is None else f"{self.R2:.2f}%"]
        return "\n".join(grid(head, [row("Full", self.fit_stats_f, self.parms_f, self.QE_f,
                                         self.tau2_f, True),
                                     row("Reduced", self.fit_stats_r, self.parms_r,
                                         self.QE_r, self.tau2_r, False)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names."""
        return {"fit_stats_f": self.fit_stats_f.to_dict(),
                "fit_stats_r": self.fit_stats_r.to_dict(), "parms_f": self.parms_f,
                "parms_r": self.parms_r, "LRT": finite_or_none(self.LRT),
                "pval": finite_or_none(self.pval), "QE_f": finite_or_none(self.QE_f),
                "QE_r": finite_or_none(self.QE_r), "tau2_f": finite_or_none(self.tau2_f),
                "tau2_r": finite_or_none(self.tau2_r), "R2": finite_or_none(self.R2),
                "method": self.method}


def _hypotheses(L: np.ndarray, names: Sequence[str], rhs: np.ndarray) -> tuple[str, ...]:
    """The hypothesis labels of metafor: ``ablat - year = 0`` (coefficients of 1 omitted)."""
    out = []
    for j in range(L.shape[0]):
        terms = []
        for c, nm in zip(np.round(L[j], 4), names):
            if c == 0:
                continue
            num = f"{c:g}"
            terms.append(f"{num}*{nm}")
        text = " + ".join(terms).replace("1*", "") if terms else "0"
        text = text.replace("+ -", "- ")
        out.append(f"{text} = {rhs[j]:g}")
    return tuple(out)


def linear_contrasts(fit: MetaRegressionResult, X: Any, rhs: Any = 0.0) -> ContrastTest:
    """Tests of ``X beta = rhs`` (metafor's ``anova(fit, X = ..., rhs = ...)``).

    ``X`` is one row per combination with one column per coefficient; with an intercept
    in the model, a row of ``p - 1`` values gets the intercept's 1 prepended, as metafor.
    Each combination is tested with the fit's test (z, or t with k - p df); the joint
    Wald test follows when the rows are linearly independent (Viechtbauer 2010, J. Stat.
    Softw. 36(3), section 3.4).
    """
    L = np.atleast_2d(np.asarray(X, dtype=float))
    if L.ndim != 2 or not np.all(np.isfinite(L)):
        raise InputError(f"X: expected a finite matrix of contrasts, got {X!r}")
    if fit.intercept and L.shape[1] == fit.p - 1:
        L = np.column_stack([np.ones(L.shape[0]), L])
    if L.shape[1] != fit.p:
        raise InputError(f"X: {L.shape[1]} columns do not match the number of model "
                         f"coefficients ({fit.p})")
    m = L.shape[0]
    r = np.broadcast_to(np.asarray(rhs, dtype=float).reshape(-1), (m,)) if np.size(rhs) in (
        1, m) else None
    if r is None:
        raise InputError(f"rhs: {np.size(rhs)} values do not match the {m} combinations")
    Xb = L @ fit.coef - r
    vXb = L @ fit.vb @ L.T
    se = np.sqrt(np.diag(vXb))
    with np.errstate(divide="ignore", invalid="ignore"):
        zval = Xb / se
    tdist = fit.test != "z"
    ddf = fit.k - fit.p if tdist else None
    pval = 2 * t_sf(np.abs(zval), fit.k - fit.p) if tdist else 2 * norm_sf(np.abs(zval))
    QM = QMp = None
    QMdf: tuple[int, int | None] | None = None
    if np.linalg.matrix_rank(L) == m:
        try:
            QM = float(Xb @ np.linalg.solve(vXb, Xb))
        except np.linalg.LinAlgError:
            QM = None
        if QM is not None:
            if tdist:
                QM = QM / m
                QMdf = (m, fit.k - fit.p)
                QMp = float(special.fdtrc(m, fit.k - fit.p, QM))
            else:
                QMdf = (m, None)
                QMp = float(chi2_sf(QM, m))
    return ContrastTest(Xb=Xb, se=se, zval=zval, pval=np.asarray(pval, dtype=float), QM=QM,
                        QMdf=QMdf, QMp=QMp, hyp=_hypotheses(L, fit.names, r), test=fit.test,
                        ddf=ddf)


def wald_test(fit: MetaRegressionResult, btt: Any = None, rhs: Any = 0.0) -> WaldTest:
    """Omnibus Wald test of ``beta[btt] = rhs`` (metafor's ``anova(fit, btt = ...)``)."""
    idx = set_btt(btt, fit.p, fit.intercept, fit.names)
    m = len(idx)
    r = np.asarray(rhs, dtype=float).reshape(-1)
    if r.size not in (1, m):
        raise InputError(f"rhs: {r.size} values do not match the {m} coefficients tested")
    beta = fit.coef.copy()
    beta[list(idx)] = beta[list(idx)] - np.broadcast_to(r, (m,))
    return _omnibus(beta, fit.vb, idx, fit.test, fit.k - fit.p, fit.names)


def refit(fit: MetaRegressionResult, **changes: Any) -> MetaRegressionResult:
    """The same model fitted again with ``changes`` (``method="ML"``, ...)."""
    if fit.yi is None or fit.vi is None or fit.X is None:
        raise InputError("fit: carries no data to refit")
    options: dict[str, Any] = {
        "names": fit.names, "method": fit.method, "test": fit.test, "level": fit.level,
        "tau2": fit.tau2 if fit.tau2_fixed else None, "labels": fit.labels,
        "weights": fit.weights, "weighted": fit.weighted, "intercept": fit.intercept,
        "btt": [i + 1 for i in fit.btt] if fit.btt else None}
    options.update(changes)
    return fit_rma(fit.yi, fit.vi, fit.X, **options)


def compare_models(full: MetaRegressionResult, reduced: MetaRegressionResult, *,
                   refit_ml: bool = False) -> ModelComparison:
    """Likelihood-ratio test of two nested fits (metafor's ``anova(full, reduced)``).

    The model with more parameters is taken as the full one. Both must be fitted to the
    same data with the same method; likelihood-ratio tests need ML or REML (or FE), and
    REML likelihoods of models with different fixed effects are not comparable
    (Harville 1977, JASA 72:320-338): metafor warns, fedsynth refuses unless
    ``refit_ml=True``, which refits both models with ML first (metafor's ``refit =
    TRUE``).
    """
    f_, r_ = full, reduced
    if f_.parms == r_.parms:
        raise InputError("anova: the two models have the same number of parameters "
                         f"({f_.parms}); a likelihood-ratio test needs nested models")
    if f_.parms < r_.parms:
        f_, r_ = r_, f_
    if (f_.yi is None or r_.yi is None or f_.vi is None or r_.vi is None
            or not (np.array_equal(f_.yi, r_.yi) and np.array_equal(f_.vi, r_.vi))):
        raise InputError("anova: the observed outcomes or sampling variances of the two "
                         "models differ; compare fits of the same data")
    if f_.method == "FE" and r_.method != "FE":
        raise InputError("anova: the full model is a fixed-effect and the reduced model a "
                         "random/mixed-effects model")
    if f_.method not in ("FE", "ML", "REML") or r_.method not in ("FE", "ML", "REML"):
        # metafor computes the test and warns
        warnings.warn(f"anova: likelihood-ratio tests should be based on ML/REML "
                      f"estimation (the fits use {f_.method} and {r_.method})",
                      UserWarning, stacklevel=3)
    if {f_.method, r_.method} == {"ML", "REML"}:
        raise InputError(f"anova: mismatch between {f_.method} and {r_.method} estimation in "
                         "the full versus reduced model")
    same_x = (f_.X is not None and r_.X is not None and f_.X.shape == r_.X.shape
              and np.array_equal(f_.X, r_.X))
    if f_.method == "REML" and not same_x:
        if not refit_ml:
            raise InputError("anova: REML comparisons are not meaningful for models with "
                             "different fixed effects (as metafor warns); use refit=True to "
                             "refit both models with ML, or fit them with method='ML'")
        f_, r_ = refit(f_, method="ML"), refit(r_, method="ML")
    column = "REML" if f_.method == "REML" else "ML"
    if f_.fit_stats is None or r_.fit_stats is None:
        raise InputError("anova: the fits carry no fit statistics")
    sf, sr = f_.fit_stats[column], r_.fit_stats[column]
    lrt = max(0.0, sr.deviance - sf.deviance)
    pval = float(chi2_sf(lrt, f_.parms - r_.parms))
    R2: float | None
    if f_.method == "FE":
        def s2(fit: MetaRegressionResult) -> float:
            assert fit.yi is not None and fit.vi is not None and fit.X is not None
            a = (fit.weights if fit.weights is not None else 1.0 / fit.vi) if fit.weighted \
                else np.ones(fit.k)
            beta = np.linalg.lstsq(fit.X * np.sqrt(a)[:, None], fit.yi * np.sqrt(a),
                                   rcond=None)[0]
            return float(np.sum(a * (fit.yi - fit.X @ beta) ** 2) / (fit.k - fit.p))
        s2f, s2r = s2(f_), s2(r_)
        R2 = 100.0 * max(0.0, (s2r - s2f) / s2r)
    elif r_.tau2 == 0:
        R2 = 0.0
    else:
        R2 = 100.0 * max(0.0, (r_.tau2 - f_.tau2) / r_.tau2)
    return ModelComparison(fit_stats_f=sf, fit_stats_r=sr, parms_f=f_.parms, parms_r=r_.parms,
                           LRT=lrt, pval=pval, QE_f=f_.QE, QE_r=r_.QE, tau2_f=f_.tau2,
                           tau2_r=r_.tau2, R2=R2, method=f_.method)


def anova(fit: MetaRegressionResult, fit2: MetaRegressionResult | None = None, *,
          btt: Any = None, X: Any = None, rhs: Any = 0.0,
          refit: bool = False) -> WaldTest | ContrastTest | ModelComparison:
    """Tests of a fit or of two nested fits, as metafor's ``anova.rma`` for ``rma.uni``.

    ``anova(fit)`` / ``anova(fit, btt=...)``: the omnibus Wald test of a set of
    coefficients (:class:`WaldTest`); ``anova(fit, X=...)``: tests of linear
    combinations (:class:`ContrastTest`); ``anova(full, reduced)``: the likelihood-ratio
    test of nested fits (:class:`ModelComparison`; ``refit=True`` refits REML fits with
    different fixed effects by ML).
    """
    if fit2 is not None:
        if X is not None or btt is not None:
            raise InputError("anova: give a second model or btt/X, not both")
        return compare_models(fit, fit2, refit_ml=refit)
    if X is not None:
        if btt is not None:
            raise InputError("anova: give btt or X, not both")
        return linear_contrasts(fit, X, rhs)
    return wald_test(fit, btt, rhs)


# ---------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction(ResultMixin):
    """Predicted (average) effects of a meta-regression (metafor's ``predict.rma``).

    Attributes
    ----------
    pred, se
        Predictions ``X_new beta`` and their standard errors (``se`` NaN after a
        back-transformation, as metafor's NA).
    ci_lb, ci_ub
        Confidence bounds (z, or t with k - p df under the t-type tests).
    pi_lb, pi_ub
        Prediction bounds for the true effect of a new study with these moderators:
        ``pred ± crit sqrt(se² + tau²)`` (Riley et al. 2011, BMJ 342:d549); NaN for a
        fixed-effect model, as metafor.
    X
        The rows of ``newmods`` with the intercept column (``addx=True`` only).
    names
        Column names of ``X``.
    transf
        Name of the back-transformation applied, if any.
    """

    pred: np.ndarray
    se: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray
    level: float
    X: np.ndarray | None = field(default=None, repr=False)
    names: tuple[str, ...] = ()
    transf: str | None = None

    def summary(self, digits: int = 4) -> str:
        """One row per prediction, as metafor's ``print.list.rma``."""
        d = digits
        head = ["", "pred", "se", "ci.lb", "ci.ub", "pi.lb", "pi.ub"]
        extra = list(self.names) if self.X is not None else []
        rows = []
        for i in range(self.pred.size):
            row = [str(i + 1), f(self.pred[i], d), f(self.se[i], d), f(self.ci_lb[i], d),
                   f(self.ci_ub[i], d), f(self.pi_lb[i], d), f(self.pi_ub[i], d)]
            if self.X is not None:
                row += [f(x, d) for x in self.X[i]]
            rows.append(row)
        return "\n".join(grid(head + [f"X.{n}" for n in extra], rows))

    def to_frame(self):
        """One row per prediction (``pred, se, ci_lb, ci_ub, pi_lb, pi_ub`` and ``X.*``)."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        cols: dict[str, Any] = {"pred": self.pred, "se": self.se, "ci_lb": self.ci_lb,
                                "ci_ub": self.ci_ub, "pi_lb": self.pi_lb, "pi_ub": self.pi_ub}
        if self.X is not None:
            for j, nm in enumerate(self.names):
                cols[f"X.{nm}"] = self.X[:, j]
        return pd.DataFrame(cols)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with metafor's names (``pi_lb``, ``pi_ub`` for ``pi.lb``...)."""
        def lst(a: np.ndarray) -> list[float | None]:
            return [finite_or_none(x) for x in a]
        out: dict[str, Any] = {"pred": lst(self.pred), "se": lst(self.se),
                               "ci_lb": lst(self.ci_lb), "ci_ub": lst(self.ci_ub),
                               "pi_lb": lst(self.pi_lb), "pi_ub": lst(self.pi_ub),
                               "level": self.level, "transf": self.transf}
        if self.X is not None:
            out["X"] = [lst(row) for row in self.X]
            out["names"] = list(self.names)
        return out


def predict(fit: MetaRegressionResult, newmods: Any = None, *, intercept: bool | None = None,
            transf: Any = None, addx: bool = False,
            level: float | None = None) -> Prediction:
    """Predicted effects for given moderator values (metafor's ``predict.rma``).

    Parameters
    ----------
    fit
        A meta-regression (or intercept-only) fit.
    newmods
        Moderator values: one row per prediction, one column per coefficient without the
        intercept (a model with one moderator takes a plain list of values), as
        metafor. ``None``: the fitted values of the studies.
    intercept
        With an intercept in the model: ``True`` (default) adds it, ``False`` predicts
        the moderators' part only (metafor's ``intercept = FALSE``).
    transf
        Back-transformation of ``pred`` and the bounds: a function or a metafor name
        (``"exp"``, ``"transf.ilogit"``, ``"transf.ztor"``, see
        :data:`fedsynth.meta.scales.TRANSFORMS`); ``se`` is then NaN.
    addx
        Keep the rows of the design matrix used in the result.
    level
        Confidence level (default: the fit's).
    """
    if fit.X is None:
        raise InputError("fit: carries no design matrix")
    lvl = fit.level if level is None else check_level(level)
    if newmods is None:
        if intercept is not None:
            raise InputError("intercept: only used with newmods")
        # an intercept-only model predicts its one average effect, as metafor
        Xn = np.ones((1, 1)) if fit.p == 1 and fit.intercept else fit.X.copy()
    else:
        mods = np.asarray(newmods, dtype=float) if not isinstance(newmods, np.ndarray) \
            else newmods.astype(float)
        n_mod = fit.p - (1 if fit.intercept else 0)
        if n_mod == 0:
            raise InputError("newmods: the model has no moderators")
        if mods.ndim <= 1:
            mods = mods.reshape(-1, 1) if n_mod == 1 else mods.reshape(1, -1)
        if mods.ndim != 2 or mods.shape[1] != n_mod:
            raise InputError(f"newmods: {mods.shape[-1]} values per row do not match the "
                             f"{n_mod} moderator coefficients ({', '.join(fit.names[-n_mod:])})")
        if not np.all(np.isfinite(mods)):
            raise InputError("newmods: values must be finite numbers")
        if fit.intercept:
            first = 1.0 if intercept is None or intercept else 0.0
            Xn = np.column_stack([np.full(mods.shape[0], first), mods])
        else:
            Xn = mods
    pred = Xn @ fit.coef
    vpred = np.einsum("ij,jk,ik->i", Xn, fit.vb, Xn)
    se = np.sqrt(np.where(vpred < 0, np.nan, vpred))
    alpha = 1 - lvl / 100
    crit = float(norm_isf(alpha / 2) if fit.test == "z" else t_isf(alpha / 2, fit.k - fit.p))
    ci_lb, ci_ub = pred - crit * se, pred + crit * se
    half = crit * np.sqrt(vpred + fit.tau2)
    if fit.method == "FE":
        # no prediction interval for a fixed-effect model (metafor: NA)
        half = np.full(pred.shape, np.nan)
    pi_lb, pi_ub = pred - half, pred + half
    name = None
    fn = get_transform(transf)
    if fn is not None:
        name = transf if isinstance(transf, str) else getattr(transf, "__name__", "function")
        pred, ci_lb, ci_ub, pi_lb, pi_ub = (np.asarray(fn(a), dtype=float)
                                            for a in (pred, ci_lb, ci_ub, pi_lb, pi_ub))
        se = np.full(pred.shape, np.nan)
        # a decreasing transformation swaps the bounds, as metafor re-orders them
        ci_lb, ci_ub = np.minimum(ci_lb, ci_ub), np.maximum(ci_lb, ci_ub)
        pi_lb, pi_ub = np.minimum(pi_lb, pi_ub), np.maximum(pi_lb, pi_ub)
    return Prediction(pred=pred, se=se, ci_lb=ci_lb, ci_ub=ci_ub, pi_lb=pi_lb, pi_ub=pi_ub,
                      level=lvl, X=Xn if addx else None, names=fit.names if addx else (),
                      transf=name)
