"""All fits of one model across sites: one-stage, stratified and two-stage, as a round has them.

Why
---
A round fits every ``[[model]]`` of its spec three ways (issue 13): the one-stage global
model (federated IRLS, equal to the GLM on all patients in one place), the stratified model
(an intercept per site, common slopes) and the two-stage analysis (each site's own fit,
pooled per coefficient and as one multivariate random-effects model). Comparing them is the
point: a coefficient whose two-stage I² is high, or site intercepts that differ far more
than their standard errors, says one global model is not enough (Debray et al., "Individual
participant data meta-analysis for a binary outcome: one-stage or two-stage?", PLoS One
2013; Riley et al., "External validation of clinical prediction models using big
datasets", BMJ 2016).

:func:`fit_model` runs the three over in-memory sites (each site's :class:`Design`): the
``fedsynth model fit`` command and the tests use it; the coordinator (phase 2) drives the
same pure steps over the wire and builds the same :class:`ModelFit`. A site that its own
disclosure control would refuse (:func:`fedsynth.models.disclosure.check_design`) takes
part in none of the fits and is listed with the reason, as it would be in a round.

:meth:`ModelFit.to_dict` is the entry of a round's ``"models"`` list
(``{"name", "family", "n", "sites", "one_stage", "stratified", "two_stage"}``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.models.coding import Design
from fedsynth.models.disclosure import ModelLimits, check_design
from fedsynth.models.glm import GlmFit, IrlsControl, StratifiedFit, fit_one_stage, fit_stratified
from fedsynth.models.hierarchical import FitControl, HierarchicalFit, fit_sites, site_data
from fedsynth.models.spec import ModelSpec
from fedsynth.models.twostage import TwoStageResult, fit_site, pool_site_fits
from fedsynth.vocabulary import TESTS

__all__ = ["ModelFit", "fit_model", "fit_hierarchical", "hierarchical_dict"]


@dataclass(frozen=True, eq=False)
class ModelFit:
    """The one-stage, stratified and two-stage fits of one model.

    Attributes
    ----------
    model
        The model's spec.
    sites
        Sites that took part (in the order given).
    refused
        ``{site: reason}`` of sites whose disclosure control refused the model.
    one_stage, stratified
        The federated IRLS fits (None when fewer than one, or two, sites took part).
    two_stage
        Per-site fits and their pooling (None when no site took part).
    hierarchical
        The exact random-intercept GLM (:mod:`fedsynth.models.hierarchical`; None when it
        was not asked for or fewer than two sites took part).
    """

    model: ModelSpec
    sites: tuple[str, ...]
    refused: Mapping[str, str]
    one_stage: GlmFit | None
    stratified: StratifiedFit | None
    two_stage: TwoStageResult | None
    notes: tuple[str, ...] = field(default=())
    hierarchical: HierarchicalFit | None = None

    @property
    def n(self) -> int:
        """Patients in the fits (complete rows of the sites that took part)."""
        return 0 if self.one_stage is None else int(self.one_stage.n)

    def to_dict(self) -> dict[str, Any]:
        """The round's ``models`` entry (JSON-ready; NaN as null)."""
        one = None
        if self.one_stage is not None:
            one = self.one_stage.to_dict()
        return {"name": self.model.name, "family": self.model.family, "n": self.n,
                "sites": list(self.sites), "refused": dict(self.refused),
                "one_stage": one,
                "stratified": None if self.stratified is None else self.stratified.to_dict(),
                "two_stage": None if self.two_stage is None else self.two_stage.to_dict(),
                "hierarchical": (None if self.hierarchical is None
                                 else hierarchical_dict(self.hierarchical,
                                                        self.model.coefficient_names)),
                "notes": list(self.notes)}

    def table(self) -> list[dict[str, Any]]:
        """One row per coefficient: one-stage, stratified and two-stage side by side."""
        names = self.model.coefficient_names
        one = self.one_stage.to_dict() if self.one_stage is not None else {}
        strat = self.stratified.to_dict() if self.stratified is not None else {}
        pooled = self.two_stage.pooled_dict() if self.two_stage is not None else {}
        hier = self.to_dict()["hierarchical"] or {}
        rows = []
        for name in names:
            p = pooled.get(name, {})
            rows.append({
                "coefficient": name,
                "one_stage": one.get("coefficients", {}).get(name),
                "one_stage_se": one.get("se", {}).get(name),
                "stratified": strat.get("coefficients", {}).get(name),
                "stratified_se": strat.get("se", {}).get(name),
                "two_stage": p.get("estimate"), "two_stage_se": p.get("se"),
                "k": p.get("k"), "tau2": p.get("tau2"), "I2": p.get("I2"),
                "pi_lb": p.get("pi_lb"), "pi_ub": p.get("pi_ub"),
                "hierarchical": hier.get("coefficients", {}).get(name),
                "hierarchical_se": hier.get("se", {}).get(name)})
        return rows

    def summary(self, digits: int = 3) -> str:
        """A plain-text report: the fits, the coefficient table, excluded sites, notes."""
        def num(value: Any, width: int) -> str:
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                return "-".rjust(width)
            return f"{value:.{digits}f}".rjust(width)

        m = self.model
        lines = [f"model {m.name}: {m.family}, {len(self.sites)} sites, n = {self.n}",
                 textwrap.fill(m.formula(), width=88, initial_indent="  ",
                               subsequent_indent="    ", break_on_hyphens=False)]
        if self.one_stage is not None:
            o = self.one_stage
            lines.append(f"one-stage: {o.status}, {o.iterations} iterations, "
                         f"{o.round_trips} round trips, deviance = {o.deviance:.2f}"
                         + (f" ({o.message})" if o.message else ""))
        if self.stratified is not None:
            s = self.stratified.fit
            lines.append(f"stratified: {s.status}, {s.iterations} iterations, "
                         f"deviance = {s.deviance:.2f}")
        if self.hierarchical is not None:
            h = self.hierarchical
            lines.append(f"hierarchical: {'converged' if h.converged else 'not converged'}, "
                         f"{h.evaluations} round trips, tau = {h.tau:.{digits}f}, "
                         f"logLik = {h.loglik:.2f}, ICC (latent) = {h.icc:.{digits}f}")
        hier = self.hierarchical is not None
        width = max([len("coefficient"), *(len(n) for n in m.coefficient_names)])
        lines.append("")
        lines.append(f"{'coefficient':<{width}}  {'one-stage':>9} {'se':>7}  "
                     f"{'stratified':>10} {'se':>7}  {'two-stage':>9} {'se':>7} {'k':>3} "
                     f"{'tau2':>7} {'I2':>5}  {'prediction interval':>19}"
                     + (f"  {'hierarchical':>12} {'se':>7}" if hier else ""))
        for row in self.table():
            pi = ("-" if row["pi_lb"] is None else
                  f"{row['pi_lb']:.{digits}f} to {row['pi_ub']:.{digits}f}")
            i2 = "-" if row["I2"] is None else f"{row['I2']:.1f}"
            lines.append(
                f"{row['coefficient']:<{width}}  {num(row['one_stage'], 9)} "
                f"{num(row['one_stage_se'], 7)}  {num(row['stratified'], 10)} "
                f"{num(row['stratified_se'], 7)}  {num(row['two_stage'], 9)} "
                f"{num(row['two_stage_se'], 7)} {row['k'] if row['k'] is not None else '-':>3} "
                f"{num(row['tau2'], 7)} {i2:>5}  {pi:>19}"
                + (f"  {num(row['hierarchical'], 12)} {num(row['hierarchical_se'], 7)}"
                   if hier else ""))
        if self.stratified is not None:
            lines.append("")
            lines.append(textwrap.fill(
                "site intercepts (stratified): " + ", ".join(
                    f"{site} {value:.{digits}f}"
                    for site, value in self.stratified.site_intercepts.items()),
                width=88, subsequent_indent="  ", break_on_hyphens=False))
        if self.hierarchical is not None:
            lines.append(textwrap.fill(
                "site intercepts (hierarchical, deviation from the mean): " + ", ".join(
                    f"{site} {ri.mode:+.{digits}f}"
                    for site, ri in self.hierarchical.site_intercepts.items()),
                width=88, subsequent_indent="  ", break_on_hyphens=False))
        if self.two_stage is not None and self.two_stage.multivariate is not None:
            mv = self.two_stage.multivariate
            lines.append(f"multivariate ({mv.struct}, {mv.method}): logLik = {mv.logLik:.3f}, "
                         f"QE = {mv.QE:.2f} (df = {mv.QE_df}, p = {mv.QE_pval:.3g})")
        for site, reason in self.refused.items():
            lines.append(f"refused by {site}: {reason}")
        if self.two_stage is not None:
            for site, reason in self.two_stage.excluded.items():
                lines.append(f"not pooled: {site}: {reason}")
            lines.extend(f"note: {note}" for note in self.two_stage.notes)
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def fit_model(designs: Mapping[str, Design], *, limits: ModelLimits | None = ModelLimits(),
              control: IrlsControl | None = None, method: str = "REML", test: str = "z",
              level: float = 95.0, struct: str = "DIAG",
              multivariate: bool = True, hierarchical: bool = True) -> ModelFit:
    """Fit one model across sites three ways: one-stage, stratified and two-stage.

    Parameters
    ----------
    designs
        ``{site: Design}`` of one model, in the order the sites should be reported.
    limits
        Each site's disclosure limits (:class:`ModelLimits`); a site whose design they
        refuse takes part in no fit and is listed in ``refused``. None skips the check
        (every site takes part), e.g. to see what the limits cost.
    control
        IRLS settings of every fit (:class:`IrlsControl`; defaults tighter than R's).
    method, test, level
        The per-coefficient pooling of the two-stage analysis (:func:`fedsynth.meta.pool`).
    struct
        Between-site covariance of the multivariate model: ``"DIAG"`` (default) or ``"UN"``.
    multivariate
        Fit the multivariate model (False: per-coefficient pooling only).
    hierarchical
        Fit the exact random-intercept GLM too (:func:`fit_hierarchical`; needs two sites).

    Returns
    -------
    ModelFit

    Raises
    ------
    InputError
        No sites, designs of different models, an unknown ``test`` or ``struct``.
    """
    if not designs:
        raise InputError("fit_model: no sites")
    models = {d.model.name for d in designs.values()}
    if len(models) != 1:
        raise InputError(f"fit_model: the designs belong to different models: "
                         f"{sorted(models)}")
    if test not in TESTS:
        raise InputError(f"fit_model: test must be one of {', '.join(TESTS)}, got {test!r}")
    if struct not in ("DIAG", "UN"):
        raise InputError(f"fit_model: struct must be 'DIAG' or 'UN', got {struct!r}")
    model = next(iter(designs.values())).model
    refused: dict[str, str] = {}
    if limits is not None:
        for site, design in designs.items():
            refusal = check_design(design, limits)
            if refusal is not None:
                refused[site] = refusal.reason
    taking = {site: d for site, d in designs.items() if site not in refused}
    notes: list[str] = []
    if not taking:
        notes.append("no site took part, so nothing was fitted")
        return ModelFit(model=model, sites=(), refused=refused, one_stage=None,
                        stratified=None, two_stage=None, notes=tuple(notes))
    one = fit_one_stage(taking, control=control, level=level)
    strat = None
    if len(taking) >= 2:
        strat = fit_stratified(taking, control=control, level=level)
    else:
        notes.append("the stratified model needs at least two sites")
    fits = {site: fit_site(d, control=control, level=level) for site, d in taking.items()}
    two = pool_site_fits(fits, method=method, test=test, level=level, struct=struct,
                         multivariate=multivariate)
    hier = None
    if hierarchical and len(taking) >= 2:
        hier = fit_hierarchical(taking, one_stage=one, level=level)
    elif hierarchical:
        notes.append("the hierarchical model needs at least two sites")
    return ModelFit(model=model, sites=tuple(taking), refused=refused, one_stage=one,
                    stratified=strat, two_stage=two, notes=tuple(notes), hierarchical=hier)


