"""Site data in PostgreSQL: pushdown results equal the CSV path; memory stays flat.

Needs a PostgreSQL server (``.ci/run`` starts one; see tests/integration/pg_server.py);
skips with the reason otherwise. The 1,000,000-row table is loaded once per module with
COPY.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.effects import estimate_all
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.spec import parse_spec
from site_agent.connectors import SqlSource, estimate_all_sql
from site_agent.data import load_table
from tests._data_builders import INT_TYPES, big_frame, copy_frame
from tests.integration.pg_server import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

DATA = Path(__file__).resolve().parents[1] / "data" / "sites_public"
EXPECTED = json.loads((DATA / "expected.json").read_text())["sites"]
ROOT = Path(__file__).resolve().parents[2]
BIG_ROWS = 1_000_000

SPEC = parse_spec({"analysis": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "crude_RD", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RD"},
    {"name": "los_SMD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome", "score": "risk_score"},
    {"name": "brier", "estimator": "brier", "outcome": "outcome", "score": "risk_score"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "raw"},
    {"name": "logit_auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "logit"},
]})
STREAMED = parse_spec({"analysis": [
    {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "adjusted_MD", "estimator": "linear", "outcome": "los_days",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "logHR_efron", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age", "sex"], "ties": "efron"},
]})


@pytest.fixture(scope="module")
def database() -> str:
    url = fresh_database("sqlsrc")
    for csv in sorted(DATA.glob("mtf-*.csv")):
        frame = pd.read_csv(csv)
        copy_frame(url, csv.stem.replace("-", "_"), frame,
                   {**INT_TYPES, "patient_id": "text"})
    copy_frame(url, "big", big_frame(BIG_ROWS), INT_TYPES)
    copy_frame(url, "small", big_frame(10_000, seed=7), INT_TYPES)
    return url


def assert_same(csv: dict, sql: dict, rel: float = 1e-9) -> None:
    assert list(csv) == list(sql)
    for name, a in csv.items():
        b = sql[name]
        assert type(a) is type(b), (name, a, b)
        if isinstance(a, Refusal):
            assert a.code == b.code, name
            continue
        assert (a.measure, a.n, a.n_dropped, dict(a.cells)) == \
            (b.measure, b.n, b.n_dropped, dict(b.cells)), name
        assert b.yi == pytest.approx(a.yi, rel=rel, abs=1e-12), name
        assert b.vi == pytest.approx(a.vi, rel=rel, abs=1e-15), name


@pytest.mark.parametrize("site", sorted(EXPECTED))
def test_postgres_sites_match_r_and_csv(database: str, site: str) -> None:
    source = SqlSource(database, table=site.replace("-", "_"))
    try:
        spec = parse_spec({"analysis": [a.to_dict() for a in
                                        (*SPEC.analyses, *STREAMED.analyses)]})
        sql = estimate_all_sql(source, spec)
    finally:
        source.dispose()
    assert_same(estimate_all(load_table(DATA / f"{site}.csv"), spec), sql)
    for name, result in sql.items():
        assert isinstance(result, Estimate), (name, result)
        expected = EXPECTED[site][name]
        assert result.yi == pytest.approx(expected["yi"], rel=1e-6, abs=1e-9), name
        assert result.vi == pytest.approx(expected["vi"], rel=1e-6, abs=1e-9), name


def test_query_with_filter_equals_filtered_csv(database: str) -> None:
    source = SqlSource(database, query="SELECT * FROM mtf_bravo WHERE age >= 50")
    try:
        sql = estimate_all_sql(source, SPEC)
    finally:
        source.dispose()
    frame = load_table(DATA / "mtf-bravo.csv")
    assert_same(estimate_all(frame[frame["age"] >= 50].reset_index(drop=True), SPEC), sql)


@pytest.mark.slow
def test_million_rows_pushdown_equals_pandas(database: str) -> None:
    source = SqlSource(database, table="big")
    try:
        sql = estimate_all_sql(source, SPEC)
        streamed = estimate_all_sql(source, parse_spec({"analysis": [
            STREAMED.analyses[1].to_dict()]}))
    finally:
        source.dispose()
    frame = big_frame(BIG_ROWS)
    assert_same(estimate_all(frame, SPEC), sql, rel=1e-8)
    assert sql["crude_OR"].n == BIG_ROWS
    assert_same(estimate_all(frame, parse_spec({"analysis": [
        STREAMED.analyses[1].to_dict()]})), streamed, rel=1e-8)


PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from fedsynth.spec import parse_spec
    from site_agent.connectors import SqlSource, estimate_all_sql
    spec = parse_spec(json.loads(sys.argv[3]))
    source = SqlSource(sys.argv[1], table=sys.argv[2])
    import site_agent.connectors.pushdown  # imports are not data: load them first
    source.columns()                      # and connect
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    results = estimate_all_sql(source, spec)
    peak = tracemalloc.get_traced_memory()[1]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_growth_kb": after - before, "traced_peak": peak,
                      "n": {k: v.n for k, v in results.items()}}))
""")


