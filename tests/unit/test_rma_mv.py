"""Unit and property tests of fedsynth.meta.mv (rma.mv)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.meta.mv import bldiag, parse_random, rma_mv, vcalc
from fedsynth.meta.pooling import meta_analysis


def test_parse_random_forms() -> None:
    (t,) = parse_random("~ 1 | district/school")
    assert t.inner is None and t.outer == ("district", "school")
    (t,) = parse_random("~outcome|trial")
    assert t.inner == "outcome" and t.outer == ("trial",)
    assert len(parse_random(["~ 1 | study", "~ outcome | study"])) == 2
    for bad in ("1 | study", "~ 1", "~ a | b/c", "~ 1 | a-b", []):
        with pytest.raises(InputError, match="random"):
            parse_random(bad)
    with pytest.raises(InputError, match="at most one"):
        parse_random(["~ a | s", "~ b | s"])


def test_bldiag_and_vcalc() -> None:
    B = bldiag([[1, 2], [2, 5]], 3, np.eye(2))
    assert B.shape == (5, 5) and B[2, 2] == 3 and B[0, 1] == 2 and B[0, 2] == 0
    assert np.array_equal(bldiag([np.eye(1), [[2]]]), np.diag([1.0, 2.0]))
    with pytest.raises(InputError, match="square"):
        bldiag(np.ones((2, 3)))
    V = vcalc([1, 4, 9], ["a", "a", "b"], rho=0.5)
    assert V[0, 1] == pytest.approx(1.0) and V[0, 2] == 0 and V[2, 2] == 9
    with pytest.raises(InputError, match="rho"):
        vcalc([1, 1], [1, 1], rho=2)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["REML", "ML"]))
def test_one_random_effect_per_row_is_rma_uni(seed: int, method: str) -> None:
    """``random = ~ 1 | id`` is the random-effects model of rma.uni (one tau² engine)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(4, 15))
    yi = rng.normal(0.2, 0.4, k)
    vi = rng.uniform(0.01, 0.2, k)
    mv = rma_mv(yi, vi, random="~ 1 | id", method=method)
    uni = meta_analysis(yi, vi, method=method)
    assert mv.sigma2[0] == pytest.approx(uni.tau2, rel=1e-7, abs=1e-10)
    assert mv.beta[0] == pytest.approx(uni.estimate, rel=1e-8, abs=1e-10)
    assert mv.se[0] == pytest.approx(uni.se, rel=1e-6)
    assert mv.logLik == pytest.approx(uni.logLik, rel=1e-9)
    assert mv.QE == pytest.approx(uni.Q, rel=1e-10)


@pytest.mark.parametrize("c", [1e-8, 1e8])
def test_scale_equivariance(c: float) -> None:
    """Scale-free optimiser: y -> c y, V -> c² V scales σ² by c² and β by c."""
    rng = np.random.default_rng(3)
    district = np.repeat(np.arange(8), 3)
    school = np.tile(np.arange(3), 8)
    yi = rng.normal(0, 0.3, 24) + rng.normal(0, 0.3, 8)[district]
    vi = rng.uniform(0.02, 0.1, 24)
    data = {"district": district, "school": school}
    a = rma_mv(yi, vi, random="~ 1 | district/school", data=data)
    b = rma_mv(yi * c, vi * c * c, random="~ 1 | district/school", data=data)
    np.testing.assert_allclose(b.sigma2, a.sigma2 * c * c, rtol=1e-7, atol=1e-12 * c * c)
    np.testing.assert_allclose(b.beta, a.beta * c, rtol=1e-8)
    np.testing.assert_allclose(b.pval, a.pval, rtol=1e-6)
    assert b.logLik == pytest.approx(a.logLik - (24 - 1) * np.log(c), rel=1e-9)


def test_without_random_effects_is_the_fixed_effects_model() -> None:
    """metafor's default: no random term, GLS with the known V (here: rma(method="FE"))."""
    yi = np.array([0.1, 0.3, -0.2, 0.4, 0.25])
    vi = np.array([0.02, 0.03, 0.05, 0.04, 0.01])
    mv = rma_mv(yi, vi)
    fe = meta_analysis(yi, vi, method="FE")
    assert mv.beta[0] == pytest.approx(fe.estimate, rel=1e-12)
    assert mv.se[0] == pytest.approx(fe.se, rel=1e-12)
    assert len(mv.sigma2) == 0 and mv.converged and mv.random == ()


def test_validation_messages() -> None:
    data = {"g": [1, 1, 2, 2], "o": ["a", "b", "a", "b"]}
    y, v = [0.1, 0.2, 0.3, 0.4], [0.1] * 4
    with pytest.raises(InputError, match="struct"):
        rma_mv(y, v, random="~ o | g", struct="AR", data=data)
    with pytest.raises(InputError, match="method"):
        rma_mv(y, v, method="DL")
    with pytest.raises(InputError, match="test"):
        rma_mv(y, v, test="knha")
    with pytest.raises(InputError, match="unknown column 'nope'"):
        rma_mv(y, v, random="~ 1 | nope", data=data)
    with pytest.raises(InputError, match="V: 3 variances"):
        rma_mv(y, v[:3])
    with pytest.raises(InputError, match="not symmetric"):
        rma_mv(y, np.triu(np.ones((4, 4))))
    with pytest.raises(InputError, match="row 2 is not a finite"):
        rma_mv([0.1, np.nan, 0.2, 0.3], v)
    with pytest.raises(InputError, match="formulas"):
        rma_mv(y, v, mods="~ x")
    with pytest.raises(InputError, match="full column rank"):
        rma_mv(y, v, mods=np.ones((4, 2)))


def test_result_conventions() -> None:
    data = {"district": [1, 1, 2, 2, 3, 3, 4, 4], "school": [1, 2] * 4}
    yi = [0.1, 0.3, -0.2, 0.0, 0.5, 0.6, 0.2, 0.1]
    fit = rma_mv(yi, [0.02] * 8, random="~ 1 | district/school", data=data, test="t")
    d = fit.to_dict()
    assert d["s_names"] == ["district", "district/school"] and d["test"] == "t"
    assert "Multivariate Meta-Analysis Model (k = 8; method: REML)" in fit.summary()
    assert "sigma^2.1" in fit.summary() and "tval" in fit.summary()
    ci = fit.confidence_interval()
    assert ci.low[0] == pytest.approx(fit.ci_lb[0])
    assert fit.to_frame().shape[0] == 1
    M = fit.marginal_covariance()
    assert M[0, 1] == pytest.approx(fit.sigma2[0]) and M[0, 2] == 0
    assert fit.i2().I2 > 0