def fit_hierarchical(designs: Mapping[str, Design], *, one_stage: GlmFit | None = None,
                     level: float = 95.0) -> HierarchicalFit:
    """The exact random-intercept GLM of one model over in-memory sites.

    ``glmer(y ~ x + offset(o) + (1 | site), nAGQ = 25)`` (``lmer(..., REML = FALSE)`` for
    gaussian) by maximum marginal likelihood with adaptive Gauss-Hermite quadrature per
    site (:func:`fedsynth.models.hierarchical.fit_sites`; Pinheiro & Bates 1995). Columns
    that the one-stage fit found aliased (a level no site has) are left out, so they are
    ``NaN`` here too, as R's ``NA`` (:func:`hierarchical_dict` reports them as null).

    Parameters
    ----------
    designs
        ``{site: Design}`` of one model.
    one_stage
        The one-stage fit of the same sites, whose ``aliased`` columns are dropped (None:
        keep every column).
    level
        Confidence level in percent of the Wald intervals.
    """
    first = next(iter(designs.values()))
    aliased = set(one_stage.aliased) if one_stage is not None else set()
    keep = np.array([name not in aliased for name in first.names], dtype=bool)
    names = [n for n, k in zip(first.names, keep) if k]
    sites = {site: site_data(d.x[:, keep], d.y, family=d.model.family, offset=d.offset)
             for site, d in designs.items()}
    return fit_sites(sites, names=names, control=FitControl(level=level / 100.0))


def hierarchical_dict(fit: HierarchicalFit, names: tuple[str, ...]) -> dict[str, Any]:
    """Issue 14's ``"hierarchical"`` object with every coefficient of the model named.

    :meth:`HierarchicalFit.to_dict` (``coefficients``, ``se``, ``tau``, ``tau2``,
    ``logLik``, ``site_intercepts``, ``site_intercepts_se``, ``icc``, ...) with null for
    coefficients left out as aliased, in the model's coefficient order.
    """
    out = fit.to_dict()
    for key in ("coefficients", "se", "z", "pvalue", "ci_lb", "ci_ub"):
        out[key] = {name: out[key].get(name) for name in names}
    return out
