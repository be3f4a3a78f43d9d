"""Unit tests of the exact random-intercept GLM (fedsynth.models.hierarchical).

* the site function: adaptive Gauss-Hermite quadrature accurate to 1e-8 relative (against
  a much larger rule and against scipy.integrate.quad), its gradient and Hessian equal to
  finite differences of the integral, the gaussian closed form equal to quadrature;
* the coordinator: the order of the sites does not matter; homogeneous sites give tau = 0
  and the ordinary GLM (statsmodels) exactly; a site with no (or only) events keeps a finite
  conditional mode; round trips are counted; failures are reported;
* the messages: JSON round trips and the refusals of malformed input.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from fedsynth.errors import FedsynthError, InputError
from fedsynth.models.hierarchical import (
    BETA_BOUND,
    ICC_DEFINITIONS,
    LOG_SCALE_BOUNDS,
    NODE_LADDER,
    FitControl,
    HierarchicalFit,
    HierarchicalFitWarning,
    Proposal,
    SiteContribution,
    adaptive_quadrature,
    combine,
    fit_random_intercept,
    fit_sites,
    latent_icc,
    site_contribution,
    site_data,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def make_sites(family: str, sizes, *, tau: float = 0.7, seed: int = 7, beta=(-0.8, 0.5, 0.9),
               sigma: float = 2.0):
    """Synthetic sites: intercept, a continuous and a binary covariate; poisson with an
    exposure offset."""
    rng = np.random.default_rng(seed)
    sites = {}
    for i, n in enumerate(sizes):
        u = rng.normal(0.0, tau)
        x = rng.normal(size=n)
        b = rng.integers(0, 2, size=n).astype(float)
        X = np.column_stack([np.ones(n), x, b])
        eta = X @ np.array(beta) + u
        if family == "binomial":
            sites[f"s{i:02d}"] = site_data(X, rng.random(n) < 1 / (1 + np.exp(-eta)),
                                           family=family)
        elif family == "poisson":
            time = rng.uniform(0.5, 4.0, size=n)
            sites[f"s{i:02d}"] = site_data(X, rng.poisson(time * np.exp(eta)), family=family,
                                           offset=np.log(time))
        else:
            sites[f"s{i:02d}"] = site_data(X, eta + rng.normal(0, sigma, n), family=family)
    return sites


NAMES = ["intercept", "x", "b"]


def _log_integrand(data, beta, tau, sigma=math.nan):
    """log of prod_j f(y_j | eta_j + tau z) phi(z) for an array of z, written independently
    of the module."""
    eta = (data.X @ beta + data.offset)[:, None]
    y, m = data.y[:, None], data.trials[:, None]
    const = data.log_constant

    def g(z):
        z = np.atleast_1d(np.asarray(z, dtype=float))
        e = eta + tau * z[None, :]
        if data.family == "binomial":
            ll = np.sum(y * e - m * np.logaddexp(0, e), axis=0)
        elif data.family == "poisson":
            ll = np.sum(y * e - np.exp(e), axis=0)
        else:
            ll = np.sum(-0.5 * ((y - e) / sigma) ** 2 - 0.5 * math.log(2 * math.pi * sigma**2),
                        axis=0)
        return ll + const - 0.5 * z * z - 0.5 * math.log(2 * math.pi)

    return g


def _quad_loglik(data, beta, tau, sigma=math.nan) -> float:
    """log L_i by scipy.integrate.quad around the mode (shifted so nothing underflows)."""
    g = _log_integrand(data, np.asarray(beta, float), tau, sigma)
    grid = np.linspace(-12, 12, 4801)
    values = g(grid)
    centre = float(grid[np.argmax(values)])
    top = float(values.max())
    total = 0.0
    cuts = [-np.inf, centre - 6, centre, centre + 6, np.inf]
    for a, b in zip(cuts[:-1], cuts[1:]):
        total += integrate.quad(lambda z: math.exp(float(g(z)[0]) - top), a, b, epsabs=0,
                                epsrel=1e-13, limit=500)[0]
    return top + math.log(total)


# ------------------------------------------------------------------ the site function


QUADRATURE_CASES = {
    # name: (family, rows, events or counts, tau, beta)
    "binomial_large_site": ("binomial", 400, None, 0.8, (-1.0, 0.4, 0.8)),
    "binomial_small_site": ("binomial", 6, None, 1.5, (0.3, -0.5, 1.0)),
    "binomial_no_events": ("binomial", 9, "zeros", 2.0, (-1.0, 0.4, 0.8)),
    "binomial_all_events": ("binomial", 5, "ones", 3.0, (-1.0, 0.4, 0.8)),
    "poisson_small_counts": ("poisson", 12, None, 1.2, (-1.5, 0.3, 0.5)),
    "poisson_large_counts": ("poisson", 80, None, 0.4, (2.5, 0.3, 0.5)),
    "poisson_zero_counts": ("poisson", 4, "zeros", 2.5, (-0.5, 0.3, 0.5)),
}


def _quadrature_site(name):
    family, n, special, tau, beta = QUADRATURE_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    eta = X @ np.array(beta)
    if family == "binomial":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
        offset = None
    else:
        time = rng.uniform(0.5, 3, n)
        offset = np.log(time)
        y = rng.poisson(time * np.exp(eta)).astype(float)
    if special == "zeros":
        y[:] = 0
    elif special == "ones":
        y[:] = 1
    data = site_data(X, y, family=family, offset=offset)
    return data, Proposal(family, beta, log_tau=math.log(tau))


@pytest.mark.parametrize("name", sorted(QUADRATURE_CASES))
def test_quadrature_is_accurate_to_1e_8(name):
    """The ladder's rule agrees with a 150-node rule and with scipy.integrate.quad to 1e-8
    relative in L_i (i.e. absolute in log L_i), and says how far it is from its neighbour."""
    data, proposal = _quadrature_site(name)
    auto = adaptive_quadrature(data, proposal)
    big = adaptive_quadrature(data, proposal, nodes=150)
    quad = _quad_loglik(data, proposal.beta, proposal.tau)
    assert auto.nodes in NODE_LADDER
    assert abs(auto.loglik - big.loglik) <= 1e-8
    assert abs(auto.loglik - quad) <= 1e-8
    assert abs(big.loglik - quad) <= 1e-9
    assert auto.error <= proposal.tol
    # derivatives agree with the big rule too
    np.testing.assert_allclose(auto.gradient, big.gradient, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(auto.hessian, big.hessian, rtol=1e-6, atol=1e-7)


def test_few_nodes_are_not_enough_for_a_tiny_skewed_site():
    """Why the ladder exists: on a 5-row site with only events and tau = 3, a fixed small
    rule misses the 1e-8 target that the ladder meets."""
    data, proposal = _quadrature_site("binomial_all_events")
    exact = _quad_loglik(data, proposal.beta, proposal.tau)
    three = adaptive_quadrature(data, proposal, nodes=3)
    assert abs(three.loglik - exact) > 1e-6
    assert abs(adaptive_quadrature(data, proposal).loglik - exact) <= 1e-8


def _numeric_derivatives(data, proposal, h=1e-5):
    """Central differences of log L_i (by a 150-node rule) in (beta, tau)."""
    beta = np.array(proposal.beta)
    tau = proposal.tau
    theta = np.concatenate([beta, [tau]])

    def f(t):
        return adaptive_quadrature(data, Proposal(proposal.family, tuple(t[:-1]),
                                                  log_tau=math.log(t[-1])), nodes=150).loglik

    q = theta.size
    grad = np.zeros(q)
    hess = np.zeros((q, q))
    for i in range(q):
        e = np.zeros(q)
        e[i] = h
        grad[i] = (f(theta + e) - f(theta - e)) / (2 * h)
        for j in range(i, q):
            e2 = np.zeros(q)
            e2[j] = h
            hess[i, j] = hess[j, i] = (f(theta + e + e2) - f(theta + e - e2)
                                       - f(theta - e + e2) + f(theta - e - e2)) / (4 * h * h)
    return grad, hess


@pytest.mark.parametrize("name", ["binomial_small_site", "binomial_no_events",
                                  "poisson_small_counts"])
def test_gradient_and_hessian_are_those_of_the_integral(name):
    data, proposal = _quadrature_site(name)
    part = site_contribution(data, proposal)
    grad, hess = _numeric_derivatives(data, proposal)
    np.testing.assert_allclose(part.gradient, grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(part.hessian, hess, rtol=1e-4, atol=1e-4)


def test_at_tau_zero_the_site_returns_the_glm_and_the_variance_score():
    """tau = 0: the integral is the plain likelihood, d/dtau = 0 and
    d2/dtau2 = (sum l')^2 + sum l'' (the variance-component score statistic)."""
    data, proposal = _quadrature_site("binomial_large_site")
    beta = np.array(proposal.beta)
    part = site_contribution(data, Proposal("binomial", proposal.beta, log_tau=None))
    eta = data.X @ beta
    prob = 1 / (1 + np.exp(-eta))
    loglik = float(np.sum(data.y * np.log(prob) + (1 - data.y) * np.log1p(-prob)))
    d1 = data.y - prob
    d2 = -prob * (1 - prob)
    assert part.loglik == pytest.approx(loglik, rel=1e-13)
    np.testing.assert_allclose(part.gradient[:-1], data.X.T @ d1, rtol=1e-12, atol=1e-12)
    assert part.gradient[-1] == 0.0
    np.testing.assert_allclose(part.hessian[:-1, :-1], (data.X.T * d2) @ data.X, rtol=1e-12)
    np.testing.assert_allclose(part.hessian[:-1, -1], 0.0, atol=1e-12)
    assert part.hessian[-1, -1] == pytest.approx(d1.sum() ** 2 + d2.sum(), rel=1e-12)
    assert part.mode == 0.0 and part.mode_sd == 0.0 and part.quadrature_error == 0.0


def test_gaussian_closed_form_equals_quadrature_and_finite_differences():
    sites = make_sites("gaussian", [15, 40], tau=1.3, sigma=2.5)
    proposal = Proposal("gaussian", (1.0, 0.4, -0.3), log_tau=math.log(1.1),
                        log_sigma=math.log(2.2))
    for data in sites.values():
        closed = site_contribution(data, proposal)
        quad = adaptive_quadrature(data, proposal)
        assert closed.nodes == 0
        assert closed.loglik == pytest.approx(quad.loglik, rel=1e-12)
        assert closed.loglik == pytest.approx(
            _quad_loglik(data, proposal.beta, proposal.tau, proposal.sigma), rel=1e-10)
        np.testing.assert_allclose(closed.gradient[:-1], quad.gradient, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(closed.hessian[:-1, :-1], quad.hessian, rtol=1e-9,
                                   atol=1e-9)
        # the posterior is exactly normal: mode = mean, conditional SD = posterior SD
        assert closed.mode == pytest.approx(quad.mode, rel=1e-9)
        assert closed.mode_sd == pytest.approx(quad.mode_sd, rel=1e-9)
        assert quad.posterior_mean == pytest.approx(quad.mode, rel=1e-9)
        # derivatives in sigma by finite differences of the closed form
        h = 1e-5

        def f(sigma):
            return site_contribution(data, Proposal("gaussian", proposal.beta,
                                                    log_tau=proposal.log_tau,
                                                    log_sigma=math.log(sigma))).loglik

        s = proposal.sigma
        assert closed.gradient[-1] == pytest.approx((f(s + h) - f(s - h)) / (2 * h), rel=1e-7)
        assert closed.hessian[-1, -1] == pytest.approx(
            (f(s + h) - 2 * f(s) + f(s - h)) / h**2, rel=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), log_tau=st.floats(-3, 1.2),
       family=st.sampled_from(["binomial", "poisson"]))
def test_quadrature_matches_scipy_quad_property(seed, n, log_tau, family):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    beta = (float(rng.normal(-0.5, 1)), float(rng.normal(0, 0.5)))
    eta = X @ np.array(beta) + rng.normal(0, math.exp(log_tau))
    if family == "binomial":
        y = rng.random(n) < 1 / (1 + np.exp(-eta))
    else:
        y = rng.poisson(np.exp(eta))
    data = site_data(X, y, family=family)
    proposal = Proposal(family, beta, log_tau=log_tau)
    assert site_contribution(data, proposal).loglik == pytest.approx(
        _quad_loglik(data, beta, math.exp(log_tau)), abs=1e-8)


def test_site_refuses_a_proposal_that_does_not_fit_its_data():
    data, _ = _quadrature_site("binomial_small_site")
    with pytest.raises(InputError, match="beta: 2 coefficients proposed but the site's design "
                                         "has 3 columns"):
        site_contribution(data, Proposal("binomial", (0.0, 0.0), log_tau=0.0))
    with pytest.raises(InputError, match="family: the proposal is for 'poisson'"):
        site_contribution(data, Proposal("poisson", (0.0, 0.0, 0.0), log_tau=0.0))


def test_overflowing_proposal_gives_an_impossible_contribution_not_a_crash():
    data = site_data(np.column_stack([np.ones(3), [1.0, 2.0, 3.0]]), [1, 2, 3],
                     family="poisson")
    part = site_contribution(data, Proposal("poisson", (0.0, 9000.0), log_tau=0.0))
    assert part.loglik == -math.inf and not part.finite
    wire = json.loads(json.dumps(part.to_dict(), allow_nan=False))
    assert wire["loglik"] is None
    back = SiteContribution.from_dict(wire, parameters=3)
    assert back.loglik == -math.inf
    assert combine([back]).loglik == -math.inf


# ------------------------------------------------------------------ messages


def test_messages_round_trip_through_json():
    data, proposal = _quadrature_site("binomial_small_site")
    wire = json.dumps(proposal.to_dict(), allow_nan=False)
    assert Proposal.from_dict(json.loads(wire)) == proposal
    part = site_contribution(data, proposal)
    back = SiteContribution.from_dict(json.loads(json.dumps(part.to_dict(), allow_nan=False)),
                                      parameters=4)
    assert back.loglik == part.loglik
    np.testing.assert_array_equal(back.gradient, part.gradient)
    np.testing.assert_array_equal(back.hessian, part.hessian)
    assert (back.nodes, back.mode, back.mode_sd) == (part.nodes, part.mode, part.mode_sd)
    assert set(part.to_dict()) == {"n", "loglik", "gradient", "hessian", "nodes",
                                   "quadrature_error", "mode", "mode_sd", "posterior_mean",
                                   "posterior_sd"}


@pytest.mark.parametrize("change, message", [
    ({"beta": [0.0, math.nan]}, r"beta\[1\]: not finite"),
    ({"beta": [0.0, 2 * BETA_BOUND]}, r"beta\[1\]: 20000.0 is outside"),
    ({"beta": []}, "beta: empty"),
    ({"beta": "0.1"}, "beta: expected a list"),
    ({"beta": [0.0, True]}, r"beta\[1\]: expected a number, got True"),
    ({"log_tau": LOG_SCALE_BOUNDS[1] + 1}, "log_tau: 21.0 is outside"),
    ({"log_tau": math.inf}, "log_tau: not finite"),
    ({"family": "gamma"}, "family: unknown value 'gamma'"),
    ({"log_sigma": 0.0}, "log_sigma: only for the gaussian family"),
    ({"nodes": 1}, r"nodes: 1 is not an integer in \[2, 200\]"),
    ({"nodes": 500}, "nodes: 500 is not an integer"),
    ({"tol": 0}, r"tol: 0.0 is not in \(0, 1\)"),
    ({"iteration": -1}, "iteration: -1 is not a non-negative integer"),
    ({"extra": 1}, r"proposal: unknown field\(s\) \['extra'\]"),
])
def test_malformed_proposals_are_refused(change, message):
    good = Proposal("binomial", (0.0, 1.0), log_tau=0.0).to_dict()
    with pytest.raises(InputError, match=message):
        Proposal.from_dict({**good, **change})


def test_gaussian_proposal_needs_sigma():
    with pytest.raises(InputError, match="log_sigma: required for the gaussian family"):
        Proposal("gaussian", (0.0,), log_tau=0.0)


@pytest.mark.parametrize("change, message", [
    ({"gradient": [0.0, 1.0]}, r"s1.gradient: shape \(2,\), expected \(3,\)"),
    ({"hessian": [[1, 0, 0], [0, 1, 0], [5, 0, 1]]}, "s1.hessian: not symmetric"),
    ({"loglik": "x"}, "s1.loglik: expected a number"),
    ({"n": 0}, "s1.n: 0 is not a positive integer"),
    ({"gradient": [0.0, math.nan, 1.0]}, "s1: non-finite gradient or hessian"),
])
def test_malformed_contributions_are_refused(change, message):
    good = {"n": 5, "loglik": -3.0, "gradient": [0.0, 0.0, 0.0],
            "hessian": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}
    with pytest.raises(InputError, match=message):
        SiteContribution.from_dict({**good, **change}, parameters=3, site="s1")


@pytest.mark.parametrize("kwargs, message", [
    ({"X": [[1.0], [1.0]], "y": [0, 2], "family": "binomial"},
     r"y: row 1 has 2.0; binomial y must be an integer number of successes between 0 and "
     r"trials \(1\)"),
    ({"X": [[1.0], [1.0]], "y": [0, 2], "family": "binomial", "trials": [1, 1.5]},
     "trials: row 1 has 1.5"),
    ({"X": [[1.0], [1.0]], "y": [0, -1], "family": "poisson"}, "y: row 1 has -1.0"),
    ({"X": [[1.0], [np.nan]], "y": [0, 1], "family": "poisson"},
     r"X: non-finite value nan at index \(1, 0\)"),
    ({"X": [[1.0]], "y": [0, 1], "family": "poisson"}, "X: 1 rows but y has 2"),
    ({"X": [[1.0], [1.0]], "y": [0, 1], "family": "poisson", "trials": [1, 1]},
     "trials: only for the binomial family"),
    ({"X": [[1.0], [1.0]], "y": [0, 1], "family": "poisson", "offset": [0.0]},
     "offset: 1 values but y has 2"),
    ({"X": [[1.0], [1.0]], "y": [0, 1], "family": "probit"}, "family: unknown value"),
    ({"X": [1.0, 1.0], "y": [0, 1], "family": "poisson"}, "X: expected a 2-dimensional"),
    ({"X": np.zeros((0, 1)), "y": [], "family": "poisson"}, "y: a site needs at least one"),
])
def test_site_data_errors_name_the_field_and_value(kwargs, message):
    with pytest.raises(InputError, match=message):
        site_data(**kwargs)


# ------------------------------------------------------------------ the coordinator


@pytest.fixture(scope="module")
def binomial_sites():
    return make_sites("binomial", [30, 60, 120, 200, 45, 80, 150, 25], tau=0.8, seed=11)


@pytest.fixture(scope="module")
def binomial_fit(binomial_sites):
    return fit_sites(binomial_sites, names=NAMES)


def test_fit_converges_in_few_round_trips_and_counts_them(binomial_sites):
    calls = []
    q = 4

    def evaluate(proposal):
        calls.append(proposal)
        return {name: SiteContribution.from_dict(site_contribution(d, proposal).to_dict(),
                                                 parameters=q)
                for name, d in binomial_sites.items()}

    fit = fit_random_intercept(evaluate, names=NAMES, family="binomial")
    assert fit.converged and not fit.boundary
    assert fit.evaluations == len(calls) <= 20
    assert [c.iteration for c in calls] == list(range(len(calls)))
    assert fit.iterations <= fit.evaluations
    # the gradient of the summed log-likelihood vanishes at the estimate
    final = combine(evaluate(Proposal("binomial", tuple(fit.coefficients),
                                      log_tau=fit.log_tau)))
    scale = np.concatenate([np.ones(3), [fit.tau]])
    assert np.max(np.abs(final.gradient * scale)) < 1e-6
    assert final.loglik == pytest.approx(fit.loglik, rel=1e-12)


def test_result_contents(binomial_fit, binomial_sites):
    fit = binomial_fit
    assert isinstance(fit, HierarchicalFit)
    assert fit.names == tuple(NAMES) and fit.k == 8 and fit.n == sum(
        d.n for d in binomial_sites.values())
    assert fit.tau2 == pytest.approx(fit.tau**2)
    assert fit.se_tau == pytest.approx(fit.tau * fit.se_log_tau)
    assert fit.icc == pytest.approx(fit.tau2 / (fit.tau2 + math.pi**2 / 3))
    assert np.all(fit.se > 0) and np.all(np.isfinite(fit.covariance))
    np.testing.assert_allclose(fit.z, fit.coefficients / fit.se)
    for site, ri in fit.site_intercepts.items():
        assert ri.ci_lb == pytest.approx(ri.mode - 1.959963984540054 * ri.sd)
        assert ri.n == binomial_sites[site].n
        assert 0 < ri.sd < fit.tau
    assert set(fit.nodes) == set(binomial_sites)
    assert fit.max_quadrature_error <= 1e-9
    out = fit.to_dict()
    json.dumps(out, allow_nan=False)
    # issue 14's "hierarchical" object
    for key in ("coefficients", "se", "tau", "tau2", "logLik", "site_intercepts",
                "site_intercepts_se"):
        assert key in out
    assert list(out["coefficients"]) == NAMES
    assert out["site_intercepts"]["s00"] == fit.site_intercepts["s00"].mode
    assert out["logLik"] == fit.loglik


def test_site_order_does_not_matter(binomial_sites, binomial_fit):
    reverse = dict(reversed(list(binomial_sites.items())))
    other = fit_sites(reverse, names=NAMES)
    np.testing.assert_allclose(other.coefficients, binomial_fit.coefficients, rtol=1e-12)
    np.testing.assert_allclose(other.se, binomial_fit.se, rtol=1e-10)
    assert other.tau == pytest.approx(binomial_fit.tau, rel=1e-12)
    assert other.loglik == pytest.approx(binomial_fit.loglik, rel=1e-14)
    for site in binomial_sites:
        assert other.site_intercepts[site].mode == pytest.approx(
            binomial_fit.site_intercepts[site].mode, rel=1e-10)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_site_permutation_invariance_property(seed):
    sites = make_sites("poisson", [20, 35, 50, 15, 40], tau=0.5, seed=3)
    names = list(sites)
    order = np.random.default_rng(seed).permutation(len(names))
    base = fit_sites(sites, names=NAMES)
    perm = fit_sites({names[i]: sites[names[i]] for i in order}, names=NAMES)
    np.testing.assert_allclose(perm.coefficients, base.coefficients, rtol=1e-12)
    assert perm.tau == pytest.approx(base.tau, rel=1e-12)
    assert perm.loglik == pytest.approx(base.loglik, rel=1e-14)


def _homogeneous_sites(family: str):
    """Eight sites holding the same 60 rows (in different orders): no between-site
    variation at all, so the maximum is tau = 0."""
    rng = np.random.default_rng(5)
    n = 60
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    eta = X @ np.array([-0.4, 0.6, 0.5])
    offset = None
    if family == "binomial":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "poisson":
        offset = np.log(rng.uniform(0.5, 3, n))
        y = rng.poisson(np.exp(eta + offset)).astype(float)
    else:
        y = eta + rng.normal(0, 1.5, n)
    sites = {}
    for i in range(8):
        rows = rng.permutation(n)
        sites[f"h{i}"] = site_data(X[rows], y[rows], family=family,
                                   offset=None if offset is None else offset[rows])
    return sites, X, y, offset


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_homogeneous_sites_give_tau_zero_and_the_ordinary_glm(family):
    sites, X, y, offset = _homogeneous_sites(family)
    fit = fit_sites(sites, names=NAMES)
    Xall = np.vstack([X] * 8)
    yall = np.concatenate([y] * 8)
    off = None if offset is None else np.concatenate([offset] * 8)
    sm_family = {"binomial": sm.families.Binomial(), "poisson": sm.families.Poisson(),
                 "gaussian": sm.families.Gaussian()}[family]
    glm = sm.GLM(yall, Xall, family=sm_family, offset=off).fit(tol=1e-14, maxiter=100)
    assert fit.boundary and fit.converged
    assert fit.evaluations <= 10  # no creeping along log tau -> -inf
    assert fit.tau == 0.0 and fit.tau2 == 0.0 and math.isnan(fit.se_log_tau)
    np.testing.assert_allclose(fit.coefficients, glm.params, rtol=1e-8)
    if family == "gaussian":
        # ML: the residual variance is RSS / n, and so are the SEs (statsmodels uses n - p)
        n, p = Xall.shape
        sigma2 = float(np.sum(glm.resid_response**2)) / n
        assert fit.sigma2 == pytest.approx(sigma2, rel=1e-8)
        np.testing.assert_allclose(fit.se, glm.bse * math.sqrt((n - p) / n), rtol=1e-7)
    else:
        np.testing.assert_allclose(fit.se, glm.bse, rtol=1e-7)
        assert fit.loglik == pytest.approx(glm.llf, rel=1e-10)
    assert all(ri.mode == 0.0 and ri.sd == 0.0 for ri in fit.site_intercepts.values())
    assert fit.to_dict()["tau"] == 0.0 and fit.to_dict()["se_tau"] is None


def test_tau_shrinks_to_zero_as_sites_become_alike():
    """tau -> 0 continuously: with between-site spread scaled by c -> 0 on otherwise fixed
    data, the fitted tau falls and the coefficients approach the pooled GLM's."""
    base, X, y, _ = _homogeneous_sites("gaussian")
    glm = sm.GLM(np.concatenate([y] * 8), np.vstack([X] * 8)).fit()
    taus = []
    for c in (2.0, 0.5, 0.1):
        shifted = {name: site_data(d.X, d.y + c * (i - 3.5), family="gaussian")
                   for i, (name, d) in enumerate(base.items())}
        fit = fit_sites(shifted, names=NAMES)
        taus.append(fit.tau)
        if fit.boundary:
            break
    assert all(a > b for a, b in zip(taus, taus[1:]))
    np.testing.assert_allclose(fit.coefficients[1:], glm.params[1:], rtol=1e-8)


@pytest.mark.parametrize("outcome", [0.0, 1.0])
def test_separated_site_keeps_a_finite_conditional_mode(outcome):
    sites = make_sites("binomial", [80, 120, 60, 90, 70], tau=0.6, seed=21)
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(10), rng.normal(size=10), rng.integers(0, 2, 10)])
    sites["separated"] = site_data(X, np.full(10, outcome), family="binomial")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_sites(sites, names=NAMES)
    assert fit.converged and not fit.boundary
    ri = fit.site_intercepts["separated"]
    assert math.isfinite(ri.mode) and math.isfinite(ri.sd) and ri.sd > 0
    assert (ri.mode < 0) if outcome == 0 else (ri.mode > 0)
    # its posterior is skewed away from the bulk: mean further out than the mode
    assert abs(ri.posterior_mean) > abs(ri.mode)
    assert np.all(np.isfinite(fit.se))


