"""The federated random-intercept GLM equals the exact maximum-likelihood fit computed in R.

Reference: tests/data/hierarchical/hierarchical_reference.json, made once by
make_reference.R (R 4.2.2, lme4 1.1-31, numDeriv, mvtnorm; see tests/data/README.md):

* ``exact``: the marginal likelihood evaluated per site with R's ``integrate()`` (gaussian:
  ``mvtnorm::dmvnorm``), maximised by ``nlminb`` and Newton-polished: coefficients, tau,
  logLik, SEs from the observed information, each site's conditional mode, conditional SD,
  posterior mean and SD;
* ``glmer``: ``glmer(..., nAGQ = 25)`` / ``lmer(..., REML = FALSE)``, the cross-check;
* ``probe``: each site's log-likelihood term and score at a point away from the maximum
  (the site function alone).

Data: three synthetic multisite sets (binomial with a site without events; poisson with an
exposure offset; gaussian) and lme4's cbpp (binomial with trials), grouseticks (poisson,
63 locations) and sleepstudy (gaussian).

Tolerances: estimates, SEs, logLik and site intercepts 1e-6 relative (the issue asks for
1e-5; 1e-9 absolute near zero); the site function 1e-8 in log L_i (the integral to 1e-8
relative) and 1e-7 relative in its score; glmer, whose optimiser stops earlier, to 1e-4.

Random slope (the stretch goal; random_slope_reference.json from make_reference_slope.R):
two synthetic sets (binomial, baseline risk and the age slope varying by site; poisson,
the dose slope varying), the exact maximum from a 50 x 50 adaptive Gauss-Hermite rule in
the u-plane written independently in R and checked there against adaptive cubature; glmer
(Laplace only for a vector random effect) as a loose cross-check. Same tolerances.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fedsynth.models.hierarchical import (
    HierarchicalFit,
    Proposal,
    RandomSlopeFit,
    SlopeProposal,
    fit_sites,
    fit_sites_slope,
    site_contribution,
    site_data,
    slope_contribution,
)
from tests.conftest import DATA_DIR, load_json

REF = load_json("hierarchical/hierarchical_reference.json")
CASES = {case["name"]: case for case in REF["cases"]}
REL = 1e-6


def _close(got: float, expected: float, rel: float = REL, abs_: float = 1e-9) -> bool:
    return math.isfinite(got) and abs(got - expected) <= max(abs_, rel * abs(expected))


def sites_of(case) -> dict:
    frame = pd.read_csv(DATA_DIR / "hierarchical" / case["file"])
    sites = {}
    for name, rows in frame.groupby(case["site"], sort=False):
        X = np.column_stack([np.ones(len(rows))]
                            + [rows[c].to_numpy(float) for c in case["covariates"]])
        trials = None if case.get("trials") is None else rows[case["trials"]].to_numpy(float)
        offset = None if case.get("offset") is None \
            else np.log(rows[case["offset"]].to_numpy(float))
        sites[str(name)] = site_data(X, rows[case["y"]].to_numpy(float), family=case["family"],
                                     trials=trials, offset=offset)
    return sites


_FITS: dict[str, HierarchicalFit] = {}


def fitted(name: str) -> HierarchicalFit:
    if name not in _FITS:
        case = CASES[name]
        _FITS[name] = fit_sites(sites_of(case), names=case["names"])
    return _FITS[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimates_equal_the_exact_maximum(name):
    case = CASES[name]
    exact = case["exact"]
    fit = fitted(name)
    assert fit.converged and not fit.boundary
    assert (fit.k, fit.n) == (case["k"], case["n"])
    for i, coef in enumerate(case["names"]):
        assert _close(fit.coefficients[i], exact["coefficients"][coef]), coef
        assert _close(fit.se[i], exact["se"][coef]), f"se {coef}"
    assert _close(fit.tau, exact["tau"])
    assert _close(fit.tau2, exact["tau2"])
    assert _close(fit.log_tau, exact["log_tau"])
    assert _close(fit.se_log_tau, exact["se_log_tau"])
    assert _close(fit.se_tau, exact["se_tau"])
    assert _close(fit.loglik, exact["logLik"], rel=1e-10)
    if case["family"] == "gaussian":
        assert _close(fit.sigma, exact["sigma"])
        assert _close(fit.se_log_sigma, exact["se_log_sigma"])
    # the whole covariance matrix of (beta, log tau [, log sigma])
    np.testing.assert_allclose(fit.covariance, np.array(exact["covariance"]), rtol=1e-5,
                               atol=1e-9)
    # a fit costs a handful of round trips, one message per site each
    assert fit.evaluations <= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_site_intercepts_equal_the_exact_conditional_modes(name):
    exact = CASES[name]["exact"]["sites"]
    fit = fitted(name)
    assert set(fit.site_intercepts) == set(exact)
    for site, ref in exact.items():
        got = fit.site_intercepts[site]
        assert _close(got.mode, ref["mode"], abs_=1e-8), site
        assert _close(got.sd, ref["mode_sd"]), site
        assert _close(got.posterior_mean, ref["posterior_mean"], abs_=1e-8), site
        assert _close(got.posterior_sd, ref["posterior_sd"]), site
    out = fit.to_dict()
    assert out["site_intercepts"] == {s: v.mode for s, v in fit.site_intercepts.items()}
    assert out["site_intercepts_se"] == {s: v.sd for s, v in fit.site_intercepts.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_site_term_equals_r_integrate_at_the_maximum(name):
    case = CASES[name]
    exact = case["exact"]
    sites = sites_of(case)
    beta = tuple(exact["coefficients"][c] for c in case["names"])
    proposal = Proposal(case["family"], beta, log_tau=exact["log_tau"],
                        log_sigma=math.log(exact["sigma"]) if "sigma" in exact else None)
    for site, ref in exact["sites"].items():
        assert abs(site_contribution(sites[site], proposal).loglik - ref["loglik"]) <= 1e-8


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if "probe" in c))
def test_site_function_at_a_point_off_the_maximum(name):
    """The site function alone: log L_i and its score in (beta, log tau) at a probe point
    equal R's integrate() values (score: derivative in tau times tau)."""
    case = CASES[name]
    probe = case["probe"]
    sites = sites_of(case)
    proposal = Proposal(case["family"], tuple(probe["beta"]), log_tau=probe["log_tau"])
    tau = math.exp(probe["log_tau"])
    for site, ref in probe["sites"].items():
        part = site_contribution(sites[site], proposal)
        assert abs(part.loglik - ref["loglik"]) <= 1e-8, site
        score = part.gradient.copy()
        score[-1] *= tau
        np.testing.assert_allclose(score, ref["score"], rtol=1e-7, atol=1e-8, err_msg=site)


