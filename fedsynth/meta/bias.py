"""Small-study and publication-bias tools beyond ``publication_bias`` (metafor 3.8).

Each function follows the metafor function it names, with its argument names, defaults
and output:

- :func:`fsn` - ``fsn()``: fail-safe N by Rosenthal's (1979, *Psychol Bull* 86:638)
  Stouffer method, Orwin's (1983, *J Educ Stat* 8:157) and Rosenberg's (2005, *Evolution*
  59:464) weighted method.
- :func:`regtest` - ``regtest()``: Egger-type regression tests (Egger et al. 1997, *BMJ*
  315:629; Sterne & Egger 2005) with the predictors ``sei, vi, ni, ninv, sqrtni,
  sqrtninv`` and the models ``rma`` (mixed-effects meta-regression) or ``lm`` (weighted
  least squares), and the limit estimate.
- :func:`trimfill` - ``trimfill()``: Duval & Tweedie's (2000, *Biometrics* 56:455;
  *JASA* 95:89) trim-and-fill with the ``L0``, ``R0`` and ``Q0`` estimators and the side
  given or estimated.
- :func:`hc` - ``hc()``: Henmi & Copas's (2010, *Stat Med* 29:2969) confidence interval
  for the fixed-effect estimate that is robust to publication bias.
- :func:`selmodel` - ``selmodel()``: step-function (Vevea & Hedges 1995, *Psychometrika*
  60:419) and beta (Citkowicz & Vevea 2017, *Psychol Methods* 22:28) selection models by
  maximum likelihood.

Pure statistics: numpy/scipy, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import integrate, optimize, special, stats

from fedsynth.errors import FedsynthError, InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta._format import f, grid, p, peq
from fedsynth.meta.diagnostics import _METAFOR_DEFAULT_THRESHOLD, _trimfill
from fedsynth.meta.metareg import fit_rma, validate_yi_vi
from fedsynth.meta.zeroin import R_DEFAULT_TOL, uniroot
from fedsynth.results import Interval, ResultMixin
from fedsynth.vocabulary import check_level, check_method, check_test

__all__ = [
    "FSN_TYPES", "REGTEST_PREDICTORS", "REGTEST_MODELS", "TRIMFILL_ESTIMATORS",
    "SELMODEL_TYPES", "FailSafeNResult", "RegtestResult", "TrimFillResult", "HenmiCopasResult",
    "SelectionModelResult", "fsn", "regtest", "trimfill", "hc", "selmodel",
]

#: metafor ``fsn(type=)`` values offered here (``REM`` is a simulation and is not).
FSN_TYPES = ("Rosenthal", "Orwin", "Rosenberg")
#: metafor ``regtest(predictor=)``.
REGTEST_PREDICTORS = ("sei", "vi", "ni", "ninv", "sqrtni", "sqrtninv")
#: metafor ``regtest(model=)``.
REGTEST_MODELS = ("rma", "lm")
#: metafor ``trimfill(estimator=)``.
TRIMFILL_ESTIMATORS = ("L0", "R0", "Q0")
#: metafor ``selmodel(type=)`` values offered here.
SELMODEL_TYPES = ("stepfun", "beta")


def _choice(value: Any, choices: Sequence[str], name: str, *, fold: bool = True) -> str:
    text = str(value)
    for c in choices:
        if text == c or (fold and text.lower() == c.lower()):
            return c
    raise InputError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def _yi_vi(yi: Any, vi: Any, sei: Any, min_k: int) -> tuple[np.ndarray, np.ndarray]:
    if vi is None and sei is None:
        raise InputError("vi: give the sampling variances (vi) or standard errors (sei)")
    if vi is not None and sei is not None:
        raise InputError("vi and sei: give one of them")
    if vi is None:
        s = np.asarray(sei, dtype=float)
        vi = s * s
    return validate_yi_vi(yi, vi, min_k=min_k)


# ---------------------------------------------------------------------------------------
# fail-safe N
# ---------------------------------------------------------------------------------------



def _interval_at_fit_level(result: Any, confidence_level: float | None,
                           function: str) -> Interval:
    """``result``'s stored ``(ci_lb, ci_ub)``, refusing a level other than the fit's.

    These tools compute their interval inside the fit (an iterative or ML fit at ``level``),
    so another level needs a new call, not a rescaled interval.
    """
    if confidence_level is not None and abs(confidence_level * 100 - result.level) > 1e-9:
        raise InputError(f"confidence_level: this {function} fit is at {result.level:g}%; "
                         f"call {function}(level={confidence_level})")
    return Interval(result.ci_lb, result.ci_ub, level=result.level / 100)

@dataclass(frozen=True)
class FailSafeNResult(ResultMixin):
    """Fail-safe N (metafor ``fsn``).

    Attributes
    ----------
    type
        ``Rosenthal``, ``Orwin`` or ``Rosenberg``.
    fsnum
        The number of unpublished null studies that would bring the combined result to
        non-significance (Rosenthal, Rosenberg) or the mean effect down to ``target``
        (Orwin); rounded up as metafor does.
    alpha
        Significance level of the combined test.
    pval
        p-value of the combined test of the observed studies (Rosenthal: one-sided
        Stouffer; Rosenberg: two-sided weighted z); NaN for Orwin.
    meanes
        Mean effect (Orwin: unweighted unless ``weighted``; Rosenberg: inverse-variance
        weighted); NaN for Rosenthal.
    target
        Orwin's target mean effect (default half the observed mean); NaN otherwise.
    """

    type: str
    fsnum: float
    alpha: float
    pval: float
    meanes: float
    target: float

    def summary(self, digits: int = 4) -> str:
        """Text as metafor's ``print.fsn``."""
        d = digits
        lines = [f"Fail-safe N Calculation Using the {self.type} Approach", ""]
        if self.type == "Orwin":
            lines += [f"Average Effect Size: {f(self.meanes, d)}",
                      f"Target Effect Size:  {f(self.target, d)}"]
        else:
            if self.type == "Rosenberg":
                lines.append(f"Average Effect Size:         {f(self.meanes, d)}")
            lines += [f"Observed Significance Level: {p(self.pval, d)}",
                      f"Target Significance Level:   {self.alpha:g}"]
        lines += ["", f"Fail-safe N: {self.fsnum:g}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN and infinity as null)."""
        return {"type": self.type, "fsnum": finite_or_none(self.fsnum),
                "alpha": self.alpha, "pval": finite_or_none(self.pval),
                "meanes": finite_or_none(self.meanes), "target": finite_or_none(self.target)}


def _round_fsn(x: float) -> float:
    # metafor: ceiling unless the value is within sqrt(eps) of a whole number
    if np.isfinite(x) and abs(x - round(x)) >= np.sqrt(np.finfo(float).eps):
        return float(np.ceil(x))
    return float(round(x)) if np.isfinite(x) else x


def fsn(yi: Any, vi: Any = None, *, sei: Any = None, type: str = "Rosenthal",
        alpha: float = 0.05, target: float | None = None,
        weighted: bool = False) -> FailSafeNResult:
    """Fail-safe N: how many null studies would overturn the conclusion (metafor ``fsn``).

    Parameters
    ----------
    yi, vi, sei
        Effect sizes and sampling variances (or standard errors). Orwin's unweighted
        method uses only ``yi``.
    type
        ``"Rosenthal"`` (default; Stouffer's combined one-sided z, Rosenthal 1979),
        ``"Orwin"`` (number of studies with effect 0 that bring the mean effect to
        ``target``, Orwin 1983) or ``"Rosenberg"`` (the weighted fixed-effect z test,
        Rosenberg 2005).
    alpha
        Significance level (default 0.05).
    target
        Orwin's target effect (default: half the observed mean effect).
    weighted
        Orwin's method with the inverse-variance weighted mean (metafor ``weighted``).

    Returns
    -------
    FailSafeNResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> fsn(dat["yi"], dat["vi"]).fsnum
    607.0
    """
    kind = _choice(type, FSN_TYPES, "type")
    a = float(alpha)
    if not 0 < a < 1:
        raise InputError(f"alpha: must lie between 0 and 1, got {alpha!r}")
    if kind == "Orwin" and not weighted and vi is None and sei is None:
        y = validate_yi_vi(yi, np.ones(np.size(yi)))[0]
        v = np.ones_like(y)
    else:
        y, v = _yi_vi(yi, vi, sei, 1)
    k = y.size
    nan = float("nan")
    if kind == "Rosenthal":
        z_avg = abs(float(np.sum(y / np.sqrt(v))) / np.sqrt(k))
        pval = float(stats.norm.sf(z_avg))
        fsnum = max(0.0, k * (z_avg / stats.norm.isf(a)) ** 2 - k)
        return FailSafeNResult(kind, _round_fsn(fsnum), a, pval, nan, nan)
    if kind == "Orwin":
        meanes = float(np.sum(y / v) / np.sum(1 / v)) if weighted else float(np.mean(y))
        tgt = meanes / 2 if target is None else float(target)
        if tgt == 0:
            fsnum = float("inf")
        else:
            if np.sign(tgt) != np.sign(meanes):
                tgt = -tgt
            fsnum = max(0.0, k * (meanes - tgt) / tgt)
        return FailSafeNResult(kind, _round_fsn(fsnum), a, nan, meanes, tgt)
    w = 1 / v
    meanes = float(np.sum(w * y) / np.sum(w))
    zval = meanes / np.sqrt(1 / np.sum(w))
    wp = (np.sum(w * y) / stats.norm.isf(a / 2)) ** 2 - np.sum(w)
    pval = float(2 * stats.norm.sf(abs(zval)))
    fsnum = max(0.0, float(k * wp / np.sum(w)))
    return FailSafeNResult(kind, _round_fsn(fsnum), a, pval, meanes, nan)


# ---------------------------------------------------------------------------------------
# regtest
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegtestResult(ResultMixin):
    """Regression test for funnel-plot asymmetry (metafor ``regtest``).

    Attributes
    ----------
    model, predictor
        As given (``rma`` or ``lm``; ``sei``, ``vi``, ``ni``, ``ninv``, ``sqrtni``,
        ``sqrtninv``).
    zval, pval
        Test statistic of the predictor's coefficient (z, or t with ``dfs`` degrees of
        freedom for ``model="lm"`` and ``test="knha"``) and its p-value (metafor's names).
    dfs
        Degrees of freedom of the t test; None for a z test.
    est, ci
        The limit estimate (the intercept: the effect of a study of infinite precision)
        and its confidence interval, for the predictors that vanish at infinite
        precision (``sei, vi, ninv, sqrtninv``); NaN otherwise, as metafor's NULL.
    method, level
        tau² estimator of the ``rma`` model (``FE`` for ``lm``); level in percent.
    """

    model: str
    predictor: str
    zval: float
    pval: float
    dfs: int | None
    est: float
    ci_lb: float
    ci_ub: float
    method: str
    level: float

    def confidence_interval(self, confidence_level: float | None = None) -> Interval:
        """Confidence interval of the limit estimate (at the level of the fit)."""
        return _interval_at_fit_level(self, confidence_level, "regtest")

    def summary(self, digits: int = 4) -> str:
        """Text as metafor's ``print.regtest``."""
        d = digits
        kind = ("mixed-effects meta-regression model" if self.model == "rma"
                else "weighted regression with multiplicative dispersion")
        names = {"sei": "standard error", "vi": "sampling variance", "ni": "sample size",
                 "ninv": "inverse of the sample size",
                 "sqrtni": "square root sample size",
                 "sqrtninv": "inverse of the square root sample size"}
        limit = {"sei": "sei -> 0", "vi": "vi -> 0"}.get(self.predictor, "ni -> inf")
        stat = (f"z = {f(self.zval, d)}" if self.dfs is None
                else f"t = {f(self.zval, d)}, df = {self.dfs}")
        lines = ["Regression Test for Funnel Plot Asymmetry", "",
                 f"Model:     {kind}",
                 f"Predictor: {names.get(self.predictor, self.predictor)}", "",
                 f"Test for Funnel Plot Asymmetry: {stat}, p {peq(self.pval, d)}"]
        if np.isfinite(self.est):
            head = f"Limit Estimate (as {limit}):"
            lines.append(f"{head:<32}b = {f(self.est, d)} (CI: {f(self.ci_lb, d)}, "
                         f"{f(self.ci_ub, d)})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN and infinity as null)."""
        return {"model": self.model, "predictor": self.predictor,
                "zval": finite_or_none(self.zval), "pval": finite_or_none(self.pval),
                "dfs": self.dfs, "est": finite_or_none(self.est),
                "ci_lb": finite_or_none(self.ci_lb), "ci_ub": finite_or_none(self.ci_ub),
                "method": self.method, "level": self.level}


def regtest(yi: Any, vi: Any = None, *, sei: Any = None, ni: Any = None,
            model: str = "rma", predictor: str = "sei", method: str = "REML",
            test: str = "z", level: float = 0.95) -> RegtestResult:
    """Egger-type regression test for funnel-plot asymmetry (metafor ``regtest``).

    Parameters
    ----------
    yi, vi, sei
        Effect sizes and sampling variances (or standard errors).
    ni
        Sample sizes, for the predictors ``ni``, ``ninv``, ``sqrtni`` and ``sqrtninv``.
    model
        ``"rma"`` (default): mixed-effects meta-regression of yi on the predictor (with
        ``method`` and ``test``); ``"lm"``: weighted least squares with weights 1/vi and a
        multiplicative dispersion (Egger's original test), t test with k - 2 df.
    predictor
        ``"sei"`` (default, Egger's test), ``"vi"`` (Moreno et al. 2009), ``"ni"``,
        ``"ninv"`` (1/ni, Peters et al. 2006), ``"sqrtni"`` or ``"sqrtninv"``.
    method, test, level
        The ``rma`` model's tau² estimator, test (``z`` or ``knha``) and confidence level
        (a fraction, default 0.95).

    Returns
    -------
    RegtestResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> r = regtest(dat["yi"], dat["vi"])
    >>> round(r.zval, 4), round(r.pval, 4)
    (-0.8033, 0.4218)
    """
    mdl = _choice(model, REGTEST_MODELS, "model")
    pred = _choice(predictor, REGTEST_PREDICTORS, "predictor")
    lvl = check_level(level) / 100   # a fraction
    y, v = _yi_vi(yi, vi, sei, 3)
    k = y.size
    if pred in ("ni", "ninv", "sqrtni", "sqrtninv"):
        if ni is None:
            raise InputError(f"ni: predictor {pred!r} needs the sample sizes (ni)")
        n = np.asarray(ni, dtype=float).reshape(-1)
        if n.size != k:
            raise InputError(f"ni: {n.size} sample sizes for {k} studies")
        bad = np.flatnonzero(~(np.isfinite(n) & (n > 0)))
        if bad.size:
            raise InputError(f"ni: study {int(bad[0]) + 1} has sample size "
                             f"{float(n[bad[0]])!r}; must be finite and > 0")
        x = {"ni": n, "ninv": 1 / n, "sqrtni": np.sqrt(n), "sqrtninv": 1 / np.sqrt(n)}[pred]
    else:
        x = np.sqrt(v) if pred == "sei" else v
    X = np.column_stack([np.ones(k), x])
    if np.linalg.matrix_rank(X) < 2:
        raise InputError(f"predictor: {pred} is constant across the studies; the test "
                         "needs it to vary")
    limit = pred in ("sei", "vi", "ninv", "sqrtninv")
    nan = float("nan")
    if mdl == "rma":
        meth, tst = check_method(method), check_test(test)
        # metafor's regtest fits rma() with its default control (Fisher scoring stopped
        # at |Δτ²| < 1e-5): the same threshold gives metafor's numbers (as trimfill)
        fit = fit_rma(y, v, X, names=("intrcpt", pred), method=meth, test=tst, level=lvl,
                      compute_r2=False, threshold=_METAFOR_DEFAULT_THRESHOLD)
        dfs = k - 2 if tst == "knha" else None
        est = float(fit.coef[0]) if limit else nan
        lb = float(fit.ci_lb[0]) if limit else nan
        ub = float(fit.ci_ub[0]) if limit else nan
        return RegtestResult(mdl, pred, float(fit.stat[1]), float(fit.pval[1]), dfs, est,
                             lb, ub, meth, 100 * lvl)
    # lm(yi ~ X - 1, weights = 1/vi): the fixed-effect meta-regression with the
    # residual scale estimated, i.e. the Knapp-Hartung variance without truncation
    fit = fit_rma(y, v, X, names=("intrcpt", pred), method="FE", test="knha", level=lvl,
                  compute_r2=False)
    df = k - 2
    crit = float(stats.t.isf((1 - lvl) / 2, df))
    est = float(fit.coef[0])
    se0 = float(fit.knha_se[0])
    return RegtestResult(mdl, pred, float(fit.knha_stat[1]), float(fit.knha_pval[1]), df,
                         est if limit else nan, est - crit * se0 if limit else nan,
                         est + crit * se0 if limit else nan, "FE", 100 * lvl)


# ---------------------------------------------------------------------------------------
# trim and fill
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrimFillResult(ResultMixin):
    """Trim-and-fill (metafor ``trimfill``).

    Attributes
    ----------
    estimator, side
        ``L0``, ``R0`` or ``Q0``; the side where studies are estimated missing.
    k0, se_k0
        Estimated number of missing studies and its standard error (metafor's ``se.k0``).
    p_k0
        For ``R0``: the p-value of the test of k0 = 0 (metafor's ``p.k0``); NaN otherwise.
    k
        Number of studies after filling (observed + k0).
    estimate, se, zval, pval, ci_lb, ci_ub, tau2
        The random-effects (or fixed-effect) model fitted to the observed and filled
        studies (the observed model when k0 = 0).
    filled_yi, filled_vi
        The filled-in studies.
    method, level
        tau² estimator; confidence level in percent.
    """

    estimator: str
    side: str
    k0: int
    se_k0: float
    p_k0: float
    k: int
    estimate: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    filled_yi: tuple[float, ...]
    filled_vi: tuple[float, ...]
    method: str
    level: float

    def confidence_interval(self, confidence_level: float | None = None) -> Interval:
        """Confidence interval of the filled-in estimate (at the level of the fit)."""
        return _interval_at_fit_level(self, confidence_level, "trimfill")

    def summary(self, digits: int = 4) -> str:
        """Text in the spirit of metafor's ``print.rma.uni`` for a trim-and-fill fit."""
        d = digits
        lines = [f"Estimated number of missing studies on the {self.side} side: {self.k0} "
                 f"(SE = {f(self.se_k0, d)})"]
        if self.estimator == "R0":
            head = f"Test of H0: no missing studies on the {self.side} side:"
            width = len(f"Estimated number of missing studies on the {self.side} side:")
            lines.append(f"{head:<{width}} p-val {peq(self.p_k0, d)}")
        lines.append(f"Model with the filled studies (k = {self.k}, tau^2 = "
                     f"{f(self.tau2, d)}): estimate {f(self.estimate, d)}, se "
                     f"{f(self.se, d)}, z = {f(self.zval, d)}, p {peq(self.pval, d)}, CI "
                     f"{f(self.ci_lb, d)} to {f(self.ci_ub, d)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN and infinity as null)."""
        out: dict[str, Any] = {}
        for name in ("estimator", "side", "k0", "se_k0", "p_k0", "k", "estimate", "se",
                     "zval", "pval", "ci_lb", "ci_ub", "tau2", "method", "level"):
            value = getattr(self, name)
            out[name] = finite_or_none(value) if isinstance(value, float) else value
        out["filled_yi"] = list(self.filled_yi)
        out["filled_vi"] = list(self.filled_vi)
        return out


def trimfill(yi: Any, vi: Any = None, *, sei: Any = None, estimator: str = "L0",
             side: str | None = None, method: str = "REML", level: float = 0.95,
             maxiter: int = 100) -> TrimFillResult:
    """Duval & Tweedie's trim-and-fill (metafor ``trimfill(rma(yi, vi), ...)``).

    Parameters
    ----------
    yi, vi, sei
        Effect sizes and sampling variances (or standard errors).
    estimator
        ``"L0"`` (default), ``"R0"`` or ``"Q0"`` (Duval & Tweedie 2000).
    side
        ``"left"`` or ``"right"``: where studies are missing. Default: estimated from the
        sign of the slope of Egger's regression on the standard error, as metafor.
    method
        tau² estimator of the model (``FE`` for a fixed-effect trim-and-fill).
    level
        Confidence level (fraction) of the filled-in estimate.
    maxiter
        Iterations of the trimming before giving up (metafor's default 100).

    Returns
    -------
    TrimFillResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> tf = trimfill(dat["yi"], dat["vi"], estimator="R0")
    >>> tf.k0, tf.side
    (0, 'right')
    """
    est = _choice(estimator, TRIMFILL_ESTIMATORS, "estimator", fold=False)
    if side is not None:
        side = _choice(side, ("left", "right"), "side")
    meth = check_method(method)
    lvl = check_level(level) / 100   # a fraction
    y, v = _yi_vi(yi, vi, sei, 2)
    tf = _trimfill(y, v, meth, maxiter=maxiter, estimator=est, side=side)
    # the model of the observed (k0 = 0) or observed and filled studies, fitted as
    # metafor's rma() with its default control
    fit = fit_rma(np.concatenate([y, tf.filled_yi]), np.concatenate([v, tf.filled_vi]),
                  None, method=meth, level=lvl, compute_r2=False, threshold=tf.threshold)
    p_k0 = float("nan")
    if est == "R0":
        m = np.arange(-1, tf.k0)
        p_k0 = float(1 - np.sum(special.comb(m + 1, m + 1) * 0.5 ** (m + 2)))
    return TrimFillResult(
        estimator=est, side=tf.side, k0=tf.k0, se_k0=tf.se_k0, p_k0=p_k0, k=y.size + tf.k0,
        estimate=float(fit.coef[0]), se=float(fit.se[0]), zval=float(fit.stat[0]),
        pval=float(fit.pval[0]), ci_lb=float(fit.ci_lb[0]), ci_ub=float(fit.ci_ub[0]),
        tau2=float(fit.tau2), filled_yi=tuple(float(x) for x in tf.filled_yi),
        filled_vi=tuple(float(x) for x in tf.filled_vi), method=meth, level=100 * lvl)


# ---------------------------------------------------------------------------------------
# Henmi-Copas
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HenmiCopasResult(ResultMixin):
    """Henmi-Copas confidence interval (metafor ``hc``).

    Attributes
    ----------
    beta, se, ci_lb, ci_ub
        The fixed-effect (inverse-variance) estimate, its standard error allowing for
        heterogeneity (``(tau² W2 + 1) / W1``) and the Henmi-Copas interval.
    tau2
        DerSimonian-Laird tau² used by the method.
    beta_rma, se_rma, ci_lb_rma, ci_ub_rma, tau2_rma, method_rma
        The random-effects model (``method``) for comparison, as metafor prints it.
    level
        Confidence level in percent.
    """

    beta: float
    se: float
    ci_lb: float
    ci_ub: float
    tau2: float
    beta_rma: float
    se_rma: float
    ci_lb_rma: float
    ci_ub_rma: float
    tau2_rma: float
    method_rma: str
    level: float

    def confidence_interval(self, confidence_level: float | None = None) -> Interval:
        """The Henmi-Copas interval (at the level of the fit)."""
        return _interval_at_fit_level(self, confidence_level, "hc")

    def summary(self, digits: int = 4) -> str:
        """Text as metafor's ``print.hc.rma.uni`` (the model's and Henmi-Copas' rows)."""
        d = digits
        rows = [["rma", self.method_rma, *(f(v, d) for v in (
                    self.tau2_rma, self.beta_rma, self.se_rma, self.ci_lb_rma,
                    self.ci_ub_rma))],
                ["hc", "DL", *(f(v, d) for v in (self.tau2, self.beta, self.se, self.ci_lb,
                                                  self.ci_ub))]]
        return "\n".join(grid(["", "method", "tau2", "estimate", "se", "ci.lb", "ci.ub"],
                              rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN and infinity as null)."""
        out: dict[str, Any] = {}
        for name in ("beta", "se", "ci_lb", "ci_ub", "tau2", "beta_rma", "se_rma",
                     "ci_lb_rma", "ci_ub_rma", "tau2_rma", "method_rma", "level"):
            value = getattr(self, name)
            out[name] = finite_or_none(value) if isinstance(value, float) else value
        return out


def hc(yi: Any, vi: Any = None, *, sei: Any = None, method: str = "REML",
       level: float = 0.95, tol: float = R_DEFAULT_TOL,
       maxiter: int = 1000) -> HenmiCopasResult:
    """Henmi & Copas's (2010) publication-bias-robust interval (metafor ``hc``).

    The estimate is the fixed-effect one, which publication bias distorts less than the
    random-effects estimate; its interval accounts for heterogeneity (DerSimonian-Laird
    tau²) through the exact distribution of ``(beta - mu) / se`` given Q, evaluated by
    one-dimensional integration and a root search.

    Parameters
    ----------
    yi, vi, sei
        Effect sizes and sampling variances (or standard errors); at least 2 studies.
    method
        tau² estimator of the random-effects model reported alongside (metafor's
        ``hc(rma(yi, vi, method=...))``).
    level
        Confidence level (fraction).
    tol, maxiter
        Tolerance and most steps of the root search for the interval half-width
        (metafor's ``control = list(tol, maxiter)``). The default is metafor's,
        ``.Machine$double.eps^0.25`` (about 1.2e-4), which leaves the interval about 1e-5
        from the exact one; the search repeats R's ``uniroot`` step for step
        (:mod:`fedsynth.meta.zeroin`) and the integral is QUADPACK's ``dqagi`` at
        ``integrate``'s default tolerances, so the default gives metafor's printed numbers.
        ``tol=1e-12`` gives the exact interval (see docs/decisions/bias.md).

    Returns
    -------
    HenmiCopasResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> r = hc(dat["yi"], dat["vi"])
    >>> round(r.beta, 4), round(r.ci_lb, 4), round(r.ci_ub, 4)
    (-0.4303, -1.1555, 0.2949)
    """
    meth = check_method(method)
    lvl = check_level(level) / 100   # a fraction
    y, v = _yi_vi(yi, vi, sei, 2)
    k = y.size
    alpha = 1 - lvl
    w = 1 / v
    W1 = w.sum()
    W2, W3, W4 = (w**2).sum() / W1, (w**3).sum() / W1, (w**4).sum() / W1
    beta = float((w * y).sum() / W1)
    Q = float((w * (y - beta) ** 2).sum())
    tau2 = max(0.0, (Q - (k - 1)) / (W1 - W2))
    se = float(np.sqrt((tau2 * W2 + 1) / W1))
    VR = 1 + tau2 * W2
    SDR = np.sqrt(VR)

    def EQ(r: float) -> float:
        return (k - 1) + tau2 * (W1 - W2) + tau2**2 * (r**2 / VR**2 - 1 / VR) * (W3 - W2**2)

    def VQ(r: float) -> float:
        rsq, rv2 = r**2, 1 / VR**2
        return (2 * (k - 1) + 4 * tau2 * (W1 - W2) + 2 * tau2**2 * (W1 * W2 - 2 * W3 + W2**2)
                + 4 * tau2**2 * (rv2 * rsq - 1 / VR) * (W3 - W2**2)
                + 4 * tau2**3 * (rv2 * rsq - 1 / VR) * (W4 - 2 * W2 * W3 + W2**3)
                + 2 * tau2**4 * (rv2 - 2 * rsq / VR**3) * (W3 - W2**2) ** 2)

    def finv(fv: float) -> float:
        return (W1 / W2 - 1) * (fv**2 - 1) + (k - 1)

    def eqn(x: float) -> float:
        def integrand(r: float) -> float:
            eq, vq = EQ(SDR * r), VQ(SDR * r)
            with np.errstate(divide="ignore"):     # x = 0 (the bracket's end): r / 0 = inf
                ratio = np.float64(r) / np.float64(x)
            return float(stats.gamma.cdf(finv(ratio), a=eq**2 / vq, scale=vq / eq)
                         * stats.norm.pdf(r))
        # R's integrate(): QUADPACK dqagi with rel.tol = abs.tol = eps^0.25, 100 subdivisions
        val = integrate.quad(integrand, x, np.inf, epsabs=R_DEFAULT_TOL,
                             epsrel=R_DEFAULT_TOL, limit=100)[0]
        return val - alpha / 2

    try:
        t0 = uniroot(eqn, 0.0, 2.0, tol=tol, maxiter=maxiter).root
    except FedsynthError as exc:
        raise FedsynthError(f"hc: no root of the Henmi-Copas equation in (0, 2): {exc}") \
            from None
    u0 = SDR * t0
    rma = fit_rma(y, v, None, method=meth, level=lvl, compute_r2=False,
                  threshold=_METAFOR_DEFAULT_THRESHOLD)
    return HenmiCopasResult(
        beta=beta, se=se, ci_lb=float(beta - u0 * se), ci_ub=float(beta + u0 * se),
        tau2=float(tau2),
        beta_rma=float(rma.coef[0]), se_rma=float(rma.se[0]), ci_lb_rma=float(rma.ci_lb[0]),
        ci_ub_rma=float(rma.ci_ub[0]), tau2_rma=float(rma.tau2), method_rma=meth,
        level=100 * lvl)


# ---------------------------------------------------------------------------------------
# selection models
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionModelResult(ResultMixin):
    """Selection model fitted by maximum likelihood (metafor ``selmodel``).

    Attributes
    ----------
    type, alternative, steps
        ``stepfun`` or ``beta``; the direction of the p-values (``greater`` default);
        the step function's cut points (ending in 1; empty for ``beta``).
    beta, se, zval, pval, ci_lb, ci_ub
        The adjusted pooled estimate with its Wald test and interval.
    tau2, se_tau2
        The adjusted tau² (ML) and its standard error.
    delta, se_delta
        Selection parameters: for ``stepfun`` the relative likelihood of selection of each
        p-value interval (the first fixed at 1, its SE NaN); for ``beta`` the two shape
        parameters of the beta weight function ``p^(d1-1) (1-p)^(d2-1)``.
    ll, ll0, LRT, LRTdf, LRTp
        Log-likelihood of the selection model and of the model without selection, and the
        likelihood-ratio test of no selection.
    ptable
        Number of studies per p-value interval (``stepfun``).
    level
        Confidence level in percent.
    """

    type: str
    alternative: str
    steps: tuple[float, ...]
    beta: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    se_tau2: float
    delta: tuple[float, ...]
    se_delta: tuple[float, ...]
    ll: float
    ll0: float
    LRT: float
    LRTdf: int
    LRTp: float
    ptable: tuple[int, ...]
    level: float

    def confidence_interval(self, confidence_level: float | None = None) -> Interval:
        """Wald interval of the adjusted estimate (at the level of the fit)."""
        return _interval_at_fit_level(self, confidence_level, "selmodel")

    def summary(self, digits: int = 4) -> str:
        """Text as metafor's ``print.rma.uni.selmodel`` (its main blocks)."""
        d = digits
        k = f"k = {sum(self.ptable)}; " if self.ptable else ""
        lines = [f"Random-Effects Model ({k}tau^2 estimator: ML)", "",
                 f"tau^2 (estimated amount of total heterogeneity): {f(self.tau2, d)} "
                 f"(SE = {f(self.se_tau2, d)})",
                 f"tau (square root of estimated tau^2 value):      "
                 f"{f(np.sqrt(max(self.tau2, 0.0)), d)}", "",
                 "Model Results:", ""]
        lines += grid(["estimate", "se", "zval", "pval", "ci.lb", "ci.ub"],
                      [[f(self.beta, d), f(self.se, d), f(self.zval, d), p(self.pval, d),
                        f(self.ci_lb, d), f(self.ci_ub, d)]])
        lines += ["", "Test for Selection Model Parameters:",
                  f"LRT(df = {self.LRTdf}) = {f(self.LRT, d)}, p-val {peq(self.LRTp, d)}",
                  "", "Selection Model Results:", ""]
        crit = stats.norm.ppf(0.5 + self.level / 2 if self.level < 1 else 0.975)
        rows = []
        for i, est in enumerate(self.delta):
            se = self.se_delta[i]
            if self.type == "stepfun":
                lo = (0.0, *self.steps[:-1])[i]
                name = f"{lo:g} < p <= {self.steps[i]:g}"
                k = str(self.ptable[i])
            else:
                name, k = f"delta.{i + 1}", ""
            if np.isfinite(se):
                z = (est - 1) / se           # H0: delta = 1 (no selection), as metafor
                pv = 2 * stats.norm.sf(abs(z))
                lb = max(est - crit * se, 0.0)
                rows.append([name, k, f(est, d), f(se, d), f(z, d), p(pv, d), f(lb, d),
                             f(est + crit * se, d)])
            else:
                rows.append([name, k, f(est, d), "---", "---", "---", "---", "---"])
        header = ["", "k", "estimate", "se", "zval", "pval", "ci.lb", "ci.ub"]
        if self.type != "stepfun":
            header, rows = header[:1] + header[2:], [r[:1] + r[2:] for r in rows]
        lines += grid(header, rows)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN and infinity as null)."""
        out: dict[str, Any] = {}
        for name in ("type", "alternative", "beta", "se", "zval", "pval", "ci_lb", "ci_ub",
                     "tau2", "se_tau2", "ll", "ll0", "LRT", "LRTdf", "LRTp", "level"):
            value = getattr(self, name)
            out[name] = finite_or_none(value) if isinstance(value, float) else value
        out["steps"] = list(self.steps)
        out["delta"] = [finite_or_none(x) for x in self.delta]
        out["se_delta"] = [finite_or_none(x) for x in self.se_delta]
        out["ptable"] = list(self.ptable)
        return out


def _pvals(y: np.ndarray, v: np.ndarray, alternative: str) -> np.ndarray:
    z = y / np.sqrt(v)
    if alternative == "two.sided":
        return 2 * stats.norm.sf(np.abs(z))
    return stats.norm.cdf(z) if alternative == "less" else stats.norm.sf(z)


def _step_norm(mu: float, tau2: float, v: np.ndarray, steps: np.ndarray,
               delta: np.ndarray, alternative: str) -> np.ndarray:
    """A_i = sum_j delta_j P(p_i in interval j): the normalising constants (closed form)."""
    s = np.sqrt(v)
    sd = np.sqrt(v + tau2)

    def upper(c: np.ndarray) -> np.ndarray:   # P(y > c)
        return stats.norm.sf(c, loc=mu, scale=sd)

    def lower(c: np.ndarray) -> np.ndarray:   # P(y <= c)
        return stats.norm.cdf(c, loc=mu, scale=sd)

    # probability that the p-value is <= q
    if alternative == "greater":
        def pless(q: float) -> np.ndarray:
            return upper(s * stats.norm.isf(q)) if q < 1 else np.ones_like(v)
    elif alternative == "less":
        def pless(q: float) -> np.ndarray:
            return lower(s * stats.norm.ppf(q)) if q < 1 else np.ones_like(v)
    else:
        def pless(q: float) -> np.ndarray:
            if q >= 1:
                return np.ones_like(v)
            c = s * stats.norm.isf(q / 2)
            return upper(c) + lower(-c)
    cum = [pless(float(q)) for q in steps]
    out = delta[0] * cum[0]
    for j in range(1, steps.size):
        out = out + delta[j] * (cum[j] - cum[j - 1])
    return out


def _beta_norm(mu: float, tau2: float, v: np.ndarray, delta: np.ndarray,
               alternative: str, pval_min: float) -> np.ndarray:
    """A_i = ∫ w(p(y)) φ(y; mu, v_i + tau²) dy for the beta weight function.

    Composite Gauss-Legendre in y, vectorised over the studies: the weight is smooth
    between the points where the clamped p-value reaches ``pval_min`` or ``1 - pval_min``
    (and 1/2), so those are panel edges; the normal density is covered to 12 SDs.
    """
    s, sd = np.sqrt(v), np.sqrt(v + tau2)
    zc = float(stats.norm.isf(pval_min / 2 if alternative == "two.sided" else pval_min))
    edges = np.sort(np.column_stack([
        mu - 12 * sd, mu + 12 * sd, -zc * s, zc * s, np.zeros_like(s)]), axis=1)
    edges = np.clip(edges, (mu - 12 * sd)[:, None], (mu + 12 * sd)[:, None])
    # 40 panels between consecutive edges, 16 Gauss-Legendre nodes each
    x16, w16 = np.polynomial.legendre.leggauss(16)
    sub = np.linspace(0.0, 1.0, 41)
    lo = edges[:, :-1, None] + (edges[:, 1:, None] - edges[:, :-1, None]) * sub[None, None, :-1]
    hi = edges[:, :-1, None] + (edges[:, 1:, None] - edges[:, :-1, None]) * sub[None, None, 1:]
    half = (hi - lo) / 2
    yv = (lo + hi)[..., None] / 2 + half[..., None] * x16          # (k, 4, 40, 16)
    pv = _pvals(yv, v[:, None, None, None], alternative)
    pv = np.clip(pv, pval_min, 1 - pval_min)
    wts = pv ** (delta[0] - 1) * (1 - pv) ** (delta[1] - 1)
    dens = stats.norm.pdf(yv, loc=mu, scale=sd[:, None, None, None])
    return np.sum(wts * dens * half[..., None] * w16, axis=(1, 2, 3))


def _hessian(fun: Any, x: np.ndarray) -> np.ndarray:
    """Central-difference Hessian with one Richardson step (numDeriv's default idea)."""
    n = x.size

    def h_at(h: np.ndarray) -> np.ndarray:
        H = np.empty((n, n))
        f0 = fun(x)
        for i in range(n):
            ei = np.zeros(n)
            ei[i] = h[i]
            H[i, i] = (fun(x + ei) - 2 * f0 + fun(x - ei)) / h[i] ** 2
            for j in range(i):
                ej = np.zeros(n)
                ej[j] = h[j]
                H[i, j] = H[j, i] = (fun(x + ei + ej) - fun(x + ei - ej) - fun(x - ei + ej)
                                     + fun(x - ei - ej)) / (4 * h[i] * h[j])
        return H

    h = 1e-3 * np.maximum(np.abs(x), 1e-2)
    return (4 * h_at(h / 2) - h_at(h)) / 3


def selmodel(yi: Any, vi: Any = None, *, sei: Any = None, type: str = "stepfun",
             steps: Sequence[float] | None = None, alternative: str = "greater",
             level: float = 0.95) -> SelectionModelResult:
    """Selection model for publication bias by maximum likelihood (metafor ``selmodel``).

    The random-effects model ``y_i ~ N(mu, v_i + tau²)`` is reweighted by the relative
    likelihood ``w(p_i)`` that a study with one-sided p-value ``p_i`` is published, and
    ``mu``, ``tau²`` and the weight function's parameters are estimated jointly by ML
    (Hedges 1992; Vevea & Hedges 1995; Citkowicz & Vevea 2017), as
    ``selmodel(rma(yi, vi, method="ML"), type=..., steps=...)``.

    Parameters
    ----------
    yi, vi, sei
        Effect sizes and sampling variances (or standard errors).
    type
        ``"stepfun"``: a step function with ``steps`` (weights relative to the first
        interval, whose weight is 1); ``"beta"``: the beta weight function with two shape
        parameters (p-values truncated to [1e-5, 1 - 1e-5], as metafor).
    steps
        The cut points of the step function in (0, 1] (1 is appended if missing), e.g.
        ``(0.025, 1)`` for the three-parameter model. Required for ``stepfun``.
    alternative
        Direction of the p-values: ``"greater"`` (default), ``"less"`` or
        ``"two.sided"``.
    level
        Confidence level (fraction).

    Returns
    -------
    SelectionModelResult

    Examples
    --------
    >>> import fedsynth
    >>> dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
    ...                       ci="cpos", di="cneg")
    >>> sel = selmodel(dat["yi"], dat["vi"], type="stepfun", steps=[0.05, 1],
    ...                alternative="less")
    >>> round(sel.beta, 4), round(sel.delta[1], 4)
    (-0.7316, 1.1136)
    """
    kind = _choice(type, SELMODEL_TYPES, "type")
    alt = _choice(alternative, ("greater", "less", "two.sided"), "alternative")
    lvl = check_level(level) / 100   # a fraction
    y, v = _yi_vi(yi, vi, sei, 3)
    k = y.size
    pmin = 1e-5 if kind == "beta" else 0.0
    p = np.clip(_pvals(y, v, alt), pmin, 1 - pmin)
    if kind == "stepfun":
        if steps is None:
            raise InputError("steps: the step function needs its cut points, e.g. "
                             "steps=(0.025, 1)")
        st = np.unique(np.asarray(list(steps), dtype=float))
        if st.size == 0 or not np.all(np.isfinite(st)) or st[0] <= 0 or st[-1] > 1:
            raise InputError(f"steps: cut points must lie in (0, 1], got {list(steps)!r}")
        if st[-1] != 1:
            st = np.append(st, 1.0)
        if st.size < 2:
            raise InputError("steps: give at least one cut point below 1")
        grp = np.searchsorted(st, p, side="left")   # first j with p <= steps[j]
        ptable = np.bincount(grp, minlength=st.size)
        if np.any(ptable == 0):
            empty = int(np.flatnonzero(ptable == 0)[0])
            lo = 0.0 if empty == 0 else st[empty - 1]
            raise InputError(f"steps: no study has a p-value in ({lo:g}, {st[empty]:g}]; "
                             "its selection weight cannot be estimated (choose other steps)")
        nd, dmin, dmax = st.size - 1, 0.0, 100.0
    else:
        if steps is not None:
            raise InputError("steps: only the step function (type='stepfun') takes steps")
        st = np.array([])
        grp = np.zeros(k, dtype=int)
        ptable = np.array([], dtype=int)
        nd, dmin, dmax = 2, 1e-5, 100.0
    if k < 2 + nd:
        raise InputError(f"yi: {k} studies are too few for {2 + nd} parameters")

    def unpack(par: np.ndarray) -> tuple[float, float, np.ndarray]:
        mu, tau2 = float(par[0]), float(np.exp(par[1]))
        if tau2 < np.finfo(float).eps * 10:
            tau2 = 0.0
        d = dmin + (dmax - dmin) / (1 + np.exp(-par[2:]))   # metafor's .mapfun
        delta = np.concatenate([[1.0], d]) if kind == "stepfun" else d
        return mu, tau2, delta

    def loglik(mu: float, tau2: float, delta: np.ndarray) -> float:
        if kind == "stepfun":
            A = _step_norm(mu, tau2, v, st, delta, alt)
            logw = np.log(delta[grp])
        else:
            A = _beta_norm(mu, tau2, v, delta, alt, pmin)
            logw = (delta[0] - 1) * np.log(p) + (delta[1] - 1) * np.log1p(-p)
        return float(np.sum(logw + stats.norm.logpdf(y, mu, np.sqrt(v + tau2)) - np.log(A)))

    def negll(par: np.ndarray) -> float:
        value = -loglik(*unpack(par))
        return value if np.isfinite(value) else 1e300

    ml = fit_rma(y, v, None, method="ML", compute_r2=False)
    d0 = np.full(nd, np.log((1.0 - dmin) / (dmax - 1.0)))   # delta = 1 (no selection)
    start = np.concatenate([[float(ml.coef[0]), np.log(float(ml.tau2) + 0.001)], d0])
    opt = optimize.minimize(negll, start, method="BFGS",
                            options={"gtol": 1e-10, "maxiter": 5000})
    res = optimize.minimize(negll, opt.x, method="Nelder-Mead",
                            options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000,
                                     "maxfev": 40000})
    par = res.x if res.fun <= opt.fun else opt.x
    mu, tau2, delta = unpack(par)
    ll = loglik(mu, tau2, delta)
    if not np.isfinite(ll):
        raise FedsynthError("selmodel: the likelihood is not finite at the optimum")
    free = delta[1:] if kind == "stepfun" else delta

    def negll_natural(theta: np.ndarray) -> float:
        d = np.concatenate([[1.0], theta[2:]]) if kind == "stepfun" else theta[2:]
        return -loglik(float(theta[0]), max(float(theta[1]), 0.0), d)

    theta = np.concatenate([[mu, tau2], free])
    nan = float("nan")
    se_all = np.full(theta.size, nan)
    try:
        H = _hessian(negll_natural, theta)
        cov = np.linalg.inv(H)
        diag = np.diag(cov)
        se_all = np.where(diag > 0, np.sqrt(np.abs(diag)), nan)
    except np.linalg.LinAlgError:
        pass
    se = float(se_all[0])
    crit = float(stats.norm.isf((1 - lvl) / 2))
    zval = mu / se
    se_delta = (nan, *se_all[2:]) if kind == "stepfun" else tuple(se_all[2:])
    ll0 = _loglik_no_selection(y, v, ml)
    lrt = max(0.0, -2 * (ll0 - ll))
    return SelectionModelResult(
        type=kind, alternative=alt, steps=tuple(float(x) for x in st), beta=mu, se=se,
        zval=zval, pval=float(2 * stats.norm.sf(abs(zval))), ci_lb=mu - crit * se,
        ci_ub=mu + crit * se, tau2=tau2, se_tau2=float(se_all[1]),
        delta=tuple(float(x) for x in delta), se_delta=tuple(float(x) for x in se_delta),
        ll=ll, ll0=ll0, LRT=lrt, LRTdf=nd, LRTp=float(stats.chi2.sf(lrt, nd)),
        ptable=tuple(int(x) for x in ptable), level=100 * lvl)


def _loglik_no_selection(y: np.ndarray, v: np.ndarray, fit: Any) -> float:
    """ML log-likelihood of the random-effects model without selection."""
    return float(np.sum(stats.norm.logpdf(y, float(fit.coef[0]),
                                          np.sqrt(v + float(fit.tau2)))))
