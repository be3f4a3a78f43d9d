"""The SQL engine's refusals: the vocabulary's sentence, never the database's text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from fedsynth.effects import estimate_all
from fedsynth.effects.results import REFUSAL_VOCABULARY, Refusal
from fedsynth.spec import parse_spec
from site_agent.connectors import SqlSource, estimate_all_sql

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
    url = f"sqlite:///{tmp_path / 'site.db'}"
    engine = sa.create_engine(url)
    frame.to_sql("site", engine, index=False)
    engine.dispose()
    return SqlSource(url, table="site")


def duckdb(frame: pd.DataFrame, tmp_path: Path) -> SqlSource:
    duck = pytest.importorskip("duckdb", reason="duckdb is the [duckdb] extra")
    pytest.importorskip("duckdb_engine", reason="duckdb-engine is the [duckdb] extra")
    path = tmp_path / "site.duckdb"
    with duck.connect(str(path)) as conn:
        conn.register("frame", frame)
        conn.execute("CREATE TABLE site AS SELECT * FROM frame")
    return SqlSource(f"duckdb:///{path}", table="site")


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