@pytest.mark.parametrize("name", sorted(CASES))
def test_glmer_nagq25_cross_check(name):
    """glmer (nAGQ = 25) / lmer (ML) land on the same maximum to their optimiser's accuracy,
    and never above it. glmer's nAGQ > 1 logLik omits the saturated log-likelihood (it is
    built from deviance residuals): the R script stores that term to add it back."""
    case = CASES[name]
    ref = case["glmer"]
    fit = fitted(name)
    for i, coef in enumerate(case["names"]):
        assert _close(fit.coefficients[i], ref["coefficients"][coef], rel=1e-4), coef
    assert _close(fit.tau, ref["tau"], rel=1e-4)
    glmer_loglik = ref["logLik"] + ref.get("saturated_loglik", 0.0)
    assert fit.loglik >= glmer_loglik - 1e-9
    assert abs(fit.loglik - glmer_loglik) <= 1e-6
    for site, mode in ref["site_intercepts"].items():
        assert abs(fit.site_intercepts[site].mode - mode) <= 1e-4, site
    if case["family"] == "gaussian":
        assert _close(fit.sigma, ref["sigma"], rel=1e-4)
    # SEs: glmer's come from a finite-difference Hessian; lmer's (X'V^-1 X)^-1 ignores the
    # beta-variance cross terms of the observed information (zero only in balanced designs)
    rel_se = 5e-3 if case["family"] == "gaussian" else 1e-4
    for i, coef in enumerate(case["names"]):
        assert _close(fit.se[i], ref["se"][coef], rel=rel_se), f"se {coef}"


def test_site_without_events_keeps_a_finite_mode():
    """The synthetic binomial set's smallest site (14 patients) has no event."""
    case = CASES["synthetic_binomial"]
    sites = sites_of(case)
    empty = [s for s, d in sites.items() if d.y.sum() == 0]
    assert empty == ["mtf-10"]
    ri = fitted("synthetic_binomial").site_intercepts["mtf-10"]
    assert math.isfinite(ri.mode) and ri.mode < 0 and ri.sd > 0


