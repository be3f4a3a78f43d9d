"""Site side of likelihood sharing: profile log-likelihoods and their released forms.

A site releases an approximation of the profile log-likelihood of one parameter instead of
an estimate and its variance.

Why
---
A site with few events has a skewed likelihood, and a site with no events in one arm has no
finite estimate at all, yet its likelihood still says that large effects are unlikely.
Pooling ``(yi, vi)`` with the normal approximation either drops such a site or distorts
it; pooling the sites' log-likelihoods does not (Schuemie et al., "Combining Cox regressions
across a heterogeneous distributed research network facing small and zero counts", *Stat
Methods Med Res* 31(3), 2022; OHDSI EvidenceSynthesis). A site therefore evaluates the
(profile) log-likelihood of the one parameter of interest,

* the log odds ratio of a 2x2 table (binomial arms, the control arm's log odds profiled out),
* the exposure coefficient of a logistic model with covariates (the others profiled out),
* the exposure coefficient of a Cox model with covariates (Efron or Breslow ties),

and releases one of two approximations of it, fitted here and serialised to plain numbers:

:class:`GridWithGradients`
    Values and derivatives of the profile log-likelihood at fixed points (8 equally spaced
    over ``bounds``) and at the maximum if it lies inside; read back by cubic Hermite
    interpolation between the points and linear extrapolation outside (EvidenceSynthesis'
    "grid with gradients"; Catmull & Rom 1974), flat instead where the line would rise
    away from the grid (a log-likelihood is bounded above).
:class:`CustomApproximation`
    The three-parameter function ``exp(gamma (x - mu)) * (-(x - mu)^2 / (2 sigma^2))``
    (EvidenceSynthesis' "custom" function; a normal log-likelihood when ``gamma = 0``),
    fitted by least squares on 100 points weighted by the likelihood.

:class:`NormalApproximation` is the usual ``(yi, se)`` in the same interface.

Released values are shifted so that their maximum is 0: only differences of a
log-likelihood carry information about the parameter, and absolute values of a likelihood
would reveal more about the data (e.g. the sample size).

Disclosure: what each form reveals is in ``docs/decisions/rare-events.md``. In short, the
likelihood of a 2x2 table determines the table; a monotone likelihood reveals a zero cell.
:func:`check_release` is the pure check the site calls before anything leaves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none as _json

__all__ = [
    "DEFAULT_BOUNDS",
    "FORMS",
    "ProfileLikelihood",
    "GridWithGradients",
    "CustomApproximation",
    "NormalApproximation",
    "LikelihoodApproximation",
    "ReleaseDecision",
    "profile_two_by_two",
    "profile_logistic",
    "profile_cox",
    "approximate",
    "approximation_from_dict",
    "check_release",
]

#: EvidenceSynthesis' default range of the log effect (ratios 0.1 to 10).
DEFAULT_BOUNDS: tuple[float, float] = (math.log(0.1), math.log(10.0))
#: Names of the released forms, as they appear in the serialised dict.
FORMS: tuple[str, ...] = ("grid_with_gradients", "custom", "normal")
_N_GRID = 8
_N_CUSTOM = 100


# ----------------------------------------------------------------------------------------------
# Profile log-likelihoods (stay at the site)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileLikelihood:
    """The profile log-likelihood of one parameter, as the site computes it (never sent).

    Attributes
    ----------
    kind
        ``"two_by_two"``, ``"logistic"`` or ``"cox"``.
    points, values, derivatives
        Parameter values and the profile log-likelihood and its derivative there.
    estimate, se
        The maximum-likelihood estimate and its standard error, ``nan`` when the maximum is
        not finite (no events in one arm: a monotone likelihood).
    cells
        The exposure x outcome table behind the likelihood (for disclosure control).
    """

    kind: str
    points: np.ndarray
    values: np.ndarray
    derivatives: np.ndarray
    estimate: float
    se: float
    cells: Mapping[str, int] = field(default_factory=dict)

    @property
    def monotone(self) -> bool:
        """Whether the likelihood has no finite maximum (no events in one arm)."""
        return not math.isfinite(self.estimate)


class _Profiler:
    """Evaluates a profile log-likelihood and its derivative at any points."""

    kind = ""

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate log-likelihood at ``x`` (any shape)."""
        raise NotImplementedError

    estimate = math.nan
    se = math.nan
    cells: dict[str, int] = {}


def _points(points: Any) -> np.ndarray:
    try:
        x = np.atleast_1d(np.asarray(points, dtype=float))
    except (TypeError, ValueError):
        raise InputError(f"points: expected numbers, got {points!r}") from None
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise InputError("points: expected a non-empty sequence of finite numbers")
    return x


