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
from fedsynth.meta.stats import chi2_sf, norm_isf, norm_sf, t_isf, t_sf
from fedsynth.results import Interval, PlotMixin, ResultMixin, check_fraction
from fedsynth.vocabulary import METHODS, check_level, check_method, check_test

__all__ = [
    "MetaRegressionResult",
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
        crit = float(t_isf(alpha / 2, self.df) if self.test == "knha" else norm_isf(alpha / 2))
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
        return "\n".join([
            f"Meta-regression (k = {self.k}; tau^2 estimator: {self.method}):",
            f"residual tau^2 = {f(self.tau2, d)}, I^2 = {f(self.I2, 2)}%, "
            f"R^2 = {f(self.R2, 2)}% of tau^2 explained",
            f"Test for residual heterogeneity: QE(df = {self.QE_df}) = {f(self.QE, d)}, "
            f"p {peq(self.QEp, d)}",
            f"Test of moderators: QM(df = {self.QM_df}) = {f(self.QM, d)}, "
            f"p {peq(self.QMp, d)}{knha}",
            *grid(["", "estimate", "se", "zval", "pval", "se.knha", "pval.knha"], rows)])

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
        })


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf floats by None so that strict JSON can carry the dict."""
    return {k: (finite_or_none(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in d.items()}


def fit_rma(yi: Any, vi: Any, X: Any | None = None, *, names: Sequence[str] | None = None,
            method: str = "REML", test: str = "z", level: float = 0.95,
            tau2: float | None = None, compute_r2: bool = True,
            threshold: float | None = None,
            labels: Sequence[Any] | None = None) -> MetaRegressionResult:
    """Fit the mixed-effects model on an explicit design matrix.

    Parameters
    ----------
    yi, vi
        Effect sizes and sampling variances (length k).
    X
        Design matrix (k, p) *including* the intercept column; ``None`` = intercept only.
    names
        Coefficient names (default ``intrcpt, x1, x2, ...``).
    method
        ``REML`` (default), ``ML``, ``EB``, ``PM``, ``DL``, ``HE``, ``HS``, ``SJ`` or ``FE``.
    test
        ``z`` or ``knha`` (Knapp & Hartung 2003, "Improved tests for a random effects
        meta-regression with a single covariate", Stat. Med. 22:2693-2710).
    tau2
        Fix tau² instead of estimating it.
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
    """
    y, v = validate_yi_vi(yi, vi)
    method = check_method(method)
    test = check_test(test)
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
    if k <= p and test == "knha":
        raise InputError(f"test: knha needs more studies ({k}) than coefficients ({p})")
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
    nm = tuple(names) if names is not None else ("intrcpt",) + tuple(f"x{j}" for j in range(1, p))

    se_tau2 = float("nan")
    converged = True
    if tau2 is not None:
        t2 = float(tau2)
        if not np.isfinite(t2) or t2 < 0:
            raise InputError(f"tau2: must be a finite non-negative number, got {tau2!r}")
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
    vb_z, beta, resid = A[0], b_hat[0].copy(), r_hat[0]
    if ones.size:
        beta[ones[0]] += centre

    # residual heterogeneity test (fixed-effect weights)
    w0 = 1.0 / v
    r0 = st.wls(Xm[None], w0[None], yc[None])[2][0]
    QE_df = k - p
    # k = p (FE only) fits the effects exactly: QE is 0 up to rounding, never -0.0000
    QE = max(0.0, float(np.sum(w0 * r0 * r0))) if QE_df > 0 else 0.0
    QEp = float(chi2_sf(QE, QE_df)) if QE_df > 0 else 1.0
    # metafor's "typical" within-study variance for models with moderators
    if QE_df > 0 and method == "FE" and tau2 is None:
        # metafor's FE fit reports Higgins & Thompson's I² = (QE - df) / QE and H² = QE/df
        I2 = 100.0 * max(0.0, (QE - QE_df) / QE) if QE > 0 else 0.0
        H2 = QE / QE_df
    elif QE_df > 0:
        s2 = QE_df / float(st.trace_p(w0[None], Xm[None])[0])
        I2 = 100.0 * t2 / (t2 + s2)
        H2 = (t2 + s2) / s2
    else:
        I2, H2 = 0.0, 1.0

    crit_z = float(norm_isf((1 - level / 100) / 2))
    z_se = np.sqrt(np.diag(vb_z))
    z_stat = beta / z_se
    z_pval = 2 * norm_sf(np.abs(z_stat))

    df = k - p
    if df > 0:
        # Knapp-Hartung: scale the covariance by the weighted residual mean square
        s2w = float(np.sum(w * resid**2) / df)
        vb_k = vb_z * s2w
        knha_se = np.sqrt(np.diag(vb_k))
        # identical effects give s2w = 0 and so a zero Knapp-Hartung se: the statistic is
        # then +-inf (or nan for a zero coefficient), as in metafor, not a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            knha_stat = beta / knha_se
        knha_pval = 2 * t_sf(np.abs(knha_stat), df)
    else:
        s2w = float("nan")
        vb_k = vb_z * np.nan
        knha_se = knha_stat = knha_pval = np.full(p, np.nan)

    QM = QMp = knha_F = knha_Fp = None
    m = p - 1
    if m >= 1:
        b = beta[1:]
        QM = float(b @ np.linalg.solve(vb_z[1:, 1:], b))
        QMp = float(chi2_sf(QM, m))
        if df > 0:
            # vb_k = s2w vb_z, so F = QM / (m s2w); effects exactly on the regression
            # surface give s2w = 0 and F = inf (nan when the slopes are 0 as well)
            with np.errstate(divide="ignore", invalid="ignore"):
                knha_F = float(np.float64(QM) / (m * s2w))
            knha_Fp = float(special.fdtrc(m, df, knha_F))

    R2 = None
    if compute_r2 and p > 1 and tau2 is None and method != "FE":
        t2_re = fit_rma(y, v, None, method=method, compute_r2=False).tau2
        # metafor: 100 * max(0, (tau2_RE - tau2_ME) / tau2_RE), 0 when tau2_RE is 0
        R2 = 0.0 if t2_re <= 0 else 100.0 * max(0.0, (t2_re - t2) / t2_re)

    if test == "z":
        se, stat, pval, vb, crit, s2 = z_se, z_stat, z_pval, vb_z, crit_z, 1.0
    else:
        crit = float(t_isf((1 - level / 100) / 2, df))
        se, stat, pval, vb, s2 = knha_se, knha_stat, knha_pval, vb_k, s2w
    return MetaRegressionResult(
        names=nm, coef=beta, se=se, stat=stat, pval=pval,
        ci_lb=beta - crit * se, ci_ub=beta + crit * se,
        z_se=z_se, z_stat=z_stat, z_pval=z_pval,
        knha_se=knha_se, knha_stat=knha_stat, knha_pval=knha_pval,
        QM=QM, QM_df=m, QMp=QMp, knha_F=knha_F, knha_Fp=knha_Fp,
        QE=QE, QE_df=QE_df, QEp=QEp, tau2=t2, I2=I2, H2=H2, R2=R2,
        k=k, p=p, method=method, test=test, level=level, vb=vb, s2w=s2,
        se_tau2=se_tau2, converged=converged, yi=y, vi=v, X=Xm,
        labels=None if labels is None else tuple(str(x) for x in labels))


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
