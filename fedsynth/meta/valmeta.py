"""Meta-analysis of prediction-model performance: metamisc's ``ccalc``, ``oecalc``, ``valmeta``.

A validation study of a risk model reports its discrimination (the c-statistic, i.e. the
area under the ROC curve) and its calibration (the total observed : expected ratio, O:E)
in many forms: with a standard error, with a confidence interval, or only with the numbers
of patients and events. Debray et al. (2017) give the formulas that restore an estimate
and its standard error from each form, and the scales on which the estimates are close to
normal across studies (Snell et al. 2018): the logit of the c-statistic and the log of
O:E. The R package metamisc implements them in ``ccalc``, ``oecalc`` and ``valmeta``; this
module reproduces metamisc 0.4.0's conventions (argument names, defaults, order of
preference, scales, the ``t(k - 2)`` prediction interval) and pools with fedsynth's own
engine (:func:`fedsynth.meta.meta_analysis`, metafor's ``rma``).

* :func:`ccalc` -- the (transformed) c-statistic of each study and its standard error.
  The estimate comes from ``cstat``, else from ``sd_LP`` (White et al. 2015); the
  variance from, in this order, ``cstat_se``, the confidence interval
  ``[cstat_cilb, cstat_ciub]`` at level ``cstat_cilv`` (on the transformed scale), or the
  Hanley & McNeil (1982) formula with Newcombe's (2006) method 4 (or 2) from ``N`` and
  ``O`` (``O = Po N``, ``N = O / Po`` when missing).
* :func:`oecalc` -- the (transformed) total O:E ratio and its standard error from the first
  usable of twelve combinations, in metamisc's order: (OE, SE), (OE, CI), (O, E, N),
  (O, Pe, N), (E, Po, N), (Po, Pe, N), (EO, SE(EO)), (O, E, Po), (O, E, Pe), (O, E),
  (Po, Pe, SE(Po)), (Po, Pe). ``var(O/E) = O (1 - O/N) / E²`` (O binomial, E fixed), or
  ``O / E²`` without N (O Poisson); 0.5 is added to O, E and N when E = 0.
* :func:`valmeta` -- pools the usable studies on the logit (c) or log (O:E) scale, by
  default with REML and the Knapp-Hartung (HKSJ) test, adds the prediction interval
  ``mu ± t(k-2) sqrt(tau² + se²)`` (Riley et al. 2011) and back-transforms. A study
  without an estimate and a standard error is left out, with a note saying why.

References
----------
Debray TPA, Damen JAAG, Snell KIE, Ensor J, Hooft L, Reitsma JB, Riley RD, Moons KGM.
A guide to systematic review and meta-analysis of prediction model performance. BMJ
2017;356:i6460.

Debray TPA, Damen JAAG, Riley RD, Snell KIE, Reitsma JB, Hooft L, Collins GS, Moons KGM.
A framework for meta-analysis of prediction model studies with binary and time-to-event
outcomes. Stat Methods Med Res 2019;28(9):2768-2786.

Snell KIE, Ensor J, Debray TPA, Moons KGM, Riley RD. Meta-analysis of prediction model
performance across multiple studies: which scale helps ensure between-study normality for
the C-statistic and calibration measures? Stat Methods Med Res 2018;27(11):3505-3522.

Hanley JA, McNeil BJ. The meaning and use of the area under a receiver operating
characteristic (ROC) curve. Radiology 1982;143(1):29-36.

Newcombe RG. Confidence intervals for an effect size measure based on the Mann-Whitney
statistic. Part 2: asymptotic methods and evaluation. Stat Med 2006;25(4):559-573.

White IR, Rapsomaniki E. Covariate-adjusted measures of discrimination for survival data.
Biom J 2015;57(4):592-613.

Riley RD, Higgins JPT, Deeks JJ. Interpretation of random effects meta-analyses. BMJ
2011;342:d549.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from fedsynth.errors import InputError, show_value
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import meta_analysis

__all__ = [
    "ccalc",
    "oecalc",
    "valmeta",
    "StudyPerformance",
    "PerformanceData",
    "ValmetaResult",
    "MEASURES",
    "MODELS",
    "CSTAT_SE_SOURCES",
    "OE_SOURCES",
]

#: The performance measures :func:`valmeta` pools (metamisc's ``measure``).
MEASURES = ("cstat", "OE")

#: Meta-analysis models per measure (metamisc's ``pars$model.cstat`` / ``pars$model.oe``),
#: default first, and the scale each pools on.
MODELS: dict[str, dict[str, str]] = {
    "cstat": {"normal/logit": "logit", "normal/identity": "identity"},
    "OE": {"normal/log": "log", "normal/identity": "identity"},
}

#: Null value of each measure on its original scale (no discrimination; perfect
#: calibration-in-the-large).
NULL_VALUES = {"cstat": 0.5, "OE": 1.0}

#: What metamisc names each restoration of the c-statistic's standard error, in its order
#: of preference (``{m}`` is the Newcombe method).
CSTAT_SE_SOURCES = ("Standard Error", "Confidence Interval", "Newcombe (Method {m})",
                    "Newcombe (Method {m})")

#: The combinations :func:`oecalc` derives O:E and its variance from, in metamisc's order
#: of preference (also the ``theta_source`` / ``theta_se_source`` strings).
OE_SOURCES = ("OE and SE(OE)", "OE and CI(OE)", "O, E and N", "O, Pe and N", "E, Po and N",
              "Po, Pe and N", "EO and SE(EO)", "O, E and Po", "O, E and Pe", "O and E",
              "Po, Pe and SE(Po)", "Po and Pe")

_CSTAT_ARGS = ("cstat", "cstat_se", "cstat_cilb", "cstat_ciub", "cstat_cilv", "sd_LP", "N",
               "O", "Po")
_OE_ARGS = ("OE", "OE_se", "OE_cilb", "OE_ciub", "OE_cilv", "EO", "EO_se", "N", "O", "E",
            "Po", "Po_se", "Pe")


# ---------------------------------------------------------------------------------------
# scales: g, its derivative (delta method) and its inverse
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scale:
    name: str
    g: Callable[[np.ndarray], np.ndarray]
    dg: Callable[[np.ndarray], np.ndarray]
    inv: Callable[[np.ndarray], np.ndarray]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


_SCALES = {
    "identity": _Scale("identity", lambda x: x, np.ones_like, lambda x: x),
    "logit": _Scale("logit", _logit, lambda x: 1.0 / (x * (1.0 - x)), special.expit),
    "log": _Scale("log", np.log, lambda x: 1.0 / x, np.exp),
    "asin(sqrt)": _Scale("asin(sqrt)", lambda x: np.arcsin(np.sqrt(x)),
                         lambda x: 0.5 / np.sqrt(x * (1.0 - x)), lambda x: np.sin(x) ** 2),
}

#: metamisc's ``g`` strings (and short names) accepted by ccalc and oecalc.
_CSTAT_G = {None: "identity", "identity": "identity", "logit": "logit",
            "log(cstat/(1-cstat))": "logit", "asin(sqrt(cstat))": "asin(sqrt)",
            "asin(sqrt)": "asin(sqrt)"}
_OE_G = {None: "identity", "identity": "identity", "log": "log", "log(OE)": "log"}


def _scale_of(g: str | None, table: Mapping[str | None, str], what: str) -> _Scale:
    key = g.replace(" ", "") if isinstance(g, str) else g
    if key not in table:
        allowed = ", ".join(repr(k) for k in table if k is not None)
        raise InputError(f"g: {g!r} is not a transformation {what} supports (None, {allowed})")
    return _SCALES[table[key]]


# ---------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyPerformance:
    """One validation study as :func:`ccalc` / :func:`oecalc` restored it.

    Attributes
    ----------
    label : str
        Study label (made unique as R's ``make.unique`` does).
    theta, theta_se : float
        Estimate and standard error on the analysis scale (NaN where they cannot be
        derived; ``theta`` may be infinite, e.g. the log of O:E = 0).
    theta_cilb, theta_ciub : float
        Confidence interval on the analysis scale at the requested level: the reported
        bounds (transformed) when reported at that level, else ``theta ± z theta_se``.
    theta_source, theta_se_source : str or None
        Where the estimate and its standard error came from, in metamisc's words
        (``"c-statistic"``, ``"std.dev(LP)"``; ``"Standard Error"``, ``"Confidence
        Interval"``, ``"Newcombe (Method 4)"``; for O:E one of :data:`OE_SOURCES`).
    used : bool
        Whether the study can be pooled (finite estimate, finite positive standard error).
    note : str or None
        Why the study cannot be pooled (None when ``used``).
    O, E, N : float or None
        Observed and expected events and patients as restored by :func:`oecalc`
        (``O = Po N``, ``E = Pe N``, ``N = O / Po`` or ``E / Pe``); None for the
        c-statistic.
    corrected : bool
        Whether the chosen O:E came from counts with E = 0, to which ``add`` (0.5) was
        added (O, E and N).
    """

    label: str
    theta: float
    theta_se: float
    theta_cilb: float
    theta_ciub: float
    theta_source: str | None
    theta_se_source: str | None
    used: bool
    note: str | None = None
    O: float | None = None  # noqa: E741 -- metamisc's name for observed events
    E: float | None = None
    N: float | None = None
    corrected: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (NaN and infinities become ``None``)."""
        return {"label": self.label, "theta": finite_or_none(self.theta),
                "theta_se": finite_or_none(self.theta_se),
                "theta_cilb": finite_or_none(self.theta_cilb),
                "theta_ciub": finite_or_none(self.theta_ciub), "theta_source": self.theta_source,
                "theta_se_source": self.theta_se_source, "used": self.used,
                "note": self.note, "O": finite_or_none(self.O), "E": finite_or_none(self.E),
                "N": finite_or_none(self.N), "corrected": self.corrected}


@dataclass(frozen=True)
class PerformanceData:
    """The studies of a :func:`ccalc` or :func:`oecalc` call (metamisc's ``mm_perf``).

    Attributes
    ----------
    measure : str
        ``"cstat"`` or ``"OE"``.
    scale : str
        Scale of ``theta``: ``"logit"``, ``"log"``, ``"identity"`` or ``"asin(sqrt)"``.
    level : float
        Level (a proportion) of the per-study confidence intervals.
    studies : tuple of StudyPerformance
        In input order.
    """

    measure: str
    scale: str
    level: float
    studies: tuple[StudyPerformance, ...]

    def __len__(self) -> int:
        return len(self.studies)

    def __iter__(self) -> Iterator[StudyPerformance]:
        return iter(self.studies)

    def __getitem__(self, i: int) -> StudyPerformance:
        return self.studies[i]

    @property
    def labels(self) -> tuple[str, ...]:
        """Study labels, in input order."""
        return tuple(s.label for s in self.studies)

    @property
    def theta(self) -> np.ndarray:
        """Estimates on the analysis scale (NaN where unknown)."""
        return np.array([s.theta for s in self.studies], dtype=float)

    @property
    def theta_se(self) -> np.ndarray:
        """Standard errors on the analysis scale (NaN where unknown)."""
        return np.array([s.theta_se for s in self.studies], dtype=float)

    @property
    def theta_se_source(self) -> tuple[str | None, ...]:
        """Source of each standard error (None where unknown)."""
        return tuple(s.theta_se_source for s in self.studies)

    @property
    def used(self) -> np.ndarray:
        """Which studies can be pooled."""
        return np.array([s.used for s in self.studies], dtype=bool)

    @property
    def notes(self) -> tuple[str, ...]:
        """One sentence per study that cannot be pooled, with its row and label."""
        return tuple(f"row {i + 1} (study {s.label!r}): {s.note}; left out"
                     for i, s in enumerate(self.studies) if not s.used)

    def to_dicts(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per study (see :meth:`StudyPerformance.to_dict`)."""
        return [s.to_dict() for s in self.studies]

    def to_frame(self):
        """A :class:`pandas.DataFrame` with metamisc's columns, indexed by study label.

        A :class:`pandas.DataFrame` with metamisc's columns (``theta``, ``theta.se``,
        ``theta.cilb``, ``theta.ciub``, ``theta.source``, ``theta.se.source``; ``O``,
        ``E``, ``N`` for O:E) and ``used``, indexed by study label.
        """
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        rows = {"theta": self.theta, "theta.se": self.theta_se,
                "theta.cilb": [s.theta_cilb for s in self.studies],
                "theta.ciub": [s.theta_ciub for s in self.studies],
                "theta.source": [s.theta_source for s in self.studies],
                "theta.se.source": list(self.theta_se_source), "used": self.used}
        if self.measure == "OE":
            for key in ("O", "E", "N"):
                rows[key] = [np.nan if getattr(s, key) is None else getattr(s, key)
                             for s in self.studies]
        return pd.DataFrame(rows, index=pd.Index(self.labels, name="study"))


@dataclass(frozen=True)
class ValmetaResult:
    """A meta-analysis of prediction-model performance (metamisc's ``valmeta`` object).

    Attributes
    ----------
    measure, model, scale : str
        ``"cstat"`` or ``"OE"``; the meta-analysis model (``"normal/logit"``,
        ``"normal/log"``, ``"normal/identity"``); the pooling scale (``"logit"``,
        ``"log"``, ``"identity"``).
    method, test : str
        tau² estimator (``FE`` for the fixed-effect model) and inference (``knha`` or
        ``z``; FE always uses ``z``, as valmeta does).
    level : float
        Level of the intervals, a proportion (0.95).
    k : int
        Number of studies pooled (metamisc's ``numstudies``).
    estimate, ci_lb, ci_ub, pi_lb, pi_ub : float
        Summary performance, its confidence interval and the prediction interval for a
        new study, back-transformed to the original scale (the c-statistic or O:E). The
        prediction interval is NaN for FE and when k < 3 (t with k - 2 df).
    tau2 : float
        Between-study variance on the pooling scale.
    mu, mu_se, mu_ci_lb, mu_ci_ub, mu_pi_lb, mu_pi_ub : float
        The same on the pooling scale (``mu_se`` is the Knapp-Hartung standard error under
        ``test="knha"``).
    null_value : float
        No discrimination (c = 0.5) or perfect calibration-in-the-large (O:E = 1), on the
        original scale.
    stat, pval : float
        Test of ``null_value`` on the pooling scale: t with k - 1 df under Knapp-Hartung,
        else z.
    I2, Q, Q_df, Q_pval : float
        Heterogeneity of the pooled studies on the pooling scale (metafor's).
    data : PerformanceData
        Every study as restored by :func:`ccalc` / :func:`oecalc`, in input order.
    notes : tuple of str
        Studies left out and why; what the model could not report.
    fit : object
        The pooled fit of :func:`fedsynth.meta.meta_analysis` on the pooling scale.
    """

    measure: str
    model: str
    scale: str
    method: str
    test: str
    level: float
    k: int
    estimate: float
    ci_lb: float
    ci_ub: float
    pi_lb: float
    pi_ub: float
    tau2: float
    mu: float
    mu_se: float
    mu_ci_lb: float
    mu_ci_ub: float
    mu_pi_lb: float
    mu_pi_ub: float
    null_value: float
    stat: float
    pval: float
    I2: float
    Q: float
    Q_df: int
    Q_pval: float
    data: PerformanceData
    notes: tuple[str, ...]
    fit: Any = field(repr=False, compare=False)

    @property
    def tau(self) -> float:
        """Between-study standard deviation on the pooling scale."""
        return float(np.sqrt(self.tau2))

    @property
    def ci(self) -> tuple[float, float]:
        """Confidence interval of the summary performance (original scale)."""
        return (self.ci_lb, self.ci_ub)

    @property
    def pi(self) -> tuple[float, float] | None:
        """Prediction interval for a new study (original scale); None when not defined."""
        if np.isnan(self.pi_lb):
            return None
        return (self.pi_lb, self.pi_ub)

    @property
    def theta(self) -> np.ndarray:
        """Per-study estimates on the pooling scale, input order (NaN where unknown)."""
        return self.data.theta

    @property
    def theta_se(self) -> np.ndarray:
        """Per-study standard errors on the pooling scale (NaN where unknown)."""
        return self.data.theta_se

    @property
    def theta_se_source(self) -> tuple[str | None, ...]:
        """Per-study source of the standard error (metamisc's words; None where unknown)."""
        return self.data.theta_se_source

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``fedsynth valmeta``.

        ``estimate, ci_lb, ci_ub, pi_lb, pi_ub`` on the original scale, ``k``, ``tau2`` on
        the pooling scale, ``studies`` (input order; ``theta, theta_se, theta_se_source``
        on the pooling scale, all ``null`` for a study that is left out), then the model,
        the pooled values on the pooling scale, ``labels`` and ``notes``.
        """
        studies = [{"theta": finite_or_none(s.theta), "theta_se": finite_or_none(s.theta_se),
                    "theta_se_source": s.theta_se_source} if s.used else
                   {"theta": None, "theta_se": None, "theta_se_source": None}
                   for s in self.data.studies]
        return {
            "estimate": finite_or_none(self.estimate), "ci_lb": finite_or_none(self.ci_lb),
            "ci_ub": finite_or_none(self.ci_ub), "pi_lb": finite_or_none(self.pi_lb),
            "pi_ub": finite_or_none(self.pi_ub), "k": int(self.k),
            "tau2": finite_or_none(self.tau2),
            "studies": studies,
            "measure": self.measure, "model": self.model, "scale": self.scale,
            "null_value": self.null_value, "method": self.method, "test": self.test,
            "level": self.level,
            "pooled": {"estimate": finite_or_none(self.mu), "se": finite_or_none(self.mu_se),
                       "ci_lb": finite_or_none(self.mu_ci_lb),
                       "ci_ub": finite_or_none(self.mu_ci_ub),
                       "pi_lb": finite_or_none(self.mu_pi_lb),
                       "pi_ub": finite_or_none(self.mu_pi_ub),
                       "tau2": finite_or_none(self.tau2), "tau": finite_or_none(self.tau),
                       "stat": finite_or_none(self.stat), "pval": finite_or_none(self.pval),
                       "I2": finite_or_none(self.I2), "Q": finite_or_none(self.Q),
                       "Q_df": int(self.Q_df), "Q_pval": finite_or_none(self.Q_pval)},
            "labels": list(self.data.labels),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A readable report in the style of ``fedsynth meta`` and metamisc's print."""
        return _format_summary(self)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------

class _Inputs:
    """Arguments as float vectors of one length k, with labels, checked for range."""

    def __init__(self, values: Mapping[str, Any], slab: Any, data: Any,
                 field_names: Mapping[str, str] | None) -> None:
        self.field_names = dict(field_names or {})
        resolved = {name: self._resolve(name, v, data) for name, v in values.items()}
        label_values = self._resolve("slab", slab, data) if slab is not None else None
        lengths = {name: np.size(v) for name, v in resolved.items()
                   if v is not None and np.ndim(v) > 0}
        if label_values is not None:
            lengths["slab"] = len(label_values)
        if not lengths:
            if any(v is not None for v in resolved.values()):
                raise InputError("no per-study vector given (only constants); give e.g. "
                                 "cstat or O and E as one value per study")
            raise InputError("no data given: pass the per-study values (e.g. cstat=..., "
                             "or O=..., E=..., N=...)")
        k = next(iter(lengths.values()))
        for name, n in lengths.items():
            if n != k:
                first = next(iter(lengths))
                raise InputError(f"{self.name(name)}: {n} values, but {self.name(first)} has "
                                 f"{k}; every argument needs one value per study")
        if k < 1:
            raise InputError("no studies given (k = 0)")
        self.k = k
        self.labels = _make_unique([str(x) for x in label_values] if label_values is not None
                                   else [str(i + 1) for i in range(k)])
        self.values = {name: self._vector(name, v) for name, v in resolved.items()}

    def name(self, arg: str) -> str:
        return self.field_names.get(arg, arg)

    def _resolve(self, name: str, value: Any, data: Any) -> Any:
        if isinstance(value, str):
            if data is None:
                raise InputError(f"{self.name(name)}: {value!r} names a column, but no data "
                                 "was given (pass data=...)")
            try:
                return list(data[value])
            except (KeyError, IndexError, TypeError):
                raise InputError(
                    f"{self.name(name)}: column {value!r} not found in data") from None
        if value is not None and np.ndim(value) > 1:
            raise InputError(f"{self.name(name)}: expected one value per study (1-D), got "
                             f"{np.ndim(value)} dimensions")
        return value

    def _vector(self, name: str, value: Any) -> np.ndarray:
        if value is None:
            return np.full(self.k, np.nan)
        items = np.broadcast_to(np.asarray(value, dtype=object), (self.k,))
        flags = np.array([isinstance(x, (bool, np.bool_)) for x in items], dtype=bool)
        if flags.any():
            i = int(np.flatnonzero(flags)[0])
            self.fail(name, i, items[i], "is a truth value, not a number")
        try:
            return items.astype(float)      # None becomes NaN
        except (TypeError, ValueError):
            pass
        for i, item in enumerate(items):    # find the offending cell for the message
            try:
                float(np.nan if item is None else item)
            except (TypeError, ValueError):
                self.fail(name, i, item, "is not a number")
        raise AssertionError("unreachable")  # pragma: no cover

    def fail(self, name: str, i: int, value: Any, problem: str) -> None:
        shown = show_value(value)
        raise InputError(f"{self.name(name)}: row {i + 1} (study {self.labels[i]!r}) has "
                         f"value {shown}, which {problem}")

    def get(self, name: str) -> np.ndarray:
        return self.values[name]

    def check(self, name: str, ok: Callable[[np.ndarray], np.ndarray], problem: str) -> None:
        """Raise for the first present value that fails ``ok``."""
        v = self.values[name]
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(v) & ~ok(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.fail(name, i, v[i], problem)


def _make_unique(labels: Sequence[str]) -> list[str]:
    """Unique labels, as R's ``make.unique``.

    R's ``make.unique``: the second and later copies of a label get ``.1``, ``.2``, ...
    (skipping names already in use), as metamisc labels its studies.
    """
    seen = set(labels)
    counters: dict[str, int] = {}
    first: set[str] = set()
    out = []
    for label in labels:
        if label not in first:
            first.add(label)
            out.append(label)
            continue
        n = counters.get(label, 1)
        while f"{label}.{n}" in seen:
            n += 1
        new = f"{label}.{n}"
        seen.add(new)
        counters[label] = n + 1
        out.append(new)
    return out


def _level(level: float) -> float:
    """A proportion from 0.95 or 95 (the engine's convention)."""
    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise InputError(f"level: {level!r} is not a number (use e.g. 0.95)") from None
    if not np.isfinite(lv) or not 0 < lv < 100 or lv == 1:
        raise InputError(f"level: {level!r} must be a proportion (0.95) or a percentage (95)")
    return lv / 100.0 if lv > 1 else lv


def _check_levels(inp: _Inputs, name: str, lb: str, ub: str) -> None:
    """Check a CI level.

    A CI level is a proportion strictly inside (0, 1) and must be known where a
    confidence interval is given.
    """
    inp.check(name, lambda v: (v > 0) & (v < 1),
              "must be a proportion strictly between 0 and 1 (e.g. 0.95)")
    has_ci = ~np.isnan(inp.get(lb)) & ~np.isnan(inp.get(ub))
    missing = has_ci & np.isnan(inp.get(name))
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise InputError(f"{inp.name(name)}: row {i + 1} (study {inp.labels[i]!r}) has a "
                         "confidence interval but no level; give its level (e.g. 0.95)")
    lo, hi = inp.get(lb), inp.get(ub)
    with np.errstate(invalid="ignore"):
        reversed_ = lo > hi
    if reversed_.any():
        i = int(np.flatnonzero(reversed_)[0])
        raise InputError(f"{inp.name(lb)}, {inp.name(ub)}: row {i + 1} (study "
                         f"{inp.labels[i]!r}) has lower bound {show_value(lo[i])} above upper "
                         f"bound {show_value(hi[i])}")


def _check_counts(inp: _Inputs, with_e: bool) -> None:
    inp.check("N", lambda v: v > 0, "must be a number of patients > 0")
    inp.check("O", lambda v: v >= 0, "must be a number of events >= 0")
    inp.check("Po", lambda v: (v >= 0) & (v <= 1), "must be a probability between 0 and 1")
    n, o = inp.get("N"), inp.get("O")
    with np.errstate(invalid="ignore"):
        over = o > n
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise InputError(f"{inp.name('O')}, {inp.name('N')}: row {i + 1} (study "
                         f"{inp.labels[i]!r}) has {show_value(o[i])} events among "
                         f"{show_value(n[i])} patients")
    if with_e:
        inp.check("E", lambda v: v >= 0, "must be a number of expected events >= 0")
        inp.check("Pe", lambda v: (v >= 0) & (v <= 1), "must be a probability between 0 and 1")
        e = inp.get("E")
        with np.errstate(invalid="ignore"):
            over = e > n
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise InputError(f"{inp.name('E')}, {inp.name('N')}: row {i + 1} (study "
                             f"{inp.labels[i]!r}) expects {show_value(e[i])} events among "
                             f"{show_value(n[i])} patients")


def _first_available(m: np.ndarray) -> np.ndarray:
    """Index of the first column that is not NaN in each row, 0 if none.

    Index of the first column that is not NaN in each row, 0 if none (metamisc's
    ``which.min(is.na(row))``).
    """
    return np.argmax(~np.isnan(m), axis=1)


def _pick(m: np.ndarray, sel: np.ndarray) -> np.ndarray:
    return m[np.arange(m.shape[0]), sel]


# ---------------------------------------------------------------------------------------
# the c-statistic
# ---------------------------------------------------------------------------------------

def _c_from_sd_lp(sd_lp: np.ndarray) -> np.ndarray:
    """The c-statistic implied by a normal linear predictor in a logistic model.

    The c-statistic implied by a normal linear predictor with standard deviation
    ``sd_lp`` in a logistic model (White & Rapsomaniki 2015):
    ``c = 2 ∫_0^∞ expit(√2 σ x) φ(x) dx``, vectorised over studies.
    """
    out = np.full(sd_lp.shape, np.nan)
    present = ~np.isnan(sd_lp)
    if not present.any():
        return out
    # lazy: scipy.integrate adds about 1 s of import time, needed only for sd(LP)
    from scipy.integrate import quad_vec

    s = sd_lp[present]
    root2 = np.sqrt(2.0)

    def integrand(x: float) -> np.ndarray:
        return 2.0 * special.expit(root2 * s * x) * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)

    values, _ = quad_vec(integrand, 0.0, np.inf, epsabs=0.0, epsrel=1e-13)
    out[present] = values
    return out


def _hanley_var(c: np.ndarray, n_subjects: np.ndarray, n_events: np.ndarray,
                method: int) -> np.ndarray:
    """Variance of the c-statistic by Hanley & McNeil (1982).

    Variance of the c-statistic by Hanley & McNeil (1982) with Newcombe's (2006)
    method 2 (``m* = m - 1, n* = n - 1``) or 4 (``m* = n* = N/2 - 1``).
    """
    n = n_events
    m = n_subjects - n_events
    if method == 2:
        mstar, nstar = m - 1.0, n - 1.0
    else:
        mstar = nstar = n_subjects / 2.0 - 1.0
    return (c * (1.0 - c) * (1.0 + nstar * (1.0 - c) / (2.0 - c) + mstar * c / (1.0 + c))
            / (m * n))


def ccalc(cstat: Any = None, cstat_se: Any = None, cstat_cilb: Any = None,
          cstat_ciub: Any = None, cstat_cilv: Any = 0.95, sd_LP: Any = None, N: Any = None,
          O: Any = None, Po: Any = None, *, data: Any = None,  # noqa: E741 metamisc's O
          slab: Any = None,
          g: str | None = None, level: float = 0.95, approx_se_method: int = 4,
          field_names: Mapping[str, str] | None = None) -> PerformanceData:
    """The (transformed) c-statistic of each study and its standard error.

    The (transformed) c-statistic of each study and its standard error (metamisc's
    ``ccalc``; Debray et al. 2017, BMJ 356:i6460, appendix).

    The estimate is ``g(cstat)``, else ``g(c)`` with ``c`` implied by ``sd_LP``. Its
    variance comes from the first available of, in this order: the standard error
    ``cstat_se`` (delta method), the confidence interval on the ``g`` scale,
    ``((g(ub) - g(lb)) / (2 z_{(1 - cstat_cilv)/2}))²``, Hanley & McNeil's formula with
    Newcombe's method ``approx_se_method`` from ``N`` patients and ``O`` events (``O = Po
    N`` and ``N = O / Po`` when missing), then the same from the c of ``sd_LP``.

    Parameters
    ----------
    cstat, cstat_se, cstat_cilb, cstat_ciub : array_like or str, optional
        c-statistics, their standard errors and confidence bounds (one value per study;
        NaN or None where not reported; a string names a column of ``data``).
    cstat_cilv : float or array_like, default 0.95
        Level of the confidence intervals (a proportion), one value or one per study.
    sd_LP : array_like, optional
        Standard deviation of the linear predictor.
    N, O, Po : array_like, optional
        Patients, events and the observed event probability.
    data : mapping or DataFrame, optional
        Where string arguments (column names) are looked up, as metamisc's ``data``.
    slab : array_like or str, optional
        Study labels (default ``"1"``, ``"2"``, ...), made unique as ``make.unique``.
    g : {None, "logit", "log(cstat/(1-cstat))", "asin(sqrt(cstat))"}
        Transformation; None (metamisc's default) keeps the c-statistic.
    level : float, default 0.95
        Level of the per-study confidence intervals (0.95 or 95).
    approx_se_method : {4, 2}
        Newcombe's method for Hanley & McNeil.
    field_names : mapping, optional
        How error messages name each argument (the command line passes its columns).

    Returns
    -------
    PerformanceData

    Raises
    ------
    fedsynth.errors.InputError
        A value out of range (c, bounds or probabilities outside [0, 1], a negative
        standard error or count, more events than patients, a bound pair in the wrong
        order, a CI without a level), arguments of different lengths, no data.
    """
    scale = _scale_of(g, _CSTAT_G, "ccalc")
    lv = _level(level)
    if approx_se_method not in (2, 4):
        raise InputError(f"approx_se_method: {approx_se_method!r} is not 2 or 4 (Newcombe's "
                         "methods for Hanley-McNeil)")
    values = dict(zip(_CSTAT_ARGS, (cstat, cstat_se, cstat_cilb, cstat_ciub, cstat_cilv,
                                    sd_LP, N, O, Po)))
    inp = _Inputs(values, slab, data, field_names)
    in01 = "must lie between 0 and 1"
    for name in ("cstat", "cstat_cilb", "cstat_ciub"):
        inp.check(name, lambda v: (v >= 0) & (v <= 1), in01)
    inp.check("cstat_se", lambda v: v >= 0, "must be a standard error >= 0")
    inp.check("sd_LP", lambda v: v >= 0, "must be a standard deviation >= 0")
    _check_levels(inp, "cstat_cilv", "cstat_cilb", "cstat_ciub")
    _check_counts(inp, with_e=False)
    return _ccalc(inp, scale, lv, approx_se_method)


def _ccalc(inp: _Inputs, scale: _Scale, level: float, method: int) -> PerformanceData:
    c, c_se = inp.get("cstat"), inp.get("cstat_se")
    lb, ub, lv = inp.get("cstat_cilb"), inp.get("cstat_ciub"), inp.get("cstat_cilv")
    po = inp.get("Po")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        o = np.where(np.isnan(inp.get("O")), po * inp.get("N"), inp.get("O"))
        n = np.where(np.isnan(inp.get("N")), o / po, inp.get("N"))
        c_lp = _c_from_sd_lp(inp.get("sd_LP"))
        est = np.column_stack([scale.g(c), scale.g(c_lp)])
        sel = _first_available(est)
        theta = _pick(est, sel)
        z_lv = special.ndtri((1.0 - lv) / 2.0)
        var = np.column_stack([
            (c_se * scale.dg(c)) ** 2,
            ((scale.g(ub) - scale.g(lb)) / (2.0 * z_lv)) ** 2,
            _hanley_var(c, n, o, method) * scale.dg(c) ** 2,
            _hanley_var(c_lp, n, o, method) * scale.dg(c_lp) ** 2,
        ])
        selv = _first_available(var)
        theta_var = _pick(var, selv)
        theta_se = np.sqrt(theta_var)
        cil, ciu = _study_ci(theta, theta_se, lb, ub, lv, level, scale)
    sources = [s.format(m=method) for s in CSTAT_SE_SOURCES]
    studies = []
    for i in range(inp.k):
        t, se = float(theta[i]), float(theta_se[i])
        note = _cstat_note(t, se, c[i], c_lp[i], scale)
        studies.append(StudyPerformance(
            label=inp.labels[i], theta=t, theta_se=se, theta_cilb=float(cil[i]),
            theta_ciub=float(ciu[i]),
            theta_source=None if np.isnan(t) else ("c-statistic", "std.dev(LP)")[sel[i]],
            theta_se_source=None if np.isnan(se) else sources[selv[i]],
            used=note is None, note=note))
    return PerformanceData("cstat", scale.name, level, tuple(studies))


def _study_ci(theta, theta_se, lb, ub, lv, level, scale):
    """Per-study CI: the reported bounds (transformed) where usable, else Wald.

    Per-study CI: the reported bounds (transformed) where reported at ``level``, else
    ``theta ± z se`` (metamisc's theta.cilb / theta.ciub).
    """
    same = lv == level
    cil = np.where(same, scale.g(lb), np.nan)
    ciu = np.where(same, scale.g(ub), np.nan)
    z = special.ndtri((1.0 + level) / 2.0)
    cil = np.where(np.isnan(cil), theta - z * theta_se, cil)
    ciu = np.where(np.isnan(ciu), theta + z * theta_se, ciu)
    return cil, ciu


def _cstat_note(theta: float, se: float, c: float, c_lp: float, scale: _Scale) -> str | None:
    """Why a study's c-statistic cannot be pooled (None if it can)."""
    if np.isnan(theta):
        return "no c-statistic (neither cstat nor sd(LP) given)"
    shown = c if not np.isnan(c) else c_lp
    if not np.isfinite(theta):
        return f"c-statistic {shown:g} has no finite value on the {scale.name} scale"
    if np.isnan(se):
        return (f"c-statistic {shown:.4g} without a standard error: give cstat.se, a "
                "confidence interval, or N and O (or Po) for Hanley-McNeil")
    if not np.isfinite(se) or se <= 0:
        return f"standard error {se:g} on the {scale.name} scale cannot be weighed"
    return None


# ---------------------------------------------------------------------------------------
# the total O:E ratio
# ---------------------------------------------------------------------------------------

def _oe_from_oen(o: np.ndarray, e: np.ndarray, n: np.ndarray | None,
                 add: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O/E and its variance from O, E and N.

    O/E and its variance ``O (1 - O/N) / E²`` (O binomial, E fixed), or ``O / E²``
    without N (O Poisson); ``add`` is added to O, E (and N) where E = 0 (the third
    array says where).
    """
    zero = (e == 0) & (add > 0)
    e = np.where(zero, e + add, e)
    o = np.where(zero, o + add, o)
    if n is None:
        return o / e, o / e ** 2, zero
    n = np.where(zero, n + add, n)
    return o / e, o * (1.0 - o / n) / e ** 2, zero


def oecalc(OE: Any = None, OE_se: Any = None, OE_cilb: Any = None, OE_ciub: Any = None,
           OE_cilv: Any = 0.95, EO: Any = None, EO_se: Any = None, N: Any = None,
           O: Any = None, E: Any = None,  # noqa: E741 -- metamisc's name for events
           Po: Any = None, Po_se: Any = None, Pe: Any = None,
           *, data: Any = None, slab: Any = None, add: float = 0.5, g: str | None = None,
           level: float = 0.95,
           field_names: Mapping[str, str] | None = None) -> PerformanceData:
    """The (transformed) total O:E ratio of each study and its standard error.

    The (transformed) total O:E ratio of each study and its standard error (metamisc's
    ``oecalc``; Debray et al. 2017, BMJ 356:i6460, appendix; Debray et al. 2019, Stat
    Methods Med Res 28:2768).

    Each study takes the first combination that gives both an estimate and a variance, in
    the order of :data:`OE_SOURCES`: (OE, OE_se), (OE, CI) with ``var = ((ub - lb) /
    (2 z_{0.5 + cilv/2}))²``, (O, E, N), (O, Pe N, N), (Po N, E, N), (Po N, Pe N, N),
    (1/EO, EO_se² / EO⁴), (O, E, O / Po), (O, E, E / Pe), (O, E) without N,
    (Po / Pe, Po_se² / Pe²); a study with no variance keeps the first estimate it has
    (``"Po and Pe"`` gives one, never a variance). A transformation ``g`` is applied to
    the estimate and, by the delta method, to the variance (metamisc 0.4.0).

    Parameters
    ----------
    OE, OE_se, OE_cilb, OE_ciub : array_like or str, optional
        Reported O:E ratios, standard errors and confidence bounds.
    OE_cilv : float or array_like, default 0.95
        Level of the confidence intervals (a proportion).
    EO, EO_se : array_like, optional
        Reported E:O ratios and their standard errors.
    N, O, E : array_like, optional
        Patients, observed and expected events.
    Po, Po_se, Pe : array_like, optional
        Observed event probability, its standard error, expected event probability.
    data, slab, level, field_names
        As :func:`ccalc`.
    add : float, default 0.5
        Added to O, E (and N) where E = 0.
    g : {None, "log", "log(OE)"}
        Transformation; None (metamisc's default) keeps the ratio.

    Returns
    -------
    PerformanceData
        ``O``, ``E``, ``N`` of each study are restored where possible (``O = Po N``,
        ``E = Pe N``, ``N = O / Po`` or ``E / Pe``).

    Raises
    ------
    fedsynth.errors.InputError
        A negative ratio, count or standard error, a probability outside [0, 1], more
        observed or expected events than patients, bounds in the wrong order, a CI
        without a level, arguments of different lengths, no data.
    """
    scale = _scale_of(g, _OE_G, "oecalc")
    lv = _level(level)
    try:
        add = float(add)
    except (TypeError, ValueError):
        raise InputError(f"add: {add!r} is not a number") from None
    if not (np.isfinite(add) and add >= 0):
        raise InputError(f"add: {add!r} must be a number >= 0")
    values = dict(zip(_OE_ARGS, (OE, OE_se, OE_cilb, OE_ciub, OE_cilv, EO, EO_se, N, O, E,
                                 Po, Po_se, Pe)))
    inp = _Inputs(values, slab, data, field_names)
    for name in ("OE", "OE_cilb", "OE_ciub", "EO"):
        inp.check(name, lambda v: v >= 0, "must be a ratio >= 0")
    for name in ("OE_se", "EO_se", "Po_se"):
        inp.check(name, lambda v: v >= 0, "must be a standard error >= 0")
    _check_levels(inp, "OE_cilv", "OE_cilb", "OE_ciub")
    _check_counts(inp, with_e=True)
    return _oecalc(inp, scale, lv, add)


def _oecalc(inp: _Inputs, scale: _Scale, level: float, add: float) -> PerformanceData:
    v = inp.values
    oe, lb, ub, lv = v["OE"], v["OE_cilb"], v["OE_ciub"], v["OE_cilv"]
    n, o, e, po, pe = v["N"], v["O"], v["E"], v["Po"], v["Pe"]
    none = np.zeros(inp.k, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        candidates = [
            (oe, v["OE_se"] ** 2, none),
            (oe, ((ub - lb) / (2.0 * special.ndtri(0.5 + lv / 2.0))) ** 2, none),
            _oe_from_oen(o, e, n, add),
            _oe_from_oen(o, pe * n, n, add),
            _oe_from_oen(po * n, e, n, add),
            _oe_from_oen(po * n, pe * n, n, add),
            (1.0 / v["EO"], v["EO_se"] ** 2 / v["EO"] ** 4, none),
            _oe_from_oen(o, e, o / po, add),
            _oe_from_oen(o, e, e / pe, add),
            _oe_from_oen(o, e, None, add),
            (po / pe, v["Po_se"] ** 2 / pe ** 2, none),
            (po / pe, np.full(inp.k, np.nan), none),
        ]
        est = np.column_stack([scale.g(x) for x, _, _ in candidates])
        se = np.column_stack([np.sqrt(scale.dg(x) ** 2 * var) for x, var, _ in candidates])
        zero = np.column_stack([z for _, _, z in candidates])
        sel = np.maximum(_first_available(est), _first_available(se))
        theta = _pick(est, sel)
        theta_se = _pick(se, sel)
        corrected = _pick(zero, sel)
        cil, ciu = _study_ci(theta, theta_se, lb, ub, lv, level, scale)
        o_r = np.where(np.isnan(o), po * n, o)
        e_r = np.where(np.isnan(e), pe * n, e)
        n_r = np.where(np.isnan(n), o_r / po, n)
        n_r = np.where(np.isnan(n_r), e_r / pe, n_r)
    studies = []
    for i in range(inp.k):
        t, s = float(theta[i]), float(theta_se[i])
        source = None if np.isnan(t) else OE_SOURCES[sel[i]]
        present = [name for name in _OE_ARGS
                   if name != "OE_cilv" and not np.isnan(v[name][i])]
        note = _oe_note(t, s, source, o_r[i], scale, present)
        studies.append(StudyPerformance(
            label=inp.labels[i], theta=t, theta_se=s, theta_cilb=float(cil[i]),
            theta_ciub=float(ciu[i]), theta_source=source,
            theta_se_source=None if np.isnan(s) else source, used=note is None, note=note,
            O=_opt(o_r[i]), E=_opt(e_r[i]), N=_opt(n_r[i]),
            corrected=bool(corrected[i]) and source is not None))
    return PerformanceData("OE", scale.name, level, tuple(studies))


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


#: The inputs behind an O:E estimate whose source names a standard error that is missing.
_ESTIMATE_INPUTS = {"OE and SE(OE)": "OE", "OE and CI(OE)": "OE", "EO and SE(EO)": "EO",
                    "Po, Pe and SE(Po)": "Po and Pe"}


def _oe_note(theta: float, se: float, source: str | None, o: float, scale: _Scale,
             present: Sequence[str]) -> str | None:
    """Why a study's O:E cannot be pooled (None if it can).

    Why a study's O:E cannot be pooled (None if it can); ``present`` names the inputs
    the study has.
    """
    if source is None:
        if not present:
            return "no O:E inputs (every cell empty)"
        return (f"{', '.join(present)} alone give no O:E estimate (it needs OE, EO, or O or "
                "Po together with E or Pe)")
    if not np.isfinite(theta):
        if o == 0 and scale.name == "log":
            return ("no observed events (O = 0): log O:E is not finite (metamisc adds 0.5 "
                    "only when E = 0)")
        return f"O:E from {source} has no finite value on the {scale.name} scale"
    if np.isnan(se):
        inputs = _ESTIMATE_INPUTS.get(source, source)
        value = float(scale.inv(np.array(theta)))
        return (f"O:E {value:.4g} (from {inputs}) without a standard error: give its SE "
                "or CI, or N with O and E (or Po and Pe), or SE(Po)")
    if not np.isfinite(se) or se <= 0:
        return f"standard error {se:g} of O:E (from {source}) cannot be weighed"
    return None


# ---------------------------------------------------------------------------------------
# the meta-analysis
# ---------------------------------------------------------------------------------------

def valmeta(measure: str = "cstat", *, cstat: Any = None, cstat_se: Any = None,
            cstat_cilb: Any = None, cstat_ciub: Any = None, cstat_cilv: Any = 0.95,
            sd_LP: Any = None, OE: Any = None, OE_se: Any = None, OE_cilb: Any = None,
            OE_ciub: Any = None, OE_cilv: Any = 0.95, EO: Any = None, EO_se: Any = None,
            N: Any = None, O: Any = None,  # noqa: E741 -- metamisc's name for events
            E: Any = None, Po: Any = None, Po_se: Any = None,
            Pe: Any = None, data: Any = None, slab: Any = None, method: str = "REML",
            test: str = "knha", level: float = 0.95, model: str | None = None,
            approx_se_method: int = 4,
            field_names: Mapping[str, str] | None = None) -> ValmetaResult:
    """Meta-analysis of the c-statistic or the total O:E ratio (metamisc's ``valmeta``).

    Restores each study's estimate and standard error (:func:`ccalc` with
    ``g = logit``, :func:`oecalc` with ``g = log``), pools the studies that have both with
    :func:`fedsynth.meta.meta_analysis` (REML and the Knapp-Hartung test by default, as
    valmeta; ``method="FE"`` uses the z test), computes the prediction interval for a new
    study with t on k - 2 degrees of freedom (Debray et al. 2017, BMJ 356:i6460; Riley et
    al. 2011, BMJ 342:d549) and back-transforms (Snell et al. 2018, Stat Methods Med Res
    27:3505, on the choice of scale).

    Parameters
    ----------
    measure : {"cstat", "OE"}
        The performance measure.
    cstat, cstat_se, cstat_cilb, cstat_ciub, cstat_cilv, sd_LP
        c-statistic inputs (:func:`ccalc`).
    OE, OE_se, OE_cilb, OE_ciub, OE_cilv, EO, EO_se, E, Po_se, Pe
        O:E inputs (:func:`oecalc`).
    N, O, Po
        Patients, events, observed event probability (both measures).
    data, slab, field_names
        As :func:`ccalc`.
    method : str, default "REML"
        tau² estimator (FE, DL, HE, HS, SJ, ML, REML, EB, PM).
    test : {"knha", "z"}, default "knha"
        Knapp-Hartung (t with k - 1 df) or Wald z.
    level : float, default 0.95
        Level of the confidence and prediction intervals (0.95 or 95).
    model : str, optional
        ``"normal/logit"`` (default) or ``"normal/identity"`` for the c-statistic;
        ``"normal/log"`` (default) or ``"normal/identity"`` for O:E (metamisc's
        ``pars$model.cstat`` / ``pars$model.oe``).
    approx_se_method : {4, 2}
        Newcombe's method for Hanley-McNeil (metamisc's ``pars$method.restore.c.se``).

    Returns
    -------
    ValmetaResult

    Raises
    ------
    fedsynth.errors.InputError
        An unknown measure, model, method or test; an input for the other measure (e.g.
        ``E`` with ``measure="cstat"``); a value out of range (see :func:`ccalc`,
        :func:`oecalc`); no study with both an estimate and a standard error.

    Examples
    --------
    >>> res = valmeta("OE", O=[232, 28, 41], E=[222, 46, 34], N=[5553, 1027, 1090])
    >>> round(res.estimate, 4), res.k
    (0.9343, 3)
    """
    measure_key = {"cstat": "cstat", "oe": "OE"}.get(str(measure).lower())
    if measure_key is None:
        raise InputError(f"measure: {measure!r} is not one of {', '.join(MEASURES)}")
    models = MODELS[measure_key]
    model_key = model if model is not None else next(iter(models))
    if model_key not in models:
        raise InputError(f"model: {model!r} is not available for measure {measure_key!r} "
                         f"(use {' or '.join(models)})")
    scale = _SCALES[models[model_key]]
    lv = _level(level)
    method_key = str(method).upper()
    test_key = "z" if method_key == "FE" else str(test).lower()
    given = {"cstat": cstat, "cstat_se": cstat_se, "cstat_cilb": cstat_cilb,
             "cstat_ciub": cstat_ciub, "sd_LP": sd_LP, "OE": OE, "OE_se": OE_se,
             "OE_cilb": OE_cilb, "OE_ciub": OE_ciub, "EO": EO, "EO_se": EO_se, "E": E,
             "Po_se": Po_se, "Pe": Pe}
    own = set(_CSTAT_ARGS if measure_key == "cstat" else _OE_ARGS)
    other = [name for name, value in given.items() if value is not None and name not in own]
    if other:
        names = field_names or {}
        raise InputError(f"{names.get(other[0], other[0])}: is an input of measure "
                         f"{'OE' if measure_key == 'cstat' else 'cstat'}, not of "
                         f"{measure_key!r}")
    if measure_key == "cstat":
        perf = ccalc(cstat, cstat_se, cstat_cilb, cstat_ciub, cstat_cilv, sd_LP, N, O, Po,
                     data=data, slab=slab, g=None if scale.name == "identity" else "logit",
                     level=lv, approx_se_method=approx_se_method, field_names=field_names)
    else:
        perf = oecalc(OE, OE_se, OE_cilb, OE_ciub, OE_cilv, EO, EO_se, N, O, E, Po, Po_se, Pe,
                      data=data, slab=slab, g=None if scale.name == "identity" else "log",
                      level=lv, field_names=field_names)
    return _pool(perf, measure_key, model_key, scale, method_key, test_key, lv)


def _pool(perf: PerformanceData, measure: str, model: str, scale: _Scale, method: str,
          test: str, level: float) -> ValmetaResult:
    used = perf.used
    notes = list(perf.notes)
    notes += [f"row {i + 1} (study {s.label!r}): E = 0, so the continuity correction (add = "
              "0.5 by default) was added to O, E and N"
              for i, s in enumerate(perf.studies) if s.corrected and s.used]
    k = int(used.sum())
    if k == 0:
        what = "c-statistic" if measure == "cstat" else "O:E ratio"
        raise InputError(f"no study has both a {what} and its standard error, so there is "
                         f"nothing to pool ({len(perf)} rows; {perf.notes[0]})")
    theta, se = perf.theta[used], perf.theta_se[used]
    labels = [s.label for s in perf.studies if s.used]
    fit = meta_analysis(theta, se ** 2, labels=labels, method=method, test=test,
                        level=level * 100.0)
    mu, mu_se, tau2 = float(fit.estimate), float(fit.se), float(fit.tau2)
    if method == "FE":
        mu_pi = (np.nan, np.nan)
        notes.append("no prediction interval for the fixed-effect model")
    elif k < 3:
        mu_pi = (np.nan, np.nan)
        notes.append(f"no prediction interval with k = {k}: it uses t with k - 2 df")
    else:
        crit = float(special.stdtrit(k - 2, (1.0 + level) / 2.0))
        half = crit * np.sqrt(tau2 + mu_se ** 2)
        mu_pi = (mu - half, mu + half)
    if k == 1:
        notes.append("one study: its own estimate, with a z interval and no heterogeneity")
    knha = test == "knha" and k >= 2
    null_scaled = float(scale.g(np.array(NULL_VALUES[measure])))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = float(np.divide(mu - null_scaled, mu_se))
    if knha and mu_se == 0:
        notes.append("the studies' estimates are identical, so the Knapp-Hartung standard "
                     "error is 0 (as metafor reports it); use test z for a non-degenerate "
                     "interval")
    if knha:
        pval = float(2.0 * special.stdtr(k - 1, -abs(stat)))
    else:
        pval = float(2.0 * special.ndtr(-abs(stat)))
    inv = scale.inv
    return ValmetaResult(
        measure=measure, model=model, scale=scale.name, method=method,
        test=test if k >= 2 else "z", level=level, k=k,
        estimate=float(inv(np.array(mu))), ci_lb=float(inv(np.array(fit.ci_lb))),
        ci_ub=float(inv(np.array(fit.ci_ub))), pi_lb=float(inv(np.array(mu_pi[0]))),
        pi_ub=float(inv(np.array(mu_pi[1]))), tau2=tau2, mu=mu, mu_se=mu_se,
        mu_ci_lb=float(fit.ci_lb), mu_ci_ub=float(fit.ci_ub), mu_pi_lb=float(mu_pi[0]),
        mu_pi_ub=float(mu_pi[1]), null_value=NULL_VALUES[measure], stat=float(stat),
        pval=pval, I2=float(fit.I2), Q=float(fit.Q), Q_df=int(fit.Q_df),
        Q_pval=float(fit.Q_pval), data=perf, notes=tuple(notes), fit=fit)


# ---------------------------------------------------------------------------------------
# text report
# ---------------------------------------------------------------------------------------

_METHOD_NAMES = {"DL": "DerSimonian-Laird", "HE": "Hedges", "HS": "Hunter-Schmidt",
                 "SJ": "Sidik-Jonkman", "ML": "maximum likelihood",
                 "REML": "restricted maximum likelihood", "EB": "empirical Bayes",
                 "PM": "Paule-Mandel"}
_ESTIMANDS = {"cstat": "c-statistic", "OE": "Total O:E ratio"}
_SCALE_LABELS = {"logit": "logit(c)", "log": "log(O:E)", "identity": "identity",
                 "asin(sqrt)": "asin(sqrt(c))"}


def _f(x: float | None, digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return "NA" if x is None or np.isnan(x) else ("Inf" if x > 0 else "-Inf")
    return f"{x:.{digits}f}"


def _p(p: float) -> str:
    if np.isnan(p):
        return "NA"
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


def _table(header: list[str], rows: list[list[str]],
           left: frozenset[int] = frozenset({0})) -> list[str]:
    """Columns right-aligned except those in ``left``."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j in left else c.rjust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _format_summary(res: ValmetaResult) -> str:
    est = _ESTIMANDS[res.measure]
    pct = f"{res.level * 100:g}%"
    dropped = len(res.data) - res.k
    title = est[0].lower() + est[1:]
    lines = [f"Meta-analysis of the {title}: {len(res.data)} validations, {res.k} pooled, "
             f"{dropped} left out; model {res.model}, pooled on the "
             f"{_SCALE_LABELS[res.scale]} scale"]
    if res.method != "FE" and res.k >= 2:
        lines.append(f"Random-Effects Model (k = {res.k}; tau^2 estimator: {res.method}, "
                     f"{_METHOD_NAMES[res.method]})")
    else:
        lines.append(f"Fixed-Effect Model (k = {res.k})")
    lines.append("")
    if res.method != "FE" and res.k >= 2:
        lines.append(f"tau^2 (estimated amount of total heterogeneity): {_f(res.tau2)} "
                     f"(on the {_SCALE_LABELS[res.scale]} scale)")
        lines.append(f"tau (square root of estimated tau^2 value):      {_f(res.tau)}")
    if res.k >= 2:
        lines.append(f"I^2 (total heterogeneity / total variability):   {_f(res.I2, 2)}%")
        lines.append("")
        lines.append("Test for Heterogeneity:")
        lines.append(f"Q(df = {res.Q_df}) = {_f(res.Q)}, p-val = {_p(res.Q_pval)}")
        lines.append("")
    if res.pi is not None:
        lines.append(f"Summary {est} with {pct} confidence and (approximate) {pct} "
                     "prediction interval:")
    else:
        lines.append(f"Summary {est} with {pct} confidence interval:")
    lines.append("")
    header = ["", "estimate", "ci.lb", "ci.ub"]
    rows = [[est, _f(res.estimate), _f(res.ci_lb), _f(res.ci_ub)],
            [_SCALE_LABELS[res.scale], _f(res.mu), _f(res.mu_ci_lb), _f(res.mu_ci_ub)]]
    if res.pi is not None:
        header += ["pi.lb", "pi.ub"]
        rows[0] += [_f(res.pi_lb), _f(res.pi_ub)]
        rows[1] += [_f(res.mu_pi_lb), _f(res.mu_pi_ub)]
    lines.extend(_table(header, rows))
    lines.append("")
    if res.test == "knha":
        inference = f"Knapp-Hartung, t with df = {res.k - 1}"
        stat_name = "t"
    else:
        inference = "z"
        stat_name = "z"
    if res.pi is not None:
        inference += f"; prediction interval with t, df = {res.k - 2} (k - 2)"
    lines.append(f"Inference: {inference}.")
    null_scaled = float(_SCALES[res.scale].g(np.array(res.null_value)))
    lines.append(f"Test of {est} = {res.null_value:g} ({_SCALE_LABELS[res.scale]} = "
                 f"{null_scaled:g}): {stat_name} = {_f(res.stat)}, p-val = {_p(res.pval)}")
    lines.append("")
    lines.append(f"Validations (theta on the {_SCALE_LABELS[res.scale]} scale; {pct} CI "
                 "back-transformed):")
    header = ["study", "theta", "theta.se", "se.source", est if res.measure == "cstat"
              else "O:E", "ci.lb", "ci.ub"]
    inv = _SCALES[res.scale].inv
    rows = []
    for s in res.data.studies:
        if s.used:
            rows.append([s.label, _f(s.theta), _f(s.theta_se), s.theta_se_source or "",
                         _f(float(inv(np.array(s.theta)))),
                         _f(float(inv(np.array(s.theta_cilb)))),
                         _f(float(inv(np.array(s.theta_ciub))))])
        else:
            rows.append([s.label, "-", "-", "left out", "-", "-", "-"])
    lines.extend(_table(header, rows, left=frozenset({0, 3})))
    if res.notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {note}" for note in res.notes)
    return "\n".join(lines)
