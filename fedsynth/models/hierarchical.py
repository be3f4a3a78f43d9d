"""The exact federated random-intercept GLM: maximum marginal likelihood across sites.

Model
-----
Site ``i`` holds rows ``j`` with outcome ``y_ij``, covariates ``x_ij`` (a row of the design
matrix **including its intercept column**) and an optional offset ``o_ij``::

    eta_ij = x_ij' beta + o_ij + u_i,      u_i ~ N(0, tau^2) independently per site,

with ``y_ij | u_i`` binomial (logit link, ``trials`` per row, 1 by default), poisson (log
link) or gaussian (identity link, residual SD ``sigma``). This is lme4's
``glmer(y ~ x + offset(o) + (1 | site))`` (Bates, Maechler, Bolker & Walker, "Fitting linear
mixed-effects models using lme4", *J Stat Softw* 67(1), 2015) and, for the gaussian family,
``lmer(..., REML = FALSE)``.

Why this design
---------------
The marginal log-likelihood is a **sum over sites** of each site's integral over its own
random intercept (Pinheiro & Bates, *Mixed-Effects Models in S and S-PLUS*, Springer 2000,
ch. 7)::

    l(beta, tau) = sum_i log L_i,   L_i = int prod_j f(y_ij | eta_ij(beta) + tau z) phi(z) dz,

so each site evaluates its own term (and its derivatives) at the point the coordinator
proposes and nothing else leaves it; the coordinator adds them up and takes a Newton step.
The maximum is the exact maximum-likelihood estimate, not a Laplace or PQL approximation
(Breslow & Clayton, *JASA* 88, 1993, show how biased PQL is for binary data with small
clusters), because each ``L_i`` is computed by **adaptive Gauss-Hermite quadrature**
(Liu & Pierce, "A note on Gauss-Hermite quadrature", *Biometrika* 81(3), 1994; Pinheiro &
Bates, *J Comput Graph Stat* 4(1), 1995): the nodes are centred at the mode ``z_hat`` of the
site's integrand and scaled by its curvature, which makes the integrand look like the
Gaussian kernel the rule integrates exactly; the number of nodes is raised per site until
two rules of the ladder :data:`NODE_LADDER` agree to ``1e-9`` in ``log L_i`` (the relative
error of ``L_i``), so the integral is accurate well beyond ``1e-8`` relative.

Derivatives. Writing the random intercept as ``u = tau z`` with ``z ~ N(0, 1)`` makes the
prior free of the parameters, so the score and the Hessian of ``log L_i`` are posterior
moments of the complete-data derivatives (Louis, *JRSS B* 44(2), 1982)::

    grad log L_i = E[S],   hess log L_i = E[dS/dtheta] + Var[S],
    S = d/dtheta sum_j log f(y_ij | eta_ij + tau z),

computed with the same quadrature nodes. They are the derivatives of the exact integral
(to quadrature accuracy), not of an approximation, so the observed information of the
marginal likelihood, and therefore the standard errors, are exact too. A site sends its
Hessian (``(p+1) x (p+1)``; ``(p+2)`` for gaussian), not score outer products: the sum of
per-site Hessians *is* the observed information, while outer products of site scores would
be a cross-product (BHHH) estimate with as few terms as there are sites.

Derivatives are taken with respect to ``tau`` (and ``sigma``) on their natural scale, not
``log tau``: they stay finite and meaningful at ``tau = 0``, where ``l`` is even in ``tau``
(so ``dl/dtau = 0``) and ``d2l/dtau2 = sum_i [(sum_j l'_ij)^2 + sum_j l''_ij]`` is the
variance-component score statistic that decides whether ``tau = 0`` is a local maximum.
The coordinator works in ``(beta, log tau [, log sigma])`` and converts.

The gaussian family has a closed-form marginal likelihood (``y_i ~ N(X_i beta + o_i,
sigma^2 I + tau^2 J)``), which :func:`site_contribution` uses; :func:`adaptive_quadrature`
computes the same quantities by quadrature, which the tests use as a check.

Protocol
--------
One message each way per site per iteration, both plain dataclasses that serialise to JSON:

* coordinator -> site: :class:`Proposal` (family, ``beta``, ``log_tau`` with ``None`` for
  ``tau = 0``, ``log_sigma`` for gaussian, the node policy, the iteration number);
* site -> coordinator: :class:`SiteContribution` (``n``, its log-likelihood term, gradient,
  Hessian, the node count used and the quadrature error estimate, and its random
  intercept's conditional mode and posterior moments at that point).

:func:`fit_random_intercept` (the coordinator) needs only a callable that sends a proposal
to every site and returns their contributions; :func:`fit_sites` wires it in one process
(through JSON, as on the wire). A fit takes about 10-15 round trips: ~4-6 at ``tau = 0``
(the ordinary GLM, which also gives the start and the boundary test) and ~5-8 Newton steps
on ``(beta, log tau)``; the result counts them (``iterations``, ``evaluations``).

A random slope for one named covariate (the issue's stretch goal) uses the same design in
two dimensions: :class:`SlopeProposal`, :func:`slope_contribution` (a product rule centred
at the site's 2-D mode), :func:`fit_random_slope` and :func:`fit_sites_slope`.

What a site reveals per iteration -- its log-likelihood term and its derivatives at a point
the coordinator chooses -- is a disclosure question for the wiring phase: see
docs/decisions/hierarchical.md.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Protocol

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import stats
from scipy.special import expit, gammaln

from fedsynth.errors import FedsynthError, InputError

__all__ = [
    "FAMILIES", "INTERCEPT", "NODE_LADDER", "MAX_NODES", "LOG_SCALE_BOUNDS", "BETA_BOUND",
    "SiteData", "site_data", "Proposal", "SiteContribution", "QuadratureResult",
    "adaptive_quadrature", "site_contribution", "combine", "Totals",
    "FitControl", "SiteIntercept", "HierarchicalFit", "HierarchicalFitWarning",
    "fit_random_intercept", "fit_sites", "latent_icc", "ICC_DEFINITIONS",
    "SLOPE_LADDER", "SlopeProposal", "SlopeContribution", "slope_contribution", "SiteEffects",
    "RandomSlopeFit", "fit_random_slope", "fit_sites_slope",
]

#: Families with their (canonical) links.
FAMILIES: dict[str, str] = {"binomial": "logit", "poisson": "log", "gaussian": "identity"}
#: The name of the fixed intercept among the coefficient names (issue 13's convention).
INTERCEPT = "intercept"
#: Gauss-Hermite rules tried, in order, until two successive ones agree (``nodes=None``).
NODE_LADDER: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128)
#: The largest rule a proposal may ask for.
MAX_NODES = 200
#: Bounds of ``log tau`` and ``log sigma`` the coordinator may propose (a site refuses
#: others): ``tau`` in about ``[2e-9, 5e8]``, far outside any real fit.
LOG_SCALE_BOUNDS: tuple[float, float] = (-20.0, 20.0)
#: The largest absolute coefficient a site accepts in a proposal.
BETA_BOUND = 1e4
#: Default target for ``|log L_i(K) - log L_i(K')|`` between two rules of the ladder.
QUADRATURE_TOL = 1e-9

_LOG_2PI = math.log(2.0 * math.pi)

#: How the intraclass correlation on the latent scale is defined per family.
ICC_DEFINITIONS: dict[str, str] = {
    "binomial": "tau^2 / (tau^2 + pi^2/3): the latent logistic variable's residual variance "
                "(Snijders & Bosker, Multilevel Analysis, 2nd ed. 2012, s. 17.3)",
    "poisson": "tau^2 / (tau^2 + log(1 + 1/lambda)), lambda = exp(beta_intercept + tau^2/2): "
               "the lognormal approximation of the observation-level variance at covariates "
               "0 and offset 0 (Nakagawa, Johnson & Schielzeth, J R Soc Interface 14, 2017)",
    "gaussian": "tau^2 / (tau^2 + sigma^2): the share of the outcome's variance between sites",
}


class HierarchicalFitWarning(UserWarning):
    """The fit did not converge, or a site's quadrature missed its accuracy target."""


# --------------------------------------------------------------------------------------
# Site data (never serialised: it stays at the site)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SiteData:
    """One site's rows for a random-intercept GLM. Built by :func:`site_data`, which checks.

    Attributes
    ----------
    family
        ``binomial``, ``poisson`` or ``gaussian``.
    X
        ``(n, p)`` design matrix **with** the intercept column (the same columns, in the
        same order, at every site).
    y
        Outcome: successes (binomial, ``0 <= y <= trials``, integers), counts (poisson,
        non-negative integers) or real values (gaussian).
    offset
        Known part of the linear predictor (e.g. ``log`` exposure time for poisson).
    trials
        Binomial trials per row (1 for 0/1 outcomes).
    """

    family: str
    X: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    trials: np.ndarray

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        """Number of fixed coefficients (columns of ``X``)."""
        return int(self.X.shape[1])

    @cached_property
    def log_constant(self) -> float:
        """The part of the log-likelihood free of parameters (R's ``dbinom``/``dpois``)."""
        if self.family == "binomial":
            return float(np.sum(gammaln(self.trials + 1.0) - gammaln(self.y + 1.0)
                                - gammaln(self.trials - self.y + 1.0)))
        if self.family == "poisson":
            return float(-np.sum(gammaln(self.y + 1.0)))
        return 0.0


def _as_float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: not numeric ({type(value).__name__})") from None
    if array.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}-dimensional array, got shape "
                         f"{array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise InputError(f"{name}: non-finite value {float(array[tuple(where)])!r} at index "
                         f"{tuple(int(i) for i in where)}")
    return array


