"""Categorical covariates of the logistic, linear and Cox analyses (issue 13).

The numbers are checked against R in tests/reference/test_models_reference.py; these
tests check the coding rules: treatment contrasts against the first declared level, a
value outside the levels refuses the analysis with a reason that names the column and not
the value, and a level this site lacks leaves the estimate as if it were not declared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects import estimate
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.spec import AnalysisSpec


def _data(seed: int = 3, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["low", "mid", "high"], size=n)
    exposure = rng.integers(0, 2, size=n)
    age = rng.normal(50, 10, size=n)
    shift = pd.Series(group).map({"low": 0.0, "mid": 0.6, "high": 1.2}).to_numpy()
    eta = -1 + 0.7 * exposure + 0.02 * (age - 50) + shift
    outcome = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    los = 5 + 2 * exposure + 3 * shift + rng.normal(0, 2, size=n)
    time = rng.exponential(1 / np.exp(0.1 * eta), size=n)
    event = (rng.random(n) < 0.7).astype(int)
    return pd.DataFrame({"y": outcome, "e": exposure, "age": age, "g": group, "los": los,
                         "time": time, "event": event})


def _analysis(estimator: str, **extra) -> AnalysisSpec:
    table = {"name": "a", "estimator": estimator, "exposure": "e",
             "covariates": ["age", "g"], "categorical": {"g": ["low", "mid", "high"]},
             **extra}
    if estimator == "cox":
        table.update(time="time", event="event")
    else:
        table["outcome"] = "los" if estimator == "linear" else "y"
    return AnalysisSpec.from_dict(table)


@pytest.mark.parametrize("estimator", ["logistic", "linear", "cox"])
def test_categorical_equals_hand_made_dummies(estimator: str) -> None:
    data = _data()
    ours = estimate(data, _analysis(estimator))
    coded = data.assign(g_mid=(data["g"] == "mid").astype(float),
                        g_high=(data["g"] == "high").astype(float))
    numeric = AnalysisSpec.from_dict({
        **_analysis(estimator).to_dict(), "covariates": ["age", "g_mid", "g_high"],
        "categorical": {}})
    theirs = estimate(coded, numeric)
    assert isinstance(ours, Estimate) and isinstance(theirs, Estimate)
    assert ours.yi == pytest.approx(theirs.yi, rel=1e-10)
    assert ours.vi == pytest.approx(theirs.vi, rel=1e-10)


@pytest.mark.parametrize("estimator", ["logistic", "linear", "cox"])
def test_a_value_outside_the_levels_refuses_naming_the_column_only(estimator: str) -> None:
    data = _data()
    data.loc[7, "g"] = "secret-value"
    result = estimate(data, _analysis(estimator))
    assert isinstance(result, Refusal) and result.code == "invalid_values"
    assert "'g'" in result.reason and "declared levels" in result.reason
    assert "secret-value" not in result.reason


@pytest.mark.parametrize("estimator", ["logistic", "linear", "cox"])
def test_a_level_the_site_lacks_changes_nothing(estimator: str) -> None:
    data = _data()
    data = data[data["g"] != "high"].reset_index(drop=True)
    declared = estimate(data, _analysis(estimator))
    two_levels = estimate(data, _analysis(estimator, categorical={"g": ["low", "mid"]}))
    assert isinstance(declared, Estimate) and isinstance(two_levels, Estimate)
    assert declared.yi == pytest.approx(two_levels.yi, rel=1e-12)
    assert declared.vi == pytest.approx(two_levels.vi, rel=1e-12)


def test_numeric_levels_match_integers_floats_and_text() -> None:
    data = _data()
    codes = data["g"].map({"low": 0, "mid": 1, "high": 2})
    spec = _analysis("logistic", categorical={"g": [0, 1, 2]})
    as_int = estimate(data.assign(g=codes), spec)
    as_float = estimate(data.assign(g=codes.astype(float)), spec)
    as_text = estimate(data.assign(g=codes.astype(str)), spec)
    by_name = estimate(data, _analysis("logistic"))
    assert isinstance(by_name, Estimate)
    for result in (as_int, as_float, as_text):
        assert isinstance(result, Estimate)
        assert result.yi == pytest.approx(by_name.yi, rel=1e-12)


def test_categorical_is_refused_for_other_estimators() -> None:
    from fedsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="categorical"):
        AnalysisSpec.from_dict({"name": "a", "estimator": "two_by_two", "outcome": "y",
                                "exposure": "e", "categorical": {"g": ["a", "b"]}})