def probe(url: str, table: str) -> dict:
    spec = json.dumps({"analysis": [a.to_dict() for a in SPEC.analyses]})
    run = subprocess.run([sys.executable, "-c", PROBE, url, table, spec], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_agent_memory_stays_flat_with_table_size(database: str) -> None:
    """Pushdown on 10,000 and on 1,000,000 rows: the agent's memory does not grow.

    Loading the 1M-row table into pandas would take ~50 MB for these six columns alone;
    the pushdown agent's peak Python allocation stays under 2 MB and its resident set
    grows by less than 10 MB for both tables.
    """
    small, big = probe(database, "small"), probe(database, "big")
    assert set(big["n"].values()) == {BIG_ROWS}
    assert set(small["n"].values()) == {10_000}
    assert big["traced_peak"] < 2_000_000, big
    assert big["rss_growth_kb"] < 10_240, big
    assert big["traced_peak"] < small["traced_peak"] + 500_000, (small, big)


def test_boolean_columns_read_as_zero_one(database: str) -> None:
    """Warehouses often store flags as boolean: same results as the 0/1 CSV."""
    frame = pd.read_csv(DATA / "mtf-charlie.csv")
    flags = frame.assign(treated=frame["treated"].astype(bool),
                         outcome=frame["outcome"].astype(bool))
    copy_frame(database, "charlie_bool", flags,
               {"age": "integer", "sex": "integer", "treated": "boolean",
                "outcome": "boolean", "event": "integer", "patient_id": "text"})
    source = SqlSource(database, table="charlie_bool")
    try:
        spec = parse_spec({"analysis": [a.to_dict() for a in
                                        (*SPEC.analyses, STREAMED.analyses[0])]})
        sql = estimate_all_sql(source, spec)
    finally:
        source.dispose()
    assert_same(estimate_all(frame, spec), sql)


def test_text_column_refuses_only_its_analyses(database: str) -> None:
    """A text column: its analyses are refused (as for a CSV file), the others answered."""
    frame = pd.read_csv(DATA / "mtf-delta.csv")
    text = frame.assign(treated=frame["treated"].map({0: "no", 1: "yes"}),
                        age=frame["age"].astype(str) + " y")
    copy_frame(database, "delta_text", text,
               {"sex": "integer", "outcome": "integer", "event": "integer",
                "treated": "text", "age": "text", "patient_id": "text"})
    spec = parse_spec({"analysis": [
        SPEC.analyses[0].to_dict(),                                  # uses treated (text)
        {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
         "scale": "raw"},                                            # does not
        STREAMED.analyses[0].to_dict(),                              # age (text) covariate
    ]})
    source = SqlSource(database, table="delta_text")
    try:
        sql = estimate_all_sql(source, spec)
    finally:
        source.dispose()
    csv = estimate_all(text, spec)
    assert isinstance(sql["crude_OR"], Refusal)
    assert sql["crude_OR"].code == csv["crude_OR"].code == "invalid_values"
    assert isinstance(sql["auc"], Estimate)
    assert sql["auc"].yi == pytest.approx(csv["auc"].yi, rel=1e-12)
    assert isinstance(sql["adjusted_logOR"], Refusal)
    assert sql["adjusted_logOR"].code == csv["adjusted_logOR"].code
