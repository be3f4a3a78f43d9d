"""Subgroup analysis: whether the pooled effect differs between groups of sites.

Two complementary answers, both reported (Borenstein et al. 2009, *Introduction to
Meta-Analysis*, ch. 19; Viechtbauer 2010, J. Stat. Softw. 36(3)):

1. a separate random-effects fit per level (each group has its own tau²), and the
   between-group Q test on the subgroup estimates (a fixed-effect Q of the group
   estimates with their squared standard errors, G - 1 df), as R's ``meta`` does;
2. the mixed-effects model ``rma(yi, vi, mods = ~ factor(group))`` with one common
   residual tau², whose omnibus QM test asks whether the group means differ.

The separate fits are one vectorised batch call (a mask per level).
Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.meta import stats as st
from fedsynth.meta._format import f, grid, peq
from fedsynth.meta.metareg import (
    _json_safe,
    design_matrix,
    fit_batch,
    fit_rma,
    validate_yi_vi,
)
from fedsynth.results import Interval, ResultMixin, check_fraction
from fedsynth.vocabulary import check_level

__all__ = ["SubgroupFit", "SubgroupResult", "subgroup_analysis"]


@dataclass(frozen=True)
class SubgroupFit(ResultMixin):
    """The random-effects fit of one level of the grouping variable (z intervals)."""

    group: str
    k: int
    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    tau2: float
    I2: float
    Q: float
    sites: tuple[str, ...]
    level: float = 95.0

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence interval of this group's pooled effect (normal quantiles)."""
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        half = float(st.norm_ppf(1 - (1 - level) / 2)) * self.se
        return Interval(self.estimate - half, self.estimate + half, level=level)

    def summary(self, digits: int = 4) -> str:
        """One line: the group's k, estimate, CI, tau² and I²."""
        d = digits
        return (f"{self.group}: k = {self.k}, estimate {f(self.estimate, d)} "
                f"(se {f(self.se, d)}, {self.level:g}% CI {f(self.ci_lb, d)} to "
                f"{f(self.ci_ub, d)}), tau^2 = {f(self.tau2, d)}, I^2 = {f(self.I2, 2)}%")

    def to_dict(self) -> dict[str, Any]:
        """JSON form of this group's fit, NaN as None."""
        return _json_safe({"group": self.group, "k": self.k, "estimate": self.estimate,
                           "se": self.se, "ci_lb": self.ci_lb, "ci_ub": self.ci_ub,
                           "tau2": self.tau2, "I2": self.I2, "Q": self.Q,
                           "sites": list(self.sites)})


@dataclass(frozen=True)
class SubgroupResult(ResultMixin):
    """Per-level fits, the between-group test, and the common-tau² moderator model.

    Attributes
    ----------
    groups
        One :class:`SubgroupFit` per level, levels in sorted order.
    Q_between_separate_tau2, Q_between_df, Q_between_pval
        Test that the subgroup estimates are equal, with a separate tau² per group.
    common_tau2_QM, common_tau2_QMp, common_tau2
        Omnibus test of the group dummies in the mixed-effects model with one common
        tau², and that tau².
    common_tau2_knha_F, common_tau2_knha_Fp
        The same test with the Knapp-Hartung F (df G - 1 and k - G), better calibrated
        with few sites; ``None`` when k = G.
    yi, vi, labels, group_of_site, method, level
        The data and settings of the analysis (for the forest plot).
    """

    variable: str
    groups: tuple[SubgroupFit, ...]
    Q_between_separate_tau2: float
    Q_between_df: int
    Q_between_pval: float
    common_tau2_QM: float
    common_tau2_QMp: float
    common_tau2: float
    common_tau2_knha_F: float | None = None
    common_tau2_knha_Fp: float | None = None
    yi: np.ndarray | None = field(default=None, repr=False)
    vi: np.ndarray | None = field(default=None, repr=False)
    labels: tuple[str, ...] | None = field(default=None, repr=False)
    group_of_site: tuple[str, ...] | None = field(default=None, repr=False)
    method: str = "REML"
    level: float = 95.0

    def summary(self, digits: int = 4) -> str:
        """Per-group fits and both tests of subgroup differences.

        Per-group fits and both tests of subgroup differences, as ``fedsynth meta
        --subgroup`` prints them.
        """
        d = digits
        rows = [[g.group, str(g.k), f(g.estimate, d), f(g.se, d), f(g.ci_lb, d),
                 f(g.ci_ub, d), f(g.tau2, d), f(g.I2, 2), f(g.Q, d)] for g in self.groups]
        knha = (f"; Knapp-Hartung F({self.Q_between_df}, "
                f"{sum(g.k for g in self.groups) - len(self.groups)})"
                f" = {f(self.common_tau2_knha_F, d)}, p {peq(self.common_tau2_knha_Fp, d)}"
                if self.common_tau2_knha_F is not None else "")
        return "\n".join([
            f"Subgroups by {self.variable} (separate tau^2 per group):",
            *grid([self.variable, "k", "estimate", "se", "ci.lb", "ci.ub", "tau^2",
                   "I^2(%)", "Q"], rows),
            f"Test of subgroup differences (separate tau^2): Q(df = {self.Q_between_df}) = "
            f"{f(self.Q_between_separate_tau2, d)}, p {peq(self.Q_between_pval, d)}",
            f"Mixed-effects model (common tau^2 = {f(self.common_tau2, d)}): QM(df = "
            f"{self.Q_between_df}) = {f(self.common_tau2_QM, d)}, "
            f"p {peq(self.common_tau2_QMp, d)}" + knha])

    def to_frame(self):
        """One row per group: k, estimate, se, confidence bounds, tau², I², Q."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        rows = [{key: value for key, value in g.to_dict().items() if key not in ("group",
                                                                               "sites")}
                for g in self.groups]
        return pd.DataFrame(rows, index=pd.Index([g.group for g in self.groups],
                                                 name=self.variable))

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of the groups' pooled effects (arrays, groups in order)."""
        cis = [g.confidence_interval(confidence_level) for g in self.groups]
        return Interval(np.array([c.low for c in cis]), np.array([c.high for c in cis]),
                        level=cis[0].level)

    def forest(self, **options: Any):
        """Forest plot in blocks, one diamond per group (``fedsynth.plots``)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import forest_plot

        return forest_plot(self, **options)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: every group's fit and the tests of subgroup differences, NaN as None."""
        return _json_safe({"variable": self.variable, "groups": [g.to_dict() for g in self.groups],
                "Q_between_separate_tau2": self.Q_between_separate_tau2,
                "Q_between_df": self.Q_between_df, "Q_between_pval": self.Q_between_pval,
                "common_tau2_QM": self.common_tau2_QM, "common_tau2_QMp": self.common_tau2_QMp,
                "common_tau2": self.common_tau2,
                "common_tau2_knha_F": self.common_tau2_knha_F,
                "common_tau2_knha_Fp": self.common_tau2_knha_Fp})