def test_covariate_separated_within_one_site_is_fine():
    sites = make_sites("binomial", [80, 120, 60, 90], tau=0.6, seed=4)
    X = np.column_stack([np.ones(12), np.linspace(-1, 1, 12), np.zeros(12)])
    sites["split"] = site_data(X, (X[:, 1] > 0).astype(float), family="binomial")
    fit = fit_sites(sites, names=NAMES)
    assert fit.converged and math.isfinite(fit.site_intercepts["split"].mode)


def test_fixed_node_count_gives_the_same_fit(binomial_sites, binomial_fit):
    fixed = fit_sites(binomial_sites, names=NAMES, control=FitControl(nodes=64))
    assert set(fixed.nodes.values()) == {64}
    np.testing.assert_allclose(fixed.coefficients, binomial_fit.coefficients, rtol=1e-7)
    assert fixed.tau == pytest.approx(binomial_fit.tau, rel=1e-7)
    assert fixed.loglik == pytest.approx(binomial_fit.loglik, abs=1e-8)


def test_start_value_does_not_change_the_maximum(binomial_sites, binomial_fit):
    for tau_start in (0.05, 3.0):
        other = fit_sites(binomial_sites, names=NAMES, control=FitControl(tau_start=tau_start))
        assert other.tau == pytest.approx(binomial_fit.tau, rel=1e-7)
        np.testing.assert_allclose(other.coefficients, binomial_fit.coefficients, rtol=1e-7)


