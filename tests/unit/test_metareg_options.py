"""Invariants and refusals of fit_rma/pool's tests, weights, fixed tau² and btt."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.meta import pool
from fedsynth.meta.metareg import fit_rma, set_btt

Y = np.array([-0.89, -1.59, -1.35, -1.44, -0.22, -0.79, -1.62, 0.01, -0.47, -1.37, -0.34])
V = np.array([0.33, 0.19, 0.42, 0.02, 0.05, 0.01, 0.22, 0.004, 0.06, 0.07, 0.01])
X = np.column_stack([np.ones(11), [44, 55, 42, 52, 13, 44, 19, 13, 27, 42, 18.0]])


@settings(max_examples=25, deadline=None)
@given(t2=st.floats(0.0, 2.0), c=st.floats(1e-3, 1e3))
def test_inverse_variance_weights_reproduce_the_default_fit(t2, c):
    base = fit_rma(Y, V, X, tau2=t2)
    user = fit_rma(Y, V, X, tau2=t2, weights=c / (V + t2))
    np.testing.assert_allclose(user.coef, base.coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(user.vb, base.vb, rtol=1e-8, atol=1e-14)
    b1 = pool(Y, V, tau2=t2)
    b2 = pool(Y, V, tau2=t2, weights=c / (V + t2))
    np.testing.assert_allclose([b2.estimate[0], b2.se[0]], [b1.estimate[0], b1.se[0]],
                               rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(c=st.floats(1e-3, 1e3))
def test_weights_are_scale_free(c):
    a = np.arange(1.0, 12.0)
    one, scaled = fit_rma(Y, V, X, weights=a), fit_rma(Y, V, X, weights=c * a)
    np.testing.assert_allclose(scaled.coef, one.coef, rtol=1e-9)
    np.testing.assert_allclose(scaled.se, one.se, rtol=1e-9)


def test_adhoc_is_knha_floored_at_one_and_t_keeps_the_z_variance():
    knha, adhoc = fit_rma(Y, V, X, test="knha"), fit_rma(Y, V, X, test="adhoc")
    t, z = fit_rma(Y, V, X, test="t"), fit_rma(Y, V, X, test="z")
    assert adhoc.s2w == max(1.0, knha.s2w)
    np.testing.assert_allclose(t.se, z.se)
    assert np.all(t.pval > z.pval)
    assert t.omnibus.QMdf == (1, 9) and z.omnibus.QMdf == (1, None)
    np.testing.assert_allclose(t.omnibus.QM, z.omnibus.QM)  # F = QM/m with m = 1


def test_btt_as_metafor():
    names = ("intrcpt", "ablat", "allocrandom", "allocsystematic")
    assert set_btt(None, 4, True, names) == (1, 2, 3)
    assert set_btt(None, 4, False, names) == (0, 1, 2, 3)
    assert set_btt([3, 4], 4, True, names) == (2, 3)
    assert set_btt([-1, -2], 4, True, names) == (2, 3)
    assert set_btt("alloc", 4, True, names) == (2, 3)
    assert set_btt(None, 1, True, names[:1]) == (0,)
    for bad, words in (([7], "name no coefficient"), ([1, -2], "cannot mix"),
                       ("zzz", "no coefficient name matches"), ("(", "regular expression")):
        with pytest.raises(InputError, match=words):
            set_btt(bad, 4, True, names)


@pytest.mark.parametrize("kwargs, words", [
    ({"weights": [1.0] * 10}, "10 weights for 11 studies"),
    ({"weights": [-1.0] + [1.0] * 10}, r"weights\[0\]: must be finite and >= 0"),
    ({"weights": [0.0] * 11}, "not estimable"),
    ({"tau2": -0.1}, "tau2: must be a finite non-negative number"),
    ({"tau2": "x"}, "tau2"),
    ({"tau2": 0.1, "method": "FE"}, "contradicts method FE"),
    ({"test": "wald"}, "is not one of z, knha, t, adhoc"),
    ({"btt": [9]}, "btt"),
])
def test_fit_rma_refuses_bad_options(kwargs, words):
    with pytest.raises(InputError, match=words):
        fit_rma(Y, V, X, **kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"tau2": -1.0}, "tau2: must be finite and >= 0"),
    ({"tau2": 0.2, "method": "FE"}, "contradicts method FE"),
    ({"weights": [np.nan] * 11}, "weights: analysis 1, site 1"),
    ({"weights": [1.0] * 11, "weighted": False}, "exclude each other"),
])
def test_pool_refuses_bad_options(kwargs, words):
    with pytest.raises(InputError, match=words):
        pool(Y, V, **kwargs)


def test_fixed_tau2_has_no_standard_error_and_counts_no_parameter():
    fit = fit_rma(Y, V, X, tau2=0.05)
    assert fit.tau2 == 0.05 and np.isnan(fit.se_tau2) and fit.tau2_fixed
    assert fit.parms == 2
    assert fit_rma(Y, V, X).parms == 3
    res = pool(Y, V, tau2=0.05)
    assert res.tau2[0] == 0.05 and np.isnan(res.se_tau2[0])
