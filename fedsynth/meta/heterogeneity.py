"""The heterogeneity flag: when one pooled number would mislead (docs/architecture.md).

Every pooled analysis carries ``heterogeneity: {flagged, level, reasons, sites}``:

- ``flagged`` when I² is at or above a threshold (default 50%: "substantial" in the
  Cochrane Handbook, ch. 10.10.2; Higgins & Thompson 2002, Stat. Med. 21:1539-1558), or
  when the prediction interval crosses the null while the confidence interval does not:
  the average effect is clear, but a new site's effect could lie on either side of the
  null (Riley, Higgins & Deeks 2011, "Interpretation of random effects meta-analyses",
  BMJ 342:d549; IntHout et al. 2016, BMJ Open 6:e010247). The null is 0 on the analysis
  scale (log scale for ratios) and is a parameter.
- ``level`` "strong" when the lower bound of I²'s (Q-profile) confidence interval is also
  at or above the threshold, so the data rule out modest heterogeneity; "moderate"
  otherwise; ``None`` when not flagged.
- ``sites``: the sites that drive it, found three ways: an outlying BLUP (the site's
  shrunken estimate has a prediction interval that excludes the pooled estimate), a
  studentized deleted residual beyond ±1.96, or influence by metafor's ``is.infl`` rule
  in leave-one-out refits (Viechtbauer & Cheung 2010, Res. Synth. Methods 1:112-125).
- ``reasons``: plain sentences with the numbers, for the report, recommending
  site-specific or hierarchical models.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import special
from scipy.special import chdtr

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none as _num
from fedsynth.meta._format import f
from fedsynth.meta.deletion import SERIES_METHODS, SERIES_MIN_SITES, deleted_fits
from fedsynth.meta.stats import as_batch, heterogeneity_indices, qprofile_tau2_ci, typical_variance
from fedsynth.results import Interval, ResultMixin, frame_html
from fedsynth.vocabulary import SCALES, from_scale

__all__ = ["HeterogeneityFlag", "SiteDriver", "assess_heterogeneity", "DEFAULT_I2_THRESHOLD",
           "ClinicalWidth", "RULES",
           "BatchHeterogeneity", "BatchSiteDiagnostics", "assess_heterogeneity_batch",
           "site_diagnostics_batch"]

DEFAULT_I2_THRESHOLD = 50.0
#: |studentized deleted residual| beyond this marks an outlying site (two-sided 5%)
RSTUDENT_CRIT = 1.959963984540054


class _Pooled(Protocol):
    """What the flag reads from a pooled fit.

    What the flag reads from a pooled fit (``fedsynth.meta.PoolingResult``; read-only,
    as the fields of a frozen dataclass).
    """

    @property
    def estimate(self) -> float: ...

    @property
    def ci_lb(self) -> float: ...

    @property
    def ci_ub(self) -> float: ...

    @property
    def I2(self) -> float: ...


@dataclass(frozen=True)
class SiteDriver:
    """One site that drives the heterogeneity, and why.

    ``kinds`` holds any of ``"outlying_blup"``, ``"studentized_residual"``,
    ``"influential"``; ``index`` is the site's 0-based position (labels may repeat in
    published data); the numbers behind the kinds are kept for the report.
    """

    site: str
    kinds: tuple[str, ...]
    index: int = -1
    rstudent: float | None = None
    blup: float | None = None
    blup_pi_lb: float | None = None
    blup_pi_ub: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form of this site's part in the verdict."""
        return {"site": self.site, "index": self.index, "kinds": list(self.kinds),
                "rstudent": self.rstudent,
                "blup": self.blup, "blup_pi_lb": self.blup_pi_lb, "blup_pi_ub": self.blup_pi_ub}


