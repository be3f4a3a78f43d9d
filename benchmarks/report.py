"""Benchmark of the HTML report of a big round: N sites x M analyses (default 300 x 200).

What it measures
----------------
The round document is built the way the coordinator builds it at close:
``coordinator.rounds.pool_round`` on N synthetic submissions (one per site, M analyses each:
two-group mean differences, logistic ORs and c-statistics pooled on the logit scale, a
third of them heterogeneous so they are flagged and carry BLUPs, a few refusals), so the
report sees the document a real 300-site round produces. The document is cached in
``--workdir`` (``round.json``) and the report is then written by a fresh interpreter,
``python -m coordinator.report_worker DIR`` with the document on stdin: exactly what the
coordinator's reporter task runs. Reported:

* ``report_s`` and ``report_cpu_s``: wall and CPU (user + system) time of that worker
  process, imports included (on a shared machine the CPU time is the steadier figure);
* ``html_mb``: total size of the HTML written (the summary page and every analysis page),
  ``json_mb`` the round document beside it, ``largest_html_mb`` the largest single page;
* ``per_plot_ms``: CPU time of one forest plot of a flagged N-site analysis drawn by the
  report in this process (median of ``--repeat`` draws after a warm-up).

Usage::

    python benchmarks/report.py                         # 300 sites x 200 analyses
    python benchmarks/report.py --sites 30 --analyses 10 --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coordinator.rounds import pool_round  # noqa: E402
from coordinator.store import RoundRecord, SubmissionRecord  # noqa: E402

TARGET_SECONDS = 30.0
TARGET_MB = 20.0

_KINDS = (("two_group", "MD", None), ("logistic", "OR", None), ("auc", None, "logit"))


def _spec(analyses: int) -> dict:
    out = []
    for i in range(analyses):
        estimator, measure, scale = _KINDS[i % len(_KINDS)]
        entry = {"name": f"a{i:03d}_{estimator}", "estimator": estimator}
        if measure:
            entry["measure"] = measure
        if scale:
            entry["scale"] = scale
        out.append(entry)
    return {"name": "report-benchmark", "analyses": out}


def build_document(sites: int, analyses: int, seed: int = 17) -> dict:
    """A pooled round document of ``sites`` x ``analyses`` (pooled by the coordinator's code)."""
    rng = random.Random(seed)
    spec = _spec(analyses)
    names = [f"hospital-{j:04d}-{'north' if j % 3 else 'south-east-campus'}"
             for j in range(sites)]
    now = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
    effects = []
    for i, a in enumerate(spec["analyses"]):
        tau = 0.1 if i % 3 == 0 else 0.01           # a third heterogeneous: flagged, BLUPs
        mu = {"two_group": 0.4, "logistic": 0.25, "auc": 1.1}[a["estimator"]]
        effects.append((mu, tau))
    subs = []
    for j, site in enumerate(names):
        n = rng.randint(80, 4000)
        results: dict[str, dict] = {}
        for i, a in enumerate(spec["analyses"]):
            if (i + j) % 97 == 0:
                results[a["name"]] = {"refused": "disclosure limit: a cell of 3 is below 5"}
                continue
            mu, tau = effects[i]
            vi = 4.0 / n * rng.uniform(0.6, 1.6)
            yi = rng.gauss(mu, math.sqrt(vi + tau * tau))
            if a["estimator"] == "auc":                 # sent raw, pooled on logit
                se_logit = math.sqrt(vi)
                p = 1.0 / (1.0 + math.exp(-yi))
                se = se_logit * p * (1 - p)
                results[a["name"]] = {"yi": p, "vi": se * se, "se": se, "n": n}
            else:
                results[a["name"]] = {"yi": yi, "vi": vi, "se": math.sqrt(vi), "n": n}
        subs.append(SubmissionRecord(
            round_id="r-bench", site=site, nonce=f"{j:08x}", signed_at=now.isoformat(),
            received_at=(now + dt.timedelta(seconds=j)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            payload=b"", signature=b"", digest=f"{j:064x}", results=results,
            agent_version=None))
    record = RoundRecord(
        id=f"r-20261128-{sites}x{analyses}", status="open", spec_toml="", spec=spec,
        opened_at=now, deadline=now + dt.timedelta(hours=2), closed_at=None, quorum=3,
        allowed=tuple(names), pooling={}, failure_reason=None, n_submissions=len(subs),
        document=None, report=None, source=None)
    outcome = pool_round(record, subs, now + dt.timedelta(minutes=30))
    return outcome.document.to_dict()


def _tree_size(folder: Path) -> tuple[int, int, int]:
    """(total bytes, largest HTML file, number of files) under ``folder``."""
    total, largest, count = 0, 0, 0
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            total += size
            count += 1
            if path.suffix == ".html":
                largest = max(largest, size)
    return total, largest, count


def _per_plot_ms(document: dict, repeat: int) -> float:
    # lazy: the benchmark times the report's own imports in the worker process first
    import coordinator.reports as reports

    analysis = next(a for a in document["analyses"] if a["heterogeneity"]["flagged"])
    reports._forest_svg(analysis, id_prefix="w-")                   # warm-up (imports)
    times = []
    for _ in range(repeat):                 # CPU time: the machine is shared
        start = time.process_time()
        reports._forest_svg(analysis, id_prefix="b-")
        times.append(time.process_time() - start)
    return 1000.0 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=300)
    parser.add_argument("--analyses", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the document and the report here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5, help="forest plots timed")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedsynth-report-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        doc_path = work / f"round-{args.sites}x{args.analyses}.json"
        if doc_path.exists():
            document = json.loads(doc_path.read_text(encoding="utf-8"))
        else:
            document = build_document(args.sites, args.analyses)
            doc_path.write_text(json.dumps(document), encoding="utf-8")
        out = work / "reports"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        load = os.getloadavg()[0]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "coordinator.report_worker", str(out)],
                              input=doc_path.read_bytes(), capture_output=True, env=env,
                              check=False)
        report_s = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report_cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        if proc.returncode != 0 or b'"error"' in proc.stdout:
            sys.stderr.write(proc.stdout.decode() + proc.stderr.decode()[-3000:])
            return 1
        total, largest, files = _tree_size(out)
        json_bytes = sum(p.stat().st_size for p in out.glob("*.json"))
        figures = {
            "sites": args.sites, "analyses": args.analyses,
            "flagged": sum(1 for a in document["analyses"] if a["heterogeneity"]["flagged"]),
            "load_1min_before": round(load, 2), "report_s": round(report_s, 2),
            "report_cpu_s": round(report_cpu_s, 2),
            "html_mb": round((total - json_bytes) / 1e6, 2), "json_mb": round(json_bytes / 1e6, 2),
            "largest_html_mb": round(largest / 1e6, 3),
            "files": files, "per_plot_ms": round(_per_plot_ms(document, args.repeat), 1),
            "load_1min_after": round(os.getloadavg()[0], 2),
            "target": f"< {TARGET_SECONDS:g} s and < {TARGET_MB:g} MB",
        }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
