"""Unit tests of the pooling engine: API, edge cases, errors, independent checks.

The reference comparison against metafor is in tests/reference/test_pooling_reference.py;
here the engine is checked against independent implementations (exact rational
arithmetic, the dense matrix formulas of rma.uni, direct numerical maximisation of the
likelihood) and on the edge cases the issue lists.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from fedsynth.errors import InputError
from fedsynth.meta import (
    METHODS,
    BatchPoolingResult,
    PoolingResult,
    meta_analysis,
    pool,
)
from fedsynth.meta import stats as st
from fedsynth.results import Interval

SEED_YI = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
SEED_VI = [s * s for s in (0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13)]
HET_YI = [-0.94, -1.67, -1.39, -1.46, -0.22, -0.96, -1.63, 0.01, -0.47, -1.40]
HET_VI = [0.357, 0.208, 0.433, 0.020, 0.052, 0.0099, 0.227, 0.0040, 0.057, 0.075]


# --------------------------------------------------------------------------- API shape

def test_result_is_frozen_dataclass_with_named_fields():
    res = meta_analysis(SEED_YI, SEED_VI, labels=list("ABCDEFGH"))
    assert isinstance(res, PoolingResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.estimate = 1.0  # type: ignore[misc]
    assert res.confidence_interval() == Interval(res.ci_lb, res.ci_ub, level=0.95)
    assert res.prediction_interval() == Interval(res.pi_lb, res.pi_ub, level=0.95,
                                                 kind="prediction")
    assert res.labels == tuple("ABCDEFGH")
    assert sum(res.weights) == pytest.approx(100.0)
    assert res.yi == tuple(SEED_YI)
    d = res.to_dict()
    assert list(d) == ["k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2",
                       "se_tau2", "Q", "Q_df", "Q_pval", "I2", "H2", "pi_lb", "pi_ub",
                       "logLik", "tau2_ci", "I2_ci", "H2_ci", "method", "test", "level"]
    assert d["method"] == "REML" and d["test"] == "z" and d["level"] == 95.0


def test_weights_are_metafor_percentages():
    res = meta_analysis(HET_YI, HET_VI, method="DL")
    w = 1 / (np.array(HET_VI) + res.tau2)
    assert np.allclose(res.weights, 100 * w / w.sum())


def test_summary_mentions_the_essentials():
    text = meta_analysis(HET_YI, HET_VI, method="REML", test="knha").summary()
    for needle in ("Random-Effects Model (k = 10", "tau^2", "I^2", "H^2",
                   "Test for Heterogeneity", "Q(df = 9)", "Q-profile", "pi.lb", "pi.ub",
                   "Knapp-Hartung", "estimate"):
        assert needle in text
    fe = meta_analysis(HET_YI, HET_VI, method="FE").summary()
    assert "Fixed-Effect Model (k = 10)" in fe and "pi.lb" not in fe


def test_batch_indexing_iteration_and_frame():
    yi = np.array([SEED_YI, HET_YI[:8]])
    vi = np.array([SEED_VI, HET_VI[:8]])
    batch = pool(yi, vi, names=["seed", "het"], method="DL")
    assert isinstance(batch, BatchPoolingResult)
    assert len(batch) == 2
    assert [r.name for r in batch] == ["seed", "het"]
    assert batch[-1].estimate == batch.estimate[1]
    with pytest.raises(IndexError):
        batch[2]
    frame = batch.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["seed", "het"]
    assert frame.loc["het", "tau2"] == pytest.approx(batch.tau2[1])
    assert batch.tau2_ci.shape == (2, 2)
    # one row alone gives the same as inside the batch
    alone = meta_analysis(HET_YI[:8], HET_VI[:8], method="DL")
    assert alone.to_dict() == batch[1].to_dict()


def test_one_dimensional_input_is_one_analysis():
    batch = pool(SEED_YI, SEED_VI)
    assert len(batch) == 1 and batch.k[0] == 8


def test_mask_drops_sites_exactly():
    yi = np.array(HET_YI)
    vi = np.array(HET_VI)
    mask = np.ones((len(yi), len(yi)), dtype=bool)
    np.fill_diagonal(mask, False)  # leave-one-out through the mask
    ys = np.where(mask, yi, np.nan)
    batch = pool(ys, np.where(mask, vi, np.nan), mask=mask, method="REML")
    for i in range(len(yi)):
        keep = np.arange(len(yi)) != i
        single = meta_analysis(yi[keep], vi[keep], method="REML")
        assert batch.tau2[i] == pytest.approx(single.tau2, rel=1e-10, abs=1e-14)
        assert batch.estimate[i] == pytest.approx(single.estimate, rel=1e-10)
        assert batch.k[i] == len(yi) - 1


def test_level_as_percent_or_proportion():
    a = meta_analysis(SEED_YI, SEED_VI, level=90)
    b = meta_analysis(SEED_YI, SEED_VI, level=0.90)
    assert a.ci_lb == b.ci_lb and a.level == b.level == 90.0
    assert a.ci_ub - a.ci_lb < meta_analysis(SEED_YI, SEED_VI).ci_ub - a.ci_lb + 1


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("yi,vi,needle", [
    ([0.1, float("nan")], [0.1, 0.1], "yi: study 'B' has a non-finite effect size (nan)"),
    ([0.1, float("inf")], [0.1, 0.1], "study 'B'"),
    ([0.1, 0.2], [0.1, 0.0], "vi: study 'B' has sampling variance 0.0"),
    ([0.1, 0.2], [-0.1, 0.1], "vi: study 'A' has sampling variance -0.1"),
    ([0.1, 0.2], [0.1, float("inf")], "study 'B' has sampling variance inf"),
    ([0.1, 0.2], [0.1, "x"], "vi: study 'B' has a non-numeric value ('x')"),
])
def test_bad_values_name_the_study_and_value(yi, vi, needle):
    with pytest.raises(InputError) as err:
        meta_analysis(yi, vi, labels=["A", "B"])
    assert needle in str(err.value)


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "XX"}, "method: 'XX' is not one of FE, DL, HE, HS, SJ, ML, REML, EB, PM"),
    ({"test": "wald"}, "test: 'wald' is not one of z, knha, t, adhoc"),
    ({"level": 100}, "level: 100"),
    ({"level": -5}, "level: -5"),
    ({"level": "abc"}, "level: 'abc' is not a number"),
])
def test_bad_options(kwargs, needle):
    with pytest.raises(InputError) as err:
        meta_analysis(SEED_YI, SEED_VI, **kwargs)
    assert needle in str(err.value)


def test_shape_errors():
    with pytest.raises(InputError, match="lengths differ"):
        meta_analysis([0.1, 0.2], [0.1])
    with pytest.raises(InputError, match="no sites"):
        meta_analysis([], [])
    with pytest.raises(InputError, match="shapes differ"):
        pool(np.zeros((2, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match="mask: shape"):
        pool(np.zeros((2, 3)), np.ones((2, 3)), mask=np.ones((3, 2), bool))
    with pytest.raises(InputError, match="names: 1 names given for 2 analyses"):
        pool(np.zeros((2, 3)), np.ones((2, 3)), names=["a"])


def test_batch_error_names_analysis_and_site():
    yi = np.array([[0.1, 0.2], [0.3, np.nan]])
    vi = np.array([[0.1, 0.1], [0.1, 0.1]])
    with pytest.raises(InputError, match="site 2 of analysis 'b'"):
        pool(yi, vi, names=["a", "b"])
    # the same NaN outside the mask is fine
    batch = pool(yi, vi, names=["a", "b"], mask=~np.isnan(yi))
    assert list(batch.k) == [2, 1]


# --------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("test", ["z", "knha"])
def test_k1_is_fixed_effect_and_says_so(method, test):
    res = meta_analysis([0.3], [0.04], labels=["only"], method=method, test=test)
    assert res.k == 1 and res.tau2 == 0.0
    assert res.estimate == pytest.approx(0.3) and res.se == pytest.approx(0.2)
    assert res.ci_lb == pytest.approx(0.3 - 1.959963984540054 * 0.2)
    assert res.Q == 0 and res.Q_df == 0 and res.Q_pval == 1 and res.I2 == 0 and res.H2 == 1
    assert res.tau2_ci is None and res.prediction_interval() is None
    assert np.isnan(res.se_tau2)
    assert "k = 1" in res.message and "fixed-effect" in res.message
    assert "k = 1" in res.summary()
    assert res.to_dict()["pi_lb"] is None


@pytest.mark.parametrize("method", METHODS[1:])
def test_k2_every_method_is_defined(method):
    res = meta_analysis([0.1, 0.9], [0.01, 0.02], method=method, test="knha")
    assert res.converged
    values = [v for k, v in res.to_dict().items() if isinstance(v, float)]
    assert all(np.isfinite(values))
    assert res.tau2 > 0 and res.tau2_ci.low < res.tau2 < res.tau2_ci.high


def test_all_vi_equal_closed_forms():
    """With equal v: DL = HE = REML = PM = s² - v and ML = (k-1)/k s² - v."""
    y = np.array([0.1, 0.5, -0.2, 0.9, 0.4, 0.3])
    v = 0.02
    s2 = y.var(ddof=1)
    expect = {"DL": s2 - v, "HE": s2 - v, "REML": s2 - v, "PM": s2 - v, "EB": s2 - v,
              "ML": (len(y) - 1) / len(y) * s2 - v}
    for method, tau2 in expect.items():
        res = meta_analysis(y, np.full(y.size, v), method=method)
        assert res.tau2 == pytest.approx(tau2, rel=1e-10), method
        assert res.estimate == pytest.approx(y.mean(), rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_identical_effects_give_tau2_zero(method):
    res = meta_analysis([0.2, 0.2, 0.2, 0.2], [0.1, 0.2, 0.05, 0.3], method=method)
    assert res.tau2 == 0.0 and res.Q == pytest.approx(0.0, abs=1e-20)
    assert res.I2 == 0.0 and res.estimate == pytest.approx(0.2)
    knha = meta_analysis([0.2, 0.2, 0.2], [0.1, 0.2, 0.3], method=method, test="knha")
    assert knha.se == 0.0 and "scale factor is 0" in knha.message


def test_no_heterogeneity_gives_tau2_zero_and_ci_bounds_zero():
    res = meta_analysis(SEED_YI, SEED_VI, method="DL")
    assert res.tau2 == 0 and res.tau2_ci.low == 0 and res.I2_ci.low == 0
    assert res.H2_ci.low == 1
    # prediction interval collapses to the CI when tau2 = 0
    assert res.pi_lb == pytest.approx(res.ci_lb) and res.pi_ub == pytest.approx(res.ci_ub)


def _exact_fe(yi, vi):
    """FE estimate, se², Q, tr(P), DL and HS tau² in exact rational arithmetic."""
    y = [Fraction(x) for x in yi]
    w = [1 / Fraction(x) for x in vi]
    sw = sum(w)
    mu = sum(a * b for a, b in zip(w, y)) / sw
    q = sum(a * (b - mu) ** 2 for a, b in zip(w, y))
    trp = sw - sum(a * a for a in w) / sw
    k = len(y)
    dl = max(Fraction(0), (q - (k - 1)) / trp)
    hs = max(Fraction(0), (q - k) / sw)
    return mu, 1 / sw, q, trp, dl, hs


@pytest.mark.parametrize("vi", [
    [1e-8, 1e4, 1.0, 0.5],
    [1e4, 1e-8, 1e-8, 3.0, 1e4],
    [1e-8, 1e4],
])
def test_extreme_variance_ratios_match_exact_arithmetic(vi):
    yi = [0.1, -0.3, 2.0, 0.5, -1.0][: len(vi)]
    mu, var, q, trp, dl, hs = _exact_fe(yi, vi)
    fe = meta_analysis(yi, vi, method="FE")
    assert fe.estimate == pytest.approx(float(mu), rel=1e-12)
    assert fe.se ** 2 == pytest.approx(float(var), rel=1e-12)
    assert fe.Q == pytest.approx(float(q), rel=1e-9)
    b = st.as_batch(yi, vi)
    assert st.trace_p(st.fixed_weights(b))[0] == pytest.approx(float(trp), rel=1e-12)
    assert meta_analysis(yi, vi, method="DL").tau2 == pytest.approx(float(dl), rel=1e-9)
    assert meta_analysis(yi, vi, method="HS").tau2 == pytest.approx(float(hs), rel=1e-9,
                                                                     abs=1e-300)
    for method in METHODS:
        res = meta_analysis(yi, vi, method=method, test="knha")
        assert res.converged, (method, res.message)
        assert np.isfinite([res.estimate, res.se, res.tau2, res.Q, res.I2]).all()


# ------------------------------------------------------- independent dense implementation

def _dense(yi, vi, method):
    """rma.uni's matrix formulas verbatim (P = W - W X (X'WX)^-1 X'W), for moderate data."""
    y = np.asarray(yi, float)
    v = np.asarray(vi, float)
    k = y.size
    x = np.ones((k, 1))

    def pmat(w):
        wm = np.diag(w)
        return wm - wm @ x @ np.linalg.inv(x.T @ wm @ x) @ x.T @ wm

    yc = y - y.mean()
    if method == "DL":
        p = pmat(1 / v)
        tau2 = max(0.0, (yc @ p @ yc - (k - 1)) / np.trace(p))
        se = np.sqrt((2 * (k - 1) + 4 * tau2 * np.trace(p) + 2 * tau2**2 * np.sum(p * p))
                     / np.trace(p) ** 2)
    elif method == "HE":
        p = np.eye(k) - np.ones((k, k)) / k
        pv = p @ np.diag(v)
        tau2 = max(0.0, (yc @ p @ yc - np.trace(pv)) / (k - 1))
        se = np.sqrt((2 * np.sum(pv * pv.T) + 4 * tau2 * np.trace(pv) + 2 * tau2**2 * (k - 1))
                     / (k - 1) ** 2)
    elif method == "SJ":
        t0 = np.mean((y - y.mean()) ** 2)
        p = pmat(1 / (v + t0))
        pv = p @ np.diag(v)
        tau2 = max(0.0, t0 * (yc @ p @ yc) / (k - 1))
        se = np.sqrt(t0**2 / (k - 1) ** 2 * (2 * np.sum(pv * pv.T) + 4 * tau2 * np.sum(pv * p)
                                             + 2 * tau2**2 * np.sum(p * p)))
    elif method == "HS":
        p = pmat(1 / v)
        sw = np.sum(1 / v)
        tau2 = max(0.0, (yc @ p @ yc - k) / sw)
        se = np.sqrt((2 * (k - 1) + 4 * tau2 * np.trace(p) + 2 * tau2**2 * np.sum(p * p))
                     / sw**2)
    else:
        raise AssertionError(method)
    return tau2, se