class _TwoByTwo(_Profiler):
    kind = "two_by_two"

    def __init__(self, ai: float, bi: float, ci: float, di: float) -> None:
        cells = {"ai": ai, "bi": bi, "ci": ci, "di": di}
        for name, v in cells.items():
            if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                    and v >= 0 and v == round(v)):
                raise InputError(f"{name}: expected a count (a whole number >= 0), got {v!r}")
        a, b, c, d = (float(v) for v in (ai, bi, ci, di))
        if a + b == 0 or c + d == 0:
            raise InputError("ai, bi, ci, di: both groups need patients")
        if a + c == 0 or b + d == 0:
            raise InputError("ai, ci: the outcome never (or always) occurs: the likelihood "
                             "of the odds ratio is flat")
        self.a, self.b, self.c, self.d = a, b, c, d
        self.n1, self.n2 = a + b, c + d
        self.const = (special.gammaln(self.n1 + 1) - special.gammaln(a + 1)
                      - special.gammaln(b + 1) + special.gammaln(self.n2 + 1)
                      - special.gammaln(c + 1) - special.gammaln(d + 1))
        self.cells = {"ai": int(a), "bi": int(b), "ci": int(c), "di": int(d)}
        if min(a, b, c, d) > 0:
            self.estimate = math.log(a * d / (b * c))
            self.se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate log-likelihood at ``x`` (any shape)."""
        beta = _points(points)
        a, c, n1, n2 = self.a, self.c, self.n1, self.n2
        # profile out the control arm's log odds alpha: a + c = n1 p1 + n2 p2
        alpha = np.full_like(beta, math.log((c + 0.5) / (self.d + 0.5)))
        for _ in range(200):
            p1, p2 = special.expit(alpha + beta), special.expit(alpha)
            g = a + c - n1 * p1 - n2 * p2
            h = n1 * p1 * (1 - p1) + n2 * p2 * (1 - p2)
            step = np.clip(g / np.maximum(h, 1e-300), -5, 5)
            alpha = alpha + step
            if np.max(np.abs(step)) < 1e-13:
                break
        eta1 = alpha + beta
        ll = (a * eta1 - n1 * np.logaddexp(0, eta1) + c * alpha - n2 * np.logaddexp(0, alpha)
              + self.const)
        return ll, a - n1 * special.expit(eta1)


def _design(covariates: Any, n: int, name: str) -> np.ndarray:
    if covariates is None:
        return np.empty((n, 0))
    z = np.asarray(covariates, dtype=float)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] != n:
        raise InputError(f"{name}: expected {n} rows of covariates, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise InputError(f"{name}: covariates must be finite numbers")
    return z


def _binary(values: Any, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or not np.all(np.isin(v, (0.0, 1.0))):
        raise InputError(f"{name}: expected a 0/1 column")
    return v


def _cells(y: np.ndarray, x: np.ndarray) -> dict[str, int]:
    return {"ai": int(((x == 1) & (y == 1)).sum()), "bi": int(((x == 1) & (y == 0)).sum()),
            "ci": int(((x == 0) & (y == 1)).sum()), "di": int(((x == 0) & (y == 0)).sum())}


class _Logistic(_Profiler):
    kind = "logistic"

    def __init__(self, outcome: Any, exposure: Any, covariates: Any) -> None:
        self.y = _binary(outcome, "outcome")
        self.x = _binary(exposure, "exposure")
        if self.x.size != self.y.size:
            raise InputError("exposure: must have as many rows as the outcome")
        self.z = np.column_stack([np.ones(self.y.size),
                                  _design(covariates, self.y.size, "covariates")])
        self.cells = _cells(self.y, self.x)
        if self.y.sum() in (0, self.y.size):
            raise InputError("outcome: no events (or only events): the likelihood is flat")
        if self.x.sum() in (0, self.x.size):
            raise InputError("exposure: only one exposure group")
        self.gamma = np.zeros(self.z.shape[1])
        self.gamma[0] = special.logit(self.y.mean())
        if min(self.cells.values()) > 0:
            self._fit_full()

    def _fit_nuisance(self, beta: float) -> tuple[float, float]:
        """Maximise over the intercept and covariates with ``beta x`` as an offset.

        Newton-Raphson with step halving (the log-likelihood is concave).
        """
        y, z, off = self.y, self.z, beta * self.x

        def loglik(g: np.ndarray) -> float:
            eta = off + z @ g
            return float((y * eta - np.logaddexp(0, eta)).sum())

        g = self.gamma.copy()
        ll = loglik(g)
        for _ in range(200):
            p = special.expit(off + z @ g)
            grad = z.T @ (y - p)
            info = (z * (p * (1 - p))[:, None]).T @ z
            try:
                step = np.linalg.solve(info, grad)
            except np.linalg.LinAlgError:
                raise InputError("covariates: the logistic model is not identified "
                                 "(collinear covariates)") from None
            t = 1.0
            while True:
                new = g + t * step
                ll_new = loglik(new)
                if ll_new >= ll - 1e-12 * abs(ll) or t < 1e-10:
                    break
                t /= 2
            g, ll = new, ll_new
            if np.max(np.abs(t * step)) < 1e-11:
                break
        else:
            raise InputError("covariates: the logistic model did not converge (separation "
                             "by a covariate)")
        if not np.all(np.isfinite(g)):
            raise InputError("covariates: the logistic model did not converge")
        self.gamma = g
        p = special.expit(off + z @ g)
        return ll, float((self.x * (y - p)).sum())

    def _fit_full(self) -> None:
        xz = np.column_stack([self.x, self.z])
        coef = np.r_[0.0, self.gamma]
        for _ in range(100):
            p = special.expit(xz @ coef)
            step = np.linalg.solve((xz * (p * (1 - p))[:, None]).T @ xz, xz.T @ (self.y - p))
            coef = coef + step
            if np.max(np.abs(step)) < 1e-12:
                break
        p = special.expit(xz @ coef)
        cov = np.linalg.inv((xz * (p * (1 - p))[:, None]).T @ xz)
        if abs(coef[0]) < 25:
            self.estimate, self.se = float(coef[0]), float(math.sqrt(cov[0, 0]))

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate log-likelihood at ``x`` (any shape)."""
        beta = _points(points)
        order = np.argsort(np.abs(beta - (self.estimate if math.isfinite(self.estimate)
                                          else 0.0)))
        ll = np.empty_like(beta)
        d = np.empty_like(beta)
        for i in order:                      # outward from the maximum: warm starts
            ll[i], d[i] = self._fit_nuisance(float(beta[i]))
        return ll, d


