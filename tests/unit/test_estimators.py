"""Patient-level estimators: every refusal path, missing values, result types, DeLong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.effects import REFUSAL_CODES, Estimate, Refusal, estimate, estimate_all
from fedsynth.effects.delong import delong_auc
from fedsynth.errors import InputError
from fedsynth.spec import AnalysisSpec, parse_spec


def make_data(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    sex = rng.integers(0, 2, n)
    treated = rng.integers(0, 2, n)
    lp = -1 + 0.03 * (age - 60) + 0.3 * sex - 0.5 * treated
    risk = 1 / (1 + np.exp(-lp))
    outcome = rng.binomial(1, risk)
    time = rng.exponential(50, n).round(1) + 0.1
    return pd.DataFrame({"age": age, "sex": sex, "treated": treated, "outcome": outcome,
                         "los": rng.normal(7, 2, n) - treated, "time": time,
                         "event": rng.binomial(1, 0.6, n),
                         "risk": np.clip(risk + rng.normal(0, 0.02, n), 0.01, 0.99)})


def spec_of(**keys) -> AnalysisSpec:
    return AnalysisSpec.from_dict({"name": "a", **keys})


LOGISTIC = dict(estimator="logistic", outcome="outcome", exposure="treated",
                covariates=["age", "sex"])
LINEAR = dict(estimator="linear", outcome="los", exposure="treated", covariates=["age"])
COX = dict(estimator="cox", time="time", event="event", exposure="treated",
           covariates=["age"])
TWO_BY_TWO = dict(estimator="two_by_two", outcome="outcome", exposure="treated")
TWO_GROUP = dict(estimator="two_group", outcome="los", exposure="treated")
AUC = dict(estimator="auc", outcome="outcome", score="risk")
SLOPE = dict(estimator="calibration_slope", outcome="outcome", score="risk")
CITL = dict(estimator="calibration_in_the_large", outcome="outcome", score="risk")
OE = dict(estimator="oe_ratio", outcome="outcome", score="risk")
BRIER = dict(estimator="brier", outcome="outcome", score="risk")
ALL = [TWO_BY_TWO, TWO_GROUP, LOGISTIC, LINEAR, COX, AUC, SLOPE, CITL, OE, BRIER]


def refusal(df: pd.DataFrame, keys: dict) -> Refusal:
    result = estimate(df, spec_of(**keys))
    assert isinstance(result, Refusal), result
    assert result.code in REFUSAL_CODES
    assert result.analysis == "a" and result.reason
    assert result.to_dict() == {"refused": result.reason}
    return result


# ------------------------------------------------------------------ happy paths

@pytest.mark.parametrize("keys", ALL, ids=[k["estimator"] for k in ALL])
def test_every_estimator_returns_an_estimate(keys) -> None:
    result = estimate(make_data(), spec_of(**keys))
    assert isinstance(result, Estimate), result
    assert result.estimator == keys["estimator"] and result.n == 400
    assert result.se == pytest.approx(np.sqrt(result.vi)) and result.vi > 0
    assert set(result.to_dict()) == {"yi", "vi", "se", "n"}
    ci = result.confidence_interval(0.95)
    assert ci.low < result.yi < ci.high


def test_linear_matches_least_squares() -> None:
    df = make_data()
    result = estimate(df, spec_of(**LINEAR))
    x = np.column_stack([np.ones(len(df)), df["treated"], df["age"]])
    beta, rss, *_ = np.linalg.lstsq(x, df["los"], rcond=None)
    sigma2 = rss[0] / (len(df) - 3)
    assert result.yi == pytest.approx(beta[1], rel=1e-10)
    assert result.vi == pytest.approx(sigma2 * np.linalg.inv(x.T @ x)[1, 1], rel=1e-10)


def test_crude_logistic_equals_crude_odds_ratio() -> None:
    # With no covariates, the logistic MLE of a 0/1 exposure is exactly the 2x2 log OR
    # with the Woolf variance: an identity that checks the GLM fit end to end.
    df = make_data()
    crude = estimate(df, spec_of(estimator="logistic", outcome="outcome",
                                 exposure="treated"))
    table = estimate(df, spec_of(**TWO_BY_TWO))
    assert crude.yi == pytest.approx(table.yi, rel=1e-9)
    assert crude.vi == pytest.approx(table.vi, rel=1e-7)


def test_cells_are_kept_but_never_sent() -> None:
    result = estimate(make_data(), spec_of(**TWO_BY_TWO))
    assert set(result.cells) == {"ai", "bi", "ci", "di"} and sum(result.cells.values()) == 400
    assert "cells" not in result.to_dict() and "details" not in result.to_dict()
    with pytest.raises(TypeError):
        result.cells["ai"] = 0  # type: ignore[index]
    assert result.details["outcome"] == "outcome" and result.details["exposure"] == "treated"
    for keys, expected in [(LOGISTIC, {"events", "non_events"}), (COX, {"events"}),
                           (AUC, {"events", "non_events"}), (OE, {"observed"}),
                           (TWO_GROUP, {"n_exposed", "n_unexposed"})]:
        assert expected <= set(estimate(make_data(), spec_of(**keys)).cells)


def test_missing_values_are_dropped_and_counted() -> None:
    df = make_data()
    df.loc[[0, 5, 9], "age"] = np.nan
    df.loc[[1], "risk"] = None
    with_age = estimate(df, spec_of(**LOGISTIC))
    assert with_age.n == 397 and with_age.n_dropped == 3
    crude = estimate(df, spec_of(**TWO_BY_TWO))
    assert crude.n == 400 and crude.n_dropped == 0     # age is not used there
    auc = estimate(df, spec_of(**AUC))
    assert auc.n == 399 and auc.n_dropped == 1
    expected = estimate(df.dropna(subset=["age"]), spec_of(**LOGISTIC))
    assert with_age.yi == expected.yi


def test_boolean_columns_are_accepted() -> None:
    df = make_data()
    df["treated"] = df["treated"].astype(bool)
    assert isinstance(estimate(df, spec_of(**TWO_BY_TWO)), Estimate)


def test_estimate_all_keeps_going_after_a_refusal() -> None:
    spec = parse_spec({"analyses": [
        {"name": "bad", "estimator": "logistic", "outcome": "nope", "exposure": "treated"},
        {"name": "good", "estimator": "auc", "outcome": "outcome", "score": "risk"}]})
    results = estimate_all(make_data(), spec)
    assert list(results) == ["bad", "good"]
    assert isinstance(results["bad"], Refusal) and results["bad"].code == "missing_column"
    assert isinstance(results["good"], Estimate)
    assert estimate_all(make_data(), spec.to_toml()).keys() == results.keys()


def test_dict_analysis_and_bad_arguments() -> None:
    assert isinstance(estimate(make_data(), {"name": "a", **AUC}), Estimate)
    with pytest.raises(InputError, match="DataFrame"):
        estimate([1, 2], spec_of(**AUC))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="AnalysisSpec"):
        estimate(make_data(), 3)  # type: ignore[arg-type]


def test_estimate_type_validates() -> None:
    with pytest.raises(ValueError, match="vi"):
        Estimate("a", "auc", "AUC", yi=0.5, vi=0.0, se=0.0, n=10)
    with pytest.raises(ValueError, match="yi"):
        Estimate("a", "auc", "AUC", yi=float("nan"), vi=1.0, se=1.0, n=10)


# ------------------------------------------------------------------ refusals

def test_refusal_missing_column() -> None:
    for keys in ALL:
        df = make_data().drop(columns=[next(c for c in ("time", "los", "outcome")
                                            if c in keys.values())])
        r = refusal(df, keys)
        assert r.code == "missing_column"


def test_refusal_infinite_values() -> None:
    df = make_data()
    df.loc[7, "los"] = np.inf
    r = refusal(df, TWO_GROUP)
    assert r.code == "invalid_values" and "'los'" in r.reason and "infinite" in r.reason


def test_refusal_text_values() -> None:
    df = make_data()
    df["age"] = df["age"].astype(object)
    df.loc[3, "age"] = "sixty"
    r = refusal(df, LOGISTIC)
    assert r.code == "invalid_values" and "'age'" in r.reason


@pytest.mark.parametrize("keys", ALL, ids=[k["estimator"] for k in ALL])
def test_refusal_no_rows(keys) -> None:
    r = refusal(make_data().iloc[:0], keys)
    assert r.code == "too_few_rows"


@pytest.mark.parametrize("keys", [TWO_GROUP, LOGISTIC, LINEAR, COX, AUC, SLOPE, CITL],
                         ids=lambda k: k["estimator"])
def test_refusal_too_few_rows(keys) -> None:
    df = make_data().iloc[:3].copy()
    df["treated"] = [0, 1, 0]
    df["outcome"] = [0, 1, 1]
    df["event"] = [1, 1, 1]
    assert refusal(df, keys).code == "too_few_rows"


@pytest.mark.parametrize("keys,column", [(TWO_BY_TWO, "outcome"), (TWO_BY_TWO, "treated"),
                                         (LOGISTIC, "outcome"), (COX, "event"),
                                         (AUC, "outcome"), (BRIER, "outcome"),
                                         (LINEAR, "treated")])
def test_refusal_non_binary(keys, column) -> None:
    df = make_data()
    df.loc[0, column] = 2
    r = refusal(df, keys)
    assert r.code == "non_binary" and repr(column) in r.reason


@pytest.mark.parametrize("keys", [TWO_BY_TWO, TWO_GROUP, LOGISTIC, LINEAR, COX],
                         ids=lambda k: k["estimator"])
def test_refusal_constant_exposure(keys) -> None:
    df = make_data()
    df["treated"] = 1
    assert refusal(df, keys).code == "constant_exposure"


@pytest.mark.parametrize("keys", [LOGISTIC, AUC, SLOPE, CITL, OE],
                         ids=lambda k: k["estimator"])
@pytest.mark.parametrize("value", [0, 1])
def test_refusal_no_events(keys, value) -> None:
    df = make_data()
    df["outcome"] = value
    assert refusal(df, keys).code == "no_events"


def test_refusal_cox_no_events_and_negative_time() -> None:
    df = make_data()
    df["event"] = 0
    assert refusal(df, COX).code == "no_events"
    df = make_data()
    df.loc[4, "time"] = -1
    assert refusal(df, COX).code == "invalid_values"


def test_refusal_separation_by_exposure() -> None:
    df = make_data()
    df["outcome"] = df["treated"]          # exposure predicts the outcome perfectly
    assert refusal(df, LOGISTIC).code == "separation"
    df = make_data()
    df.loc[df["treated"] == 1, "outcome"] = 0    # quasi-complete: no events when exposed
    assert refusal(df, LOGISTIC).code == "separation"
    df = make_data()
    df.loc[df["treated"] == 1, "event"] = 0
    assert refusal(df, COX).code == "separation"


def test_refusal_cox_monotone_likelihood_in_a_covariate() -> None:
    df = make_data()
    df["time"] = 200 - df["age"]      # the oldest at risk always fails first
    df["event"] = 1
    r = refusal(df, COX)
    assert r.code == "not_converged" and "monotone" in r.reason


def test_refusal_separation_by_covariate() -> None:
    df = make_data()
    df["outcome"] = (df["age"] > 60).astype(int)   # a covariate separates the outcome
    assert refusal(df, LOGISTIC).code == "separation"


def test_refusal_zero_variance() -> None:
    df = make_data()
    df.loc[df["treated"] == 1, "los"] = 5.0
    assert refusal(df, TWO_GROUP).code == "zero_variance"
    df = make_data()
    df["los"] = 2.0 + 3.0 * df["treated"] + 0.5 * df["age"]    # exact fit
    assert refusal(df, LINEAR).code == "zero_variance"
    df = make_data()
    df["risk"] = np.where(df["outcome"] == 1, 0.9, 0.1)        # perfect discrimination
    assert refusal(df, AUC).code == "zero_variance"
    assert refusal(df, {**AUC, "scale": "logit"}).code == "zero_variance"


def test_refusal_rom_needs_positive_means() -> None:
    df = make_data()
    df["los"] = df["los"] - 100
    assert refusal(df, {**TWO_GROUP, "measure": "ROM"}).code == "invalid_values"


def test_refusal_singular_design() -> None:
    df = make_data()
    df["age2"] = df["age"] * 2
    assert refusal(df, {**LOGISTIC, "covariates": ["age", "age2"]}).code == "singular"
    df["one"] = 1.0
    assert refusal(df, {**LINEAR, "covariates": ["one"]}).code == "singular"
    assert refusal(df, {**COX, "covariates": ["age", "age2"]}).code == "singular"
    df["risk"] = 0.3
    assert refusal(df, SLOPE).code == "singular"


@pytest.mark.parametrize("keys", [SLOPE, CITL, OE, BRIER], ids=lambda k: k["estimator"])
def test_refusal_score_out_of_range(keys) -> None:
    df = make_data()
    df.loc[0, "risk"] = 1.5
    r = refusal(df, keys)
    assert r.code == "invalid_values" and "'risk'" in r.reason


def test_refusal_auc_needs_two_of_each() -> None:
    df = make_data()
    df["outcome"] = 0
    df.loc[0, "outcome"] = 1
    assert refusal(df, AUC).code == "too_few_rows"


def test_numerical_failure_becomes_refusal(monkeypatch) -> None:
    import statsmodels.api as sm

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(sm, "OLS", broken)
    r = refusal(make_data(), LINEAR)
    # The library's message stays at the site (detail); the sentence sent is fixed.
    assert r.code == "not_converged" and "LinAlgError" not in r.reason
    assert r.reason == "the linear fit failed numerically" and "LinAlgError" in r.detail


def test_unexpected_failure_refuses_only_that_analysis(monkeypatch, caplog) -> None:
    from fedsynth.effects import patient_level

    def bug(df, analysis):
        raise KeyError("boom")

    monkeypatch.setitem(patient_level._ESTIMATORS, "brier", bug)
    spec = parse_spec({"analyses": [{"name": "b", **BRIER}, {"name": "c", **AUC}]})
    results = estimate_all(make_data(), spec)
    assert results["b"].code == "internal_error" and "KeyError" not in results["b"].reason
    assert "KeyError: 'boom'" in results["b"].detail
    assert isinstance(results["c"], Estimate)
    assert "failed" in caplog.text


def test_refusal_reasons_carry_no_counts() -> None:
    # Refusals travel to the coordinator: their text must not reveal a count.
    df = make_data()
    df["outcome"] = 0
    df.loc[:2, "outcome"] = 1
    for keys in (AUC, LOGISTIC):
        df2 = df.copy()
        if keys is AUC:
            df2.loc[1:, "outcome"] = 0
        text = estimate(df2, spec_of(**keys)).to_dict().get("refused", "")
        assert not any(ch.isdigit() for ch in text), text


# ------------------------------------------------------------------ DeLong

def naive_auc(score, outcome):
    cases, controls = score[outcome == 1], score[outcome == 0]
    psi = (cases[:, None] > controls[None, :]) + 0.5 * (cases[:, None] == controls[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.var(v10, ddof=1) / len(cases) + np.var(v01, ddof=1) / len(controls)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.booleans()), min_size=4, max_size=60))
def test_delong_midranks_equal_the_quadratic_definition(rows) -> None:
    score = np.array([r[0] for r in rows], dtype=float)   # few values: many ties
    outcome = np.array([int(r[1]) for r in rows])
    if min(outcome.sum(), len(outcome) - outcome.sum()) < 2:
        with pytest.raises(ValueError):
            delong_auc(score, outcome)
        return
    result = delong_auc(score, outcome)
    auc, var = naive_auc(score, outcome)
    assert result.auc == pytest.approx(auc, abs=1e-12)
    assert result.variance == pytest.approx(var, rel=1e-9, abs=1e-15)


# ------------------------------------------------------------------ robustness (fuzz)

cell = st.one_of(st.sampled_from([0, 1, 0, 1, 2, -1, 0.5, 1e9]),
                 st.floats(allow_nan=True, allow_infinity=False, width=32),
                 st.none(), st.sampled_from(["x", "", "1"]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30).flatmap(lambda n: st.lists(
    st.tuples(*(cell,) * 8), min_size=n, max_size=n)),
    st.sampled_from(ALL + [{**AUC, "scale": "logit"}, {**TWO_GROUP, "measure": "SMD"},
                           {**TWO_GROUP, "measure": "ROM"}, {**TWO_BY_TWO, "measure": "RR"},
                           {**COX, "ties": "breslow"}]))
def test_any_data_gives_an_estimate_or_a_refusal(rows, keys) -> None:
    # The contract: whatever the rows hold, estimate() returns, never raises.
    df = pd.DataFrame(rows, columns=["age", "sex", "treated", "outcome", "los", "time",
                                     "event", "risk"])
    result = estimate(df, spec_of(**keys))
    assert isinstance(result, (Estimate, Refusal))
    if isinstance(result, Refusal):
        assert result.code in REFUSAL_CODES and result.code != "internal_error", result
    else:
        assert np.isfinite(result.yi) and result.vi > 0 and result.n >= 2