@pytest.mark.parametrize("method", ["DL", "HE", "SJ", "HS"])
def test_closed_forms_match_dense_matrix_formulas(method):
    rng = np.random.default_rng(11)
    for k in (2, 3, 5, 9, 17):
        y = rng.normal(0, 0.6, k)
        v = rng.uniform(0.005, 0.5, k)
        tau2, se = _dense(y, v, method)
        res = meta_analysis(y, v, method=method)
        assert res.tau2 == pytest.approx(tau2, rel=1e-10, abs=1e-14)
        assert res.se_tau2 == pytest.approx(se, rel=1e-10)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_ml_reml_are_the_likelihood_maximisers(method):
    rng = np.random.default_rng(5)
    for k in (2, 3, 6, 12):
        y = rng.normal(0, 1.0, k)
        v = rng.uniform(0.01, 0.3, k)
        b = st.as_batch(y, v)

        def negll(t):
            return -st.log_likelihood(b, np.array([t]), reml=method == "REML")[0]

        opt = optimize.minimize_scalar(negll, bounds=(0, 50), method="bounded",
                                       options={"xatol": 1e-12})
        res = meta_analysis(y, v, method=method)
        assert res.logLik >= -opt.fun - 1e-9
        assert res.tau2 == pytest.approx(opt.x, rel=1e-4, abs=1e-6)


