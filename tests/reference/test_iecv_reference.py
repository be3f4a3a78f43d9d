"""Internal-external cross-validation equals R: glm, pROC DeLong, glmer nAGQ = 25, metafor.

Reference: tests/data/iecv/reference.json, made once by tests/data/iecv/make_reference.R
(R 4.2.2, metafor 3.8-1, lme4 1.1-31, pROC 1.18.0) on tests/data/models/
trauma_registry.csv (eight sites of the synthetic trauma registry, baseline risk and the
hypotension slope varying; the smallest site without CT class IV/V).

Tolerances:

* global candidates (glm, pROC, the calibration glms, O:E): 1e-8 relative (1e-9 absolute
  near zero), as the issue asks;
* hierarchical candidates: the development fit is glmer's nAGQ = 25 optimum, which bobyqa
  leaves ~1e-6 from the exact maximum that fedsynth finds (tests/reference/
  test_hierarchical_reference.py shows ours is the exact one), so the held-out measures
  built on it agree to 1e-4;
* pooled measures: metafor's REML (threshold 1e-12) to 1e-6 relative for the global
  candidates, 1e-4 (1e-5 absolute near zero) for the hierarchical ones. A recalibrated candidate's
  calibration-in-the-large and log O:E are 0 up to rounding at every site (the intercept
  is fitted there), so they are compared with 1e-8 absolute.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedsynth.models.coding import build_design
from fedsynth.models.fit import fit_hierarchical, fit_model
from fedsynth.models.iecv import CANDIDATES, MEASURES, POOLED_MEASURES, iecv_for_fit
from fedsynth.spec import parse_spec
from tests.conftest import DATA_DIR, load_json

REF = load_json("iecv/reference.json")
SPEC = """
[[analysis]]
name = "unused"
estimator = "auc"
outcome = "mort"
score = "p"

[[model]]
name = "tbi_mortality"
family = "binomial"
outcome = "mort"
covariates = ["age", "motor_score", "pupil", "ct", "hypox", "hypots", "tsah", "edh"]
[model.categorical]
motor_score = ["5/6", "4", "3", "1/2"]
pupil = ["Both", "One", "None"]
ct = ["I/II", "III", "IV/V"]
"""


def _close(got: float, expected: float, rel: float, abs_: float = 1e-9) -> bool:
    return math.isfinite(got) and abs(got - expected) <= max(abs_, rel * abs(expected))


@pytest.fixture(scope="module")
def result():
    model = parse_spec(SPEC).model("tbi_mortality")
    frame = pd.read_csv(DATA_DIR / "models" / "trauma_registry.csv", keep_default_na=False,
                        na_values=[""])
    designs = {site: build_design(rows.drop(columns="site").reset_index(drop=True), model)
               for site, rows in frame.groupby("site", sort=False)}
    fit = fit_model(designs, limits=None)
    return iecv_for_fit(fit, designs)


def test_sites_in_order(result) -> None:
    assert list(result.sites) == REF["sites"]
    assert list(result.candidates) == list(CANDIDATES)


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_per_site_measures_equal_r(result, candidate: str) -> None:
    rel = 1e-8 if candidate.startswith("global") else 1e-4
    for site in REF["sites"]:
        got = result.candidates[candidate].per_site[site].to_dict()
        want = REF["per_site"][candidate][site]
        for key in MEASURES:
            near_zero = (candidate.endswith("recalibrated")
                         and key in ("calibration_in_the_large", "log_OE"))
            assert _close(got[key], want[key], rel, 1e-8 if near_zero else 1e-9), \
                (candidate, site, key, got[key], want[key])
        if candidate.endswith("recalibrated"):
            assert _close(got["recalibration"], want["recalibration"], rel), (site,)


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_pooled_measures_equal_metafor(result, candidate: str) -> None:
    rel = 1e-6 if candidate.startswith("global") else 1e-4
    near = 1e-9 if candidate.startswith("global") else 1e-5
    for measure in POOLED_MEASURES:
        degenerate = (candidate.endswith("recalibrated")
                      and measure in ("calibration_in_the_large", "log_OE"))
        for test in ("z", "knha"):
            got = result.candidates[candidate].pooled[measure][test].to_dict()
            want = REF["pooled"][candidate][measure][test]
            assert got["k"] == want["k"] == 8
            keys = ("estimate", "ci_lb", "ci_ub") if degenerate else (
                "estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "Q", "pi_lb", "pi_ub")
            for key in keys:
                assert _close(got[key], want[key], rel, 1e-8 if degenerate else near), \
                    (candidate, measure, test, key, got[key], want[key])


def test_hierarchical_development_fits_match_glmer() -> None:
    """Each leave-one-out hierarchical fit equals glmer nAGQ = 25 (1e-4; the exact-maximum
    comparison to 1e-6 is tests/reference/test_hierarchical_reference.py's)."""
    model = parse_spec(SPEC).model("tbi_mortality")
    frame = pd.read_csv(DATA_DIR / "models" / "trauma_registry.csv", keep_default_na=False,
                        na_values=[""])
    designs = {site: build_design(rows.drop(columns="site").reset_index(drop=True), model)
               for site, rows in frame.groupby("site", sort=False)}
    for held_out in REF["sites"][:3]:
        fit = fit_hierarchical({s: d for s, d in designs.items() if s != held_out})
        want = REF["developed"][held_out]
        assert _close(fit.tau, want["hierarchical_tau"], 1e-4)
        r_names = list(want["hierarchical"])
        for name, r_name in zip(model.coefficient_names, r_names):
            assert _close(float(dict(zip(fit.names, fit.coefficients))[name]),
                          want["hierarchical"][r_name], 1e-4, 1e-6), (held_out, name)


def test_verdict_on_varying_baseline_risk_is_not_global(result) -> None:
    assert result.recommendation is not None
    assert result.recommendation.choice != "global"
    assert any("calibration-in-the-large" in r for r in result.recommendation.reasons)
