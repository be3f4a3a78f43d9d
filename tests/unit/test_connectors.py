"""SQL data source with pushdown, on SQLite (the same SQLAlchemy Core code as PostgreSQL).

Reference values: tests/data/sites_public/expected.json (R: metafor escalc, pROC DeLong,
see tests/data/README.md). The PostgreSQL variant with a 1,000,000-row table is
tests/integration/test_sql_source.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.effects.results import Estimate, Refusal
from fedsynth.errors import InputError
from fedsynth.spec import parse_spec
from site_agent.connectors import SqlSource, estimate_all_sql, estimate_from_data
from tests._data_builders import sqlite_table

DATA = Path(__file__).resolve().parents[1] / "data" / "sites_public"
EXPECTED = json.loads((DATA / "expected.json").read_text())["sites"]
SITES = sorted(EXPECTED)

PUSHDOWN_SPEC = parse_spec({"analysis": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "crude_RR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RR"},
    {"name": "crude_RD", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RD"},
    {"name": "los_MD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "MD"},
    {"name": "los_SMD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome", "score": "risk_score"},
    {"name": "brier", "estimator": "brier", "outcome": "outcome", "score": "risk_score"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "raw"},
    {"name": "logit_auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "logit"},
]})


def close(actual: float, expected: float, rel: float = 1e-6) -> bool:
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-9)


def sqlite_source(tmp_path: Path, frame: pd.DataFrame, table: str = "patients") -> SqlSource:
    return SqlSource(sqlite_table(frame, tmp_path / "site.db", table), table=table)


@pytest.mark.parametrize("site", SITES)
def test_pushdown_matches_r(tmp_path: Path, site: str) -> None:
    source = sqlite_source(tmp_path, pd.read_csv(DATA / f"{site}.csv"))
    results = estimate_all_sql(source, PUSHDOWN_SPEC)
    assert list(results) == [a.name for a in PUSHDOWN_SPEC.analyses]
    for name, result in results.items():
        assert isinstance(result, Estimate), (name, result)
        expected = EXPECTED[site][name]
        assert close(result.yi, expected["yi"]), (site, name, result.yi, expected["yi"])
        assert close(result.vi, expected["vi"]), (site, name, result.vi, expected["vi"])
        assert result.n == EXPECTED[site]["n"]
        assert result.details["source"] == "sql"


def test_two_by_two_counts_match_r(tmp_path: Path) -> None:
    site = "mtf-alpha"
    source = sqlite_source(tmp_path, pd.read_csv(DATA / f"{site}.csv"))
    counts = source.two_by_two("x", "outcome", "treated")
    assert counts.n == EXPECTED[site]["n"]
    result = estimate_all_sql(source, PUSHDOWN_SPEC)["crude_OR"]
    assert sorted(result.cells.values()) == sorted(EXPECTED[site]["counts"].values())


def test_query_source_equals_table_source(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA / "mtf-bravo.csv")
    table = sqlite_source(tmp_path, frame)
    query = SqlSource(table.url, query="SELECT outcome, treated, los_days, risk_score "
                                       "FROM patients WHERE age >= 0;")
    a, b = estimate_all_sql(table, PUSHDOWN_SPEC), estimate_all_sql(query, PUSHDOWN_SPEC)
    for name in a:
        assert a[name].yi == pytest.approx(b[name].yi, rel=1e-12)
        assert a[name].vi == pytest.approx(b[name].vi, rel=1e-12)


def test_nulls_are_dropped_and_counted(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA / "mtf-charlie.csv")
    with_nulls = frame.copy()
    with_nulls.loc[[3, 10, 11], "outcome"] = np.nan
    base = estimate_all_sql(sqlite_source(tmp_path, frame.drop(index=[3, 10, 11])),
                            PUSHDOWN_SPEC)
    (tmp_path / "n").mkdir()
    nulls = estimate_all_sql(sqlite_source(tmp_path / "n", with_nulls), PUSHDOWN_SPEC)
    for name in ("crude_OR", "log_OE", "brier", "auc"):
        assert nulls[name].yi == pytest.approx(base[name].yi, rel=1e-12)
        assert nulls[name].n_dropped == 3
    assert nulls["los_MD"].n_dropped == 0


def test_data_problems_become_refusals(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA / "mtf-delta.csv")
    frame.loc[0, "outcome"] = 2
    spec = parse_spec({"analysis": [
        {"name": "missing", "estimator": "two_by_two", "outcome": "died",
         "exposure": "treated", "measure": "OR"},
        {"name": "nonbinary", "estimator": "two_by_two", "outcome": "outcome",
         "exposure": "treated", "measure": "OR"},
        {"name": "md", "estimator": "two_group", "outcome": "los_days",
         "exposure": "treated", "measure": "MD"},
    ]})
    results = estimate_all_sql(sqlite_source(tmp_path, frame), spec)
    assert isinstance(results["missing"], Refusal) and results["missing"].code == \
        "missing_column"
    assert "'died'" in results["missing"].reason
    assert isinstance(results["nonbinary"], Refusal)
    assert results["nonbinary"].code == "non_binary"
    assert "'outcome'" in results["nonbinary"].reason
    assert isinstance(results["md"], Estimate)  # one bad analysis does not stop others


def test_zero_cell_gets_metafor_correction(tmp_path: Path) -> None:
    frame = pd.DataFrame({"treated": [1] * 30 + [0] * 30,
                          "outcome": [0] * 30 + [1] * 10 + [0] * 20})
    result = estimate_all_sql(sqlite_source(tmp_path, frame), parse_spec({"analysis": [
        {"name": "or", "estimator": "two_by_two", "outcome": "outcome",
         "exposure": "treated", "measure": "OR"}]}))["or"]
    a, b, c, d = 0.5, 30.5, 10.5, 20.5
    assert result.yi == pytest.approx(math.log(a * d / (b * c)), rel=1e-12)
    assert result.vi == pytest.approx(1 / a + 1 / b + 1 / c + 1 / d, rel=1e-12)


@pytest.mark.parametrize("kwargs, field", [
    ({"table": "patients; DROP TABLE patients"}, "table"),
    ({"table": "a.b.c"}, "table"),
    ({"table": "patients", "query": "SELECT 1"}, "exactly one"),
    ({}, "exactly one"),
])
def test_bad_source_settings_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    source_db = sqlite_source(tmp_path, pd.DataFrame({"outcome": [0, 1]}))
    with pytest.raises(InputError, match=field):
        SqlSource(source_db.url, **kwargs).columns()
    with sqlite3.connect(tmp_path / "site.db") as conn:  # nothing was dropped
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 2


def test_bad_url_and_bad_query_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="url"):
        SqlSource("not a url", table="t")
    source = sqlite_source(tmp_path, pd.DataFrame({"outcome": [0, 1]}))
    with pytest.raises(InputError, match="query"):
        SqlSource(source.url, query="SELECT * FROM no_such_table").columns()


def test_password_is_redacted_in_errors() -> None:
    with pytest.raises(InputError) as info:
        SqlSource("postgresql://alice:s3cret@127.0.0.1:1/db", table="t", query="SELECT 1")
    assert "s3cret" not in str(info.value)


def test_fetch_columns_streams_only_named_columns(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA / "mtf-echo.csv")
    source = sqlite_source(tmp_path, frame)
    arrays = source.fetch_columns(["outcome", "age"], chunk_rows=97)
    assert set(arrays) == {"outcome", "age"}
    np.testing.assert_array_equal(arrays["age"], frame["age"].to_numpy(float))
    np.testing.assert_array_equal(arrays["outcome"], frame["outcome"].to_numpy(float))


def brute_force_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """AUC and DeLong variance by the O(n1 n0) definition (ties count 1/2)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=6, max_size=60))
def test_auc_with_ties_equals_definition(tmp_path_factory, rows) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] / 6 for r in rows])
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return
    tmp = tmp_path_factory.mktemp("auc")
    source = sqlite_source(tmp, pd.DataFrame({"outcome": y, "risk_score": s}))
    placements = source.auc("auc", "outcome", "risk_score")
    auc, var = brute_force_delong(y, s)
    assert placements.auc == pytest.approx(auc, rel=1e-12, abs=1e-12)
    assert placements.variance == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_estimate_from_data_dispatches_on_url(tmp_path: Path) -> None:
    source = sqlite_source(tmp_path, pd.read_csv(DATA / "mtf-alpha.csv"))
    results = estimate_from_data({"url": source.url, "table": "patients"}, PUSHDOWN_SPEC)
    assert results["crude_OR"].yi == pytest.approx(EXPECTED["mtf-alpha"]["crude_OR"]["yi"],
                                                   rel=1e-9)
    with pytest.raises(InputError, match="path"):
        estimate_from_data({"url": source.url, "path": "x.csv"}, PUSHDOWN_SPEC)