def test_pm_solves_generalised_q_equation():
    res = meta_analysis(HET_YI, HET_VI, method="PM")
    q = st.generalized_q(st.as_batch(HET_YI, HET_VI), np.array([res.tau2]))[0]
    assert q == pytest.approx(len(HET_YI) - 1, rel=1e-11)


def test_qprofile_bounds_solve_their_equations():
    from scipy import stats as sps

    res = meta_analysis(HET_YI, HET_VI, method="REML", level=90)
    b = st.as_batch(HET_YI, HET_VI)
    df = len(HET_YI) - 1
    q_lo = st.generalized_q(b, np.array([res.tau2_ci.low]))[0]
    q_hi = st.generalized_q(b, np.array([res.tau2_ci.high]))[0]
    assert q_lo == pytest.approx(sps.chi2.isf(0.05, df), rel=1e-10)
    assert q_hi == pytest.approx(sps.chi2.ppf(0.05, df), rel=1e-10)
    vt = st.typical_variance(b)[0]
    assert res.I2_ci.low == pytest.approx(100 * res.tau2_ci.low / (vt + res.tau2_ci.low))
    assert res.H2_ci.high == pytest.approx(res.tau2_ci.high / vt + 1)


@pytest.mark.parametrize("method", ["ML", "REML", "EB"])
def test_bracketed_fallback_agrees_with_fisher_scoring(method):
    """Force Fisher scoring to give up after one step: the bracketed root takes over."""
    rng = np.random.default_rng(3)
    yi = rng.normal(0, 0.5, (40, 9))
    vi = rng.uniform(0.01, 0.2, (40, 9))
    mask = rng.random((40, 9)) < 0.8
    mask[:, :2] = True
    full = st.tau2_estimate(yi, vi, mask, method, solver="fisher")
    forced = st.tau2_estimate(yi, vi, mask, method, solver="fisher", max_iter=1)
    newton = st.tau2_estimate(yi, vi, mask, method, solver="newton")
    assert full.converged.all() and forced.converged.all() and newton.converged.all()
    assert full.iterations.max() > 1 and forced.iterations.max() == 1
    assert np.allclose(forced.tau2, full.tau2, rtol=1e-8, atol=1e-12)
    assert np.allclose(newton.tau2, full.tau2, rtol=1e-8, atol=1e-12)


