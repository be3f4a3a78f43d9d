"""Disclosure control (site_agent.privacy.guard): rules, refusal wording, properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.effects import Estimate, Refusal
from fedsynth.errors import InputError
from site_agent.privacy import REFUSAL_CODES, PrivacyLimits, guard

LIMITS = PrivacyLimits()


def est(name, n=100, cells=None, outcome="outcome", exposure="treated", estimator="logistic",
        **details):
    return Estimate(analysis=name, estimator=estimator, measure="OR", yi=0.1, vi=0.04, se=0.2,
                    n=n, cells=cells or {}, details={"outcome": outcome, "exposure": exposure,
                                                     **details})


FOXTROT = {"ai": 5, "bi": 22, "ci": 4, "di": 29}     # the reference site with a cell of 4


def test_defaults_and_validation():
    assert (LIMITS.min_cell_count, LIMITS.min_n) == (5, 20)
    for bad in ({"min_cell_count": 0}, {"min_n": -1}, {"min_n": 2.5}, {"min_cell_count": True}):
        with pytest.raises(InputError, match="privacy.min_"):
            PrivacyLimits(**bad)
    assert PrivacyLimits.from_mapping({"min_n": 50}) == PrivacyLimits(5, 50)
    with pytest.raises(InputError, match="unknown key 'min_count'"):
        PrivacyLimits.from_mapping({"min_count": 3})
    with pytest.raises(InputError, match="PrivacyLimits"):
        guard({}, {"min_n": 3})  # type: ignore[arg-type]


def test_all_cells_large_everything_released():
    cells = {"ai": 117, "bi": 733, "ci": 180, "di": 770}
    results = {m: est(m, 1800, cells, estimator="two_by_two") for m in ("OR", "RR", "RD")}
    results["adj"] = est("adj", 1800)
    assert guard(results, LIMITS) == results


def test_min_n():
    out = guard({"small": est("small", n=19), "ok": est("ok", n=20, outcome="los_days")},
                LIMITS)
    assert out["small"].code == "disclosure_min_n" and out["small"].refused
    assert out["ok"].refused is False


def test_small_cell_suppresses_table_and_its_siblings_only():
    results = {
        "crude_OR": est("crude_OR", 60, FOXTROT, estimator="two_by_two"),
        "crude_RD": est("crude_RD", 60, FOXTROT, estimator="two_by_two"),
        # Unadjusted or adjusted, the same outcome x exposure can re-identify the table.
        "adjusted_logOR": est("adjusted_logOR", 60),
        "los_MD": est("los_MD", 60, {"n1": 27, "n2": 33}, outcome="los_days",
                      estimator="two_group"),
        "oe": est("oe", 60, {"events": 9, "non_events": 51}, exposure=None,
                  estimator="oe_ratio"),
    }
    out = guard(results, LIMITS)
    assert out["crude_OR"].code == out["crude_RD"].code == "disclosure_min_cell"
    assert out["adjusted_logOR"].code == "disclosure_linked_table"
    assert out["los_MD"] is results["los_MD"]
    assert out["oe"] is results["oe"]                  # a margin of 9 events is allowed
    assert list(out) == list(results)


def test_small_margin_suppresses_every_estimate_of_the_outcome():
    results = {
        "oe": est("oe", 60, {"events": 3, "non_events": 57}, exposure=None,
                  estimator="oe_ratio"),
        "auc": est("auc", 60, exposure=None, estimator="auc"),
        "adj": est("adj", 60, exposure="sex"),
        "los": est("los", 60, outcome="los_days"),
    }
    out = guard(results, LIMITS)
    assert out["oe"].code == "disclosure_min_cell"
    assert out["auc"].code == out["adj"].code == "disclosure_linked_table"
    assert out["los"] is results["los"]


def test_unknown_columns_are_treated_as_linked():
    bare = Estimate(analysis="x", estimator="linear", measure="MD", yi=1.0, vi=1.0, se=1.0,
                    n=60)
    out = guard({"t": est("t", 60, FOXTROT, estimator="two_by_two"), "x": bare}, LIMITS)
    assert out["x"].code == "disclosure_linked_table"


def test_spec_gives_the_columns():
    class A:  # the attributes of fedsynth.spec.AnalysisSpec that guard reads
        def __init__(self, name, outcome, exposure):
            self.name, self.outcome, self.exposure = name, outcome, exposure

    class S:
        analyses = (A("t", "outcome", "treated"), A("x", "los_days", "treated"))

    bare = Estimate(analysis="x", estimator="linear", measure="MD", yi=1.0, vi=1.0, se=1.0,
                    n=60)
    t = Estimate(analysis="t", estimator="two_by_two", measure="OR", yi=1.0, vi=1.0, se=1.0,
                 n=60, cells=FOXTROT)
    out = guard({"t": t, "x": bare}, LIMITS, spec=S())
    assert out["t"].refused and out["x"] is bare


def test_differencing_between_analyses():
    results = {"full": est("full", 100, outcome="los_days"),
               "minus2": est("minus2", 98, outcome="age"),
               "minus5": est("minus5", 95, outcome="sex"),
               "same": est("same", 100, outcome="time")}
    out = guard(results, LIMITS)
    assert out["full"] is results["full"] and out["same"] is results["same"]
    assert out["minus2"].code == "disclosure_differencing"
    assert out["minus5"] is results["minus5"]


def test_refusals_pass_through_untouched():
    refusal = Refusal("x", "column 'bmi' is missing", "missing_column")
    assert guard({"x": refusal}, LIMITS)["x"] is refusal


def test_refusal_reasons_carry_no_counts():
    results = {"t": est("t", 60, FOXTROT, estimator="two_by_two"), "s": est("s", 7),
               "a": est("a", 60), "d": est("d", 58, outcome="los_days")}
    limits = PrivacyLimits(min_cell_count=5, min_n=20)
    refusals = [r for r in guard(results, limits).values() if r.refused]
    assert {r.code for r in refusals} == {"disclosure_min_cell", "disclosure_min_n",
                                          "disclosure_linked_table"}
    for refusal in refusals:
        assert set(re.findall(r"\d+", refusal.reason)) <= {"5", "20"}, refusal.reason


# --- properties --------------------------------------------------------------------------
COLUMNS = st.sampled_from(["outcome", "los_days", "event", None])
EXPOSURES = st.sampled_from(["treated", "sex", None])


@st.composite
def results_strategy(draw):
    out = {}
    for i in range(draw(st.integers(0, 8))):
        name = f"a{i}"
        if draw(st.booleans()) and draw(st.booleans()):
            out[name] = Refusal(name, "no events", "no_events")
            continue
        n = draw(st.integers(1, 300))
        kind = draw(st.sampled_from(["table", "margin", "none"]))
        if kind == "table":
            cells = dict(zip(("ai", "bi", "ci", "di"), draw(st.lists(
                st.integers(0, 80), min_size=4, max_size=4))))
        elif kind == "margin":
            cells = {"events": draw(st.integers(0, 40)), "non_events": draw(st.integers(0, 40))}
        else:
            cells = {}
        out[name] = Estimate(analysis=name, estimator="two_by_two", measure="OR", yi=0.0,
                             vi=1.0, se=1.0, n=n, cells=cells,
                             details={"outcome": draw(COLUMNS), "exposure": draw(EXPOSURES)})
    return out


LIMIT_STRATEGY = st.builds(PrivacyLimits, min_cell_count=st.integers(1, 12),
                           min_n=st.integers(1, 60))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results=results_strategy(), limits=LIMIT_STRATEGY)
def test_guard_invariants(results, limits):
    out = guard(results, limits)
    assert list(out) == list(results)
    released = [r for r in out.values() if not r.refused]
    for r in released:
        assert r is results[r.analysis]
        assert r.n >= limits.min_n
        assert all(c >= limits.min_cell_count for c in r.cells.values())
    ns = [r.n for r in released]
    assert all(a == b or abs(a - b) >= limits.min_cell_count for a in ns for b in ns)
    # A released estimate never shares outcome and exposure with a small-cell table.
    small = [e for e in results.values() if not e.refused
             and any(c < limits.min_cell_count for c in e.cells.values())]
    for r in released:
        for s in small:
            assert r.details["outcome"] is not None
            assert not (r.details["outcome"] == s.details["outcome"]
                        and r.details["exposure"] == s.details["exposure"])
    for name, r in out.items():
        if results[name].refused:
            assert r is results[name]
        elif r.refused:
            assert r.code in REFUSAL_CODES
    assert guard(out, limits) == out          # idempotent


@settings(max_examples=100, deadline=None)
@given(results=results_strategy(), limits=LIMIT_STRATEGY, extra=st.integers(0, 10))
def test_stricter_limits_never_release_more(results, limits, extra):
    loose = guard(results, limits)
    strict = guard(results, PrivacyLimits(limits.min_cell_count + extra, limits.min_n + extra))
    for name in results:
        # Only the differencing rule depends on which other analyses are released, so only
        # it can let an analysis through under stricter limits (its partner got suppressed).
        if loose[name].refused and not strict[name].refused:
            assert loose[name].code == "disclosure_differencing"


# --- on the real estimators and the reference site with a small cell ---------------------
def test_reference_site_foxtrot_with_real_estimators(data_dir):
    import pandas as pd

    from fedsynth.effects import estimate_all
    from fedsynth.spec import parse_spec

    spec = parse_spec({"analysis": [
        {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
         "exposure": "treated", "measure": "OR"},
        {"name": "crude_RR", "estimator": "two_by_two", "outcome": "outcome",
         "exposure": "treated", "measure": "RR"},
        {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
         "exposure": "treated", "covariates": ["age", "sex"]},
        {"name": "los_MD", "estimator": "two_group", "outcome": "los_days",
         "exposure": "treated", "measure": "MD"},
        {"name": "logHR", "estimator": "cox", "time": "time", "event": "event",
         "exposure": "treated", "covariates": ["age", "sex"]},
        {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome",
         "score": "risk_score"},
    ]})
    foxtrot = pd.read_csv(data_dir / "sites_public" / "mtf-foxtrot.csv")
    results = estimate_all(foxtrot, spec)
    assert not any(r.refused for r in results.values())
    out = guard(results, PrivacyLimits(), spec=spec)
    # The treated x outcome table has a cell of 4: all three estimates of it go.
    assert {k for k, r in out.items() if r.refused} == {"crude_OR", "crude_RR",
                                                          "adjusted_logOR"}
    # With a limit of 4 (what the federation test uses), everything is released.
    assert not any(r.refused for r in guard(results, PrivacyLimits(4, 20), spec=spec).values())
    # And a large site loses nothing at the defaults.
    alpha = estimate_all(pd.read_csv(data_dir / "sites_public" / "mtf-alpha.csv"), spec)
    assert guard(alpha, PrivacyLimits(), spec=spec) == alpha


def _foxtrot_binary_md(data_dir):
    import pandas as pd

    from fedsynth.effects import estimate_all
    from fedsynth.spec import parse_spec

    spec = parse_spec({"analysis": [
        {"name": "md", "estimator": "two_group", "outcome": "outcome", "exposure": "treated",
         "measure": "MD"},
        {"name": "lin", "estimator": "linear", "outcome": "outcome", "exposure": "treated"},
        {"name": "los", "estimator": "linear", "outcome": "los_days", "exposure": "treated"},
    ]})
    frame = pd.read_csv(data_dir / "sites_public" / "mtf-foxtrot.csv")
    return spec, frame, estimate_all(frame, spec)


def test_mean_difference_of_a_binary_outcome_reveals_the_table(data_dir):
    # The attack rule 4 exists for: from yi, vi and n of a two-group mean difference of a
    # 0/1 outcome, an integer search finds the 2x2 table, small cell included.
    spec, frame, results = _foxtrot_binary_md(data_dir)
    import numpy as np

    md = results["md"]
    n = md.n
    found = []
    for n1 in range(2, n - 1):
        n0 = n - n1
        a, c = np.meshgrid(np.arange(n1 + 1), np.arange(n0 + 1), indexing="ij")
        p1, p0 = a / n1, c / n0
        vi = p1 * (1 - p1) / (n1 - 1) + p0 * (1 - p0) / (n0 - 1)
        hit = (np.abs(p1 - p0 - md.yi) <= 1e-12) & (np.abs(vi - md.vi) <= 1e-12 * md.vi)
        found += [(int(i), n1 - int(i), int(j), n0 - int(j)) for i, j in zip(*np.nonzero(hit))]
    truth = (int(((frame.treated == 1) & (frame.outcome == 1)).sum()),
             int(((frame.treated == 1) & (frame.outcome == 0)).sum()),
             int(((frame.treated == 0) & (frame.outcome == 1)).sum()),
             int(((frame.treated == 0) & (frame.outcome == 0)).sum()))
    # The table is found up to relabelling both variables (same mean difference and
    # variance); either way the small cell is exposed.
    assert truth in found and len(found) <= 2 and all(min(t) < 5 for t in found)


def test_implied_table_check_needs_no_data_frame(data_dir):
    spec, frame, results = _foxtrot_binary_md(data_dir)
    # The estimators report the table a 0/1 outcome implies (never sent)...
    table = {"ai": int(((frame.treated == 1) & (frame.outcome == 1)).sum()),
             "bi": int(((frame.treated == 1) & (frame.outcome == 0)).sum()),
             "ci": int(((frame.treated == 0) & (frame.outcome == 1)).sum()),
             "di": int(((frame.treated == 0) & (frame.outcome == 0)).sum())}
    for name in ("md", "lin"):
        assert {k: results[name].cells[k] for k in table} == table
        assert set(results[name].to_dict()) == {"yi", "vi", "se", "n"}   # cells stay
    assert "ai" not in results["los"].cells     # continuous outcome: nothing implied
    # ...so guard suppresses both from the estimates alone, whatever the data source.
    out = guard(results, LIMITS, spec=spec)
    assert out["md"].code == "disclosure_min_cell" and out["lin"].code == "disclosure_min_cell"
    assert out["los"] is results["los"]
    # A large site is untouched.
    import pandas as pd

    from fedsynth.effects import estimate_all
    alpha = pd.read_csv(data_dir / "sites_public" / "mtf-alpha.csv")
    alpha_results = estimate_all(alpha, spec)
    assert guard(alpha_results, LIMITS, spec=spec) == alpha_results


def test_differencing_across_rounds_with_release_history(tmp_path):
    from fedsynth.spec import parse_spec
    from site_agent.privacy import ReleaseHistory

    def spec_named(name, covariates=("age",)):
        return parse_spec({"analysis": [{"name": name, "estimator": "linear",
                                         "outcome": "los_days", "exposure": "treated",
                                         "covariates": list(covariates)}]})

    def results(name, n):
        return {name: est(name, n, outcome="los_days", estimator="linear")}

    history = ReleaseHistory(tmp_path / "releases.json")
    round1 = guard(results("los", 100), LIMITS, spec=spec_named("los"), history=history)
    assert not round1["los"].refused
    history.record(round1, spec_named("los"))
    # Next month, two more patients: the same analysis (even renamed) would expose them.
    round2 = guard(results("los_v2", 102), LIMITS, spec=spec_named("los_v2"), history=history)
    assert round2["los_v2"].code == "disclosure_differencing"
    assert set(re.findall(r"\d+", round2["los_v2"].reason)) <= {"5"}
    # A slightly changed definition does not dodge the check (as within a round).
    other = spec_named("los", covariates=("age", "sex"))
    assert guard(results("los", 102), LIMITS, spec=other, history=history)["los"].refused
    # The same data again, or enough new patients, is fine.
    assert not guard(results("los", 100), LIMITS, spec=spec_named("los"),
                     history=history)["los"].refused
    assert not guard(results("los", 105), LIMITS, spec=other, history=history)["los"].refused
    # Refusals are not recorded; the file holds only released n.
    history.record(round2, spec_named("los_v2"))
    assert list(history.load().values()) == [[100]]
    (tmp_path / "releases.json").write_text("not json")
    with pytest.raises(InputError, match="release history"):
        history.load()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(20, 80), p_exposed=st.floats(0.05, 0.95), p_event=st.floats(0.02, 0.98),
       seed=st.integers(0, 2**31 - 1), limit=st.integers(2, 8))
def test_no_release_hides_a_small_implied_cell(n, p_exposed, p_event, seed, limit):
    # Real estimators on random small sites, no data frame given to guard: nothing whose
    # outcome is 0/1 is released while the outcome x exposure table has a cell < limit.
    import numpy as np
    import pandas as pd

    from fedsynth.effects import estimate_all
    from fedsynth.spec import parse_spec

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"treated": (rng.random(n) < p_exposed).astype(int),
                          "outcome": (rng.random(n) < p_event).astype(int),
                          "age": rng.normal(60, 10, n).round(),
                          "los_days": rng.gamma(2.0, 3.0, n).round(1)})
    spec = parse_spec({"analysis": [
        {"name": "rd", "estimator": "two_by_two", "outcome": "outcome", "exposure": "treated",
         "measure": "RD"},
        {"name": "md", "estimator": "two_group", "outcome": "outcome", "exposure": "treated",
         "measure": "MD"},
        {"name": "lin", "estimator": "linear", "outcome": "outcome", "exposure": "treated",
         "covariates": ["age"]},
        {"name": "los", "estimator": "two_group", "outcome": "los_days",
         "exposure": "treated", "measure": "MD"},
    ]})
    out = guard(estimate_all(frame, spec), PrivacyLimits(limit, 20), spec=spec)
    table = pd.crosstab(frame.treated, frame.outcome).reindex(index=[0, 1], columns=[0, 1],
                                                              fill_value=0)
    if int(table.to_numpy().min()) < limit:
        assert all(out[name].refused for name in ("rd", "md", "lin"))
