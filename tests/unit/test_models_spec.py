"""The [[model]] table and [analysis.categorical]: parsing, names, round trips, errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.datasets import trauma_spec_path
from fedsynth.errors import ConfigError
from fedsynth.models import ModelSpec, coefficient_names, parse_model
from fedsynth.spec import load_spec, parse_spec

ISSUE_SPEC = """
[[analysis]]
name = "auc"
estimator = "auc"
outcome = "mort"
score = "risk"

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

BASE = {"name": "m", "family": "binomial", "outcome": "y", "covariates": ["a", "g"]}


def test_the_issue_example_parses_with_its_coefficient_names() -> None:
    spec = parse_spec(ISSUE_SPEC)
    assert spec.names == ("auc",)
    model = spec.model("tbi_mortality")
    assert isinstance(model, ModelSpec) and model.link == "logit"
    assert model.coefficient_names == (
        "intercept", "age", "motor_score=4", "motor_score=3", "motor_score=1/2",
        "pupil=One", "pupil=None", "ct=III", "ct=IV/V", "hypox", "hypots", "tsah", "edh")
    assert model.levels["pupil"] == ("Both", "One", "None")
    assert model.columns[0] == "mort" and "ct" in model.columns
    assert model.formula().startswith("glm(mort ~ age + factor(motor_score)")
    with pytest.raises(KeyError):
        spec.model("nope")


def test_round_trips_through_dict_toml_and_json() -> None:
    spec = parse_spec(ISSUE_SPEC)
    assert parse_spec(spec.to_toml()) == spec
    assert parse_spec(spec.to_dict()) == spec
    assert spec.to_dict()["models"][0]["categorical"]["pupil"] == ["Both", "One", "None"]
    assert '"models"' in spec.to_json()


def test_a_spec_without_models_keeps_its_old_form() -> None:
    spec = parse_spec(ISSUE_SPEC.split("[[model]]")[0])
    assert spec.models == ()
    assert "models" not in spec.to_dict() and "[[model]]" not in spec.to_toml()


def test_shipped_trauma_spec() -> None:
    spec = load_spec(trauma_spec_path())
    assert [m.family for m in spec.models] == ["binomial", "gaussian", "poisson"]
    assert spec.models[2].offset == "log_los"
    assert spec["hypotension_adjusted_logOR"].categorical[0][0] == "motor_score"
    assert parse_spec(spec.to_toml()) == spec


def test_integer_levels_are_text_and_names_follow_covariate_order() -> None:
    model = parse_model({**BASE, "covariates": ["g", "a"], "categorical": {"g": [1, 2, 3]}})
    assert model.categorical == (("g", ("1", "2", "3")),)
    assert model.coefficient_names == ("intercept", "g=2", "g=3", "a")
    assert coefficient_names([], ()) == ("intercept",)
    assert parse_model({**BASE, "covariates": []}).coefficient_names == ("intercept",)


@pytest.mark.parametrize("change,words", [
    ({"link": "probit"}, ["unknown key 'link'", "model 'm'"]),
    ({"family": "gamma"}, ["'family'", "'gamma'", "binomial"]),
    ({"covariates": "a"}, ["'covariates'", "list"]),
    ({"covariates": ["a", "a"]}, ["'a'", "twice"]),
    ({"covariates": ["y"]}, ["'y'", "outcome"]),
    ({"offset": "y"}, ["'offset'", "outcome"]),
    ({"offset": 3}, ["'offset'", "string"]),
    ({"name": "has space"}, ["'name'", "has space"]),
    ({"categorical": {"z": ["a", "b"]}}, ["'z'", "not one of the covariates"]),
    ({"categorical": {"g": ["a"]}}, ["'g'", "at least two levels"]),
    ({"categorical": {"g": ["a", "a"]}}, ["'a'", "twice"]),
    ({"categorical": {"g": [True, False]}}, ["strings or integers", "True"]),
    ({"categorical": {"g": "a,b"}}, ["levels must be a list"]),
    ({"categorical": ["g"]}, ["'categorical'", "table"]),
    ({"covariates": ["a=x", "a"], "categorical": {"a": ["y", "x"]}},
     ["two coefficients", "'a=x'"]),
])
def test_errors_name_the_model_key_and_value(change, words) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model({**BASE, **change})
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("missing", ["name", "family", "outcome"])
def test_missing_keys(missing: str) -> None:
    table = dict(BASE)
    del table[missing]
    with pytest.raises(ConfigError, match=f"missing key '{missing}'"):
        parse_model(table)


def test_names_are_unique_across_analyses_and_models() -> None:
    text = ISSUE_SPEC.replace('name = "tbi_mortality"', 'name = "auc"')
    with pytest.raises(ConfigError, match="'auc'.*duplicate"):
        parse_spec(text)
    with pytest.raises(ConfigError, match="model 'tbi_mortality'.*duplicate"):
        parse_spec(ISSUE_SPEC + "\n[[model]]\n" + ISSUE_SPEC.split("[[model]]")[1])


def test_spec_level_errors() -> None:
    with pytest.raises(ConfigError, match="'model' tables or a 'models' list"):
        parse_spec({"analyses": [{"name": "a", "estimator": "auc", "outcome": "y",
                                  "score": "s"}], "model": [BASE], "models": [BASE]})
    with pytest.raises(ConfigError, match="non-empty array"):
        parse_spec({"analyses": [{"name": "a", "estimator": "auc", "outcome": "y",
                                  "score": "s"}], "models": []})
    with pytest.raises(ConfigError, match="unknown top-level key 'modle'"):
        parse_spec({"analyses": [], "modle": []})


