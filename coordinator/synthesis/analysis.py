"""One call for a complete pooled analysis: pooling, the heterogeneity flag, diagnostics.

The coordinator calls :func:`analyse` for every analysis of a round, and ``fedsynth meta``
for every table it reads, so both report the same numbers with the same names. The
result's :meth:`AnalysisResult.to_dict` holds the pooled fields of
``shared/reference/README.md`` at the top level, ``heterogeneity`` (DESIGN.md's flag),
and, when requested, the sections ``leave_one_out``, ``influence``, ``blup``,
``publication_bias``, ``cumulative``, ``subgroup`` and ``meta_regression`` with the
reference's field names.

The site drivers of the flag need the influence diagnostics and the BLUPs, so those are
always computed (one batched refit of k masked analyses, cheap); ``diagnostics=True``
adds them, leave-one-out and the small-study tests to the output.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.synthesis import diagnostics as diag
from coordinator.synthesis.heterogeneity import (
    DEFAULT_I2_THRESHOLD,
    HeterogeneityFlag,
    assess_heterogeneity,
)
from coordinator.synthesis.metareg import MetaRegressionResult, fit_rma, meta_regression
from coordinator.synthesis.subgroups import SubgroupResult, subgroup_analysis

__all__ = ["AnalysisResult", "analyse"]


@dataclass(frozen=True)
class AnalysisResult:
    """Everything fedsynth reports about one pooled analysis.

    Attributes
    ----------
    pooling
        The pooled fit (:class:`coordinator.synthesis.PoolingResult`).
    heterogeneity
        The flag (:class:`~coordinator.synthesis.heterogeneity.HeterogeneityFlag`).
    leave_one_out, influence, blup, publication_bias, cumulative, subgroup, meta_regression
        Diagnostics; ``None`` when not requested or not computable (see ``notes``).
    notes
        Plain sentences on what was skipped and why (e.g. too few sites).
    """

    pooling: Any
    heterogeneity: HeterogeneityFlag
    leave_one_out: diag.LeaveOneOutResult | None = None
    influence: diag.InfluenceResult | None = None
    blup: diag.BlupResult | None = None
    publication_bias: diag.PublicationBiasResult | None = None
    cumulative: diag.CumulativeResult | None = None
    subgroup: SubgroupResult | None = None
    meta_regression: MetaRegressionResult | None = None
    notes: tuple[str, ...] = ()

    def confidence_interval(self) -> Any:
        """Confidence interval of the pooled effect."""
        return self.pooling.confidence_interval()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: pooled fields, ``heterogeneity``, then each computed section."""
        out = dict(_pooling_dict(self.pooling))
        out["heterogeneity"] = self.heterogeneity.to_dict()
        for name in ("leave_one_out", "influence", "blup", "publication_bias", "cumulative",
                     "subgroup", "meta_regression"):
            section = getattr(self, name)
            if section is not None:
                out[name] = section.to_dict()
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _pooling_dict(pooling: Any) -> dict[str, Any]:
    to_dict = getattr(pooling, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"pooling result {type(pooling).__name__} has no to_dict()")