def test_offset_and_scale_equivariance():
    sites = make_sites("poisson", [40, 25, 60, 30, 45], tau=0.6, seed=8)
    fit = fit_sites(sites, names=NAMES)
    shifted = {n: site_data(d.X * np.array([1.0, 2.0, 1.0]), d.y, family="poisson",
                            offset=d.offset + 0.7) for n, d in sites.items()}
    other = fit_sites(shifted, names=NAMES)
    expected = fit.coefficients * np.array([1.0, 0.5, 1.0]) - np.array([0.7, 0, 0])
    np.testing.assert_allclose(other.coefficients, expected, rtol=1e-7, atol=1e-9)
    assert other.tau == pytest.approx(fit.tau, rel=1e-7)
    assert other.se[1] == pytest.approx(fit.se[1] / 2, rel=1e-6)


def test_not_converging_is_reported_with_a_warning(binomial_sites):
    # 4 Newton iterations per stage: enough for tau = 0, not for the full model
    with pytest.warns(HierarchicalFitWarning, match="did not converge"):
        fit = fit_sites(binomial_sites, names=NAMES, control=FitControl(maxit=4))
    assert not fit.converged and fit.message == "no convergence in 4 iterations"
    assert fit.to_dict()["converged"] is False
    with pytest.raises(FedsynthError, match="the tau = 0 fit \\(ordinary GLM\\) failed: no "
                                            "convergence in 1 iterations"):
        fit_sites(binomial_sites, names=NAMES, control=FitControl(maxit=1))


