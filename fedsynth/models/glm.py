"""Federated IRLS: one GLM fitted across sites from per-site aggregates, exactly.

Why
---
Fisher scoring for a GLM with a canonical link is Newton's method, and every quantity one
iteration needs is a sum over patients: the information ``XᵀWX``, the score
``XᵀW(z - Xβ)`` and the deviance. A coordinator that adds up each site's sums at the
current coefficients takes exactly the step R's ``glm`` would take on all rows in one place
(the one-stage IPD analysis, "mathematically equivalent to placing all individual-level data
in one warehouse": DataSHIELD ``ds.glm``, Gaye et al., *Int J Epidemiol* 43(6), 2014;
Jones et al., "DataSHIELD - shared individual-level analysis without sharing the data",
*Stat Med* 32, 2013). So the site step (:func:`site_step`) and the coordinator step
(:func:`advance`) are pure functions over small dataclasses that serialise to plain JSON,
and :func:`run_irls` drives them with any transport (in memory for tests, gRPC later).

The iteration is R's ``glm.fit`` (R Core Team, ``src/library/stats/R/glm.R``):

* the first step starts from R's ``mustart`` (``(y + 1/2)/2`` binomial, ``y + 0.1``
  poisson, ``y`` gaussian), computed by each site on its own rows, so the path and the
  iteration count are R's;
* convergence when ``|dev - dev_old| / (|dev| + 0.1) < epsilon``: R's rule with a tighter
  default (``1e-10`` instead of ``1e-8``) so the estimates equal the exact maximum (and
  statsmodels / R at a tight tolerance) to about ``1e-10`` relative; IRLS converges
  quadratically, so this costs one iteration more than R's default at most;
* step-halving towards the previous coefficients when the deviance is not finite (R) or
  increases (Marschner, "glm2: fitting generalized linear models with convergence
  problems", *The R Journal* 3(2), 2011);
* standard errors from the summed information at the final coefficients, scaled by the
  dispersion: 1 for binomial and poisson, ``deviance / (n - rank)`` for gaussian (R's
  Pearson estimate, equal to the residual mean square), with z (binomial, poisson) or
  t (gaussian, ``n - rank`` df) Wald inference as ``summary.glm``;
* a coefficient whose column is a linear combination of earlier ones in the *summed*
  information (e.g. a level no site has) is aliased: ``NaN``, as R's ``NA``. The test is
  on the information matrix, so its tolerance is ``1e-11`` on the squared residual norm
  ratio (R's QR works on ``X`` itself); see docs/decisions/models.md.

The **stratified model** (one intercept per site, common slopes; ``glm(y ~ 0 + site + ...)``)
uses the same site step: each site works with its own intercept and the slopes, and the
coordinator places its sums into the rows of that site's intercept (:class:`Layout`).

Pure statistics: numpy/scipy only, no I/O, no grpc.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import linalg, stats

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.models.coding import Design
from fedsynth.models.families import Family, get_family
from fedsynth.models.spec import INTERCEPT

__all__ = ["IrlsControl", "StepRequest", "SiteStep", "Layout", "IrlsState", "GlmFit",
           "StratifiedFit", "site_step", "start", "requests", "advance", "result",
           "run_irls", "fit_one_stage", "fit_stratified", "FIT_KINDS"]

#: Kinds of fit a request may belong to.
FIT_KINDS = ("one_stage", "stratified", "site")
#: Squared residual-norm ratio below which a column of the information is aliased.
_ALIAS_TOL = 1e-11


@dataclass(frozen=True)
class IrlsControl:
    """Settings of the iteration (R's ``glm.control``, tighter ``epsilon``).

    Attributes
    ----------
    epsilon
        Converged when the relative deviance change ``|dev - dev_old| / (|dev| + 0.1)`` is
        below this (R: 1e-8; here 1e-10 so the result is the exact maximum to ~1e-10).
    maxit
        Most IRLS iterations (R: 25); also the most halvings of one step.
    """

    epsilon: float = 1e-10
    maxit: int = 25

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and 0 < self.epsilon < 1):
            raise InputError(f"epsilon must be a number in (0, 1), got {self.epsilon!r}")
        if isinstance(self.maxit, bool) or not isinstance(self.maxit, int) or \
                not 1 <= self.maxit <= 1000:
            raise InputError(f"maxit must be an integer from 1 to 1000, got {self.maxit!r}")


# ---------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class StepRequest:
    """What the coordinator sends a site for one IRLS step of one model.

    Attributes
    ----------
    model
        The model's name in the spec.
    fit
        ``one_stage``, ``stratified`` or ``site`` (a site's own fit).
    step
        Sequence number of this request within the fit (0 = the start step).
    coefficients
        ``{coefficient name: value}`` in the site's coding (for a stratified fit, the
        site's own intercept under ``intercept``); ``None`` for the start step, which uses
        R's starting fitted values instead of coefficients.
    """

    model: str
    fit: str
    step: int
    coefficients: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"model": self.model, "fit": self.fit, "step": self.step,
                "coefficients": None if self.coefficients is None else
                {k: float(v) for k, v in self.coefficients.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRequest:
        """Validate a request received as JSON (errors name the field and value)."""
        if not isinstance(data, Mapping):
            raise InputError(f"step request: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"model", "fit", "step", "coefficients"})
        if unknown:
            raise InputError(f"step request: unknown field {unknown[0]!r}")
        model, fit, step = data.get("model"), data.get("fit"), data.get("step")
        if not isinstance(model, str) or not model:
            raise InputError(f"step request: field 'model' must be a name, got {model!r}")
        if fit not in FIT_KINDS:
            raise InputError(f"step request: field 'fit' must be one of "
                             f"{', '.join(FIT_KINDS)}, got {fit!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"step request: field 'step' must be an integer >= 0, got "
                             f"{step!r}")
        coefficients = data.get("coefficients")
        if coefficients is not None:
            if not isinstance(coefficients, Mapping):
                raise InputError("step request: field 'coefficients' must be an object of "
                                 f"name: number, got {type(coefficients).__name__}")
            for name, value in coefficients.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"step request: coefficient {name!r} must be a number, "
                                     f"got {value!r}")
            coefficients = {str(k): float(v) for k, v in coefficients.items()}
        return cls(model=model, fit=fit, step=step, coefficients=coefficients)


@dataclass(frozen=True, eq=False)
class SiteStep:
    """What a site returns for one IRLS step: sums over its rows, nothing per patient.

    Attributes
    ----------
    names
        Coefficient names (the site's coding), the order of ``xtwx`` and ``score``.
    n
        Rows the sums are over.
    xtwx
        ``XᵀWX`` at the requested coefficients (the information, ``p x p``).
    score
        ``XᵀW(z - Xβ)`` (``XᵀWz`` at the start step, where β is taken as 0), so the
        coordinator's new coefficients are ``β + (Σ XᵀWX)⁻¹ Σ score``.
    deviance
        Sum of the unit deviances at the requested coefficients.
    minus_twice_loglik
        ``-2 Σ log f(y; mu)`` (binomial, poisson; NaN for gaussian), for the AIC.
    boundary
        Some fitted value is numerically 0 or 1 (binomial) or 0 (poisson): R's warning.
    """

    names: tuple[str, ...]
    n: int
    xtwx: np.ndarray
    score: np.ndarray
    deviance: float
    minus_twice_loglik: float = float("nan")
    boundary: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a non-finite number becomes ``null``)."""
        return {"names": list(self.names), "n": int(self.n),
                "xtwx": [[finite_or_none(v) for v in row] for row in np.asarray(self.xtwx)],
                "score": [finite_or_none(v) for v in np.asarray(self.score)],
                "deviance": finite_or_none(self.deviance),
                "minus_twice_loglik": finite_or_none(self.minus_twice_loglik),
                "boundary": bool(self.boundary)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteStep:
        """Validate a step received as JSON (``null`` numbers become NaN)."""
        if not isinstance(data, Mapping):
            raise InputError(f"site step: expected an object, got {type(data).__name__}")
        missing = [k for k in ("names", "n", "xtwx", "score", "deviance") if k not in data]
        if missing:
            raise InputError(f"site step: missing field {missing[0]!r}")
        names = data["names"]
        if not isinstance(names, (list, tuple)) or not names or not all(
                isinstance(v, str) for v in names):
            raise InputError(f"site step: field 'names' must be a list of names, got "
                             f"{names!r}")
        p = len(names)
        n = data["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"site step: field 'n' must be an integer >= 0, got {n!r}")

        def numbers(value: Any, key: str, shape: tuple[int, ...]) -> np.ndarray:
            try:
                arr = np.array([[np.nan if v is None else v for v in row] for row in value]
                               if len(shape) == 2 else
                               [np.nan if v is None else v for v in value], dtype=float)
            except (TypeError, ValueError):
                raise InputError(f"site step: field {key!r} must hold numbers") from None
            if arr.shape != shape:
                raise InputError(f"site step: field {key!r} has shape {arr.shape}, expected "
                                 f"{shape}")
            return arr

        xtwx = numbers(data["xtwx"], "xtwx", (p, p))
        score = numbers(data["score"], "score", (p,))

        def scalar(key: str) -> float:
            value = data.get(key)
            if value is None:
                return float("nan")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"site step: field {key!r} must be a number, got {value!r}")
            return float(value)

        return cls(names=tuple(names), n=n, xtwx=xtwx, score=score,
                   deviance=scalar("deviance"),
                   minus_twice_loglik=scalar("minus_twice_loglik"),
                   boundary=bool(data.get("boundary", False)))


# ---------------------------------------------------------------------------- site

def _beta_of(coefficients: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in coefficients]
    if missing:
        raise InputError(f"coefficients: no value for {missing[0]!r} (the model's "
                         f"coefficients are {', '.join(names)})")
    extra = [n for n in coefficients if n not in names]
    if extra:
        raise InputError(f"coefficients: {extra[0]!r} is not a coefficient of the model "
                         f"({', '.join(names)})")
    return np.array([float(coefficients[n]) for n in names], dtype=float)


def site_step(design: Design, coefficients: Mapping[str, float] | None) -> SiteStep:
    """One IRLS step at a site: the sums of its rows at the given coefficients.

    Parameters
    ----------
    design
        The site's coded rows (:func:`fedsynth.models.coding.build_design`).
    coefficients
        ``{name: value}`` for every coefficient of the design, or ``None`` for the start
        step (R's ``mustart``).

    Returns
    -------
    SiteStep
        ``XᵀWX``, the score ``XᵀW(z - Xβ)``, the deviance, ``n``: sums over the site's
        rows only. Disclosure control (:mod:`fedsynth.models.disclosure`) decides whether
        they may leave; this function only computes.
    """
    fam = get_family(design.model.family)
    x, y, offset = design.x, design.y, design.offset
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if coefficients is None:
            eta = fam.linkfun(fam.mustart(y))
            mu = fam.linkinv(eta)
            mu_eta = fam.mu_eta(eta)
            working = (eta - offset) + (y - mu) / mu_eta   # z, with β taken as 0
        else:
            beta = _beta_of(coefficients, design.names)
            eta = x @ beta + offset
            mu = fam.linkinv(eta)
            mu_eta = fam.mu_eta(eta)
            working = (y - mu) / mu_eta                     # z - Xβ
        w = mu_eta ** 2 / fam.variance(mu)
        xtwx = x.T @ (x * w[:, None])
        xtwx = (xtwx + xtwx.T) / 2
        score = x.T @ (w * working)
        deviance = float(np.sum(fam.dev_resids(y, mu)))
        m2ll = float(np.sum(fam.minus_twice_loglik(y, mu)))
    return SiteStep(names=design.names, n=design.n, xtwx=xtwx, score=score,
                    deviance=deviance, minus_twice_loglik=m2ll,
                    boundary=fam.at_boundary(mu))


# ---------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class Layout:
    """How each site's coefficients sit in the coefficient vector of the fit.

    ``one_stage`` and ``site``: the same vector everywhere. ``stratified``: one intercept per
    site (``intercept[<site>]``, first, in site order), then the common slopes; a site
    works with its own intercept under the name ``intercept``.
    """

    kind: str
    local_names: tuple[str, ...]
    sites: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in FIT_KINDS:
            raise InputError(f"fit: unknown kind {self.kind!r} (known: "
                             f"{', '.join(FIT_KINDS)})")
        if not self.sites:
            raise InputError("fit: no sites")
        if len(set(self.sites)) != len(self.sites):
            raise InputError("fit: a site is listed twice")
        if self.kind == "stratified" and (not self.local_names or
                                          self.local_names[0] != INTERCEPT):
            raise InputError("stratified fit: the model needs an intercept")

    @property
    def names(self) -> tuple[str, ...]:
        """Coefficient names of the fit."""
        if self.kind == "stratified":
            return tuple(f"{INTERCEPT}[{s}]" for s in self.sites) + self.local_names[1:]
        return self.local_names

    def index(self, site: str) -> np.ndarray:
        """Position in the fit's vector of each of ``site``'s coefficients."""
        p = len(self.local_names)
        if self.kind != "stratified":
            return np.arange(p)
        s = self.sites.index(site)
        return np.concatenate([[s], len(self.sites) + np.arange(p - 1)]).astype(int)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``kind``, ``local_names``, ``sites``."""
        return {"kind": self.kind, "local_names": list(self.local_names),
                "sites": list(self.sites)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """The inverse of :meth:`to_dict`."""
        return cls(kind=data["kind"], local_names=tuple(data["local_names"]),
                   sites=tuple(data["sites"]))


# ---------------------------------------------------------------------------- state

@dataclass(frozen=True, eq=False)
class _Sums:
    xtwx: np.ndarray
    score: np.ndarray
    deviance: float
    minus_twice_loglik: float
    n: int
    boundary: bool
    site_n: Mapping[str, int]


@dataclass(frozen=True, eq=False)
class IrlsState:
    """Where a federated fit stands: what to ask next, or the final sums.

    Use :func:`start`, then alternately :func:`requests` and :func:`advance` until
    :attr:`done`; :func:`result` gives the fit. Immutable: each step returns a new state.

    Attributes
    ----------
    status
        ``start`` (waiting for the start step), ``running``, ``converged``,
        ``not_converged`` (``maxit`` reached; the last coefficients are reported) or
        ``failed`` (no usable coefficients; see ``message``).
    iteration
        IRLS iterations so far (R's ``iter``).
    round_trips
        Requests sent to the sites so far (iterations + 1 + step-halvings).
    beta
        The coefficients whose sums are awaited (``None`` before the first iteration).
    """

    layout: Layout
    family: str
    control: IrlsControl = field(default_factory=IrlsControl)
    model: str = ""
    status: str = "start"
    iteration: int = 0
    round_trips: int = 0
    halvings: int = 0
    step_halvings: int = 0
    beta: np.ndarray | None = None
    coefold: np.ndarray | None = None
    devold: float = float("nan")
    aliased: np.ndarray | None = None
    message: str = ""
    sums: _Sums | None = None

    @property
    def done(self) -> bool:
        """No more requests: converged, not converged within ``maxit``, or failed."""
        return self.status in ("converged", "not_converged", "failed")


def start(layout: Layout, family: str, control: IrlsControl | None = None,
          model: str = "") -> IrlsState:
    """A new fit over ``layout.sites`` (nothing asked yet)."""
    get_family(family)
    return IrlsState(layout=layout, family=family, control=control or IrlsControl(),
                     model=model)


def requests(state: IrlsState) -> dict[str, StepRequest]:
    """The request for each site at this point of the fit (empty when done)."""
    if state.done:
        return {}
    layout = state.layout
    out: dict[str, StepRequest] = {}
    for site in layout.sites:
        if state.beta is None:
            coefficients = None
        else:
            local = state.beta[layout.index(site)]
            coefficients = {n: float(v) for n, v in zip(layout.local_names, local)}
        out[site] = StepRequest(model=state.model, fit=layout.kind, step=state.round_trips,
                                coefficients=coefficients)
    return out


def _sum_steps(layout: Layout, steps: Mapping[str, SiteStep]) -> _Sums:
    missing = [s for s in layout.sites if s not in steps]
    if missing:
        raise InputError(f"fit: no step from site {missing[0]!r}")
    extra = [s for s in steps if s not in layout.sites]
    if extra:
        raise InputError(f"fit: a step from site {extra[0]!r}, which is not in the fit")
    big = len(layout.names)
    xtwx = np.zeros((big, big))
    score = np.zeros(big)
    deviance = m2ll = 0.0
    n = 0
    boundary = False
    site_n: dict[str, int] = {}
    for site in layout.sites:
        step = steps[site]
        if tuple(step.names) != layout.local_names:
            raise InputError(f"fit: site {site!r} answered for coefficients "
                             f"{list(step.names)}, expected {list(layout.local_names)}")
        idx = layout.index(site)
        xtwx[np.ix_(idx, idx)] += step.xtwx
        score[idx] += step.score
        deviance += step.deviance
        m2ll += step.minus_twice_loglik
        n += int(step.n)
        boundary |= bool(step.boundary)
        site_n[site] = int(step.n)
    return _Sums(xtwx=xtwx, score=score, deviance=deviance, minus_twice_loglik=m2ll, n=n,
                 boundary=boundary, site_n=site_n)


def _aliased(a: np.ndarray) -> np.ndarray:
    """Columns that are (numerically) combinations of earlier ones, R's pivoting order."""
    p = a.shape[0]
    out = np.zeros(p, dtype=bool)
    keep: list[int] = []
    for j in range(p):
        ajj = a[j, j]
        if not ajj > 0 or not np.isfinite(ajj):
            out[j] = True
            continue
        if keep:
            sub = a[np.ix_(keep, keep)]
            d = np.sqrt(np.diag(sub))
            rhs = a[keep, j]
            try:
                coef = linalg.solve(sub / np.outer(d, d), rhs / d, assume_a="pos") / d
                resid = ajj - rhs @ coef
            except (linalg.LinAlgError, ValueError):
                resid = 0.0
        else:
            resid = ajj
        if resid <= _ALIAS_TOL * ajj:
            out[j] = True
        else:
            keep.append(j)
    return out


def _solve(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray | None:
    """``a[keep, keep]⁻¹ b[keep]`` embedded (zeros elsewhere); None if not positive definite.

    Jacobi scaling first, so the covariates' units do not affect the accuracy.
    """
    sub = a[np.ix_(keep, keep)]
    d = np.sqrt(np.diag(sub))
    try:
        factor = linalg.cho_factor(sub / np.outer(d, d))
        sol = linalg.cho_solve(factor, b[keep] / d) / d
    except (linalg.LinAlgError, ValueError):
        return None
    out = np.zeros(len(b))
    out[keep] = sol
    return out if np.all(np.isfinite(out)) else None


def _sums_ok(sums: _Sums) -> bool:
    return bool(math.isfinite(sums.deviance) and np.all(np.isfinite(sums.xtwx))
                and np.all(np.isfinite(sums.score)))


def advance(state: IrlsState, steps: Mapping[str, SiteStep]) -> IrlsState:
    """Take the sites' answers to :func:`requests` and decide the next coefficients.

    Raises
    ------
    fedsynth.errors.InputError
        A site missing or extra, or answering for other coefficients.
    """
    if state.done:
        raise InputError("fit: already finished; no step expected")
    sums = _sum_steps(state.layout, steps)
    control = state.control
    trips = state.round_trips + 1
    if state.beta is None:
        # The start step: R's first WLS fit at mustart, with beta taken as 0.
        if not _sums_ok(sums):
            return replace(state, status="failed", round_trips=trips, sums=sums,
                           message="the start values give a non-finite deviance or "
                                   "information")
        aliased = _aliased(sums.xtwx)
        if aliased.all():
            return replace(state, status="failed", round_trips=trips, sums=sums,
                           aliased=aliased, message="no coefficient is estimable")
        beta = _solve(sums.xtwx, sums.score, ~aliased)
        if beta is None:
            return replace(state, status="failed", round_trips=trips, sums=sums,
                           aliased=aliased, message="the information matrix is singular")
        return replace(state, status="running", iteration=1, round_trips=trips, beta=beta,
                       coefold=None, devold=sums.deviance, aliased=aliased, sums=sums)
    aliased = state.aliased if state.aliased is not None else np.zeros(len(sums.score), bool)
    dev, devold = sums.deviance, state.devold
    diverged = not _sums_ok(sums) or (
        state.iteration > 1 and (dev - devold) / (0.1 + abs(dev)) >= control.epsilon)
    if diverged:
        if state.coefold is None:
            return replace(state, status="failed", round_trips=trips, sums=sums,
                           message="no valid set of coefficients has been found: the "
                                   "deviance is not finite after the first step")
        if state.step_halvings >= control.maxit:
            return replace(state, status="failed", round_trips=trips, sums=sums,
                           message="step-halving could not correct the step size")
        halved = (state.beta + state.coefold) / 2
        return replace(state, round_trips=trips, halvings=state.halvings + 1,
                       step_halvings=state.step_halvings + 1, beta=halved, sums=sums,
                       message=_note(state.message, "step size halved"))
    state = replace(state, step_halvings=0)
    if abs(dev - devold) / (abs(dev) + 0.1) < control.epsilon:
        return replace(state, status="converged", round_trips=trips, sums=sums)
    if state.iteration >= control.maxit:
        return replace(state, status="not_converged", round_trips=trips, sums=sums,
                       message=_note(state.message, f"did not converge in {control.maxit} "
                                     "iterations"))
    step = _solve(sums.xtwx, sums.score, ~aliased)
    if step is None:
        return replace(state, status="failed", round_trips=trips, sums=sums,
                       message="the information matrix became singular")
    return replace(state, iteration=state.iteration + 1, round_trips=trips,
                   beta=state.beta + step, coefold=state.beta, devold=dev, sums=sums,
                   message=state.message)


def _note(message: str, note: str) -> str:
    if note in message:
        return message
    return f"{message}; {note}" if message else note


# ---------------------------------------------------------------------------- results

@dataclass(frozen=True, eq=False)
class GlmFit:
    """A fitted GLM (one-stage, stratified or one site's own fit), as ``summary.glm``.

    Attributes
    ----------
    kind, family, link
        The fit and the model family.
    names
        Coefficient names.
    coefficients, se, stat, pval, ci_lb, ci_ub
        Estimates, standard errors, Wald statistics (z, or t for gaussian), two-sided
        p-values and Wald confidence bounds at ``level``; ``NaN`` for aliased coefficients.
    cov
        Covariance matrix of the estimates (dispersion times the inverse information).
    test
        ``z`` or ``t``.
    df_residual, dispersion
        ``n - rank`` and the dispersion (1, or the gaussian residual mean square).
    deviance, aic, loglik
        As R's ``deviance()``, ``AIC()``, ``logLik()``.
    n, rank, sites, site_n
        Rows, estimable coefficients, contributing sites and their rows.
    iterations, round_trips, halvings
        IRLS iterations (R's ``iter``), requests to the sites, step-halvings.
    converged, status, message, boundary
        Whether the iteration converged; the state's status and notes; R's boundary
        warning (fitted values numerically 0 or 1).
    aliased
        Names of the aliased (not estimable) coefficients.
    """

    kind: str
    family: str
    link: str
    names: tuple[str, ...]
    coefficients: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    cov: np.ndarray
    test: str
    level: float
    df_residual: int
    dispersion: float
    deviance: float
    aic: float
    loglik: float
    n: int
    rank: int
    sites: tuple[str, ...]
    site_n: Mapping[str, int]
    iterations: int
    round_trips: int
    halvings: int
    converged: bool
    status: str
    message: str
    boundary: bool
    aliased: tuple[str, ...]

    def coef(self) -> dict[str, float]:
        """``{name: estimate}``."""
        return dict(zip(self.names, map(float, self.coefficients)))

    def _named(self, values: np.ndarray, names: Sequence[str] | None = None,
               ) -> dict[str, float | None]:
        idx = [self.names.index(n) for n in (names or self.names)]
        return {self.names[i]: finite_or_none(values[i]) for i in idx}

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready: per-coefficient objects keyed by name, then the fit's numbers."""
        sel = list(names or self.names)
        idx = [self.names.index(n) for n in sel]
        return {
            "coefficients": self._named(self.coefficients, sel),
            "se": self._named(self.se, sel), "stat": self._named(self.stat, sel),
            "pval": self._named(self.pval, sel), "ci_lb": self._named(self.ci_lb, sel),
            "ci_ub": self._named(self.ci_ub, sel),
            "vcov": [[finite_or_none(self.cov[i, j]) for j in idx] for i in idx],
            "test": self.test, "level": self.level, "family": self.family,
            "link": self.link, "deviance": finite_or_none(self.deviance),
            "df_residual": self.df_residual, "dispersion": finite_or_none(self.dispersion),
            "aic": finite_or_none(self.aic), "logLik": finite_or_none(self.loglik), "n": self.n,
            "rank": self.rank, "sites": list(self.sites), "site_n": dict(self.site_n),
            "iterations": self.iterations, "round_trips": self.round_trips,
            "halvings": self.halvings, "converged": self.converged, "status": self.status,
            "message": self.message, "boundary": self.boundary,
            "aliased": list(self.aliased)}


@dataclass(frozen=True, eq=False)
class StratifiedFit:
    """The stratified model: one intercept per site, common slopes.

    ``fit`` holds every coefficient (``intercept[<site>]`` first); :attr:`slopes`,
    :attr:`site_intercepts` and :meth:`to_dict` split them as the round's JSON does.
    """

    fit: GlmFit

    @property
    def slope_names(self) -> tuple[str, ...]:
        """The common coefficients (every name after the site intercepts)."""
        return self.fit.names[len(self.fit.sites):]

    @property
    def site_intercepts(self) -> dict[str, float]:
        """``{site: intercept}``."""
        return {s: float(self.fit.coefficients[i]) for i, s in enumerate(self.fit.sites)}

    @property
    def site_intercepts_se(self) -> dict[str, float]:
        """``{site: standard error of its intercept}``."""
        return {s: float(self.fit.se[i]) for i, s in enumerate(self.fit.sites)}

    def to_dict(self) -> dict[str, Any]:
        """``coefficients``/``se``/... of the slopes, ``site_intercepts``(``_se``), the rest."""
        out = self.fit.to_dict(self.slope_names)
        out["site_intercepts"] = {s: finite_or_none(v) for s, v in self.site_intercepts.items()}
        out["site_intercepts_se"] = {s: finite_or_none(v) for s, v in
                                     self.site_intercepts_se.items()}
        return out


def result(state: IrlsState, level: float = 95.0) -> GlmFit:
    """The fit of a finished state (``failed``: every estimate NaN, see ``message``)."""
    if not state.done:
        raise InputError("fit: not finished yet")
    fam: Family = get_family(state.family)
    names = state.layout.names
    p = len(names)
    sums = state.sums
    nan = np.full(p, np.nan)
    aliased = state.aliased if state.aliased is not None else np.zeros(p, dtype=bool)
    keep = ~aliased
    rank = int(keep.sum())
    n = sums.n if sums is not None else 0
    df_res = n - rank
    ok = state.status in ("converged", "not_converged") and sums is not None and \
        state.beta is not None
    coefficients = nan.copy()
    cov = np.full((p, p), np.nan)
    deviance = aic = loglik = dispersion = float("nan")
    if ok:
        assert sums is not None and state.beta is not None
        coefficients = np.where(keep, state.beta, np.nan)
        deviance = float(sums.deviance)
        if fam.estimated_dispersion:
            dispersion = deviance / df_res if df_res > 0 else float("nan")
        else:
            dispersion = 1.0
        sub = sums.xtwx[np.ix_(keep, keep)]
        d = np.sqrt(np.diag(sub))
        try:
            inv = linalg.cho_solve(linalg.cho_factor(sub / np.outer(d, d)),
                                   np.eye(rank)) / np.outer(d, d)
        except (linalg.LinAlgError, ValueError):
            inv = np.full((rank, rank), np.nan)
        cov[np.ix_(keep, keep)] = dispersion * inv
        aic = fam.aic(sums.minus_twice_loglik, deviance, n, rank)
        loglik = fam.loglik(sums.minus_twice_loglik, deviance, n)
    se = np.sqrt(np.diag(cov))
    test = "t" if fam.estimated_dispersion else "z"
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = coefficients / se
    alpha = 1 - level / 100
    if test == "t":
        dist: Any = stats.t(df_res) if df_res > 0 else None
    else:
        dist = stats.norm()
    if dist is None:
        pval = crit = np.full(p, np.nan)
    else:
        pval = 2 * dist.sf(np.abs(stat))
        crit = dist.ppf(1 - alpha / 2)
    return GlmFit(
        kind=state.layout.kind, family=state.family, link=fam.link, names=names,
        coefficients=coefficients, se=se, stat=stat, pval=np.asarray(pval, dtype=float),
        ci_lb=coefficients - crit * se, ci_ub=coefficients + crit * se, cov=cov, test=test,
        level=float(level), df_residual=int(df_res), dispersion=float(dispersion),
        deviance=deviance, aic=aic, loglik=loglik, n=int(n), rank=rank,
        sites=state.layout.sites, site_n=dict(sums.site_n) if sums is not None else {},
        iterations=state.iteration, round_trips=state.round_trips, halvings=state.halvings,
        converged=state.status == "converged", status=state.status, message=state.message,
        boundary=bool(sums.boundary) if sums is not None else False,
        aliased=tuple(n for n, a in zip(names, aliased) if a))


# ---------------------------------------------------------------------------- drivers

Exchange = Callable[[Mapping[str, StepRequest]], Mapping[str, SiteStep]]


def run_irls(layout: Layout, family: str, exchange: Exchange, *,
             control: IrlsControl | None = None, model: str = "",
             level: float = 95.0) -> GlmFit:
    """Run a federated fit to the end over any transport.

    Parameters
    ----------
    layout
        Sites and coefficient layout (:class:`Layout`).
    family
        ``binomial``, ``gaussian`` or ``poisson``.
    exchange
        Sends ``{site: StepRequest}`` and returns ``{site: SiteStep}`` (in memory:
        :func:`site_step` on each design; over the wire: one round trip per call).
    """
    state = start(layout, family, control, model=model)
    while not state.done:
        state = advance(state, exchange(requests(state)))
    return result(state, level=level)


def _in_memory(designs: Mapping[str, Design]) -> Exchange:
    def exchange(reqs: Mapping[str, StepRequest]) -> dict[str, SiteStep]:
        return {site: site_step(designs[site], req.coefficients)
                for site, req in reqs.items()}
    return exchange


def _check_designs(designs: Mapping[str, Design]) -> tuple[str, tuple[str, ...]]:
    if not designs:
        raise InputError("fit: no sites")
    first = next(iter(designs.values()))
    for site, design in designs.items():
        if design.names != first.names or design.model.family != first.model.family:
            raise InputError(f"fit: site {site!r} codes a different model "
                             f"({list(design.names)} vs {list(first.names)})")
    return first.model.family, first.names


def fit_one_stage(designs: Mapping[str, Design], *, control: IrlsControl | None = None,
                  level: float = 95.0) -> GlmFit:
    """One-stage GLM over in-memory sites: equals ``glm`` on all their rows."""
    family, names = _check_designs(designs)
    model = next(iter(designs.values())).model.name
    return run_irls(Layout("one_stage", names, tuple(designs)), family, _in_memory(designs),
                    control=control, model=model, level=level)


def fit_stratified(designs: Mapping[str, Design], *, control: IrlsControl | None = None,
                   level: float = 95.0) -> StratifiedFit:
    """Stratified GLM (site intercepts, common slopes): ``glm(y ~ 0 + site + ...)``."""
    family, names = _check_designs(designs)
    model = next(iter(designs.values())).model.name
    fit = run_irls(Layout("stratified", names, tuple(designs)), family, _in_memory(designs),
                   control=control, model=model, level=level)
    return StratifiedFit(fit)
