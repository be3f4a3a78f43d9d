"""One builder of the engine tests' data: the site's rows, and the same rows in each engine.

The engine tests (tests/unit/test_aggregates.py, test_connectors.py, test_sql_engine.py,
tests/integration/test_engines_agree.py, test_sql_source.py) and benchmarks/site_sql.py
compare a DataFrame with the same rows stored in SQLite, PostgreSQL, DuckDB, a Parquet
folder or Spark. Each used to build those copies its own way; they are built here once, so
"the same rows" means the same thing in every test.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa

from fedsynth.meta.stats import as_batch, tau2_estimate
from site_agent.data import load_table

PUBLIC_SITES = Path(__file__).resolve().parent / "data" / "sites_public"
GRADES = ["low", "mid", "high"]
#: PostgreSQL column types of the 0/1 and integer columns (the others: double precision)
INT_TYPES = {"age": "integer", "sex": "integer", "treated": "integer", "outcome": "integer",
             "event": "integer"}


# --------------------------------------------------------------------------- rows
def public_site(name: str = "mtf-bravo", *, keep_id: bool = False) -> pd.DataFrame:
    """A public reference site (tests/data/sites_public) read by the CSV path's reader."""
    frame = load_table(PUBLIC_SITES / f"{name}.csv")
    frame.attrs = {}  # the CSV reader's dialect, which pyarrow cannot serialise
    return frame if keep_id else frame.drop(columns=["patient_id"])


def with_gaps(frame: pd.DataFrame, seed: int, rate: float = 0.02,
              columns: Sequence[str] = ("age", "los_days", "risk_score", "time"),
              shuffle: bool = True) -> pd.DataFrame:
    """The rows with a few missing values (dropped per analysis), shuffled by default."""
    rng = np.random.default_rng(seed)
    out = (frame.sample(frac=1.0, random_state=seed).reset_index(drop=True) if shuffle
           else frame.copy())
    for column in columns:
        out.loc[rng.random(len(out)) < rate, column] = None
    return out


def engines_frame() -> pd.DataFrame:
    """mtf-bravo with a 3-level text column ``grade`` and 3% gaps (test_engines_agree)."""
    frame = public_site("mtf-bravo")
    rng = np.random.default_rng(18)
    frame["grade"] = rng.choice(GRADES, len(frame))
    for column in ("age", "los_days", "risk_score", "time", "grade"):
        frame.loc[rng.random(len(frame)) < 0.03, column] = None
    return frame


def big_frame(rows: int, seed: int = 20261125) -> pd.DataFrame:
    """A synthetic site of ``rows`` rows: 0/1 outcome from a logistic model, a rounded score.

    The score is miscalibrated and rounded to 4 decimals (many ties, as deployed models
    report them); ``los_days`` is a gamma outcome shifted by treatment.
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 95, rows)
    sex = rng.integers(0, 2, rows)
    treated = rng.integers(0, 2, rows)
    lp = -2.0 + 0.03 * (age - 60) + 0.2 * sex - 0.3 * treated
    outcome = (rng.random(rows) < 1 / (1 + np.exp(-lp))).astype(int)
    risk = np.clip(np.round(1 / (1 + np.exp(-(lp + rng.normal(0, 0.8, rows)))), 4),
                   0.0001, 0.9999)
    los = np.round(rng.gamma(2.0, 3.0, rows) + 0.5 * treated, 1)
    return pd.DataFrame({"age": age, "sex": sex, "treated": treated, "outcome": outcome,
                         "los_days": los, "risk_score": risk})


# --------------------------------------------------------------------------- engines
def sqlite_table(frame: pd.DataFrame, path: Path, table: str = "site") -> str:
    """``frame`` as ``table`` of the SQLite file ``path`` (pandas' types); its URL."""
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    try:
        frame.to_sql(table, engine, index=False, if_exists="replace")
    finally:
        engine.dispose()
    return url


def sqlite_imported(csv_path: Path, path: Path, table: str = "site") -> str:
    """A CSV file as the ``sqlite3`` shell's ``.import`` stores it; the database URL.

    ``.import FILE TABLE`` into a new table declares every column ``TEXT`` and stores every
    field as text, an empty field as ``''`` (it cannot write NULL).
    """
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    with sqlite3.connect(path) as conn:
        columns = ", ".join(f'"{c}" TEXT' for c in header)
        conn.execute(f'CREATE TABLE "{table}" ({columns})')
        conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(header))})',
                         body)
    conn.close()
    return f"sqlite:///{path}"