@dataclass(frozen=True)
class ClinicalWidth:
    """A clinically meaningful width for the prediction interval of one measure.

    With large sites I² tends to 100% for a between-site spread that does not matter
    clinically (Rücker et al. 2008, BMC Med. Res. Methodol. 8:79; Riley et al. 2011,
    BMJ 342:d549): the spread a reader cares about is where a new site's value may lie,
    on the scale results are read on. Either bound may be given:

    Attributes
    ----------
    halfwidth
        The prediction interval may reach at most this far from the pooled estimate on
        either side (a c-statistic: 0.05).
    low, high
        The prediction interval must stay within ``[low, high]`` (an O:E ratio: 0.8 to
        1.25).
    """

    halfwidth: float | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        for name in ("halfwidth", "low", "high"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float))
                                          and np.isfinite(value)):
                raise InputError(f"clinical width: {name} must be a finite number, got "
                                 f"{value!r}")
        if self.halfwidth is not None and self.halfwidth <= 0:
            raise InputError(f"clinical width: halfwidth must be > 0, got {self.halfwidth!r}")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise InputError(f"clinical width: low ({self.low!r}) must be below high "
                             f"({self.high!r})")
        if self.halfwidth is None and self.low is None and self.high is None:
            raise InputError("clinical width: give a halfwidth or a low/high range")

    @classmethod
    def from_setting(cls, value: Any) -> ClinicalWidth:
        """From a ``[pooling.pi_width]`` value: a number (half-width) or ``[low, high]``."""
        if isinstance(value, ClinicalWidth):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(low=float(value[0]), high=float(value[1]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(halfwidth=float(value))
        raise InputError(f"clinical width: expected a half-width or [low, high], got "
                         f"{value!r}")

    def describe(self) -> str:
        """The rule in words (``"±0.05"``, ``"0.8 to 1.25"``)."""
        parts = []
        if self.halfwidth is not None:
            parts.append(f"±{self.halfwidth:g}")
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            parts.append(f"{lo} to {hi}")
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """``{halfwidth, low, high}`` (None where not set)."""
        return {"halfwidth": self.halfwidth, "low": self.low, "high": self.high}


#: Names of the rules that raise the flag, as ``HeterogeneityFlag.rules`` lists them.
RULES = ("i2", "pi_crosses_null", "pi_width")


@dataclass(frozen=True)
class HeterogeneityFlag(ResultMixin):
    """The heterogeneity verdict on one pooled analysis.

    The verdict on one pooled analysis; ``to_dict()`` gives the contract's four keys
    (``flagged, level, reasons, sites``) plus ``drivers`` and the settings used.

    ``level`` is the flag's strength (``"strong"``, ``"moderate"`` or None);
    ``interval_level`` the confidence level (percent) of the intervals it was judged on;
    ``rules`` the rules that fired (``"i2"``, ``"pi_crosses_null"``, ``"pi_width"``);
    ``null_value`` is on the pooling scale (None: the measure has no null);
    ``scale`` the pooling scale (``identity``, ``log``, ``logit``) numbers in the reasons
    are back-transformed from.
    """

    flagged: bool
    level: str | None
    reasons: tuple[str, ...]
    sites: tuple[str, ...]
    I2: float
    I2_ci_lb: float | None
    I2_ci_ub: float | None
    i2_threshold: float
    pi_crosses_null: bool
    null_value: float | None
    drivers: tuple[SiteDriver, ...] = field(default=())
    pi_lb: float | None = None
    pi_ub: float | None = None
    interval_level: float = 95.0
    rules: tuple[str, ...] = ()
    scale: str = "identity"
    tau2: float | None = None
    clinical: ClinicalWidth | None = None
    pi_beyond_width: bool = False

    def i2_confidence_interval(self) -> Interval | None:
        """The (Q-profile) confidence interval of I² the strength was judged on.

        The (Q-profile) confidence interval of I² the strength was judged on (None if
        there was none).
        """
        if self.I2_ci_lb is None or self.I2_ci_ub is None:
            return None
        return Interval(self.I2_ci_lb, self.I2_ci_ub, level=self.interval_level / 100.0)

    def summary(self, digits: int = 4) -> str:
        """The verdict in plain sentences, as ``fedsynth meta`` prints it."""
        lines = ["Heterogeneity flag:"]
        if self.flagged:
            lines.append(f"FLAGGED ({self.level}) by rule {', '.join(self.rules)}: one "
                         "pooled estimate may mislead.")
            lines.append(" ".join(self.reasons))
            lines.append("Report the site-specific estimates (BLUPs) beside the pooled one, "
                         "and consider site-level moderators (meta-regression, subgroups).")
        else:
            ci = (f" (CI {f(self.I2_ci_lb, 2)}% to {f(self.I2_ci_ub, 2)}%)"
                  if self.I2_ci_lb is not None else "")
            if self.pi_lb is None or self.pi_ub is None:
                pi = "there is no prediction interval (fixed effect)"
            elif self.null_value is None:
                pi = (f"the prediction interval ({f(self.pi_lb, digits)} to "
                      f"{f(self.pi_ub, digits)}) is not compared with a null (the measure "
                      "has none)")
            else:
                pi = (f"the prediction interval ({f(self.pi_lb, digits)} to "
                      f"{f(self.pi_ub, digits)}) leads to the same conclusion about the null "
                      f"({self.null_value:g}) as the confidence interval")
            i2_txt = (f"I^2 = {f(self.I2, 2)}%{ci} is below the {self.i2_threshold:g}% "
                      "threshold")
            if self.clinical is not None and np.isfinite(self.I2) \
                    and self.I2 >= self.i2_threshold:
                i2_txt = (f"I^2 = {f(self.I2, 2)}%{ci} is high, but the prediction interval "
                          f"stays within the clinically meaningful width "
                          f"({self.clinical.describe()})")
            lines.append(f"not flagged: {i2_txt}, and {pi}.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the contract's four keys, the drivers and the settings used."""
        return {"flagged": self.flagged, "level": self.level, "reasons": list(self.reasons),
                "sites": list(self.sites), "drivers": [d.to_dict() for d in self.drivers],
                "I2": _num(self.I2), "I2_ci": [_num(self.I2_ci_lb), _num(self.I2_ci_ub)],
                "i2_threshold": self.i2_threshold, "null_value": self.null_value,
                "pi_crosses_null": self.pi_crosses_null, "rules": list(self.rules),
                "scale": self.scale,
                "clinical_width": None if self.clinical is None else self.clinical.to_dict(),
                "pi_beyond_width": self.pi_beyond_width}


def _ci_bounds(ci: Any) -> tuple[float | None, float | None]:
    """Read an ``Interval(low, high)`` (or a pair, or None)."""
    if ci is None:
        return None, None
    low = getattr(ci, "low", None)
    high = getattr(ci, "high", None)
    if low is None and high is None and isinstance(ci, Sequence) and len(ci) == 2:
        low, high = ci[0], ci[1]
    return _num(low), _num(high)


def _fmt(x: float | None, digits: int = 2) -> str:
    """One fixed-point format for every number of the flag's sentences.

    No ``2.6e-05`` beside ``0.00``; a value that rounds to zero prints without a sign.
    """
    if x is None:
        return "NA"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _back(x: float | None, scale: str) -> float | None:
    """A pooling-scale value on the reading scale (None stays None)."""
    return None if x is None else from_scale(float(x), scale)


def assess_heterogeneity(pooled: _Pooled, *, labels: Sequence[Any] | None = None,
                         influence: Any | None = None, blup: Any | None = None,
                         i2_threshold: float = DEFAULT_I2_THRESHOLD,
                         null_value: float | None = 0.0, level: float = 95.0,
                         i2_ci: Any | None = None, scale: str = "identity",
                         clinical: ClinicalWidth | None = None,
                         estimand: str | None = None) -> HeterogeneityFlag:
    """Decide whether one pooled answer would mislead, and which sites drive it.

    Three rules raise the flag, and ``rules`` names those that fired:

    * ``i2``: I² at or above ``i2_threshold``; when a ``clinical`` width is given and the
      prediction interval stays within it, I² alone does not flag (with large sites I²
      approaches 100% for a clinically trivial tau);
    * ``pi_crosses_null``: the prediction interval crosses the null while the confidence
      interval does not (Riley et al. 2011, BMJ 342:d549);
    * ``pi_width``: the prediction interval, back-transformed to the reading scale, is
      wider than the ``clinical`` width (a c-statistic beyond ±0.05 of the pooled value,
      an O:E ratio outside 0.8 to 1.25).

    Parameters
    ----------
    pooled
        The pooled fit (a ``PoolingResult``): ``estimate, ci_lb, ci_ub, I2`` and, when the
        fit has them, ``I2_ci`` (Q-profile), ``pi_lb``, ``pi_ub``, ``tau2``, ``labels``.
    labels
        Site names (default: ``pooled.labels``, else the diagnostics' labels).
    influence
        An :class:`~fedsynth.meta.diagnostics.InfluenceResult` of the same data
        (studentized residuals and metafor's influence rule).
    blup
        A :class:`~fedsynth.meta.diagnostics.BlupResult` of the same data.
    i2_threshold
        I² (percent) at or above which the analysis is flagged (default 50).
    null_value
        The effect of no difference on the pooling scale (0 for differences, log ratios
        and a logit c-statistic; 1 for a calibration slope); None when the measure has no
        null (the Brier score), which switches the ``pi_crosses_null`` rule off.
    level
        Confidence level (percent) of the intervals, for the sentences.
    i2_ci
        An ``Interval`` of I² to judge the level on instead of ``pooled.I2_ci``
        (e.g. the Q-profile interval for a fixed-effect fit, which carries none).
    scale
        The pooling scale (``identity``, ``log``, ``logit``): the sentences and the
        clinical width read back-transformed values.
    clinical
        The measure's clinically meaningful width (:class:`ClinicalWidth`), or None.
    estimand
        What the back-transformed estimate is called in the sentences (``c-statistic``).
    """
    thr, null = _check_settings(i2_threshold, null_value)
    if scale not in SCALES:
        raise InputError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")
    i2 = float(pooled.I2) if pooled.I2 is not None else float("nan")
    i2_lb, i2_ub = _ci_bounds(i2_ci if i2_ci is not None else getattr(pooled, "I2_ci", None))
    pi_lb, pi_ub = _num(getattr(pooled, "pi_lb", None)), _num(getattr(pooled, "pi_ub", None))
    drivers = _drivers(pooled, labels, influence, blup)
    return _verdict(float(pooled.estimate), float(pooled.ci_lb), float(pooled.ci_ub), i2,
                    i2_lb, i2_ub, pi_lb, pi_ub, drivers, thr, null, level, scale=scale,
                    clinical=clinical, estimand=estimand,
                    tau2=_num(getattr(pooled, "tau2", None)))


def _check_settings(i2_threshold: float,
                    null_value: float | None) -> tuple[float, float | None]:
    thr = float(i2_threshold)
    if not np.isfinite(thr) or not (0.0 <= thr <= 100.0):
        raise InputError("i2_threshold: must be a percentage between 0 and 100, got "
                         f"{i2_threshold!r}")
    if null_value is None:
        return thr, None
    null = float(null_value)
    if not np.isfinite(null):
        raise InputError(f"null_value: must be a finite number, got {null_value!r}")
    return thr, null


def _beyond_width(estimate: float, pi_lb: float | None, pi_ub: float | None, scale: str,
                  clinical: ClinicalWidth | None) -> bool | None:
    """Whether the back-transformed PI is wider than the clinical width.

    None when there is no rule or no prediction interval.
    """
    if clinical is None or pi_lb is None or pi_ub is None:
        return None
    est, lo, hi = (from_scale(x, scale) for x in (estimate, pi_lb, pi_ub))
    beyond = False
    if clinical.halfwidth is not None:
        beyond |= max(est - lo, hi - est) > clinical.halfwidth
    if clinical.low is not None:
        beyond |= lo < clinical.low
    if clinical.high is not None:
        beyond |= hi > clinical.high
    return bool(beyond)


def _verdict(estimate: float, ci_lb: float, ci_ub: float, i2: float, i2_lb: float | None,
             i2_ub: float | None, pi_lb: float | None, pi_ub: float | None,
             drivers: tuple[SiteDriver, ...], thr: float, null: float | None,
             level: float, *, scale: str = "identity", clinical: ClinicalWidth | None = None,
             estimand: str | None = None, tau2: float | None = None) -> HeterogeneityFlag:
    """The flag from the pooled numbers and the site drivers.

    Shared by :func:`assess_heterogeneity` and :func:`assess_heterogeneity_batch`, so the
    two give the same verdict and the same sentences by construction. The reasons are
    one short paragraph: numbers first, each rule that fired once, then the sites.
    """
    ci_excludes_null = null is not None and (ci_lb > null or ci_ub < null)
    pi_crosses = (null is not None and pi_lb is not None and pi_ub is not None
                  and pi_lb <= null <= pi_ub)
    i2_high = bool(np.isfinite(i2) and i2 >= thr)
    beyond = _beyond_width(estimate, pi_lb, pi_ub, scale, clinical)
    # a clinical width, when it can be judged, overrules I² alone (trivial tau, huge sites)
    i2_path = i2_high and beyond is not False
    pi_path = bool(ci_excludes_null and pi_crosses)
    width_path = bool(beyond)
    flagged = i2_path or pi_path or width_path
    rules = tuple(name for name, on in zip(RULES, (i2_path, pi_path, width_path)) if on)

    level_name: str | None = None
    reasons: list[str] = []
    lv = f"{level:g}%"
    d = 3 if scale == "logit" else 2            # c-statistics are read to 3 decimals
    what = estimand or "effect"
    shown = "" if scale == "identity" else f" ({what})"
    if flagged:
        strong = (i2_path or width_path) and i2_lb is not None and i2_lb >= thr
        level_name = "strong" if strong else "moderate"
        est_r = from_scale(estimate, scale)
        pi_txt = (f"{_fmt(_back(pi_lb, scale), d)} to {_fmt(_back(pi_ub, scale), d)}"
                  if pi_lb is not None and pi_ub is not None else "NA")
        if width_path and clinical is not None:
            reasons.append(
                f"{lv} PI {pi_txt} for a new site's {what} around the pooled "
                f"{_fmt(est_r, d)} is wider than the clinically meaningful "
                f"{clinical.describe()} (rule pi_width).")
        if i2_path or (i2_high and width_path):
            ci_txt = (f" ({lv} CI {_fmt(i2_lb)}% to {_fmt(i2_ub)}%)"
                      if i2_lb is not None and i2_ub is not None else "")
            tau_txt = ("" if tau2 is None else
                       f", tau = {_fmt(float(np.sqrt(max(tau2, 0.0))))}"
                       + ("" if scale == "identity" else f" on the {scale} scale"))
            strength = (f"; its lower bound {_fmt(i2_lb)}% also reaches the threshold, so the "
                        "heterogeneity is strong" if strong and i2_lb is not None else
                        (f"; its lower bound {_fmt(i2_lb)}% lies below the threshold, so the "
                         "heterogeneity is moderate" if i2_lb is not None else ""))
            reasons.append(f"I² = {_fmt(i2)}%{ci_txt}{tau_txt}, at or above the {thr:g}% "
                           f"threshold (rule i2){strength}.")
        if pi_path and null is not None:
            reasons.append(
                f"{lv} PI {pi_txt}{shown} crosses the null value {_fmt(_back(null, scale), d)} "
                f"while the CI {_fmt(_back(ci_lb, scale), d)} to {_fmt(_back(ci_ub, scale), d)} "
                "does not: a new site's effect could lie on either side of the null "
                "(rule pi_crosses_null).")

    sites: tuple[str, ...] = ()
    if flagged:
        sites = tuple(drv.site for drv in drivers)
        if drivers:
            parts = []
            for drv in drivers:
                why = []
                if "outlying_blup" in drv.kinds:
                    why.append(f"BLUP {_fmt(_back(drv.blup, scale), d)}, PI "
                               f"{_fmt(_back(drv.blup_pi_lb, scale), d)} to "
                               f"{_fmt(_back(drv.blup_pi_ub, scale), d)} excludes the pooled "
                               f"{_fmt(from_scale(estimate, scale), d)}")
                if "studentized_residual" in drv.kinds:
                    why.append(f"studentized residual {_fmt(drv.rstudent)}")
                if "influential" in drv.kinds:
                    why.append("influential")
                parts.append(f"{drv.site} ({'; '.join(why)})")
            reasons.append("Driving sites: " + ", ".join(parts) + ".")
        else:
            reasons.append(
                "No single site drives it: no site's BLUP interval excludes the pooled "
                f"estimate, no studentized residual lies beyond ±{RSTUDENT_CRIT:.2f} and "
                "no site is influential, so the heterogeneity is spread across the sites.")
    return HeterogeneityFlag(
        flagged=flagged, level=level_name, reasons=tuple(reasons), sites=sites, I2=i2,
        I2_ci_lb=i2_lb, I2_ci_ub=i2_ub, i2_threshold=thr, pi_crosses_null=bool(pi_crosses),
        null_value=null, drivers=drivers, pi_lb=pi_lb, pi_ub=pi_ub,
        interval_level=float(level), rules=rules, scale=scale, tau2=tau2,
        clinical=clinical, pi_beyond_width=width_path)


def _drivers(pooled: Any, labels: Sequence[Any] | None, influence: Any | None,
             blup: Any | None) -> tuple[SiteDriver, ...]:
    names: list[str] | None = None
    for source in (labels, getattr(pooled, "labels", None),
                   getattr(influence, "labels", None), getattr(blup, "labels", None)):
        if source is not None:
            names = [str(x) for x in source]
            break
    if names is None:
        return ()
    k = len(names)
    kinds: list[list[str]] = [[] for _ in range(k)]
    rst: list[float | None] = [None] * k
    bl: list[tuple[float | None, float | None, float | None]] = [(None, None, None)] * k
    mu = float(pooled.estimate)
    if blup is not None:
        for i, (p, lo, hi) in enumerate(zip(blup.pred, blup.pi_lb, blup.pi_ub)):
            bl[i] = (float(p), float(lo), float(hi))
            if mu < lo or mu > hi:
                kinds[i].append("outlying_blup")
    if influence is not None:
        for i, (r, infl) in enumerate(zip(influence.rstudent, influence.influential)):
            rst[i] = float(r) if np.isfinite(r) else None
            if np.isfinite(r) and abs(r) > RSTUDENT_CRIT:
                kinds[i].append("studentized_residual")
            if bool(infl):
                kinds[i].append("influential")
    return tuple(SiteDriver(site=names[i], kinds=tuple(kinds[i]), index=i, rstudent=rst[i],
                            blup=bl[i][0],
                            blup_pi_lb=bl[i][1], blup_pi_ub=bl[i][2])
                 for i in range(k) if kinds[i])


# ---------------------------------------------------------------------------------------
# the flag of a whole batch at once
# ---------------------------------------------------------------------------------------

#: cells (rows x K) per block of deleted refits: a block of about 100,000 cells (256
#: analyses of 20 sites: 5,120 rows of 20) keeps fit_batch's working arrays in cache,
#: 2.4x faster than blocks of 1,024 such analyses, and bounds the memory (20,000 x 20
#: would otherwise be 400,000 x 20 grids)
_BLOCK_CELLS = 100_000
#: cells (analyses x sites) per block of deleted fits: the series' power sums take about
#: 900 bytes per cell (fedsynth.meta.deletion), so 20,000 cells keep a block near 18 MB
_DELETION_CELLS = 20_000


@dataclass(frozen=True)
class BatchSiteDiagnostics:
    """The per-site numbers the flag's drivers are judged on, for a whole batch.

    Every array has the batch's ``(m, K)`` layout; cells outside the mask, and every cell
    of an analysis with fewer than 2 sites (no deleted fit exists), hold NaN (``False``
    for ``influential``).

    Attributes
    ----------
    rstudent
        Studentized deleted residual (as :func:`~fedsynth.meta.diagnostics.influence`).
    influential
        metafor's ``is.infl`` rule on the leave-one-out refits.
    blup, blup_pi_lb, blup_pi_ub
        Shrunken site estimate and its prediction interval, from the pooled tau² (as
        :func:`~fedsynth.meta.diagnostics.blup` with the pooled fit).
    """

    rstudent: np.ndarray
    influential: np.ndarray
    blup: np.ndarray
    blup_pi_lb: np.ndarray
    blup_pi_ub: np.ndarray


@dataclass(frozen=True)
class BatchHeterogeneity(ResultMixin):
    """The heterogeneity flag of every analysis of a batch.

    ``flags[i]`` is the :class:`HeterogeneityFlag` of analysis ``i``, equal to what
    :func:`assess_heterogeneity` gives on ``batch[i]`` with the per-analysis diagnostics
    (same verdict, level, sites and sentences; numbers equal to rounding; with
    ``drivers_of="flagged"`` unflagged analyses carry no drivers); ``flagged`` is the
    verdict of all analyses as a boolean array and ``diagnostics`` the per-site numbers.
    """

    flags: tuple[HeterogeneityFlag, ...]
    flagged: np.ndarray
    diagnostics: BatchSiteDiagnostics
    names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.flags)

    def __getitem__(self, i: int) -> HeterogeneityFlag:
        return self.flags[i]

    def to_dict(self) -> dict[str, Any]:
        """``{"flags": [flag.to_dict(), ...]}`` in the order of the analyses."""
        return {"flags": [flag.to_dict() for flag in self.flags]}

    def to_frame(self):
        """One row per analysis: the verdict, its strength, I² and the sites."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        index = list(self.names) if self.names is not None else list(range(len(self)))
        return pd.DataFrame({"flagged": [fl.flagged for fl in self.flags],
                             "level": [fl.level for fl in self.flags],
                             "I2": [fl.I2 for fl in self.flags],
                             "I2_ci_lb": [fl.I2_ci_lb for fl in self.flags],
                             "I2_ci_ub": [fl.I2_ci_ub for fl in self.flags],
                             "sites": [";".join(fl.sites) for fl in self.flags]},
                            index=pd.Index(index, name="analysis"))

    def summary(self) -> str:
        """How many analyses are flagged, and which (the first 20)."""
        hit = [i for i, fl in enumerate(self.flags) if fl.flagged]
        names = [self.names[i] if self.names is not None else str(i) for i in hit]
        text = f"{len(hit)} of {len(self)} analyses flagged for heterogeneity"
        if hit:
            text += ": " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        return text

    def _repr_html_(self) -> str:
        return frame_html(self.to_frame(), self.summary())


def site_diagnostics_batch(batch: Any, rows: Any | None = None) -> BatchSiteDiagnostics:
    """Site diagnostics of every analysis of a pooled batch at once.

    Studentized deleted residuals, metafor's influence rule and BLUPs of every site of
    every analysis of a pooled batch, without a Python loop over analyses.

    The k leave-one-out refits of all m analyses are one masked batch fit (of
    ``sum(k)`` rows, in blocks of analyses) by
    :func:`fedsynth.meta.metareg.fit_batch`, the routine the per-analysis
    :func:`~fedsynth.meta.diagnostics.deleted_fits` uses, together with the m
    full fits; the influence measures (Viechtbauer & Cheung 2010, Res. Synth. Methods
    1:112-125) and the BLUPs (Raudenbush & Bryk 1985, J. Educ. Stat. 10:75-98) are closed
    forms on the resulting ``(m, K)`` arrays.

    Parameters
    ----------
    batch
        A :class:`fedsynth.meta.BatchPoolingResult` (its ``yi, vi, mask``,
        ``method, test, level``, ``estimate`` and ``tau2`` are read).
    rows
        Indices (or a boolean mask) of the analyses whose deleted refits to compute
        (default: all); the studentized residuals and the influence rule of the others
        stay NaN / False. BLUPs are always computed (they need no refit).
    """
    # lazy: import cycle: fedsynth.meta.metareg imports this module
    from fedsynth.meta.metareg import fit_batch

    msk = np.asarray(batch.mask, dtype=bool)
    m, K = msk.shape
    y = np.where(msk, np.asarray(batch.yi, dtype=float), 0.0)
    v = np.where(msk, np.asarray(batch.vi, dtype=float), 1.0)
    kk = msk.sum(axis=1)
    method = str(batch.method).upper()
    knha = str(batch.test).lower() == "knha"
    rst = np.full((m, K), np.nan)
    infl = np.zeros((m, K), dtype=bool)
    wanted = np.ones(m, dtype=bool)
    if rows is not None:
        sel = np.asarray(rows)
        wanted = np.zeros(m, dtype=bool)
        wanted[sel] = True
    multi = np.flatnonzero((kk >= 2) & wanted)
    if K >= SERIES_MIN_SITES and method in SERIES_METHODS:
        block = max(1, _DELETION_CELLS // K)
    else:
        block = max(1, _BLOCK_CELLS // (K * K))
    for start in range(0, multi.size, block):
        rows = multi[start:start + block]
        Mb, yb, vb_, kb = msk[rows], y[rows], v[rows], kk[rows]
        # the full fits, then the deleted fit (a, j) for every present site j of analysis a
        full = fit_batch(yb, vb_, Mb, method=method)
        mu_full, t2_full = full.estimate, full.tau2
        cell_a, cell_j = np.nonzero(Mb)
        dele = deleted_fits(yb, vb_, Mb, t2_full, method, (cell_a, cell_j))
        n = cell_a.size
        mu_del, t2_del, se_del = dele.estimate, dele.tau2, dele.se
        with np.errstate(divide="ignore", invalid="ignore"):
            # full model: weights, hat values (p = 1), variance of the pooled effect
            w = np.where(Mb, 1.0 / (vb_ + t2_full[:, None]), 0.0)
            vbeta = 1.0 / w.sum(axis=1)
            hat = (w * vbeta[:, None])[cell_a, cell_j]
            if knha:
                # Knapp-Hartung factors of the deleted and the full fits
                s2w_del = dele.rss / (dele.k - 1)
                rf = np.where(Mb, (yb - mu_full[:, None]) ** 2, 0.0)
                s2w_full = ((w * rf).sum(axis=1) / (kb - 1))[cell_a]
            else:
                s2w_del = np.ones(n)
                s2w_full = np.ones(n)
            yc, vc = yb[cell_a, cell_j], vb_[cell_a, cell_j]
            vb_full = vbeta[cell_a] * s2w_full
            vdelpred = se_del**2 * s2w_del
            resid = yc - mu_del
            resid = np.where(np.abs(resid) < 100 * np.finfo(float).eps, 0.0, resid)
            rstudent = resid / np.sqrt(vc * s2w_del + vdelpred + t2_del * s2w_del)
            dfb = mu_full[cell_a] - mu_del
            dffits = dfb / np.sqrt(s2w_del * hat * (t2_del + vc))
            # variance of the full model's estimate with the deleted model's tau² plugged in
            vb_plug = 1.0 / dele.sw_all
            dfbetas = dfb / np.sqrt(s2w_del * vb_plug)
            cooks = dfb**2 / vb_full
            kc = kb[cell_a]
            # metafor's is.infl with p = 1; chdtr(1, x) is the chi-square(1) CDF

            influential = ((np.abs(dffits) > 3 * np.sqrt(1 / (kc - 1)))
                           | (chdtr(1, cooks) > 0.5)
                           | (hat > 3 / kc)
                           | (np.abs(dfbetas) > 1))
        rst[rows[cell_a], cell_j] = rstudent
        infl[rows[cell_a], cell_j] = influential
    blup, lo, hi = _blups(y, v, msk, kk, np.asarray(batch.tau2, dtype=float), knha,
                          float(batch.level))
    return BatchSiteDiagnostics(rstudent=rst, influential=infl, blup=blup, blup_pi_lb=lo,
                                blup_pi_ub=hi)


def _blups(y: np.ndarray, v: np.ndarray, msk: np.ndarray, kk: np.ndarray, tau2: np.ndarray,
           knha: bool, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BLUPs and their prediction intervals for every site at once.

    BLUPs ``l y + (1 - l) mu`` with ``l = tau²/(tau² + v)`` and their prediction
    intervals, with mu and its variance from the pooled tau² (Knapp-Hartung-scaled under
    knha, t with k - 1 df), for every site at once; NaN where k < 2 or outside the mask.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(msk, 1.0 / (v + tau2[:, None]), 0.0)
        sw = w.sum(axis=1)
        vb = 1.0 / sw
        mu = vb * (w * y).sum(axis=1)
        if knha:
            r2 = np.where(msk, (y - mu[:, None]) ** 2, 0.0)
            vb = vb * ((w * r2).sum(axis=1) / (kk - 1))
        li = tau2[:, None] / (tau2[:, None] + v)
        pred = li * y + (1 - li) * mu[:, None]
        se = np.sqrt(li * v + (1 - li) ** 2 * vb[:, None])
        q = 1 - (1 - level / 100) / 2
        if knha:
            crit = np.full(kk.shape, np.nan)
            for k in np.unique(kk[kk >= 2]):
                crit[kk == k] = special.stdtrit(k - 1, q)
        else:
            crit = np.full(kk.shape, special.ndtri(q))
    keep = msk & (kk >= 2)[:, None]
    pred = np.where(keep, pred, np.nan)
    half = crit[:, None] * se
    return pred, np.where(keep, pred - half, np.nan), np.where(keep, pred + half, np.nan)


def _fixed_effect_i2_ci(batch: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q-profile I² bounds for the fixed-effect fits ``rows``.

    Q-profile I² bounds for the analyses ``rows`` that carry none (fixed-effect fits),
    as ``analysis._i2_ci_if_missing`` does for one (Viechtbauer 2007, Stat. Med. 26:37-52).
    """
    b = as_batch(np.asarray(batch.yi)[rows], np.asarray(batch.vi)[rows],
                 np.asarray(batch.mask)[rows])
    qp = qprofile_tau2_ci(b, level=float(batch.level))
    vt = typical_variance(b)
    low, _ = heterogeneity_indices(qp.low, vt)
    high, _ = heterogeneity_indices(qp.high, vt)
    return low, high


def assess_heterogeneity_batch(batch: Any, *, labels: Any | None = None,
                               i2_threshold: float = DEFAULT_I2_THRESHOLD,
                               null_value: float | None = 0.0,
                               drivers_of: str = "all", scale: str = "identity",
                               clinical: ClinicalWidth | None = None,
                               estimand: str | None = None) -> BatchHeterogeneity:
    """The heterogeneity flag of every analysis of a pooled batch at once.

    Gives, for every ``i``, exactly what
    ``fedsynth.meta.analysis.analyse(..., pooled=batch[i]).heterogeneity`` gives
    (same verdict, level, sites, sentences; numbers equal to rounding), but the site
    drivers come from :func:`site_diagnostics_batch` (one masked refit of all deleted
    fits) instead of k refits per analysis in a Python loop; only the assembly of the
    result objects visits the analyses one by one.

    Parameters
    ----------
    batch
        A :class:`fedsynth.meta.BatchPoolingResult`.
    labels
        ``(m, K)`` site labels (default: the batch's ``site_labels``; column numbers
        1..K when it has none, as ``batch[i].labels``).
    i2_threshold, null_value, scale, clinical, estimand
        As :func:`assess_heterogeneity` (the same for every analysis of the batch).
    drivers_of
        ``"all"`` (default): the site drivers of every analysis, as the per-analysis
        flag reports them (its ``drivers`` list is filled even when not flagged).
        ``"flagged"``: only for the flagged analyses, which halves the refits when about
        half are flagged; unflagged analyses then carry no ``drivers``. Their verdict,
        level, ``sites`` and ``reasons`` are the same either way (an unflagged analysis
        names no sites), so outputs that show only those (the CSV and table output of
        ``fedsynth meta``) may use it.
    """
    if drivers_of not in ("all", "flagged"):
        raise InputError(f"drivers_of: must be 'all' or 'flagged', got {drivers_of!r}")
    thr, null = _check_settings(i2_threshold, null_value)
    if scale not in SCALES:
        raise InputError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")
    msk = np.asarray(batch.mask, dtype=bool)
    m, K = msk.shape
    kk = msk.sum(axis=1)
    level = float(batch.level)
    if labels is None:
        labels = getattr(batch, "site_labels", None)
    if labels is None:
        labs = np.broadcast_to(np.array([str(j + 1) for j in range(K)], dtype=object), (m, K))
    else:
        labs = np.asarray(labels, dtype=object)
        if labs.shape != (m, K):
            raise InputError(f"labels: expected shape {(m, K)}, got {labs.shape}")

    est = np.asarray(batch.estimate, dtype=float)
    refit_rows = None
    if drivers_of == "flagged":
        # the verdict of every analysis first (as _verdict decides it, on arrays)
        I2a = np.asarray(batch.I2, dtype=float)
        pl, pu = np.asarray(batch.pi_lb, float), np.asarray(batch.pi_ub, float)
        with np.errstate(invalid="ignore"):
            i2_path = np.isfinite(I2a) & (I2a >= thr)
            nul = np.nan if null is None else null
            ci_excl = ((np.asarray(batch.ci_lb, float) > nul)
                       | (np.asarray(batch.ci_ub, float) < nul))
            pi_cross = np.isfinite(pl) & np.isfinite(pu) & (pl <= nul) & (nul <= pu)
            # the clinical width may add analyses (and overrule I²): refit those too
            if clinical is not None:
                wide = np.array([bool(_beyond_width(e, lo if np.isfinite(lo) else None,
                                                    hi if np.isfinite(hi) else None, scale,
                                                    clinical))
                                 for e, lo, hi in zip(np.asarray(batch.estimate, float),
                                                      pl, pu)], dtype=bool)
            else:
                wide = np.zeros(m, dtype=bool)
        refit_rows = np.flatnonzero(i2_path | (ci_excl & pi_cross) | wide)
    diag = site_diagnostics_batch(batch, refit_rows)
    # the three driver kinds, in the order the per-analysis flag lists them
    with np.errstate(invalid="ignore"):
        out_blup = (est[:, None] < diag.blup_pi_lb) | (est[:, None] > diag.blup_pi_ub)
        out_rst = np.isfinite(diag.rstudent) & (np.abs(diag.rstudent) > RSTUDENT_CRIT)
    any_kind = out_blup | out_rst | diag.influential
    if refit_rows is not None:
        keep = np.zeros(m, dtype=bool)
        keep[refit_rows] = True
        any_kind &= keep[:, None]

    i2_lb = np.asarray(batch.I2_ci_lb, dtype=float).copy()
    i2_ub = np.asarray(batch.I2_ci_ub, dtype=float).copy()
    missing = np.flatnonzero(np.isnan(i2_lb) & (kk >= 2))
    if missing.size:
        i2_lb[missing], i2_ub[missing] = _fixed_effect_i2_ci(batch, missing)

    # plain Python floats once (cheaper than numpy scalars in the per-analysis loop)
    I2 = np.asarray(batch.I2, dtype=float).tolist()
    cil, ciu = np.asarray(batch.ci_lb, float).tolist(), np.asarray(batch.ci_ub, float).tolist()
    pil, piu = np.asarray(batch.pi_lb, float).tolist(), np.asarray(batch.pi_ub, float).tolist()
    i2l = [x if np.isfinite(x) else None for x in i2_lb.tolist()]
    i2u = [x if np.isfinite(x) else None for x in i2_ub.tolist()]
    estl = est.tolist()
    tau2l = np.asarray(batch.tau2, dtype=float).tolist()
    # every driver cell at once, as plain Python values, grouped by analysis below
    cell_i, cell_j = np.nonzero(any_kind)
    pos = (np.cumsum(msk, axis=1) - 1)[cell_i, cell_j].tolist()   # index among present sites
    rs = diag.rstudent[cell_i, cell_j]
    cell_vals = zip(labs[cell_i, cell_j].tolist(), pos, out_blup[cell_i, cell_j].tolist(),
                    out_rst[cell_i, cell_j].tolist(), diag.influential[cell_i, cell_j].tolist(),
                    np.where(np.isfinite(rs), rs, np.nan).tolist(), np.isfinite(rs).tolist(),
                    diag.blup[cell_i, cell_j].tolist(), diag.blup_pi_lb[cell_i, cell_j].tolist(),
                    diag.blup_pi_ub[cell_i, cell_j].tolist())
    per_row: dict[int, list[SiteDriver]] = {}
    for i, (site, index, kb, kr, kf, r, r_ok, bl, lo, hi) in zip(cell_i.tolist(), cell_vals):
        kinds = tuple(kind for kind, on in (("outlying_blup", kb), ("studentized_residual", kr),
                                            ("influential", kf)) if on)
        per_row.setdefault(i, []).append(SiteDriver(
            site=str(site), kinds=kinds, index=index, rstudent=r if r_ok else None, blup=bl,
            blup_pi_lb=lo, blup_pi_ub=hi))
    inf = float("inf")
    flags = []
    for i in range(m):
        drivers = tuple(per_row.get(i, ()))
        p_lb, p_ub = pil[i], piu[i]
        flags.append(_verdict(estl[i], cil[i], ciu[i], I2[i], i2l[i], i2u[i],
                              p_lb if p_lb == p_lb and abs(p_lb) != inf else None,
                              p_ub if p_ub == p_ub and abs(p_ub) != inf else None,
                              drivers, thr, null, level, scale=scale, clinical=clinical,
                              estimand=estimand, tau2=tau2l[i] if tau2l[i] == tau2l[i]
                              else None))
    names = getattr(batch, "names", None)
    return BatchHeterogeneity(flags=tuple(flags),
                              flagged=np.array([fl.flagged for fl in flags], dtype=bool),
                              diagnostics=diag,
                              names=None if names is None else tuple(str(n) for n in names))