def site_data(X: Any, y: Any, *, family: str, offset: Any = None,
              trials: Any = None) -> SiteData:
    """Check and freeze one site's arrays.

    Parameters
    ----------
    X
        ``(n, p)`` design matrix including the intercept column (e.g. the design that
        issue 13's coding builds, whose first column is ``intercept``).
    y
        Outcome per row (see :class:`SiteData`).
    family
        ``binomial``, ``poisson`` or ``gaussian``.
    offset
        Optional offset per row (default 0).
    trials
        Binomial only: trials per row (default 1, i.e. a 0/1 outcome). R's
        ``cbind(successes, trials - successes)``.

    Raises
    ------
    InputError
        Naming the argument, the row and the value.
    """
    if family not in FAMILIES:
        raise InputError(f"family: unknown value {family!r} (known: {', '.join(FAMILIES)})")
    Xa = _as_float_array(X, "X", 2)
    ya = _as_float_array(y, "y", 1)
    n = ya.shape[0]
    if n == 0:
        raise InputError("y: a site needs at least one row")
    if Xa.shape[0] != n:
        raise InputError(f"X: {Xa.shape[0]} rows but y has {n}")
    if Xa.shape[1] == 0:
        raise InputError("X: no columns (the design needs at least the intercept)")
    off = np.zeros(n) if offset is None else _as_float_array(offset, "offset", 1)
    if off.shape[0] != n:
        raise InputError(f"offset: {off.shape[0]} values but y has {n}")
    if trials is not None and family != "binomial":
        raise InputError(f"trials: only for the binomial family, not {family!r}")
    m = np.ones(n) if trials is None else _as_float_array(trials, "trials", 1)
    if m.shape[0] != n:
        raise InputError(f"trials: {m.shape[0]} values but y has {n}")
    if family == "binomial":
        bad = np.flatnonzero((m < 1) | (m != np.round(m)))
        if bad.size:
            raise InputError(f"trials: row {int(bad[0])} has {float(m[bad[0]])!r}; trials must be "
                             "positive integers")
        bad = np.flatnonzero((ya < 0) | (ya > m) | (ya != np.round(ya)))
        if bad.size:
            raise InputError(f"y: row {int(bad[0])} has {float(ya[bad[0]])!r}; binomial y "
                             "must be an integer number of successes between 0 and trials "
                             f"({m[bad[0]]:g})")
    elif family == "poisson":
        bad = np.flatnonzero((ya < 0) | (ya != np.round(ya)))
        if bad.size:
            raise InputError(f"y: row {int(bad[0])} has {float(ya[bad[0]])!r}; poisson y must be a "
                             "non-negative integer count")
    for array in (Xa, ya, off, m):
        array.setflags(write=False)
    return SiteData(family=family, X=Xa, y=ya, offset=off, trials=m)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name}: not finite ({value!r})")
    return number


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Proposal:
    """What the coordinator sends each site each iteration: the point to evaluate.

    Attributes
    ----------
    family
        The model's family (the site checks it matches its data).
    beta
        Fixed coefficients, in the columns' order of the site's ``X``.
    log_tau
        ``log`` of the random-intercept SD; ``None`` means ``tau = 0`` exactly (the
        ordinary GLM: the integral is then the plain likelihood).
    log_sigma
        Gaussian only: ``log`` of the residual SD.
    nodes
        Gauss-Hermite nodes per site: ``None`` lets each site climb :data:`NODE_LADDER`
        until two rules agree to ``tol`` (the default); an integer fixes the rule.
    tol
        The agreement required between two rules of the ladder, on ``log L_i``.
    iteration
        The coordinator's evaluation counter (for the site's audit and its cap).
    """

    family: str
    beta: tuple[float, ...]
    log_tau: float | None = None
    log_sigma: float | None = None
    nodes: int | None = None
    tol: float = QUADRATURE_TOL
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InputError(f"family: unknown value {self.family!r} "
                             f"(known: {', '.join(FAMILIES)})")
        beta = tuple(_finite(b, f"beta[{i}]") for i, b in enumerate(self.beta))
        if not beta:
            raise InputError("beta: empty (the model needs at least the intercept)")
        for i, b in enumerate(beta):
            if abs(b) > BETA_BOUND:
                raise InputError(f"beta[{i}]: {b!r} is outside [-{BETA_BOUND:g}, "
                                 f"{BETA_BOUND:g}]")
        object.__setattr__(self, "beta", beta)
        lo, hi = LOG_SCALE_BOUNDS
        for name in ("log_tau", "log_sigma"):
            value = getattr(self, name)
            if value is None:
                continue
            value = _finite(value, name)
            if not lo <= value <= hi:
                raise InputError(f"{name}: {value!r} is outside [{lo:g}, {hi:g}]")
            object.__setattr__(self, name, value)
        if self.family == "gaussian" and self.log_sigma is None:
            raise InputError("log_sigma: required for the gaussian family")
        if self.family != "gaussian" and self.log_sigma is not None:
            raise InputError(f"log_sigma: only for the gaussian family, not {self.family!r}")
        if self.nodes is not None and (isinstance(self.nodes, bool)
                                       or not isinstance(self.nodes, int)
                                       or not 2 <= self.nodes <= MAX_NODES):
            raise InputError(f"nodes: {self.nodes!r} is not an integer in [2, {MAX_NODES}]")
        tol = _finite(self.tol, "tol")
        if not 0 < tol < 1:
            raise InputError(f"tol: {tol!r} is not in (0, 1)")
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, int) \
                or self.iteration < 0:
            raise InputError(f"iteration: {self.iteration!r} is not a non-negative integer")

    @property
    def tau(self) -> float:
        """The random-intercept SD (0 when ``log_tau`` is ``None``)."""
        return 0.0 if self.log_tau is None else math.exp(self.log_tau)

    @property
    def sigma(self) -> float:
        """The residual SD (gaussian; NaN otherwise)."""
        return math.nan if self.log_sigma is None else math.exp(self.log_sigma)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plain numbers, ``null`` for absent values)."""
        return {"family": self.family, "beta": list(self.beta), "log_tau": self.log_tau,
                "log_sigma": self.log_sigma, "nodes": self.nodes, "tol": self.tol,
                "iteration": self.iteration}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Proposal:
        """Read and check a proposal received from the coordinator."""
        if not isinstance(data, Mapping):
            raise InputError(f"proposal: expected an object, got {type(data).__name__}")
        unknown = set(data) - {"family", "beta", "log_tau", "log_sigma", "nodes", "tol",
                               "iteration"}
        if unknown:
            raise InputError(f"proposal: unknown field(s) {sorted(unknown)}")
        for key in ("family", "beta"):
            if key not in data:
                raise InputError(f"proposal: missing field {key!r}")
        beta = data["beta"]
        if not isinstance(beta, (list, tuple)):
            raise InputError(f"beta: expected a list of numbers, got {beta!r}")
        return cls(family=data["family"], beta=tuple(beta), log_tau=data.get("log_tau"),
                   log_sigma=data.get("log_sigma"), nodes=data.get("nodes"),
                   tol=data.get("tol", QUADRATURE_TOL), iteration=data.get("iteration", 0))


def _parameter_count(p: int, family: str) -> int:
    return p + (2 if family == "gaussian" else 1)


@dataclass(frozen=True, eq=False)
class SiteContribution:
    """What a site returns for one proposal: its term of the marginal log-likelihood.

    Derivatives are with respect to ``(beta_0, ..., beta_{p-1}, tau[, sigma])`` on their
    natural scale (finite at ``tau = 0``).

    Attributes
    ----------
    n
        Rows at the site.
    loglik
        ``log L_i``, the full log-likelihood term (binomial coefficients and ``log y!``
        included, as R's ``logLik``); ``-inf`` when the proposal is numerically impossible
        (e.g. an overflowing poisson mean), and then ``gradient``/``hessian`` are NaN.
    gradient, hessian
        First and second derivatives of ``log L_i``.
    nodes
        Gauss-Hermite nodes used (0 for the closed-form gaussian likelihood).
    quadrature_error
        ``|log L_i(K) - log L_i(K_previous)|`` from the ladder (a bound on the relative error
        of ``L_i`` with the smaller rule; the one used is more accurate); 0 when exact
        (``tau = 0``, gaussian), NaN when the rule was fixed by the proposal.
    mode, mode_sd
        The conditional mode of the site's random intercept ``u_i`` and its conditional SD
        (lme4's ``ranef(..., condVar = TRUE)``: the inverse curvature of the log posterior
        at the mode).
    posterior_mean, posterior_sd
        The exact posterior mean and SD of ``u_i`` (by the same quadrature).
    """

    n: int
    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    nodes: int = 0
    quadrature_error: float = 0.0
    mode: float = 0.0
    mode_sd: float = 0.0
    posterior_mean: float = 0.0
    posterior_sd: float = 0.0

    @property
    def finite(self) -> bool:
        """Whether the log-likelihood and its derivatives are finite."""
        return bool(math.isfinite(self.loglik) and np.all(np.isfinite(self.gradient))
                    and np.all(np.isfinite(self.hessian)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; a non-finite log-likelihood is ``null``."""
        ok = self.finite
        return {"n": self.n, "loglik": self.loglik if ok else None,
                "gradient": self.gradient.tolist() if ok else None,
                "hessian": self.hessian.tolist() if ok else None,
                "nodes": self.nodes, "quadrature_error": _json_number(self.quadrature_error),
                "mode": _json_number(self.mode), "mode_sd": _json_number(self.mode_sd),
                "posterior_mean": _json_number(self.posterior_mean),
                "posterior_sd": _json_number(self.posterior_sd)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, parameters: int,
                  site: str = "site") -> SiteContribution:
        """Read and check a site's contribution (``parameters`` = its gradient's length)."""
        core = _read_core(data, parameters, site)
        if not math.isfinite(core["loglik"]):
            return cls(**core)

        def optional(key: str, default: float) -> float:
            value = data.get(key, default)
            return math.nan if value is None else _finite(value, f"{site}.{key}")

        return cls(**core, quadrature_error=optional("quadrature_error", 0.0),
                   mode=optional("mode", 0.0), mode_sd=optional("mode_sd", 0.0),
                   posterior_mean=optional("posterior_mean", 0.0),
                   posterior_sd=optional("posterior_sd", 0.0))


def _read_core(data: Mapping[str, Any], parameters: int, site: str) -> dict[str, Any]:
    """Check the fields every contribution has: ``n``, ``loglik`` (``null``: -inf),
    ``gradient``, ``hessian`` (shapes, finiteness, symmetry) and ``nodes``."""
    if not isinstance(data, Mapping):
        raise InputError(f"{site}: expected an object, got {type(data).__name__}")
    for key in ("n", "loglik", "gradient", "hessian"):
        if key not in data:
            raise InputError(f"{site}: missing field {key!r}")
    n = data["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{site}.n: {n!r} is not a positive integer")
    nodes = data.get("nodes", 0)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
        raise InputError(f"{site}.nodes: {nodes!r} is not a non-negative integer")
    if data["loglik"] is None:
        return {"n": n, "loglik": -math.inf, "gradient": np.full(parameters, np.nan),
                "hessian": np.full((parameters, parameters), np.nan), "nodes": nodes}
    loglik = _finite(data["loglik"], f"{site}.loglik")
    try:
        grad = np.array(data["gradient"], dtype=float)
        hess = np.array(data["hessian"], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{site}: gradient/hessian are not numeric") from None
    if grad.shape != (parameters,):
        raise InputError(f"{site}.gradient: shape {grad.shape}, expected ({parameters},)")
    if hess.shape != (parameters, parameters):
        raise InputError(f"{site}.hessian: shape {hess.shape}, expected "
                         f"({parameters}, {parameters})")
    if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
        raise InputError(f"{site}: non-finite gradient or hessian")
    if not np.allclose(hess, hess.T, rtol=1e-8, atol=1e-10 * (1 + np.abs(hess).max())):
        raise InputError(f"{site}.hessian: not symmetric")
    return {"n": n, "loglik": loglik, "gradient": grad, "hessian": hess, "nodes": nodes}


class _Contribution(Protocol):
    """What :func:`combine` needs of a site's reply (random intercept or slope)."""

    @property
    def n(self) -> int: ...

    @property
    def loglik(self) -> float: ...

    @property
    def gradient(self) -> np.ndarray: ...

    @property
    def hessian(self) -> np.ndarray: ...

    @property
    def quadrature_error(self) -> float: ...

    @property
    def finite(self) -> bool: ...


@dataclass(frozen=True, eq=False)
class Totals:
    """The sum of the sites' contributions: what the optimiser needs."""

    n: int
    sites: int
    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    max_quadrature_error: float


def combine(contributions: Sequence[_Contribution] | Mapping[str, _Contribution]
            ) -> Totals:
    """Add up site contributions (order does not matter: ``math.fsum`` for the value)."""
    items = list(contributions.values()) if isinstance(contributions, Mapping) \
        else list(contributions)
    if not items:
        raise InputError("contributions: no site contributed")
    q = items[0].gradient.shape[0]
    if any(c.gradient.shape[0] != q for c in items):
        raise InputError("contributions: sites sent gradients of different lengths")
    if not all(c.finite for c in items):
        return Totals(n=sum(c.n for c in items), sites=len(items), loglik=-math.inf,
                      gradient=np.full(q, np.nan), hessian=np.full((q, q), np.nan),
                      max_quadrature_error=math.nan)
    # Sorted summation makes the total independent of the sites' order to the last bit.
    order = sorted(range(len(items)), key=lambda i: (items[i].loglik, items[i].n))
    grad = np.zeros(q)
    hess = np.zeros((q, q))
    for i in order:
        grad = grad + items[i].gradient
        hess = hess + items[i].hessian
    errors = [c.quadrature_error for c in items if math.isfinite(c.quadrature_error)]
    return Totals(n=sum(c.n for c in items), sites=len(items),
                  loglik=math.fsum(c.loglik for c in items), gradient=grad,
                  hessian=(hess + hess.T) / 2,
                  max_quadrature_error=max(errors) if errors else math.nan)


# --------------------------------------------------------------------------------------
# The site: adaptive Gauss-Hermite quadrature
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _rule(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``x`` and ``log w + x^2/2`` of the ``k``-point Gauss-Hermite rule for the
    weight ``exp(-x^2/2)`` (so that ``int f = sum exp(log w + x^2/2) f(x)`` for any ``f``)."""
    x, w = hermegauss(k)
    with np.errstate(divide="ignore"):
        logw = np.log(w) + x * x / 2.0
    x.setflags(write=False)
    logw.setflags(write=False)
    return x, logw


def _terms(data: SiteData, eta: np.ndarray, sigma: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row log density (without the constant), its first and second derivative in eta.

    ``eta`` has shape ``(n,)`` or ``(n, K)``; ``y`` and ``trials`` broadcast along rows.
    """
    y = data.y if eta.ndim == 1 else data.y[:, None]
    if data.family == "binomial":
        m = data.trials if eta.ndim == 1 else data.trials[:, None]
        prob = expit(eta)
        return (y * eta - m * np.logaddexp(0.0, eta), y - m * prob,
                -m * prob * (1.0 - prob))
    if data.family == "poisson":
        with np.errstate(over="ignore", invalid="ignore"):
            mu = np.exp(eta)
            return y * eta - mu, y - mu, -mu
    resid = y - eta
    s2 = sigma * sigma
    return (-0.5 * resid * resid / s2 - 0.5 * (_LOG_2PI + 2.0 * math.log(sigma)),
            resid / s2, np.full_like(resid, -1.0 / s2))


def _mode(data: SiteData, eta: np.ndarray, tau: float, sigma: float
          ) -> tuple[float, float, float]:
    """Mode ``z_hat`` of ``g(z) = sum_j log f(y_j | eta_j + tau z) - z^2/2``, ``g(z_hat)``
    (without constants) and ``-g''(z_hat)``.

    ``g`` is strictly concave (canonical links), so Newton's method with step halving
    converges from ``z = 0``; the prior term keeps the mode finite even when the site's
    outcomes are all 0 or all 1 (a separated site).
    """

    def evaluate(z: float) -> tuple[float, float, float]:
        value, d1, d2 = _terms(data, eta + tau * z, sigma)
        return (float(value.sum()) - 0.5 * z * z, tau * float(d1.sum()) - z,
                tau * tau * float(d2.sum()) - 1.0)

    z = 0.0
    g, g1, g2 = evaluate(z)
    if tau == 0.0 or not math.isfinite(g):
        return z, g, -g2
    for _ in range(200):
        step = -g1 / g2
        for _ in range(60):
            g_new, g1_new, g2_new = evaluate(z + step)
            if math.isfinite(g_new) and g_new >= g - 1e-13 * (1.0 + abs(g)):
                break
            step /= 2.0
        else:
            break
        z += step
        g, g1, g2 = g_new, g1_new, g2_new
        if abs(step) <= 1e-13 * (1.0 + abs(z)):
            break
    return z, g, -g2


@dataclass(frozen=True, eq=False)
class QuadratureResult:
    """A site's log-likelihood term by adaptive Gauss-Hermite quadrature.

    ``gradient`` and ``hessian`` are with respect to ``(beta, tau)`` (for the gaussian
    family ``sigma`` is held fixed). ``mode``, ``mode_sd``, ``posterior_mean``,
    ``posterior_sd`` describe the site's random intercept ``u = tau z`` (see
    :class:`SiteContribution`); ``z_mode`` and ``z_scale`` are the centre and scale of the
    adaptive rule; ``error`` is the ladder's estimate (NaN for a fixed rule).
    """

    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    nodes: int
    error: float
    mode: float
    mode_sd: float
    posterior_mean: float
    posterior_sd: float
    z_mode: float
    z_scale: float


def _quadrature(data: SiteData, beta: np.ndarray, tau: float, sigma: float, k: int,
                centre: tuple[float, float, float]) -> QuadratureResult:
    eta0 = data.X @ beta + data.offset
    z_hat, g_hat, curvature = centre
    scale = 1.0 / math.sqrt(curvature)
    x, logw = _rule(k)
    z = z_hat + scale * x
    value, d1, d2 = _terms(data, eta0[:, None] + tau * z[None, :], sigma)
    g = value.sum(axis=0) - 0.5 * z * z - 0.5 * _LOG_2PI
    with np.errstate(invalid="ignore"):
        log_terms = logw + g
    top = float(np.max(log_terms))
    log_sum = top + math.log(float(np.sum(np.exp(log_terms - top))))
    loglik = math.log(scale) + log_sum + data.log_constant
    post = np.exp(log_terms - log_sum)  # posterior weights of the nodes (sum to 1)
    # complete-data score S_k = (X' l'_k, z_k sum_j l'_jk) and its posterior moments
    d1_sum = d1.sum(axis=0)
    scores = np.vstack([data.X.T @ d1, z * d1_sum])
    mean_score = scores @ post
    centred = scores - mean_score[:, None]
    cov_score = (centred * post) @ centred.T
    # posterior mean of the complete-data Hessian
    w_rows = d2 @ post
    w_rows_z = d2 @ (z * post)
    p = data.p
    hess = np.empty((p + 1, p + 1))
    hess[:p, :p] = data.X.T @ (data.X * w_rows[:, None])
    hess[:p, p] = hess[p, :p] = data.X.T @ w_rows_z
    hess[p, p] = float((d2.sum(axis=0) * z * z) @ post)
    hess = hess + cov_score
    z_mean = float(z @ post)
    z_var = float(((z - z_mean) ** 2) @ post)
    return QuadratureResult(
        loglik=loglik, gradient=mean_score, hessian=(hess + hess.T) / 2, nodes=k,
        error=math.nan, mode=tau * z_hat, mode_sd=tau * scale, posterior_mean=tau * z_mean,
        posterior_sd=tau * math.sqrt(max(z_var, 0.0)), z_mode=z_hat, z_scale=scale)


def _impossible(data: SiteData, q: int) -> SiteContribution:
    return SiteContribution(n=data.n, loglik=-math.inf, gradient=np.full(q, np.nan),
                            hessian=np.full((q, q), np.nan), nodes=0,
                            quadrature_error=math.nan, mode=math.nan, mode_sd=math.nan,
                            posterior_mean=math.nan, posterior_sd=math.nan)


def _check_proposal(data: SiteData, proposal: Proposal) -> np.ndarray:
    if proposal.family != data.family:
        raise InputError(f"family: the proposal is for {proposal.family!r} but the site's "
                         f"data are {data.family!r}")
    if len(proposal.beta) != data.p:
        raise InputError(f"beta: {len(proposal.beta)} coefficients proposed but the site's "
                         f"design has {data.p} columns")
    return np.array(proposal.beta, dtype=float)


def adaptive_quadrature(data: SiteData, proposal: Proposal,
                        nodes: int | None = None) -> QuadratureResult:
    """``log L_i`` and its derivatives in ``(beta, tau)`` by adaptive Gauss-Hermite.

    The rule is centred at the mode of the site's integrand in ``z = u / tau`` and scaled
    by the inverse square root of its curvature there (Liu & Pierce 1994). With
    ``nodes=None`` (and ``proposal.nodes`` None) the rules of :data:`NODE_LADDER` are
    tried in turn until two successive ones agree to ``proposal.tol`` in ``log L_i`` and,
    relatively, in every gradient component; the larger one is returned with the
    difference as ``error``.

    Works for every family (for gaussian ``sigma`` is held fixed at the proposal's value:
    the closed form in :func:`site_contribution` is what a gaussian site sends).
    """
    beta = _check_proposal(data, proposal)
    tau = proposal.tau
    sigma = proposal.sigma
    eta0 = data.X @ beta + data.offset
    centre = _mode(data, eta0, tau, sigma)
    if not (math.isfinite(centre[1]) and math.isfinite(centre[2]) and centre[2] > 0):
        raise _Impossible
    fixed = nodes if nodes is not None else proposal.nodes
    if fixed is not None:
        return _quadrature(data, beta, tau, sigma, fixed, centre)
    previous = _quadrature(data, beta, tau, sigma, NODE_LADDER[0], centre)
    current = previous
    diff = math.nan
    for k in NODE_LADDER[1:]:
        current = _quadrature(data, beta, tau, sigma, k, centre)
        diff = abs(current.loglik - previous.loglik)
        grad_diff = np.abs(current.gradient - previous.gradient) / (
            1.0 + np.abs(current.gradient))
        if diff <= proposal.tol and float(grad_diff.max()) <= proposal.tol:
            break
        previous = current
    return replace(current, error=diff)


class _Impossible(Exception):
    """The proposal gives a non-finite log-likelihood at this site."""


def _gaussian_closed_form(data: SiteData, beta: np.ndarray, tau: float,
                          sigma: float) -> SiteContribution:
    """``y_i ~ N(X_i beta + o_i, sigma^2 I + tau^2 J)``: value and derivatives in
    ``(beta, tau, sigma)`` from the eigen-decomposition of the compound-symmetric
    covariance (eigenvalue ``sigma^2 + n tau^2`` along ``1``, ``sigma^2`` on its
    complement; Searle, Casella & McCulloch, *Variance Components*, Wiley 1992, ch. 3)."""
    X = data.X
    n = data.n
    r = data.y - data.offset - X @ beta
    s = float(r.sum())
    c = X.sum(axis=0)
    xr = X.T @ r
    a = sigma * sigma
    D = a + n * tau * tau
    r1 = s * s / n
    r_perp = max(float(r @ r) - r1, 0.0)
    # l = -1/2 [n log 2pi + A(a, R_perp) + B(D, R1)]
    A_a = (n - 1) / a - r_perp / a**2
    A_aa = -(n - 1) / a**2 + 2.0 * r_perp / a**3
    A_R = 1.0 / a
    A_aR = -1.0 / a**2
    B_D = 1.0 / D - r1 / D**2
    B_DD = -1.0 / D**2 + 2.0 * r1 / D**3
    B_R = 1.0 / D
    B_DR = -1.0 / D**2
    r1_b = -2.0 * s * c / n
    rp_b = -2.0 * xr + 2.0 * s * c / n
    r1_bb = 2.0 * np.outer(c, c) / n
    rp_bb = 2.0 * (X.T @ X) - r1_bb
    a_s, a_ss = 2.0 * sigma, 2.0
    D_s, D_ss, D_t, D_tt = 2.0 * sigma, 2.0, 2.0 * n * tau, 2.0 * n
    loglik = -0.5 * (n * _LOG_2PI + (n - 1) * math.log(a) + r_perp / a + math.log(D)
                     + r1 / D)
    p = data.p
    grad = np.empty(p + 2)
    grad[:p] = -0.5 * (A_R * rp_b + B_R * r1_b)
    grad[p] = -0.5 * B_D * D_t
    grad[p + 1] = -0.5 * (A_a * a_s + B_D * D_s)
    hess = np.empty((p + 2, p + 2))
    hess[:p, :p] = -0.5 * (A_R * rp_bb + B_R * r1_bb)
    hess[:p, p] = hess[p, :p] = -0.5 * B_DR * D_t * r1_b
    hess[:p, p + 1] = hess[p + 1, :p] = -0.5 * (A_aR * a_s * rp_b + B_DR * D_s * r1_b)
    hess[p, p] = -0.5 * (B_DD * D_t**2 + B_D * D_tt)
    hess[p, p + 1] = hess[p + 1, p] = -0.5 * B_DD * D_t * D_s
    hess[p + 1, p + 1] = -0.5 * (A_aa * a_s**2 + A_a * a_ss + B_DD * D_s**2 + B_D * D_ss)
    blup = tau * tau * s / D
    cond_sd = tau * sigma / math.sqrt(D)
    return SiteContribution(n=n, loglik=loglik, gradient=grad, hessian=hess, nodes=0,
                            quadrature_error=0.0, mode=blup, mode_sd=cond_sd,
                            posterior_mean=blup, posterior_sd=cond_sd)


def _glm_at_tau_zero(data: SiteData, beta: np.ndarray) -> SiteContribution:
    """``tau = 0``: no integral, the ordinary GLM likelihood. Its derivatives in ``tau``
    are those of the integral at ``tau = 0`` (the posterior of ``z`` is then ``N(0, 1)``):
    ``dl/dtau = E[z] sum l' = 0``, ``d2l/dbeta dtau = 0`` and
    ``d2l/dtau2 = E[z^2] (sum l')^2 + E[z^2] sum l'' = (sum l')^2 + sum l''``."""
    value, d1, d2 = _terms(data, data.X @ beta + data.offset, math.nan)
    p = data.p
    grad = np.zeros(p + 1)
    grad[:p] = data.X.T @ d1
    hess = np.zeros((p + 1, p + 1))
    hess[:p, :p] = data.X.T @ (data.X * d2[:, None])
    hess[p, p] = float(d1.sum()) ** 2 + float(d2.sum())
    return SiteContribution(n=data.n, loglik=float(value.sum()) + data.log_constant,
                            gradient=grad, hessian=hess, nodes=0, quadrature_error=0.0)


def site_contribution(data: SiteData, proposal: Proposal) -> SiteContribution:
    """The site function: this site's term of the marginal log-likelihood at a proposal.

    Parameters
    ----------
    data
        The site's own rows (:func:`site_data`); ``X`` includes the intercept column.
    proposal
        The coordinator's point (:class:`Proposal`).

    Returns
    -------
    SiteContribution
        ``log L_i`` with its gradient and Hessian in ``(beta, tau[, sigma])``, the node
        count and error estimate, and the site's random intercept (conditional mode with its
        conditional SD, posterior mean and SD). Binomial and poisson use
        :func:`adaptive_quadrature` (at ``tau = 0`` the plain GLM likelihood, no integral);
        gaussian its closed form.

    Raises
    ------
    InputError
        The proposal does not fit the site's data (family, number of coefficients).

    Examples
    --------
    >>> import numpy as np
    >>> data = site_data(np.ones((4, 1)), [0, 1, 1, 0], family="binomial")
    >>> part = site_contribution(data, Proposal("binomial", (0.0,), log_tau=0.0))
    >>> round(part.loglik, 6), part.mode
    (-3.104739, 0.0)
    """
    beta = _check_proposal(data, proposal)
    q = _parameter_count(data.p, data.family)
    if data.family == "gaussian":
        with np.errstate(over="ignore", invalid="ignore"):
            part = _gaussian_closed_form(data, beta, proposal.tau, proposal.sigma)
        return part if part.finite else _impossible(data, q)
    if proposal.tau == 0.0:
        with np.errstate(over="ignore", invalid="ignore"):
            part = _glm_at_tau_zero(data, beta)
        return part if part.finite else _impossible(data, q)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            result = adaptive_quadrature(data, proposal)
    except _Impossible:
        return _impossible(data, q)
    if not (math.isfinite(result.loglik) and np.all(np.isfinite(result.gradient))
            and np.all(np.isfinite(result.hessian))):
        return _impossible(data, q)
    return SiteContribution(
        n=data.n, loglik=result.loglik, gradient=result.gradient, hessian=result.hessian,
        nodes=result.nodes, quadrature_error=result.error,
        mode=result.mode, mode_sd=result.mode_sd, posterior_mean=result.posterior_mean,
        posterior_sd=result.posterior_sd)


# --------------------------------------------------------------------------------------
# The coordinator: Newton's method on (beta, log tau [, log sigma])
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitControl:
    """Settings of the coordinator's optimiser.

    Attributes
    ----------
    tol
        Convergence: when the Newton decrement ``g' (-H)^{-1} g`` (twice the gain in
        log-likelihood the next step predicts) is below ``tol``, one last full Newton step
        is taken and its point returned.
    maxit
        Newton iterations at most (per stage: ``tau = 0``, then the full model).
    max_halvings
        Step halvings per line search at most.
    nodes
        Quadrature rule: ``None`` (each site climbs the ladder) or a fixed node count.
    quadrature_tol
        The ladder's agreement target (``log L_i``).
    tau_start
        Starting ``tau`` (default: a moment estimate from the ``tau = 0`` fit).
    level
        Confidence level of the site intercepts' intervals and the coefficients' CIs.
    """

    tol: float = 1e-10
    maxit: int = 100
    max_halvings: int = 40
    nodes: int | None = None
    quadrature_tol: float = QUADRATURE_TOL
    tau_start: float | None = None
    level: float = 0.95

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise InputError(f"tol: {self.tol!r} is not a positive number")
        if isinstance(self.maxit, bool) or not isinstance(self.maxit, int) or self.maxit < 1:
            raise InputError(f"maxit: {self.maxit!r} is not a positive integer")
        if not isinstance(self.max_halvings, int) or self.max_halvings < 1:
            raise InputError(f"max_halvings: {self.max_halvings!r} is not a positive integer")
        if self.nodes is not None and (isinstance(self.nodes, bool)
                                       or not isinstance(self.nodes, int)
                                       or not 2 <= self.nodes <= MAX_NODES):
            raise InputError(f"nodes: {self.nodes!r} is not an integer in [2, {MAX_NODES}]")
        if not (math.isfinite(self.quadrature_tol) and 0 < self.quadrature_tol < 1):
            raise InputError(f"quadrature_tol: {self.quadrature_tol!r} is not in (0, 1)")
        if self.tau_start is not None and not (math.isfinite(self.tau_start)
                                               and self.tau_start > 0):
            raise InputError(f"tau_start: {self.tau_start!r} is not a positive number")
        if not (math.isfinite(self.level) and 0 < self.level < 1):
            raise InputError(f"level: {self.level!r} is not in (0, 1)")


@dataclass(frozen=True)
class SiteIntercept:
    """A site's random-intercept deviation ``u_i`` at the fitted parameters.

    ``mode`` is the conditional mode (lme4's ``ranef``), ``sd`` its conditional SD (lme4's
    ``condVar``), ``ci_lb``/``ci_ub`` the Wald interval ``mode -/+ z sd`` (as lme4's
    ``dotplot(ranef(fit, condVar = TRUE))``); ``posterior_mean``/``posterior_sd`` are the
    exact moments of ``u_i`` given the site's data at the estimates (empirical Bayes).
    """

    site: str
    n: int
    mode: float
    sd: float
    ci_lb: float
    ci_ub: float
    posterior_mean: float
    posterior_sd: float

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mode": self.mode, "sd": self.sd, "ci_lb": self.ci_lb,
                "ci_ub": self.ci_ub, "posterior_mean": self.posterior_mean,
                "posterior_sd": self.posterior_sd}


def latent_icc(family: str, tau2: float, *, sigma2: float = math.nan,
               intercept: float = math.nan) -> float:
    """Intraclass correlation on the latent scale (see :data:`ICC_DEFINITIONS`)."""
    if family == "binomial":
        return tau2 / (tau2 + math.pi**2 / 3.0)
    if family == "poisson":
        lam = math.exp(intercept + tau2 / 2.0)
        return tau2 / (tau2 + math.log1p(1.0 / lam))
    if family == "gaussian":
        return tau2 / (tau2 + sigma2)
    raise InputError(f"family: unknown value {family!r}")


@dataclass(frozen=True, eq=False)
class HierarchicalFit:
    """The fitted random-intercept GLM.

    Attributes
    ----------
    family, link
        The family and its link.
    names
        Coefficient names (the design's columns).
    coefficients, se, z, pvalue, ci_lb, ci_ub
        Fixed coefficients with Wald statistics from the observed information of the
        marginal likelihood (``tau`` and ``sigma`` estimated jointly, as glmer).
    tau, tau2, log_tau, se_log_tau, se_tau
        The random-intercept SD, variance, its log and the SEs of ``log tau`` and of ``tau``
        (``se_tau = tau * se_log_tau``, exact at the maximum). NaN SEs when ``tau = 0``.
    sigma, sigma2, se_log_sigma
        Gaussian residual SD (ML) and the SE of its log; NaN for other families.
    loglik
        The maximised marginal log-likelihood (R's ``logLik``).
    icc, icc_definition
        Intraclass correlation on the latent scale.
    covariance
        Inverse observed information in ``(beta, log tau[, log sigma])``; at ``tau = 0``
        only the ``beta`` (and ``log sigma``) block, the ``log tau`` row and column NaN.
    site_intercepts
        Per site, :class:`SiteIntercept` (same order as the sites answered).
    boundary
        ``True`` when the maximum is at ``tau = 0`` (the ordinary GLM).
    converged, message
        Whether Newton's method met its criterion; what happened otherwise.
    iterations, evaluations
        Newton iterations and round trips (one proposal to every site each).
    nodes, max_quadrature_error
        The node count each site used at the estimate; the largest ladder difference.
    n, k
        Rows and sites.
    """

    family: str
    link: str
    names: tuple[str, ...]
    coefficients: np.ndarray
    se: np.ndarray
    z: np.ndarray
    pvalue: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    tau: float
    tau2: float
    log_tau: float
    se_log_tau: float
    se_tau: float
    sigma: float
    sigma2: float
    se_log_sigma: float
    loglik: float
    icc: float
    icc_definition: str
    covariance: np.ndarray
    site_intercepts: Mapping[str, SiteIntercept]
    boundary: bool
    converged: bool
    message: str
    iterations: int
    evaluations: int
    nodes: Mapping[str, int]
    max_quadrature_error: float
    n: int
    k: int
    level: float = 0.95
    history: tuple[float, ...] = field(default=(), repr=False)

    def summary(self) -> str:
        """A plain-text table in the spirit of lme4's ``summary(glmer(...))``."""
        lines = [f"Random-intercept GLM, {self.family} ({self.link} link), fitted by exact "
                 "maximum marginal likelihood",
                 f"  (adaptive Gauss-Hermite quadrature per site; max quadrature error "
                 f"{self.max_quadrature_error:.1e})" if self.family != "gaussian" else
                 "  (closed-form gaussian marginal likelihood)",
                 f"sites = {self.k}, n = {self.n}, logLik = {self.loglik:.4f}, "
                 f"round trips = {self.evaluations}, {self.message}", "",
                 "Random intercept:"]
        se_tau = "" if math.isnan(self.se_tau) else f" (SE {self.se_tau:.4f})"
        lines.append(f"  tau = {self.tau:.4f}{se_tau}, tau2 = {self.tau2:.4f}, "
                     f"ICC (latent) = {self.icc:.4f}")
        if self.family == "gaussian":
            lines.append(f"  residual sigma = {self.sigma:.4f}")
        lines += ["", "Fixed effects:",
                  f"  {'':<14}{'Estimate':>11}{'Std.Error':>11}{'z value':>9}{'Pr(>|z|)':>10}"]
        for i, name in enumerate(self.names):
            lines.append(f"  {name:<14}{self.coefficients[i]:>11.5f}{self.se[i]:>11.5f}"
                         f"{self.z[i]:>9.3f}{self.pvalue[i]:>10.3g}")
        crit = 100 * self.level
        lines += ["", f"Site intercepts (conditional mode, conditional SD, {crit:g}% interval):"]
        for site, ri in self.site_intercepts.items():
            lines.append(f"  {site:<14}{ri.mode:>10.4f}{ri.sd:>9.4f}   "
                         f"[{ri.ci_lb:.4f}, {ri.ci_ub:.4f}]  n = {ri.n}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; issue 14's ``"hierarchical"`` keys (``coefficients``, ``se``, ``tau``,
        ``tau2``, ``logLik``, ``site_intercepts``, ``site_intercepts_se``) plus the rest."""

        def num(value: float) -> float | None:
            return _json_number(float(value))

        def named(values: np.ndarray) -> dict[str, float | None]:
            return {name: num(v) for name, v in zip(self.names, values)}

        out: dict[str, Any] = {
            "family": self.family, "link": self.link,
            "coefficients": named(self.coefficients), "se": named(self.se),
            "z": named(self.z), "pvalue": named(self.pvalue), "ci_lb": named(self.ci_lb),
            "ci_ub": named(self.ci_ub), "level": self.level,
            "tau": num(self.tau), "tau2": num(self.tau2), "log_tau": num(self.log_tau),
            "se_log_tau": num(self.se_log_tau), "se_tau": num(self.se_tau),
            "logLik": num(self.loglik), "icc": num(self.icc),
            "icc_definition": self.icc_definition,
            "site_intercepts": {s: num(v.mode) for s, v in self.site_intercepts.items()},
            "site_intercepts_se": {s: num(v.sd) for s, v in self.site_intercepts.items()},
            "site_intercepts_detail": {s: {k: num(x) if isinstance(x, float) else x
                                           for k, x in v.to_dict().items()}
                                       for s, v in self.site_intercepts.items()},
            "covariance": [[num(v) for v in row] for row in self.covariance],
            "boundary": self.boundary, "converged": self.converged, "message": self.message,
            "iterations": self.iterations, "evaluations": self.evaluations,
            "nodes": dict(self.nodes), "max_quadrature_error": num(self.max_quadrature_error),
            "n": self.n, "k": self.k,
        }
        if self.family == "gaussian":
            out.update(sigma=num(self.sigma), sigma2=num(self.sigma2),
                       se_log_sigma=num(self.se_log_sigma))
        return out


Evaluate = Callable[[Proposal], Mapping[str, SiteContribution] | Totals]


@dataclass(frozen=True, eq=False)
class _Point:
    """One evaluated point in the optimiser's coordinates."""

    theta: np.ndarray  # (beta, [log tau], [log sigma]) -- the free coordinates
    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    raw: Totals
    sites: Mapping[str, Any]


class _PointSource(Protocol):
    """What :func:`_newton` needs: the settings and a way to evaluate a point."""

    control: FitControl

    def point(self, theta: np.ndarray, *, with_tau: bool) -> _Point: ...


class _Problem:
    """Bookkeeping shared by the two stages: coordinates, proposals, round trips."""

    def __init__(self, evaluate: Evaluate, family: str, p: int, control: FitControl) -> None:
        self.evaluate = evaluate
        self.family = family
        self.p = p
        self.control = control
        self.evaluations = 0
        self.q = _parameter_count(p, family)

    def proposal(self, beta: np.ndarray, log_tau: float | None,
                 log_sigma: float | None) -> Proposal:
        return Proposal(family=self.family, beta=tuple(float(b) for b in beta),
                        log_tau=log_tau, log_sigma=log_sigma, nodes=self.control.nodes,
                        tol=self.control.quadrature_tol, iteration=self.evaluations)

    def call(self, proposal: Proposal) -> tuple[Totals, Mapping[str, SiteContribution]]:
        self.evaluations += 1
        sites = self.evaluate(proposal)
        if isinstance(sites, Totals):  # already summed (e.g. by secure aggregation)
            if sites.gradient.shape != (self.q,):
                raise FedsynthError(f"evaluate: summed gradient of length "
                                    f"{sites.gradient.shape[0]}, expected {self.q}")
            return sites, {}
        if not isinstance(sites, Mapping) or not sites:
            raise FedsynthError("evaluate: returned no site contributions")
        for name, part in sites.items():
            if part.gradient.shape != (self.q,):
                raise FedsynthError(f"{name}: gradient of length {part.gradient.shape[0]}, "
                                    f"expected {self.q}")
        return combine(sites), sites

    def point(self, theta: np.ndarray, *, with_tau: bool) -> _Point:
        """Evaluate at ``theta`` and express the derivatives in ``theta``'s coordinates."""
        p = self.p
        beta = theta[:p]
        log_tau = float(theta[p]) if with_tau else None
        gauss = self.family == "gaussian"
        log_sigma = float(theta[-1]) if gauss else None
        totals, sites = self.call(self.proposal(beta, log_tau, log_sigma))
        # raw coordinates (beta, tau[, sigma]) -> the free log coordinates
        keep = list(range(p)) + ([p] if with_tau else []) + ([p + 1] if gauss else [])
        scale = np.ones(len(keep))
        logs = []
        if with_tau:
            scale[p] = math.exp(theta[p])
            logs.append(p)
        if gauss:
            scale[-1] = math.exp(theta[-1])
            logs.append(len(keep) - 1)
        g_raw = totals.gradient[keep]
        h_raw = totals.hessian[np.ix_(keep, keep)]
        grad = scale * g_raw
        hess = h_raw * np.outer(scale, scale)
        for i in logs:
            hess[i, i] += scale[i] * g_raw[i]
        return _Point(theta=theta.copy(), loglik=totals.loglik, gradient=grad, hessian=hess,
                      raw=totals, sites=sites)


def _direction(point: _Point) -> tuple[np.ndarray, float, bool]:
    """Newton direction from ``-H d = g``, the decrement ``g'd`` and whether ``-H`` was
    positive definite (else its eigenvalues are reflected and floored: a modified Newton
    step that still ascends)."""
    neg = -point.hessian
    vals, vecs = np.linalg.eigh((neg + neg.T) / 2)
    top = float(np.max(np.abs(vals))) if vals.size else 1.0
    definite = bool(vals.min() > 1e-12 * max(top, 1e-300))
    if not definite:
        vals = np.maximum(np.abs(vals), max(top, 1.0) * 1e-8)
    d = vecs @ ((vecs.T @ point.gradient) / vals)
    return d, float(point.gradient @ d), definite


def _newton(problem: _PointSource, start: _Point, *, with_tau: bool, bounds: np.ndarray,
            history: list[float],
            stop: Callable[[_Point, np.ndarray], bool] | None = None
            ) -> tuple[_Point, bool, str, int]:
    """Maximise with Newton steps and a backtracking (Armijo) line search.

    ``bounds`` is ``(q_free, 2)``; log-scale coordinates are kept inside them and a step
    that pushes a coordinate at its bound further out has that component dropped
    (projected Newton). ``stop(point, direction)`` may end the search (the boundary
    test).
    Returns the best point, whether it converged, a message and the iterations used.
    """
    control = problem.control
    point = start
    history.append(point.loglik)
    lower, upper = bounds[:, 0], bounds[:, 1]
    log_idx = np.flatnonzero(np.isfinite(lower))
    for iteration in range(1, control.maxit + 1):
        d, decrement, definite = _direction(point)
        at_lower = (point.theta <= lower + 1e-12) & (d < 0)
        at_upper = (point.theta >= upper - 1e-12) & (d > 0)
        if np.any(at_lower | at_upper):
            free = ~(at_lower | at_upper)
            sub = _Point(theta=point.theta[free], loglik=point.loglik,
                         gradient=point.gradient[free],
                         hessian=point.hessian[np.ix_(free, free)], raw=point.raw,
                         sites=point.sites)
            d_free, decrement, definite = _direction(sub)
            d = np.zeros_like(d)
            d[free] = d_free
        if stop is not None and stop(point, d):
            return point, True, "boundary", iteration - 1
        # Close enough for the quadratic model to be exact to rounding: take this last full
        # Newton step and stop (its error is of the order of the square of this one's).
        final = definite and decrement < control.tol
        # at most 3 units per step on a log scale (a factor of 20 in tau or sigma)
        if log_idx.size:
            biggest = float(np.max(np.abs(d[log_idx])))
            if biggest > 3.0:
                d = d * (3.0 / biggest)
        t = 1.0
        accepted: _Point | None = None
        for _ in range(control.max_halvings):
            trial_theta = np.clip(point.theta + t * d, lower, upper)
            trial = problem.point(trial_theta, with_tau=with_tau)
            gain = float(point.gradient @ (trial_theta - point.theta))
            noise = 1e-10 * (1.0 + abs(point.loglik))
            if math.isfinite(trial.loglik) and (
                    trial.loglik >= point.loglik + 1e-4 * gain
                    or (decrement < 1e-6 and trial.loglik >= point.loglik - noise)):
                accepted = trial
                break
            t /= 2.0
        if accepted is None:
            if definite and decrement < 1e-6:
                return point, True, "converged (at the numerical noise floor)", iteration
            return point, False, (f"line search failed at iteration {iteration} "
                                  f"(Newton decrement {decrement:.3g})"), iteration
        point = accepted
        history.append(point.loglik)
        if final:
            return point, True, "converged", iteration
    return point, False, f"no convergence in {control.maxit} iterations", control.maxit


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    out = tuple(str(n) for n in names)
    if not out:
        raise InputError("names: the model has no coefficients")
    if len(set(out)) != len(out):
        raise InputError(f"names: duplicated coefficient names {list(out)}")
    if INTERCEPT not in out:
        raise InputError(f"names: a random-intercept model needs the fixed {INTERCEPT!r} "
                         f"column (got {list(out)})")
    return out


def fit_random_intercept(evaluate: Evaluate, *, names: Sequence[str], family: str,
                         control: FitControl | None = None) -> HierarchicalFit:
    """The coordinator: maximise the summed marginal log-likelihood of the sites.

    Parameters
    ----------
    evaluate
        Sends a :class:`Proposal` to every site and returns ``{site: SiteContribution}``
        (one round trip), or their sum as a :class:`Totals` (e.g. from secure aggregation).
        The optimiser uses only the sum; the per-site random intercepts are read from the
        last evaluation, so with sums alone ``site_intercepts`` and ``nodes`` are empty.
    names
        Coefficient names, one per column of the sites' designs; must include
        ``"intercept"``.
    family
        ``binomial``, ``poisson`` or ``gaussian``.
    control
        :class:`FitControl`.

    Returns
    -------
    HierarchicalFit

    Notes
    -----
    Stage 1 fits ``tau = 0`` (the ordinary GLM) by Newton's method from the intercept-only
    estimate (read off the first evaluation at ``beta = 0``); it gives the start
    ``tau_0^2 = max(c_0, 0) / sum_i w_i^2`` (``c_0 = d2l/dtau2`` at ``tau = 0``, ``w_i``
    site ``i``'s information on the intercept: a moment estimate) and the boundary test.
    Stage 2 runs Newton's method on ``(beta, log tau[, log sigma])`` with ``log tau`` in
    :data:`LOG_SCALE_BOUNDS`, from ``tau_0`` (``tau_0 = 0.5`` (times sigma for gaussian)
    when ``c_0 <= 0``). The maximum is at ``tau = 0`` when ``c_0 <= 0`` (``tau = 0`` is then
    a local maximum: the likelihood is even in ``tau`` and its ``beta``-``tau`` cross
    derivatives vanish there), the current log-likelihood is not above the ``tau = 0`` one
    and the Newton step heads towards smaller ``tau``; a boundary maximum is so found in
    one or two round trips instead of by creeping along ``log tau -> -inf``. Standard
    errors are the square roots of the diagonal of the
    inverse observed information (the negative summed Hessian) at the maximum.
    """
    control = control or FitControl()
    names = _check_names(names)
    if family not in FAMILIES:
        raise InputError(f"family: unknown value {family!r} (known: {', '.join(FAMILIES)})")
    p = len(names)
    problem = _Problem(evaluate, family, p, control)
    gauss = family == "gaussian"
    lo, hi = LOG_SCALE_BOUNDS
    history: list[float] = []
    ii = names.index(INTERCEPT)

    # ---- stage 1: tau = 0 (the ordinary GLM), from an exact intercept-only start
    theta0 = np.zeros(p + (1 if gauss else 0))
    first = problem.point(theta0, with_tau=False)
    if not math.isfinite(first.loglik):
        raise FedsynthError("the log-likelihood is not finite at beta = 0")
    g0 = first.raw.gradient
    h0 = first.raw.hessian
    if family == "binomial":
        total_trials = -4.0 * h0[ii, ii]
        successes = g0[ii] + total_trials / 2.0
        share = successes / total_trials
        if 0.0 < share < 1.0:
            theta0[ii] = math.log(share / (1.0 - share))
    elif family == "poisson":
        exposure = -h0[ii, ii]
        events = g0[ii] + exposure
        if events > 0:
            theta0[ii] = math.log(events / exposure)
    else:
        # at beta = 0, sigma = 1 the log-likelihood is quadratic in beta: one exact step
        # gives OLS, and RSS(OLS) = RSS(0) - g' (-H)^{-1} g gives the ML sigma.
        g_b = g0[:p]
        h_b = -h0[:p, :p]
        try:
            step = np.linalg.solve(h_b, g_b)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h_b, g_b, rcond=None)[0]
        rss0 = -2.0 * first.loglik - first.raw.n * _LOG_2PI
        rss = max(rss0 - float(g_b @ step), 1e-300)
        theta0[:p] = step
        theta0[p] = float(np.clip(0.5 * math.log(rss / first.raw.n), lo, hi))
    start = problem.point(theta0, with_tau=False)
    bounds0 = np.array([[-np.inf, np.inf]] * p + ([[lo, hi]] if gauss else []))
    glm, ok0, msg0, it0 = _newton(problem, start, with_tau=False, bounds=bounds0,
                                  history=history)
    if not ok0:
        raise FedsynthError(f"the tau = 0 fit (ordinary GLM) failed: {msg0}; the fixed "
                            "effects may be separated or collinear")
    c0 = float(glm.raw.hessian[p, p])
    # sum_i w_i^2 of the sites' intercept information; from a sum alone (no per-site
    # replies) its lower bound (sum_i w_i)^2 / k
    if glm.sites:
        info_sq = float(np.sum(np.array([-part.hessian[ii, ii]
                                         for part in glm.sites.values()]) ** 2))
    else:
        info_sq = float(glm.raw.hessian[ii, ii]) ** 2 / glm.raw.sites

    # ---- stage 2: (beta, log tau [, log sigma])
    scale = math.exp(glm.theta[-1]) if gauss else 1.0
    if control.tau_start is not None:
        tau0 = control.tau_start
    else:
        moment = max(c0, 0.0) / info_sq if info_sq > 0 else 0.0
        # c0 <= 0: tau = 0 is a local maximum; start well inside so that an interior
        # maximum above it, if any, is climbed rather than missed
        tau0 = min(max(math.sqrt(moment), 0.1 * scale), 10.0 * scale) if c0 > 0 \
            else 0.5 * scale
    theta1 = np.concatenate([glm.theta[:p], [math.log(tau0)], glm.theta[p:]])
    bounds1 = np.array([[-np.inf, np.inf]] * p + [[lo, hi]] + ([[lo, hi]] if gauss else []))

    def boundary(point: _Point, direction: np.ndarray) -> bool:
        # tau = 0 is a local maximum (c0 <= 0), it is at least as good as this point, and
        # Newton's step from here heads towards it: the maximum is at the boundary.
        return c0 <= 0 and point.loglik <= glm.loglik and bool(direction[p] < 0)

    start1 = problem.point(theta1, with_tau=True)
    if not math.isfinite(start1.loglik):
        raise FedsynthError(f"the log-likelihood is not finite at the start tau = {tau0:g}")
    best, ok, message, it1 = _newton(problem, start1, with_tau=True, bounds=bounds1,
                                     history=history, stop=boundary)
    at_boundary = message == "boundary" or (glm.loglik >= best.loglik and c0 <= 0)
    iterations = it0 + it1
    if at_boundary:
        return _result(problem, names, glm, boundary=True, converged=ok0,
                       message="tau = 0: the maximum is at the boundary (the ordinary GLM)",
                       iterations=iterations, history=history)
    if not ok:
        warnings.warn(f"random-intercept fit did not converge: {message}",
                      HierarchicalFitWarning, stacklevel=2)
    return _result(problem, names, best, boundary=False, converged=ok, message=message,
                   iterations=iterations, history=history)


def _result(problem: _Problem, names: tuple[str, ...], point: _Point, *, boundary: bool,
            converged: bool, message: str, iterations: int,
            history: list[float]) -> HierarchicalFit:
    p = problem.p
    family = problem.family
    control = problem.control
    gauss = family == "gaussian"
    q_full = p + 1 + (1 if gauss else 0)
    cov = np.full((q_full, q_full), np.nan)
    neg = -point.hessian
    try:
        inv = np.linalg.inv(neg)
        if np.any(np.diag(inv) <= 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        inv = np.full_like(neg, np.nan)
        message += "; the observed information is singular (SEs not available)"
    if boundary:
        idx = list(range(p)) + ([p + 1] if gauss else [])
        cov[np.ix_(idx, idx)] = inv
    else:
        cov[:, :] = inv
    beta = point.theta[:p]
    se = np.sqrt(np.diag(cov)[:p])
    z = beta / se
    pval = 2.0 * stats.norm.sf(np.abs(z))
    crit = float(stats.norm.ppf(0.5 + control.level / 2.0))
    if boundary:
        tau, log_tau = 0.0, -math.inf
        se_log_tau = se_tau = math.nan
    else:
        log_tau = float(point.theta[p])
        tau = math.exp(log_tau)
        se_log_tau = float(math.sqrt(cov[p, p]))
        se_tau = tau * se_log_tau
    sigma = math.exp(point.theta[-1]) if gauss else math.nan
    se_log_sigma = float(math.sqrt(cov[-1, -1])) if gauss else math.nan
    tau2 = tau * tau
    intercept = float(beta[names.index(INTERCEPT)])
    icc = latent_icc(family, tau2, sigma2=sigma * sigma, intercept=intercept)
    intercepts = {}
    for site, part in point.sites.items():
        mode = 0.0 if boundary else part.mode
        sd = 0.0 if boundary else part.mode_sd
        intercepts[site] = SiteIntercept(
            site=site, n=part.n, mode=mode, sd=sd, ci_lb=mode - crit * sd,
            ci_ub=mode + crit * sd, posterior_mean=0.0 if boundary else part.posterior_mean,
            posterior_sd=0.0 if boundary else part.posterior_sd)
    errors = [part.quadrature_error for part in point.sites.values()
              if math.isfinite(part.quadrature_error)]
    max_error = max(errors) if errors else point.raw.max_quadrature_error
    if max_error > 1e-8:
        warnings.warn(f"a site's quadrature error estimate is {max_error:.2g} (> 1e-8): "
                      "raise the node count", HierarchicalFitWarning, stacklevel=3)
    return HierarchicalFit(
        family=family, link=FAMILIES[family], names=names, coefficients=beta.copy(), se=se,
        z=z, pvalue=pval, ci_lb=beta - crit * se, ci_ub=beta + crit * se, tau=tau,
        tau2=tau2, log_tau=log_tau, se_log_tau=se_log_tau, se_tau=se_tau, sigma=sigma,
        sigma2=sigma * sigma, se_log_sigma=se_log_sigma, loglik=point.loglik, icc=icc,
        icc_definition=ICC_DEFINITIONS[family], covariance=cov,
        site_intercepts=intercepts, boundary=boundary, converged=converged, message=message,
        iterations=iterations, evaluations=problem.evaluations,
        nodes={site: part.nodes for site, part in point.sites.items()},
        max_quadrature_error=max_error, n=point.raw.n, k=point.raw.sites,
        level=control.level, history=tuple(history))


def fit_sites(sites: Mapping[str, SiteData], *, names: Sequence[str] | None = None,
              control: FitControl | None = None) -> HierarchicalFit:
    """Fit the random-intercept GLM to sites held in this process.

    Every proposal and contribution goes through its JSON form (``json.dumps`` /
    ``json.loads``) exactly as it would over the wire, so this is the federated fit, with
    the network replaced by a loop.

    Parameters
    ----------
    sites
        ``{site name: SiteData}``, all of one family and with the same columns.
    names
        Coefficient names (default ``intercept``, ``x1``, ``x2``, ... with the intercept
        first: the designs' first column must then be the intercept).
    control
        :class:`FitControl`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> sites = {}
    >>> for i, u in enumerate([-0.8, -0.3, 0.0, 0.4, 0.9]):
    ...     x = rng.normal(size=80)
    ...     y = rng.random(80) < 1 / (1 + np.exp(-(-0.5 + u + 0.7 * x)))
    ...     sites[f"site{i}"] = site_data(np.column_stack([np.ones(80), x]), y,
    ...                                   family="binomial")
    >>> fit = fit_sites(sites, names=["intercept", "x"])
    >>> fit.converged, fit.k, fit.n
    (True, 5, 400)
    """
    if not sites:
        raise InputError("sites: no site given")
    families = {d.family for d in sites.values()}
    if len(families) != 1:
        raise InputError(f"sites: mixed families {sorted(families)}")
    widths = {d.p for d in sites.values()}
    if len(widths) != 1:
        raise InputError(f"sites: designs with different numbers of columns {sorted(widths)}")
    family = families.pop()
    p = widths.pop()
    if names is None:
        names = [INTERCEPT] + [f"x{i}" for i in range(1, p)]
    if len(names) != p:
        raise InputError(f"names: {len(names)} names for {p} columns")
    q = _parameter_count(p, family)

    def evaluate(proposal: Proposal) -> dict[str, SiteContribution]:
        wire = json.dumps(proposal.to_dict(), allow_nan=False)
        out = {}
        for name, data in sites.items():
            received = Proposal.from_dict(json.loads(wire))
            reply = json.dumps(site_contribution(data, received).to_dict(), allow_nan=False)
            out[name] = SiteContribution.from_dict(json.loads(reply), parameters=q, site=name)
        return out

    return fit_random_intercept(evaluate, names=names, family=family, control=control)


# --------------------------------------------------------------------------------------
# A random slope for one named covariate (two-dimensional adaptive quadrature per site)
# --------------------------------------------------------------------------------------
#
# eta_ij = x_ij' beta + o_ij + u_0i + u_1i w_ij, (u_0i, u_1i) ~ N(0, Sigma), w the slope's
# column of X; lme4's glmer(y ~ ... + (1 + w | site)). Sigma = L L' with L lower triangular,
# L = [[l11, 0], [l21, l22]] (lme4's theta = (l11, l21, l22) for a GLMM), u = L z with
# z ~ N(0, I_2): the prior is again free of the parameters, so the same Louis identity
# gives exact derivatives, now over a K x K product rule centred at the 2-D mode and
# rotated and scaled by the Cholesky factor of the inverse curvature there (Pinheiro &
# Bates 1995, s. 3; Rabe-Hesketh, Skrondal & Pickles, Stata J 2(1), 2002).

#: Nodes per dimension tried in turn (the product rule has K^2 nodes).
SLOPE_LADDER: tuple[int, ...] = (5, 7, 9, 12, 16, 20, 24, 32)
#: The largest per-dimension rule a slope proposal may ask for.
MAX_SLOPE_NODES = 48
_THETA_BOUND = math.exp(LOG_SCALE_BOUNDS[1])


@dataclass(frozen=True)
class SlopeProposal:
    """The coordinator's point for the random-slope model.

    Attributes
    ----------
    family
        ``binomial`` or ``poisson`` (gaussian random slopes are not offered).
    beta
        Fixed coefficients (the columns of the site's ``X``).
    slope
        The column of ``X`` whose coefficient varies by site (not the intercept).
    theta
        lme4's ``theta``: ``(l11, l21, l22)``, the lower Cholesky factor of the covariance
        of ``(u_0, u_1)``; ``l11, l22 >= 0``. ``tau_0 = l11``, ``tau_1 = sqrt(l21^2 +
        l22^2)``, correlation ``l21 / tau_1``.
    nodes, tol, iteration
        As :class:`Proposal` (``nodes`` per dimension).
    """

    family: str
    beta: tuple[float, ...]
    slope: int
    theta: tuple[float, float, float]
    nodes: int | None = None
    tol: float = QUADRATURE_TOL
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.family not in ("binomial", "poisson"):
            raise InputError(f"family: {self.family!r} has no random-slope model here "
                             "(binomial, poisson)")
        beta = tuple(_finite(b, f"beta[{i}]") for i, b in enumerate(self.beta))
        if not beta:
            raise InputError("beta: empty (the model needs at least the intercept)")
        for i, b in enumerate(beta):
            if abs(b) > BETA_BOUND:
                raise InputError(f"beta[{i}]: {b!r} is outside [-{BETA_BOUND:g}, "
                                 f"{BETA_BOUND:g}]")
        object.__setattr__(self, "beta", beta)
        if isinstance(self.slope, bool) or not isinstance(self.slope, int) \
                or not 0 <= self.slope < len(beta):
            raise InputError(f"slope: {self.slope!r} is not a column index in "
                             f"[0, {len(beta) - 1}]")
        if not isinstance(self.theta, (list, tuple)) or len(self.theta) != 3:
            raise InputError(f"theta: expected (l11, l21, l22), got {self.theta!r}")
        theta = tuple(_finite(t, f"theta[{i}]") for i, t in enumerate(self.theta))
        for i, t in enumerate(theta):
            if abs(t) > _THETA_BOUND:
                raise InputError(f"theta[{i}]: {t!r} is outside [-{_THETA_BOUND:.4g}, "
                                 f"{_THETA_BOUND:.4g}]")
        if theta[0] < 0 or theta[2] < 0:
            raise InputError(f"theta: the diagonal (l11, l22) must be >= 0, got {theta!r}")
        object.__setattr__(self, "theta", theta)
        if self.nodes is not None and (isinstance(self.nodes, bool)
                                       or not isinstance(self.nodes, int)
                                       or not 2 <= self.nodes <= MAX_SLOPE_NODES):
            raise InputError(f"nodes: {self.nodes!r} is not an integer in "
                             f"[2, {MAX_SLOPE_NODES}]")
        tol = _finite(self.tol, "tol")
        if not 0 < tol < 1:
            raise InputError(f"tol: {tol!r} is not in (0, 1)")
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, int) \
                or self.iteration < 0:
            raise InputError(f"iteration: {self.iteration!r} is not a non-negative integer")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"family": self.family, "beta": list(self.beta), "slope": self.slope,
                "theta": list(self.theta), "nodes": self.nodes, "tol": self.tol,
                "iteration": self.iteration}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlopeProposal:
        """Read and check a proposal received from the coordinator."""
        if not isinstance(data, Mapping):
            raise InputError(f"proposal: expected an object, got {type(data).__name__}")
        unknown = set(data) - {"family", "beta", "slope", "theta", "nodes", "tol",
                               "iteration"}
        if unknown:
            raise InputError(f"proposal: unknown field(s) {sorted(unknown)}")
        for key in ("family", "beta", "slope", "theta"):
            if key not in data:
                raise InputError(f"proposal: missing field {key!r}")
        beta = data["beta"]
        if not isinstance(beta, (list, tuple)):
            raise InputError(f"beta: expected a list of numbers, got {beta!r}")
        theta = data["theta"]
        if not isinstance(theta, (list, tuple)):
            raise InputError(f"theta: expected (l11, l21, l22), got {theta!r}")
        return cls(family=data["family"], beta=tuple(beta), slope=data["slope"],
                   theta=tuple(theta), nodes=data.get("nodes"),
                   tol=data.get("tol", QUADRATURE_TOL), iteration=data.get("iteration", 0))


