"""Unit tests of the random-slope model (two-dimensional adaptive quadrature per site).

* the site function: ``log L_i`` equal to scipy's two-dimensional integration to 1e-8, the
  gradient and Hessian equal to finite differences, and at ``l21 = l22 = 0`` the
  random-intercept site function exactly;
* the coordinator: a slope that does not vary gives a singular fit (``l22 = 0``) found in
  few round trips; the order of the sites does not matter; the likelihood-ratio test;
* the messages: JSON round trips and refusals.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from fedsynth.errors import InputError
from fedsynth.models.hierarchical import (
    FitControl,
    Proposal,
    RandomSlopeFit,
    SlopeContribution,
    SlopeProposal,
    fit_random_slope,
    fit_sites,
    fit_sites_slope,
    site_contribution,
    site_data,
    slope_contribution,
)
from tests.unit.test_hierarchical import NAMES, make_sites


def slope_sites(family: str, sizes, *, seed: int = 3, cov=((0.36, 0.05), (0.05, 0.12))):
    rng = np.random.default_rng(seed)
    sites = {}
    for i, n in enumerate(sizes):
        u0, u1 = rng.multivariate_normal([0, 0], np.array(cov))
        x = rng.normal(size=n)
        b = rng.integers(0, 2, n).astype(float)
        eta = -0.6 + u0 + (0.5 + u1) * x + 0.4 * b
        y = rng.random(n) < 1 / (1 + np.exp(-eta)) if family == "binomial" \
            else rng.poisson(np.exp(eta))
        sites[f"s{i}"] = site_data(np.column_stack([np.ones(n), x, b]), y, family=family)
    return sites


def _dblquad_loglik(data, beta, slope, theta) -> float:
    """log L_i by scipy.integrate.dblquad in the u-plane, around the mode (independent of
    the module: bivariate normal prior with covariance L L')."""
    l11, l21, l22 = theta
    L = np.array([[l11, 0], [l21, l22]])
    prec = np.linalg.inv(L @ L.T)
    log_norm = -math.log(2 * math.pi) - math.log(l11 * l22)
    eta = data.X @ np.asarray(beta) + data.offset
    w = data.X[:, slope]
    y = data.y

    def logf(u0, u1):
        e = eta + u0 + u1 * w
        if data.family == "binomial":
            ll = float(np.sum(y * e - np.logaddexp(0, e)))
        else:
            ll = float(np.sum(y * e - np.exp(e)))
        quad = prec[0, 0] * u0 * u0 + 2 * prec[0, 1] * u0 * u1 + prec[1, 1] * u1 * u1
        return ll + data.log_constant + log_norm - 0.5 * quad

    grid = np.linspace(-4, 4, 81)
    values = np.array([[logf(a, b) for b in grid] for a in grid])
    i, j = np.unravel_index(np.argmax(values), values.shape)
    c0, c1, top = grid[i], grid[j], values[i, j]
    # +-9 around the mode: beyond the prior's reach (SDs <= 1.3 here) by > 7 SDs
    value = integrate.dblquad(lambda b, a: math.exp(logf(a, b) - top), c0 - 9, c0 + 9,
                              c1 - 9, c1 + 9, epsabs=0, epsrel=1e-10)[0]
    return top + math.log(value)


def _site(family="binomial", n=25, seed=0):
    return slope_sites(family, [n], seed=seed)["s0"]


@pytest.mark.parametrize("family, n, theta", [("binomial", 25, (0.7, 0.2, 0.5)),
                                              ("binomial", 8, (1.2, -0.4, 0.9)),
                                              ("poisson", 15, (0.5, 0.1, 0.3))])
def test_two_dimensional_quadrature_matches_dblquad(family, n, theta):
    data = _site(family, n)
    beta = (-0.5, 0.4, 0.3)
    part = slope_contribution(data, SlopeProposal(family, beta, slope=1, theta=theta))
    big = slope_contribution(data, SlopeProposal(family, beta, slope=1, theta=theta,
                                                 nodes=40))
    assert abs(part.loglik - big.loglik) <= 1e-8
    assert abs(part.loglik - _dblquad_loglik(data, beta, 1, theta)) <= 1e-8
    assert part.quadrature_error <= 1e-9


def test_slope_derivatives_are_those_of_the_integral():
    data = _site("binomial", 20, seed=4)
    beta = np.array([-0.3, 0.5, 0.2])
    theta = np.array([0.6, 0.15, 0.4])

    def f(t):
        return slope_contribution(data, SlopeProposal("binomial", tuple(t[:3]), slope=1,
                                                      theta=tuple(t[3:]), nodes=32)).loglik

    x0 = np.concatenate([beta, theta])
    part = slope_contribution(data, SlopeProposal("binomial", tuple(beta), slope=1,
                                                  theta=tuple(theta)))
    h = 1e-5
    q = x0.size
    grad = np.array([(f(x0 + h * e) - f(x0 - h * e)) / (2 * h) for e in np.eye(q)])
    np.testing.assert_allclose(part.gradient, grad, rtol=1e-6, atol=1e-6)
    hess = np.array([[(f(x0 + h * a + h * b) - f(x0 + h * a - h * b) - f(x0 - h * a + h * b)
                       + f(x0 - h * a - h * b)) / (4 * h * h) for b in np.eye(q)]
                     for a in np.eye(q)])
    np.testing.assert_allclose(part.hessian, hess, rtol=1e-4, atol=1e-4)


def test_without_slope_variance_the_site_term_is_the_random_intercept_one():
    data = _site("poisson", 30, seed=2)
    beta = (0.1, 0.3, -0.2)
    ri = site_contribution(data, Proposal("poisson", beta, log_tau=math.log(0.8)))
    two = slope_contribution(data, SlopeProposal("poisson", beta, slope=1,
                                                 theta=(0.8, 0.0, 0.0)))
    assert two.loglik == pytest.approx(ri.loglik, abs=1e-10)
    np.testing.assert_allclose(two.gradient[:4], ri.gradient, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(two.hessian[:4, :4], ri.hessian, rtol=1e-7, atol=1e-8)
    assert two.gradient[5] == pytest.approx(0.0, abs=1e-9)  # even in l22
    assert two.mode[0] == pytest.approx(ri.mode, rel=1e-8)
    assert two.mode[1] == pytest.approx(0.0, abs=1e-12)


def test_slope_messages_round_trip_and_refusals():
    data = _site()
    proposal = SlopeProposal("binomial", (0.0, 0.5, 0.1), slope=1, theta=(0.5, 0.1, 0.2))
    assert SlopeProposal.from_dict(json.loads(json.dumps(proposal.to_dict()))) == proposal
    part = slope_contribution(data, proposal)
    back = SlopeContribution.from_dict(json.loads(json.dumps(part.to_dict(),
                                                             allow_nan=False)), parameters=6)
    assert back.loglik == part.loglik
    np.testing.assert_array_equal(back.mode_cov, part.mode_cov)
    good = proposal.to_dict()
    for change, message in [({"theta": [0.5, 0.1]}, "theta: expected"),
                            ({"theta": [-0.5, 0.1, 0.2]}, "theta: the diagonal"),
                            ({"theta": [0.5, math.nan, 0.2]}, r"theta\[1\]: not finite"),
                            ({"slope": 3}, r"slope: 3 is not a column index in \[0, 2\]"),
                            ({"family": "gaussian"}, "family: 'gaussian' has no random-slope"),
                            ({"nodes": 100}, "nodes: 100 is not an integer")]:
        with pytest.raises(InputError, match=message):
            SlopeProposal.from_dict({**good, **change})
    with pytest.raises(InputError, match="s1.mode_cov: shape"):
        SlopeContribution.from_dict({**part.to_dict(), "mode_cov": [1.0, 2.0]}, parameters=6,
                                    site="s1")


@pytest.fixture(scope="module")
def varying():
    sites = slope_sites("binomial", [60, 90, 120, 80, 150, 70, 100, 50], seed=7,
                        cov=((0.4, 0.05), (0.05, 0.25)))
    return sites, fit_sites_slope(sites, names=NAMES, slope="x")


def test_random_slope_fit(varying):
    sites, fit = varying
    assert isinstance(fit, RandomSlopeFit)
    assert fit.converged and not fit.singular and fit.evaluations <= 30
    l11, l21, l22 = fit.theta
    assert fit.tau_intercept == l11 and fit.tau_slope == pytest.approx(math.hypot(l21, l22))
    assert fit.rho == pytest.approx(l21 / fit.tau_slope)
    assert fit.loglik >= fit.intercept_fit.loglik
    assert fit.lrt == pytest.approx(2 * (fit.loglik - fit.intercept_fit.loglik))
    assert fit.lrt_pvalue == pytest.approx(0.5 * stats.chi2.sf(fit.lrt, 1)
                                           + 0.5 * stats.chi2.sf(fit.lrt, 2))
    assert all(math.isfinite(v) for v in (fit.se_tau_intercept, fit.se_tau_slope, fit.se_rho))
    assert set(fit.site_effects) == set(sites)
    out = fit.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["site_slopes"]["s0"] == fit.site_effects["s0"].slope
    # the gradient vanishes at the estimate
    p = 3
    final = {n: slope_contribution(d, SlopeProposal("binomial", tuple(fit.coefficients),
                                                    slope=1, theta=fit.theta))
             for n, d in sites.items()}
    grad = sum(c.gradient for c in final.values())
    assert np.max(np.abs(grad[:p])) < 1e-6 and np.max(np.abs(grad[p:] * (1 + np.array(
        fit.theta)))) < 1e-5


def test_slope_site_order_does_not_matter(varying):
    sites, fit = varying
    other = fit_sites_slope(dict(reversed(list(sites.items()))), names=NAMES, slope="x")
    np.testing.assert_allclose(other.coefficients, fit.coefficients, rtol=1e-10)
    np.testing.assert_allclose(other.theta, fit.theta, rtol=1e-9, atol=1e-12)
    assert other.loglik == pytest.approx(fit.loglik, rel=1e-13)


def test_a_common_slope_gives_a_singular_fit_quickly():
    sites = make_sites("binomial", [40, 60, 80, 50, 70, 90], tau=0.6, seed=0)
    fit = fit_sites_slope(sites, names=NAMES, slope="x")
    assert fit.singular and fit.converged and fit.theta[2] == 0.0
    assert abs(fit.rho) == 1.0 and math.isnan(fit.se_rho)
    assert fit.evaluations <= 12
    assert "singular" in fit.message
    assert fit.loglik >= fit.intercept_fit.loglik - 1e-9


def test_random_slope_input_errors(varying):
    sites, fit = varying
    start = fit.intercept_fit
    with pytest.raises(InputError, match="slope: the intercept already varies"):
        fit_sites_slope(sites, names=NAMES, slope="intercept")
    with pytest.raises(InputError, match="slope: 'age' is not a coefficient name"):
        fit_sites_slope(sites, names=NAMES, slope="age")
    gauss = make_sites("gaussian", [20, 30], seed=1)
    with pytest.raises(InputError, match="family: 'gaussian' has no random-slope model"):
        fit_sites_slope(gauss, names=NAMES, slope="x")
    with pytest.raises(InputError, match="start: the random-intercept fit is of another"):
        fit_random_slope(lambda p: {}, names=["intercept", "x", "c"], family="binomial",
                         slope="x", start=start)
    data = next(iter(sites.values()))
    with pytest.raises(InputError, match="beta: 2 coefficients proposed"):
        slope_contribution(data, SlopeProposal("binomial", (0.0, 0.0), slope=1,
                                               theta=(1.0, 0.0, 1.0)))


def test_fixed_nodes_for_the_slope_model(varying):
    sites, fit = varying
    start = fit_sites(sites, names=NAMES)
    assert start.loglik == fit.intercept_fit.loglik
    fixed = fit_sites_slope(sites, names=NAMES, slope="x", control=FitControl(nodes=40))
    assert set(fixed.nodes.values()) == {40}
    np.testing.assert_allclose(fixed.coefficients, fit.coefficients, rtol=1e-7)
    np.testing.assert_allclose(fixed.theta, fit.theta, rtol=1e-6)