def subgroup_analysis(yi: Any, vi: Any, group: Sequence[Any], *,
                      labels: Sequence[Any] | None = None, variable: str = "group",
                      method: str = "REML", level: float = 0.95) -> SubgroupResult:
    """Subgroup analysis of the sites by the levels of ``group``.

    Raises :class:`InputError` when there are fewer than two levels or a value is missing.
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    level = check_level(level)
    k = y.size
    raw = [None if x is None else str(x) for x in group]
    if len(raw) != k:
        raise InputError(f"{variable}: {len(raw)} values for {k} studies")
    missing = [i for i, x in enumerate(raw)
               if x is None or x.strip() == "" or x.lower() == "nan"]
    if missing:
        raise InputError(f"{variable}: missing value in row {missing[0]}")
    g = [str(x) for x in raw]
    levels = sorted(set(g))
    if len(levels) < 2:
        raise InputError(f"{variable}: a single level ({levels[0]!r}); subgroups need two or "
                         "more")
    labs = tuple(str(x) for x in labels) if labels is not None else tuple(
        f"Study {i + 1}" for i in range(k))
    mask = np.array([[x == lvl for x in g] for lvl in levels])
    fit = fit_batch(y, v, mask, method=method)
    crit = float(st.norm_ppf(1 - (1 - level / 100) / 2))
    fits = tuple(
        SubgroupFit(group=lvl, k=int(fit.k[j]), estimate=float(fit.estimate[j]),
                    se=float(fit.se[j]), ci_lb=float(fit.estimate[j] - crit * fit.se[j]),
                    ci_ub=float(fit.estimate[j] + crit * fit.se[j]), tau2=float(fit.tau2[j]),
                    I2=float(fit.I2[j]), Q=float(fit.Q[j]),
                    sites=tuple(labs[i] for i in np.flatnonzero(mask[j])), level=level)
        for j, lvl in enumerate(levels))
    # between-group heterogeneity of the subgroup estimates (fixed-effect Q)
    w = 1.0 / fit.se**2
    mu = float(np.sum(w * fit.estimate) / np.sum(w))
    q_between = float(np.sum(w * (fit.estimate - mu) ** 2))
    df = len(levels) - 1
    X, _ = design_matrix({variable: g}, k, categorical=(variable,))
    if k <= X.shape[1]:
        raise InputError(f"{variable}: {len(levels)} levels for {k} sites leave no residual "
                         "degrees of freedom for the common-tau² model")
    common = fit_rma(y, v, X, method=method, compute_r2=False)
    return SubgroupResult(
        variable=variable, groups=fits, Q_between_separate_tau2=q_between, Q_between_df=df,
        Q_between_pval=float(st.chi2_sf(q_between, df)),
        common_tau2_QM=float(common.QM or 0.0), common_tau2_QMp=float(common.QMp or 1.0),
        common_tau2=float(common.tau2), common_tau2_knha_F=common.knha_F,
        common_tau2_knha_Fp=common.knha_Fp, yi=y, vi=v, labels=labs,
        group_of_site=tuple(str(x) for x in g), method=str(method).upper(), level=level)
