"""Meta-regression and the batched fits: invariants, categorical moderators, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.meta.metareg import design_matrix, fit_batch, fit_rma, meta_regression
from tests.conftest import load_json

REF = load_json("metafor_public.json")
BCG = next(c for c in REF["meta_regression"] if c["id"] == "bcg/OR")
SUB = next(c for c in REF["subgroup"] if c["id"] == "bcg/OR")


def test_intercept_only_equals_reference_pooling():
    case = next(c for c in REF["pooling"] if c["id"].startswith("bcg/OR")
                and c["method"] == "REML" and c["test"] == "z")
    res = fit_rma(case["yi"], case["vi"])
    exp = case["expected"]
    assert res.coef[0] == pytest.approx(exp["estimate"], rel=1e-6)
    assert res.z_se[0] == pytest.approx(exp["se"], rel=1e-6)
    assert res.tau2 == pytest.approx(exp["tau2"], rel=1e-6)
    assert res.I2 == pytest.approx(exp["I2"], rel=1e-6)
    assert res.QE == pytest.approx(exp["Q"], rel=1e-6)
    assert res.R2 is None and res.QM is None


def test_categorical_moderator_is_the_common_tau2_subgroup_model():
    res = meta_regression(SUB["yi"], SUB["vi"], {"alloc": SUB["group"]})
    assert res.names == ("intrcpt", "allocrandom", "allocsystematic")
    assert res.QM == pytest.approx(SUB["expected"]["common_tau2_QM"], rel=1e-6)
    assert res.tau2 == pytest.approx(SUB["expected"]["common_tau2"], rel=1e-6)
    assert res.QM_df == 2


def test_two_moderators_numeric_and_categorical():
    res = meta_regression(SUB["yi"], SUB["vi"], {"ablat": BCG["moderator"], "alloc": SUB["group"]})
    assert res.p == 4 and res.QM_df == 3 and res.QE_df == 13 - 4
    assert 0.0 <= res.R2 <= 100.0
    ci = res.confidence_interval()
    assert np.all(ci.low < res.coef) and np.all(res.coef < ci.high)
    # adding a moderator cannot increase the residual heterogeneity statistic
    single = meta_regression(SUB["yi"], SUB["vi"], {"ablat": BCG["moderator"]})
    assert res.QE <= single.QE + 1e-9


def test_knha_f_equals_t_squared_for_one_moderator():
    res = meta_regression(BCG["yi"], BCG["vi"], {"ablat": BCG["moderator"]}, test="knha")
    assert res.knha_F == pytest.approx(res.knha_stat[1] ** 2, rel=1e-10)
    assert res.test == "knha" and np.allclose(res.se, res.knha_se)


def test_design_matrix_dummy_coding_sorted_levels():
    X, names = design_matrix({"g": ["b", "a", "c", "a"]}, 4)
    assert names == ("intrcpt", "gb", "gc")
    assert X.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize("mods, message", [
    ({"x": [1, 2, 3]}, "3 values for 13"),
    ({"x": [1.0] * 13}, "constant"),
    ({"x": list(range(13)), "y": [2 * i + 1 for i in range(13)]}, "rank deficient"),
    ({"g": ["a"] * 13}, "single level"),
    ({"x": [1, None] + [2] * 11}, "missing value in row 1"),
    ({}, "at least one moderator"),
])
def test_bad_moderators_name_the_field(mods, message):
    with pytest.raises(InputError, match=message):
        meta_regression(BCG["yi"], BCG["vi"], mods)


@pytest.mark.parametrize("yi, vi, message", [
    ([0.1, float("nan")], [0.1, 0.1], r"yi\[1\]"),
    ([0.1, 0.2], [0.1, 0.0], r"vi\[1\]"),
    ([0.1, 0.2], [0.1, -1.0], r"vi\[1\]"),
    ([0.1, 0.2, 0.3], [0.1, 0.2], "lengths differ"),
    (["a", 0.2], [0.1, 0.2], "yi: not numeric"),
])
def test_bad_yi_vi(yi, vi, message):
    with pytest.raises(InputError, match=message):
        fit_rma(yi, vi)


def test_bad_method_test_level():
    with pytest.raises(InputError, match="method"):
        fit_rma([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], method="XYZ")
    with pytest.raises(InputError, match="test"):
        fit_rma([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], test="wald")
    with pytest.raises(InputError, match="level"):
        fit_rma([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], level=100)


def test_score_is_zero_at_the_reml_estimate():
    # the REML estimating equation y'PPy = tr(P) holds at an interior solution
    y, v = np.array(BCG["yi"]), np.array(BCG["vi"])
    X = np.column_stack([np.ones(13), BCG["moderator"]])
    t2 = fit_rma(y, v, X).tau2
    w = 1 / (v + t2)
    W = np.diag(w)
    P = W - W @ X @ np.linalg.inv(X.T @ W @ X) @ X.T @ W
    assert (P @ y) @ (P @ y) == pytest.approx(np.trace(P), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=9), st.integers(min_value=0, max_value=10_000),
       st.sampled_from(["REML", "ML", "DL", "FE"]))
def test_batch_equals_single_fits(k, seed, method):
    rng = np.random.default_rng(seed)
    y = rng.normal(0.2, 0.5, size=k)
    v = rng.uniform(0.01, 0.5, size=k)
    mask = rng.random((4, k)) < 0.7
    mask[:, 0] = True
    batch = fit_batch(y, v, mask, method=method)
    for j in range(mask.shape[0]):
        single = fit_rma(y[mask[j]], v[mask[j]], method=method)
        assert batch.estimate[j] == pytest.approx(single.coef[0], rel=1e-7, abs=1e-10)
        assert batch.tau2[j] == pytest.approx(single.tau2, rel=1e-7, abs=1e-10)
        assert batch.se[j] == pytest.approx(single.z_se[0], rel=1e-7)
        assert batch.Q[j] == pytest.approx(single.QE, rel=1e-7, abs=1e-10)


def test_batch_rejects_empty_rows():
    with pytest.raises(InputError, match="mask"):
        fit_batch([0.1, 0.2], [0.1, 0.1], [[True, False], [False, False]])


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=2, max_value=12), st.integers(min_value=0, max_value=10_000),
       st.sampled_from(["REML", "ML", "DL", "FE", "PM", "EB", "HE", "HS", "SJ"]))
def test_batch_equals_the_pooling_engine(k, seed, method):
    # fit_batch (diagnostics' refits, no Q-profile work) must agree with pool() row by row
    from fedsynth.meta import pool

    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 0.6, size=k)
    v = rng.uniform(0.005, 0.4, size=k)
    mask = rng.random((5, k)) < 0.8
    mask[:, :2] = True
    ours = fit_batch(y, v, mask, method=method)
    ref = pool(np.broadcast_to(y, mask.shape), np.broadcast_to(v, mask.shape), mask=mask,
               method=method)
    for field in ("estimate", "se", "tau2", "Q", "I2"):
        # near tau² = 0 both solvers stop within 1e-12 of the boundary; I² (percent)
        # magnifies that by 100/typical variance
        atol = 1e-6 if field == "I2" else 1e-9
        np.testing.assert_allclose(getattr(ours, field), np.asarray(getattr(ref, field)),
                                   rtol=1e-7, atol=atol, err_msg=field)


def test_stationary_point_that_is_not_the_maximum_gives_zero():
    # ML: Fisher scoring stops at tau² ≈ 0.09 where the score is 0, but the likelihood
    # is larger at 0 (metafor's ll0check); found by the property test above
    y = [0.4285859, 0.20316105, -0.59687322]
    v = [0.32759501, 0.22013074, 0.00833819]
    assert fit_rma(y, v, method="ML").tau2 == 0.0
    assert fit_batch(y, v, [[True] * 3], method="ML").tau2[0] == 0.0


ML_CASE_Y = [0.020647, 1.4869, 0.064707, -0.50741, -0.236199, -0.225964, 0.45957, -0.220887,
             0.308894]
ML_CASE_V = [0.312708, 0.166841, 0.00998, 0.239567, 0.058247, 0.31217, 0.282394, 0.181576,
             0.287386]


def test_ml_interior_maximum_when_the_score_at_zero_is_negative():
    # the ML likelihood dips below its value at 0 before rising to the maximum at 0.1233:
    # a negative score at tau² = 0 does not mean the estimate is 0
    y, v = np.array(ML_CASE_Y), np.array(ML_CASE_V)
    t2 = fit_rma(y, v, method="ML").tau2
    grid = np.linspace(0, 2, 20_001)
    ll = [-0.5 * np.sum(np.log(v + t))
          - 0.5 * np.sum((y - np.sum(y / (v + t)) / np.sum(1 / (v + t))) ** 2 / (v + t))
          for t in grid]
    assert t2 == pytest.approx(grid[int(np.argmax(ll))], abs=1e-4) and t2 > 0.12
    assert fit_batch(y, v, [[True] * 9], method="ML").tau2[0] == pytest.approx(t2, rel=1e-9)


def test_pooling_engine_ml_interior_maximum():
    # found by test_batch_equals_the_pooling_engine; fixed in the pooling engine (4d801a1)
    from fedsynth.meta import meta_analysis

    assert meta_analysis(ML_CASE_Y, ML_CASE_V, method="ML").tau2 == pytest.approx(
        fit_rma(ML_CASE_Y, ML_CASE_V, method="ML").tau2, rel=1e-6)