@pytest.mark.parametrize("site", SITES)
def test_pushdown_equals_csv_path(tmp_path: Path, site: str) -> None:
    """Same Estimate fields (yi, vi, n, cells, measure) or the same refusal code."""
    from fedsynth.effects import estimate_all
    from site_agent.data import load_table

    frame = load_table(DATA / f"{site}.csv")
    spec = parse_spec({"analysis": [
        *[a.to_dict() for a in PUSHDOWN_SPEC.analyses],
        {"name": "rom", "estimator": "two_group", "outcome": "los_days",
         "exposure": "treated", "measure": "ROM"},
        {"name": "adjusted", "estimator": "logistic", "outcome": "outcome",
         "exposure": "treated", "covariates": ["age", "sex"]},
        {"name": "slope", "estimator": "calibration_slope", "outcome": "outcome",
         "score": "risk_score"},
    ]})
    csv = estimate_all(frame, spec)
    sql = estimate_all_sql(sqlite_source(tmp_path, frame), spec)
    assert list(sql) == list(csv)
    for name in csv:
        a, b = csv[name], sql[name]
        assert type(a) is type(b), (name, a, b)
        if isinstance(a, Refusal):
            assert a.code == b.code
            continue
        assert (a.measure, a.n, a.n_dropped, dict(a.cells)) == \
            (b.measure, b.n, b.n_dropped, dict(b.cells)), name
        assert b.yi == pytest.approx(a.yi, rel=1e-10, abs=1e-13), name
        assert b.vi == pytest.approx(a.vi, rel=1e-10, abs=1e-15), name


def test_parquet_input_equals_csv(tmp_path: Path) -> None:
    """[data] path = "*.parquet" (pyarrow) gives the same estimates as the CSV file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fedsynth.effects import estimate_all
    from site_agent.data import load_table

    csv = DATA / "mtf-echo.csv"
    frame = pd.read_csv(csv)
    parquet = tmp_path / "mtf-echo.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), parquet)
    loaded = load_table(parquet)
    assert list(loaded.columns) == list(frame.columns) and len(loaded) == len(frame)
    spec = parse_spec({"analysis": [
        *[a.to_dict() for a in PUSHDOWN_SPEC.analyses],
        {"name": "adjusted", "estimator": "logistic", "outcome": "outcome",
         "exposure": "treated", "covariates": ["age", "sex"]}]})
    from_csv = estimate_all(load_table(csv), spec)
    from_parquet = estimate_from_data({"path": parquet}, spec)
    for name, expected in from_csv.items():
        got = from_parquet[name]
        assert (got.yi, got.vi, got.n) == (expected.yi, expected.vi, expected.n), name
    assert from_parquet["crude_OR"].yi == pytest.approx(
        EXPECTED["mtf-echo"]["crude_OR"]["yi"], rel=1e-6)