def test_coordinator_input_errors(binomial_sites):
    with pytest.raises(InputError, match="names: a random-intercept model needs the fixed "
                                         "'intercept' column"):
        fit_sites(binomial_sites, names=["a", "x", "b"])
    with pytest.raises(InputError, match="names: 2 names for 3 columns"):
        fit_sites(binomial_sites, names=["intercept", "x"])
    with pytest.raises(InputError, match="names: duplicated"):
        fit_sites(binomial_sites, names=["intercept", "x", "x"])
    mixed = {**binomial_sites, "p": site_data(np.ones((3, 3)), [1, 2, 3], family="poisson")}
    with pytest.raises(InputError, match="sites: mixed families"):
        fit_sites(mixed, names=NAMES)
    with pytest.raises(InputError, match="sites: no site given"):
        fit_sites({}, names=NAMES)
    with pytest.raises(InputError, match=r"level: 1.5 is not in \(0, 1\)"):
        FitControl(level=1.5)
    with pytest.raises(FedsynthError, match="evaluate: returned no site contributions"):
        fit_random_intercept(lambda proposal: {}, names=NAMES, family="binomial")


def test_latent_icc_definitions():
    assert latent_icc("binomial", 1.0) == pytest.approx(1 / (1 + math.pi**2 / 3))
    assert latent_icc("gaussian", 4.0, sigma2=12.0) == pytest.approx(0.25)
    lam = math.exp(0.5 + 0.5)
    assert latent_icc("poisson", 1.0, intercept=0.5) == pytest.approx(
        1 / (1 + math.log(1 + 1 / lam)))
    assert set(ICC_DEFINITIONS) == {"binomial", "poisson", "gaussian"}