# ---------------------------------------------------------------- random slope (stretch)

SLOPE_REF = load_json("hierarchical/random_slope_reference.json")
SLOPE_CASES = {case["name"]: case for case in SLOPE_REF["cases"]}
_SLOPE_FITS: dict[str, RandomSlopeFit] = {}


def slope_fitted(name: str) -> RandomSlopeFit:
    if name not in _SLOPE_FITS:
        case = SLOPE_CASES[name]
        _SLOPE_FITS[name] = fit_sites_slope(sites_of(case), names=case["names"],
                                            slope=case["slope"])
    return _SLOPE_FITS[name]


@pytest.mark.parametrize("name", sorted(SLOPE_CASES))
def test_slope_reference_is_itself_exact(name):
    """The R reference's 50 x 50 rule agrees with adaptive cubature and a 70 x 70 rule."""
    for site, ref in SLOPE_CASES[name]["exact"]["sites"].items():
        assert abs(ref["loglik"] - ref["loglik_cubature"]) <= 1e-9, site
        assert abs(ref["loglik"] - ref["loglik_70"]) <= 1e-9, site


@pytest.mark.parametrize("name", sorted(SLOPE_CASES))
def test_random_slope_equals_the_exact_maximum(name):
    case = SLOPE_CASES[name]
    exact = case["exact"]
    fit = slope_fitted(name)
    assert fit.converged and not fit.singular and fit.slope == case["slope"]
    for i, coef in enumerate(case["names"]):
        assert _close(fit.coefficients[i], exact["coefficients"][coef]), coef
        assert _close(fit.se[i], exact["se"][coef]), f"se {coef}"
    for got, expected in zip(fit.theta, exact["theta"]):
        assert _close(got, expected)
    for key in ("tau_intercept", "tau_slope", "rho", "se_tau_intercept", "se_tau_slope",
                "se_rho"):
        assert _close(getattr(fit, key), exact[key]), key
    assert _close(fit.loglik, exact["logLik"], rel=1e-10)
    np.testing.assert_allclose(fit.covariance, np.array(exact["covariance"]), rtol=1e-5,
                               atol=1e-9)
    assert fit.loglik >= case["glmer"]["exact_logLik_at_glmer"]
    for i, coef in enumerate(case["names"]):  # glmer's Laplace estimates are near
        assert abs(fit.coefficients[i] - case["glmer"]["coefficients"][coef]) <= 0.05


@pytest.mark.parametrize("name", sorted(SLOPE_CASES))
def test_random_slope_site_effects(name):
    exact = SLOPE_CASES[name]["exact"]["sites"]
    fit = slope_fitted(name)
    assert set(fit.site_effects) == set(exact)
    for site, ref in exact.items():
        got = fit.site_effects[site]
        mode_cov = np.array(ref["mode_cov"])
        post_cov = np.array(ref["posterior_cov"])
        np.testing.assert_allclose([got.intercept, got.slope], ref["mode"], rtol=REL,
                                   atol=1e-8)
        np.testing.assert_allclose([got.intercept_sd, got.slope_sd],
                                   np.sqrt(np.diag(mode_cov)), rtol=REL)
        assert _close(got.correlation, mode_cov[0, 1] / math.sqrt(mode_cov[0, 0]
                                                                * mode_cov[1, 1]))
        np.testing.assert_allclose(got.posterior_mean, ref["posterior_mean"], rtol=REL,
                                   atol=1e-8)
        np.testing.assert_allclose(got.posterior_sd, np.sqrt(np.diag(post_cov)), rtol=REL)


@pytest.mark.parametrize("name", sorted(SLOPE_CASES))
def test_random_slope_site_function_at_a_probe_point(name):
    case = SLOPE_CASES[name]
    probe = case["probe"]
    sites = sites_of(case)
    p = len(case["names"])
    proposal = SlopeProposal(case["family"], tuple(probe["beta"]),
                             slope=case["names"].index(case["slope"]),
                             theta=tuple(probe["theta"]))
    for site, ref in probe["sites"].items():
        part = slope_contribution(sites[site], proposal)
        assert abs(part.loglik - ref["loglik"]) <= 1e-8, site
        score = part.gradient.copy()
        score[p] *= probe["theta"][0]  # d/d log l11
        score[p + 2] *= probe["theta"][2]  # d/d log l22
        np.testing.assert_allclose(score, ref["score"], rtol=1e-7, atol=1e-8, err_msg=site)