def test_zero_fisher_budget_still_converges_through_the_bracket():
    """With no Fisher-scoring steps at all every row goes to the bracketed solver."""
    yi = np.array([HET_YI, SEED_YI + [0.3, 0.2]])
    vi = np.array([HET_VI, SEED_VI + [0.01, 0.02]])
    fit = st.tau2_estimate(yi, vi, None, "REML", solver="fisher", max_iter=0)
    # zero iterations: every row goes to the bracketed solver and still converges
    assert fit.converged.all()
    assert np.allclose(fit.tau2, st.tau2_estimate(yi, vi, None, "REML").tau2, rtol=1e-8)


def test_bracketed_root_on_known_functions():
    c = np.array([2.0, 9.0, 0.25, 1e-6])

    def f(x, rows):
        return x * x - c[rows], 2 * x

    root, ok = st.bracketed_root(f, np.zeros(4), np.full(4, 10.0), -c, 100 - c)
    assert ok.all() and np.allclose(root, np.sqrt(c), rtol=1e-13)

    def g(x, rows):  # no derivative: Illinois / bisection
        return np.cos(x) - c[rows] / 10, None

    root, ok = st.bracketed_root(g, np.zeros(4), np.full(4, 3.0), 1 - c / 10,
                                 np.cos(3.0) - c / 10)
    assert ok.all() and np.allclose(np.cos(root), c / 10, atol=1e-13)