def test_gaussian_fit_reports_sigma_and_icc():
    sites = make_sites("gaussian", [30, 20, 50, 40, 25, 35], tau=1.5, sigma=2.0, seed=2)
    fit = fit_sites(sites, names=NAMES)
    out = fit.to_dict()
    assert out["sigma"] == pytest.approx(fit.sigma) and fit.sigma2 == pytest.approx(
        fit.sigma**2)
    assert fit.icc == pytest.approx(fit.tau2 / (fit.tau2 + fit.sigma2))
    assert math.isfinite(fit.se_log_sigma) and set(fit.nodes.values()) == {0}
    for ri in fit.site_intercepts.values():
        assert ri.posterior_mean == pytest.approx(ri.mode)


def _profile_loglik(sites, family, tau, beta):
    """max over beta of l(beta, tau) by Newton's method on the summed site terms."""
    beta = np.array(beta, dtype=float)
    p = beta.size
    for _ in range(50):
        total = combine({n: site_contribution(d, Proposal(family, tuple(beta),
                                                          log_tau=math.log(tau)))
                         for n, d in sites.items()})
        step = np.linalg.solve(total.hessian[:p, :p], total.gradient[:p])
        beta = beta - step
        if np.max(np.abs(step)) < 1e-12:
            break
    return total.loglik


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), family=st.sampled_from(["binomial", "poisson"]),
       tau=st.sampled_from([0.0, 0.15, 0.5]))
