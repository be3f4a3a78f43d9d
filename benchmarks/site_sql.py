"""Site data in PostgreSQL: SQL pushdown against loading the table into pandas.

For each table size, the same analyses (2×2 OR, SMD, log O/E, Brier, DeLong AUC) are
computed two ways, each in a fresh subprocess so peak memory is the process's own:

* **pushdown**: :func:`site_agent.connectors.estimate_all_sql`, only aggregates leave
  the database;
* **pandas**: ``pandas.read_sql_table`` of the whole table, then
  :func:`fedsynth.effects.estimate_all` (what an agent without pushdown does).

It prints wall time, peak RSS growth (``ru_maxrss`` after minus before the work) and the
ratio pandas / pushdown. Needs a PostgreSQL server: ``FEDSYNTH_TEST_POSTGRES_URL``, or it
starts a private one as the tests do (tests/integration/pg_server.py).

    python benchmarks/site_sql.py [--rows 100000 1000000]

``--engines`` (issue 18) instead compares, on one generated Parquet file of ``--rows`` rows,
the estimators two_by_two, two_group, auc, logistic and cox computed

* **duckdb**: every estimator inside an embedded DuckDB file (``[duckdb]`` extra);
* **spark**: as Spark jobs on a local[2] session (``[spark]`` extra; the table is cached
  in Spark before the clock starts, as a cluster's table would be);
* **parquet**: scanned from the file in record batches (``[data] path`` = a folder);
* **pandas**: ``pandas.read_parquet`` of the whole file, then the DataFrame estimators;

each in a fresh subprocess, printing time and peak RSS growth of the agent's process:

    python benchmarks/site_sql.py --engines duckdb spark parquet pandas --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
import sqlalchemy as sa
from fedsynth.spec import parse_spec
import site_agent.connectors.pushdown
from site_agent.connectors import SqlSource, estimate_all_sql
from fedsynth.effects import estimate_all
import pandas as pd
mode, url, table, spec_json = sys.argv[1:5]
spec = parse_spec(json.loads(spec_json))
source = SqlSource(url, table=table)
source.columns()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "pushdown":
    results = estimate_all_sql(source, spec)
else:
    frame = pd.read_sql_table(table, source.engine)
    results = estimate_all(frame, spec)
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_mb": (after - before) / 1024,
                  "yi": {k: getattr(v, "yi", None) for k, v in results.items()}}))
"""


