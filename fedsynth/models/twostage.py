"""Two-stage IPD meta-analysis of a model: each site fits it, the coordinator pools.

Why
---
In the two-stage approach (Riley, Lambert & Abo-Zaid, *BMJ* 340:c221, 2010; Debray et al.,
"Individual participant data meta-analysis for a binary outcome: one-stage or two-stage?",
*PLoS One* 8(4):e60650, 2013; DataSHIELD ``ds.glmSLMA``) every site fits the model to its
own rows and releases the coefficients with their covariance matrix; the coordinator then
pools every coefficient across sites (random effects, REML, with the project's engine
:func:`fedsynth.meta.pool`: estimate, se, τ², I², Q, prediction interval) and fits a
multivariate random-effects model of the coefficient vectors that uses the within-site
covariances (:func:`fedsynth.models.mvmeta.mv_meta`, metafor's ``rma.mv``).

A site's own fit can fail where the pooled one would not: a small site may have a level
of a covariate in which every patient died (quasi-complete separation, no finite maximum
likelihood estimate; R's ``glm`` then returns a huge coefficient with a warning). Such a
site is *listed with its reason and not pooled*. Separation is detected exactly, before
fitting, with the linear program of Konis ("Linear programming algorithms for detecting
separated data in binary logistic regression models", DPhil thesis, Oxford 2007; R's
``detectseparation``); for a Poisson model, after fitting by R's boundary warning (fitted
rates numerically 0: a level without any event). A level the site lacks is not a failure:
that coefficient is aliased at the site (``NaN``) and the site simply does not contribute
to it.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import BatchPoolingResult, pool
from fedsynth.models.coding import Design
from fedsynth.models.glm import IrlsControl, Layout, run_irls, site_step
from fedsynth.models.mvmeta import STRUCTS, MvMetaResult, mv_meta

__all__ = ["SiteFit", "fit_site", "separation_direction", "TwoStageResult",
           "pool_site_fits", "SITE_STATUSES"]

#: Outcomes of a site's own fit; only ``ok`` is pooled.
SITE_STATUSES = ("ok", "separation", "not_converged", "failed")


@dataclass(frozen=True, eq=False)
class SiteFit:
    """A site's own fit of the model: what leaves the site in the two-stage approach.

    Attributes
    ----------
    names
        Coefficient names.
    status
        ``ok`` (pooled), ``separation``, ``not_converged`` or ``failed`` (not pooled).
    reason
        Why a fit is not ``ok`` (plain text, no data values or counts).
    n
        Rows the fit rests on.
    coefficients
        Estimates (``NaN`` for a coefficient aliased at this site, e.g. a level it lacks;
        all ``NaN`` unless ``ok``).
    cov
        Their covariance matrix (``NaN`` rows/columns where aliased).
    iterations
        IRLS iterations.
    """

    names: tuple[str, ...]
    status: str
    reason: str
    n: int
    coefficients: np.ndarray
    cov: np.ndarray
    iterations: int = 0

    @property
    def ok(self) -> bool:
        """True when the fit may be pooled."""
        return self.status == "ok"

    @property
    def se(self) -> np.ndarray:
        """Standard errors (square roots of the covariance's diagonal)."""
        return np.sqrt(np.diag(self.cov))

    def to_dict(self) -> dict[str, Any]:
        """The wire form: status, reason, n and, when ``ok``, coefficients and covariance."""
        out: dict[str, Any] = {"status": self.status, "n": int(self.n),
                               "names": list(self.names), "iterations": self.iterations}
        if self.reason:
            out["reason"] = self.reason
        if self.ok:
            out["coefficients"] = {k: finite_or_none(v) for k, v in zip(self.names,
                                                                 self.coefficients)}
            out["se"] = {k: finite_or_none(v) for k, v in zip(self.names, self.se)}
            out["vcov"] = [[finite_or_none(v) for v in row] for row in self.cov]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteFit:
        """Validate a site fit received as JSON (errors name the field and the value)."""
        if not isinstance(data, Mapping):
            raise InputError(f"site fit: expected an object, got {type(data).__name__}")
        status = data.get("status")
        if status not in SITE_STATUSES:
            raise InputError(f"site fit: field 'status' must be one of "
                             f"{', '.join(SITE_STATUSES)}, got {status!r}")
        names = data.get("names")
        if not isinstance(names, (list, tuple)) or not names or not all(
                isinstance(v, str) for v in names):
            raise InputError(f"site fit: field 'names' must be a list of names, got {names!r}")
        n = data.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"site fit: field 'n' must be an integer >= 0, got {n!r}")
        p = len(names)
        coefficients = np.full(p, np.nan)
        cov = np.full((p, p), np.nan)
        if status == "ok":
            coefs = data.get("coefficients")
            if not isinstance(coefs, Mapping) or set(coefs) != set(names):
                raise InputError("site fit: field 'coefficients' must give a value (or "
                                 "null) for every name")
            for j, name in enumerate(names):
                value = coefs[name]
                if value is not None and (isinstance(value, bool) or
                                          not isinstance(value, (int, float))):
                    raise InputError(f"site fit: coefficient {name!r} must be a number or "
                                     f"null, got {value!r}")
                coefficients[j] = np.nan if value is None else float(value)
            vcov = data.get("vcov")
            if not isinstance(vcov, (list, tuple)):
                raise InputError("site fit: field 'vcov' must be a matrix of numbers")
            try:
                cov = np.array([[np.nan if v is None else v for v in row] for row in vcov],
                               dtype=float)
            except (TypeError, ValueError):
                raise InputError("site fit: field 'vcov' must be a matrix of numbers") \
                    from None
            if cov.shape != (p, p):
                raise InputError(f"site fit: field 'vcov' has shape {cov.shape}, expected "
                                 f"{(p, p)}")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise InputError(f"site fit: field 'reason' must be text, got {reason!r}")
        iterations = data.get("iterations", 0)
        return cls(names=tuple(names), status=status, reason=reason, n=n,
                   coefficients=coefficients, cov=cov,
                   iterations=int(iterations) if isinstance(iterations, int) else 0)