def test_empty_rows_in_a_batch_are_nan_not_errors():
    yi = np.array([[0.1, 0.2, 0.3], [np.nan, np.nan, np.nan]])
    vi = np.array([[0.1, 0.2, 0.3], [np.nan, np.nan, np.nan]])
    batch = pool(yi, vi, mask=~np.isnan(yi))
    assert batch.k.tolist() == [3, 0]
    assert np.isnan(batch.estimate[1]) and not batch.converged[1]
    assert "k = 0" in batch.messages[1]
    assert batch.converged[0]


def test_exclusive_sum_is_exact_with_dominant_terms():
    x = np.array([[1e16, 1.0, 2.0, 3.0]])
    out = st.exclusive_sum(x)
    assert out[0, 0] == 6.0  # x.sum() - x[0] would give 8.0 (rounding at 1e16)
    assert (x.sum() - x)[0, 0] != 6.0
    assert np.allclose(out[0, 1:], 1e16, rtol=1e-15)


def test_ml_interior_maximum_beyond_a_local_minimum():
    """Score negative at 0, yet the likelihood has a higher interior maximum (found by
    rma.uni's Fisher scoring from the HE start): the Newton solver must not stop at 0."""
    y = np.array([0.020647, 1.4869, 0.064707, -0.50741, -0.236199, -0.225964, 0.45957,
                  -0.220887, 0.308894])
    v = np.array([0.312708, 0.166841, 0.00998, 0.239567, 0.058247, 0.31217, 0.282394,
                  0.181576, 0.287386])
    b = st.as_batch(y, v)
    grid = np.linspace(0, 2, 4001)
    ll = st.log_likelihood(st.as_batch(np.tile(y, (grid.size, 1)), np.tile(v, (grid.size, 1))),
                           grid, reml=False)
    res = meta_analysis(y, v, method="ML")
    assert res.tau2 == pytest.approx(grid[np.argmax(ll)], abs=1e-3) and res.tau2 > 0.12
    assert res.logLik > st.log_likelihood(b, np.zeros(1), reml=False)[0]
    fisher = st.tau2_estimate(y, v, method="ML", solver="fisher").tau2[0]
    assert res.tau2 == pytest.approx(fisher, rel=1e-8)


@pytest.mark.parametrize("solver", ["newton", "fisher"])
def test_reml_far_interior_maximum_both_solvers(solver):
    """Score negative at 0, a local minimum near 1e4 and the REML maximum near 2.4e5:
    Fisher scoring from HE does not settle within its budget, the fallback must still find
    the maximum (not stop at 0)."""
    y = np.array([342.45948629, 138.2734216, 324.13543812, -1117.09123671, 1284.7602463,
                  249.14756032])
    v = np.array([3.67350159e02, 5.70800166e04, 1.14722371e06, 3.18436933e05,
                  1.52917730e05, 1.79167121e04])
    fit = st.tau2_estimate(y, v, method="REML", solver=solver)
    grid = np.linspace(1e4, 1e6, 9901)
    ll = st.log_likelihood(st.as_batch(np.tile(y, (grid.size, 1)), np.tile(v, (grid.size, 1))),
                           grid, reml=True)
    assert fit.converged[0]
    assert fit.tau2[0] == pytest.approx(grid[np.argmax(ll)], rel=1e-3)
    b = st.as_batch(y, v)
    assert (st.log_likelihood(b, fit.tau2, reml=True)[0]
            > st.log_likelihood(b, np.zeros(1), reml=True)[0])
