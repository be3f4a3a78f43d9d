"""The heterogeneity flag: when one pooled number would mislead (DESIGN.md).

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

from fedsynth.errors import InputError
from coordinator.synthesis.pooling import ConfidenceInterval

__all__ = ["HeterogeneityFlag", "SiteDriver", "assess_heterogeneity", "DEFAULT_I2_THRESHOLD"]

DEFAULT_I2_THRESHOLD = 50.0
#: |studentized deleted residual| beyond this marks an outlying site (two-sided 5%)
RSTUDENT_CRIT = 1.959963984540054


class _Pooled(Protocol):
    """What the flag reads from a pooled fit (``coordinator.synthesis.PoolingResult``)."""

    estimate: float
    ci_lb: float
    ci_ub: float
    I2: float


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
        return {"site": self.site, "index": self.index, "kinds": list(self.kinds),
                "rstudent": self.rstudent,
                "blup": self.blup, "blup_pi_lb": self.blup_pi_lb, "blup_pi_ub": self.blup_pi_ub}


@dataclass(frozen=True)
class HeterogeneityFlag:
    """The verdict on one pooled analysis; ``to_dict()`` gives the contract's four keys
    (``flagged, level, reasons, sites``) plus ``drivers`` and the settings used."""

    flagged: bool
    level: str | None
    reasons: tuple[str, ...]
    sites: tuple[str, ...]
    I2: float
    I2_ci_lb: float | None
    I2_ci_ub: float | None
    i2_threshold: float
    pi_crosses_null: bool
    null_value: float
    drivers: tuple[SiteDriver, ...] = field(default=())

    def confidence_interval(self) -> ConfidenceInterval | None:
        """Confidence interval of I² the level was judged on (None if there was none)."""
        if self.I2_ci_lb is None or self.I2_ci_ub is None:
            return None
        return ConfidenceInterval(self.I2_ci_lb, self.I2_ci_ub)

    def to_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "level": self.level, "reasons": list(self.reasons),
                "sites": list(self.sites), "drivers": [d.to_dict() for d in self.drivers],
                "I2": _num(self.I2), "I2_ci": [_num(self.I2_ci_lb), _num(self.I2_ci_ub)],
                "i2_threshold": self.i2_threshold, "null_value": self.null_value,
                "pi_crosses_null": self.pi_crosses_null}


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _ci_bounds(ci: Any) -> tuple[float | None, float | None]:
    """Read a ``ConfidenceInterval(low, high)`` (or None)."""
    if ci is None:
        return None, None
    low = getattr(ci, "low", None)
    high = getattr(ci, "high", None)
    if low is None and high is None and isinstance(ci, Sequence) and len(ci) == 2:
        low, high = ci[0], ci[1]
    return _num(low), _num(high)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.2f}"


def assess_heterogeneity(pooled: _Pooled, *, labels: Sequence[Any] | None = None,
                         influence: Any | None = None, blup: Any | None = None,
                         i2_threshold: float = DEFAULT_I2_THRESHOLD,
                         null_value: float = 0.0, level: float = 95.0,
                         i2_ci: Any | None = None) -> HeterogeneityFlag:
    """Decide whether one pooled answer would mislead, and which sites drive it.

    Parameters
    ----------
    pooled
        The pooled fit (a ``PoolingResult``): ``estimate, ci_lb, ci_ub, I2`` and, when the
        fit has them, ``I2_ci`` (Q-profile), ``pi_lb``, ``pi_ub``, ``labels``.
    labels
        Site names (default: ``pooled.labels``, else the diagnostics' labels).
    influence
        An :class:`~coordinator.synthesis.diagnostics.InfluenceResult` of the same data
        (studentized residuals and metafor's influence rule).
    blup
        A :class:`~coordinator.synthesis.diagnostics.BlupResult` of the same data.
    i2_threshold
        I² (percent) at or above which the analysis is flagged (default 50).
    null_value
        The effect of no difference on the analysis scale (0 for differences and for
        log ratios).
    level
        Confidence level (percent) of the intervals, for the sentences.
    i2_ci
        A ``ConfidenceInterval`` of I² to judge the level on instead of ``pooled.I2_ci``
        (e.g. the Q-profile interval for a fixed-effect fit, which carries none).
    """
    thr = float(i2_threshold)
    if not np.isfinite(thr) or not (0.0 <= thr <= 100.0):
        raise InputError(f"i2_threshold: must be a percentage between 0 and 100, got {i2_threshold!r}")
    null = float(null_value)
    if not np.isfinite(null):
        raise InputError(f"null_value: must be a finite number, got {null_value!r}")

    i2 = float(pooled.I2) if pooled.I2 is not None else float("nan")
    i2_lb, i2_ub = _ci_bounds(i2_ci if i2_ci is not None else getattr(pooled, "I2_ci", None))
    ci_lb, ci_ub = float(pooled.ci_lb), float(pooled.ci_ub)
    pi_lb, pi_ub = _num(getattr(pooled, "pi_lb", None)), _num(getattr(pooled, "pi_ub", None))

    ci_excludes_null = ci_lb > null or ci_ub < null
    pi_crosses = (pi_lb is not None and pi_ub is not None and pi_lb <= null <= pi_ub)
    i2_path = bool(np.isfinite(i2) and i2 >= thr)
    pi_path = bool(ci_excludes_null and pi_crosses)
    flagged = i2_path or pi_path

    level_name: str | None = None
    reasons: list[str] = []
    lv = f"{level:g}%"
    if flagged:
        strong = i2_path and i2_lb is not None and i2_lb >= thr
        level_name = "strong" if strong else "moderate"
        if i2_path:
            ci_txt = (f" ({lv} CI {_fmt(i2_lb)}% to {_fmt(i2_ub)}%)"
                      if i2_lb is not None and i2_ub is not None else "")
            reasons.append(
                f"I² = {_fmt(i2)}%{ci_txt} is at or above the {thr:g}% threshold: "
                f"{_fmt(i2)}% of the variation between sites reflects real differences in "
                "their effects rather than chance.")
            if strong:
                reasons.append(
                    f"Even the lower confidence bound of I² ({_fmt(i2_lb)}%) reaches the "
                    "threshold, so the heterogeneity is strong: the data rule out a common effect.")
            elif i2_lb is not None:
                reasons.append(
                    f"The lower confidence bound of I² ({_fmt(i2_lb)}%) lies below the "
                    "threshold, so the heterogeneity is moderate (its size is uncertain).")
        if pi_path:
            reasons.append(
                f"The {lv} prediction interval ({_fmt(pi_lb)} to {_fmt(pi_ub)}) crosses the "
                f"null value {null:g} while the confidence interval ({_fmt(ci_lb)} to "
                f"{_fmt(ci_ub)}) does not: the average effect is clear, but the effect at a "
                "new site could lie on either side of the null.")

    drivers = _drivers(pooled, labels, influence, blup)
    sites: tuple[str, ...] = ()
    if flagged:
        sites = tuple(d.site for d in drivers)
        for d in drivers:
            parts = []
            if "outlying_blup" in d.kinds:
                parts.append(f"its shrunken estimate {_fmt(d.blup)} has a prediction interval "
                             f"({_fmt(d.blup_pi_lb)} to {_fmt(d.blup_pi_ub)}) that excludes the "
                             f"pooled estimate {_fmt(float(pooled.estimate))}")
            if "studentized_residual" in d.kinds:
                parts.append(f"its studentized residual is {_fmt(d.rstudent)} "
                             f"(beyond ±{RSTUDENT_CRIT:.2f})")
            if "influential" in d.kinds:
                parts.append("leaving it out changes the pooled result markedly "
                             "(influential by metafor's rule)")
            reasons.append(f"Site {d.site} differs: " + "; ".join(parts) + ".")
        reasons.append(
            "Report site-specific estimates (BLUPs) alongside the pooled effect, and consider "
            "a hierarchical model with site-level moderators (meta-regression or subgroups) "
            "instead of relying on one pooled number.")
    return HeterogeneityFlag(
        flagged=flagged, level=level_name, reasons=tuple(reasons), sites=sites, I2=i2,
        I2_ci_lb=i2_lb, I2_ci_ub=i2_ub, i2_threshold=thr, pi_crosses_null=bool(pi_crosses),
        null_value=null, drivers=drivers)


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
