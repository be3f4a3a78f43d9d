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

What a refusal says: a fixed vocabulary
---------------------------------------
A refusal's reason leaves the site, so it is a sentence of :data:`REFUSAL_VOCABULARY`, never
free text: the only words filled in are the analysis's column names and estimator as the
spec gives them, a role from a fixed list and the site's configured limits. An error's
full text (a database message quoting a patient's value, the operator's SQL query, the
table's column list, a Python exception) is kept in :attr:`Refusal.detail` for the site's
own log and audit log. :meth:`Refusal.public` renders the sentence from :attr:`Refusal.key`
and :attr:`Refusal.params` again, checking every filled-in word against the spec, and is
what the site agent sends (:func:`site_agent.privacy.release`); the refusal's counts
(:attr:`Refusal.cells`, :attr:`Refusal.n`) stay at the site for disclosure control, which
rewords a refusal caused by a count below the limit (``no events``, a zero cell) as a
disclosure-control suppression.
"""

from __future__ import annotations

import math
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy.special import ndtri

from fedsynth.results import Interval, check_fraction
from fedsynth.spec import ESTIMATORS

__all__ = ["Estimate", "Refusal", "EffectSizes", "REFUSAL_CODES", "PUBLIC_CODES",
           "REFUSAL_VOCABULARY", "ConfidenceInterval", "render_reason"]

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

#: Every code a refusal may carry when it leaves a site (estimators, policy, disclosure).
PUBLIC_CODES: tuple[str, ...] = (*REFUSAL_CODES, "policy", "disclosure_min_n",
                                 "disclosure_min_cell", "disclosure_linked_table",
                                 "disclosure_differencing", "refused")

#: The only sentences about a refused analysis that leave a site: ``key: (code, text)``.
#: Placeholders: ``{column}`` (a column the analysis names in the spec, quoted),
#: ``{estimator}`` (the spec's estimator), ``{role}`` (one of :data:`ROLES`) and the site's
#: configured limits ``{min_cell_count}``, ``{min_n}``, ``{max_analyses}``.
REFUSAL_VOCABULARY: Mapping[str, tuple[str, str]] = MappingProxyType({
    # the data cannot answer the analysis
    "missing_column": ("missing_column", "the data has no column {column}"),
    "not_numeric": ("invalid_values", "column {column} holds values that are not numbers"),
    "infinite_values": ("invalid_values", "column {column} holds infinite values"),
    "undeclared_level": ("invalid_values", "column {column} holds a value outside its "
                         "declared levels"),
    "database_values": ("invalid_values", "a column of this analysis does not hold the "
                        "values it needs (the database could not read it as numbers)"),
    "negative_time": ("invalid_values", "the time column {column} holds negative times"),
    "probability_open": ("invalid_values", "the score column {column} must hold predicted "
                         "probabilities strictly between 0 and 1"),
    "probability_closed": ("invalid_values", "the score column {column} must hold "
                           "predicted probabilities between 0 and 1"),
    "rom_non_positive": ("invalid_values", "ROM needs a positive mean of {column} in both "
                         "groups"),
    "non_binary": ("non_binary", "column {column} must be 0/1, but it holds other values"),
    "too_few_rows": ("too_few_rows", "too few complete rows for this analysis"),
    "too_few_per_group": ("too_few_rows", "each exposure group needs at least two rows for "
                          "a standard deviation"),
    "too_few_events": ("too_few_rows", "the DeLong variance needs at least two events and "
                       "two non-events"),
    "constant_exposure": ("constant_exposure", "the exposure column {column} takes a "
                          "single value, so there is nothing to compare"),
    "no_events": ("no_events", "column {column} has no events or only events"),
    "separation": ("separation", "the outcome is perfectly predicted (separation), so the "
                   "maximum likelihood estimate does not exist"),
    "zero_variance": ("zero_variance", "the estimate has no sampling variance (it is "
                      "determined exactly by the data)"),
    "constant_within_group": ("zero_variance", "the outcome column {column} is constant "
                              "within an exposure group"),
    "exact_fit": ("zero_variance", "the linear model fits the outcome exactly, so its "
                  "variance cannot be estimated"),
    "perfect_discrimination": ("zero_variance", "the score separates events from "
                               "non-events perfectly (AUC of 0 or 1)"),
    "not_converged": ("not_converged", "the {estimator} fit did not converge"),
    "monotone_likelihood": ("not_converged", "the Cox model did not converge (a covariate "
                            "may perfectly order the events: monotone likelihood)"),
    "numerical_failure": ("not_converged", "the {estimator} fit failed numerically"),
    "singular": ("singular", "the exposure and covariates are collinear (a covariate is "
                 "constant or a combination of the others), so the model is not identified"),
    "constant_score": ("singular", "the score column {column} is constant, so no slope "
                       "can be estimated"),
    "internal_error": ("internal_error", "the {estimator} estimator failed unexpectedly "
                       "(the details are in the site's log)"),
    # the site's policy (site_agent.policy)
    "policy_estimator": ("policy", "refused by site policy: estimator '{estimator}' is not "
                         "permitted"),
    "policy_column": ("policy", "refused by site policy: column {column} may not be used as "
                      "{role}"),
    "policy_max_analyses": ("policy", "refused by site policy: the round asks for more than "
                            "{max_analyses} analyses"),
    # disclosure control (site_agent.privacy)
    "disclosure_min_n": ("disclosure_min_n", "suppressed by the site's disclosure control: "
                         "the analysis rests on fewer patients than the minimum n ({min_n})"),
    "disclosure_min_cell": ("disclosure_min_cell", "suppressed by the site's disclosure "
                            "control: a count behind this analysis is below the minimum cell "
                            "count ({min_cell_count})"),
    "disclosure_linked_table": ("disclosure_linked_table", "suppressed by the site's "
                                "disclosure control: sent together with this site's other "
                                "estimates it could reveal a count below the minimum cell "
                                "count ({min_cell_count})"),
    "disclosure_differencing": ("disclosure_differencing", "suppressed by the site's "
                                "disclosure control: its patients differ from another "
                                "analysis's by fewer than the minimum cell count "
                                "({min_cell_count}), so subtracting the two would reveal "
                                "them"),
    "disclosure_differencing_rounds": ("disclosure_differencing", "suppressed by the site's "
                                       "disclosure control: its patients differ from those "
                                       "of an earlier round's release by fewer than the "
                                       "minimum cell count ({min_cell_count}), so subtracting "
                                       "the two would reveal them"),
    # released likelihoods (site_agent.privacy, rule 7)
    "likelihood_unadjusted": ("policy", "refused by site policy: the likelihood of a model "
                              "without covariates determines the exposure x outcome "
                              "counts, and the policy does not allow releasing it"),
    "disclosure_likelihood": ("disclosure_min_cell", "suppressed by the site's disclosure "
                              "control: a count of the exposure x outcome table behind this "
                              "likelihood is below the minimum cell count "
                              "({min_cell_count}), and the likelihood would reveal it"),
    "refused": ("refused", "the site does not answer this analysis"),
})

#: What each code says when a sentence cannot be filled in from the spec (a column the
#: spec does not name, an unknown key): a sentence with no placeholder.
_GENERIC: Mapping[str, str] = MappingProxyType({
    "missing_column": "the data lacks a column this analysis names",
    "invalid_values": "a column of this analysis holds values it cannot use",
    "non_binary": "a column of this analysis that must be 0/1 holds other values",
    "too_few_rows": "too few complete rows for this analysis",
    "constant_exposure": "the exposure takes a single value, so there is nothing to compare",
    "no_events": "the outcome has no events or only events",
    "separation": REFUSAL_VOCABULARY["separation"][1],
    "zero_variance": REFUSAL_VOCABULARY["zero_variance"][1],
    "not_converged": "the fit did not converge",
    "singular": "the model is not identified",
    "internal_error": "the estimator failed unexpectedly (the details are in the site's log)",
    "policy": "refused by site policy",
    "disclosure_min_n": "suppressed by the site's disclosure control",
    "disclosure_min_cell": "suppressed by the site's disclosure control",
    "disclosure_linked_table": "suppressed by the site's disclosure control",
    "disclosure_differencing": "suppressed by the site's disclosure control",
    "refused": REFUSAL_VOCABULARY["refused"][1],
})

#: The roles a policy refusal may name.
ROLES = ("an outcome", "an exposure", "a covariate")
_LIMITS = ("min_cell_count", "min_n", "max_analyses")
_FORMATTER = string.Formatter()


def _placeholders(template: str) -> list[str]:
    return [field_name for _, field_name, _, _ in _FORMATTER.parse(template) if field_name]


def _spec_estimators() -> Collection[str]:
    # The spec module defines the estimators; imported here, not at the top, because the
    # result types must stay importable on their own (fedsynth.effects.__init__).

    return ESTIMATORS


def _checked(name: str, value: Any, columns: Collection[str] | None) -> str | None:
    """The text a placeholder may show, or None when ``value`` is not allowed there."""
    if name == "column":
        if isinstance(value, str) and value and (columns is None or value in columns):
            return repr(value)         # quoted; repr escapes any control character
        return None
    if name == "estimator":
        return value if isinstance(value, str) and value in _spec_estimators() else None
    if name == "role":
        return value if value in ROLES else None
    if name in _LIMITS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return str(value) if ok else None
    return None


def render_reason(key: str | None, params: Mapping[str, Any] | None = None, *,
                  code: str | None = None, columns: Collection[str] | None = None
                  ) -> tuple[str, str]:
    """``(code, sentence)`` of a refusal, from the fixed vocabulary only.

    Parameters
    ----------
    key
        A key of :data:`REFUSAL_VOCABULARY`; when unknown, the generic sentence of ``code``
        is used (``"refused"`` for an unknown code).
    params
        Values of the sentence's placeholders. A column must be one of ``columns`` (the
        analysis's columns in the spec) when that is given, an estimator one of the spec's,
        a role one of :data:`ROLES`, a limit a non-negative integer; otherwise the code's
        generic sentence (no placeholder) is used.
    code
        The refusal's code, used only when ``key`` is not in the vocabulary.
    columns
        The columns the spec names for this analysis.
    """
    params = params or {}
    if key is not None and key in REFUSAL_VOCABULARY:
        code, template = REFUSAL_VOCABULARY[key]
        values = {name: _checked(name, params.get(name), columns)
                  for name in _placeholders(template)}
        if all(v is not None for v in values.values()):
            return code, template.format(**values)
    generic = code if code is not None and code in _GENERIC else "refused"
    return generic, _GENERIC[generic]


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
        that disclosure control must check, the exposure x outcome table (``ai``,
        ``bi``, ``ci``, ``di``, ``events``, ``non_events``) implied by any estimate of a 0/1
        outcome, e.g. a mean difference that is a risk difference, and for a score or
        outcome with few distinct values the smallest cell of its table with the other
        column (``table_min``) and its smallest level (``score_level_min``,
        ``outcome_level_min``). Kept at the site; never sent.
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
        z = float(ndtri(0.5 + level / 2))
        return Interval(self.yi - z * self.se, self.yi + z * self.se, level=level)

    def to_dict(self) -> dict[str, Any]:
        """What the site sends: ``yi, vi, se, n`` (never the cells or details)."""
        return {"yi": self.yi, "vi": self.vi, "se": self.se, "n": self.n}


@dataclass(frozen=True)
class Refusal:
    """An analysis the site does not answer, with a plain reason.

    Build one with :meth:`of` (a sentence of :data:`REFUSAL_VOCABULARY`); what leaves the
    site is :meth:`public`.

    Attributes
    ----------
    analysis
        The analysis name from the spec.
    reason
        A plain sentence for the report; it carries no small counts.
    code
        A short machine code (:data:`REFUSAL_CODES`, or the privacy guard's codes).
    key
        The sentence's key in :data:`REFUSAL_VOCABULARY` (None for a refusal built from
        free text: it is then sent as its code's generic sentence).
    params
        The words filled into the sentence (column, estimator, role, limits).
    detail
        The full local error (a database message, an exception): for the site's log and
        audit log only, never sent.
    cells
        Counts behind the refusal (``events = 0``, the cells of a table with a zero, group
        sizes), kept at the site for disclosure control, never sent.
    n
        Complete rows of the analysis when known (kept at the site, never sent).
    details
        The columns the analysis used (``outcome``, ``exposure``, ``score``, ``event``), as
        :attr:`Estimate.details`, so disclosure control can tell which table ``cells``
        belong to (kept at the site, never sent).
    """

    analysis: str
    reason: str
    code: str = "refused"
    key: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None
    cells: Mapping[str, int] = field(default_factory=dict)
    n: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _freeze(self.params))
        object.__setattr__(self, "details", _freeze(self.details))
        object.__setattr__(self, "cells", _freeze({k: int(v) for k, v in
                                                   dict(self.cells).items()}))
        if self.n is not None:
            object.__setattr__(self, "n", int(self.n))

    refused = True

    @classmethod
    def of(cls, key: str, analysis: str, *, detail: str | None = None,
           cells: Mapping[str, int] | None = None, n: int | None = None,
           details: Mapping[str, Any] | None = None, **params: Any) -> Refusal:
        """A refusal saying the vocabulary's sentence ``key`` about ``analysis``.

        Examples
        --------
        >>> Refusal.of("missing_column", "adj", column="bmi").reason
        "the data has no column 'bmi'"
        """
        code, reason = render_reason(key, params)
        return cls(analysis=analysis, reason=reason, code=code, key=key, params=params,
                   detail=detail, cells=cells or {}, n=n, details=details or {})

    def public(self, *, columns: Collection[str] | None = None) -> Refusal:
        """The refusal as it may leave the site.

        This refusal as it may leave the site: its sentence rendered again from the
        vocabulary, each filled-in column checked against ``columns`` (the analysis's
        columns in the spec). A free-text reason becomes the code's generic sentence and is
        kept, with :attr:`detail`, for the site's own log.
        """
        code, reason = render_reason(self.key, self.params, code=self.code, columns=columns)
        if reason == self.reason and code == self.code:
            return self
        local = "; ".join(t for t in (self.reason if self.reason != reason else None,
                                      self.detail) if t) or None
        return Refusal(analysis=self.analysis, reason=reason, code=code, key=self.key,
                       params=self.params, detail=local, cells=self.cells, n=self.n,
                       details=self.details)

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
        return np.sqrt(self.vi)

    def __len__(self) -> int:
        return len(self.yi)
