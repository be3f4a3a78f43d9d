"""Issue 10, item 1: a score with few distinct values makes a model-evaluation analysis a
table, whatever the estimator's name.

The AUC of a 0/1 score (the exposure, sex) with its DeLong variance and ``n`` identifies
the 2x2 table of score by outcome (the integer search of ``tests/reconstruction.py`` finds
it); a 3-level score's AUC identifies its 2x3 table. The estimators report the table's
smallest cell and smallest score level (``table_min``, ``score_level_min``) and disclosure
control applies the threshold rule and the linked-table rule to them, on every data source.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.effects import Estimate, estimate_all
from fedsynth.effects.patient_level import CATEGORICAL_LEVELS
from fedsynth.spec import parse_spec
from site_agent.connectors import estimate_from_data
from site_agent.privacy import PrivacyLimits, guard, release
from tests.reconstruction import (
    Table,
    attack_site,
    three_level_tables,
    true_table,
    two_level_tables,
)

LIMITS = PrivacyLimits()
SCORE_ESTIMATORS = ("auc", "brier", "calibration_slope", "calibration_in_the_large",
                    "oe_ratio")


def _site() -> pd.DataFrame:
    frame = attack_site()
    # A 3-valued predicted probability (a points score mapped to risks) for the
    # estimators that need probabilities strictly inside (0, 1).
    frame["grade_risk"] = frame["grade"].map({0: 0.1, 1: 0.3, 2: 0.6})
    frame["sex_risk"] = frame["sex"].map({0: 0.2, 1: 0.4})
    return frame


def _spec(score: str, estimators=SCORE_ESTIMATORS, **extra):
    return parse_spec({"analysis": [{"name": f"{e}_{score}", "estimator": e,
                                     "outcome": "outcome", "score": score, **extra}
                                    for e in estimators]})


def _released(results: dict, spec) -> dict:
    """What the site sends: guard, then the vocabulary."""
    return release(guard(results, LIMITS, spec=spec), spec)


@pytest.mark.parametrize("score", ["sex_risk", "grade_risk"])
def test_every_score_estimator_reports_the_score_table(score: str) -> None:
    frame = _site()
    results = estimate_all(frame, _spec(score))
    table = pd.crosstab(frame[score], frame.outcome).to_numpy()
    for name, result in results.items():
        assert isinstance(result, Estimate), (name, result)
        assert result.cells["table_min"] == int(table.min()), name
        assert result.cells["score_level_min"] == int(table.sum(1).min()), name
        assert set(result.to_dict()) == {"yi", "vi", "se", "n"}        # cells stay
    out = _released(results, _spec(score))
    # Each estimate is a function of a table with a cell below 5 (2 and 3): all suppressed,
    # whatever the estimator's name.
    assert {r.code for r in out.values()} == {"disclosure_min_cell"}
    for r in out.values():
        assert set(re.findall(r"\d+", r.reason)) <= {"5"}


def test_a_continuous_score_forms_no_table() -> None:
    frame = _site()
    results = estimate_all(frame, _spec("risk_score"))
    assert frame["risk_score"].nunique() > CATEGORICAL_LEVELS
    for result in results.values():
        assert "table_min" not in result.cells and "score_level_min" not in result.cells
    out = _released(results, _spec("risk_score"))
    assert not any(r.refused for r in out.values())


def test_binary_score_auc_reconstruction_succeeds_unprotected_and_fails_on_release() -> None:
    frame = _site()
    spec = _spec("sex", ("auc",))
    truth = true_table(frame, "sex", (0, 1))
    assert truth.smallest() == 2
    # Without disclosure control the released numbers give the table away.
    raw = estimate_all(frame, spec)["auc_sex"]
    found = two_level_tables(raw.yi, raw.vi, raw.n)
    assert truth in found and all(t.smallest() == 2 for t in found)
    # What the site sends holds no number to search with.
    sent = _released(estimate_all(frame, spec), spec)["auc_sex"]
    assert sent.refused and sent.code == "disclosure_min_cell"
    assert not hasattr(sent, "yi") and set(sent.to_dict()) == {"refused"}


def test_three_level_score_auc_reconstruction() -> None:
    frame = _site()
    spec = _spec("grade", ("auc",), scale="logit")
    truth = true_table(frame, "grade", (0, 1, 2))
    raw = estimate_all(frame, spec)["auc_grade"]
    found = three_level_tables(raw.yi, raw.vi, raw.n, scale="logit")
    assert truth in found and all(t.smallest() == 3 for t in found)
    sent = _released(estimate_all(frame, spec), spec)["auc_grade"]
    assert sent.code == "disclosure_min_cell"


def test_foxtrot_exposure_and_sex_as_scores_are_suppressed(data_dir) -> None:
    # The reference site with a treated x outcome cell of 4 (and sex x outcome of 4):
    # before the fix an AUC with the exposure as its "score" was released.
    frame = pd.read_csv(data_dir / "sites_public" / "mtf-foxtrot.csv")
    spec = parse_spec({"analysis": [
        {"name": "auc_treated", "estimator": "auc", "outcome": "outcome", "score": "treated"},
        {"name": "auc_sex", "estimator": "auc", "outcome": "outcome", "score": "sex"},
        {"name": "brier_sex", "estimator": "brier", "outcome": "outcome", "score": "sex"},
        {"name": "auc_risk", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    ]})
    out = _released(estimate_all(frame, spec), spec)
    assert out["auc_treated"].code == out["auc_sex"].code == "disclosure_min_cell"
    assert out["brier_sex"].code == "disclosure_min_cell"
    assert not out["auc_risk"].refused


def _estimate(name: str, **details) -> Estimate:
    return Estimate(analysis=name, estimator="x", measure="x", yi=0.1, vi=0.04, se=0.2,
                    n=100, details=details)


def test_a_score_that_is_an_exposure_elsewhere_is_its_table_sibling() -> None:
    small = {"ai": 2, "bi": 28, "ci": 58, "di": 112}
    for table in ({"outcome": "outcome", "exposure": "sex"},      # same roles
                  {"outcome": "sex", "exposure": "outcome"}):     # roles swapped
        results = {"crude": Estimate(analysis="crude", estimator="two_by_two", measure="OR",
                                     yi=0.1, vi=0.04, se=0.2, n=100, cells=small,
                                     details=table),
                   # an AUC whose score is that column: no table of its own reported (say
                   # a score of 30 values), yet the same two columns
                   "auc": _estimate("auc", outcome="outcome", score="sex"),
                   "other": _estimate("other", outcome="outcome", score="risk_score")}
        out = guard(results, LIMITS)
        assert out["crude"].code == "disclosure_min_cell"
        assert out["auc"].code == "disclosure_linked_table", table
        assert out["other"] is results["other"]


def test_small_score_level_suppresses_every_use_of_the_score() -> None:
    # O/E's expected count sum(score) can reveal how many patients have each score value:
    # a rare level is a margin of the score, so every analysis using it goes.
    results = {"oe": Estimate(analysis="oe", estimator="oe_ratio", measure="OE", yi=0.1,
                              vi=0.04, se=0.2, n=100, cells={"score_level_min": 3},
                              details={"outcome": "y", "score": "grade_risk"}),
               "slope": _estimate("slope", outcome="y2", score="grade_risk"),
               "auc": _estimate("auc", outcome="y", score="risk_score")}
    out = guard(results, LIMITS)
    assert out["oe"].code == "disclosure_min_cell"
    assert out["slope"].code == "disclosure_linked_table"
    assert out["auc"] is results["auc"]


def test_few_valued_outcome_of_a_mean_difference_is_a_table() -> None:
    frame = _site()
    # A 3-level outcome by a 0/1 grouping: its means and variances per group come from the
    # 2x3 table grade x outcome, which has a cell of 3.
    spec = parse_spec({"analysis": [
        {"name": "md_grade", "estimator": "two_group", "outcome": "grade",
         "exposure": "outcome", "measure": "MD"},
        {"name": "lin_grade", "estimator": "linear", "outcome": "grade",
         "exposure": "outcome"},
        {"name": "md_los", "estimator": "two_group", "outcome": "los_days",
         "exposure": "treated", "measure": "MD"}]})
    results = estimate_all(frame, spec)
    table = pd.crosstab(frame.grade, frame.outcome).to_numpy()
    assert table.min() == 3
    for name in ("md_grade", "lin_grade"):
        assert results[name].cells["table_min"] == int(table.min())
        assert results[name].cells["outcome_level_min"] == int(table.sum(1).min())
    out = _released(results, spec)
    assert out["md_grade"].refused and out["lin_grade"].refused
    assert not out["md_los"].refused


def test_sql_source_reports_the_same_score_tables(tmp_path) -> None:
    frame = _site()
    url = f"sqlite:///{tmp_path / 'site.db'}"
    engine = sa.create_engine(url)
    frame.to_sql("site", engine, index=False)
    engine.dispose()
    spec = parse_spec({"analysis": [
        *[{"name": f"{e}_grade", "estimator": e, "outcome": "outcome",
           "score": "grade_risk"} for e in ("auc", "brier", "oe_ratio")],
        {"name": "auc_sex", "estimator": "auc", "outcome": "outcome", "score": "sex"},
        {"name": "auc_risk", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
        {"name": "md_grade", "estimator": "two_group", "outcome": "grade",
         "exposure": "outcome", "measure": "MD"}]})
    csv = estimate_all(frame, spec)
    sql = estimate_from_data({"url": url, "table": "site"}, spec)
    for name in csv:
        assert dict(sql[name].cells) == dict(csv[name].cells), name
    assert guard(sql, LIMITS, spec=spec).keys() == csv.keys()
    assert ({n: getattr(r, "code", None) for n, r in guard(sql, LIMITS, spec=spec).items()}
            == {n: getattr(r, "code", None) for n, r in guard(csv, LIMITS, spec=spec).items()})


@st.composite
def binary_score_sites(draw):
    """Small sites with a 0/1 score: four cells drawn freely (some below 5)."""
    cells = draw(st.lists(st.integers(0, 25), min_size=4, max_size=4))
    cases_hi, cases_lo, controls_hi, controls_lo = cells
    n = sum(cells)
    if min(cases_hi + cases_lo, controls_hi + controls_lo) < 2 or n < 20:
        cells = [c + 3 for c in cells]
        cases_hi, cases_lo, controls_hi, controls_lo = cells
    y = np.r_[np.ones(cases_hi + cases_lo, int), np.zeros(controls_hi + controls_lo, int)]
    s = np.r_[np.ones(cases_hi, int), np.zeros(cases_lo, int), np.ones(controls_hi, int),
              np.zeros(controls_lo, int)]
    truth = Table((cases_lo, cases_hi), (controls_lo, controls_hi))   # levels 0, 1
    return pd.DataFrame({"outcome": y, "s": s}), truth


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=binary_score_sites(), limit=st.integers(1, 8))
def test_released_auc_never_determines_a_small_cell(site, limit) -> None:
    # Whatever a site releases for the AUC of a 0/1 score, its numbers do not determine a
    # count below the limit: the integer search over 2x2 tables finds the site's own table
    # among those that fit them, and that table has no small cell. (Other tables may fit
    # the same AUC and variance, some with small cells, e.g. 8, 7, 8, 8 and 5, 1, 20, 5;
    # the coordinator cannot tell them apart, so it learns no small count.)
    frame, truth = site
    spec = parse_spec({"analysis": [
        {"name": "raw", "estimator": "auc", "outcome": "outcome", "score": "s"},
        {"name": "logit", "estimator": "auc", "outcome": "outcome", "score": "s",
         "scale": "logit"}]})
    limits = PrivacyLimits(min_cell_count=limit, min_n=1)
    out = release(guard(estimate_all(frame, spec), limits, spec=spec), spec)
    for name, result in out.items():
        if result.refused:
            continue
        assert truth.smallest() >= limit
        found = two_level_tables(result.yi, result.vi, result.n, spec[name].scale)
        assert truth in found, (name, truth, found)
        assert any(table.smallest() >= limit for table in found)
    if truth.smallest() < limit:          # a small table is never released
        assert all(r.refused for r in out.values())
