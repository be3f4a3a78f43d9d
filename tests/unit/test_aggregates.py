"""Every site estimator as a mergeable aggregate: chunked = whole (1e-12), = DataFrame path.

The engine of :mod:`fedsynth.effects.chunked` sums per-row terms block by block; the
result must not depend on how the rows are split (only the summation order changes), and
must equal :func:`fedsynth.effects.estimate` on the same rows, refusals included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsynth.effects.aggregates as agg
from fedsynth.effects import estimate_all
from fedsynth.effects.aggregates import (
    CoxTimeSums,
    auc_from_counts,
    cox_bucket_sums,
    cox_newton_terms,
)
from fedsynth.effects.chunked import BlockEngine, estimate_all_on_engine
from fedsynth.effects.delong import delong_auc
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.spec import parse_spec
from site_agent.data import load_table
from tests._data_builders import with_gaps

DATA = Path(__file__).resolve().parents[1] / "data"
SITES = sorted((DATA / "sites_public").glob("mtf-*.csv"))

ALL = parse_spec({"analysis": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "crude_RD", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RD"},
    {"name": "los_SMD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "los_ROM", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "ROM"},
    {"name": "outcome_MD", "estimator": "two_group", "outcome": "outcome",
     "exposure": "treated", "measure": "MD"},
    {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome", "score": "risk_score"},
    {"name": "brier", "estimator": "brier", "outcome": "outcome", "score": "risk_score"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "raw"},
    {"name": "logit_auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "logit"},
    {"name": "sex_auc", "estimator": "auc", "outcome": "outcome", "score": "sex"},
    {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "adjusted_MD", "estimator": "linear", "outcome": "los_days",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "logHR_efron", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age", "sex"], "ties": "efron"},
    {"name": "logHR_breslow", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age"], "ties": "breslow"},
    {"name": "slope", "estimator": "calibration_slope", "outcome": "outcome",
     "score": "risk_score"},
    {"name": "citl", "estimator": "calibration_in_the_large", "outcome": "outcome",
     "score": "risk_score"},
]})
ESTIMATORS = {a.estimator for a in ALL.analyses}


def test_the_spec_covers_every_estimator() -> None:
    from fedsynth.effects.chunked import _ESTIMATORS
    from fedsynth.effects.patient_level import _ESTIMATORS as FRAME_ESTIMATORS
    assert ESTIMATORS == set(FRAME_ESTIMATORS) == set(_ESTIMATORS)


def assert_same(a: dict, b: dict, rel: float) -> None:
    assert list(a) == list(b)
    for name, x in a.items():
        y = b[name]
        assert type(x) is type(y), (name, x, y)
        if isinstance(x, Refusal):
            assert (x.code, x.reason, dict(x.cells)) == (y.code, y.reason, dict(y.cells)), name
            continue
        assert isinstance(y, Estimate)
        assert (x.measure, x.n, x.n_dropped, dict(x.cells), x.details) == \
            (y.measure, y.n, y.n_dropped, dict(y.cells), y.details), name
        assert y.yi == pytest.approx(x.yi, rel=rel, abs=1e-14), name
        assert y.vi == pytest.approx(x.vi, rel=rel, abs=1e-16), name


@pytest.mark.parametrize(("site", "chunk"), [(site, 500) for site in SITES] +
                         [(SITES[0], 97)], ids=lambda v: getattr(v, "stem", str(v)))
def test_chunked_equals_whole_and_the_dataframe_estimators(site: Path, chunk: int) -> None:
    frame = with_gaps(load_table(site), seed=len(site.stem))
    whole = estimate_all_on_engine(BlockEngine.from_frame(frame), ALL)
    chunked = estimate_all_on_engine(BlockEngine.from_frame(frame, chunk), ALL)
    assert_same(whole, chunked, rel=1e-12)
    assert all(isinstance(r, Estimate) for r in whole.values()), whole
    assert_same(estimate_all(frame, ALL), whole, rel=1e-10)


def test_categorical_covariates_chunked() -> None:
    rng = np.random.default_rng(3)
    n = 900
    grade = rng.choice(["low", "mid", "high"], n)
    treated = rng.integers(0, 2, n)
    age = rng.normal(60, 10, n)
    lp = -1 + 0.5 * treated + 0.02 * (age - 60) + (grade == "high") * 0.7
    frame = pd.DataFrame({
        "outcome": (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int), "treated": treated,
        "age": age, "grade": grade, "los": rng.gamma(2, 3, n) + treated,
        "time": np.round(rng.exponential(10, n)), "event": rng.integers(0, 2, n)})
    frame.loc[5, "grade"] = None
    cat = {"grade": ["low", "mid", "high", "absent"]}
    spec = parse_spec({"analysis": [
        {"name": "lr", "estimator": "logistic", "outcome": "outcome", "exposure": "treated",
         "covariates": ["age", "grade"], "categorical": cat},
        {"name": "lm", "estimator": "linear", "outcome": "los", "exposure": "treated",
         "covariates": ["grade", "age"], "categorical": cat},
        {"name": "cox", "estimator": "cox", "time": "time", "event": "event",
         "exposure": "treated", "covariates": ["grade"], "categorical": cat}]})
    whole = estimate_all_on_engine(BlockEngine.from_frame(frame), spec)
    assert_same(whole, estimate_all_on_engine(BlockEngine.from_frame(frame, 50), spec), 1e-12)
    assert_same(estimate_all(frame, spec), whole, rel=1e-10)
    assert all(isinstance(r, Estimate) for r in whole.values())


def refusal_frames() -> list[tuple[str, pd.DataFrame, dict]]:
    rng = np.random.default_rng(5)
    n = 60
    base = pd.DataFrame({"y": rng.integers(0, 2, n), "x": rng.integers(0, 2, n),
                         "c": rng.normal(size=n), "p": rng.uniform(0.05, 0.95, n),
                         "t": rng.exponential(5, n), "d": rng.integers(0, 2, n)})
    out = []
    bad_y = base.assign(y=base.y + 0.5 * (np.arange(n) == 40))
    out.append(("non_binary", bad_y, {"estimator": "two_by_two", "outcome": "y",
                                      "exposure": "x"}))
    text = base.astype({"c": object})
    text.loc[45, "c"] = "n/a?"
    out.append(("not_numeric", text, {"estimator": "logistic", "outcome": "y",
                                      "exposure": "x", "covariates": ["c"]}))
    out.append(("missing", base, {"estimator": "linear", "outcome": "c", "exposure": "x",
                                  "covariates": ["nope"]}))
    out.append(("constant_exposure", base.assign(x=1), {"estimator": "two_group",
                                                        "outcome": "c", "exposure": "x"}))
    out.append(("no_events", base.assign(y=0), {"estimator": "auc", "outcome": "y",
                                                "score": "p"}))
    out.append(("too_few", base.head(1), {"estimator": "brier", "outcome": "y",
                                          "score": "p"}))
    out.append(("probability", base.assign(p=base.p * 2), {"estimator": "oe_ratio",
                                                           "outcome": "y", "score": "p"}))
    out.append(("negative_time", base.assign(t=base.t - 3), {
        "estimator": "cox", "time": "t", "event": "d", "exposure": "x"}))
    out.append(("singular", base.assign(c2=base.c * 2), {
        "estimator": "logistic", "outcome": "y", "exposure": "x", "covariates": ["c", "c2"]}))
    inf = base.copy()
    inf.loc[50, "c"] = np.inf
    out.append(("infinite", inf, {"estimator": "linear", "outcome": "c", "exposure": "x"}))
    out.append(("constant_score", base.assign(p=0.3), {
        "estimator": "calibration_slope", "outcome": "y", "score": "p"}))
    return out


@pytest.mark.parametrize("case", refusal_frames(), ids=lambda c: c[0])
def test_refusals_are_the_same_on_every_split(case: tuple[str, pd.DataFrame, dict]) -> None:
    _, frame, analysis = case
    spec = parse_spec({"analysis": [{"name": "a", **analysis}]})
    expected = estimate_all(frame, spec)
    assert isinstance(expected["a"], Refusal)
    for chunk in (None, 7):
        assert_same(expected, estimate_all_on_engine(BlockEngine.from_frame(frame, chunk),
                                                     spec), rel=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=4, max_size=80),
       st.integers(1, 10))
def test_delong_from_merged_counts_is_delong(rows: list[tuple[int, int]], parts: int) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float) / 3.0
    if min(y.sum(), len(y) - y.sum()) < 2:
        return
    expected = delong_auc(s, y)
    frame = pd.DataFrame({"y": y, "s": s})
    engine = BlockEngine.from_frame(frame, max(1, len(frame) // parts))
    got = engine.auc(["y", "s"], {}, "y", "s")
    assert got.auc == pytest.approx(expected.auc, rel=1e-12, abs=1e-15)
    assert got.variance == pytest.approx(expected.variance, rel=1e-12, abs=1e-15)
    keys = np.unique(s)
    direct = auc_from_counts(np.array([np.sum((s == k) & (y == 1)) for k in keys]),
                             np.array([np.sum((s == k) & (y == 0)) for k in keys]))
    assert direct.variance == pytest.approx(expected.variance, rel=1e-12, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.sampled_from(["efron", "breslow"]))
def test_cox_bucket_sums_merge_across_blocks(seed: int, parts: int, ties: str) -> None:
    rng = np.random.default_rng(seed)
    n = 80
    time = rng.integers(1, 12, n).astype(float)       # heavy ties
    event = rng.integers(0, 2, n).astype(float)
    event[0] = 1
    x = rng.normal(size=(n, 2))
    beta = rng.normal(scale=0.3, size=2)
    times = np.unique(time[event == 1])
    whole = cox_bucket_sums(time, event, x, beta, times)
    cuts = np.sort(rng.choice(np.arange(1, n), parts - 1, replace=False))
    merged: CoxTimeSums | None = None
    for idx in np.split(rng.permutation(n), cuts):
        part = cox_bucket_sums(time[idx], event[idx], x[idx], beta, times)
        merged = part if merged is None else merged + part
    assert merged is not None
    a = cox_newton_terms(whole, beta, ties)
    b = cox_newton_terms(merged, beta, ties)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-12)
    np.testing.assert_allclose(b.score, a.score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.information, a.information, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), slice_events=st.integers(1, 40))
def test_efron_step_in_slices_of_events_equals_one_expansion(seed: int,
                                                              slice_events: int) -> None:
    """Efron's (k, l) expansion a slice of events at a time (bounded memory) changes nothing.

    Slices smaller than one time's tied events (that time is then a slice of its own),
    and slices cutting between times, give the one-expansion step to 1e-12.
    """
    rng = np.random.default_rng(seed)
    n = 120
    time = rng.integers(1, 9, n).astype(float)        # up to ~25 tied events per time
    event = (rng.random(n) < 0.7).astype(float)
    event[0] = 1
    x = rng.normal(size=(n, 3))
    beta = rng.normal(scale=0.3, size=3)
    sums = cox_bucket_sums(time, event, x, beta, np.unique(time[event == 1]))
    whole = cox_newton_terms(sums, beta, "efron")
    saved = agg.EFRON_EVENTS_PER_SLICE
    try:
        agg.EFRON_EVENTS_PER_SLICE = slice_events
        sliced = cox_newton_terms(sums, beta, "efron")
    finally:
        agg.EFRON_EVENTS_PER_SLICE = saved
    assert sliced.loglik == pytest.approx(whole.loglik, rel=1e-12)
    np.testing.assert_allclose(sliced.score, whole.score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sliced.information, whole.information, rtol=1e-12,
                               atol=1e-12)
