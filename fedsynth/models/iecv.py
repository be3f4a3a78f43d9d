"""Internal-external cross-validation (IECV) of a model developed across sites.

Why
---
A model fitted to all sites says nothing about how it performs at a site it has not seen.
IECV (Royston, Parmar & Sylvester, Stat Med 2004; Steyerberg & Harrell, J Clin Epidemiol
2016; Debray et al., "A framework for developing, implementing, and evaluating clinical
prediction models in an individual participant data meta-analysis", Stat Med 2013) holds
out each site in turn, develops the model on the others, scores the held-out site's
patients and measures discrimination (c-statistic) and calibration (slope,
calibration-in-the-large, O:E) there. Pooling each measure across the held-out sites
(random effects, REML, Knapp-Hartung, a ``t(k-2)`` prediction interval; Riley et al.,
BMJ 2016; Debray et al., BMJ 2017) shows the average performance at a new site and, in
``tau`` and the prediction interval, how much it varies between sites: the evidence for
choosing between one global model, a global model whose intercept each site
recalibrates, and a hierarchical / site-specific model (:func:`recommend`).

The driver :func:`run_iecv` needs two callables, so the same code runs in one process
(``fedsynth model fit --iecv``: :func:`in_process`) and, later, over the network:

* ``develop(sites) -> {variant: ScoringModel}`` fits the candidate models on the given
  sites (federated: one-stage IRLS and the exact hierarchical fit exchange only sums);
* ``evaluate(site, model) -> SiteMeasures`` runs :func:`evaluate_site` *at* the held-out
  site, which scores its own rows and returns only the aggregates of the Output contract.

Candidates (:data:`CANDIDATES`): ``global`` (the one-stage model as it is),
``global_recalibrated`` (its intercept re-estimated at the held-out site: one number,
``glm(y ~ offset(lp), binomial)``, computed there), ``hierarchical`` (the random-intercept
model at the mean intercept, ``u = 0``, as for a new site) and
``hierarchical_recalibrated``. A recalibrated candidate's calibration-in-the-large is 0
at the site by construction (the intercept was fitted there); its slope, c-statistic and
O:E are what the recalibration leaves.

Pure statistics: numpy, no I/O, no grpc. Binary outcomes (``family = "binomial"``): the
measures of the Output contract are those of a risk model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from fedsynth.effects.patient_level import estimate
from fedsynth.effects.results import Refusal
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta.pooling import pool
from fedsynth.meta.scales import performance_inference, to_pooling_scale
from fedsynth.models.coding import Design
from fedsynth.models.fit import ModelFit, fit_hierarchical
from fedsynth.models.glm import fit_one_stage
from fedsynth.models.spec import INTERCEPT
from fedsynth.vocabulary import TESTS

__all__ = ["CANDIDATES", "MEASURES", "POOLED_MEASURES", "ScoringModel", "SiteMeasures",
           "PooledMeasure", "CandidateResult", "IecvResult", "VerdictThresholds",
           "Recommendation", "linear_predictor", "evaluate_site", "pool_measures",
           "run_iecv", "in_process", "recommend"]

#: Candidate models, in report order.
CANDIDATES: tuple[str, ...] = ("global", "global_recalibrated", "hierarchical",
                               "hierarchical_recalibrated")
#: Per-site measures (the Output contract's keys, in order).
MEASURES: tuple[str, ...] = ("n", "auc", "auc_var", "logit_auc", "logit_auc_var",
                             "calibration_slope", "calibration_slope_var",
                             "calibration_in_the_large", "calibration_in_the_large_var",
                             "O", "E", "log_OE", "log_OE_var")
#: Measures pooled across held-out sites (each with its ``_var``), on their pooling scale.
POOLED_MEASURES: tuple[str, ...] = ("logit_auc", "calibration_slope",
                                    "calibration_in_the_large", "log_OE")
#: The null of each pooled measure (a model that predicts perfectly at every site).
_NULLS = {"logit_auc": 0.0, "calibration_slope": 1.0, "calibration_in_the_large": 0.0,
          "log_OE": 0.0}


@dataclass(frozen=True)
class ScoringModel:
    """A developed model as it is sent to a held-out site to be scored there.

    Attributes
    ----------
    variant
        One of :data:`CANDIDATES`.
    family
        The model's family (``binomial`` for the measures here).
    names
        Coefficient names (the design's columns, ``intercept`` first).
    coefficients
        One per name; ``NaN`` for an aliased coefficient (its column is left out of the
        linear predictor, as R's ``predict`` with an ``NA`` coefficient).
    recalibrate
        True: the site re-estimates the intercept on its own rows before measuring.
    developed_on
        The sites the model was developed on.
    """

    variant: str
    family: str
    names: tuple[str, ...]
    coefficients: np.ndarray
    recalibrate: bool = False
    developed_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.variant not in CANDIDATES:
            raise InputError(f"variant: {self.variant!r} is not one of "
                             f"{', '.join(CANDIDATES)}")
        coef = np.asarray(self.coefficients, dtype=float)
        if coef.shape != (len(self.names),):
            raise InputError(f"coefficients: {coef.shape[0] if coef.ndim else 0} values for "
                             f"{len(self.names)} names")
        object.__setattr__(self, "coefficients", coef)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the coordinator sends)."""
        return {"variant": self.variant, "family": self.family,
                "coefficients": {n: finite_or_none(v)
                                 for n, v in zip(self.names, self.coefficients)},
                "recalibrate": self.recalibrate, "developed_on": list(self.developed_on)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoringModel:
        """Read :meth:`to_dict`'s form (a null coefficient is aliased)."""
        coefficients = data.get("coefficients")
        if not isinstance(coefficients, Mapping) or not coefficients:
            raise InputError("coefficients: a table of name -> value is required")
        values = [math.nan if v is None else float(v) for v in coefficients.values()]
        return cls(variant=str(data.get("variant")), family=str(data.get("family")),
                   names=tuple(str(k) for k in coefficients),
                   coefficients=np.array(values),
                   recalibrate=bool(data.get("recalibrate", False)),
                   developed_on=tuple(str(s) for s in data.get("developed_on", ())))


def linear_predictor(design: Design, names: Sequence[str], coefficients: Any) -> np.ndarray:
    """The linear predictor ``X beta + offset`` of a site's rows.

    Parameters
    ----------
    design
        The site's design (:func:`fedsynth.models.coding.build_design`).
    names, coefficients
        The model's coefficients by name; they must be the design's columns (in any order).
        A non-finite coefficient (aliased) contributes nothing.

    Raises
    ------
    InputError
        A design column the model has no coefficient for, or the reverse.
    """
    beta = dict(zip(names, np.asarray(coefficients, dtype=float)))
    missing = [n for n in design.names if n not in beta]
    extra = [n for n in beta if n not in design.names]
    if missing or extra:
        what = (f"the model has no coefficient {missing[0]!r}" if missing
                else f"the design has no column {extra[0]!r}")
        raise InputError(f"coefficients: {what}: the model and the data's coding differ")
    b = np.array([beta[n] for n in design.names])
    b = np.where(np.isfinite(b), b, 0.0)
    return design.x @ b + design.offset


@dataclass(frozen=True)
class SiteMeasures:
    """What a held-out site returns: the aggregates of the Output contract, nothing else.

    Every measure is ``NaN`` when the site could not compute it; ``refused`` then names
    the measure and the reason (a sentence of the refusal vocabulary, no counts).
    ``recalibration`` is the intercept shift the site estimated (0 when not asked).
    """

    n: int
    auc: float
    auc_var: float
    logit_auc: float
    logit_auc_var: float
    calibration_slope: float
    calibration_slope_var: float
    calibration_in_the_large: float
    calibration_in_the_large_var: float
    O: float  # noqa: E741 - the Output contract's name
    E: float
    log_OE: float
    log_OE_var: float
    recalibration: float = 0.0
    refused: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The Output contract's per-site object (NaN as null)."""
        out: dict[str, Any] = {"n": self.n}
        for key in MEASURES[1:]:
            out[key] = finite_or_none(getattr(self, key))
        out["recalibration"] = finite_or_none(self.recalibration)
        if self.refused:
            out["refused"] = dict(self.refused)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteMeasures:
        """Read :meth:`to_dict`'s form (null as NaN)."""
        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        return cls(n=int(data["n"]), **{k: num(k) for k in MEASURES[1:]},
                   recalibration=num("recalibration") if "recalibration" in data else 0.0,
                   refused={str(k): str(v) for k, v in (data.get("refused") or {}).items()})


_ANALYSES = {"auc": "auc", "calibration_slope": "calibration_slope",
             "calibration_in_the_large": "calibration_in_the_large", "log_OE": "oe_ratio"}


def evaluate_site(design: Design, model: ScoringModel) -> SiteMeasures:
    """Score a site's rows with ``model`` and measure its performance there.

    Run by the held-out site on its own data; only the returned aggregates leave it. The
    measures are the evaluation estimators of :mod:`fedsynth.effects.patient_level` run on
    the model's predicted risks (the same code as an evaluation round's ``score`` column):
    AUC with DeLong's variance (pROC's ``roc(..., direction = "<")``), its logit by the
    delta method, the calibration slope ``glm(y ~ lp, binomial)``, calibration-in-the-large
    ``glm(y ~ offset(lp), binomial)``, ``O = sum(y)``, ``E = sum(p)`` and ``log(O/E)`` with
    variance ``(1 - O/n) / O`` (Debray et al., BMJ 2017, Table 2).

    With ``model.recalibrate`` the site first re-estimates the intercept
    (calibration-in-the-large of the model as sent), adds it to the linear predictor and
    measures the recalibrated model (Janssen et al., J Clin Epidemiol 2008: the simplest
    update, one number per site).

    Parameters
    ----------
    design
        The site's design for the model (its private rows).
    model
        The model to score (:class:`ScoringModel`; binomial).

    Returns
    -------
    SiteMeasures
        A measure the site cannot compute (no events, perfect discrimination, ...) is
        ``NaN`` with the reason in ``refused``.
    """
    if model.family != "binomial":
        raise InputError(f"family: IECV measures a risk model (binomial), got "
                         f"{model.family!r}")
    lp = linear_predictor(design, model.names, model.coefficients)
    y = design.y
    refused: dict[str, str] = {}
    shift = 0.0

    def run(measure: str, eta: np.ndarray) -> tuple[float, float]:
        frame = pd.DataFrame({"y": y, "p": special.expit(eta)})
        result = estimate(frame, {"name": measure, "estimator": _ANALYSES[measure],
                                  "outcome": "y", "score": "p"})
        if isinstance(result, Refusal):
            refused[measure] = result.reason
            return math.nan, math.nan
        return result.yi, result.vi

    if model.recalibrate:
        shift, _ = run("calibration_in_the_large", lp)
        if not math.isfinite(shift):
            refused["recalibration"] = refused.pop("calibration_in_the_large")
            shift = math.nan
        lp = lp + (shift if math.isfinite(shift) else 0.0)
    auc, auc_var = run("auc", lp)
    lauc, lauc_var = (float(v[0]) for v in to_pooling_scale([auc], [auc_var],
                                                            "identity", "logit"))
    slope, slope_var = run("calibration_slope", lp)
    citl, citl_var = run("calibration_in_the_large", lp)
    log_oe, log_oe_var = run("log_OE", lp)
    return SiteMeasures(n=int(len(y)), auc=auc, auc_var=auc_var, logit_auc=lauc,
                        logit_auc_var=lauc_var, calibration_slope=slope,
                        calibration_slope_var=slope_var, calibration_in_the_large=citl,
                        calibration_in_the_large_var=citl_var, O=float(y.sum()),
                        E=float(special.expit(lp).sum()), log_OE=log_oe,
                        log_OE_var=log_oe_var, recalibration=shift, refused=refused)


@dataclass(frozen=True)
class PooledMeasure:
    """One measure pooled across held-out sites under one test (``z`` or ``knha``).

    ``pi_lb``/``pi_ub`` use ``t(k - 2)`` and ``sqrt(tau2 + se^2)`` with the test's ``se``
    (Riley et al. 2011), NaN for fewer than three sites.
    """

    k: int
    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    tau2: float
    I2: float
    pi_lb: float
    pi_ub: float
    pval: float
    Q: float = math.nan
    Q_pval: float = math.nan

    @property
    def tau(self) -> float:
        """Between-site SD of the measure."""
        return math.sqrt(self.tau2) if self.tau2 >= 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The Output contract's pooled object (plus ``k`` and ``pval``)."""
        return {key: finite_or_none(getattr(self, key)) if key != "k" else self.k
                for key in ("k", "estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "pi_lb",
                            "pi_ub", "pval", "Q", "Q_pval")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PooledMeasure:
        """Read :meth:`to_dict`'s form (null as NaN), e.g. from a round document."""
        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        return cls(k=int(data.get("k") or 0),
                   **{key: num(key) for key in ("estimate", "se", "ci_lb", "ci_ub", "tau2",
                                                "I2", "pi_lb", "pi_ub", "pval", "Q",
                                                "Q_pval")})


def pool_measures(per_site: Mapping[str, SiteMeasures], *, level: float = 95.0
                  ) -> dict[str, dict[str, PooledMeasure]]:
    """Pool each measure of :data:`POOLED_MEASURES` across held-out sites.

    metafor's ``rma(yi, vi, method = "REML")`` and ``rma(..., test = "knha")`` per measure
    (:func:`fedsynth.meta.pool`, the one tau² engine), with the prediction interval of the
    prediction-model literature, ``t(k - 2)`` (:func:`fedsynth.meta.scales.
    performance_inference`). A site whose measure is NaN is left out of that measure.

    Returns
    -------
    ``{measure: {"z": PooledMeasure, "knha": PooledMeasure}}``.
    """
    sites = list(per_site)
    yi = np.array([[getattr(per_site[s], m) for s in sites] for m in POOLED_MEASURES])
    vi = np.array([[getattr(per_site[s], f"{m}_var") for s in sites]
                   for m in POOLED_MEASURES])
    mask = np.isfinite(yi) & np.isfinite(vi) & (vi > 0)
    yi = np.where(mask, yi, 0.0)
    vi = np.where(mask, vi, 1.0)
    out: dict[str, dict[str, PooledMeasure]] = {m: {} for m in POOLED_MEASURES}
    for test in TESTS:
        batch = pool(yi, vi, mask=mask, method="REML", test=test, level=level,
                     names=POOLED_MEASURES, labels=np.array(sites))
        for i, measure in enumerate(POOLED_MEASURES):
            inf = performance_inference(batch.estimate[i:i + 1], batch.se[i:i + 1],
                                        batch.tau2[i:i + 1], batch.k[i:i + 1],
                                        null=_NULLS[measure], test=test, level=level,
                                        pi_df="k-2")
            out[measure][test] = PooledMeasure(
                k=int(batch.k[i]), estimate=float(batch.estimate[i]),
                se=float(batch.se[i]), ci_lb=float(batch.ci_lb[i]),
                ci_ub=float(batch.ci_ub[i]), tau2=float(batch.tau2[i]),
                I2=float(batch.I2[i]), pi_lb=float(inf.pi_lb[0]), pi_ub=float(inf.pi_ub[0]),
                pval=float(inf.pval[0]), Q=float(batch.Q[i]), Q_pval=float(batch.Q_pval[i]))
    return out


@dataclass(frozen=True)
class CandidateResult:
    """IECV of one candidate model: per held-out site measures and their pooling."""

    variant: str
    per_site: Mapping[str, SiteMeasures]
    pooled: Mapping[str, Mapping[str, PooledMeasure]]

    def forest_input(self, measure: str, test: str = "knha") -> dict[str, Any]:
        """One pooled measure as the mapping :func:`fedsynth.plots.forest_plot` draws.

        The held-out sites' estimates and variances (sites without the measure left
        out), random-effects weights in percent, the pooled estimate with its CI and the
        ``t(k-2)`` prediction interval, on the measure's pooling scale (``logit`` for
        the c-statistic: the plot back-transforms it; ``log`` for O:E).
        """
        if measure not in POOLED_MEASURES:
            raise InputError(f"measure: {measure!r} is not one of "
                             f"{', '.join(POOLED_MEASURES)}")
        rows = [(s, getattr(m, measure), getattr(m, f"{measure}_var"))
                for s, m in self.per_site.items()]
        rows = [r for r in rows if math.isfinite(r[1]) and math.isfinite(r[2]) and r[2] > 0]
        p = self.pooled[measure][test]
        vi = np.array([r[2] for r in rows])
        w = 1.0 / (vi + max(p.tau2, 0.0))
        scale = {"logit_auc": "logit", "log_OE": "log"}.get(measure, "identity")
        return {"yi": [r[1] for r in rows], "vi": vi.tolist(), "labels": [r[0] for r in rows],
                "weights": (100.0 * w / w.sum()).tolist(), "estimate": p.estimate,
                "ci_lb": p.ci_lb, "ci_ub": p.ci_ub, "pi_lb": p.pi_lb, "pi_ub": p.pi_ub,
                "tau2": p.tau2, "I2": p.I2, "Q": p.Q, "Q_pval": p.Q_pval, "method": "REML",
                "test": test, "level": 95.0, "scale": scale,
                "null_value": {"logit_auc": 0.5, "calibration_slope": 1.0,
                               "log_OE": 1.0}.get(measure, 0.0)}

    @classmethod
    def from_dict(cls, variant: str, data: Mapping[str, Any]) -> CandidateResult:
        """Read :meth:`to_dict`'s form (a round document's ``iecv`` object)."""
        per_site = data.get("per_site")
        pooled = data.get("pooled")
        if not isinstance(per_site, Mapping) or not isinstance(pooled, Mapping):
            raise InputError(f"iecv {variant}: 'per_site' and 'pooled' objects are required")
        return cls(variant=variant,
                   per_site={str(s): SiteMeasures.from_dict(m) for s, m in per_site.items()},
                   pooled={str(m): {str(t): PooledMeasure.from_dict(p) for t, p in by.items()}
                           for m, by in pooled.items()})

    def to_dict(self) -> dict[str, Any]:
        """``{"per_site": {site: {...}}, "pooled": {measure: {"z": ..., "knha": ...}}}``."""
        return {"per_site": {s: m.to_dict() for s, m in self.per_site.items()},
                "pooled": {m: {t: p.to_dict() for t, p in by.items()}
                           for m, by in self.pooled.items()}}


@dataclass(frozen=True)
class VerdictThresholds:
    """When held-out performance or coefficients differ enough between sites to matter.

    A held-out measure counts as heterogeneous when its REML ``tau`` exceeds the
    threshold *and* Cochran's Q test rejects homogeneity at ``alpha``: with ten sites of a
    few hundred patients REML's ``tau`` of homogeneous sites reaches 0.08 by chance, so
    the size alone would flip verdicts on noise. Defaults, and why
    (docs/decisions/iecv.md):

    ``citl_tau = 0.1``
        Between-site SD of calibration-in-the-large (log-odds) of the global model above
        which baseline risk differs: 2 SD is O:E off by ~20% at a typical site.
    ``slope_tau = 0.1``
        SD of the calibration slope (after intercept recalibration) above which the
        predictor effects differ: at 2 SD a site's slope is 0.8 or 1.2, a clinically
        relevant over/underfit (Van Calster et al., J Clin Epidemiol 2016).
    ``logit_auc_tau = 0.2``
        SD of the logit c-statistic: at 2 SD a c of 0.80 ranges ~0.73-0.85 between sites.
    ``alpha = 0.05``
        Level of the Q test that must also reject for a held-out measure.
    ``coefficient_i2 = 50`` and ``coefficient_alpha = 0.05``
        A coefficient's two-stage I² (%) at least this, with Cochran's Q significant at
        ``alpha`` divided by the number of coefficients tested (Bonferroni: with a dozen
        coefficients one of them is "heterogeneous" by chance in every other data set).
    """

    citl_tau: float = 0.1
    slope_tau: float = 0.1
    logit_auc_tau: float = 0.2
    coefficient_i2: float = 50.0
    coefficient_alpha: float = 0.05
    alpha: float = 0.05

    def __post_init__(self) -> None:
        for key in ("citl_tau", "slope_tau", "logit_auc_tau", "coefficient_i2",
                    "coefficient_alpha", "alpha"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{key}: must be a positive number, got {value!r}")
        if self.coefficient_alpha >= 1 or self.alpha >= 1 or self.coefficient_i2 >= 100:
            raise InputError("alpha and coefficient_alpha must be < 1 and coefficient_i2 "
                             "< 100")


#: The three verdicts, in order of what they ask of a deployment.
CHOICES: tuple[str, ...] = ("global", "global with local intercept recalibration",
                            "hierarchical / site-specific")


@dataclass(frozen=True)
class Recommendation:
    """The verdict and the numbers that drove it."""

    choice: str
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """``{"choice", "reasons"}``."""
        return {"choice": self.choice, "reasons": list(self.reasons)}


def recommend(candidates: Mapping[str, CandidateResult],
              coefficients: Mapping[str, Mapping[str, Any]] | None = None, *,
              thresholds: VerdictThresholds | None = None) -> Recommendation:
    """Choose between a global, a recalibrated global and a hierarchical/site-specific model.

    The seed's rule made operational (docs/decisions/iecv.md): between-site heterogeneity
    is the signal that one global model is inappropriate (Riley et al., BMJ 2016; Debray
    et al., Stat Med 2013). The REML ``tau`` (random-effects pooling) of each held-out
    measure and the two-stage I² and Q of each coefficient are compared with
    :class:`VerdictThresholds`:

    1. *site-specific*: a non-intercept coefficient is heterogeneous, or the calibration
       slope or the c-statistic varies between sites even after intercept recalibration
       (``global_recalibrated``; ``global`` when it was not run);
    2. else *recalibration*: the intercept coefficient is heterogeneous, or the global
       model's calibration-in-the-large varies between sites;
    3. else *global*.

    Parameters
    ----------
    candidates
        IECV results by variant (``global`` is required).
    coefficients
        The two-stage pooled coefficients (``TwoStageResult.pooled_dict()``: ``k``,
        ``I2``, ``Q``, ``pi_lb``, ``pi_ub`` by coefficient), or None.
    thresholds
        :class:`VerdictThresholds` (defaults when None).
    """
    th = thresholds or VerdictThresholds()
    if "global" not in candidates:
        raise InputError("candidates: the global model's IECV is required for a verdict")
    glob = candidates["global"]
    after = candidates.get("global_recalibrated", glob)

    def knha(result: CandidateResult, measure: str) -> PooledMeasure:
        return result.pooled[measure]["knha"]

    def describe(label: str, p: PooledMeasure) -> str:
        return (f"{label}: tau = {p.tau:.3f} (tau2 = {p.tau2:.4g}, I2 = {p.I2:.1f}%), "
                f"pooled {p.estimate:.3f}, 95% PI {p.pi_lb:.3f} to {p.pi_ub:.3f} "
                f"(k = {p.k})")

    site_specific: list[str] = []
    recalibrate: list[str] = []
    fine: list[str] = []
    which = "after intercept recalibration" if after is not glob else "global model"
    checks = ((site_specific, f"calibration slope ({which})",
               knha(after, "calibration_slope"), th.slope_tau),
              (site_specific, f"logit c-statistic ({which})", knha(after, "logit_auc"),
               th.logit_auc_tau),
              (recalibrate, "calibration-in-the-large (global model)",
               knha(glob, "calibration_in_the_large"), th.citl_tau))
    for bucket, label, p, limit in checks:
        flagged = p.tau > limit and p.Q_pval < th.alpha
        relation = (f"> {limit:g} and Q p = {p.Q_pval:.2g} < {th.alpha:g}" if flagged else
                    f"{'>' if p.tau > limit else '<='} {limit:g}, Q p = {p.Q_pval:.2g}")
        (bucket if flagged else fine).append(f"{describe(label, p)}: tau {relation}")
    if coefficients:
        tested = {name: c for name, c in coefficients.items()
                  if c.get("k") is not None and c["k"] >= 2 and c.get("Q") is not None}
        alpha = th.coefficient_alpha / max(len(tested), 1)
        for name, c in tested.items():
            q_df = int(c["k"]) - 1
            q_p = float(special.chdtrc(q_df, float(c["Q"])))
            i2 = float(c.get("I2") or 0.0)
            if i2 >= th.coefficient_i2 and q_p < alpha:
                text = (f"coefficient {name}: two-stage I2 = {i2:.1f}% >= "
                        f"{th.coefficient_i2:g}%, Q = {float(c['Q']):.2f} (df = {q_df}, "
                        f"p = {q_p:.2g} < {alpha:.2g}), 95% PI "
                        f"{float(c['pi_lb']):.3f} to {float(c['pi_ub']):.3f}")
                (recalibrate if name == INTERCEPT else site_specific).append(text)
        if not any(name in r for r in site_specific + recalibrate
                   for name in tested):
            fine.append(f"no coefficient has I2 >= {th.coefficient_i2:g}% with Q p < "
                        f"{alpha:.2g} ({len(tested)} coefficients tested)")
    if site_specific:
        return Recommendation(CHOICES[2], tuple(site_specific + recalibrate))
    if recalibrate:
        return Recommendation(CHOICES[1], tuple(recalibrate))
    return Recommendation(CHOICES[0], tuple(fine))


@dataclass(frozen=True)
class IecvResult:
    """IECV of every candidate, and the verdict.

    ``to_dict()`` has the Output contract's keys: ``iecv`` (the global one-stage model),
    ``iecv_candidates`` (every other variant) and ``recommendation``.
    """

    sites: tuple[str, ...]
    candidates: Mapping[str, CandidateResult]
    recommendation: Recommendation | None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """``{"iecv", "iecv_candidates", "recommendation", "iecv_notes"}``."""
        glob = self.candidates.get("global")
        return {"iecv": None if glob is None else glob.to_dict(),
                "iecv_candidates": {v: c.to_dict() for v, c in self.candidates.items()
                                    if v != "global"},
                "recommendation": (None if self.recommendation is None
                                   else self.recommendation.to_dict()),
                "iecv_notes": list(self.notes)}

    def summary(self, digits: int = 3) -> str:
        """Per candidate the pooled measures (Knapp-Hartung), then the verdict."""
        def fmt(value: float) -> str:
            text = f"{value:.{digits}f}"
            return text.lstrip("-") if float(text) == 0 else text   # no "-0.000"

        def interval(lb: float, ub: float) -> str:
            return "-" if not math.isfinite(lb) else f"{fmt(lb)} to {fmt(ub)}"

        lines = [f"internal-external cross-validation over {len(self.sites)} sites "
                 "(each held out in turn; REML, Knapp-Hartung, 95% PI t(k-2)):",
                 f"  {'candidate':<26}{'measure':<26}{'pooled':>8}{'95% CI':>20}{'tau':>7}"
                 f"{'95% PI':>20}"]
        for variant, result in self.candidates.items():
            for measure in POOLED_MEASURES:
                p = result.pooled[measure]["knha"]
                lines.append(f"  {variant:<26}{measure:<26}{fmt(p.estimate):>8}"
                             f"{interval(p.ci_lb, p.ci_ub):>20}{fmt(p.tau):>7}"
                             f"{interval(p.pi_lb, p.pi_ub):>20}")
        if any(v.endswith("_recalibrated") for v in self.candidates):
            lines.append("  (a recalibrated candidate's calibration-in-the-large and log O:E "
                         "are 0 at every site by construction)")
        if self.recommendation is not None:
            lines.append("")
            lines.append(f"recommendation: {self.recommendation.choice}")
            lines.extend(f"  - {reason}" for reason in self.recommendation.reasons)
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


Develop = Callable[[Sequence[str]], Mapping[str, ScoringModel]]
Evaluate = Callable[[str, ScoringModel], SiteMeasures]


def run_iecv(sites: Sequence[str], develop: Develop, evaluate: Evaluate, *,
             candidates: Sequence[str] = CANDIDATES, level: float = 95.0,
             coefficients: Mapping[str, Mapping[str, Any]] | None = None,
             thresholds: VerdictThresholds | None = None) -> IecvResult:
    """Hold out each site in turn, develop on the others, evaluate at the held-out site.

    Parameters
    ----------
    sites
        The sites taking part (at least three: two to develop on, and the pooled
        prediction interval needs ``k >= 3``).
    develop
        ``develop(sites) -> {variant: ScoringModel}``: the base models (``global`` and,
        for the hierarchical candidates, ``hierarchical``) fitted on ``sites``. The
        coordinator passes a network-backed one; :func:`in_process` one over local designs.
    evaluate
        ``evaluate(site, model) -> SiteMeasures``: run :func:`evaluate_site` at ``site``.
    candidates
        Variants to evaluate (subset of :data:`CANDIDATES`).
    level
        Confidence level in percent.
    coefficients
        Two-stage pooled coefficients for the verdict (see :func:`recommend`).
    thresholds
        The verdict's thresholds.
    """
    sites = list(sites)
    if len(sites) < 3:
        raise InputError(f"sites: IECV needs at least 3 sites, got {len(sites)}")
    if len(set(sites)) != len(sites):
        raise InputError("sites: a site is listed twice")
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise InputError(f"candidates: {unknown[0] if unknown else 'none'!r} is not one of "
                         f"{', '.join(CANDIDATES)}")
    per_site: dict[str, dict[str, SiteMeasures]] = {c: {} for c in candidates}
    notes: list[str] = []
    for held_out in sites:
        others = [s for s in sites if s != held_out]
        models = develop(others)
        for variant in candidates:
            base = variant.removesuffix("_recalibrated")
            if base not in models:
                raise InputError(f"develop: returned no {base!r} model (needed by "
                                 f"{variant!r})")
            m = models[base]
            model = ScoringModel(variant=variant, family=m.family, names=m.names,
                                 coefficients=m.coefficients,
                                 recalibrate=variant.endswith("_recalibrated"),
                                 developed_on=tuple(others))
            measures = evaluate(held_out, model)
            per_site[variant][held_out] = measures
            for measure, reason in measures.refused.items():
                notes.append(f"{variant}: {held_out}: {measure}: {reason}")
    results = {v: CandidateResult(variant=v, per_site=per_site[v],
                                  pooled=pool_measures(per_site[v], level=level))
               for v in candidates}
    verdict = (recommend(results, coefficients, thresholds=thresholds)
               if "global" in results else None)
    return IecvResult(sites=tuple(sites), candidates=results, recommendation=verdict,
                      notes=tuple(notes))


def in_process(designs: Mapping[str, Design], *, hierarchical: bool = True
               ) -> tuple[Develop, Evaluate]:
    """``develop`` and ``evaluate`` over designs held in this process.

    ``develop`` runs the federated one-stage IRLS (:func:`fedsynth.models.glm.
    fit_one_stage`) and, with ``hierarchical``, the exact random-intercept fit
    (:func:`fedsynth.models.fit.fit_hierarchical`) on the given sites; ``evaluate``
    runs :func:`evaluate_site` on the held-out site's design, exactly as the site would.
    """
    def develop(sites: Sequence[str]) -> dict[str, ScoringModel]:
        subset = {s: designs[s] for s in sites}
        one = fit_one_stage(subset)
        if one.status != "converged":
            raise InputError(f"develop: the global model on {', '.join(sites)} did not "
                             f"converge: {one.message or one.status}")
        family = next(iter(subset.values())).model.family
        out = {"global": ScoringModel(variant="global", family=family, names=one.names,
                                      coefficients=one.coefficients,
                                      developed_on=tuple(sites))}
        if hierarchical:
            h = fit_hierarchical(subset, one_stage=one)
            beta = dict(zip(h.names, h.coefficients))
            out["hierarchical"] = ScoringModel(
                variant="hierarchical", family=family, names=one.names,
                coefficients=np.array([beta.get(n, math.nan) for n in one.names]),
                developed_on=tuple(sites))
        return out

    def evaluate(site: str, model: ScoringModel) -> SiteMeasures:
        return evaluate_site(designs[site], model)

    return develop, evaluate


def iecv_for_fit(fit: ModelFit, designs: Mapping[str, Design], *,
                 level: float = 95.0, hierarchical: bool = True,
                 thresholds: VerdictThresholds | None = None) -> IecvResult:
    """IECV of a fitted model's sites in this process, the verdict using its two-stage fit.

    The sites are those that took part in ``fit`` (refused ones are left out here too).
    """
    sites = list(fit.sites)
    develop, evaluate = in_process({s: designs[s] for s in sites}, hierarchical=hierarchical)
    candidates = CANDIDATES if hierarchical else CANDIDATES[:2]
    coefficients = fit.two_stage.pooled_dict() if fit.two_stage is not None else None
    return run_iecv(sites, develop, evaluate, candidates=candidates, level=level,
                    coefficients=coefficients, thresholds=thresholds)
