"""The SQL engine's refusals: the vocabulary's sentence, never the database's text."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects import estimate_all
from fedsynth.effects.results import REFUSAL_VOCABULARY, Estimate, Refusal
from fedsynth.spec import parse_spec
from site_agent.connectors import SqlSource, estimate_all_sql
from site_agent.data import load_table
from tests._data_builders import (
    duckdb_table,
    public_site,
    sqlite_imported,
    sqlite_table,
    with_gaps,
)

SPEC = parse_spec({"analysis": [
    {"name": "lr", "estimator": "logistic", "outcome": "y", "exposure": "x",
     "covariates": ["c"]},
    {"name": "hr", "estimator": "cox", "time": "t", "event": "y", "exposure": "x",
     "covariates": ["c"]},
    {"name": "auc", "estimator": "auc", "outcome": "y", "score": "c"},
]})


def frame_with_text(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"y": rng.integers(0, 2, n), "x": rng.integers(0, 2, n),
                          "c": rng.normal(size=n).round(3).astype(str),
                          "t": rng.exponential(3, n)})
    frame.loc[17, "c"] = "see notes"
    return frame


def sqlite(frame: pd.DataFrame, tmp_path: Path) -> SqlSource:
    return SqlSource(sqlite_table(frame, tmp_path / "site.db"), table="site")


def duckdb(frame: pd.DataFrame, tmp_path: Path) -> SqlSource:
    return SqlSource(duckdb_table(frame, tmp_path / "site.duckdb"), table="site")


@pytest.mark.parametrize("make", [sqlite, duckdb], ids=["sqlite", "duckdb"])
def test_text_in_a_numeric_column_is_refused_without_database_text(
        make, tmp_path: Path) -> None:  # noqa: ANN001 - a source factory
    frame = frame_with_text()
    source = make(frame, tmp_path)
    try:
        results = estimate_all_sql(source, SPEC)
    finally:
        source.dispose()
    csv = estimate_all(frame, SPEC)
    sentences = {text.split("{")[0] for _, text in REFUSAL_VOCABULARY.values()}
    for name, result in results.items():
        assert isinstance(result, Refusal), (name, result)
        assert isinstance(csv[name], Refusal)
        # SQLite counts what is not stored as a number (as the CSV path); DuckDB refuses
        # the cast, which is the fixed sentence "database_values"
        assert result.code == csv[name].code == "invalid_values", (name, result)
        assert any(result.reason.startswith(s) for s in sentences), result.reason
        for word in ("duckdb", "Conversion", "see notes", "SELECT", "site"):
            assert word not in result.reason, (name, result.reason)


# ----------------------------------------------------------------- SQLite TEXT columns
IMPORT_SPEC = parse_spec({"analysis": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "los_SMD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    {"name": "brier", "estimator": "brier", "outcome": "outcome", "score": "risk_score"},
    {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "adjusted_MD", "estimator": "linear", "outcome": "los_days",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "logHR", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age", "sex"], "ties": "efron"},
]})


def site_csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)   # missing values as empty fields
    return path


def test_a_csv_imported_by_the_sqlite_shell_gives_the_csv_estimates(tmp_path: Path) -> None:
    """``.import`` stores every field as TEXT, a blank as '': numbers, and missing."""
    csv = site_csv(tmp_path, with_gaps(public_site("mtf-charlie"), seed=5, shuffle=False))
    url = sqlite_imported(csv, tmp_path / "site.db")
    source = SqlSource(url, table="site")
    assert source.declared_type("age") == "TEXT"
    try:
        got = estimate_all_sql(source, IMPORT_SPEC)
    finally:
        source.dispose()
    want = estimate_all(load_table(csv), IMPORT_SPEC)
    for name, expected in want.items():
        result = got[name]
        assert isinstance(expected, Estimate) and isinstance(result, Estimate), (name, result)
        assert (result.n, result.n_dropped, dict(result.cells)) == \
            (expected.n, expected.n_dropped, dict(expected.cells)), name
        assert result.yi == pytest.approx(expected.yi, rel=1e-10, abs=1e-13), name
        assert result.vi == pytest.approx(expected.vi, rel=1e-10, abs=1e-15), name
    assert got["adjusted_logOR"].n_dropped > 0   # the blanks were missing, not zeros


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 shell (Debian's "
                    "sqlite3 package) to run .import")
def test_the_real_sqlite_shell_import(tmp_path: Path) -> None:
    csv = site_csv(tmp_path, with_gaps(public_site("mtf-delta"), seed=9, shuffle=False))
    db = tmp_path / "shell.db"
    subprocess.run(["sqlite3", str(db)], input=f".mode csv\n.import {csv} site\n",
                   text=True, check=True, capture_output=True)
    source = SqlSource(f"sqlite:///{db}", table="site")
    try:
        got = estimate_all_sql(source, IMPORT_SPEC)
    finally:
        source.dispose()
    want = estimate_all(load_table(csv), IMPORT_SPEC)
    for name, expected in want.items():
        assert isinstance(got[name], Estimate), (name, got[name])
        assert got[name].n == expected.n, name
        assert got[name].yi == pytest.approx(expected.yi, rel=1e-10, abs=1e-13), name


@pytest.mark.parametrize("value", ["12 mg", "<5", "0x10", "1,5", "-"])
def test_text_that_is_not_a_number_is_refused_naming_column_and_type(
        tmp_path: Path, value: str) -> None:
    """SQLite's CAST would read '12 mg' as 12: such text refuses the analyses using it."""
    frame = public_site("mtf-charlie")
    csv = site_csv(tmp_path, frame.astype({"age": object}).assign(
        age=lambda f: f["age"].where(f.index != 7, value)))
    source = SqlSource(sqlite_imported(csv, tmp_path / "site.db"), table="site")
    try:
        got = estimate_all_sql(source, IMPORT_SPEC)
    finally:
        source.dispose()
    csv_path = estimate_all(load_table(csv), IMPORT_SPEC)
    for name in ("adjusted_logOR", "adjusted_MD", "logHR"):    # age is a covariate
        refusal = got[name]
        assert isinstance(refusal, Refusal), (name, refusal)
        assert refusal.key == "not_numeric" and refusal.code == "invalid_values"
        assert refusal.code == csv_path[name].code
        assert refusal.reason == "column 'age' holds values that are not numbers"
        assert value not in refusal.reason and "TEXT" not in refusal.reason
        # the site's local detail names the column, its declared type and the fix
        assert "'age'" in refusal.detail and "declared TEXT" in refusal.detail
        assert "table = 'site'" in refusal.detail and "set to NULL" in refusal.detail
        assert repr(value) not in refusal.detail
    for name in ("crude_OR", "los_SMD", "auc", "brier"):       # do not use age
        assert isinstance(got[name], Estimate), (name, got[name])


