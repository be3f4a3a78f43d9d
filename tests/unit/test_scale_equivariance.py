"""Every estimate is equivariant under a change of units (issue 16, first bullet).

Multiplying the effect sizes by ``c`` and the sampling variances by ``c²`` is a change of
units (e.g. h in J s instead of 1e-34 J s): tau², its standard error and its Q-profile
bounds must scale by ``c²``; estimates, standard errors, intervals and coefficients by
``c``; z and t statistics, p-values, Q, I², H², R² and F must not change; the
log-likelihood shifts by ``-(k - p_REML) log c``. Before the engine's tolerances were made
relative to the data's scale, REML tau² at ``c = 1e-8`` was off by ~1e-3 and a
meta-regression ML tau² by orders of magnitude. Checked for every method, for pooling
(one analysis and a masked batch) and for meta-regression, at ``c = 10^-8`` and ``10^8``.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from fedsynth.meta import meta_analysis, pool
from fedsynth.meta.metareg import fit_rma
from fedsynth.vocabulary import METHODS

SCALES = (1e-8, 1e8)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: pooled fields by how they change with the units (c: effect units, c2: variance units)
LOCATION = ("estimate", "se", "ci_lb", "ci_ub", "pi_lb", "pi_ub")
VARIANCE = ("tau2", "se_tau2")
INVARIANT = ("stat", "pval", "Q", "Q_pval", "I2", "H2")


@s.composite
def studies(draw, min_k=2, max_k=12):
    k = draw(s.integers(min_k, max_k))
    yi = np.array(draw(s.lists(s.floats(-3, 3, allow_nan=False), min_size=k, max_size=k)))
    vi = np.array(draw(s.lists(s.floats(0.01, 4.0), min_size=k, max_size=k)))
    return yi, vi


def _same(got: float | None, expected: float | None, atol: float, rtol: float = 1e-9) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got is not None and abs(got - expected) <= rtol * abs(expected) + atol


def _check_pooled(unit: dict, scaled: dict, c: float, vbar: float, k: int, method: str,
                  where: str) -> None:
    loc_tol, var_tol = 1e-10 * math.sqrt(vbar), 1e-10 * vbar
    for key in LOCATION:
        exp = None if unit[key] is None else unit[key] * c
        got = scaled[key]
        assert _same(got, exp, loc_tol * c), (where, method, key, got, exp)
    for key in VARIANCE:
        exp = None if unit[key] is None else unit[key] * c * c
        assert _same(scaled[key], exp, var_tol * c * c), (where, method, key)
    for key in INVARIANT:
        assert _same(scaled[key], unit[key], 1e-8), (where, method, key, scaled[key], unit[key])
    p_reml = 1 if method == "REML" else 0
    assert _same(scaled["logLik"], unit["logLik"] - (k - p_reml) * math.log(c), 1e-7), \
        (where, method, "logLik")
    if unit["tau2_ci"] is not None:
        for j in range(2):
            assert _same(scaled["tau2_ci"][j], unit["tau2_ci"][j] * c * c, var_tol * c * c,
                         1e-8), (where, method, "tau2_ci")
            assert _same(scaled["I2_ci"][j], unit["I2_ci"][j], 1e-7, 1e-8), (where, method)


@SETTINGS
@given(data=studies(), test=s.sampled_from(["z", "knha"]))
def test_pooling_is_equivariant_under_a_change_of_units(data, test):
    yi, vi = data
    vbar = float(vi.mean())
    for method in METHODS:
        unit = meta_analysis(yi, vi, method=method, test=test).to_dict()
        for c in SCALES:
            scaled = meta_analysis(yi * c, vi * c * c, method=method, test=test)
            assert scaled.converged, (method, c, scaled.message)
            _check_pooled(unit, scaled.to_dict(), c, vbar, yi.size, method, f"c={c:g}")


@SETTINGS
@given(data=studies(min_k=3, max_k=8), extra=studies(min_k=3, max_k=8))
def test_batch_pooling_is_equivariant_under_a_change_of_units(data, extra):
    """A masked batch of two analyses: each row keeps its own scale."""
    (y1, v1), (y2, v2) = data, extra
    K = max(y1.size, y2.size)
    yi, vi = np.zeros((2, K)), np.ones((2, K))
    mask = np.zeros((2, K), dtype=bool)
    for row, (y, v) in enumerate(((y1, v1), (y2, v2))):
        yi[row, : y.size], vi[row, : y.size], mask[row, : y.size] = y, v, True
    for method in METHODS:
        unit = pool(yi, vi, mask=mask, method=method).to_dicts()
        for c in SCALES:
            scaled = pool(yi * c, vi * c * c, mask=mask, method=method).to_dicts()
            for row, (y, v) in enumerate(((y1, v1), (y2, v2))):
                _check_pooled(unit[row], scaled[row], c, float(v.mean()), y.size, method,
                              f"batch row {row}, c={c:g}")


@SETTINGS
@given(data=studies(min_k=4, max_k=12), seed=s.integers(0, 2**31 - 1),
       test=s.sampled_from(["z", "knha"]))
def test_meta_regression_is_equivariant_under_a_change_of_units(data, seed, test):
    yi, vi = data
    k = yi.size
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(k), rng.normal(size=k)])
    vbar = float(vi.mean())
    for method in METHODS:
        unit = fit_rma(yi, vi, X, method=method, test=test)
        for c in SCALES:
            sc = fit_rma(yi * c, vi * c * c, X, method=method, test=test)
            assert sc.converged, (method, c)
            where = (method, test, c)
            assert _same(sc.tau2, unit.tau2 * c * c, 1e-10 * vbar * c * c), where
            for name in ("coef", "se", "ci_lb", "ci_ub"):
                got, exp = np.asarray(getattr(sc, name)), np.asarray(getattr(unit, name)) * c
                assert np.allclose(got, exp, rtol=1e-8, atol=1e-10 * math.sqrt(vbar) * c,
                                   equal_nan=True), \
                    (*where, name, got, exp)
            for name in ("QE", "QM", "QMp", "I2", "H2", "R2", "knha_F", "knha_Fp"):
                got, exp = getattr(sc, name), getattr(unit, name)
                assert _same(got, exp, 1e-7, 1e-8), (*where, name, got, exp)
            # All-zero effects under FE + knha: s² = 0, so every p-value is NaN at both scales
            # (undefined, as in metafor); equal_nan lets NaN match NaN.
            assert np.allclose(sc.pval, unit.pval, rtol=1e-8, atol=1e-10, equal_nan=True), where
