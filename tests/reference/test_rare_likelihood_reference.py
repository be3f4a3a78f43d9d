"""Site profile log-likelihoods equal R's (glm with an offset, coxph with an offset).

Reference: tests/data/rare/reference.json (``likelihood``) and the patient-level files
likelihood_site.csv / likelihood_site_zero.csv written by make_reference.R (R 4.2.2,
survival 3.5-3). Log-likelihood differences ``l(b) - l(b_0)`` over the grid, estimates and
standard errors to 1e-6 relative (1e-9 absolute); the zero-event site (no events among the
treated) has no estimate but its profile likelihood is compared all the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects.likelihood import profile_cox, profile_logistic, profile_two_by_two
from tests.conftest import DATA_DIR, load_json

LIK = load_json("rare/reference.json")["likelihood"]
SITE = pd.read_csv(DATA_DIR / "rare" / "likelihood_site.csv")
ZERO = pd.read_csv(DATA_DIR / "rare" / "likelihood_site_zero.csv")


def _same_shape(got: np.ndarray, expected) -> None:
    exp = np.asarray(expected, dtype=float)
    np.testing.assert_allclose(got - got[0], exp - exp[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", LIK["two_by_two"], ids=lambda c: c["name"])
def test_two_by_two_profile_equals_glm_with_offset(case):
    prof = profile_two_by_two(case["ai"], case["bi"], case["ci"], case["di"],
                              points=case["grid"])
    # with the binomial coefficients, the values themselves equal R's logLik
    np.testing.assert_allclose(prof.values, case["loglik"], rtol=1e-9, atol=1e-9)
    if case["ai"] == 0:
        assert prof.monotone and np.isnan(prof.estimate)
        assert np.all(np.diff(prof.values) < 0)       # decreasing: no finite maximum


def _covs(frame):
    return frame[["age", "sex"]].to_numpy(float)


def test_logistic_profile_equals_glm_with_offset():
    case = LIK["logistic"]
    prof = profile_logistic(SITE["outcome"], SITE["treated"], _covs(SITE),
                            points=case["grid"])
    np.testing.assert_allclose(prof.values, case["loglik"], rtol=1e-9, atol=1e-8)
    assert prof.estimate == pytest.approx(case["estimate"], rel=1e-6)
    assert prof.se == pytest.approx(case["se"], rel=1e-6)
    zero = profile_logistic(ZERO["outcome"], ZERO["treated"], _covs(ZERO), points=case["grid"])
    assert zero.monotone
    np.testing.assert_allclose(zero.values, case["loglik_zero"], rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_profile_equals_coxph_with_offset(ties):
    case = LIK[f"cox_{ties}"]
    prof = profile_cox(SITE["time"], SITE["event"], SITE["treated"], _covs(SITE),
                       points=case["grid"], ties=ties)
    _same_shape(prof.values, case["loglik"])
    assert prof.estimate == pytest.approx(case["estimate"], rel=1e-6)
    assert prof.se == pytest.approx(case["se"], rel=1e-6)
    zero = profile_cox(ZERO["time"], ZERO["event"], ZERO["treated"], _covs(ZERO),
                       points=case["grid"], ties=ties)
    assert zero.monotone and np.isnan(zero.estimate)
    _same_shape(zero.values, case["loglik_zero"])


def test_univariable_cox_profile_equals_coxph():
    case = LIK["cox_univariable"]
    prof = profile_cox(SITE["time"], SITE["event"], SITE["treated"], points=case["grid"])
    _same_shape(prof.values, case["loglik"])
    assert prof.estimate == pytest.approx(case["estimate"], rel=1e-6)
    assert prof.se == pytest.approx(case["se"], rel=1e-6)


def test_profile_derivatives_are_the_slope_of_the_values():
    grid = np.linspace(-1, 1, 5)
    h = 1e-5
    for prof_at in (
        lambda x: profile_two_by_two(4, 96, 9, 91, points=x),
        lambda x: profile_logistic(SITE["outcome"], SITE["treated"], _covs(SITE), points=x),
        lambda x: profile_cox(SITE["time"], SITE["event"], SITE["treated"], _covs(SITE),
                              points=x),
    ):
        mid = prof_at(grid)
        up, down = prof_at(grid + h), prof_at(grid - h)
        np.testing.assert_allclose(mid.derivatives, (up.values - down.values) / (2 * h),
                                   rtol=1e-5, atol=1e-6)