def separation_direction(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """A direction ``b != 0`` with ``(2y - 1) xᵀb >= 0`` for every row, or None.

    Such a direction exists exactly when the data are (quasi-)completely separated, i.e.
    the logistic likelihood has no finite maximum (Albert & Anderson, *Biometrika* 71,
    1984). Linear program of Konis (2007): maximise ``Σ (2y_i - 1) x_iᵀb`` subject to the
    constraints and ``|b_j| <= 1`` (columns scaled to a maximum of 1).
    """
    scale = np.max(np.abs(x), axis=0)
    used = scale > 0
    if not used.any():
        return None
    xs = x[:, used] / scale[used]
    s = 2.0 * y - 1.0
    sx = xs * s[:, None]
    res = optimize.linprog(-sx.sum(axis=0), A_ub=-sx, b_ub=np.zeros(len(y)),
                           bounds=[(-1.0, 1.0)] * xs.shape[1], method="highs")
    if res.status != 0 or -res.fun <= 1e-7 * max(1.0, len(y)) ** 0.5:
        return None
    direction = np.zeros(x.shape[1])
    direction[used] = res.x / scale[used]
    return direction


def _failed(design: Design, status: str, reason: str, iterations: int = 0) -> SiteFit:
    p = design.p
    return SiteFit(names=design.names, status=status, reason=reason, n=design.n,
                   coefficients=np.full(p, np.nan), cov=np.full((p, p), np.nan),
                   iterations=iterations)


def fit_site(design: Design, *, control: IrlsControl | None = None,
             level: float = 95.0) -> SiteFit:
    """A site's own fit of the model (the same IRLS as the federated fit, in memory).

    Returns a :class:`SiteFit` whose status says whether it may be pooled; this function
    does not raise for data problems (separation, non-convergence, too few rows).
    """
    family = design.model.family
    if design.n == 0:
        return _failed(design, "failed", "no complete rows")
    if family == "binomial":
        direction = separation_direction(design.x, design.y)
        if direction is not None:
            involved = [n for n, b in zip(design.names, direction) if abs(b) > 1e-9]
            return _failed(design, "separation",
                           "the outcome is perfectly predicted by "
                           f"{' and '.join(involved)} at this site (quasi-complete "
                           "separation), so the maximum likelihood estimate does not exist")
    layout = Layout("site", design.names, ("site",))

    def exchange(reqs: Mapping[str, Any]) -> dict[str, Any]:
        return {"site": site_step(design, reqs["site"].coefficients)}

    fit = run_irls(layout, family, exchange, control=control, model=design.model.name,
                   level=level)
    if fit.status == "failed":
        return _failed(design, "failed", f"the fit failed: {fit.message}", fit.iterations)
    if not fit.converged:
        return _failed(design, "not_converged", f"the fit did not converge in "
                       f"{fit.iterations} iterations", fit.iterations)
    notes = []
    if fit.boundary:
        if family == "binomial":
            # The linear program above found no separation, so the maximum likelihood
            # estimate exists (it is merely steep); R would warn, and so do we.
            notes.append("fitted probabilities numerically 0 or 1 occurred")
        else:
            return _failed(design, "separation", "fitted rates numerically 0 occurred (a "
                           "level or combination without any event): the estimates are "
                           "not finite", fit.iterations)
    if not np.all(np.isfinite(fit.se[np.isfinite(fit.coefficients)])):
        return _failed(design, "failed", "the standard errors are not finite (no residual "
                       "degrees of freedom or a singular information matrix)",
                       fit.iterations)
    if fit.aliased:
        notes.append(f"not estimable at this site (aliased): {', '.join(fit.aliased)}")
    return SiteFit(names=design.names, status="ok", reason="; ".join(notes), n=design.n,
                   coefficients=fit.coefficients, cov=fit.cov, iterations=fit.iterations)


@dataclass(frozen=True, eq=False)
class TwoStageResult:
    """The pooled two-stage analysis of one model.

    Attributes
    ----------
    names
        Coefficient names.
    per_site
        ``{site: SiteFit}`` as received (all of them).
    excluded
        ``{site: reason}`` of the sites not pooled (their fit separated or failed).
    pooled
        Per-coefficient random-effects pooling, one row per coefficient
        (:class:`fedsynth.meta.BatchPoolingResult`; ``pooled[j]`` is coefficient ``j``).
    multivariate
        The multivariate model (None when it cannot be fitted; see ``notes``).
    notes
        Plain sentences on what was left out and why.
    """

    names: tuple[str, ...]
    per_site: Mapping[str, SiteFit]
    excluded: Mapping[str, str]
    pooled: BatchPoolingResult
    multivariate: MvMetaResult | None
    notes: tuple[str, ...] = field(default=())

    def pooled_dict(self) -> dict[str, dict[str, Any]]:
        """``{coefficient: pooled fields}`` (the reference keys of :func:`fedsynth.meta.pool`)."""
        return {name: self.pooled[j].to_dict() for j, name in enumerate(self.names)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``per_site``, ``excluded``, ``pooled``, ``multivariate``, ``notes``."""
        per_site = {}
        for site, fit in self.per_site.items():
            if fit.ok:
                body = {"n": fit.n,
                        "coefficients": {k: finite_or_none(v) for k, v in zip(fit.names,
                                                                      fit.coefficients)},
                        "se": {k: finite_or_none(v) for k, v in zip(fit.names, fit.se)}}
                if fit.reason:
                    body["note"] = fit.reason
                per_site[site] = body
        return {"per_site": per_site,
                "excluded": {site: {"status": self.per_site[site].status, "reason": reason}
                             for site, reason in self.excluded.items()},
                "pooled": self.pooled_dict(),
                "multivariate": None if self.multivariate is None else
                self.multivariate.to_dict(),
                "notes": list(self.notes)}


def pool_site_fits(fits: Mapping[str, SiteFit | Mapping[str, Any]], *,
                   method: str = "REML", test: str = "z", level: float = 95.0,
                   struct: str = "DIAG", mv_method: str = "REML",
                   multivariate: bool = True) -> TwoStageResult:
    """Pool the sites' own fits: per coefficient, and multivariate.

    Parameters
    ----------
    fits
        ``{site: SiteFit}`` (or its JSON form).
    method, test, level
        Per-coefficient pooling (:func:`fedsynth.meta.pool`; default REML, z, 95%).
    struct, mv_method
        Between-site covariance (``DIAG`` default; ``UN`` when there are enough sites)
        and method (``REML``/``ML``) of the multivariate model.
    multivariate
        Fit the multivariate model too.
    """
    if struct not in STRUCTS:
        raise InputError(f"struct: unknown value {struct!r} (known: {', '.join(STRUCTS)})")
    parsed = {site: f if isinstance(f, SiteFit) else SiteFit.from_dict(f)
              for site, f in fits.items()}
    if not parsed:
        raise InputError("two-stage: no site fits")
    first = next(iter(parsed.values()))
    names = first.names
    for site, fit in parsed.items():
        if fit.names != names:
            raise InputError(f"two-stage: site {site!r} fitted coefficients {list(fit.names)}, "
                             f"expected {list(names)}")
    excluded = {site: f.reason or f.status for site, f in parsed.items() if not f.ok}
    ok_sites = [site for site, f in parsed.items() if f.ok]
    notes: list[str] = []
    p = len(names)
    if ok_sites:
        yi = np.array([parsed[s].coefficients for s in ok_sites]).T      # (p, k)
        vi = np.array([parsed[s].se ** 2 for s in ok_sites]).T
        mask = np.isfinite(yi) & np.isfinite(vi) & (vi > 0)
        labels: Sequence[str] = ok_sites
    else:
        yi = vi = np.full((p, 1), np.nan)
        mask = np.zeros((p, 1), dtype=bool)
        labels = ["none"]
        notes.append("no site fit could be pooled")
    batch = pool(np.where(mask, yi, 0.0), np.where(mask, vi, 1.0), mask=mask, method=method,
                 test=test, level=level, names=list(names), labels=list(labels))
    mv = None
    if multivariate and len(ok_sites) >= 2:
        use = mask.sum(axis=1) >= 2
        dropped = [n for n, u in zip(names, use) if not u]
        if dropped:
            notes.append("left out of the multivariate model (fewer than two sites estimate "
                         f"them): {', '.join(dropped)}")
        sites_used = [j for j in range(len(ok_sites)) if mask[use, j].any()]
        if use.any():
            y = np.where(mask, yi, np.nan)[use][:, sites_used].T
            S = np.array([parsed[ok_sites[j]].cov[np.ix_(use, use)] for j in sites_used])
            try:
                mv = mv_meta(y, S, struct=struct, method=mv_method,
                             names=[n for n, u in zip(names, use) if u],
                             labels=[ok_sites[j] for j in sites_used], level=level)
            except InputError as error:
                notes.append(f"the multivariate model could not be fitted: {error}")
    elif multivariate:
        notes.append("the multivariate model needs at least two pooled sites")
    return TwoStageResult(names=names, per_site=parsed, excluded=excluded, pooled=batch,
                          multivariate=mv, notes=tuple(notes))
