"""Unit tests of fedsynth.meta.bayes beyond the R reference cases.

The independent check is a plain adaptive-quadrature implementation (scipy ``quad`` over tau
on [0, inf), ``brentq`` for quantiles) written from BDA3 eq. 5.21 with no code shared with the
module, compared on fixed edge cases and on hypothesis-generated data.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special

from fedsynth.errors import InputError
from fedsynth.meta import bayes as bayes_mod
from fedsynth.meta.bayes import (
    BayesBatchResult,
    BayesResult,
    TauPrior,
    available_priors,
    bayes_pool,
    get_prior,
    parse_prior_spec,
    register_prior,
)

# The slow reference integrates heavy tails to [x, inf); quad's round-off warnings there are
# about its own last digits (the comparison tolerance is 1e-6), not about the code under test.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")

QUAD = dict(epsabs=0.0, epsrel=1e-12, limit=500)


def quad_reference(yi, vi, prior, scale, level=95.0, moments=True):
    """Posterior summaries by nested scipy quadrature (slow, independent)."""
    y = np.asarray(yi, float)
    v = np.asarray(vi, float)
    logprior = get_prior(prior).logpdf

    def parts(t):
        w = 1.0 / (v + t * t)
        sw = w.sum()
        mh = (w * y).sum() / sw
        g = (float(logprior(np.array(t), scale)) + 0.5 * np.log(w).sum() - 0.5 * math.log(sw)
             - 0.5 * (w * (y - mh) ** 2).sum())
        return g, mh, 1.0 / sw

    grid = np.exp(np.linspace(math.log(1e-8 * min(scale, math.sqrt(v.min()))),
                              math.log(1e8 * max(scale, math.sqrt(v.max()), np.ptp(y))), 2001))
    gs = np.array([parts(t)[0] for t in grid])
    gmax, tmode = gs.max(), grid[gs.argmax()]
    breaks = sorted({0.0, tmode / 4, tmode / 2, tmode, 2 * tmode, 4 * tmode})

    def dens(t):
        return math.exp(parts(t)[0] - gmax)

    def integral(fun):
        total = sum(integrate.quad(fun, a, b, **QUAD)[0]
                    for a, b in zip(breaks[:-1], breaks[1:]) if b > a)
        return total + integrate.quad(fun, breaks[-1], np.inf, **QUAD)[0]

    Z = integral(dens)

    def E(f):
        return integral(lambda t: f(t, *parts(t)[1:]) * dens(t)) / Z

    out = {}
    if moments:
        out["mu_mean"] = E(lambda t, m, V: m)
        out["mu_sd"] = math.sqrt(E(lambda t, m, V: V + m * m) - out["mu_mean"] ** 2)
        out["tau_mean"] = E(lambda t, m, V: t)
    out["prob_mu_positive"] = E(lambda t, m, V: special.ndtr(m / math.sqrt(V)))
    out["theta_mean"] = [E(lambda t, m, V, i=i: y[i] + v[i] / (v[i] + t * t) * (m - y[i]))
                         for i in range(y.size)]
    a = (1 - level / 100) / 2

    def tau_cdf(x):
        if x <= tmode:
            return integrate.quad(dens, 0, x, **QUAD)[0] / Z
        return 1 - integrate.quad(dens, x, np.inf, **QUAD)[0] / Z

    def tq(p):
        return optimize.brentq(lambda x: tau_cdf(x) - p, 0.0, grid[-1], xtol=1e-14, rtol=1e-13)

    def mq(p, pred=False):
        def f(x):
            return E(lambda t, m, V: special.ndtr(
                (x - m) / math.sqrt(V + (t * t if pred else 0.0)))) - p
        lo, hi = -1.0, 1.0
        while f(lo) > 0:
            lo *= 2
        while f(hi) < 0:
            hi *= 2
        return optimize.brentq(f, lo, hi, xtol=1e-13, rtol=1e-12)

    out["tau_ci"] = [tq(a), tq(1 - a)]
    out["tau_median"] = tq(0.5)
    out["mu_ci"] = [mq(a), mq(1 - a)]
    out["mu_median"] = mq(0.5)
    out["pred_lb"], out["pred_ub"] = mq(a, True), mq(1 - a, True)
    return out


def assert_close_to_quad(res: BayesResult, ref: dict, tol: float = 1e-6):
    got = res.to_dict()
    for key, value in ref.items():
        np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(value, float),
                                   rtol=tol, atol=tol, err_msg=key)


EDGE_CASES = [
    # (yi, vi, prior, scale): one site; tau piled at 0; large heterogeneity; tiny prior scale;
    # a wide prior against precise sites; k = 40 with a well-identified tau
    ([0.65], [0.26], "half_normal", 0.08),
    ([0.1, 0.12, 0.11], [0.04, 0.05, 0.03], "half_cauchy", 1.0),
    ([2.75, 4.9, 1.26], [0.0014, 0.7, 0.022], "half_cauchy", 0.1),
    ([-1.0, 0.5, 2.0, 0.0], [0.01, 0.02, 0.01, 0.05], "half_normal", 0.01),
    ([0.3, -0.2, 0.8, 0.1, 0.5], [1e-4, 2e-4, 5e-4, 1e-3, 3e-4], "half_cauchy", 5.0),
    (list(np.round(np.linspace(-1, 1, 40) + 0.3 * np.sin(np.arange(40)), 4)),
     list(np.round(0.005 + 0.001 * np.arange(40), 5)), "half_normal", 1.0),
]


@pytest.mark.parametrize("yi,vi,prior,scale", EDGE_CASES)
def test_agrees_with_adaptive_quadrature_on_edge_cases(yi, vi, prior, scale):
    res = bayes_pool(yi, vi, prior=prior, scale=scale)
    assert res.notes == ()
    assert_close_to_quad(res, quad_reference(yi, vi, prior, scale))


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_agrees_with_adaptive_quadrature_on_random_data(data):
    k = data.draw(st.integers(3, 12), label="k")
    yi = data.draw(st.lists(st.floats(-3, 3), min_size=k, max_size=k), label="yi")
    vi = data.draw(st.lists(st.floats(1e-3, 2.0), min_size=k, max_size=k), label="vi")
    prior = data.draw(st.sampled_from(["half_normal", "half_cauchy"]), label="prior")
    scale = data.draw(st.floats(0.05, 3.0), label="scale")
    res = bayes_pool(yi, vi, prior=prior, scale=scale, level=90.0)
    assert_close_to_quad(res, quad_reference(yi, vi, prior, scale, level=90.0))


def test_heavy_tailed_prior_with_one_or_two_sites_reports_missing_moments():
    # half-Cauchy, k = 1: posterior tail tau^-2, so no mean of tau or mu; k = 2: no sd of mu
    one = bayes_pool([0.4], [0.09], prior="half_cauchy", scale=0.5)
    assert math.isinf(one.tau_mean) and math.isinf(one.mu_sd) and math.isnan(one.mu_mean)
    assert one.notes and "no mean" in one.notes[0]
    d = one.to_dict()
    assert d["mu_mean"] is None and d["mu_sd"] is None and d["tau_mean"] is None
    json.dumps(d, allow_nan=False)                 # strict JSON
    ref = quad_reference([0.4], [0.09], "half_cauchy", 0.5, moments=False)
    assert_close_to_quad(one, ref, tol=1e-6)
    two = bayes_pool([0.4, -0.1], [0.09, 0.04], prior="half_cauchy", scale=0.5)
    assert math.isfinite(two.mu_mean) and math.isfinite(two.tau_mean)
    assert math.isinf(two.mu_sd) and two.notes
    ref = quad_reference([0.4, -0.1], [0.09, 0.04], "half_cauchy", 0.5, moments=False)
    assert_close_to_quad(two, ref, tol=1e-6)
    # a light-tailed prior has every moment even with one site
    assert bayes_pool([0.4], [0.09], prior="half_normal", scale=0.5).notes == ()


def test_tiny_prior_scale_reduces_to_fixed_effect():
    y = np.array([0.2, 0.5, -0.1, 0.3])
    v = np.array([0.02, 0.05, 0.04, 0.01])
    res = bayes_pool(y, v, prior="half_normal", scale=1e-7)
    w = 1 / v
    fe, se = (w * y).sum() / w.sum(), 1 / math.sqrt(w.sum())
    assert res.mu_mean == pytest.approx(fe, abs=1e-9)
    assert res.mu_median == pytest.approx(fe, abs=1e-9)
    assert res.mu_sd == pytest.approx(se, rel=1e-6)
    assert res.mu_ci_lb == pytest.approx(fe - 1.959963984540054 * se, abs=1e-8)
    assert res.prob_mu_positive == pytest.approx(special.ndtr(fe / se), abs=1e-8)
    np.testing.assert_allclose(res.theta_mean, fe, atol=1e-6)   # full shrinkage
    assert res.tau_ci_ub < 3e-7


def test_sign_flip_and_permutation_equivariance():
    y = np.array([0.3, -0.2, 0.8, 0.1, 0.5])
    v = np.array([0.05, 0.02, 0.1, 0.03, 0.08])
    a = bayes_pool(y, v, prior="half_cauchy", scale=0.5)
    b = bayes_pool(-y, v, prior="half_cauchy", scale=0.5)
    assert b.mu_mean == pytest.approx(-a.mu_mean, abs=1e-12)
    assert b.mu_ci_lb == pytest.approx(-a.mu_ci_ub, abs=1e-10)
    assert b.pred_ub == pytest.approx(-a.pred_lb, abs=1e-10)
    assert b.prob_mu_positive == pytest.approx(1 - a.prob_mu_positive, abs=1e-10)
    assert b.tau_median == pytest.approx(a.tau_median, rel=1e-10)
    perm = np.array([3, 0, 4, 2, 1])
    c = bayes_pool(y[perm], v[perm], prior="half_cauchy", scale=0.5)
    np.testing.assert_allclose(c.theta_mean, a.theta_mean[perm], atol=1e-12)
    assert c.tau_ci_ub == pytest.approx(a.tau_ci_ub, rel=1e-10)


def test_shrinkage_and_interval_ordering():
    y = np.array([1.2, -0.4, 0.3, 0.9, -1.0, 0.2])
    v = np.array([0.3, 0.1, 0.05, 0.2, 0.4, 0.02])
    r = bayes_pool(y, v, prior="half_normal", scale=1.0)
    # each site's posterior mean lies between its estimate and the pooled mean
    lo, hi = np.minimum(y, r.mu_mean), np.maximum(y, r.mu_mean)
    assert np.all((r.theta_mean >= lo - 1e-12) & (r.theta_mean <= hi + 1e-12))
    assert np.all(r.theta_sd < np.sqrt(v))
    assert r.pred_lb < r.mu_ci_lb < r.mu_median < r.mu_ci_ub < r.pred_ub
    assert 0 < r.tau_ci_lb < r.tau_median < r.tau_ci_ub
    r80 = bayes_pool(y, v, prior="half_normal", scale=1.0, level=80)
    assert r.mu_ci_lb < r80.mu_ci_lb < r80.mu_ci_ub < r.mu_ci_ub
    assert r80.mu_median == pytest.approx(r.mu_median, abs=1e-12)
    assert not hasattr(r, "confidence_interval")   # a posterior has credible intervals
    assert r.credible_interval().low == r.mu_ci_lb
    assert r.credible_interval().kind == "credible"
    assert r.credible_interval("tau").high == r.tau_ci_ub
    assert r.prediction_interval().level == 0.95
    assert r.prediction_interval().kind == "prediction"
    # another level is recomputed from the data the result carries
    assert r.credible_interval(credibility_level=0.8) == r80.credible_interval(
        credibility_level=0.8)
    assert r.credible_interval(credibility_level=0.8).low == pytest.approx(r80.mu_ci_lb,
                                                                          rel=1e-12)


def test_batch_with_mask_equals_single_analyses():
    rng = np.random.default_rng(7)
    m, k = 9, 12
    y = rng.normal(0, 0.5, (m, k))
    v = rng.uniform(0.01, 0.3, (m, k))
    mask = rng.random((m, k)) > 0.35
    mask[:, 0] = True
    mask[2] = False
    mask[2, 5] = True                     # a row with a single site
    y[~mask] = np.nan                     # masked cells are ignored, even nan
    batch = bayes_pool(y, v, mask=mask, prior="half_cauchy", scale=0.7)
    assert isinstance(batch, BayesBatchResult) and len(batch) == m
    assert np.all(np.isnan(batch.theta_mean[~mask]))
    for i in range(m):
        single = bayes_pool(y[i][mask[i]], v[i][mask[i]], prior="half_cauchy", scale=0.7)
        row = batch[i]
        for name in ("mu_median", "mu_ci_lb", "mu_ci_ub", "tau_median", "tau_ci_ub",
                     "pred_lb", "pred_ub", "prob_mu_positive"):
            assert getattr(row, name) == pytest.approx(getattr(single, name), rel=1e-9,
                                                       abs=1e-12), (i, name)
        np.testing.assert_allclose(row.theta_mean, single.theta_mean, atol=1e-10)
        assert row.k == mask[i].sum() and row.notes == single.notes
    table = batch.to_dict()
    assert len(table["mu_ci"]) == m and table["k"][2] == 1


def test_results_are_frozen_and_serialisable():
    r = bayes_pool([0.1, 0.3, 0.2], [0.01, 0.02, 0.03])
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mu_mean = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        r.theta_mean[0] = 1.0
    d = r.to_dict()
    assert {"mu_mean", "mu_sd", "mu_median", "mu_ci", "tau_mean", "tau_median", "tau_ci",
            "prob_mu_positive", "theta_mean", "pred_lb", "pred_ub"} <= set(d)
    assert d["prior"] == "half_normal" and d["tau_scale"] == 0.5


@pytest.mark.parametrize("kwargs,field", [
    (dict(yi=[0.1, float("nan")], vi=[0.1, 0.1]), "yi[1]"),
    (dict(yi=[0.1, 0.2], vi=[0.1, 0.0]), "vi[1]"),
    (dict(yi=[0.1, 0.2], vi=[0.1, -1.0]), "vi[1]"),
    (dict(yi=[0.1, 0.2], vi=[0.1, float("inf")]), "vi[1]"),
    (dict(yi=[0.1, 0.2], vi=[0.1]), "vi"),
    (dict(yi=[], vi=[]), "yi"),
    (dict(yi=[[0.1, 0.2]], vi=[[0.1, 0.2]], mask=[[False, False]]), "yi"),
    (dict(yi=[[0.1, 0.2]], vi=[[0.1, 0.2]], mask=[[1, 2]]), "mask"),
    (dict(yi=[0.1, 0.2], vi=[0.1, 0.2], prior="uniform"), "prior"),
    (dict(yi=[0.1, 0.2], vi=[0.1, 0.2], scale=0), "scale"),
    (dict(yi=[0.1, 0.2], vi=[0.1, 0.2], scale="big"), "scale"),
    (dict(yi=[0.1, 0.2], vi=[0.1, 0.2], level=100), "level"),
    (dict(yi=[0.1, "a"], vi=[0.1, 0.2]), "yi"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(InputError) as info:
        bayes_pool(**kwargs)
    assert str(info.value).startswith(field)


def test_prior_registry_and_spec_parsing():
    assert {"half_normal", "half_cauchy"} <= set(available_priors())
    assert parse_prior_spec("half_cauchy:0.5") == ("half_cauchy", 0.5)
    for bad in ("half_cauchy", "nope:1", "half_normal:-1", "half_normal:x", "half_normal:nan",
                "a:b:c"):
        with pytest.raises(InputError, match="--bayes"):
            parse_prior_spec(bad)
    with pytest.raises(InputError, match="already registered"):
        register_prior(get_prior("half_normal"))

    # A new prior plugs in without touching the quadrature: exponential(rate = 1/scale).
    def exp_logpdf(tau, scale):
        return np.where(tau >= 0, -math.log(scale) - tau / scale, -np.inf)

    register_prior(TauPrior("test_exponential", exp_logpdf, math.inf, "exponential"))
    try:
        y, v = [0.3, -0.2, 0.8, 0.1], [0.05, 0.02, 0.1, 0.03]
        res = bayes_pool(y, v, prior="test_exponential", scale=0.4)
        assert_close_to_quad(res, quad_reference(y, v, "test_exponential", 0.4))
    finally:
        bayes_mod._PRIORS.pop("test_exponential")


@pytest.mark.parametrize("c", [1e-6, 1e-3, 1e3, 1e6])
def test_equivariant_under_rescaling_of_the_effect(c):
    """Effects in other units (y -> c y, v -> c^2 v, prior scale -> c scale) rescale every
    location/scale summary by c: the quadrature's range follows the data, not fixed units."""
    y = np.array([0.3, -0.2, 0.8, 0.1, 0.5])
    v = np.array([0.05, 0.02, 0.1, 0.03, 0.08])
    base = bayes_pool(y, v, prior="half_cauchy", scale=0.5)
    r = bayes_pool(c * y, c * c * v, prior="half_cauchy", scale=0.5 * c)
    for name in ("mu_mean", "mu_sd", "mu_median", "mu_ci_lb", "mu_ci_ub", "tau_mean",
                 "tau_median", "tau_ci_lb", "tau_ci_ub", "pred_lb", "pred_ub"):
        assert getattr(r, name) / c == pytest.approx(getattr(base, name), rel=1e-10, abs=1e-12)
    assert r.prob_mu_positive == pytest.approx(base.prob_mu_positive, abs=1e-12)
    np.testing.assert_allclose(r.theta_mean / c, base.theta_mean, rtol=1e-10)