def _vector(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: not numeric") from None
    if array.shape != shape:
        raise InputError(f"{name}: shape {array.shape}, expected {shape}")
    return array


@dataclass(frozen=True, eq=False)
class SlopeContribution:
    """A site's reply for the random-slope model.

    Derivatives are in ``(beta, l11, l21, l22)``. ``mode`` is the conditional mode of
    ``(u_0, u_1)`` and ``mode_cov`` its conditional covariance (lme4's ``condVar``);
    ``posterior_mean`` and ``posterior_cov`` the exact posterior moments. Other fields as
    :class:`SiteContribution` (``nodes`` per dimension).
    """

    n: int
    loglik: float
    gradient: np.ndarray
    hessian: np.ndarray
    nodes: int = 0
    quadrature_error: float = math.nan
    mode: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    mode_cov: np.ndarray = field(default_factory=lambda: np.full((2, 2), np.nan))
    posterior_mean: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    posterior_cov: np.ndarray = field(default_factory=lambda: np.full((2, 2), np.nan))

    @property
    def finite(self) -> bool:
        """Whether the log-likelihood and its derivatives are finite."""
        return bool(math.isfinite(self.loglik) and np.all(np.isfinite(self.gradient))
                    and np.all(np.isfinite(self.hessian)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; a non-finite log-likelihood is ``null``."""
        ok = self.finite and bool(np.all(np.isfinite(self.mode_cov))
                                  and np.all(np.isfinite(self.posterior_cov)))
        return {"n": self.n, "loglik": self.loglik if ok else None,
                "gradient": self.gradient.tolist() if ok else None,
                "hessian": self.hessian.tolist() if ok else None, "nodes": self.nodes,
                "quadrature_error": _json_number(self.quadrature_error),
                "mode": self.mode.tolist() if ok else None,
                "mode_cov": self.mode_cov.tolist() if ok else None,
                "posterior_mean": self.posterior_mean.tolist() if ok else None,
                "posterior_cov": self.posterior_cov.tolist() if ok else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, parameters: int,
                  site: str = "site") -> SlopeContribution:
        """Read and check a site's reply (``parameters`` = its gradient's length)."""
        core = _read_core(data, parameters, site)
        if not math.isfinite(core["loglik"]):
            return cls(**core)
        moments: dict[str, Any] = {}
        for key, shape in (("mode", (2,)), ("mode_cov", (2, 2)), ("posterior_mean", (2,)),
                           ("posterior_cov", (2, 2))):
            if key not in data:
                raise InputError(f"{site}: missing field {key!r}")
            array = _vector(data[key], f"{site}.{key}", shape)
            if not np.all(np.isfinite(array)):
                raise InputError(f"{site}.{key}: not finite")
            moments[key] = array
        error = data.get("quadrature_error")
        return cls(**core, **moments, quadrature_error=math.nan if error is None
                   else _finite(error, f"{site}.quadrature_error"))


def _mode2(data: SiteData, eta: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, float,
                                                                     np.ndarray]:
    """Mode of ``g(z) = sum_j log f(y_j | eta_j + B_j z) - |z|^2/2`` (strictly concave),
    ``g`` there (without constants) and ``-g''`` (positive definite)."""

    def evaluate(z: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        value, d1, d2 = _terms(data, eta + B @ z, math.nan)
        hess = (B.T * d2) @ B - np.eye(2)
        return float(value.sum()) - 0.5 * float(z @ z), B.T @ d1 - z, hess

    z = np.zeros(2)
    g, g1, g2 = evaluate(z)
    if not math.isfinite(g):
        return z, g, -g2
    for _ in range(200):
        step = np.linalg.solve(g2, -g1)
        for _ in range(60):
            g_new, g1_new, g2_new = evaluate(z + step)
            if math.isfinite(g_new) and g_new >= g - 1e-13 * (1.0 + abs(g)):
                break
            step = step / 2.0
        else:
            break
        z = z + step
        g, g1, g2 = g_new, g1_new, g2_new
        if float(np.max(np.abs(step))) <= 1e-13 * (1.0 + float(np.max(np.abs(z)))):
            break
    return z, g, -g2


@lru_cache(maxsize=32)
def _rule2(k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k x k`` product rule: nodes ``(k^2, 2)`` and ``log w + |x|^2/2``."""
    x, logw = _rule(k)
    nodes = np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)
    logw2 = (logw[:, None] + logw[None, :]).reshape(-1)
    nodes.setflags(write=False)
    logw2.setflags(write=False)
    return nodes, logw2


def _quadrature2(data: SiteData, eta: np.ndarray, w: np.ndarray, L: np.ndarray,
                 B: np.ndarray, k: int, centre: tuple[np.ndarray, float, np.ndarray]
                 ) -> SlopeContribution:
    z_hat, _, curvature = centre
    cov_z = np.linalg.inv(curvature)
    R = np.linalg.cholesky((cov_z + cov_z.T) / 2)
    x, logw = _rule2(k)
    z = z_hat[None, :] + x @ R.T  # (N, 2)
    value, d1, d2 = _terms(data, eta[:, None] + B @ z.T, math.nan)  # (n, N)
    g = value.sum(axis=0) - 0.5 * np.sum(z * z, axis=1) - _LOG_2PI
    log_terms = logw + g
    top = float(np.max(log_terms))
    log_sum = top + math.log(float(np.sum(np.exp(log_terms - top))))
    loglik = float(np.log(np.diag(R)).sum()) + log_sum + data.log_constant
    post = np.exp(log_terms - log_sum)
    z1, z2 = z[:, 0], z[:, 1]
    s1 = d1.sum(axis=0)
    s1w = w @ d1
    scores = np.vstack([data.X.T @ d1, z1 * s1, z1 * s1w, z2 * s1w])  # (p + 3, N)
    mean_score = scores @ post
    centred = scores - mean_score[:, None]
    cov_score = (centred * post) @ centred.T
    p = data.p
    hess = np.empty((p + 3, p + 3))
    hess[:p, :p] = data.X.T @ (data.X * (d2 @ post)[:, None])
    hess[:p, p] = data.X.T @ (d2 @ (z1 * post))
    hess[:p, p + 1] = data.X.T @ (w * (d2 @ (z1 * post)))
    hess[:p, p + 2] = data.X.T @ (w * (d2 @ (z2 * post)))
    hess[p:, :p] = hess[:p, p:].T
    q0 = d2.sum(axis=0)
    q1 = w @ d2
    q2 = (w * w) @ d2
    blocks = {(0, 0): z1 * z1 * q0, (0, 1): z1 * z1 * q1, (0, 2): z1 * z2 * q1,
              (1, 1): z1 * z1 * q2, (1, 2): z1 * z2 * q2, (2, 2): z2 * z2 * q2}
    for (a, b), values in blocks.items():
        hess[p + a, p + b] = hess[p + b, p + a] = float(values @ post)
    hess = hess + cov_score
    z_mean = z.T @ post
    zc = z - z_mean
    z_cov = (zc.T * post) @ zc
    return SlopeContribution(
        n=data.n, loglik=loglik, gradient=mean_score, hessian=(hess + hess.T) / 2,
        nodes=k, mode=L @ z_hat, mode_cov=L @ cov_z @ L.T, posterior_mean=L @ z_mean,
        posterior_cov=L @ z_cov @ L.T)


def slope_contribution(data: SiteData, proposal: SlopeProposal) -> SlopeContribution:
    """The site function of the random-slope model: ``log L_i`` and its derivatives in
    ``(beta, l11, l21, l22)`` by two-dimensional adaptive Gauss-Hermite quadrature.

    The per-dimension node count climbs :data:`SLOPE_LADDER` until two rules agree to
    ``proposal.tol`` in ``log L_i`` and (relatively) in every gradient component, unless
    the proposal fixes it.

    Raises
    ------
    InputError
        The proposal does not fit the site's data, or the slope's column is constant.
    """
    if proposal.family != data.family:
        raise InputError(f"family: the proposal is for {proposal.family!r} but the site's "
                         f"data are {data.family!r}")
    if len(proposal.beta) != data.p:
        raise InputError(f"beta: {len(proposal.beta)} coefficients proposed but the site's "
                         f"design has {data.p} columns")
    q = data.p + 3
    w = data.X[:, proposal.slope]
    beta = np.array(proposal.beta)
    l11, l21, l22 = proposal.theta
    L = np.array([[l11, 0.0], [l21, l22]])
    A = np.column_stack([np.ones(data.n), w])
    B = A @ L  # eta_j + B_j z
    eta = data.X @ beta + data.offset
    nan = SlopeContribution(n=data.n, loglik=-math.inf, gradient=np.full(q, np.nan),
                            hessian=np.full((q, q), np.nan))
    with np.errstate(over="ignore", invalid="ignore"):
        centre = _mode2(data, eta, B)
        if not (math.isfinite(centre[1]) and np.all(np.isfinite(centre[2]))):
            return nan
        if proposal.nodes is not None:
            result = _quadrature2(data, eta, w, L, B, proposal.nodes, centre)
        else:
            previous = _quadrature2(data, eta, w, L, B, SLOPE_LADDER[0], centre)
            result = previous
            diff = math.nan
            for k in SLOPE_LADDER[1:]:
                result = _quadrature2(data, eta, w, L, B, k, centre)
                diff = abs(result.loglik - previous.loglik)
                grad_diff = np.abs(result.gradient - previous.gradient) / (
                    1.0 + np.abs(result.gradient))
                if diff <= proposal.tol and float(grad_diff.max()) <= proposal.tol:
                    break
                previous = result
            result = replace(result, quadrature_error=diff)
    return result if result.finite else nan


@dataclass(frozen=True)
class SiteEffects:
    """A site's random intercept and slope at the fitted parameters.

    ``intercept``/``slope`` are the conditional modes, ``intercept_sd``/``slope_sd`` the
    conditional SDs (lme4's ``condVar``) with ``correlation`` between them, the intervals
    ``mode -/+ z sd``; ``posterior_mean`` and ``posterior_sd`` the exact posterior moments
    of ``(u_0, u_1)``.
    """

    site: str
    n: int
    intercept: float
    slope: float
    intercept_sd: float
    slope_sd: float
    correlation: float
    intercept_ci: tuple[float, float]
    slope_ci: tuple[float, float]
    posterior_mean: tuple[float, float]
    posterior_sd: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "intercept": self.intercept, "slope": self.slope,
                "intercept_sd": self.intercept_sd, "slope_sd": self.slope_sd,
                "correlation": _json_number(self.correlation),
                "intercept_ci": list(self.intercept_ci), "slope_ci": list(self.slope_ci),
                "posterior_mean": list(self.posterior_mean),
                "posterior_sd": list(self.posterior_sd)}


