"""Bayesian normal-normal pooling against the reference values in tests/data.

Reference: ``bayes`` cases of ``metafor_public.json`` (R 4.2.2; flat prior on mu, half-normal or
half-Cauchy prior on tau; adaptive integration to ~1e-10, checked on a 400,001-point grid).
The project's tolerance for Bayesian posterior summaries is 1e-4; we assert it on every field
and additionally that the agreement is far tighter (1e-7), so a regression in the quadrature
shows long before it would cross the contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.meta.bayes import BayesResult, bayes_pool
from tests.conftest import load_json

CASES = load_json("metafor_public.json")["bayes"]
FIELDS = ("mu_mean", "mu_sd", "mu_median", "mu_ci", "tau_mean", "tau_median", "tau_ci",
          "prob_mu_positive", "theta_mean")


def test_every_case_and_field_is_present():
    assert len(CASES) >= 6
    for case in CASES:
        assert set(FIELDS) <= set(case["expected"]), case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bayes_matches_reference(case):
    prior = case["prior"]
    assert prior["mu"] == "flat"
    res = bayes_pool(case["yi"], case["vi"], prior=prior["tau"], scale=prior["tau_scale"])
    assert isinstance(res, BayesResult)
    got = res.to_dict()
    for field in FIELDS:
        expected = np.asarray(case["expected"][field], dtype=float)
        actual = np.asarray(got[field], dtype=float)
        assert actual.shape == expected.shape, field
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4, err_msg=field)
        np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-8, err_msg=field)


def test_batch_reproduces_every_case_at_once():
    """All reference cases with the same prior pooled as one masked (m, k) batch."""
    by_prior: dict[tuple[str, float], list[dict]] = {}
    for case in CASES:
        by_prior.setdefault((case["prior"]["tau"], case["prior"]["tau_scale"]), []).append(case)
    for (prior, scale), cases in by_prior.items():
        width = max(len(c["yi"]) for c in cases)
        y = np.full((len(cases), width), np.nan)
        v = np.full((len(cases), width), np.nan)
        mask = np.zeros((len(cases), width), dtype=bool)
        for r, c in enumerate(cases):
            y[r, : len(c["yi"])] = c["yi"]
            v[r, : len(c["vi"])] = c["vi"]
            mask[r, : len(c["yi"])] = True
        batch = bayes_pool(y, v, mask=mask, prior=prior, scale=scale)
        for r, c in enumerate(cases):
            row = batch[r].to_dict()
            for field in FIELDS:
                np.testing.assert_allclose(np.asarray(row[field], float),
                                           np.asarray(c["expected"][field], float),
                                           rtol=1e-7, atol=1e-8, err_msg=f"{c['id']} {field}")