class _Cox(_Profiler):
    kind = "cox"

    def __init__(self, time: Any, event: Any, exposure: Any, covariates: Any,
                 ties: str) -> None:
        if ties not in ("efron", "breslow"):
            raise InputError(f"ties: expected 'efron' or 'breslow', got {ties!r}")
        self.t = np.asarray(time, dtype=float)
        if self.t.ndim != 1 or not np.all(np.isfinite(self.t)) or np.any(self.t < 0):
            raise InputError("time: expected finite times >= 0")
        self.e = _binary(event, "event")
        self.x = _binary(exposure, "exposure")
        if not (self.t.size == self.e.size == self.x.size):
            raise InputError("time, event, exposure: columns have different lengths")
        self.z = _design(covariates, self.t.size, "covariates")
        self.ties = ties
        self.cells = _cells(self.e, self.x)
        if self.e.sum() == 0:
            raise InputError("event: no events: the likelihood is flat")
        if self.x.sum() in (0, self.x.size):
            raise InputError("exposure: only one exposure group")
        self.gamma = np.zeros(self.z.shape[1])
        if self.z.shape[1] == 0:
            self._risk_sets()
        if self.cells["ai"] > 0 and self.cells["ci"] > 0:
            self._fit_full()

    def _risk_sets(self) -> None:
        """Tabulate the numbers at risk and the events per exposure group at each time.

        For a 0/1 exposure alone the partial likelihood depends only on these.
        """
        order = np.argsort(self.t, kind="stable")
        t, e, x = self.t[order], self.e[order], self.x[order]
        times = np.unique(t[e == 1])
        at = np.searchsorted(t, times, side="left")          # first index with t >= time
        n1_after = np.concatenate([np.cumsum(x[::-1])[::-1], [0.0]])
        n_after = np.arange(t.size, -1, -1, dtype=float)
        self.n1 = n1_after[at]
        self.n0 = n_after[at] - self.n1
        idx = np.searchsorted(times, t[e == 1])
        self.d1 = np.bincount(idx, weights=x[e == 1], minlength=times.size)
        self.d = np.bincount(idx, minlength=times.size).astype(float)
        self.d0 = self.d - self.d1

    def _univariable(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Partial log-likelihood, score and second derivative of a 0/1 exposure.

        Breslow or Efron ties, vectorised over ``beta``.
        """
        b = beta[:, None]
        eb = np.exp(b)
        ll = (self.d1 * b).sum(axis=1)
        score = np.full(beta.shape, float(self.d1.sum()))
        info = np.zeros(beta.shape)
        dmax = int(self.d.max())
        for r in range(dmax):
            use = self.d > r
            frac = np.where(self.d > 0, r / np.maximum(self.d, 1), 0.0) if \
                self.ties == "efron" else np.zeros_like(self.d)
            s0 = self.n0 + self.n1 * eb - frac * (self.d0 + self.d1 * eb)
            s1 = self.n1 * eb - frac * self.d1 * eb
            term = np.where(use, 1.0, 0.0)
            ll = ll - (term * np.log(np.where(use, s0, 1.0))).sum(axis=1)
            ratio = np.where(use, s1 / np.where(use, s0, 1.0), 0.0)
            score = score - (term * ratio).sum(axis=1)
            info = info + (term * (ratio - ratio * ratio)).sum(axis=1)
        return ll, score, -info

    def _model(self, exog: np.ndarray, offset: np.ndarray | None = None):
        # statsmodels is heavy to import; only the Cox profile needs it
        # lazy: statsmodels (~2 s) is imported only by the estimators that fit with it
        from statsmodels.duration.hazard_regression import PHReg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PHReg(self.t, exog, status=self.e, ties=self.ties, offset=offset)

    def _fit_full(self) -> None:
        if self.z.shape[1] == 0:
            b = 0.0
            for _ in range(100):
                _, g, h = self._univariable(np.array([b]))
                step = float(np.clip(-g[0] / h[0], -2, 2))
                b += step
                if abs(step) < 1e-13:
                    break
            _, _, h = self._univariable(np.array([b]))
            if abs(b) < 25:
                self.estimate, self.se = b, float(math.sqrt(-1.0 / h[0]))
            return
        exog = np.column_stack([self.x, self.z])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = self._model(exog).fit(method="newton", maxiter=200, gtol=1e-12)
        params = np.asarray(fit.params, dtype=float)
        if np.all(np.isfinite(params)) and abs(params[0]) < 25:
            self.estimate = float(params[0])
            self.se = float(math.sqrt(np.asarray(fit.cov_params())[0, 0]))
            self.gamma = params[1:]

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate log-likelihood at ``x`` (any shape)."""
        beta = _points(points)
        if self.z.shape[1] == 0:
            ll, score, _ = self._univariable(beta)
            return ll, score
        full = self._model(np.column_stack([self.x, self.z]))
        ll = np.empty_like(beta)
        d = np.empty_like(beta)
        order = np.argsort(np.abs(beta - (self.estimate if math.isfinite(self.estimate)
                                          else 0.0)))
        for i in order:
            b = float(beta[i])
            if self.z.shape[1]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = self._model(self.z, offset=b * self.x)
                    fit = model.fit(start_params=self.gamma, method="newton", maxiter=200,
                                    gtol=1e-12)
                g = np.asarray(fit.params, dtype=float)
                if not np.all(np.isfinite(g)):
                    raise InputError("covariates: the Cox model did not converge")
                self.gamma = g
            else:
                g = np.empty(0)
            par = np.r_[b, g]
            ll[i] = float(full.loglike(par))
            d[i] = float(full.score(par)[0])
        return ll, d


def _profile(profiler: _Profiler, points: Any) -> ProfileLikelihood:
    x = _points(points)
    ll, d = profiler(x)
    return ProfileLikelihood(kind=profiler.kind, points=x, values=ll, derivatives=d,
                             estimate=float(profiler.estimate), se=float(profiler.se),
                             cells=dict(profiler.cells))


def profile_two_by_two(ai: float, bi: float, ci: float, di: float,
                       points: Sequence[float] | np.ndarray) -> ProfileLikelihood:
    """Profile log-likelihood of the log odds ratio of a 2x2 table at ``points``.

    The binomial log-likelihood of both arms (with binomial coefficients, so that values
    equal R's ``logLik(glm(cbind(events, non-events) ~ 1, offset = beta * x, binomial))``),
    maximised over the control arm's log odds; the derivative is the score ``a - n1 p1``.
    Defined also when a cell is zero (then ``estimate`` is ``nan`` and the likelihood is
    monotone or bounded on one side).
    """
    return _profile(_TwoByTwo(ai, bi, ci, di), points)


def profile_logistic(outcome: Any, exposure: Any, covariates: Any = None, *,
                     points: Sequence[float] | np.ndarray) -> ProfileLikelihood:
    """Profile log-likelihood of the exposure's log odds ratio in ``logit P(y) = b x + g'z``.

    Each point refits the intercept and covariate coefficients with the exposure term as an
    offset (Newton-Raphson); the derivative is the exposure's score at that fit (the profile
    derivative, by the envelope theorem). Equals R's ``logLik(glm(y ~ z + offset(b * x),
    binomial))``.
    """
    return _profile(_Logistic(outcome, exposure, covariates), points)


def profile_cox(time: Any, event: Any, exposure: Any, covariates: Any = None, *,
                points: Sequence[float] | np.ndarray, ties: str = "efron") -> ProfileLikelihood:
    """Profile partial log-likelihood of the exposure's log hazard ratio in a Cox model.

    Efron or Breslow ties (statsmodels ``PHReg``, which equals R's ``coxph``); covariates
    are refitted at each point with the exposure term as an offset. With no events among
    the exposed (or the unexposed) the partial likelihood is monotone: there is no
    estimate, but the likelihood is still informative and is returned.
    """
    return _profile(_Cox(time, event, exposure, covariates, ties), points)


# ----------------------------------------------------------------------------------------------
# Approximations (released)
# ----------------------------------------------------------------------------------------------


def _require_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return v


def _optional(name: str, value: Any) -> float:
    return math.nan if value is None else _require_number(name, value)


@dataclass(frozen=True)
class GridWithGradients:
    """Values and derivatives of a log-likelihood at points ("grid with gradients").

    Read by cubic Hermite interpolation and linear extrapolation, as EvidenceSynthesis,
    except that the extrapolation is flat where the line would rise away from the grid
    (a log-likelihood is bounded above; a rising line makes the random-effects posterior
    improper under a heavy-tailed prior on tau).

    ``estimate``/``se`` are the site's normal approximation when it has one (``nan`` if not).
    """

    points: np.ndarray
    values: np.ndarray
    derivatives: np.ndarray
    estimate: float = math.nan
    se: float = math.nan
    _coef: np.ndarray = field(init=False, repr=False, compare=False)
    _h: np.ndarray = field(init=False, repr=False, compare=False)

    form = "grid_with_gradients"

    def __post_init__(self) -> None:
        p = np.asarray(self.points, dtype=float)
        v = np.asarray(self.values, dtype=float)
        d = np.asarray(self.derivatives, dtype=float)
        if p.ndim != 1 or p.size < 2:
            raise InputError("points: a grid needs at least two points")
        if v.shape != p.shape or d.shape != p.shape:
            raise InputError(f"values/derivatives: expected {p.size} numbers each, got "
                             f"{v.size} and {d.size}")
        for name, arr in (("points", p), ("values", v), ("derivatives", d)):
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{name}: every entry must be a finite number")
        if np.any(np.diff(p) <= 0):
            raise InputError("points: must be strictly increasing")
        for name, arr in (("points", p), ("values", v), ("derivatives", d)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        # Per segment, the cubic Hermite piece as c0 + c1 t + c2 t^2 + c3 t^3 in t = (x -
        # p_i) / h_i: evaluated by Horner's rule, a third of the work of the basis form
        # (random-effects pooling evaluates millions of points per site).
        h = np.diff(p)
        v0, v1, hd0, hd1 = v[:-1], v[1:], h * d[:-1], h * d[1:]
        coef = np.stack([v0, hd0, 3 * (v1 - v0) - 2 * hd0 - hd1, 2 * (v0 - v1) + hd0 + hd1])
        coef.setflags(write=False)
        object.__setattr__(self, "_coef", coef)
        object.__setattr__(self, "_h", h)

    def __call__(self, x: Any) -> np.ndarray:
        """Approximate log-likelihood at ``x`` (any shape)."""
        return self._eval(np.asarray(x, dtype=float))[0]

    def derivative(self, x: Any) -> np.ndarray:
        """First derivative of the approximation at ``x``."""
        return self._eval(np.asarray(x, dtype=float))[1]

    def second_derivative(self, x: Any) -> np.ndarray:
        """Second derivative of the approximation (0 where it extrapolates linearly)."""
        return self._eval(np.asarray(x, dtype=float))[2]

    def evaluate(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, first and second derivative at ``x`` in one pass."""
        return self._eval(np.asarray(x, dtype=float))

    def _eval(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, v, d = self.points, self.values, self.derivatives
        i = np.clip(np.searchsorted(p, x, side="right") - 1, 0, p.size - 2)
        h = self._h[i]
        t = (x - p[i]) / h
        c0, c1, c2, c3 = (c[i] for c in self._coef)
        f = ((c3 * t + c2) * t + c1) * t + c0
        f1 = ((3 * c3 * t + 2 * c2) * t + c1) / h
        f2 = (6 * c3 * t + 2 * c2) / (h * h)
        left, right = x < p[0], x > p[-1]
        # Outside the points: linear where the line falls away from the grid; flat where it
        # would rise (a log-likelihood is bounded above, e.g. a monotone one tends to a
        # plateau). A rising line has no upper bound: in the random-effects model a site's
        # effect could drift to +-infinity, and under a heavy-tailed prior on tau the
        # posterior is then improper (issue 15, phase 2: docs/decisions/rare-events.md).
        d_left = d[0] if d[0] > 0 else 0.0
        d_right = d[-1] if d[-1] < 0 else 0.0
        f = np.where(left, v[0] + (x - p[0]) * d_left, f)
        f = np.where(right, v[-1] + (x - p[-1]) * d_right, f)
        f1 = np.where(left, d_left, np.where(right, d_right, f1))
        f2 = np.where(left | right, 0.0, f2)
        return f, f1, f2

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for JSON or a protobuf ``repeated double``."""
        return {"form": self.form, "points": [float(x) for x in self.points],
                "values": [float(x) for x in self.values],
                "derivatives": [float(x) for x in self.derivatives],
                "estimate": _json(self.estimate), "se": _json(self.se)}


@dataclass(frozen=True)
class CustomApproximation:
    """EvidenceSynthesis' custom parametric log-likelihood.

    ``exp(gamma (x - mu)) * (-(x - mu)^2 / (2 sigma^2))``: normal when ``gamma = 0``;
    ``sigma = inf`` is flat.
    """

    mu: float
    sigma: float
    gamma: float
    estimate: float = math.nan
    se: float = math.nan

    form = "custom"

    def __post_init__(self) -> None:
        for name in ("mu", "gamma"):
            _require_number(name, getattr(self, name))
        s = float(self.sigma)
        if not (s > 0):
            raise InputError(f"sigma: expected a number > 0 (or inf), got {self.sigma!r}")

    def __call__(self, x: Any) -> np.ndarray:
        """Approximate log-likelihood at ``x`` (any shape)."""
        x = np.asarray(x, dtype=float)
        if math.isinf(self.sigma):
            return np.zeros_like(x)
        u = x - self.mu
        with np.errstate(over="ignore"):
            return np.exp(self.gamma * u) * (-(u * u) / (2 * self.sigma ** 2))

    def derivative(self, x: Any) -> np.ndarray:
        """First derivative at ``x``."""
        x = np.asarray(x, dtype=float)
        if math.isinf(self.sigma):
            return np.zeros_like(x)
        u = x - self.mu
        with np.errstate(over="ignore"):
            return -np.exp(self.gamma * u) * (self.gamma * u + 2) * u / (2 * self.sigma ** 2)

    def second_derivative(self, x: Any) -> np.ndarray:
        """Second derivative at ``x``."""
        x = np.asarray(x, dtype=float)
        if math.isinf(self.sigma):
            return np.zeros_like(x)
        u = x - self.mu
        g = self.gamma
        with np.errstate(over="ignore"):
            return -np.exp(g * u) * (g * g * u * u + 4 * g * u + 2) / (2 * self.sigma ** 2)

    def evaluate(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, first and second derivative at ``x``."""
        return self(x), self.derivative(x), self.second_derivative(x)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for JSON (``None`` where a value does not exist)."""
        return {"form": self.form, "mu": float(self.mu),
                "sigma": float(self.sigma) if math.isfinite(self.sigma) else None,
                "gamma": float(self.gamma), "estimate": _json(self.estimate),
                "se": _json(self.se)}


@dataclass(frozen=True)
class NormalApproximation:
    """The usual normal approximation ``-(x - estimate)^2 / (2 se^2)``."""

    estimate: float
    se: float

    form = "normal"

    def __post_init__(self) -> None:
        _require_number("estimate", self.estimate)
        if not (_require_number("se", self.se) > 0):
            raise InputError(f"se: expected a number > 0, got {self.se!r}")

    def __call__(self, x: Any) -> np.ndarray:
        """Approximate log-likelihood at ``x`` (any shape)."""
        u = np.asarray(x, dtype=float) - self.estimate
        return -(u * u) / (2 * self.se ** 2)

    def derivative(self, x: Any) -> np.ndarray:
        """First derivative at ``x``."""
        return -(np.asarray(x, dtype=float) - self.estimate) / self.se ** 2

    def second_derivative(self, x: Any) -> np.ndarray:
        """Second derivative at ``x``."""
        return np.full(np.shape(x), -1.0 / self.se ** 2)

    def evaluate(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, first and second derivative at ``x``."""
        return self(x), self.derivative(x), self.second_derivative(x)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for JSON (``None`` where a value does not exist)."""
        return {"form": self.form, "estimate": float(self.estimate), "se": float(self.se)}


LikelihoodApproximation = GridWithGradients | CustomApproximation | NormalApproximation


def _custom_fit(x: np.ndarray, ll: np.ndarray) -> tuple[float, float, float]:
    """Weighted least-squares fit of the custom function (weights ``max(e^ll, 0.001)``)."""
    ll = ll - ll.max()
    if ll.min() > -1e-6:
        return 0.0, math.inf, 0.0
    w = np.maximum(np.exp(ll), 1e-3)
    mode = float(x[np.argmax(ll)])
    if mode in (x.min(), x.max()):
        mode = 0.0

    def resid(par: np.ndarray, anchor: int | None) -> np.ndarray:
        mu, sigma, gamma = par
        u = x - mu
        with np.errstate(over="ignore", invalid="ignore"):
            f = np.exp(np.clip(gamma * u, -700, 700)) * (-(u * u) / (2 * sigma * sigma))
        f = f - (f.max() if anchor is None else f[anchor])
        r = np.sqrt(w) * (f - (ll if anchor is None else ll - ll[anchor]))
        return np.where(np.isfinite(r), r, 1e6)

    best, best_cost = None, math.inf
    anchor0 = int(np.argmin(np.abs(x)))
    for anchor in (None, anchor0):
        for start in ((mode, 1.0, 0.0), (mode, 0.3, 0.0)):
            try:
                fit = optimize.least_squares(resid, np.array(start), args=(anchor,),
                                             method="lm", xtol=1e-10, ftol=1e-12,
                                             max_nfev=2000)
            except (ValueError, FloatingPointError):
                continue
            cost = float(np.sum(resid(fit.x, None) ** 2))
            if np.all(np.isfinite(fit.x)) and cost < best_cost:
                best, best_cost = fit.x, cost
    if best is None:
        raise InputError("the custom approximation could not be fitted to this likelihood")
    return float(best[0]), float(abs(best[1])), float(best[2])


def approximate(profile: Any, form: str = "grid_with_gradients", *,
                bounds: tuple[float, float] = DEFAULT_BOUNDS) -> LikelihoodApproximation:
    """Fit the released approximation of a profile log-likelihood.

    Parameters
    ----------
    profile
        The site's profile log-likelihood as returned by :func:`profiler` (or any callable
        ``f(points) -> (values, derivatives)`` with ``estimate`` and ``se`` attributes).
    form
        ``"grid_with_gradients"`` (8 points over ``bounds`` plus the maximum),
        ``"custom"`` (3 parameters fitted on 100 points) or ``"normal"`` (estimate, se).
    bounds
        Range of the parameter (log scale) the approximation must describe.

    Returns
    -------
    GridWithGradients, CustomApproximation or NormalApproximation

    Examples
    --------
    >>> g = approximate(profiler("two_by_two", ai=0, bi=50, ci=3, di=47))
    >>> g.form, g.points.size, float(g.values.max())
    ('grid_with_gradients', 8, 0.0)
    """
    if form not in FORMS:
        raise InputError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    lo, hi = (_require_number("bounds[0]", bounds[0]), _require_number("bounds[1]", bounds[1]))
    if not lo < hi:
        raise InputError(f"bounds: expected lower < upper, got {bounds!r}")
    est, se = float(profile.estimate), float(profile.se)
    if form == "normal":
        if not math.isfinite(est):
            raise InputError("form 'normal': this likelihood has no finite maximum (no events "
                             "in one group); release 'grid_with_gradients' or 'custom'")
        return NormalApproximation(est, se)
    if form == "grid_with_gradients":
        x = np.linspace(lo, hi, _N_GRID)
        if math.isfinite(est) and lo < est < hi and est != 0:
            x = np.sort(np.r_[x, est])
        ll, d = profile(x)
        return GridWithGradients(x, ll - ll.max(), d, est, se)
    x = np.linspace(lo, hi, _N_CUSTOM)
    ll, _ = profile(x)
    mu, sigma, gamma = _custom_fit(x, np.asarray(ll, dtype=float))
    return CustomApproximation(mu, sigma, gamma, est, se)


def profiler(kind: str, **data: Any) -> _Profiler:
    """The profile log-likelihood of ``kind`` as a callable for :func:`approximate`.

    ``kind="two_by_two"``: ``ai, bi, ci, di``; ``"logistic"``: ``outcome, exposure,
    covariates``; ``"cox"``: ``time, event, exposure, covariates, ties``.
    """
    if kind == "two_by_two":
        return _TwoByTwo(**data)
    if kind == "logistic":
        return _Logistic(data["outcome"], data["exposure"], data.get("covariates"))
    if kind == "cox":
        return _Cox(data["time"], data["event"], data["exposure"], data.get("covariates"),
                    data.get("ties", "efron"))
    raise InputError(f"kind: expected two_by_two, logistic or cox, got {kind!r}")


__all__ += ["profiler"]


def approximation_from_dict(data: Mapping[str, Any], *,
                            where: str = "likelihood") -> LikelihoodApproximation:
    """Parse a released approximation (the inverse of ``to_dict``), validating every field.

    Raises
    ------
    InputError
        Naming ``where`` and the field: unknown form, missing or non-finite numbers,
        unsorted points, lengths that differ, more than 1000 points.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    form = data.get("form")
    try:
        if form == "grid_with_gradients":
            arrays = {}
            for key in ("points", "values", "derivatives"):
                raw = data.get(key)
                if not isinstance(raw, (list, tuple)) or len(raw) > 1000:
                    raise InputError(f"{key}: expected a list of at most 1000 numbers")
                arrays[key] = np.array([_require_number(f"{key}[{i}]", v)
                                        for i, v in enumerate(raw)])
            return GridWithGradients(arrays["points"], arrays["values"], arrays["derivatives"],
                                     _optional("estimate", data.get("estimate")),
                                     _optional("se", data.get("se")))
        if form == "custom":
            sigma = data.get("sigma")
            return CustomApproximation(
                _require_number("mu", data.get("mu")),
                math.inf if sigma is None else _require_number("sigma", sigma),
                _require_number("gamma", data.get("gamma")),
                _optional("estimate", data.get("estimate")), _optional("se", data.get("se")))
        if form == "normal":
            return NormalApproximation(_require_number("estimate", data.get("estimate")),
                                       _require_number("se", data.get("se")))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    raise InputError(f"{where}.form: expected one of {', '.join(FORMS)}, got {form!r}")


# ----------------------------------------------------------------------------------------------
# Disclosure control of a released likelihood
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseDecision:
    """Whether a likelihood may leave the site, and why (no counts in ``reason``)."""

    allowed: bool
    code: str
    reason: str


def check_release(kind: str, cells: Mapping[str, int], *, min_cell_count: int,
                  allow_small_cells: bool = False, allow_unadjusted: bool = False,
                  adjusted: bool = True) -> ReleaseDecision:
    """The site's min-cell rule applied to a likelihood it is about to release.

    What a likelihood reveals (docs/decisions/rare-events.md): the profile likelihood of a
    2x2 table is a function of its four counts and determines them (values and derivatives
    at a few points identify the table by an integer search), and so does any likelihood of
    a model without covariates; an adjusted model's likelihood does not determine the
    counts, but its shape reveals a zero cell (a monotone likelihood) and, with few events,
    little else than the counts. So, by default:

    * a likelihood of an unadjusted model (``kind == "two_by_two"`` or ``adjusted`` false)
      is released only when the operator allows it (``allow_unadjusted``) and every cell of
      the exposure x outcome table is at least ``min_cell_count``;
    * an adjusted model's likelihood is released when every cell passes, or when the
      operator's policy explicitly allows small cells (``allow_small_cells``), which is how a
      site with zero events in one arm contributes.

    Returns
    -------
    ReleaseDecision
        ``allowed`` and a machine ``code`` (``"ok"``, ``"unadjusted_likelihood"``,
        ``"disclosure_limit"``); ``reason`` never contains a count.
    """
    if kind not in ("two_by_two", "logistic", "cox"):
        raise InputError(f"kind: expected two_by_two, logistic or cox, got {kind!r}")
    try:
        limit = int(min_cell_count)
    except (TypeError, ValueError):
        raise InputError(f"min_cell_count: expected a whole number, got {min_cell_count!r}")
    missing = [c for c in ("ai", "bi", "ci", "di") if c not in cells]
    if missing:
        raise InputError(f"cells: missing {', '.join(missing)}")
    small = [c for c in ("ai", "bi", "ci", "di") if int(cells[c]) < limit]
    unadjusted = kind == "two_by_two" or not adjusted
    if unadjusted and not allow_unadjusted:
        return ReleaseDecision(False, "unadjusted_likelihood",
                               "the likelihood of an unadjusted model determines the "
                               "exposure x outcome counts; the site's policy does not allow "
                               "releasing it")
    if small and (unadjusted or not allow_small_cells):
        return ReleaseDecision(False, "disclosure_limit",
                               "a cell of the exposure x outcome table is below the minimum "
                               "cell count, and the likelihood would reveal it")
    return ReleaseDecision(True, "ok", "released")
