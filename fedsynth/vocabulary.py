"""The vocabulary of fedsynth: every name a user chooses, defined once.

Why
---
The same choices appear in the Python API, the command line, the configuration files, the
analysis spec and the reports: the tau² estimators and tests of the pooling model
(metafor's ``method`` and ``test`` arguments, Viechtbauer 2010, J. Stat. Softw. 36(3)), the
effect-size measures of ``escalc``, the site estimators of the analysis spec, and the priors
of Bayesian pooling. Each list lives here, with what the project knows about each entry
(long names for printed output, the columns a measure needs, which measures are ratios
analysed on the log scale), and every other module imports it: a new method or measure is
added in one place, and a typo cannot make two parts of the project disagree.

This module imports nothing heavier than the standard library, so the command line can
build its option choices from it without loading numpy.

Each estimator carries its null and its pooling scale (``null_value``, ``scale``): the
value of no effect on the scale results are read on (an AUC 0.5, a calibration slope 1,
calibration-in-the-large 0, an O:E ratio 1, an odds or hazard ratio 1; the Brier score has
none) and the scale it is pooled on (``identity``, ``log`` or ``logit``: the c-statistic
on the logit and O:E on the log scale, where they are close to normal across studies,
Snell et al. 2018, Stat. Methods Med. Res. 27:3505-3522; Debray et al. 2017, BMJ
356:i6460). P-values, the forest plot's null line and axis, and the heterogeneity flag's
"prediction interval crosses the null" rule read the null through
:func:`analysis_scale`, which also names what the estimate is when back-transformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fedsynth.errors import InputError

__all__ = [
    "MethodInfo", "METHOD_INFO", "METHODS", "RE_METHODS", "DEFAULT_METHOD",
    "TestInfo", "TEST_INFO", "TESTS", "DEFAULT_TEST", "RMA_TEST_INFO", "RMA_TESTS",
    "check_rma_test",
    "MeasureInfo", "MEASURE_INFO", "ESCALC_MEASURES", "RATIO_MEASURES", "VTYPES",
    "EstimatorInfo", "ESTIMATOR_INFO", "ESTIMATORS", "ESTIMATOR_MEASURES",
    "PERFORMANCE_ESTIMATORS", "SCALES", "AnalysisScale", "analysis_scale", "to_scale",
    "from_scale",
    "PriorInfo", "PRIOR_INFO", "PRIORS", "DEFAULT_PRIOR", "DEFAULT_PRIOR_SCALE",
    "DEFAULT_LEVEL", "check_method", "check_test", "check_measure", "check_level",
]


# ---------------------------------------------------------------------------------------
# tau² estimators (metafor's rma(method = ...))
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodInfo:
    """One pooling method.

    Attributes
    ----------
    name
        The name as metafor spells it (``"REML"``).
    label
        Long name for printed output (``"restricted maximum likelihood"``).
    reference
        The paper that defines the estimator.
    random_effects
        False only for ``FE``, the fixed (common) effect model (tau² = 0).
    """

    name: str
    label: str
    reference: str
    random_effects: bool = True


_METHODS = (
    MethodInfo("FE", "fixed effect", "inverse-variance weighting (Hedges & Olkin 1985)",
               random_effects=False),
    MethodInfo("DL", "DerSimonian-Laird", "DerSimonian & Laird (1986), Control. Clin. Trials "
               "7:177-188"),
    MethodInfo("HE", "Hedges", "Hedges (1983), Psychol. Bull. 93:388-395"),
    MethodInfo("HS", "Hunter-Schmidt", "Hunter & Schmidt (2004), Methods of Meta-Analysis, "
               "2nd ed."),
    MethodInfo("SJ", "Sidik-Jonkman", "Sidik & Jonkman (2005), J. Biopharm. Stat. 15:823-838"),
    MethodInfo("ML", "maximum likelihood", "Viechtbauer (2005), J. Educ. Behav. Stat. "
               "30:261-293"),
    MethodInfo("REML", "restricted maximum likelihood", "Viechtbauer (2005), J. Educ. Behav. "
               "Stat. 30:261-293"),
    MethodInfo("EB", "empirical Bayes", "Morris (1983), J. Am. Stat. Assoc. 78:47-55"),
    MethodInfo("PM", "Paule-Mandel", "Paule & Mandel (1982), J. Res. Natl. Bur. Stand. "
               "87:377-385"),
)
#: Every pooling method by name, in metafor's order (``FE`` first).
METHOD_INFO: Mapping[str, MethodInfo] = MappingProxyType({m.name: m for m in _METHODS})
#: The method names (``FE`` is the fixed/common-effect model, tau² = 0).
METHODS: tuple[str, ...] = tuple(METHOD_INFO)
#: The random-effects tau² estimators.
RE_METHODS: tuple[str, ...] = tuple(m.name for m in _METHODS if m.random_effects)
DEFAULT_METHOD = "REML"

#: Methods that pool 2x2 tables from their counts rather than (yi, vi): Mantel-Haenszel
#: (metafor ``rma.mh``), Peto's one-step odds ratio (``rma.peto``) and the generalised
#: linear mixed models of ``rma.glmm`` (fedsynth.meta.mh, fedsynth.meta.glmm).
COUNT_METHODS: tuple[str, ...] = ("MH", "PETO", "GLMM")
#: ``rma.glmm`` models for the odds ratio: unconditional with fixed study effects, and the
#: conditional model with the exact (noncentral hypergeometric) likelihood.
GLMM_MODELS: tuple[str, ...] = ("UM.FS", "CM.EL")


# ---------------------------------------------------------------------------------------
# inference for the pooled estimate (metafor's test = ...)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestInfo:
    """One test of the pooled estimate and the model coefficients."""

    __test__ = False  # not a pytest test class

    name: str
    label: str
    reference: str


_TESTS = (
    TestInfo("z", "Wald z test", "normal quantiles (metafor's default)"),
    TestInfo("knha", "Knapp-Hartung t test", "Knapp & Hartung (2003), Stat. Med. "
             "22:2693-2710"),
)
TEST_INFO: Mapping[str, TestInfo] = MappingProxyType({t.name: t for t in _TESTS})
TESTS: tuple[str, ...] = tuple(TEST_INFO)
DEFAULT_TEST = "z"

#: Tests of the library's rma fits (``pool``, ``fit_rma``, ``fedsynth meta``): besides
#: the federation's ``z`` and ``knha``, metafor's ``t`` (t with k - p df, unadjusted
#: variances) and ``adhoc`` (Knapp-Hartung with its scale factor floored at 1; Jackson
#: et al. 2017, Stat. Med. 36:3923-3934). The federation's settings keep :data:`TESTS`.
RMA_TEST_INFO: Mapping[str, TestInfo] = MappingProxyType({t.name: t for t in (
    *_TESTS,
    TestInfo("t", "t test", "t quantiles with k - p df, variances as for z (metafor)"),
    TestInfo("adhoc", "Knapp-Hartung t test, scale factor at least 1",
             "Jackson, Law, Rücker & Schwarzer (2017), Stat. Med. 36:3923-3934"),
)})
RMA_TESTS: tuple[str, ...] = tuple(RMA_TEST_INFO)

#: Default confidence level of the Python API (a fraction; the command line says 95).
DEFAULT_LEVEL = 0.95


# ---------------------------------------------------------------------------------------
# effect-size measures (metafor's escalc(measure = ...))
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasureInfo:
    """One effect-size measure computed from summary data.

    Attributes
    ----------
    name
        metafor's name (``"OR"``).
    description
        What ``yi`` is.
    columns
        Accepted sets of input columns, named as ``escalc``'s arguments; the first set
        present is used.
    log_scale
        True for ratio measures, analysed as log ratios (plots and reports back-transform).
    """

    name: str
    description: str
    columns: tuple[tuple[str, ...], ...]
    log_scale: bool = False


_TABLE = (("ai", "bi", "ci", "di"), ("ai", "n1i", "ci", "n2i"))
_MEANS = (("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i"),)
_PAIRED = (("m1i", "m2i", "sd1i", "sd2i", "ni", "ri"),)
_RATES = (("x1i", "t1i", "x2i", "t2i"),)
_PROPORTION = (("xi", "ni"), ("xi", "mi"))
_MEASURES = (
    MeasureInfo("OR", "log odds ratio", _TABLE, log_scale=True),
    MeasureInfo("RR", "log risk ratio", _TABLE, log_scale=True),
    MeasureInfo("RD", "risk difference", _TABLE),
    MeasureInfo("MD", "raw mean difference", _MEANS),
    MeasureInfo("SMD", "standardized mean difference (Hedges' g)", _MEANS),
    MeasureInfo("ROM", "log ratio of means", _MEANS, log_scale=True),
    MeasureInfo("ZCOR", "Fisher's r-to-z transformed correlation", (("ri", "ni"),)),
    MeasureInfo("IRR", "log incidence rate ratio", _RATES, log_scale=True),
    MeasureInfo("PLO", "logit transformed proportion", _PROPORTION),
    MeasureInfo("PR", "raw proportion", _PROPORTION),
    # issue 16: the rest of metafor's common measures
    MeasureInfo("AS", "arcsine square root transformed risk difference", _TABLE),
    MeasureInfo("PHI", "phi coefficient", _TABLE),
    MeasureInfo("OR2D", "log odds ratio transformed to a standardized mean difference",
                _TABLE),
    MeasureInfo("SMDH", "standardized mean difference with heteroscedastic variances",
                _MEANS),
    MeasureInfo("CVR", "log coefficient of variation ratio", _MEANS, log_scale=True),
    MeasureInfo("VR", "log variability ratio", (*_MEANS, ("sd1i", "n1i", "sd2i", "n2i")),
                log_scale=True),
    MeasureInfo("MN", "raw mean", (("mi", "sdi", "ni"),)),
    MeasureInfo("MC", "raw mean change (paired design)", _PAIRED),
    MeasureInfo("SMCC", "standardized mean change, change-score standardization", _PAIRED),
    MeasureInfo("SMCR", "standardized mean change, raw-score standardization",
                (*_PAIRED, ("m1i", "m2i", "sd1i", "ni", "ri"))),
    MeasureInfo("COR", "raw correlation coefficient", (("ri", "ni"),)),
    MeasureInfo("UCOR", "bias-corrected correlation coefficient", (("ri", "ni"),)),
    MeasureInfo("IRD", "incidence rate difference", _RATES),
    MeasureInfo("IRSD", "square root transformed incidence rate difference", _RATES),
    MeasureInfo("PLN", "log transformed proportion", _PROPORTION),
    MeasureInfo("PFT", "Freeman-Tukey double arcsine transformed proportion", _PROPORTION),
)
MEASURE_INFO: Mapping[str, MeasureInfo] = MappingProxyType({m.name: m for m in _MEASURES})
#: The measures of ``escalc`` (and ``fedsynth meta --measure``).
ESCALC_MEASURES: tuple[str, ...] = tuple(MEASURE_INFO)
#: metafor's ``escalc(vtype=)`` sampling-variance estimators (``fedsynth meta --vtype``).
VTYPES: tuple[str, ...] = ("UB", "LS", "LS2", "HO", "ST", "CS", "AV", "AVHO")
#: Measures analysed on the log scale: escalc's ratio measures and the hazard ratio of the
#: Cox estimator.
RATIO_MEASURES: frozenset[str] = frozenset(
    {m.name for m in _MEASURES if m.log_scale} | {"HR"})


# ---------------------------------------------------------------------------------------
# site estimators (the analysis spec's estimator = ...)
# ---------------------------------------------------------------------------------------

#: Pooling scales: the link g from the scale results are read on to the scale they are
#: pooled on (metamisc's ``g``: ``identity``, ``log``, ``logit``).
SCALES: tuple[str, ...] = ("identity", "log", "logit")


@dataclass(frozen=True)
class EstimatorInfo:
    """One site estimator of the analysis spec.

    Attributes
    ----------
    name
        The spec's name (``"two_by_two"``).
    description
        What ``yi`` is.
    measures
        Values the spec's ``measure`` key may take (the first is the default); empty when
        the estimator has no ``measure`` key.
    null_value
        The value of no effect on the scale results are read on (AUC 0.5, calibration
        slope 1, O:E 1, an odds ratio 1, a difference 0); ``None`` when the measure has
        no null (the Brier score: no p-value, no null line). For an estimator with a
        ``measure`` key, the default measure's (see :func:`analysis_scale`).
    scale
        The scale the estimate is pooled on: ``"identity"``, ``"log"`` (ratios, O:E) or
        ``"logit"`` (the c-statistic).
    estimand
        What the back-transformed estimate is called in reports (``"c-statistic"``).
    performance
        True for measures of a risk model's performance, pooled as the prediction-model
        literature does (REML with Knapp-Hartung, prediction interval with t(k - 2):
        Debray et al. 2017, BMJ 356:i6460; metamisc's ``valmeta``).
    """

    name: str
    description: str
    measures: tuple[str, ...] = ()
    null_value: float | None = 0.0
    scale: str = "identity"
    estimand: str = "estimate"
    performance: bool = False

    @property
    def default_measure(self) -> str | None:
        """The measure used when the spec names none."""
        return self.measures[0] if self.measures else None


_ESTIMATORS = (
    EstimatorInfo("two_by_two", "log OR, log RR or RD of a 2x2 table", ("OR", "RR", "RD"),
                  null_value=1.0, scale="log", estimand="OR"),
    EstimatorInfo("two_group", "difference of group means (MD, SMD, ROM)", ("MD", "SMD", "ROM"),
                  estimand="MD"),
    EstimatorInfo("logistic", "adjusted log odds ratio (logistic regression)",
                  null_value=1.0, scale="log", estimand="OR"),
    EstimatorInfo("linear", "adjusted mean difference (linear regression)", estimand="MD"),
    EstimatorInfo("cox", "adjusted log hazard ratio (Cox regression)", null_value=1.0,
                  scale="log", estimand="HR"),
    EstimatorInfo("auc", "area under the ROC curve of a risk score (DeLong variance)",
                  null_value=0.5, scale="logit", estimand="c-statistic", performance=True),
    EstimatorInfo("calibration_slope", "calibration slope of a risk score", null_value=1.0,
                  estimand="calibration slope", performance=True),
    EstimatorInfo("calibration_in_the_large", "calibration-in-the-large of a risk score",
                  null_value=0.0, estimand="calibration-in-the-large", performance=True),
    EstimatorInfo("oe_ratio", "log observed/expected ratio of a risk score", null_value=1.0,
                  scale="log", estimand="O:E", performance=True),
    EstimatorInfo("brier", "Brier score of a risk score", null_value=None,
                  estimand="Brier score", performance=True),
)
ESTIMATOR_INFO: Mapping[str, EstimatorInfo] = MappingProxyType(
    {e.name: e for e in _ESTIMATORS})
#: The estimator names of the analysis spec.
ESTIMATORS: tuple[str, ...] = tuple(ESTIMATOR_INFO)
#: Estimator -> allowed ``measure`` values (only estimators that have a measure key).
ESTIMATOR_MEASURES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {e.name: e.measures for e in _ESTIMATORS if e.measures})
#: Estimators of a risk model's performance (pooled as metamisc's ``valmeta`` pools).
PERFORMANCE_ESTIMATORS: tuple[str, ...] = tuple(e.name for e in _ESTIMATORS if e.performance)


@dataclass(frozen=True)
class AnalysisScale:
    """The null and the scales of one analysis (an estimator with its measure).

    Attributes
    ----------
    estimator
        The spec's estimator (``None`` for published data pooled by measure).
    estimand
        What the back-transformed estimate is (``"c-statistic"``, ``"O:E"``, ``"OR"``).
    scale
        The scale it is pooled on (``identity``, ``log``, ``logit``).
    null_value
        The null on the scale results are read on (``None``: no null, no p-value).
    site_scale
        The scale the sites send ``yi`` on (an AUC may be sent raw and pooled on logit).
    performance
        A risk model's performance measure (see :class:`EstimatorInfo`).
    """

    estimator: str | None
    estimand: str
    scale: str
    null_value: float | None
    site_scale: str
    performance: bool = False

    @property
    def null_on_scale(self) -> float | None:
        """The null on the pooling scale, or ``None``.

        ``g(null_value)``: 0 for an OR, an O:E of 1 or a c-statistic of 0.5; 1 for a
        calibration slope.
        """
        return None if self.null_value is None else to_scale(self.null_value, self.scale)

    @property
    def transformed(self) -> bool:
        """Whether results are back-transformed for display (scale is not identity)."""
        return self.scale != "identity"


def to_scale(value: float, scale: str) -> float:
    """``g(value)``: a value on the reading scale moved to the pooling ``scale``."""
    if scale == "log":
        return math.log(value) if value > 0 else -math.inf
    if scale == "logit":
        if not 0 < value < 1:
            return -math.inf if value <= 0 else math.inf
        return math.log(value / (1.0 - value))
    return float(value)


def from_scale(value: float, scale: str) -> float:
    """``g⁻¹(value)``: a value on the pooling ``scale`` back-transformed for reading."""
    if scale == "log":
        return math.exp(value) if value < 700 else math.inf
    if scale == "logit":
        if value >= 0:
            return 1.0 / (1.0 + math.exp(-value))
        e = math.exp(value)
        return e / (1.0 + e)
    return float(value)


def analysis_scale(estimator: str | None, measure: str | None = None,
                   site_scale: str | None = None) -> AnalysisScale:
    """The null and scales of an analysis, from its estimator, measure and sent scale.

    Parameters
    ----------
    estimator
        The spec's estimator; an unknown or missing one is read by its ``measure`` (a
        ratio measure of escalc on the log scale with null 1, anything else identity with
        null 0), so published data and older documents get a sensible default.
    measure
        The spec's ``measure`` (``OR``, ``RR``, ``RD``, ``MD``, ...), when it has one.
    site_scale
        The spec's ``scale`` key of an AUC (``raw`` or ``logit``): the scale the sites
        send; the AUC is pooled on the logit scale either way.

    Examples
    --------
    >>> s = analysis_scale("auc", site_scale="raw")
    >>> s.estimand, s.scale, s.null_value, s.null_on_scale, s.site_scale
    ('c-statistic', 'logit', 0.5, 0.0, 'identity')
    >>> analysis_scale("two_by_two", "RD").null_value
    0.0
    >>> analysis_scale("brier").null_on_scale is None
    True
    """
    info = ESTIMATOR_INFO.get(estimator or "")
    m = (measure or "").upper() or (info.default_measure if info is not None else None)
    if info is not None and not info.measures:
        sent = info.scale
        if info.name == "auc":
            sent = "logit" if str(site_scale or "raw").lower() == "logit" else "identity"
        return AnalysisScale(info.name, info.estimand, info.scale, info.null_value, sent,
                             info.performance)
    if m is not None and (m in RATIO_MEASURES or m in ("LOGOR", "LOGHR", "LOGRR")):
        name = m[3:] if m.startswith("LOG") else m
        return AnalysisScale(estimator, name, "log", 1.0, "log")
    return AnalysisScale(estimator, m or "estimate", "identity", 0.0, "identity")


# ---------------------------------------------------------------------------------------
# priors on tau of Bayesian pooling
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PriorInfo:
    """A built-in prior on the between-site standard deviation tau."""

    name: str
    description: str


_PRIORS = (
    PriorInfo("half_normal", "half-normal prior on tau with the given scale (sd of the "
              "underlying normal)"),
    PriorInfo("half_cauchy", "half-Cauchy prior on tau with the given scale (Gelman 2006, "
              "Bayesian Anal. 1(3))"),
)
PRIOR_INFO: Mapping[str, PriorInfo] = MappingProxyType({p.name: p for p in _PRIORS})
#: The built-in priors (``fedsynth.meta.bayes.register_prior`` may add more at run time).
PRIORS: tuple[str, ...] = tuple(PRIOR_INFO)
DEFAULT_PRIOR = "half_normal"
DEFAULT_PRIOR_SCALE = 0.5


# ---------------------------------------------------------------------------------------
# checks with messages that name the option and the value
# ---------------------------------------------------------------------------------------

def check_method(value: object, option: str = "method") -> str:
    """``value`` as a method name (case-insensitive), or :class:`InputError` naming it."""
    name = str(value).upper()
    if name not in METHOD_INFO:
        raise InputError(f"{option}: {value!r} is not one of {', '.join(METHODS)}")
    return name


def check_rma_test(value: object, option: str = "test") -> str:
    """``value`` as a test of the rma fits (:data:`RMA_TESTS`), or :class:`InputError`."""
    name = str(value).lower()
    if name not in RMA_TEST_INFO:
        raise InputError(f"{option}: {value!r} is not one of {', '.join(RMA_TESTS)}")
    return name


def check_test(value: object, option: str = "test") -> str:
    """``value`` as a test name (case-insensitive), or :class:`InputError` naming it."""
    name = str(value).lower()
    if name not in TEST_INFO:
        raise InputError(f"{option}: {value!r} is not one of {', '.join(TESTS)}")
    return name


def check_measure(value: object, option: str = "measure") -> str:
    """``value`` as an escalc measure (case-insensitive), or :class:`InputError`."""
    name = str(value).upper()
    if name not in MEASURE_INFO:
        raise InputError(f"{option}: unknown measure {value!r} (known: "
                         f"{', '.join(ESCALC_MEASURES)})")
    return name


def check_level(value: object, option: str = "level") -> float:
    """A confidence level as a percentage in (0, 100).

    The Python API takes fractions (``0.95``); a value above 1 is read as a percentage
    (``95``), as metafor's ``level`` argument and the command line's ``--level`` do.
    """
    try:
        level = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{option}: {value!r} is not a number (use e.g. 0.95)") from None
    if not (level == level and 0 < level < 100):
        raise InputError(f"{option}: {value!r} must be a fraction in (0, 1) such as 0.95 "
                         "(or a percentage below 100 such as 95)")
    return level * 100.0 if level < 1 else level
