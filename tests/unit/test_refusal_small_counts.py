"""Issue 10, item 3: a refusal caused by a count below the limit says only that disclosure
control suppressed the analysis.

"the exposure perfectly predicts the outcome in one group", "no events", "the exposure
takes a single value", "each exposure group needs at least two rows" all tell the
coordinator that some count is 0 or 1, even when the table behind it was suppressed. The
estimators attach the counts behind a refusal (never sent); disclosure control rewords
such a refusal as a suppression (``disclosure_min_cell``, or ``disclosure_min_n`` for too
few rows) on files and SQL sources alike, and keeps refusals that reveal no count.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import site_agent.privacy as privacy
from fedsynth.spec import parse_spec
from site_agent.connectors import estimate_from_data
from site_agent.privacy import PrivacyLimits, guard

REVEALING = ("perfectly", "no events", "only events", "single value", "each exposure group",
             "two events", "constant", "separation", "monotone", "collinear", "too few")


def _frame(n: int = 80, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    y = (rng.random(n) < 0.4).astype(int)
    return pd.DataFrame({"y": y, "x": x, "age": rng.normal(60, 10, n).round(1),
                         "time": rng.exponential(100, n).round(1),
                         "score": rng.uniform(0.05, 0.95, n).round(4),
                         "los": rng.gamma(2, 3, n).round(1), "one": 1})


def _cases() -> dict[str, tuple[pd.DataFrame, dict]]:
    """Analyses whose estimator refuses because of a count of 0 or 1."""
    base = _frame()
    zero_cell = base.copy()
    zero_cell.loc[zero_cell.x == 1, "y"] = 0               # no event among the exposed
    no_events = base.assign(y=0)
    constant_x = base.assign(x=1)
    one_event = base.assign(y=0)
    one_event.loc[3, "y"] = 1
    lonely = base.copy()
    lonely["x"] = 0
    lonely.loc[5, "x"] = 1                                  # an exposed group of one
    binary_within = base.copy()
    binary_within.loc[binary_within.x == 1, "y"] = 1        # constant 0/1 outcome in a group
    cox_group = base.copy()
    cox_group.loc[cox_group.x == 1, "y"] = 0
    return {
        "logistic_zero_cell": (zero_cell, {"estimator": "logistic", "outcome": "y",
                                           "exposure": "x", "covariates": ["age"]}),
        "logistic_no_events": (no_events, {"estimator": "logistic", "outcome": "y",
                                           "exposure": "x"}),
        "two_by_two_constant_exposure": (constant_x, {"estimator": "two_by_two",
                                                      "outcome": "y", "exposure": "x"}),
        "two_group_constant_exposure": (constant_x, {"estimator": "two_group",
                                                     "outcome": "los", "exposure": "x"}),
        "linear_constant_exposure": (constant_x, {"estimator": "linear", "outcome": "los",
                                                  "exposure": "x"}),
        "cox_no_events_in_a_group": (cox_group, {"estimator": "cox", "time": "time",
                                                 "event": "y", "exposure": "x"}),
        "cox_no_events": (no_events, {"estimator": "cox", "time": "time", "event": "y",
                                      "exposure": "x"}),
        "auc_no_events": (no_events, {"estimator": "auc", "outcome": "y", "score": "score"}),
        "auc_one_event": (one_event, {"estimator": "auc", "outcome": "y", "score": "score"}),
        "oe_no_events": (no_events, {"estimator": "oe_ratio", "outcome": "y",
                                     "score": "score"}),
        "slope_no_events": (no_events, {"estimator": "calibration_slope", "outcome": "y",
                                        "score": "score"}),
        "citl_no_events": (no_events, {"estimator": "calibration_in_the_large",
                                       "outcome": "y", "score": "score"}),
        "two_group_lonely": (lonely, {"estimator": "two_group", "outcome": "los",
                                      "exposure": "x"}),
        "two_group_binary_constant": (binary_within, {"estimator": "two_group",
                                                      "outcome": "y", "exposure": "x"}),
        "logistic_constant_covariate": (base, {"estimator": "logistic", "outcome": "y",
                                               "exposure": "x", "covariates": ["one"]}),
        "too_few_rows": (base.head(3), {"estimator": "linear", "outcome": "los",
                                        "exposure": "x"}),
    }


def _source(kind: str, frame: pd.DataFrame, tmp_path: Path) -> dict:
    if kind == "csv":
        path = tmp_path / "site.csv"
        frame.to_csv(path, index=False)
        return {"path": path}
    url = f"sqlite:///{tmp_path / 'site.db'}"
    engine = sa.create_engine(url)
    frame.to_sql("site", engine, index=False)
    engine.dispose()
    return {"url": url, "table": "site"}


@pytest.mark.parametrize("kind", ["csv", "sqlite"])
@pytest.mark.parametrize("case", sorted(_cases()))
def test_refusal_caused_by_a_small_count_reads_as_suppression(case: str, kind: str,
                                                              tmp_path: Path) -> None:
    frame, keys = _cases()[case]
    spec = parse_spec({"analysis": [{"name": case, **keys}]})
    computed = estimate_from_data(_source(kind, frame, tmp_path), spec)
    assert computed[case].refused, computed[case]          # the estimator refuses...
    before = computed[case].reason
    assert any(word in before for word in REVEALING), before
    guarded = guard(computed, PrivacyLimits(), spec=spec)
    assert guarded[case].code in ("disclosure_min_cell", "disclosure_min_n"), guarded[case]
    sent = privacy.release(guarded, spec)[case]
    # ...and what is sent says only that disclosure control suppressed it.
    assert sent.code in ("disclosure_min_cell", "disclosure_min_n"), (case, sent)
    assert sent.reason.startswith("suppressed by the site's disclosure control")
    for word in REVEALING:
        assert word not in sent.reason, (case, sent.reason)
    assert set(re.findall(r"\d+", sent.reason)) <= {"5", "20"}
    assert before in (sent.detail or "")                    # the site's log still has it


def test_refusals_that_reveal_no_count_keep_their_reason(tmp_path: Path) -> None:
    frame = _frame().assign(grade=lambda f: f.x * 2)       # 0/2: not binary
    spec = parse_spec({"analysis": [
        {"name": "nonbinary", "estimator": "two_by_two", "outcome": "y", "exposure": "grade"},
        {"name": "missing", "estimator": "auc", "outcome": "y", "score": "bmi"},
        {"name": "probability", "estimator": "oe_ratio", "outcome": "y", "score": "los"}]})
    out = privacy.release(guard(estimate_from_data(_source("csv", frame, tmp_path), spec),
                        PrivacyLimits(), spec=spec), spec)
    assert out["nonbinary"].code == "non_binary"
    assert out["missing"].reason == "the data has no column 'bmi'"
    assert out["probability"].code == "invalid_values"


def test_a_count_at_the_limit_is_not_hidden(tmp_path: Path) -> None:
    # With a limit of 1, one event is not a count below the limit: the estimator's own
    # sentence may go (it says "at least two events", not the count).
    frame, keys = _cases()["auc_one_event"]
    spec = parse_spec({"analysis": [{"name": "a", **keys}]})
    computed = estimate_from_data(_source("csv", frame, tmp_path), spec)
    sent = privacy.release(guard(computed, PrivacyLimits(min_cell_count=1, min_n=1), spec=spec),
                   spec)["a"]
    assert sent.code == "too_few_rows" and "two events" in sent.reason
    # At the default limit it is a suppression.
    assert privacy.release(guard(computed, PrivacyLimits(), spec=spec), spec)["a"].code == \
        "disclosure_min_cell"


def test_a_refused_table_with_a_zero_cell_takes_its_siblings(tmp_path: Path) -> None:
    # The logistic model refuses (zero cell); the linear model of the same 0/1 outcome on
    # the same exposure would give the table away: both are suppressed.
    frame, keys = _cases()["logistic_zero_cell"]
    spec = parse_spec({"analysis": [
        {"name": "logit", **keys},
        {"name": "auc_x", "estimator": "auc", "outcome": "y", "score": "x"},
        {"name": "los", "estimator": "linear", "outcome": "los", "exposure": "x"}]})
    out = guard(estimate_from_data(_source("csv", frame, tmp_path), spec), PrivacyLimits(),
                spec=spec)
    assert out["logit"].code == "disclosure_min_cell"
    assert out["auc_x"].code in ("disclosure_min_cell", "disclosure_linked_table")
    assert not out["los"].refused
