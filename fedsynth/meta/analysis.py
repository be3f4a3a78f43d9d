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
from fedsynth.meta.subgroups import SubgroupResult, subgroup_analysis

__all__ = ["AnalysisResult", "analyse"]


@dataclass(frozen=True)
class AnalysisResult:
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

    def confidence_interval(self) -> Any:
        """Confidence interval of the pooled effect."""
        return self.pooling.confidence_interval()

    def text_sections(self, digits: int = 4) -> list[str]:
        """Readable blocks for the table output: the flag, then each computed section."""
        return _text_sections(self, digits)

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
            cumulative_order: Sequence[int] | None = None,
            pooled: Any | None = None) -> AnalysisResult:
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
    pooled
        An existing ``PoolingResult`` of exactly these data and settings (e.g. one row of
        a batch ``pool`` call) to reuse instead of pooling again.
    """
    from fedsynth.meta.pooling import meta_analysis

    if pooled is None:
        pooled = meta_analysis(yi, vi, labels=labels, method=method, test=test, level=level)
    y = np.asarray(pooled.yi, dtype=float)
    v = np.asarray(pooled.vi, dtype=float)
    labs = list(pooled.labels) if getattr(pooled, "labels", None) is not None else (
        [str(x) for x in labels] if labels is not None else [f"Study {i + 1}" for i in range(y.size)])
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
        fit = fit_rma(y, v, None, method="FE", test=tst, level=level, tau2=float(pooled.tau2),
                      compute_r2=False)
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
                              level=level)
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
    from fedsynth.meta.pooling import ConfidenceInterval
    from fedsynth.meta.stats import (
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


# ---------------------------------------------------------------------------------------
# text blocks for the table output (pure string formatting)
# ---------------------------------------------------------------------------------------


def _f(x: Any, digits: int) -> str:
    if x is None:
        return "NA"
    x = float(x)
    return "NA" if not np.isfinite(x) else f"{x:.{digits}f}"


def _p(x: Any, digits: int) -> str:
    if x is None or not np.isfinite(float(x)):
        return "NA"
    floor = 10.0 ** (-digits)
    return "<" + f"{floor:.{digits}f}".lstrip("0") if float(x) < floor else f"{float(x):.{digits}f}"


def _peq(x: Any, digits: int) -> str:
    """``= 0.1234`` or ``< .0001`` for a p-value in a sentence."""
    text = _p(x, digits)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return out


def _text_sections(res: AnalysisResult, d: int) -> list[str]:
    blocks: list[str] = []
    h = res.heterogeneity
    lines = ["Heterogeneity flag:"]
    if h.flagged:
        lines.append(f"FLAGGED ({h.level}): one pooled estimate may mislead.")
        lines.extend(f"- {r}" for r in h.reasons)
        lines.append("Sites driving it: " + (", ".join(h.sites) if h.sites else "none singled out"))
    else:
        ci = (f" (CI {_f(h.I2_ci_lb, 2)}% to {_f(h.I2_ci_ub, 2)}%)"
              if h.I2_ci_lb is not None else "")
        p = res.pooling
        pi = (f"the prediction interval ({_f(p.pi_lb, d)} to {_f(p.pi_ub, d)}) leads to the "
              f"same conclusion about the null ({h.null_value:g}) as the confidence interval"
              if np.isfinite(float(p.pi_lb)) else "there is no prediction interval (fixed effect)")
        lines.append(f"not flagged: I^2 = {_f(h.I2, 2)}%{ci} is below the "
                     f"{h.i2_threshold:g}% threshold, and {pi}.")
    blocks.append("\n".join(lines))
    if res.leave_one_out is not None:
        r = res.leave_one_out
        rows = [[lab, _f(r.estimate[i], d), _f(r.se[i], d), _f(r.ci_lb[i], d), _f(r.ci_ub[i], d),
                 _f(r.tau2[i], d), _f(r.I2[i], 2), _f(r.Q[i], d)] for i, lab in enumerate(r.labels)]
        blocks.append("\n".join(["Leave-one-out (each row: the analysis without that site):",
                                 *_grid(["omitted", "estimate", "se", "ci.lb", "ci.ub", "tau^2",
                                         "I^2(%)", "Q"], rows)]))
    if res.influence is not None:
        r = res.influence
        rows = [[lab, _f(r.rstudent[i], d), _f(r.dffits[i], d), _f(r.cooks_distance[i], d),
                 _f(r.cov_ratio[i], d), _f(r.tau2_deleted[i], d), _f(r.Q_deleted[i], d),
                 _f(r.hat[i], d), _f(r.weight_percent[i], 2), "*" if r.influential[i] else ""]
                for i, lab in enumerate(r.labels)]
        blocks.append("\n".join(["Influence diagnostics (* = influential by metafor's rule):",
                                 *_grid(["site", "rstudent", "dffits", "cook.d", "cov.r",
                                         "tau2.del", "QE.del", "hat", "weight", "inf"], rows)]))
    if res.blup is not None:
        r = res.blup
        rows = [[lab, _f(r.pred[i], d), _f(r.se[i], d), _f(r.pi_lb[i], d), _f(r.pi_ub[i], d)]
                for i, lab in enumerate(r.labels)]
        blocks.append("\n".join(["Site-specific estimates (BLUPs, shrunken towards the pooled effect):",
                                 *_grid(["site", "pred", "se", "pi.lb", "pi.ub"], rows)]))
    if res.publication_bias is not None:
        r = res.publication_bias
        blocks.append("\n".join([
            "Small-study effects:",
            f"Egger's test (mixed-effects, predictor sei): z = {_f(r.egger_rma_stat, d)}, "
            f"p {_peq(r.egger_rma_pval, d)}; limit estimate {_f(r.egger_rma_limit, d)}",
            f"Egger's test (classical regression): t({r.egger_lm_df}) = {_f(r.egger_lm_stat, d)}, "
            f"p {_peq(r.egger_lm_pval, d)}",
            f"Begg's rank test: Kendall's tau = {_f(r.rank_tau, d)}, p {_peq(r.rank_pval, d)}",
            f"Trim-and-fill (L0): {r.trimfill_k0} site(s) estimated missing on the "
            f"{r.trimfill_side} side; adjusted estimate {_f(r.trimfill_estimate, d)} "
            f"(se = {_f(r.trimfill_se, d)})"]))
    if res.cumulative is not None:
        r = res.cumulative
        rows = [[lab, str(int(r.k[i])), _f(r.estimate[i], d), _f(r.se[i], d), _f(r.ci_lb[i], d),
                 _f(r.ci_ub[i], d), _f(r.tau2[i], d), _f(r.I2[i], 2)] for i, lab in enumerate(r.labels)]
        blocks.append("\n".join(["Cumulative meta-analysis (in the given order):",
                                 *_grid(["added", "k", "estimate", "se", "ci.lb", "ci.ub", "tau^2",
                                         "I^2(%)"], rows)]))
    if res.subgroup is not None:
        r = res.subgroup
        rows = [[g.group, str(g.k), _f(g.estimate, d), _f(g.se, d), _f(g.ci_lb, d), _f(g.ci_ub, d),
                 _f(g.tau2, d), _f(g.I2, 2), _f(g.Q, d)] for g in r.groups]
        blocks.append("\n".join([
            f"Subgroups by {r.variable} (separate tau^2 per group):",
            *_grid([r.variable, "k", "estimate", "se", "ci.lb", "ci.ub", "tau^2", "I^2(%)", "Q"], rows),
            f"Test of subgroup differences (separate tau^2): Q(df = {r.Q_between_df}) = "
            f"{_f(r.Q_between_separate_tau2, d)}, p {_peq(r.Q_between_pval, d)}",
            f"Mixed-effects model (common tau^2 = {_f(r.common_tau2, d)}): QM(df = "
            f"{r.Q_between_df}) = {_f(r.common_tau2_QM, d)}, p {_peq(r.common_tau2_QMp, d)}"
            + (f"; Knapp-Hartung F({r.Q_between_df}, {sum(g.k for g in r.groups) - len(r.groups)})"
               f" = {_f(r.common_tau2_knha_F, d)}, p {_peq(r.common_tau2_knha_Fp, d)}"
               if r.common_tau2_knha_F is not None else "")]))
    if res.meta_regression is not None:
        r = res.meta_regression
        rows = [[nm, _f(r.coef[i], d), _f(r.z_se[i], d), _f(r.z_stat[i], d), _p(r.z_pval[i], d),
                 _f(r.knha_se[i], d), _p(r.knha_pval[i], d)] for i, nm in enumerate(r.names)]
        knha = (f"; Knapp-Hartung F({r.QM_df}, {r.k - r.p}) = {_f(r.knha_F, d)}, "
                f"p {_peq(r.knha_Fp, d)}" if r.knha_F is not None else "")
        blocks.append("\n".join([
            f"Meta-regression (k = {r.k}; tau^2 estimator: {r.method}):",
            f"residual tau^2 = {_f(r.tau2, d)}, I^2 = {_f(r.I2, 2)}%, "
            f"R^2 = {_f(r.R2, 2)}% of tau^2 explained",
            f"Test for residual heterogeneity: QE(df = {r.QE_df}) = {_f(r.QE, d)}, p {_peq(r.QEp, d)}",
            f"Test of moderators: QM(df = {r.QM_df}) = {_f(r.QM, d)}, p {_peq(r.QMp, d)}{knha}",
            *_grid(["", "estimate", "se", "zval", "pval", "se.knha", "pval.knha"], rows)]))
    for note in res.notes:
        blocks.append(f"Note: {note}")
    return blocks
