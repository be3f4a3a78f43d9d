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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; best time")
    args = parser.parse_args()

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