def analyse(yi: Any, vi: Any, *, labels: Sequence[Any] | None = None, method: str = "REML",
            test: str = "z", level: float = 95.0, i2_threshold: float = DEFAULT_I2_THRESHOLD,
            null_value: float = 0.0, diagnostics: bool = True,
            subgroup: Sequence[Any] | None = None, subgroup_name: str = "group",
            moderators: Mapping[str, Sequence[Any]] | None = None,
            cumulative_order: Sequence[int] | None = None) -> AnalysisResult:
    """Pool one analysis, flag heterogeneity, and run the requested diagnostics.

    Parameters
    ----------
    yi, vi
        Site estimates and their sampling variances.
    labels
        Site names (used by the flag's ``sites`` and every per-site section).
    method, test, level
        Pooling settings (defaults REML, z, 95%), used by every refit too.
    i2_threshold, null_value
        Settings of the heterogeneity flag (see
        :func:`~coordinator.synthesis.heterogeneity.assess_heterogeneity`).
    diagnostics
        Add leave-one-out, influence, BLUPs and the small-study tests to the result.
    subgroup, subgroup_name
        One group value per site: adds the ``subgroup`` section.
    moderators
        ``{name: values}`` of site-level moderators: adds ``meta_regression``.
    cumulative_order
        0-based order of the sites (in the federation: by round): adds ``cumulative``.
    """
    from coordinator.synthesis.pooling import meta_analysis

    pooled = meta_analysis(yi, vi, labels=labels, method=method, test=test, level=level)
    y = np.asarray(pooled.yi, dtype=float)
    v = np.asarray(pooled.vi, dtype=float)
    labs = list(pooled.labels) if getattr(pooled, "labels", None) is not None else (
        [str(x) for x in labels] if labels is not None else [f"Study {i + 1}" for i in range(y.size)])
    k = y.size
    notes: list[str] = []
    meth = str(method).upper()
    tst = str(test).lower()

    infl = bl = None
    if k >= 2:
        infl = diag.influence(y, v, labels=labs, method=meth, test=tst)
        # BLUPs from the pooled fit's own tau² (so they agree with it for every method)
        fit = fit_rma(y, v, None, method="FE", test=tst, level=level, tau2=float(pooled.tau2),
                      compute_r2=False)
        bl = diag.blup(y, v, labels=labs, level=level, fit=fit)
    flag = assess_heterogeneity(pooled, labels=labs, influence=infl, blup=bl,
                                i2_threshold=i2_threshold, null_value=null_value, level=level,
                                i2_ci=_i2_ci_if_missing(pooled, y, v, level))

    loo = pb = cum = sg = mr = None
    if diagnostics:
        if k >= 3:
            loo = diag.leave_one_out(y, v, labels=labs, method=meth, test=tst, level=level)
            pb = diag.publication_bias(y, v, method=meth, test=tst)
        else:
            notes.append(f"Leave-one-out and small-study tests need at least 3 sites; k = {k}.")
        if k < 2:
            notes.append("Influence diagnostics and BLUPs need at least 2 sites.")
    if cumulative_order is not None:
        cum = diag.cumulative(y, v, cumulative_order, labels=labs, method=meth, level=level)
    if subgroup is not None:
        sg = subgroup_analysis(y, v, subgroup, labels=labs, variable=subgroup_name,
                               method=meth, level=level)
    if moderators:
        mr = meta_regression(y, v, moderators, method=meth, test=tst, level=level)
    if not diagnostics:
        infl_out = bl_out = None
    else:
        infl_out, bl_out = infl, bl
    return AnalysisResult(pooling=pooled, heterogeneity=flag, leave_one_out=loo,
                          influence=infl_out, blup=bl_out, publication_bias=pb, cumulative=cum,
                          subgroup=sg, meta_regression=mr, notes=tuple(notes))


def _i2_ci_if_missing(pooled: Any, y: np.ndarray, v: np.ndarray, level: float) -> Any | None:
    """The Q-profile interval of I² when the fit carries none (fixed-effect model).

    The Q-profile bounds of tau² do not depend on the tau² estimator (Viechtbauer 2007,
    Stat. Med. 26:37-52), so a fixed-effect analysis can still say whether its
    heterogeneity is strong; I² bounds follow from the tau² bounds and the typical
    within-site variance, as for the random-effects fits.
    """
    if getattr(pooled, "I2_ci", None) is not None or y.size < 2:
        return None
    from coordinator.synthesis.pooling import ConfidenceInterval
    from coordinator.synthesis.stats import (
        as_batch,
        heterogeneity_indices,
        qprofile_tau2_ci,
        typical_variance,
    )

    batch = as_batch(y, v)
    qp = qprofile_tau2_ci(batch, level=level)
    vt = typical_variance(batch)
    low, _ = heterogeneity_indices(qp.low, vt)
    high, _ = heterogeneity_indices(qp.high, vt)
    return ConfidenceInterval(float(low[0]), float(high[0]))
