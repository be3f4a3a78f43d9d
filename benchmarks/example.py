"""CPU of ``fedsynth meta --example`` against ``Rscript`` + metafor, in pairs (issue 17).

Both commands are run as whole processes, in turn (ours, R's, ours, R's, ...) after one
warm-up run of each, so that a drift of the shared machine's speed affects both sides of
a pair alike. A run's CPU is the user + system time the kernel accounts to the finished
child (``resource.getrusage(RUSAGE_CHILDREN)`` before and after). Printed: each side's
median CPU and wall time, the median of the per-pair CPU ratios, and the load average
before and after. The R side is ``benchmarks/example_metafor.R`` (``rma`` REML with the z
test, ``confint``, ``read.csv``): what the example prints.

Python's own start-up with this checkout's import hooks is printed too
(``python -c pass``), since it is a floor no change to fedsynth can go below.

Usage::

    python benchmarks/example.py             # 15 pairs
    python benchmarks/example.py --pairs 31 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "fedsynth" / "data" / "seed_example.csv"
R_SCRIPT = ROOT / "benchmarks" / "example_metafor.R"


def run_once(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``argv`` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15, help="counted pairs (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    ours = [sys.executable, "-m", "fedsynth", "meta", "--example"]
    console = shutil.which("fedsynth", path=str(Path(sys.executable).parent))
    if console:
        ours = [console, "meta", "--example"]
    theirs = ["Rscript", str(R_SCRIPT), str(EXAMPLE)]
    load_before = os.getloadavg()
    floor = [run_once([sys.executable, "-c", "pass"])[0] for _ in range(5)]
    run_once(ours)
    run_once(theirs)
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []
    for _ in range(args.pairs):
        a.append(run_once(ours))
        b.append(run_once(theirs))
    load_after = os.getloadavg()
    ratios = [x[0] / y[0] for x, y in zip(a, b)]
    out = {
        "pairs": args.pairs,
        "ours": " ".join(ours), "r": " ".join(theirs),
        "ours_cpu_median_s": statistics.median(x[0] for x in a),
        "ours_cpu_min_s": min(x[0] for x in a),
        "ours_wall_median_s": statistics.median(x[1] for x in a),
        "r_cpu_median_s": statistics.median(y[0] for y in b),
        "r_cpu_min_s": min(y[0] for y in b),
        "r_wall_median_s": statistics.median(y[1] for y in b),
        "cpu_ratio_median": statistics.median(ratios),
        "cpu_ratio_min": min(ratios), "cpu_ratio_max": max(ratios),
        "python_start_cpu_median_s": statistics.median(floor),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.pairs} pairs, load average {out['load_before'][0]:.2f} before, "
          f"{out['load_after'][0]:.2f} after")
    print(f"python -c pass              CPU median {out['python_start_cpu_median_s']:.3f} s")
    print(f"fedsynth meta --example     CPU median {out['ours_cpu_median_s']:.3f} s "
          f"(min {out['ours_cpu_min_s']:.3f}), wall {out['ours_wall_median_s']:.3f} s")
    print(f"Rscript + metafor           CPU median {out['r_cpu_median_s']:.3f} s "
          f"(min {out['r_cpu_min_s']:.3f}), wall {out['r_wall_median_s']:.3f} s")
    print(f"ours / R, CPU, pair by pair: median {out['cpu_ratio_median']:.3f} "
          f"(min {out['cpu_ratio_min']:.3f}, max {out['cpu_ratio_max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
