"""A held-out site answering IECV steps (site_agent/steps.py) and their wire form.

The site scores its own rows with the model it is sent and answers only the aggregates
of :func:`fedsynth.models.iecv.evaluate_site`; the model's coefficients are bounded as an
IRLS step's, a model that does not match the round's is refused in fixed words, and the
step cap counts each IECV development fit (``held_out``) apart from the round's own fits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.config import DataConfig, PrivacyConfig, SiteConfig
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.errors import InputError
from fedsynth.models import build_design
from fedsynth.models.glm import fit_one_stage
from fedsynth.models.iecv import MEASURES, ScoringModel, evaluate_site
from fedsynth.serde import (
    IECV_MEASURES,
    ModelStepOrder,
    StepAnswerContent,
    WireAggregates,
    WireMeasures,
    WireRefusal,
    decode_model_step,
    decode_step_answer,
    encode_model_step,
    encode_step_answer,
)
from fedsynth.spec import parse_spec
from site_agent.steps import ModelSteps, describe_answer

T0 = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
SPEC = trauma_spec_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return generate_trauma(3, seed=5)


@pytest.fixture(scope="module")
def scoring(frames) -> ScoringModel:
    """tbi_mortality developed on the two other sites."""
    model = next(m for m in parse_spec(SPEC).models if m.name == "tbi_mortality")
    designs = {s: build_design(f, model) for s, f in frames.items() if s != "mtf-alpha"}
    one = fit_one_stage(designs)
    return ScoringModel(variant="global", family="binomial", names=one.names,
                        coefficients=one.coefficients, developed_on=tuple(designs))


def _config(tmp_path: Path, frame: pd.DataFrame) -> SiteConfig:
    data = tmp_path / "site.csv"
    frame.to_csv(data, index=False)
    return SiteConfig(name="mtf-alpha", coordinator="127.0.0.1:1", tls=None,
                      data=DataConfig(path=data), privacy=PrivacyConfig(),
                      state_file=tmp_path / "site.state.json", policy=None,
                      config_path=tmp_path / "site.toml")


def _iecv(scoring: ScoringModel, *, step: int = 0, model: str = "tbi_mortality"
          ) -> ModelStepOrder:
    return ModelStepOrder(round_id="r-1", step_id=f"i{step}", model=model, kind="iecv",
                          fit="iecv", sequence=step, spec_toml=SPEC, deadline=T0,
                          scoring=scoring.to_dict())


def test_the_site_answers_the_measures_of_its_own_rows(tmp_path, frames, scoring) -> None:
    steps = ModelSteps(_config(tmp_path, frames["mtf-alpha"]))
    answer = steps.answer(_iecv(scoring))
    assert isinstance(answer, WireMeasures)
    model = next(m for m in parse_spec(SPEC).models if m.name == "tbi_mortality")
    want = evaluate_site(build_design(frames["mtf-alpha"], model), scoring).to_dict()
    assert answer.to_dict() == want
    assert set(answer.to_dict()) <= {*MEASURES, "recalibration", "refused"}
    assert "held-out performance" in describe_answer(_iecv(scoring), answer)
    recal = steps.answer(_iecv(dataclasses.replace(scoring, variant="global_recalibrated",
                                                   recalibrate=True), step=1))
    assert isinstance(recal, WireMeasures)
    assert recal.values["calibration_in_the_large"] == pytest.approx(0.0, abs=1e-7)
    assert recal.values["recalibration"] == pytest.approx(
        answer.values["calibration_in_the_large"], rel=1e-8)
    assert steps.counts.get("r-1", "tbi_mortality/iecv") == 2


def test_an_extreme_or_foreign_model_is_refused(tmp_path, frames, scoring) -> None:
    steps = ModelSteps(_config(tmp_path, frames["mtf-alpha"]))
    coefs = scoring.coefficients.copy()
    coefs[scoring.names.index("age")] = 40.0          # isolates patients of one age
    refused = steps.answer(_iecv(dataclasses.replace(scoring, coefficients=coefs)))
    assert isinstance(refused, WireRefusal) and refused.code == "disclosure_coefficients"
    other = ScoringModel(variant="global", family="binomial", names=("intercept", "x"),
                         coefficients=np.array([0.0, 1.0]))
    foreign = steps.answer(_iecv(other, step=1))
    assert isinstance(foreign, WireRefusal) and foreign.code == "invalid_request"
    assert "does not match the round's model" in foreign.reason


def test_development_fits_are_capped_apart(tmp_path, frames) -> None:
    steps = ModelSteps(_config(tmp_path, frames["mtf-alpha"]))
    base = ModelStepOrder(round_id="r-1", step_id="d0", model="tbi_mortality", kind="irls",
                          fit="one_stage", sequence=0, spec_toml=SPEC, deadline=T0)
    assert isinstance(steps.answer(base), WireAggregates)
    held = dataclasses.replace(base, step_id="d1", held_out="mtf-bravo")
    assert isinstance(steps.answer(held), WireAggregates)
    assert steps.counts.get("r-1", "tbi_mortality/one_stage") == 1
    assert steps.counts.get("r-1", "tbi_mortality/one_stage/without:mtf-bravo") == 1


def test_iecv_steps_and_answers_survive_the_wire(scoring) -> None:
    aliased = dataclasses.replace(
        scoring, coefficients=np.where(np.arange(len(scoring.names)) == 2, np.nan,
                                       scoring.coefficients))
    order = dataclasses.replace(_iecv(aliased), held_out="")
    back = decode_model_step(encode_model_step(order))
    assert back.kind == "iecv" and back.held_out == ""
    again = ScoringModel.from_dict(back.scoring)
    assert again.names == aliased.names and math.isnan(again.coefficients[2])
    np.testing.assert_array_equal(np.nan_to_num(again.coefficients, nan=7.0),
                                  np.nan_to_num(aliased.coefficients, nan=7.0))
    dev = decode_model_step(encode_model_step(dataclasses.replace(
        order, kind="irls", fit="one_stage", scoring=None, held_out="mtf-bravo")))
    assert dev.held_out == "mtf-bravo"
    measures = WireMeasures(n=300, values={"auc": 0.8, "O": 30.0, "E": 28.5,
                                           "log_OE": math.nan},
                            refused={"log_OE": "no events"})
    content = StepAnswerContent("r-1", "mtf-alpha", b"n" * 16, T0, "i0", b"d" * 32, measures)
    decoded = decode_step_answer(encode_step_answer(content))
    assert decoded.kind == "iecv"
    assert decoded.result.to_dict() == measures.to_dict()
    assert decoded.result.to_dict()["log_OE"] is None


def test_a_bad_iecv_answer_names_the_field() -> None:
    bad = WireMeasures(n=10, values={}, refused={"patient_42": "x"})
    content = StepAnswerContent("r-1", "mtf-alpha", b"n" * 16, T0, "i0", b"d" * 32, bad)
    with pytest.raises(InputError, match="refused names no measure"):
        decode_step_answer(encode_step_answer(content))


_number = st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=64),
                    st.just(math.nan))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 10**9),
       values=st.fixed_dictionaries({k: _number for k in IECV_MEASURES}),
       refused=st.dictionaries(st.sampled_from(IECV_MEASURES),
                               st.text(min_size=1, max_size=40), max_size=3))
def test_any_measures_survive_the_signed_bytes(n, values, refused) -> None:
    """Property: an IECV answer decodes to what was encoded (NaN stays NaN: null)."""
    sent = WireMeasures(n=n, values=values, refused=refused)
    content = StepAnswerContent("r-1", "mtf-alpha", b"n" * 16, T0, "i0", b"d" * 32, sent)
    got = decode_step_answer(encode_step_answer(content)).result
    assert isinstance(got, WireMeasures)
    assert got.to_dict() == sent.to_dict()