@dataclass(frozen=True, eq=False)
class RandomSlopeFit:
    """The fitted random-intercept-and-slope GLM.

    Attributes
    ----------
    names, slope
        Coefficient names and the one whose effect varies by site.
    coefficients, se, z, pvalue, ci_lb, ci_ub
        Fixed effects with Wald statistics from the observed information.
    theta
        lme4's ``theta`` ``(l11, l21, l22)``.
    tau_intercept, tau_slope, rho
        SDs of the site intercepts and slopes and their correlation; with their SEs by the
        delta method from the covariance of ``(log l11, l21, log l22)`` (NaN when
        ``singular``).
    covariance
        Inverse observed information in ``(beta, log l11, l21, log l22)``; at a singular
        fit the ``log l22`` row and column are NaN.
    loglik, lrt, lrt_pvalue
        The maximised log-likelihood; the likelihood-ratio statistic against the
        random-intercept fit and its p-value from the 50:50 mixture of chi-square with 1
        and 2 degrees of freedom (Self & Liang, JASA 82, 1987: a variance on its boundary
        plus a covariance).
    singular
        ``True`` when the maximum has ``l22 = 0``: the covariance matrix is singular
        (correlation +-1), lme4's "boundary (singular) fit".
    site_effects
        Per site, :class:`SiteEffects`.
    intercept_fit
        The random-intercept fit the slope model started from (its round trips are not
        counted in ``evaluations``).
    """

    family: str
    link: str
    names: tuple[str, ...]
    slope: str
    coefficients: np.ndarray
    se: np.ndarray
    z: np.ndarray
    pvalue: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    theta: tuple[float, float, float]
    tau_intercept: float
    tau_slope: float
    rho: float
    se_tau_intercept: float
    se_tau_slope: float
    se_rho: float
    covariance: np.ndarray
    loglik: float
    lrt: float
    lrt_pvalue: float
    singular: bool
    site_effects: Mapping[str, SiteEffects]
    converged: bool
    message: str
    iterations: int
    evaluations: int
    nodes: Mapping[str, int]
    max_quadrature_error: float
    n: int
    k: int
    intercept_fit: HierarchicalFit
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """JSON form (non-finite numbers as ``null``)."""

        def num(value: float) -> float | None:
            return _json_number(float(value))

        def named(values: np.ndarray) -> dict[str, float | None]:
            return {name: num(v) for name, v in zip(self.names, values)}

        return {
            "family": self.family, "link": self.link, "slope": self.slope,
            "coefficients": named(self.coefficients), "se": named(self.se),
            "z": named(self.z), "pvalue": named(self.pvalue), "ci_lb": named(self.ci_lb),
            "ci_ub": named(self.ci_ub), "level": self.level, "theta": list(self.theta),
            "tau_intercept": num(self.tau_intercept), "tau_slope": num(self.tau_slope),
            "rho": num(self.rho), "se_tau_intercept": num(self.se_tau_intercept),
            "se_tau_slope": num(self.se_tau_slope), "se_rho": num(self.se_rho),
            "covariance": [[num(v) for v in row] for row in self.covariance],
            "logLik": num(self.loglik), "lrt": num(self.lrt),
            "lrt_pvalue": num(self.lrt_pvalue), "singular": self.singular,
            "site_intercepts": {s: e.intercept for s, e in self.site_effects.items()},
            "site_intercepts_se": {s: e.intercept_sd for s, e in self.site_effects.items()},
            "site_slopes": {s: e.slope for s, e in self.site_effects.items()},
            "site_slopes_se": {s: e.slope_sd for s, e in self.site_effects.items()},
            "site_effects": {s: e.to_dict() for s, e in self.site_effects.items()},
            "converged": self.converged, "message": self.message,
            "iterations": self.iterations, "evaluations": self.evaluations,
            "nodes": dict(self.nodes), "max_quadrature_error": num(self.max_quadrature_error),
            "n": self.n, "k": self.k,
        }


