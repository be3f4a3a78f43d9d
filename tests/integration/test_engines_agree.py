"""Every estimator gives the same result on every engine (issue 18's one parametrised test).

The same rows (a public site with a few missing values and a categorical column) are
stored as a CSV file, a SQLite file, a PostgreSQL table, a DuckDB file, a partitioned
Parquet folder and a Spark table; each source goes through the site agent's own entry
point (:func:`site_agent.connectors.estimate_from_data`) and must give the CSV path's
estimates to 1e-10 (relative), the same counts for disclosure control, the same refusals.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from fedsynth.effects.results import Estimate, Refusal
from fedsynth.spec import parse_spec
from site_agent.connectors import estimate_from_data
from tests._data_builders import (
    GRADES,
    copy_frame,
    duckdb_table,
    engines_frame,
    parquet_folder,
    sqlite_table,
)

pytestmark = [pytest.mark.integration]

SPEC = parse_spec({"analysis": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "crude_RR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "RR"},
    {"name": "los_SMD", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "outcome_MD", "estimator": "two_group", "outcome": "outcome",
     "exposure": "treated", "measure": "MD"},
    {"name": "log_OE", "estimator": "oe_ratio", "outcome": "outcome", "score": "risk_score"},
    {"name": "brier", "estimator": "brier", "outcome": "outcome", "score": "risk_score"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    {"name": "logit_auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score",
     "scale": "logit"},
    {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex", "grade"],
     "categorical": {"grade": GRADES}},
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
    {"name": "refused_missing", "estimator": "two_by_two", "outcome": "died",
     "exposure": "treated"},
    {"name": "refused_non_binary", "estimator": "logistic", "outcome": "los_days",
     "exposure": "treated"},
]})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return engines_frame()


@pytest.fixture(scope="module")
def expected(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("csv") / "site.csv"
    frame.to_csv(path, index=False)
    return estimate_from_data({"path": str(path)}, SPEC)


def sqlite_source(frame: pd.DataFrame, tmp: Path) -> dict[str, Any]:
    return {"url": sqlite_table(frame, tmp / "site.db"), "table": "site"}


def duckdb_source(frame: pd.DataFrame, tmp: Path) -> dict[str, Any]:
    url = duckdb_table(frame, tmp / "site.duckdb")
    return {"url": url, "query": "SELECT * FROM site WHERE 1 = 1"}


def postgres_source(frame: pd.DataFrame, tmp: Path) -> dict[str, Any]:
    from tests.integration.pg_server import fresh_database

    url = fresh_database("engines")
    copy_frame(url, "site", frame, {"grade": "text", "sex": "integer", "treated": "integer",
                                    "outcome": "integer", "event": "integer"})
    return {"url": url, "table": "site"}


def parquet_source(frame: pd.DataFrame, tmp: Path) -> dict[str, Any]:
    return {"path": str(parquet_folder(frame, tmp / "site_parquet",
                                       partition=("sex", pa.float64())))}


def spark_source(frame: pd.DataFrame, tmp: Path) -> dict[str, Any]:
    from tests.integration.spark_session import spark_session

    spark = spark_session()
    folder = tmp / "spark_parquet"
    frame.to_parquet(folder, index=False)
    spark.read.parquet(str(folder)).repartition(3).createOrReplaceTempView("site")
    return {"spark": {"table": "site", "master": "local[2]"}}


SOURCES = {"sqlite": sqlite_source, "postgres": postgres_source, "duckdb": duckdb_source,
           "parquet_folder": parquet_source, "spark": spark_source}


@pytest.mark.parametrize("engine", [pytest.param(name, marks=[pytest.mark.postgres])
                                    if name == "postgres" else name for name in SOURCES])
def test_every_estimator_agrees_with_the_csv_path(engine: str, frame: pd.DataFrame,
                                                   expected: dict, tmp_path: Path) -> None:
    data = SOURCES[engine](frame, tmp_path)
    got = estimate_from_data(data, SPEC)
    assert list(got) == list(expected)
    for name, want in expected.items():
        result = got[name]
        assert type(result) is type(want), (engine, name, result)
        if isinstance(want, Refusal):
            assert (result.code, result.reason) == (want.code, want.reason), name
            continue
        assert isinstance(result, Estimate)
        assert (result.measure, result.n, result.n_dropped, dict(result.cells)) == \
            (want.measure, want.n, want.n_dropped, dict(want.cells)), (engine, name)
        assert {k: v for k, v in result.details.items() if k != "source"} == want.details
        assert result.yi == pytest.approx(want.yi, rel=1e-10, abs=1e-13), (engine, name)
        assert result.vi == pytest.approx(want.vi, rel=1e-10, abs=1e-15), (engine, name)
    assert sum(isinstance(r, Estimate) for r in got.values()) == len(SPEC.analyses) - 2
    shutil.rmtree(tmp_path, ignore_errors=True)
