"""Analysis spec: parsing, defaults, round-trips and every validation error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.effects.chunked import BlockEngine, estimate_on_engine
from fedsynth.effects.patient_level import estimate
from fedsynth.errors import ConfigError, InputError
from fedsynth.spec import ESTIMATORS, AnalysisSpec, Spec, load_spec, parse_spec

DEMO = Path(__file__).resolve().parents[2] / "fedsynth" / "data" / "demo_spec.toml"

GOOD = """
name = "monthly"
[[analysis]]
name = "mortality_adjusted"
estimator = "logistic"
outcome = "outcome"
exposure = "treated"
covariates = ["age", "sex"]

[[analysis]]
name = "hr"
estimator = "cox"
time = "time"
event = "event"
exposure = "treated"
"""


def one(**keys) -> dict:
    return {"analyses": [keys]}


def test_parses_typed_objects_with_defaults() -> None:
    spec = parse_spec(GOOD)
    assert isinstance(spec, Spec) and spec.name == "monthly"
    assert spec.names == ("mortality_adjusted", "hr")
    first, second = spec.analyses
    assert isinstance(first, AnalysisSpec)
    assert first.covariates == ("age", "sex") and first.measure is None
    assert second.ties == "efron" and second.covariates == ()
    assert second.columns == ("treated", "time", "event")
    assert first.columns == ("outcome", "treated", "age", "sex")
    assert spec["hr"] is second
    with pytest.raises(KeyError):
        spec["nope"]


@pytest.mark.parametrize("estimator,key,default", [
    ("two_by_two", "measure", "OR"), ("two_group", "measure", "MD"), ("auc", "scale", "raw"),
    ("cox", "ties", "efron")])
def test_defaults(estimator: str, key: str, default: str) -> None:
    table = {"name": "a", "estimator": estimator}
    for required in ESTIMATORS[estimator]["required"]:
        table[required] = required + "_col"
    assert getattr(parse_spec(one(**table)).analyses[0], key) == default


def test_round_trips_through_dict_and_toml() -> None:
    spec = parse_spec(GOOD)
    assert parse_spec(spec.to_dict()) == spec
    assert parse_spec(spec.to_toml()) == spec
    demo = load_spec(DEMO)
    assert parse_spec(demo.to_toml()) == demo and parse_spec(demo.to_dict()) == demo
    assert '"analyses"' in demo.to_json()


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(names, st.sampled_from(sorted(ESTIMATORS)), names, names),
                min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_round_trip_property(rows) -> None:
    analyses = []
    for name, estimator, col_a, col_b in rows:
        table = {"name": name, "estimator": estimator}
        for i, required in enumerate(ESTIMATORS[estimator]["required"]):
            table[required] = f"{(col_a, col_b)[i % 2]}_{required}"
        analyses.append(table)
    spec = parse_spec({"name": "p", "analyses": analyses})
    assert parse_spec(spec.to_toml()) == spec
    assert parse_spec(spec.to_dict()) == spec


# ------------------------------------------------------------------ validation errors

@pytest.mark.parametrize("spec,words", [
    (one(name="a", estimator="probit", outcome="y"), ["'a'", "estimator", "'probit'"]),
    (one(estimator="logistic", outcome="y", exposure="x"), ["#1", "missing key 'name'"]),
    (one(name="a", outcome="y"), ["'a'", "missing key 'estimator'"]),
    (one(name="a", estimator="logistic", exposure="x"), ["'a'", "missing key 'outcome'"]),
    (one(name="a", estimator="cox", time="t", exposure="x"), ["'a'", "missing key 'event'"]),
    (one(name="a", estimator="auc", outcome="y"), ["'a'", "missing key 'score'"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x", colour="red"),
     ["'a'", "unknown key 'colour'"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x", ties="efron"),
     ["'a'", "'ties'", "does not apply", "'logistic'"]),
    (one(name="a", estimator="auc", outcome="y", score="s", measure="OR"),
     ["'a'", "'measure'", "does not apply"]),
    (one(name="a", estimator="logistic", outcome=1, exposure="x"),
     ["'a'", "'outcome'", "must be a string", "int"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x", covariates="age"),
     ["'a'", "'covariates'", "list"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x", covariates=["age", 3]),
     ["'a'", "'covariates'", "list"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x",
         covariates=["age", "age"]), ["'a'", "'covariates'", "twice"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="x", covariates=["x"]),
     ["'a'", "'covariates'", "'x'"]),
    (one(name="a", estimator="logistic", outcome="y", exposure="y"),
     ["'a'", "'exposure'", "'y'"]),
    (one(name="a", estimator="two_by_two", outcome="y", exposure="x", measure="SMD"),
     ["'a'", "'measure'", "'SMD'", "OR, RR, RD"]),
    (one(name="a", estimator="two_group", outcome="y", exposure="x", measure="OR"),
     ["'a'", "'measure'", "'OR'", "MD, SMD, ROM"]),
    (one(name="a", estimator="cox", time="t", event="e", exposure="x", ties="exact"),
     ["'a'", "'ties'", "'exact'", "efron, breslow"]),
    (one(name="a", estimator="auc", outcome="y", score="s", scale="probit"),
     ["'a'", "'scale'", "'probit'"]),
    (one(name="a b", estimator="auc", outcome="y", score="s"), ["'name'", "'a b'"]),
    (one(name="a", estimator="auc", outcome="", score="s"), ["'a'", "'outcome'", "empty"]),
    ({"analyses": [{"name": "a", "estimator": "auc", "outcome": "y", "score": "s"},
                   {"name": "a", "estimator": "brier", "outcome": "y", "score": "s"}]},
     ["'a'", "duplicate", "#2"]),
    ({"analyses": []}, ["'analysis'", "non-empty"]),
    ({"name": "x"}, ["missing key 'analysis'"]),
    ({"analyses": ["x"]}, ["analysis #1", "table"]),
    ({"analyses": [{"name": "a", "estimator": "auc", "outcome": "y", "score": "s"}],
      "owner": "me"}, ["top-level key 'owner'"]),
    ({"name": 3, "analyses": [{"name": "a", "estimator": "auc", "outcome": "y",
                               "score": "s"}]}, ["'name'", "string"]),
    ({"analysis": [{"name": "a", "estimator": "auc", "outcome": "y", "score": "s"}],
      "analyses": []}, ["not both"]),
    ("[[analysis]\nname=", ["not valid TOML"]),
    ("name = 'x'\n[[analysis]]\nname = 'a'\nestimator = 'auc'\noutcome = 'y'\nscore = 's'\n"
     "[[analysis]]\nname = 'b'\nestimator = 'cox'\n", ["'b'", "missing key"]),
])
def test_validation_errors_name_analysis_and_key(spec, words) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(spec)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_not_a_spec() -> None:
    with pytest.raises(ConfigError, match="expected TOML text"):
        parse_spec(42)  # type: ignore[arg-type]


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[analysis]]\nname = "a"\nestimator = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_spec(bad)
    assert "bad.toml" in str(info.value) and "'nope'" in str(info.value)


def test_spec_objects_are_frozen() -> None:
    spec = parse_spec(GOOD)
    with pytest.raises(AttributeError):
        spec.analyses[0].outcome = "other"  # type: ignore[misc]


def test_estimators_take_an_analysis_or_its_table_and_refuse_anything_else() -> None:
    table = {"name": "crude_OR", "estimator": "two_by_two", "outcome": "y",
             "exposure": "x", "measure": "OR"}
    assert AnalysisSpec.coerce(table) == AnalysisSpec.from_dict(table)
    spec = AnalysisSpec.from_dict(table)
    assert AnalysisSpec.coerce(spec) is spec
    frame = pd.DataFrame({"y": [0, 1] * 20, "x": [0, 0, 1, 1] * 10})
    for call in (lambda a: estimate(frame, a),
                 lambda a: estimate_on_engine(BlockEngine(lambda columns: [frame]), a)):
        with pytest.raises(InputError, match="estimate: analysis must be an AnalysisSpec, "
                                             "got list"):
            call([table])
