"""One call for a complete pooled analysis: pooling, the heterogeneity flag, diagnostics.

The coordinator calls :func:`analyse` for every analysis of a round, and ``fedsynth meta``
for every table it reads, so both report the same numbers with the same names. The
result's :meth:`AnalysisResult.to_dict` holds the pooled fields of
tests/data (metafor's names) at the top level, ``heterogeneity`` (the flag of
docs/architecture.md),
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

from fedsynth.errors import FedsynthError
from fedsynth.meta import diagnostics as diag
from fedsynth.meta.heterogeneity import (
    DEFAULT_I2_THRESHOLD,
    HeterogeneityFlag,
    assess_heterogeneity,
)
from fedsynth.meta.metareg import MetaRegressionResult, fit_rma, meta_regression
from fedsynth.meta.pooling import meta_analysis
from fedsynth.meta.stats import (
    as_batch,
    heterogeneity_indices,
    qprofile_tau2_ci,
    typical_variance,
)
from fedsynth.meta.subgroups import SubgroupResult, subgroup_analysis
from fedsynth.results import Interval, ResultMixin
from fedsynth.vocabulary import check_level

__all__ = ["AnalysisResult", "analyse"]

#: The optional sections of an analysis, in the order they are printed and serialised.
_SECTIONS = ("leave_one_out", "influence", "blup", "publication_bias", "cumulative",
             "subgroup", "meta_regression")


@dataclass(frozen=True)
class AnalysisResult(ResultMixin):
    """Everything fedsynth reports about one pooled analysis.

    Attributes
    ----------
    pooling
        The pooled fit (:class:`fedsynth.meta.PoolingResult`).
    heterogeneity
        The flag (:class:`~fedsynth.meta.heterogeneity.HeterogeneityFlag`).
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

    @property
    def level(self) -> float:
        """Confidence level of the pooled fit, in percent."""
        return float(self.pooling.level)

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence interval of the pooled effect."""
        return self.pooling.confidence_interval(confidence_level)

    def prediction_interval(self, confidence_level: float = 0.95) -> Interval | None:
        """Prediction interval for a new site's true effect (None for FE and k = 1)."""
        return self.pooling.prediction_interval(confidence_level)

    def text_sections(self, digits: int = 4) -> list[str]:
        """Readable blocks for the table output: the flag, then each computed section."""
        return _text_sections(self, digits)

    def summary(self, digits: int = 4) -> str:
        """The pooled summary, the flag and every computed section.

        The pooled summary followed by the flag and every computed section, as
        ``fedsynth meta`` prints one analysis.
        """
        return "\n\n".join([self.pooling.summary(), *self.text_sections(digits)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: pooled fields, ``heterogeneity``, then each computed section."""
        out = dict(_pooling_dict(self.pooling))
        out["heterogeneity"] = self.heterogeneity.to_dict()
        for name in _SECTIONS:
            section = getattr(self, name)
            if section is not None:
                out[name] = section.to_dict()
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def to_frame(self):
        """One row: the pooled fields and the flag's verdict.

        One row: the pooled fields and the flag's verdict (the sections have their own
        ``to_frame()``).
        """
        frame = self.pooling.to_frame()
        frame["flagged"] = self.heterogeneity.flagged
        frame["heterogeneity_level"] = self.heterogeneity.level
        frame["heterogeneity_sites"] = ";".join(self.heterogeneity.sites)
        return frame

    def forest(self, **options: Any):
        """Forest plot with the BLUPs (when computed) and subgroup blocks (when asked)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import forest_plot

        return forest_plot(self, **options)

    def funnel(self, **options: Any):
        """Funnel plot with the trim-and-fill sites (when the small-study tests ran)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import funnel_plot

        return funnel_plot(self, **options)


def _pooling_dict(pooling: Any) -> dict[str, Any]:
    to_dict = getattr(pooling, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"pooling result {type(pooling).__name__} has no to_dict()")


def analyse(yi: Any, vi: Any, *, labels: Sequence[Any] | None = None, method: str = "REML",
            test: str = "z", level: float = 0.95, i2_threshold: float = DEFAULT_I2_THRESHOLD,
            null_value: float = 0.0, diagnostics: bool = True,
            subgroup: Sequence[Any] | None = None, subgroup_name: str = "group",
            moderators: Mapping[str, Sequence[Any]] | None = None,
            cumulative_order: Sequence[int] | None = None,
            pooled: Any | None = None, cumulative_by: str | None = None,
            cumulative_values: Sequence[Any] | None = None) -> AnalysisResult:
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
        :func:`~fedsynth.meta.heterogeneity.assess_heterogeneity`).
    diagnostics
        Add leave-one-out, influence, BLUPs and the small-study tests to the result.
    subgroup, subgroup_name
        One group value per site: adds the ``subgroup`` section.
    moderators
        ``{name: values}`` of site-level moderators: adds ``meta_regression``.
    cumulative_order
        0-based order of the sites (in the federation: by round): adds ``cumulative``.
    cumulative_by, cumulative_values
        Name of the variable that gave ``cumulative_order`` and its value per site: the
        cumulative table states the order and shows that column.
    pooled
        An existing ``PoolingResult`` of exactly these data and settings (e.g. one row of
        a batch ``pool`` call) to reuse instead of pooling again.
    """
    level = check_level(level)
    if pooled is None:
        pooled = meta_analysis(yi, vi, labels=labels, method=method, test=test, level=level)
    y = np.asarray(pooled.yi, dtype=float)
    v = np.asarray(pooled.vi, dtype=float)
    if getattr(pooled, "labels", None) is not None:
        labs = list(pooled.labels)
    elif labels is not None:
        labs = [str(x) for x in labels]
    else:
        labs = [f"Study {i + 1}" for i in range(y.size)]
    k = y.size
    notes: list[str] = []
    meth = str(method).upper()
    tst = str(test).lower()

    infl = bl = refits = None
    if k >= 2:
        # the k deleted fits and the full fit, once, for influence and leave-one-out
        refits = diag.deleted_fits(y, v, method=meth)
        infl = diag.influence(y, v, labels=labs, method=meth, test=tst, refits=refits)
        # BLUPs from the pooled fit's own tau² (so they agree with it for every method)
        fit = fit_rma(y, v, None, method=meth, test=tst, level=level,
                      tau2=None if meth == "FE" else float(pooled.tau2), compute_r2=False)
        bl = diag.blup(y, v, labels=labs, level=level, fit=fit)
    flag = assess_heterogeneity(pooled, labels=labs, influence=infl, blup=bl,
                                i2_threshold=i2_threshold, null_value=null_value, level=level,
                                i2_ci=_i2_ci_if_missing(pooled, y, v, level))

    loo = pb = cum = sg = mr = None
    if diagnostics:
        if k >= 2:
            loo = diag.leave_one_out(y, v, labels=labs, method=meth, test=tst, level=level,
                                     refits=refits)
        else:
            notes.append("Leave-one-out, influence diagnostics and BLUPs need at least 2 "
                         "sites; k = 1.")
        if k >= 3:
            try:
                pb = diag.publication_bias(y, v, method=meth, test=tst)
            except FedsynthError as error:   # trim-and-fill that does not settle
                notes.append(f"Small-study tests skipped: {error}.")
        else:
            notes.append(f"Small-study tests (Egger, Begg, trim-and-fill) need at least 3 "
                         f"sites; k = {k}.")
    if cumulative_order is not None:
        cum = diag.cumulative(y, v, cumulative_order, labels=labs, method=meth, test=tst,
                              level=level, order_by=cumulative_by,
                              order_values=cumulative_values)
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
    batch = as_batch(y, v)
    qp = qprofile_tau2_ci(batch, level=level)
    vt = typical_variance(batch)
    low, _ = heterogeneity_indices(qp.low, vt)
    high, _ = heterogeneity_indices(qp.high, vt)
    return Interval(float(low[0]), float(high[0]), level=check_level(level) / 100.0)


# ---------------------------------------------------------------------------------------
# text blocks for the table output (each section's own summary)
# ---------------------------------------------------------------------------------------


def _text_sections(res: AnalysisResult, d: int) -> list[str]:
    blocks: list[str] = [res.heterogeneity.summary(d)]
    for name in _SECTIONS:
        section = getattr(res, name)
        if section is not None:
            blocks.append(section.summary(d))
    for note in res.notes:
        blocks.append(f"Note: {note}")
    return blocks
