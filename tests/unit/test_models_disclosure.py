"""Disclosure control for models: every rule is tested by ATTEMPTING the attack it prevents.

Each test plays a curious coordinator against one site. With all rules switched off
(``OFF``) the attack recovers patient data exactly; with only the rule under test switched
on, the site refuses the design or the request, so the attack gets nothing. The default
limits refuse every attack here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects import Refusal
from fedsynth.errors import InputError
from fedsynth.models import parse_model
from fedsynth.models.coding import build_design
from fedsynth.models.disclosure import (
    MODEL_REFUSAL_CODES,
    ModelLimits,
    check_design,
    check_release,
    check_request,
)
from fedsynth.models.glm import site_step

#: Every rule switched off (the most permissive values the limits accept).
OFF = ModelLimits(min_rows=1, max_parameter_fraction=1.0, min_cell_count=1,
                  max_iterations=10**9, max_standardized_coefficient=1e15,
                  max_linear_predictor=1e15)
#: logit(0.75) + 0.25/0.1875: the working response of an event at R's start values.
Z_START = np.log(3) + 0.25 / 0.1875
W_START = 0.1875


def model(family: str, covariates: list[str], outcome: str = "y", **extra):
    return parse_model({"name": "probe", "family": family, "outcome": outcome,
                        "covariates": covariates, **extra})


def refused(result, code: str) -> None:
    assert isinstance(result, Refusal), result
    assert result.code == code and result.code in MODEL_REFUSAL_CODES
    assert result.reason.startswith("suppressed by the site's disclosure control")
    assert not any(ch.isdigit() for ch in result.reason.split("(")[0]), result.reason


# ---------------------------------------------------------------- rule 1: minimum rows

def test_min_rows_stops_reading_two_patients_from_their_sums() -> None:
    truth = pd.DataFrame({"age": [34.0, 71.0], "y": [12.5, 30.25]})
    design = build_design(truth, model("gaussian", ["age"]))
    assert check_design(design, OFF) is None
    step = site_step(design, None)          # XᵀX and Xᵀy (gaussian start: z = y, w = 1)
    n, s1, s2 = step.xtwx[0, 0], step.xtwx[0, 1], step.xtwx[1, 1]
    ages = np.sort(np.roots([1.0, -s1, (s1 ** 2 - s2) / 2]).real)
    outcomes = np.linalg.solve(np.array([[1.0, 1.0], ages]), step.score)
    assert n == 2
    np.testing.assert_allclose(ages, [34, 71], rtol=1e-12)
    np.testing.assert_allclose(outcomes, [12.5, 30.25], rtol=1e-9)
    refused(check_design(design, replace(OFF, min_rows=20)), "disclosure_min_n")
    refused(check_design(design), "disclosure_min_n")


# ---------------------------------------------------------------- rule 2: saturation

def test_parameter_fraction_stops_a_saturated_model_revealing_outcomes() -> None:
    rng = np.random.default_rng(3)
    covariates = [f"x{j}" for j in range(6)]
    data = pd.DataFrame(rng.normal(size=(7, 6)), columns=covariates)
    data["mort"] = [1, 0, 0, 1, 0, 1, 1]
    # The coordinator knows these patients' covariates (quasi-identifiers), not outcomes;
    # a linear model with as many coefficients as patients interpolates them.
    saturated = build_design(data, model("gaussian", covariates, outcome="mort"))
    assert saturated.p == saturated.n == 7
    assert check_design(saturated, OFF) is None
    step = site_step(saturated, None)
    recovered = saturated.x @ np.linalg.solve(step.xtwx, step.score)
    np.testing.assert_allclose(recovered, data["mort"], atol=1e-9)
    refused(check_design(saturated, replace(OFF, max_parameter_fraction=0.33)),
            "disclosure_parameters")
    refused(check_design(saturated, replace(ModelLimits(), min_rows=1)),
            "disclosure_parameters")
    # Control: a model within the limit cannot interpolate (the attack fails).
    small = build_design(data, model("gaussian", ["x0"], outcome="mort"))
    assert check_design(small, replace(OFF, max_parameter_fraction=0.33)) is None
    step = site_step(small, None)
    fitted = small.x @ np.linalg.solve(step.xtwx, step.score)
    assert not np.allclose(fitted, data["mort"], atol=0.05)


# ---------------------------------------------------------------- rule 3: small levels

@pytest.mark.parametrize("outcome_of_the_one", [0, 1])
def test_min_cell_stops_reading_the_outcome_of_a_rare_level(outcome_of_the_one) -> None:
    rng = np.random.default_rng(5)
    data = pd.DataFrame({"edh": np.zeros(200, dtype=int),
                         "mort": rng.binomial(1, 0.3, 200)})
    data.loc[17, ["edh", "mort"]] = [1, outcome_of_the_one]   # the only EDH patient
    design = build_design(data, model("binomial", ["edh"], outcome="mort"))
    assert check_design(design, OFF) is None
    step = site_step(design, None)
    count = step.xtwx[1, 1] / W_START                   # how many have EDH: 1
    learned = int(step.score[1] / (W_START * Z_START) > 0)
    assert round(count) == 1 and learned == outcome_of_the_one
    refused(check_design(design, replace(OFF, min_cell_count=5)), "disclosure_min_cell")
    refused(check_design(design), "disclosure_min_cell")
    assert "'edh'" in check_design(design).reason


def test_min_cell_stops_reading_a_categorical_level() -> None:
    rng = np.random.default_rng(6)
    data = pd.DataFrame({"pupil": rng.choice(["Both", "None"], 150),
                         "mort": rng.binomial(1, 0.3, 150)})
    data.loc[[3, 90], "pupil"] = "One"
    data.loc[[3, 90], "mort"] = [1, 1]
    m = model("binomial", ["pupil"], outcome="mort",
              categorical={"pupil": ["Both", "One", "None"]})
    design = build_design(data, m)
    step = site_step(design, None)
    assert round(step.xtwx[1, 1] / W_START) == 2
    assert step.score[1] / (W_START * Z_START) == pytest.approx(2)   # both died
    refused(check_design(design, replace(OFF, min_cell_count=5)), "disclosure_min_cell")
    # A declared level the site does not have at all is fine (0 rows).
    absent = build_design(data[data["pupil"] != "One"], m)
    assert absent.level_counts["pupil"]["One"] == 0
    assert check_design(absent, replace(OFF, min_cell_count=5)) is None


def test_min_cell_stops_reading_the_covariates_of_the_one_death() -> None:
    rng = np.random.default_rng(7)
    data = pd.DataFrame({"age": rng.integers(18, 80, 100).astype(float),
                         "hypox": rng.binomial(1, 0.5, 100), "mort": 0})
    data.loc[42, "mort"] = 1
    design = build_design(data, model("binomial", ["age", "hypox"], outcome="mort"))
    step = site_step(design, None)
    # score = w z (Σ_dead x - Σ_alive x); first row of XᵀWX = w Σ_all x.
    dead = (step.score / (W_START * Z_START) + step.xtwx[0] / W_START) / 2
    np.testing.assert_allclose(dead, [1, data.loc[42, "age"], data.loc[42, "hypox"]],
                               atol=1e-9)
    refused(check_design(design, replace(OFF, min_cell_count=5)), "disclosure_min_cell")
    assert "outcome 'mort'" in check_design(design, replace(OFF, min_cell_count=5)).reason


# ---------------------------------------------------------------- rules 4-5: probes

def _ages() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.DataFrame({"age": rng.integers(18, 81, 120).astype(float),
                         "mort": rng.binomial(1, 0.3, 120)})


def _probe_histogram(design, limits, start_age=15, stop_age=95):
    """β_age = 40 per year puts all weight on patients of exactly one age: XᵀWX[0,0] is
    a quarter of their number. One request per age reads the whole age histogram."""
    histogram, refusal = {}, None
    for answered, age in enumerate(range(start_age, stop_age)):
        beta = {"intercept": -40.0 * age, "age": 40.0}
        refusal = check_request(design, beta, answered, limits)
        if refusal is not None:
            break
        histogram[age] = round(site_step(design, beta).xtwx[0, 0] / 0.25)
    return histogram, refusal


def test_coefficient_bound_stops_weights_concentrated_on_one_age() -> None:
    data = _ages()
    design = build_design(data, model("binomial", ["age"], outcome="mort"))
    truth = data["age"].astype(int).value_counts().to_dict()
    histogram, refusal = _probe_histogram(design, OFF)
    assert refusal is None
    assert {a: c for a, c in histogram.items() if c} == truth   # every exact age, counted
    assert min(truth.values()) == 1                              # ... including singletons
    histogram, refusal = _probe_histogram(
        design, replace(OFF, max_standardized_coefficient=10, max_linear_predictor=30))
    assert histogram == {}
    refused(refusal, "disclosure_coefficients")
    # Moderate coefficients, as a real fit uses, are answered.
    assert check_request(design, {"intercept": -2.0, "age": 0.03}, 0, ModelLimits()) is None
    # The linear predictor at the covariate means is bounded too.
    refused(check_request(design, {"intercept": -200.0, "age": 0.1}, 0,
                          replace(OFF, max_linear_predictor=30)), "disclosure_coefficients")


def test_iteration_cap_stops_the_probe_sweep() -> None:
    data = _ages()
    design = build_design(data, model("binomial", ["age"], outcome="mort"))
    capped = replace(OFF, max_iterations=30)
    histogram, refusal = _probe_histogram(design, capped)
    refused(refusal, "disclosure_iterations")
    assert len(histogram) == 30
    seen = set(histogram)
    assert set(data["age"].astype(int)) - seen          # ages never probed stay unknown


def test_coefficients_must_be_finite_and_match_the_model() -> None:
    design = build_design(_ages(), model("binomial", ["age"], outcome="mort"))
    refused(check_request(design, {"intercept": float("nan"), "age": 0.0}, 0, OFF),
            "disclosure_coefficients")
    refused(check_request(design, {"intercept": 0.0}, 0, OFF), "invalid_request")
    refused(check_request(design, {"intercept": "x", "age": 0}, 0, OFF), "invalid_request")
    assert check_request(design, None, 0, ModelLimits()) is None
    gaussian = build_design(_ages(), model("gaussian", ["age"], outcome="mort"))
    # Identity link: the sums do not depend on the coefficients, so only finiteness.
    assert check_request(gaussian, {"intercept": -4e3, "age": 40.0}, 0, ModelLimits()) is None


# ---------------------------------------------------------------- rule 6: differencing

def test_differencing_across_rounds_reveals_the_new_patient() -> None:
    rng = np.random.default_rng(13)
    march = pd.DataFrame({"age": rng.integers(18, 80, 80).astype(float),
                          "hypox": rng.binomial(1, 0.4, 80), "mort": rng.binomial(1, 0.3, 80)})
    newcomer = pd.DataFrame({"age": [67.0], "hypox": [1], "mort": [1]})
    april = pd.concat([march, newcomer], ignore_index=True)
    m = model("binomial", ["age", "hypox"], outcome="mort")
    first, second = build_design(march, m), build_design(april, m)
    before, after = site_step(first, None), site_step(second, None)
    x_new = (after.xtwx - before.xtwx)[0] / W_START
    died = (after.score - before.score)[0] / (W_START * Z_START) > 0
    np.testing.assert_allclose(x_new, [1, 67, 1], atol=1e-9)
    assert died
    assert check_release(second, [first.n], OFF) is None
    refused(check_release(second, [first.n], replace(OFF, min_cell_count=5)),
            "disclosure_differencing")
    # The same rows again, or rows that differ by enough patients, may be released.
    assert check_release(second, [second.n, second.n - 5]) is None


# ---------------------------------------------------------------- limits

def test_limits_validation_and_mapping() -> None:
    assert ModelLimits.from_mapping(None) == ModelLimits()
    limits = ModelLimits.from_mapping({"max_iterations": 12}, min_rows=50, min_cell_count=10)
    assert (limits.max_iterations, limits.min_rows, limits.min_cell_count) == (12, 50, 10)
    assert limits.to_dict()["max_parameter_fraction"] == 0.33
    for bad, word in [({"max_parameter_fraction": 1.5}, "max_parameter_fraction"),
                      ({"min_rows": 0}, "min_rows"), ({"max_iterations": True},
                                                      "max_iterations"),
                      ({"max_linear_predictor": float("inf")}, "max_linear_predictor"),
                      ({"bogus": 1}, "unknown key 'bogus'")]:
        with pytest.raises(InputError, match=word):
            ModelLimits.from_mapping(bad)


def test_a_real_model_passes_the_default_limits() -> None:
    from fedsynth.datasets import generate_trauma, trauma_spec_path
    from fedsynth.models.glm import fit_one_stage
    from fedsynth.spec import load_spec

    spec = load_spec(trauma_spec_path())
    frames = generate_trauma(10, seed=0)
    for m in spec.models:
        designs = {s: build_design(f, m) for s, f in frames.items()}
        refusals = {s: check_design(d) for s, d in designs.items()}
        assert all(r is None for r in refusals.values()), refusals
        fit = fit_one_stage(designs)
        # Every coefficient vector the fit sent is within the bounds.
        for d in designs.values():
            assert check_request(d, fit.coef(), fit.round_trips - 1) is None
        assert 2 * fit.round_trips <= ModelLimits().max_iterations
