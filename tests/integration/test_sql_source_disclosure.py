"""Disclosure control is the same for a SQL source as for a CSV file with the same rows.

A mean difference or linear model of a 0/1 outcome is a risk difference from which the
coordinator can recover the exposure x outcome table (``site_agent.privacy``, rule 4). The
estimators report that table in ``Estimate.cells`` (never sent) on every data source (the
SQL pushdown with one aggregate query), so ``guard`` suppresses it without a data frame.
Here the reference site mtf-foxtrot (a treated x outcome cell of 4) is loaded into SQLite
and PostgreSQL and run exactly as the agent runs a round (``estimate_from_data`` then
``guard``): every decision equals the CSV path's, and the small table is suppressed even
when no count-based estimator is in the spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from fedsynth.spec import parse_spec
from site_agent.connectors import estimate_from_data
from site_agent.privacy import PrivacyLimits, guard

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "sites_public"

# No two_by_two: only the implied table (rule 4) can catch the small cell here.
IMPLIED_ONLY = parse_spec({"analysis": [
    {"name": "md", "estimator": "two_group", "outcome": "outcome", "exposure": "treated",
     "measure": "MD"},                                     # pushdown
    {"name": "lin", "estimator": "linear", "outcome": "outcome", "exposure": "treated",
     "covariates": ["age"]},                               # streamed
    {"name": "los", "estimator": "two_group", "outcome": "los_days", "exposure": "treated",
     "measure": "MD"},                                     # continuous: nothing implied
]})
MIXED = parse_spec({"analysis": [
    {"name": "crude_RD", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RD"},
    {"name": "md", "estimator": "two_group", "outcome": "outcome", "exposure": "treated",
     "measure": "MD"},
    {"name": "smd", "estimator": "two_group", "outcome": "outcome", "exposure": "treated",
     "measure": "SMD"},
    {"name": "logHR", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome", "score": "risk_score"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    {"name": "los", "estimator": "linear", "outcome": "los_days", "exposure": "treated"},
]})


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'site.db'}"


def _postgres(tmp_path: Path) -> str:
    from tests.integration.pg_server import fresh_database

    return fresh_database("disclosure")


@pytest.fixture(params=[_sqlite, pytest.param(_postgres, marks=pytest.mark.postgres)],
                ids=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> str:
    url = request.param(tmp_path)
    engine = sa.create_engine(url)
    try:
        for site in ("mtf-foxtrot", "mtf-alpha"):
            pd.read_csv(DATA / f"{site}.csv").to_sql(site.replace("-", "_"), engine,
                                                     index=False)
    finally:
        engine.dispose()
    return url


def _run(data: dict, spec, limits: PrivacyLimits) -> tuple[dict, dict]:
    """What the agent does for a round (site_agent.agent.SiteAgent.compute)."""
    computed = dict(estimate_from_data(data, spec))
    return computed, guard(computed, limits, spec=spec)


def _decisions(guarded: dict) -> dict[str, str | None]:
    return {name: getattr(r, "code", None) if r.refused else None
            for name, r in guarded.items()}


@pytest.mark.parametrize("spec", [IMPLIED_ONLY, MIXED], ids=["implied_only", "mixed"])
def test_sql_source_suppressed_exactly_as_csv(database: str, spec) -> None:
    limits = PrivacyLimits()
    csv_est, csv_out = _run({"path": DATA / "mtf-foxtrot.csv"}, spec, limits)
    sql_est, sql_out = _run({"url": database, "table": "mtf_foxtrot"}, spec, limits)
    # The same counts behind every estimate (the implied tables included)...
    for name, a in csv_est.items():
        assert not a.refused and not sql_est[name].refused, name
        assert dict(sql_est[name].cells) == dict(a.cells), name
        assert sql_est[name].yi == pytest.approx(a.yi, rel=1e-9, abs=1e-12), name
    # ...hence the same decisions, with the same refusal codes.
    assert _decisions(sql_out) == _decisions(csv_out)
    frame = pd.read_csv(DATA / "mtf-foxtrot.csv")
    table = pd.crosstab(frame.treated, frame.outcome)
    assert int(table.to_numpy().min()) < limits.min_cell_count   # the premise: a cell of 4
    assert sql_out["md"].code == "disclosure_min_cell"
    if spec is IMPLIED_ONLY:
        assert sql_out["lin"].code == "disclosure_min_cell"
        assert not sql_out["los"].refused           # another outcome: released
    else:
        assert sql_out["crude_RD"].code == "disclosure_min_cell"
        assert sql_out["smd"].code == "disclosure_min_cell"
        assert not sql_out["los"].refused
    # Refusals carry no count.
    for result in sql_out.values():
        if result.refused:
            assert "4" not in result.reason


def test_sql_large_site_released_and_threshold_respected(database: str) -> None:
    # A large site loses nothing; at a limit of 4 the foxtrot table is allowed on both paths.
    csv_est, csv_out = _run({"path": DATA / "mtf-alpha.csv"}, MIXED, PrivacyLimits())
    sql_est, sql_out = _run({"url": database, "table": "mtf_alpha"}, MIXED, PrivacyLimits())
    assert _decisions(sql_out) == _decisions(csv_out) == {a.name: None for a in MIXED.analyses}
    for limits in (PrivacyLimits(4, 20), PrivacyLimits(5, 20)):
        _, csv_out = _run({"path": DATA / "mtf-foxtrot.csv"}, IMPLIED_ONLY, limits)
        _, sql_out = _run({"url": database, "table": "mtf_foxtrot"}, IMPLIED_ONLY, limits)
        assert _decisions(sql_out) == _decisions(csv_out)
        assert sql_out["md"].refused == (limits.min_cell_count == 5)


def test_sql_implied_table_from_a_query_and_random_sites(tmp_path: Path) -> None:
    # Random small sites through a SQL *query* source (SQLite): the implied-table cells the
    # pushdown reports equal the rows' crosstab, and whenever a cell is below the limit
    # the two-group mean difference of the 0/1 outcome is suppressed.
    rng = np.random.default_rng(20261125)
    url = _sqlite(tmp_path)
    engine = sa.create_engine(url)
    spec = parse_spec({"analysis": [{"name": "md", "estimator": "two_group",
                                     "outcome": "y", "exposure": "x", "measure": "MD"}]})
    suppressed = released = 0
    try:
        for i in range(12):
            n = int(rng.integers(30, 90))
            frame = pd.DataFrame({"x": (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int),
                                  "y": (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int),
                                  "site": i})
            frame.to_sql("rows", engine, index=False, if_exists="append")
            computed, out = _run({"url": url, "query": f"SELECT x, y FROM rows WHERE site = {i}"},
                                 spec, PrivacyLimits())
            if computed["md"].refused:        # e.g. constant outcome in a group
                continue
            table = pd.crosstab(frame.x, frame.y).reindex(index=[0, 1], columns=[0, 1],
                                                          fill_value=0)
            cells = computed["md"].cells
            assert [cells["ai"], cells["bi"], cells["ci"], cells["di"]] == [
                int(table.loc[1, 1]), int(table.loc[1, 0]), int(table.loc[0, 1]),
                int(table.loc[0, 0])]
            if int(table.to_numpy().min()) < 5:
                assert out["md"].code == "disclosure_min_cell"
                suppressed += 1
            else:
                assert not out["md"].refused
                released += 1
    finally:
        engine.dispose()
    assert suppressed and released          # both branches exercised


SCORES = parse_spec({"analysis": [
    {"name": "auc_sex", "estimator": "auc", "outcome": "outcome", "score": "sex"},
    {"name": "auc_grade", "estimator": "auc", "outcome": "outcome", "score": "grade",
     "scale": "logit"},
    {"name": "brier_sex", "estimator": "brier", "outcome": "outcome", "score": "sex"},
    {"name": "oe_grade", "estimator": "oe_ratio", "outcome": "outcome", "score": "grade_risk"},
    {"name": "auc_risk", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    {"name": "md_grade", "estimator": "two_group", "outcome": "grade", "exposure": "outcome"},
]})


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_sql_score_tables_equal_the_csv_path(backend: str, tmp_path: Path) -> None:
    # Issue 10, item 1 on databases: the score x outcome tables of few-valued scores (and a
    # few-valued outcome's table) are counted by one aggregate query, equal to the CSV
    # path's, so the same AUCs are suppressed.
    from tests.reconstruction import attack_site

    frame = attack_site()
    frame["grade_risk"] = frame["grade"].map({0: 0.1, 1: 0.3, 2: 0.6})
    url = _sqlite(tmp_path) if backend == "sqlite" else _postgres(tmp_path)
    engine = sa.create_engine(url)
    try:
        frame.to_sql("attack", engine, index=False)
    finally:
        engine.dispose()
    csv_path = tmp_path / "attack.csv"
    frame.to_csv(csv_path, index=False)
    csv_est, csv_out = _run({"path": csv_path}, SCORES, PrivacyLimits())
    sql_est, sql_out = _run({"url": url, "table": "attack"}, SCORES, PrivacyLimits())
    for name, a in csv_est.items():
        assert dict(sql_est[name].cells) == dict(a.cells), name
    assert _decisions(sql_out) == _decisions(csv_out) == {
        "auc_sex": "disclosure_min_cell", "auc_grade": "disclosure_min_cell",
        "brier_sex": "disclosure_min_cell", "oe_grade": "disclosure_min_cell",
        "auc_risk": None, "md_grade": "disclosure_min_cell"}
