"""The Cox Newton step on risk-set sums against R's survival::coxph (1e-10).

Reference: tests/data/warehouse/cox_reference.json, written by cox_reference.R beside it
(coxph converged to eps 1e-14, Efron and Breslow ties, the six public sites and survival's
lung data with times coarsened to 30-day intervals for heavy ties).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects import estimate
from fedsynth.effects.aggregates import fit_cox
from fedsynth.effects.chunked import BlockEngine, estimate_on_engine
from fedsynth.effects.results import Estimate

DATA = Path(__file__).resolve().parents[1] / "data"
CASES = json.loads((DATA / "warehouse" / "cox_reference.json").read_text())["cases"]


def covariates(case: dict) -> list[str]:
    value = case["covariates"]
    return [value] if isinstance(value, str) else list(value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{Path(c['data']).stem}-{c['ties']}-"
                         f"{len(covariates(c))}")
def test_cox_matches_coxph(case: dict) -> None:
    frame = pd.read_csv(DATA / case["data"])
    names = [case["exposure"], *covariates(case)]
    coef = np.atleast_1d(np.asarray(case["coef"], dtype=float))  # R unboxes length 1
    fit = fit_cox(frame[case["time"]].to_numpy(), frame[case["event"]].to_numpy(),
                  frame[names].to_numpy(float), case["ties"])
    assert fit.converged
    np.testing.assert_allclose(fit.beta, coef, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(fit.information),
                               np.array(case["vcov"]).reshape(len(names), len(names)),
                               rtol=1e-10, atol=1e-14)
    assert fit.loglik == pytest.approx(case["loglik"], rel=1e-12)
    analysis = {"name": "hr", "estimator": "cox", "time": case["time"],
                "event": case["event"], "exposure": case["exposure"],
                "covariates": covariates(case), "ties": case["ties"]}
    vcov = np.array(case["vcov"]).reshape(len(names), len(names))
    for result in (estimate(frame, analysis),
                   estimate_on_engine(BlockEngine.from_frame(frame, 101), analysis)):
        assert isinstance(result, Estimate)
        assert result.yi == pytest.approx(coef[0], rel=1e-10)
        assert result.vi == pytest.approx(vcov[0, 0], rel=1e-10)
        assert result.n == case["n"]