SlopeEvaluate = Callable[[SlopeProposal], Mapping[str, SlopeContribution]]


class _SlopeProblem:
    """Coordinates ``(beta, log l11, l21[, log l22])``; without ``log l22`` (``with_tau``
    False) the point is on the face ``l22 = 0``."""

    def __init__(self, evaluate: SlopeEvaluate, family: str, p: int, slope: int,
                 control: FitControl) -> None:
        self.evaluate = evaluate
        self.family = family
        self.p = p
        self.slope = slope
        self.control = control
        self.evaluations = 0

    def point(self, theta: np.ndarray, *, with_tau: bool) -> _Point:
        p = self.p
        l11 = math.exp(theta[p])
        l21 = float(theta[p + 1])
        l22 = math.exp(theta[p + 2]) if with_tau else 0.0
        nodes = None if self.control.nodes is None else min(self.control.nodes,
                                                            MAX_SLOPE_NODES)
        proposal = SlopeProposal(family=self.family, beta=tuple(float(b) for b in theta[:p]),
                                 slope=self.slope, theta=(l11, l21, l22), nodes=nodes,
                                 tol=self.control.quadrature_tol, iteration=self.evaluations)
        self.evaluations += 1
        sites = self.evaluate(proposal)
        if not isinstance(sites, Mapping) or not sites:
            raise FedsynthError("evaluate: returned no site contributions")
        for name, part in sites.items():
            if part.gradient.shape != (p + 3,):
                raise FedsynthError(f"{name}: gradient of length {part.gradient.shape[0]}, "
                                    f"expected {p + 3}")
        totals = combine(sites)
        keep = list(range(p + 2)) + ([p + 2] if with_tau else [])
        scale = np.ones(len(keep))
        scale[p] = l11
        logs = [p]
        if with_tau:
            scale[p + 2] = l22
            logs.append(p + 2)
        g_raw = totals.gradient[keep]
        grad = scale * g_raw
        hess = totals.hessian[np.ix_(keep, keep)] * np.outer(scale, scale)
        for i in logs:
            hess[i, i] += scale[i] * g_raw[i]
        return _Point(theta=theta.copy(), loglik=totals.loglik, gradient=grad, hessian=hess,
                      raw=totals, sites=sites)