def test_a_query_source_names_the_query_in_the_detail(tmp_path: Path) -> None:
    frame = pd.DataFrame({"y": [0, 1] * 30, "x": [1, 1, 0] * 20,
                          "c": ["1.5", "2", " 3 ", "4e-1", "", "oops"] * 10})
    url = sqlite_table(frame, tmp_path / "site.db")
    source = SqlSource(url, query="SELECT y, x, c FROM site")
    spec = parse_spec({"analysis": [{"name": "lr", "estimator": "logistic", "outcome": "y",
                                     "exposure": "x", "covariates": ["c"]}]})
    try:
        refusal = estimate_all_sql(source, spec)["lr"]
    finally:
        source.dispose()
    assert isinstance(refusal, Refusal) and refusal.key == "not_numeric"
    assert source.declared_type("c") is None
    assert "query = 'SELECT y, x, c FROM site'" in refusal.detail


def test_numeric_text_and_blanks_equal_numbers_and_nulls(tmp_path: Path) -> None:
    """Numeric text ('1.5', ' 3 ', '4e-1') is that number; '', 'NA', 'NULL' are NULL."""
    rng = np.random.default_rng(4)
    n = 200
    c = rng.normal(size=n).round(3)
    texts = [str(float(v)) if i % 3 else f" {v:e} " for i, v in enumerate(c)]
    missing = rng.random(n) < 0.1
    numbers = pd.DataFrame({"y": rng.integers(0, 2, n), "x": rng.integers(0, 2, n),
                            "c": np.where(missing, np.nan, c)})
    blanks = np.array(["", "NA", "NULL", "n/a"])[np.arange(n) % 4]   # as the CSV reader
    text = numbers.assign(c=np.where(missing, blanks, texts).astype(object))
    spec = parse_spec({"analysis": [
        {"name": "lr", "estimator": "logistic", "outcome": "y", "exposure": "x",
         "covariates": ["c"]},
        {"name": "auc", "estimator": "auc", "outcome": "y", "score": "c"}]})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    as_numbers = SqlSource(sqlite_table(numbers, tmp_path / "a" / "s.db"), table="site")
    as_text = SqlSource(sqlite_table(text, tmp_path / "b" / "s.db"), table="site")
    try:
        assert as_text.declared_type("c") == "TEXT"
        a, b = estimate_all_sql(as_numbers, spec), estimate_all_sql(as_text, spec)
    finally:
        as_numbers.dispose()
        as_text.dispose()
    for name in ("lr", "auc"):
        assert isinstance(a[name], Estimate) and isinstance(b[name], Estimate), (name, b)
        assert (b[name].n, b[name].n_dropped) == (a[name].n, a[name].n_dropped)
        assert b[name].n_dropped == int(missing.sum())
        assert b[name].yi == pytest.approx(a[name].yi, rel=1e-12)
        assert b[name].vi == pytest.approx(a[name].vi, rel=1e-12)
