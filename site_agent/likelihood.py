"""The site's released likelihoods: ``release = "likelihood"`` analyses of a round.

Why
---
An analysis may ask the sites for an approximation of their profile log-likelihood of
the exposure's coefficient instead of ``(yi, vi)`` (``fedsynth.spec``, issue 15): a site
with no events in one arm has no finite estimate, so it is dropped by the normal
approximation, but its likelihood still rules out large effects in one direction
(Schuemie et al., *Stat Methods Med Res* 31(3), 2022). This module computes, on the
site's own rows, the profile likelihood of the analysis's parameter with
:mod:`fedsynth.effects.likelihood` (the 2x2 table's log odds ratio, the exposure's
coefficient of a logistic or Cox model with the other coefficients profiled out) and
fits the released form the spec names. The rows are read as for the regression
estimators: the whole file, or only the analysis's columns streamed from a database.

Whether the result may leave the site is decided afterwards by
:func:`site_agent.privacy.guard` (the min-cell rule applied to likelihoods: by default a
likelihood is released only for an adjusted model whose exposure x outcome cells all
pass the limit; the site's policy may allow more, explicitly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.effects.likelihood import LikelihoodApproximation, approximate, profiler
from fedsynth.effects.patient_level import (  # the estimators' own row handling
    Refuse,
    _binary,
    _complete,
    _design,
    _implied_table_cells,
    _require_both_groups,
    _require_rows,
    _roles,
)
from fedsynth.effects.results import Refusal
from fedsynth.errors import InputError
from fedsynth.spec import AnalysisSpec
from site_agent.connectors.sql import SqlSource
from site_agent.data import load_table

__all__ = ["LikelihoodRelease", "likelihood", "likelihoods_from_data"]


@dataclass(frozen=True)
class LikelihoodRelease:
    """A site's likelihood for one analysis, before disclosure control.

    Attributes
    ----------
    analysis, estimator
        The analysis and its estimator (``two_by_two``, ``logistic``, ``cox``).
    kind
        The profile's kind for :func:`fedsynth.effects.likelihood.check_release`
        (``two_by_two``, ``logistic``, ``cox``).
    approximation
        The released form (grid with gradients, custom or normal).
    n, n_dropped
        Complete rows used and rows dropped for missing values.
    adjusted
        Whether the model has covariates (an unadjusted model's likelihood determines the
        exposure x outcome counts).
    cells
        The exposure x outcome table and the outcome's margins (kept at the site for
        disclosure control; never sent).
    details
        The columns used (as :attr:`fedsynth.effects.Estimate.details`).
    """

    analysis: str
    estimator: str
    kind: str
    approximation: LikelihoodApproximation
    n: int
    adjusted: bool
    n_dropped: int = 0
    cells: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    refused = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", MappingProxyType(
            {k: int(v) for k, v in dict(self.cells).items()}))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def likelihood(self) -> dict[str, Any]:
        """The numbers that leave the site (the approximation's ``to_dict``)."""
        return self.approximation.to_dict()

    @property
    def form(self) -> str:
        """The released form's name."""
        return self.approximation.form

    @property
    def estimate(self) -> float:
        """The site's maximum-likelihood estimate (``nan`` for a monotone likelihood)."""
        return float(self.approximation.estimate)

    def to_dict(self) -> dict[str, Any]:
        """What the site sends: the approximation and ``n`` (never the cells)."""
        return {"likelihood": self.likelihood, "n": self.n}


def _profile(data: pd.DataFrame, a: AnalysisSpec) -> tuple[Any, dict[str, int]]:
    """The profile likelihood of ``a`` on complete rows ``data`` and the table's cells."""
    exposure = a.required("exposure")
    if a.estimator == "cox":
        outcome = a.required("event")
        time = data[a.required("time")].to_numpy(dtype=float)
        if np.any(time < 0):
            raise Refuse("negative_time", column=a.required("time"))
    else:
        outcome = a.required("outcome")
    y = _binary(data[outcome].to_numpy(), outcome, "outcome")
    e = _binary(data[exposure].to_numpy(), exposure, "exposure")
    cells = _implied_table_cells(y.astype(float), e)
    _require_both_groups(e, exposure, cells)
    if cells["events"] == 0 or (a.estimator != "cox" and cells["non_events"] == 0):
        raise Refuse("no_events", column=outcome, cells=cells, n=len(data))
    z = None
    if a.covariates:
        z = _design(data, list(a.covariates), intercept=False, cells=cells,
                    categorical=a.categorical)
        # the exposure with the covariates must be identified (as the estimators check)
        _design(data, [exposure, *a.covariates], intercept=a.estimator != "cox",
                cells=cells, categorical=a.categorical)
    if a.estimator == "two_by_two":
        return profiler("two_by_two", ai=cells["ai"], bi=cells["bi"], ci=cells["ci"],
                        di=cells["di"]), cells
    if a.estimator == "logistic":
        return profiler("logistic", outcome=y, exposure=e, covariates=z), cells
    return profiler("cox", time=time, event=y, exposure=e, covariates=z,
                    ties=a.ties or "efron"), cells


def likelihood(df: pd.DataFrame, a: AnalysisSpec) -> LikelihoodRelease | Refusal:
    """The released likelihood of analysis ``a`` on the site's rows ``df``, or a refusal.

    Never raises for a data problem: a missing column, no events at all (a flat
    likelihood), collinear covariates or a failed fit become a :class:`Refusal` worded
    from the fixed vocabulary, with its counts kept for disclosure control.
    """
    if not a.wants_likelihood:
        raise InputError(f"analysis {a.name!r}: release is not \"likelihood\"")
    try:
        data, dropped = _complete(df, a)
        _require_rows(len(data), len(a.covariates) + 4)
        prof, cells = _profile(data, a)
        approx = approximate(prof, a.likelihood_form or "grid_with_gradients")
    except Refuse as refusal:
        return refusal.refusal(a)
    except InputError as error:
        text = str(error)
        key = ("singular" if "collinear" in text or "identified" in text
               else "not_converged")
        return Refusal.of(key, a.name, estimator=a.estimator, detail=text,
                          details=_roles(a))
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError,
            OverflowError) as error:
        return Refusal.of("numerical_failure", a.name, estimator=a.estimator,
                          detail=f"{type(error).__name__}: {error}", details=_roles(a))
    if not all(math.isfinite(v) for v in np.ravel(approx(np.linspace(-3, 3, 7)))):
        return Refusal.of("numerical_failure", a.name, estimator=a.estimator,
                          detail="the approximation is not finite", details=_roles(a))
    return LikelihoodRelease(
        analysis=a.name, estimator=a.estimator, kind=prof.kind, approximation=approx,
        n=len(data), adjusted=bool(a.covariates), n_dropped=dropped, cells=cells,
        details={**_roles(a), "form": approx.form,
                 "parameter": "log HR" if a.estimator == "cox" else "log OR"})


def likelihoods_from_data(data: Any, analyses: Sequence[AnalysisSpec]
                          ) -> dict[str, LikelihoodRelease | Refusal]:
    """The likelihoods of ``analyses`` from a site's ``[data]`` settings (file or database).

    From a database only the analyses' columns are fetched (as for the regression
    estimators, :mod:`site_agent.connectors.pushdown`).
    """
    if not analyses:
        return {}

    def get(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    path, url = get("path"), get("url")
    if (path is None) == (url is None):
        raise InputError(f"[data] needs exactly one of 'path' and 'url' "
                         f"(got path={path!r}, url={'<set>' if url else None})")
    if url is None:
        frame = load_table(path)
    else:
        source = SqlSource(str(url), table=get("table"), query=get("query"))
        try:
            present = set(source.columns())
            wanted = list(dict.fromkeys(c for a in analyses for c in a.columns
                                        if c in present))
            arrays = source.fetch_columns(wanted,
                                          analysis=", ".join(a.name for a in analyses))
            frame = pd.DataFrame(arrays, columns=wanted)
        finally:
            source.dispose()
    return {a.name: likelihood(frame, a) for a in analyses}
