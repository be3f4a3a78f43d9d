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
ENGINES = ("duckdb", "spark", "parquet", "pandas")

# The table, generated inside DuckDB: uniforms from a hash of the row number (the same
# table whatever DuckDB's thread count), so no row is ever a Python object. The model is
# the PostgreSQL benchmark's (tests/_data_builders.big_frame) plus Cox times in days.
GENERATE = """
CREATE OR REPLACE TABLE site AS
WITH u AS (
    SELECT {uniforms} FROM range({rows}) AS r(i)
), x AS (
    SELECT 18 + floor(u1 * 77)::INTEGER AS age, floor(u2 * 2)::INTEGER AS sex,
           floor(u3 * 2)::INTEGER AS treated, u4, u5, u6, u7, u8, u9
    FROM u
), lp AS (
    SELECT *, -2.0 + 0.03 * (age - 60) + 0.2 * sex - 0.3 * treated AS lp,
           sqrt(-2 * ln(u5)) * cos(2 * pi() * u6) AS z,
           -ln(u9) / exp(0.3 * treated + 0.02 * (age - 60)) AS latent
    FROM x
)
SELECT age, sex, treated,
       (u4 < 1 / (1 + exp(-lp)))::INTEGER AS outcome,
       round(3 * (-ln(u7) - ln(u8)) + 0.5 * treated, 1) AS los_days,
       greatest(least(round(1 / (1 + exp(-(lp + 0.8 * z))), 4), 0.9999), 0.0001)
           AS risk_score,
       least(ceil(latent * 365), 730)::DOUBLE AS time,
       (latent < 2)::INTEGER AS event
FROM lp
"""


def generate(rows: int, workdir: Path) -> None:
    """The benchmark table at ``rows`` rows: a DuckDB file, a Parquet file and folder.

    Runs in its own process (DuckDB's buffers are not the benchmark's figures). Every
    engine reads the same rows: DuckDB the table, pandas and Spark the Parquet file
    (``site.parquet``), the block scanner the folder (one file per DuckDB thread).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    uniforms = ", ".join(f"((hash(i * 16 + {k}) >> 11) + 0.5) / 9007199254740992 AS u{k}"
                         for k in range(1, 10))
    script = (
        "import duckdb, sys\n"
        "workdir, sql = sys.argv[1], sys.argv[2]\n"
        "with duckdb.connect(workdir + '/site.duckdb') as conn:\n"
        "    conn.execute(\"SET enable_progress_bar = false\")\n"
        "    conn.execute(sql)\n"
        "    conn.execute(f\"COPY site TO '{workdir}/site.parquet' (FORMAT parquet, "
        "ROW_GROUP_SIZE 131072)\")\n"
        "    conn.execute(f\"COPY site TO '{workdir}/folder' (FORMAT parquet, "
        "PER_THREAD_OUTPUT, OVERWRITE_OR_IGNORE)\")\n")
    subprocess.run([sys.executable, "-c", script, str(workdir),
                    GENERATE.format(uniforms=uniforms, rows=rows)], check=True, cwd=ROOT)


ENGINE_CHILD = r"""
import json, os, resource, sys, time
from fedsynth.spec import parse_spec
mode, workdir, spec_json = sys.argv[1:4]
spec = parse_spec(json.loads(spec_json))


def descendants_peak_kb():
    # peak resident set (VmHWM) of every process below this one: Spark's JVM
    me, children, peak = str(os.getpid()), {}, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(me, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                peak = max([peak] + [int(line.split()[1]) for line in f
                                     if line.startswith("VmHWM:")])
        except OSError:
            pass
    return peak


stop = lambda: None
if mode == "duckdb":
    from site_agent.connectors import SqlSource, estimate_all_sql
    source = SqlSource("duckdb:///" + workdir + "/site.duckdb", table="site")
    source.columns()
    run = lambda: estimate_all_sql(source, spec)
elif mode == "spark":
    from site_agent.connectors.spark import estimate_all_spark, get_session
    spark = get_session({"master": "local[2]"})
    frame = spark.read.parquet(workdir + "/site.parquet").cache()
    frame.count()  # in Spark's memory before the clock starts, as a cluster's table
    run = lambda: estimate_all_spark(frame, spec)
elif mode == "parquet":
    from site_agent.connectors import estimate_from_data
    run = lambda: estimate_from_data({"path": workdir + "/folder"}, spec)
else:
    import pandas as pd
    from fedsynth.effects import estimate_all
    run = lambda: estimate_all(pd.read_parquet(workdir + "/site.parquet"), spec)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu = time.perf_counter(), time.process_time()
results = run()
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "cpu": cpu, "peak_mb": after / 1024,
                  "rss_growth_mb": (after - before) / 1024,
                  "engine_peak_mb": descendants_peak_kb() / 1024,
                  "n": {k: getattr(v, "n", None) for k, v in results.items()},
                  "yi": {k: getattr(v, "yi", None) for k, v in results.items()}}))
