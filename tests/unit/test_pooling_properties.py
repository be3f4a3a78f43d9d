"""Property tests (hypothesis) of the pooling engine.

* permutation invariance: the order of the sites does not matter;
* FE = RE when tau² = 0: a random-effects fit whose tau² is zero is the fixed-effect fit;
* location and scale equivariance: ``yi + c`` shifts the estimate by c, ``a yi`` with
  ``a² vi`` scales the estimate and se by |a| and tau² by a², for every estimator;
* batch = single: pooling rows in one masked batch equals pooling them one by one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from fedsynth.meta import METHODS, meta_analysis, pool

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@s.composite
def studies(draw, min_k=2, max_k=12):
    k = draw(s.integers(min_k, max_k))
    yi = draw(s.lists(s.floats(-3, 3, allow_nan=False, allow_infinity=False), min_size=k,
                      max_size=k))
    vi = draw(s.lists(s.floats(1e-3, 5, allow_nan=False, allow_infinity=False), min_size=k,
                      max_size=k))
    return np.array(yi), np.array(vi)


def _approx(a, b, rel=1e-6, abs_=1e-9):
    return a == pytest.approx(b, rel=rel, abs=abs_)


@SETTINGS
@given(data=studies(), seed=s.integers(0, 2**32 - 1))
def test_permutation_invariance(data, seed):
    yi, vi = data
    perm = np.random.default_rng(seed).permutation(yi.size)
    for method in METHODS:
        a = meta_analysis(yi, vi, method=method).to_dict()
        b = meta_analysis(yi[perm], vi[perm], method=method).to_dict()
        for key, value in a.items():
            other = b[key]
            if isinstance(value, float):
                assert _approx(other, value), (method, key)
            elif isinstance(value, list):
                assert _approx(other[0], value[0], 1e-6, 1e-9), (method, key)
                assert _approx(other[1], value[1], 1e-6, 1e-9), (method, key)
            else:
                assert other == value


@SETTINGS
@given(data=studies(), test=s.sampled_from(["z", "knha"]))
def test_fe_equals_re_when_tau2_is_zero(data, test):
    yi, vi = data
    fe = meta_analysis(yi, vi, method="FE", test=test)
    for method in METHODS[1:]:
        re = meta_analysis(yi, vi, method=method, test=test)
        if re.tau2 == 0.0:
            assert re.estimate == pytest.approx(fe.estimate, rel=1e-12, abs=1e-15)
            assert re.se == pytest.approx(fe.se, rel=1e-12)
            assert re.ci_lb == pytest.approx(fe.ci_lb, rel=1e-12, abs=1e-15)
            assert re.Q == fe.Q
    # identical effect sizes force tau2 = 0 in every estimator
    same = np.full_like(yi, yi[0])
    fe = meta_analysis(same, vi, method="FE")
    for method in METHODS[1:]:
        re = meta_analysis(same, vi, method=method)
        assert re.tau2 == 0.0, method
        assert re.estimate == pytest.approx(fe.estimate, rel=1e-12)
        assert re.se == pytest.approx(fe.se, rel=1e-12)


@SETTINGS
@given(data=studies(), shift=s.floats(-50, 50), scale=s.floats(0.05, 20),
       sign=s.sampled_from([-1.0, 1.0]))
def test_location_and_scale_equivariance(data, shift, scale, sign):
    yi, vi = data
    a = sign * scale
    for method in METHODS:
        base = meta_analysis(yi, vi, method=method)
        moved = meta_analysis(yi + shift, vi, method=method)
        assert _approx(moved.estimate, base.estimate + shift, 1e-6, 1e-7)
        assert _approx(moved.se, base.se, 1e-6)
        assert _approx(moved.tau2, base.tau2, 1e-6, 1e-9), method
        scaled = meta_analysis(a * yi, a * a * vi, method=method)
        assert _approx(scaled.estimate, a * base.estimate, 1e-6, 1e-9 * scale)
        assert _approx(scaled.se, scale * base.se, 1e-6)
        assert _approx(scaled.tau2, a * a * base.tau2, 1e-6, 1e-9 * scale**2), method
        # I2 = 100 tau2 / (vt + tau2): its tolerance follows from tau2's (abs 1e-9 on the
        # base scale, vi >= 1e-3), e.g. when tau2 is a numerically tiny positive maximum
        assert _approx(scaled.I2, base.I2, 1e-6, 1e-4)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(rows=s.lists(studies(min_k=1, max_k=8), min_size=1, max_size=6),
       method=s.sampled_from(METHODS), test=s.sampled_from(["z", "knha"]))
def test_batch_equals_one_by_one(rows, method, test):
    kmax = max(r[0].size for r in rows)
    yi = np.full((len(rows), kmax), np.nan)
    vi = np.full((len(rows), kmax), np.nan)
    for i, (y, v) in enumerate(rows):
        yi[i, : y.size], vi[i, : v.size] = y, v
    batch = pool(yi, vi, mask=~np.isnan(yi), method=method, test=test)
    for i, (y, v) in enumerate(rows):
        single = meta_analysis(y, v, method=method, test=test).to_dict()
        got = batch[i].to_dict()
        for key, value in single.items():
            if isinstance(value, float):
                assert _approx(got[key], value, 1e-9, 1e-12), key
            elif isinstance(value, list):
                assert np.allclose(got[key], value, rtol=1e-9, atol=1e-12), key
            else:
                assert got[key] == value, key