# ---------------------------------------------------------------- [analysis.categorical]

LOGISTIC = {"name": "a", "estimator": "logistic", "outcome": "y", "exposure": "e",
            "covariates": ["age", "g"]}


def test_analysis_categorical_parses_and_round_trips() -> None:
    spec = parse_spec({"analyses": [{**LOGISTIC, "categorical": {"g": ["x", "y", 3]}}]})
    analysis = spec.analyses[0]
    assert analysis.categorical == (("g", ("x", "y", "3")),)
    assert spec.to_dict()["analyses"][0]["categorical"] == {"g": ["x", "y", "3"]}
    assert parse_spec(spec.to_toml()) == spec
    # Without it, the analysis dict (and so its digest in the release history) is unchanged.
    plain = parse_spec({"analyses": [LOGISTIC]}).analyses[0]
    assert "categorical" not in plain.to_dict() and plain.categorical == ()


def test_analysis_categorical_is_checked() -> None:
    with pytest.raises(ConfigError, match="analysis 'a'.*'z'.*not one of the covariates"):
        parse_spec({"analyses": [{**LOGISTIC, "categorical": {"z": ["p", "q"]}}]})
    with pytest.raises(ConfigError, match="'categorical' does not apply to estimator "
                                          "'two_by_two'"):
        parse_spec({"analyses": [{"name": "a", "estimator": "two_by_two", "outcome": "y",
                                  "exposure": "e", "categorical": {}}]})
    cox = {"name": "c", "estimator": "cox", "time": "t", "event": "d", "exposure": "e",
           "covariates": ["g"], "categorical": {"g": ["0", "1", "2"]}}
    assert parse_spec({"analyses": [cox]}).analyses[0].categorical[0][1] == ("0", "1", "2")


# ---------------------------------------------------------------- property: round trip

_ident = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
_level = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                 max_size=8).filter(str.isprintable)


@st.composite
def model_tables(draw):
    covariates = draw(st.lists(_ident, unique=True, max_size=5))
    covariates = [c for c in covariates if c != "y"]
    categorical = {}
    for column in covariates:
        if draw(st.booleans()):
            categorical[column] = draw(st.lists(_level, min_size=2, max_size=4, unique=True))
    table = {"name": draw(_ident), "family": draw(st.sampled_from(["binomial", "gaussian",
                                                                  "poisson"])),
             "outcome": "y", "covariates": covariates}
    if categorical:
        table["categorical"] = categorical
    return table


@settings(max_examples=150, deadline=None)
@given(model_tables())
def test_any_valid_model_round_trips_through_toml(table) -> None:
    try:
        model = parse_model(table)
    except ConfigError as error:  # only a name clash may be refused
        assert "two coefficients" in str(error)
        return
    spec = parse_spec({"analyses": [{"name": "zz-analysis", "estimator": "auc",
                                     "outcome": "y", "score": "s"}],
                       "models": [table]})
    assert spec.models == (model,)
    assert parse_spec(spec.to_toml()) == spec
    names = model.coefficient_names
    assert len(names) == len(set(names)) == 1 + sum(
        len(dict(model.categorical)[c]) - 1 if c in dict(model.categorical) else 1
        for c in model.covariates)


@pytest.mark.parametrize("table,message", [
    ({"categorical": {"pupil": ["Both", "One\x1b[2J"]}}, "control or format character"),
    ({"categorical": {"pupil": [str(i) for i in range(101)]}}, "101 levels (at most 100)"),
])
def test_levels_are_printable_and_bounded(table, message) -> None:
    base = {"name": "m", "family": "binomial", "outcome": "y", "covariates": ["pupil"]}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_model({**base, **table})


@pytest.mark.parametrize("table,message", [
    ({"covariates": [f"c{i}" for i in range(101)]}, "101 columns (at most 100)"),
    ({"covariates": ["x" * 129]}, "129 characters long (at most 128)"),
    ({"outcome": "y\u202e"}, "control or format character"),
    ({"description": "d" * 2001}, "2001 characters long (at most 2000)"),
])
def test_a_spec_applies_its_size_limits_to_models(table, message) -> None:
    model = {"name": "m", "family": "gaussian", "outcome": "y", "covariates": [], **table}
    spec = {"analyses": [{"name": "a", "estimator": "auc", "outcome": "y", "score": "s"}],
            "models": [model]}
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        parse_spec(spec)
    assert "model 'm'" in str(error.value)


def test_iecv_key_defaults_off_round_trips_and_is_checked() -> None:
    plain = parse_model(BASE)
    assert plain.iecv is False and "iecv" not in plain.to_dict()   # old digests unchanged
    spec = parse_spec(ISSUE_SPEC.replace('family = "binomial"\n',
                                         'family = "binomial"\niecv = true\n'))
    model = spec.model("tbi_mortality")
    assert model.iecv is True and model.to_dict()["iecv"] is True
    assert "iecv = true" in spec.to_toml()
    assert parse_spec(spec.to_toml()) == spec and parse_spec(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="model 'm': key 'iecv' must be true or false, "
                                          "got str 'yes'"):
        parse_model({**BASE, "iecv": "yes"})
    with pytest.raises(ConfigError, match="key 'iecv' = true needs family = \"binomial\""):
        parse_model({**BASE, "family": "poisson", "iecv": True})
    assert parse_model({**BASE, "family": "poisson", "iecv": False}).iecv is False