"""


def run_engine(mode: str, workdir: Path) -> dict:
    """One engine on the generated table, in a fresh process; its figures as a dict."""
    child = subprocess.run([sys.executable, "-c", ENGINE_CHILD, mode, str(workdir),
                            json.dumps(ENGINE_SPEC)], cwd=ROOT, capture_output=True,
                           text=True, timeout=7200)
    if child.returncode != 0:
        raise RuntimeError(child.stderr.strip().splitlines()[-1])
    # the last JSON line (DuckDB may print a progress bar before it)
    return json.loads(child.stdout[child.stdout.rindex('{"seconds"'):].strip())


def engines(modes: list[str], rows: int, workdir: Path, generate_table: bool = True) -> None:
    """Issue 18: every engine against pandas on one table generated in DuckDB."""
    if generate_table:
        generate(rows, workdir)
    print(f"{'rows':>10} {'engine':>8} {'seconds':>8} {'CPU s':>7} {'agent peak MB':>14} "
          f"{'growth MB':>10} {'JVM peak MB':>12}")
    out: dict[str, dict] = {}
    for mode in modes:
        try:
            out[mode] = result = run_engine(mode, workdir)
        except RuntimeError as error:
            print(f"{rows:>10} {mode:>8} failed: {error}")
            continue
        jvm = f"{result['engine_peak_mb']:.0f}" if result["engine_peak_mb"] else "-"
        print(f"{rows:>10} {mode:>8} {result['seconds']:>8.2f} {result['cpu']:>7.2f} "
              f"{result['peak_mb']:>14.0f} {result['rss_growth_mb']:>10.0f} {jvm:>12}",
              flush=True)
    for mode, result in out.items():
        assert set(result["n"].values()) == {rows}, (mode, result["n"])
    if "pandas" in out:
        base = out["pandas"]
        for mode, result in out.items():
            same = all(abs(result["yi"][k] - base["yi"][k])
                       <= 1e-9 * max(1.0, abs(base["yi"][k])) for k in base["yi"])
            print(f"{mode:>8}: time {result['seconds'] / base['seconds']:.2f}x pandas, "
                  f"agent peak {result['peak_mb']:.0f} MB vs {base['peak_mb']:.0f} MB; "
                  f"estimates equal (1e-9): {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; best time")
    parser.add_argument("--engines", nargs="+", choices=ENGINES,
                        help="issue 18: compare these engines on one generated table")
    parser.add_argument("--one", choices=ENGINES,
                        help="run one engine on the table already in --workdir and print "
                             "its figures (to time the whole process from outside)")
    parser.add_argument("--generate", action="store_true",
                        help="only generate the table of --rows rows in --workdir")
    parser.add_argument("--reuse", action="store_true",
                        help="--engines: use the table already generated in --workdir/ROWS")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fedsynth-site-bench"))
    args = parser.parse_args()
    if args.one:
        # this process is the engine's process (no child in between)
        sys.argv = ["-c", args.one, str(args.workdir), json.dumps(ENGINE_SPEC)]
        exec(compile(ENGINE_CHILD, "<engine>", "exec"), {"__name__": "__engine__"})
        return
    if args.generate:
        generate(args.rows[0], args.workdir)
        return
    if args.engines:
        for rows in args.rows:
            engines(args.engines, rows, args.workdir / str(rows),
                    generate_table=not args.reuse)
        return

    from tests._data_builders import INT_TYPES, big_frame, copy_frame
    from tests.integration.pg_server import fresh_database
    from tests.integration.test_sql_source import SPEC

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