def run(mode: str, url: str, table: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, url, table, json.dumps(spec)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


ENGINE_SPEC = {"analysis": [
    {"name": "two_by_two", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "two_group", "estimator": "two_group", "outcome": "los_days",
     "exposure": "treated", "measure": "SMD"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
    {"name": "logistic", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "cox", "estimator": "cox", "time": "time", "event": "event",
     "exposure": "treated", "covariates": ["age", "sex"]},
]}

ENGINE_CHILD = r"""
import json, resource, sys, time
from fedsynth.spec import parse_spec
mode, path, spec_json, workdir = sys.argv[1:5]
spec = parse_spec(json.loads(spec_json))
if mode == "duckdb":
    import duckdb
    from site_agent.connectors import SqlSource, estimate_all_sql
    db = workdir + "/site.duckdb"
    with duckdb.connect(db) as conn:
        conn.execute(f"CREATE OR REPLACE TABLE site AS SELECT * FROM read_parquet('{path}')")
    source = SqlSource("duckdb:///" + db, table="site")
    source.columns()
    run = lambda: estimate_all_sql(source, spec)
elif mode == "spark":
    from site_agent.connectors.spark import estimate_all_spark, get_session
    spark = get_session({"master": "local[2]"})
    frame = spark.read.parquet(path).cache()
    frame.count()
    run = lambda: estimate_all_spark(frame, spec)
elif mode == "parquet":
    from site_agent.connectors import estimate_from_data
    run = lambda: estimate_from_data({"path": workdir + "/folder"}, spec)
else:
    import pandas as pd
    from fedsynth.effects import estimate_all
    run = lambda: estimate_all(pd.read_parquet(path), spec)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
results = run()
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_mb": (after - before) / 1024,
                  "yi": {k: getattr(v, "yi", None) for k, v in results.items()}}))
"""


def engines(modes: list[str], rows: int, workdir: Path) -> None:
    """Issue 18: every engine against pandas on one generated table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.integration.test_sql_source import big_frame

    frame = big_frame(rows)
    rng = np.random.default_rng(18)
    lp = 0.3 * frame["treated"] + 0.02 * (frame["age"] - 60)
    latent = rng.exponential(1.0, rows) / np.exp(lp)
    frame["time"] = np.minimum(np.ceil(latent * 365), 730.0)   # days, ties
    frame["event"] = (latent < 2).astype(int)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "site.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    (workdir / "folder").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   workdir / "folder" / "part-0.parquet", row_group_size=131_072)
    del frame
    print(f"{'rows':>10} {'engine':>8} {'seconds':>9} {'peak RSS +MB':>13}")
    out: dict[str, dict] = {}
    for mode in modes:
        child = subprocess.run([sys.executable, "-c", ENGINE_CHILD, mode, str(path),
                                json.dumps(ENGINE_SPEC), str(workdir)], cwd=ROOT,
                               capture_output=True, text=True, timeout=7200)
        if child.returncode != 0:
            print(f"{rows:>10} {mode:>8} failed: {child.stderr.strip().splitlines()[-1]}")
            continue
        # the last JSON line (DuckDB may print a progress bar before it)
        out[mode] = json.loads(child.stdout[child.stdout.rindex('{"seconds"'):].strip())
        print(f"{rows:>10} {mode:>8} {out[mode]['seconds']:>9.2f} "
              f"{out[mode]['rss_growth_mb']:>13.1f}", flush=True)
    if "pandas" in out:
        base = out["pandas"]
        for mode, result in out.items():
            same = all(abs((result["yi"][k] or 0) - (base["yi"][k] or 0))
                       <= 1e-9 * max(1.0, abs(base["yi"][k] or 0)) for k in base["yi"])
            print(f"{mode:>8}: time {result['seconds'] / base['seconds']:.2f}x pandas, "
                  f"peak RSS growth {result['rss_growth_mb']:.0f} MB vs "
                  f"{base['rss_growth_mb']:.0f} MB; estimates equal: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; best time")
    parser.add_argument("--engines", nargs="+", choices=["duckdb", "spark", "parquet",
                                                          "pandas"],
                        help="issue 18: compare these engines on one generated table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fedsynth-site-bench"))
    args = parser.parse_args()
    if args.engines:
        for rows in args.rows:
            engines(args.engines, rows, args.workdir)
        return

    from tests.integration.pg_server import fresh_database
    from tests.integration.test_sql_source import INT_TYPES, SPEC, big_frame, copy_frame

    spec = {"analysis": [a.to_dict() for a in SPEC.analyses]}
    url = fresh_database("bench")
    print(f"{'rows':>10} {'mode':>9} {'seconds':>9} {'peak RSS +MB':>13}")
    for rows in args.rows:
        table = f"t{rows}"
        copy_frame(url, table, big_frame(rows), INT_TYPES)
        best: dict[str, dict] = {}
        for mode in ("pushdown", "pandas"):
            runs = [run(mode, url, table, spec) for _ in range(args.repeat)]
            best[mode] = {"seconds": min(r["seconds"] for r in runs),
                          "rss_growth_mb": max(r["rss_growth_mb"] for r in runs),
                          "yi": runs[0]["yi"]}
            print(f"{rows:>10} {mode:>9} {best[mode]['seconds']:>9.3f} "
                  f"{best[mode]['rss_growth_mb']:>13.1f}")
        same = all(abs(best["pushdown"]["yi"][k] - best["pandas"]["yi"][k])
                   <= 1e-8 * max(1.0, abs(best["pandas"]["yi"][k]))
                   for k in best["pandas"]["yi"])
        speed = best["pandas"]["seconds"] / best["pushdown"]["seconds"]
        memory = (best["pandas"]["rss_growth_mb"] /
                  max(best["pushdown"]["rss_growth_mb"], 0.1))
        print(f"{rows:>10} ratio pandas/pushdown: time {speed:.1f}x, peak RSS growth "
              f"{memory:.0f}x (pushdown floor 0.1 MB); estimates equal: {same}")


if __name__ == "__main__":
    main()