def duckdb_table(frame: pd.DataFrame, path: Path, table: str = "site") -> str:
    """``frame`` as ``table`` of the DuckDB file ``path``; its URL (skips without duckdb)."""
    duckdb = pytest.importorskip("duckdb", reason="duckdb is the [duckdb] extra")
    pytest.importorskip("duckdb_engine", reason="duckdb-engine is the [duckdb] extra")
    with duckdb.connect(str(path)) as conn:
        conn.register("frame", frame)
        conn.execute(f'CREATE TABLE "{table}" AS SELECT * FROM frame')
    return f"duckdb:///{path}"


def copy_frame(url: str, table: str, frame: pd.DataFrame, types: dict[str, str]) -> None:
    """Create ``table`` in PostgreSQL and load ``frame`` with COPY (the fast bulk path)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            columns = ", ".join(f'"{c}" {types.get(c, "double precision")}'
                                for c in frame.columns)
            conn.exec_driver_sql(f'CREATE TABLE "{table}" ({columns})')
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False, na_rep="")
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor:
                with cursor.copy(f'COPY "{table}" FROM STDIN WITH (FORMAT csv)') as copy:
                    copy.write(buffer.getvalue())
            conn.exec_driver_sql(f'ANALYZE "{table}"')
    finally:
        engine.dispose()


def parquet_folder(frame: pd.DataFrame, folder: Path, *,
                   partition: tuple[str, pa.DataType] | None = None,
                   rows_per_file: int = 400, rows_per_group: int = 200) -> Path:
    """``frame`` as a folder of Parquet files, hive-partitioned by ``(column, type)``."""
    partitioning = (ds.partitioning(pa.schema([partition]), flavor="hive") if partition
                    else None)
    ds.write_dataset(pa.Table.from_pandas(frame, preserve_index=False), folder,
                     format="parquet", max_rows_per_file=rows_per_file,
                     max_rows_per_group=rows_per_group, partitioning=partitioning)
    return folder


def pooling_benchmark_data(m: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``benchmarks/pooling.make_data``'s arrays (tests import no benchmark).

    Random-effects data: true tau between 0 and 0.3, within-site variances 0.005-0.1. The
    frozen REML answers of tests/data/reml_batch were made on these arrays (their SHA-256
    is checked by tests/unit/test_reml_batch_frozen.py, so a drift from the benchmark's
    copy is caught).
    """
    rng = np.random.default_rng(seed)
    tau = rng.uniform(0.0, 0.3, m)
    vi = rng.uniform(0.005, 0.1, (m, k))
    mu = rng.normal(0.2, 0.3, (m, 1))
    yi = mu + rng.normal(0.0, 1.0, (m, k)) * np.sqrt(vi + tau[:, None] ** 2)
    return yi, vi


def reml_answers(yi, vi, mask, method: str) -> dict[str, np.ndarray]:
    """tau², its SE, convergence and the weighted estimate and SE they imply.

    What tests/data/reml_batch froze (its maker and tests/unit/test_reml_batch_frozen.py
    compute them with this one function).
    """
    fit = tau2_estimate(yi, vi, mask, method=method)
    b = as_batch(yi, vi, mask)
    w = 1.0 / (b.vw + fit.tau2[:, None])
    sw = w.sum(axis=1)
    return {"tau2": fit.tau2, "se_tau2": fit.se_tau2, "converged": fit.converged,
            "estimate": (w * b.yi).sum(axis=1) / sw, "se": np.sqrt(1.0 / sw)}