def fit_random_slope(evaluate: SlopeEvaluate, *, names: Sequence[str], family: str,
                     slope: str, start: HierarchicalFit,
                     control: FitControl | None = None) -> RandomSlopeFit:
    """The coordinator for a random slope of the covariate ``slope`` (stretch goal).

    Parameters
    ----------
    evaluate
        Sends a :class:`SlopeProposal` to every site, returns ``{site: SlopeContribution}``.
    names, family
        As :func:`fit_random_intercept`.
    slope
        The coefficient name whose effect varies by site.
    start
        The random-intercept fit of the same data (:func:`fit_random_intercept`): the start,
        and the model the likelihood-ratio test compares with.
    control
        :class:`FitControl`.

    Notes
    -----
    As for the random intercept, in two stages. First the face ``l22 = 0`` (a rank-one
    covariance: slope and intercept perfectly correlated, which contains the
    random-intercept model at ``l21 = 0``): Newton's method on ``(beta, log l11, l21)`` from
    the random-intercept estimates. There ``d l / d l22 = 0`` (the likelihood is even in
    ``l22``) and ``c = d2l/dl22^2`` says whether the face is a local maximum; the start
    ``l22_0^2 = max(c, 0) / sum_i w_i^2`` (``w_i`` each site's information on the slope) as
    for the intercept, clipped to ``[0.1, 10]`` times the median per-site SE of the slope
    (half of it when ``c <= 0``). Then Newton's method on ``(beta, log l11, l21, log l22)``,
    which ends on the face (``singular``) by the same test as ``tau = 0`` for the
    intercept. Standard errors from the inverse observed information; those of ``tau_0``,
    ``tau_1`` and ``rho`` by the delta method.
    """
    control = control or FitControl()
    names = _check_names(names)
    if family not in ("binomial", "poisson"):
        raise InputError(f"family: {family!r} has no random-slope model here "
                         "(binomial, poisson)")
    if slope not in names:
        raise InputError(f"slope: {slope!r} is not a coefficient name ({list(names)})")
    if slope == INTERCEPT:
        raise InputError("slope: the intercept already varies by site; name a covariate")
    if start.family != family or start.names != names:
        raise InputError("start: the random-intercept fit is of another model "
                         f"({start.family}, {list(start.names)})")
    p = len(names)
    js = names.index(slope)
    problem = _SlopeProblem(evaluate, family, p, js, control)
    lo, hi = LOG_SCALE_BOUNDS
    history: list[float] = []

    # ---- stage 1: the face l22 = 0, from the random-intercept fit (l21 = 0)
    tau0 = start.tau if start.tau > 0 else 0.1
    theta0 = np.concatenate([start.coefficients, [math.log(tau0), 0.0]])
    face_start = problem.point(theta0, with_tau=False)
    if not math.isfinite(face_start.loglik):
        raise FedsynthError("the log-likelihood is not finite at the random-intercept fit")
    bounds0 = np.array([[-np.inf, np.inf]] * p + [[lo, hi], [-np.inf, np.inf]])
    face, ok0, msg0, it0 = _newton(problem, face_start, with_tau=False, bounds=bounds0,
                                   history=history)
    if not ok0:
        raise FedsynthError(f"the singular (l22 = 0) fit failed: {msg0}")
    c = float(face.raw.hessian[p + 2, p + 2])
    info = np.array([-part.hessian[js, js] for part in face.sites.values()])
    info = info[info > 0]
    se_scale = float(np.median(1.0 / np.sqrt(info))) if info.size else 1.0
    moment = max(c, 0.0) / float(np.sum(info**2)) if info.size else 0.0
    l22_0 = min(max(math.sqrt(moment), 0.1 * se_scale), 10.0 * se_scale) if c > 0 \
        else 0.5 * se_scale

    # ---- stage 2: (beta, log l11, l21, log l22)
    theta1 = np.concatenate([face.theta, [math.log(l22_0)]])
    bounds1 = np.vstack([bounds0, [[lo, hi]]])

    def boundary(point: _Point, direction: np.ndarray) -> bool:
        return c <= 0 and point.loglik <= face.loglik and bool(direction[p + 2] < 0)

    full_start = problem.point(theta1, with_tau=True)
    if not math.isfinite(full_start.loglik):
        raise FedsynthError(f"the log-likelihood is not finite at the start l22 = {l22_0:g}")
    best, ok, message, it1 = _newton(problem, full_start, with_tau=True, bounds=bounds1,
                                     history=history, stop=boundary)
    singular = message == "boundary" or (face.loglik >= best.loglik and c <= 0)
    if singular:
        best, ok = face, ok0
        message = "singular fit: the maximum has l22 = 0 (slope and intercept correlation " \
                  "+-1), lme4's 'boundary (singular) fit'"
    elif not ok:
        warnings.warn(f"random-slope fit did not converge: {message}", HierarchicalFitWarning,
                      stacklevel=2)
    if best.theta[p] <= lo + 1e-9:
        message += "; tau_intercept is at its lower bound (the intercept does not vary)"
    return _slope_result(problem, names, slope, best, start, singular=singular, converged=ok,
                         message=message, iterations=it0 + it1)


