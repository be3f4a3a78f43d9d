"""Result types of the site estimators.

Why
---
A site sends only a summary of its data: an effect estimate ``yi`` on the scale on which
it is pooled (log OR, log HR, mean difference, AUC, ...), its sampling variance ``vi``
and the number of patients ``n`` (the inverse-variance framework of meta-analysis, see
Borenstein et al., *Introduction to Meta-Analysis*, Wiley 2009, ch. 4; and for federated
pooling of site estimates Lin & Zeng, "On the relative efficiency of using summary
statistics versus individual-level data in meta-analysis", *Biometrika* 97(2), 2010).
Everything else an estimator knows (cell counts, model details) stays at the site: the
counts are kept in :attr:`Estimate.cells` only so that disclosure control
(:mod:`site_agent.privacy`) can check them, and :meth:`Estimate.to_dict` never includes
them.

An analysis that cannot be computed is a :class:`Refusal` with a plain reason, never an
exception: one failing analysis must not stop the others of a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from scipy import stats

from fedsynth.results import Interval, check_fraction

__all__ = ["Estimate", "Refusal", "EffectSizes", "REFUSAL_CODES", "ConfidenceInterval"]

#: Machine codes an estimator's :class:`Refusal` may carry (the privacy guard adds its own).
REFUSAL_CODES: tuple[str, ...] = (
    "missing_column",      # a column the analysis names is not in the data
    "invalid_values",      # a column holds values the analysis cannot use (e.g. text)
    "too_few_rows",        # not enough complete rows to estimate anything
    "non_binary",          # an outcome/exposure/event that must be 0/1 is not
    "constant_exposure",   # the exposure takes one value only
    "no_events",           # the outcome (or event) never or always happens
    "separation",          # (quasi-)perfect separation: the MLE does not exist
    "zero_variance",       # a group with no spread, or an estimate with no variance
    "not_converged",       # the fitting algorithm did not converge
    "singular",            # collinear covariates: the model is not identified
    "internal_error",      # an unexpected failure of the estimator (logged at the site)
)


#: The former name of the interval type (now :class:`fedsynth.results.Interval`, the one
#: interval type of the library), kept so older imports work.
ConfidenceInterval = Interval


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Estimate:
    """One analysis's estimate at one site.

    Attributes
    ----------
    analysis
        The analysis name from the spec.
    estimator
        The estimator that produced it (``two_by_two``, ``logistic``, ``cox``, ...).
    measure
        What ``yi`` is: ``OR``/``RR``/``HR`` (``yi`` is then the log ratio), ``RD``, ``MD``,
        ``SMD``, ``ROM`` (log ratio of means), ``AUC``, ``logit_AUC``, ``slope``,
        ``intercept``, ``OE`` (log O/E), ``Brier``.
    yi, vi, se
        The estimate, its sampling variance and standard error (``se**2 == vi``).
    n
        Number of patients (complete rows) the estimate rests on.
    n_dropped
        Rows dropped for missing values in the columns this analysis uses.
    cells
        Counts behind a count-based estimate (2x2 cells, events/non-events, group sizes)
        that disclosure control must check, and the exposure x outcome table (``ai``,
        ``bi``, ``ci``, ``di``, ``events``, ``non_events``) implied by any estimate of a 0/1
        outcome, e.g. a mean difference that is a risk difference. Kept at the site;
        never sent.
    details
        What the estimate was computed from (columns, model formula, ties method, ...).
    """

    analysis: str
    estimator: str
    measure: str
    yi: float
    vi: float
    se: float
    n: int
    n_dropped: int = 0
    cells: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", _freeze({k: int(v) for k, v in
                                                   dict(self.cells).items()}))
        object.__setattr__(self, "details", _freeze(self.details))
        for name in ("yi", "vi", "se"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"Estimate.{name} must be finite, got {value!r}")
            object.__setattr__(self, name, value)
        if self.vi <= 0:
            raise ValueError(f"Estimate.vi must be > 0, got {self.vi!r}")
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "n_dropped", int(self.n_dropped))

    refused = False

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Wald interval ``yi ± z se`` on the scale of ``yi`` (the pooling scale)."""
        level = check_fraction(confidence_level)
        z = float(stats.norm.ppf(0.5 + level / 2))
        return Interval(self.yi - z * self.se, self.yi + z * self.se, level=level)

    def to_dict(self) -> dict[str, Any]:
        """What the site sends: ``yi, vi, se, n`` (never the cells or details)."""
        return {"yi": self.yi, "vi": self.vi, "se": self.se, "n": self.n}


@dataclass(frozen=True)
class Refusal:
    """An analysis the site does not answer, with a plain reason.

    Attributes
    ----------
    analysis
        The analysis name from the spec.
    reason
        A plain sentence for the report; it carries no small counts.
    code
        A short machine code (:data:`REFUSAL_CODES`, or the privacy guard's codes).
    """

    analysis: str
    reason: str
    code: str = "refused"

    refused = True

    def to_dict(self) -> dict[str, Any]:
        """What the site sends for a refused analysis."""
        return {"refused": self.reason}


@dataclass(frozen=True, eq=False)
class EffectSizes:
    """Effect sizes computed from summary data (the result of :func:`escalc`).

    Attributes
    ----------
    measure
        The escalc measure (``OR``, ``RR``, ``RD``, ``MD``, ``SMD``, ``ROM``, ``ZCOR``,
        ``IRR``, ``PLO``, ``PR``).
    yi, vi
        Arrays of effect sizes and sampling variances, one per study (row).
    corrected
        Boolean array: True where a continuity correction was added to the row's counts.
    """

    measure: str
    yi: Any
    vi: Any
    corrected: Any

    @property
    def sei(self) -> Any:
        """Standard errors ``sqrt(vi)``."""
        import numpy as np

        return np.sqrt(self.vi)

    def __len__(self) -> int:
        return len(self.yi)
