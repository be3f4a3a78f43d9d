"""Disclosure control for models: what a site may release while a model is fitted.

Why
---
The sums a site releases for a GLM step are aggregates, but aggregates of a regression can
reveal patients (the threats and why each rule answers one are in docs/decisions/models.md;
the rules follow DataSHIELD's disclosure settings, Gaye et al., *Int J Epidemiol* 43(6),
2014, ``nfilter.subset``, ``nfilter.glm``, ``nfilter.tab``, and the guards of vantage6's
``v6-glm``). Each rule is a pure function the site calls before anything leaves:

1. **Minimum rows** (:func:`check_design`): a model on a handful of patients gives their
   values away (two patients' ``XᵀX`` and ``Xᵀy`` are two ages and two outcomes).
2. **Parameters at most a fraction of n** (DataSHIELD's ``nfilter.glm`` = 0.33): a
   saturated model (``p`` near ``n``) interpolates, so ``(XᵀX)⁻¹Xᵀy`` *is* the outcome of
   every patient whose covariates the coordinator knows.
3. **Levels with 0 or at least the minimum cell count**: every level of a categorical
   covariate, every value of a binary (0/1 or two-valued) covariate and of a two-valued
   outcome; otherwise ``XᵀWX`` shows a count below the limit and the score the outcome
   (or covariates) of those few patients.
4. **A cap on requests per model per round** (:func:`check_request`): every step at
   coefficients of the coordinator's choosing is a new probe of the data; the cap bounds
   how many it gets.
5. **Coefficients finite and bounded** (:func:`check_request`): with a logit or log link the
   weights depend on the coefficients, and extreme coefficients concentrate them on a few
   patients (``β_age = 40`` per year puts all weight on patients of one exact age), so each
   standardised slope ``|β_j| sd_j`` and the linear predictor at the covariate means must be
   moderate. The identity link's sums do not depend on the coefficients (only finiteness is
   checked).
6. **Differencing** (:func:`check_release`): two releases over almost the same patients (the
   next month's data with one more patient, or a model on a subset) differ by those
   patients' contributions; ``n`` must equal an earlier release's or differ from it by at
   least the minimum cell count (as the estimate guard's rules 3 and 5).

A violated rule returns a :class:`fedsynth.effects.Refusal` (never raises) whose reason
names the rule and the limit, never a count. Thresholds are :class:`ModelLimits`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedsynth.effects.results import Refusal
from fedsynth.errors import InputError
from fedsynth.models.coding import Design
from fedsynth.models.spec import INTERCEPT

__all__ = ["ModelLimits", "check_design", "check_request", "check_release", "MODEL_REFUSAL_CODES"]

#: Machine codes of the refusals of this module.
MODEL_REFUSAL_CODES = ("disclosure_min_n", "disclosure_parameters", "disclosure_min_cell",
                       "disclosure_iterations", "disclosure_coefficients",
                       "disclosure_differencing", "invalid_request")


@dataclass(frozen=True)
class ModelLimits:
    """A site's disclosure limits for models (safe defaults; DataSHIELD-like).

    Attributes
    ----------
    min_rows
        Fewest complete rows a model may rest on (default 20, the site's ``min_n``).
    max_parameter_fraction
        Most coefficients as a fraction of the rows (default 0.33, DataSHIELD's
        ``nfilter.glm``); 1.0 only forbids more coefficients than rows.
    min_cell_count
        Every level of a categorical or binary covariate and of a two-valued outcome holds
        0 or at least this many rows (default 5, the site's ``min_cell_count``).
    max_iterations
        Most steps the site answers per model per round, all fits of the model together
        (default 30: a one-stage and a stratified fit take 6 to 10 each).
    max_standardized_coefficient
        Largest ``|β_j| × sd_j`` a requested slope may have, ``sd_j`` the covariate's
        standard deviation at the site (default 10: an odds ratio of e^10 per SD).
    max_linear_predictor
        Largest ``|β_0 + Σ β_j mean_j|``, the linear predictor at the site's covariate
        means (default 30).
    """

    min_rows: int = 20
    max_parameter_fraction: float = 0.33
    min_cell_count: int = 5
    max_iterations: int = 30
    max_standardized_coefficient: float = 10.0
    max_linear_predictor: float = 30.0

    def __post_init__(self) -> None:
        for name in ("min_rows", "min_cell_count", "max_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"privacy.models.{name} must be an integer >= 1, got "
                                 f"{value!r}")
        value = self.max_parameter_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 < value <= 1:
            raise InputError("privacy.models.max_parameter_fraction must be a number in "
                             f"(0, 1], got {value!r}")
        for name in ("max_standardized_coefficient", "max_linear_predictor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not (value > 0 and math.isfinite(value)):
                raise InputError(f"privacy.models.{name} must be a finite number > 0, got "
                                 f"{value!r}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None, **defaults: Any) -> ModelLimits:
        """Build from a ``[privacy.models]`` table; unknown keys are an error.

        ``defaults`` (e.g. ``min_rows=`` the site's ``min_n``, ``min_cell_count=``) fill
        keys the table does not set.
        """
        known = [f.name for f in fields(cls)]
        table = dict(table or {})
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise InputError(f"privacy.models: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(known)})")
        return cls(**{**defaults, **table})

    def to_dict(self) -> dict[str, Any]:
        """The limits as a ``[privacy.models]`` table (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _refuse(design: Design, code: str, reason: str) -> Refusal:
    return Refusal(analysis=design.model.name, code=code,
                   reason=f"suppressed by the site's disclosure control: {reason}")


def check_design(design: Design, limits: ModelLimits = ModelLimits()) -> Refusal | None:
    """Rules 1-3: decide whether this site may take part in fitting this model at all.

    Returns None when allowed, else a :class:`~fedsynth.effects.Refusal`.
    """
    if design.n < limits.min_rows:
        return _refuse(design, "disclosure_min_n", "the model rests on fewer rows than the "
                       f"minimum ({limits.min_rows})")
    if design.p > limits.max_parameter_fraction * design.n:
        return _refuse(design, "disclosure_parameters", "the model has too many "
                       f"coefficients for the rows (at most {limits.max_parameter_fraction:g}"
                       " x n), so it would nearly interpolate the patients' values")
    for column, counts in design.level_counts.items():
        if any(0 < int(c) < limits.min_cell_count for c in counts.values()):
            role = "outcome" if column == design.model.outcome else "covariate"
            return _refuse(design, "disclosure_min_cell", f"a level of the {role} "
                           f"{column!r} holds fewer rows than the minimum cell count "
                           f"({limits.min_cell_count})")
    return None


def check_request(design: Design, coefficients: Mapping[str, Any] | None, answered: int,
                  limits: ModelLimits = ModelLimits()) -> Refusal | None:
    """Rules 4-5: decide whether the site may answer this step request.

    Parameters
    ----------
    design
        The site's design for the model.
    coefficients
        The request's coefficients (``None`` for the start step).
    answered
        Steps this site has already answered for this model in this round (all fits).
    limits
        The site's limits.
    """
    if answered >= limits.max_iterations:
        return _refuse(design, "disclosure_iterations", "the coordinator asked for more "
                       f"steps of this model in this round than the limit "
                       f"({limits.max_iterations})")
    if coefficients is None:
        return None
    if not isinstance(coefficients, Mapping) or set(coefficients) != set(design.names):
        return _refuse(design, "invalid_request", "the request's coefficients do not "
                       "match the model's")
    try:
        beta = np.array([float(coefficients[n]) for n in design.names])
    except (TypeError, ValueError):
        return _refuse(design, "invalid_request", "the request's coefficients are not "
                       "numbers")
    if not np.all(np.isfinite(beta)):
        return _refuse(design, "disclosure_coefficients", "a requested coefficient is not "
                       "finite")
    if design.model.family == "gaussian":
        # Identity link: XᵀWX does not depend on the coefficients and the score is
        # Xᵀy - XᵀXβ, so chosen coefficients reveal nothing beyond the start step.
        return None
    x = design.x
    slopes = [j for j, n in enumerate(design.names) if n != INTERCEPT]
    sd = x[:, slopes].std(axis=0) if design.n else np.zeros(len(slopes))
    if np.any(np.abs(beta[slopes]) * sd > limits.max_standardized_coefficient):
        return _refuse(design, "disclosure_coefficients", "a requested coefficient times "
                       "its covariate's standard deviation exceeds the limit "
                       f"({limits.max_standardized_coefficient:g}); such coefficients "
                       "concentrate the weights on a few patients")
    centre = float(x.mean(axis=0) @ beta) if design.n else 0.0
    if abs(centre) > limits.max_linear_predictor:
        return _refuse(design, "disclosure_coefficients", "the requested coefficients give "
                       "a linear predictor at the covariate means beyond the limit "
                       f"({limits.max_linear_predictor:g})")
    return None


def check_release(design: Design, earlier_n: Iterable[int],
                  limits: ModelLimits = ModelLimits()) -> Refusal | None:
    """Rule 6: differencing against earlier releases.

    Earlier releases are this round's other models and earlier rounds: ``n`` must equal
    each earlier ``n`` or differ by at least the minimum cell count.
    """
    n = design.n
    if any(0 < abs(n - int(old)) < limits.min_cell_count for old in earlier_n):
        return _refuse(design, "disclosure_differencing", "its rows differ from those of an "
                       "earlier release by fewer than the minimum cell count "
                       f"({limits.min_cell_count}), so subtracting the two would reveal "
                       "them")
    return None