def test_the_fit_is_the_maximum_of_the_profile_likelihood(seed, family, tau):
    """Whether at the boundary or inside: no tau on a grid does better, and a boundary fit
    is reached in a few round trips (no creeping towards log tau = -inf)."""
    sites = make_sites(family, [30, 45, 60, 25, 50, 40], tau=tau, seed=seed % 10_000)
    fit = fit_sites(sites, names=NAMES)
    assert fit.converged
    if fit.boundary:
        assert fit.evaluations <= 12
    for grid_tau in (0.01, 0.1, 0.3, 0.7, 1.5):
        assert _profile_loglik(sites, family, grid_tau, fit.coefficients) <= fit.loglik + 1e-9


def test_the_coordinator_needs_only_the_summed_contributions(binomial_sites, binomial_fit):
    """An evaluate that returns only the sum (as secure aggregation would) reaches the same
    maximum; the per-site intercepts are then not available."""

    def summed(proposal):
        return combine([site_contribution(d, proposal) for d in binomial_sites.values()])

    fit = fit_random_intercept(summed, names=NAMES, family="binomial")
    assert fit.converged and not fit.boundary
    np.testing.assert_allclose(fit.coefficients, binomial_fit.coefficients, rtol=1e-8)
    assert fit.tau == pytest.approx(binomial_fit.tau, rel=1e-8)
    np.testing.assert_allclose(fit.se, binomial_fit.se, rtol=1e-7)
    assert fit.loglik == pytest.approx(binomial_fit.loglik, abs=1e-9)
    assert fit.site_intercepts == {} and fit.k == len(binomial_sites)
    assert fit.max_quadrature_error <= 1e-9