def _slope_result(problem: _SlopeProblem, names: tuple[str, ...], slope: str, point: _Point,
                  start: HierarchicalFit, *, singular: bool, converged: bool, message: str,
                  iterations: int) -> RandomSlopeFit:
    p = problem.p
    control = problem.control
    try:
        inv = np.linalg.inv(-point.hessian)
        if np.any(np.diag(inv) <= 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        inv = np.full_like(point.hessian, np.nan)
        message += "; the observed information is singular (SEs not available)"
    cov = np.full((p + 3, p + 3), np.nan)
    size = inv.shape[0]
    cov[:size, :size] = inv
    beta = point.theta[:p]
    se = np.sqrt(np.diag(cov)[:p])
    crit = float(stats.norm.ppf(0.5 + control.level / 2.0))
    l11 = math.exp(point.theta[p])
    l21 = float(point.theta[p + 1])
    l22 = 0.0 if singular else math.exp(point.theta[p + 2])
    tau1 = math.hypot(l21, l22)
    rho = l21 / tau1 if tau1 > 0 else math.nan
    se_t0 = l11 * math.sqrt(cov[p, p])
    if singular:
        se_t1 = se_rho = math.nan
    else:
        grad_t1 = np.array([l21 / tau1, l22**2 / tau1])
        grad_rho = np.array([l22**2 / tau1**3, -l21 * l22**2 / tau1**3])
        block = cov[p + 1:p + 3, p + 1:p + 3]
        se_t1 = math.sqrt(float(grad_t1 @ block @ grad_t1))
        se_rho = math.sqrt(float(grad_rho @ block @ grad_rho))
    effects = {}
    for site, part in point.sites.items():
        sd = np.sqrt(np.maximum(np.diag(part.mode_cov), 0.0))
        corr = float(part.mode_cov[0, 1] / (sd[0] * sd[1])) if sd[0] * sd[1] > 0 else math.nan
        psd = np.sqrt(np.maximum(np.diag(part.posterior_cov), 0.0))
        m0, m1 = float(part.mode[0]), float(part.mode[1])
        effects[site] = SiteEffects(
            site=site, n=part.n, intercept=m0, slope=m1, intercept_sd=float(sd[0]),
            slope_sd=float(sd[1]), correlation=corr,
            intercept_ci=(m0 - crit * sd[0], m0 + crit * sd[0]),
            slope_ci=(m1 - crit * sd[1], m1 + crit * sd[1]),
            posterior_mean=(float(part.posterior_mean[0]), float(part.posterior_mean[1])),
            posterior_sd=(float(psd[0]), float(psd[1])))
    lrt = max(2.0 * (point.loglik - start.loglik), 0.0)
    lrt_p = 0.5 * float(stats.chi2.sf(lrt, 1)) + 0.5 * float(stats.chi2.sf(lrt, 2))
    errors = [part.quadrature_error for part in point.sites.values()
              if math.isfinite(part.quadrature_error)]
    max_error = max(errors) if errors else math.nan
    if max_error > 1e-8:
        warnings.warn(f"a site's quadrature error estimate is {max_error:.2g} (> 1e-8): "
                      "raise the node count", HierarchicalFitWarning, stacklevel=3)
    return RandomSlopeFit(
        family=problem.family, link=FAMILIES[problem.family], names=names, slope=slope,
        coefficients=beta.copy(), se=se, z=beta / se,
        pvalue=2.0 * stats.norm.sf(np.abs(beta / se)), ci_lb=beta - crit * se,
        ci_ub=beta + crit * se, theta=(l11, l21, l22), tau_intercept=l11, tau_slope=tau1,
        rho=rho, se_tau_intercept=se_t0, se_tau_slope=se_t1, se_rho=se_rho, covariance=cov,
        loglik=point.loglik, lrt=lrt, lrt_pvalue=lrt_p, singular=singular,
        site_effects=effects, converged=converged, message=message, iterations=iterations,
        evaluations=problem.evaluations,
        nodes={site: part.nodes for site, part in point.sites.items()},
        max_quadrature_error=max_error, n=point.raw.n, k=point.raw.sites,
        intercept_fit=start, level=control.level)


def fit_sites_slope(sites: Mapping[str, SiteData], *, slope: str,
                    names: Sequence[str] | None = None,
                    control: FitControl | None = None) -> RandomSlopeFit:
    """Fit the random-intercept model, then the random-slope model, to in-process sites,
    every message through its JSON form (as :func:`fit_sites`)."""
    start = fit_sites(sites, names=names, control=control)
    p = len(start.names)

    def evaluate(proposal: SlopeProposal) -> dict[str, SlopeContribution]:
        wire = json.dumps(proposal.to_dict(), allow_nan=False)
        out = {}
        for name, data in sites.items():
            received = SlopeProposal.from_dict(json.loads(wire))
            reply = json.dumps(slope_contribution(data, received).to_dict(), allow_nan=False)
            out[name] = SlopeContribution.from_dict(json.loads(reply), parameters=p + 3,
                                                    site=name)
        return out

    return fit_random_slope(evaluate, names=start.names, family=start.family, slope=slope,
                            start=start, control=control)
