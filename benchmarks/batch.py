"""Benchmark: ``fedsynth meta --by`` at 200,000 analyses and the batch DL/REML estimators.

Issue 17's figures, each beside its baseline, in one run (ratios > 1: fedsynth is the
slower one, as the issue states its targets):

1. the batch estimators on (m, K) arrays, in-process (CPU seconds, best of ``--repeat``):
   the vectorised DerSimonian-Laird floor (closed form in a dozen numpy lines: tau²,
   estimate, SE), PyMARE's ``DerSimonianLaird().fit`` (skipped with a message when PyMARE
   is not installed: it is no dependency of fedsynth), fedsynth's DL and REML estimators
   (``fedsynth.meta.stats.tau2_estimate`` plus the weighted estimate and SE: what PyMARE's
   fit computes) and the whole ``pool()`` (z test, Q test, Q-profile CIs of tau²/I²/H²,
   prediction interval, log-likelihood);
2. the command line in child processes (CPU seconds and peak RSS of the child, from
   ``os.wait4`` in a small launcher process): ``python benchmarks/batch_baseline.py``
   (DL per group in pandas + numpy, 20 lines) against ``fedsynth meta FILE --by analysis
   --format csv`` (REML, Q-profile CIs, prediction intervals, the heterogeneity flag of
   every analysis).

Run from the repository root::

    python benchmarks/batch.py                          # 200,000 x 20 (the recorded run)
    python benchmarks/batch.py --analyses 20000 --repeat 3
    python benchmarks/batch.py --skip-estimators --skip-cli --stages   # where the command's
                                                        # time goes (read, pool, flag, text)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pooling import make_data, write_csv  # noqa: E402

from fedsynth.meta import pool  # noqa: E402
from fedsynth.meta.stats import tau2_estimate  # noqa: E402


def dl_floor(yi: np.ndarray, vi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DerSimonian-Laird on (m, K) arrays in closed form: tau², estimate, SE."""
    w = 1.0 / vi
    sw = w.sum(axis=1)
    ybar = (w * yi).sum(axis=1) / sw
    q = (w * (yi - ybar[:, None]) ** 2).sum(axis=1)
    c = sw - (w * w).sum(axis=1) / sw
    tau2 = np.maximum(0.0, (q - (yi.shape[1] - 1)) / c)
    ws = 1.0 / (vi + tau2[:, None])
    sws = ws.sum(axis=1)
    return tau2, (ws * yi).sum(axis=1) / sws, np.sqrt(1.0 / sws)


def estimator(yi: np.ndarray, vi: np.ndarray, method: str):
    """fedsynth's batch tau² estimator and the weighted estimate and SE it implies."""
    tau2 = tau2_estimate(yi, vi, method=method).tau2
    ws = 1.0 / (vi + tau2[:, None])
    sws = ws.sum(axis=1)
    return tau2, (ws * yi).sum(axis=1) / sws, np.sqrt(1.0 / sws)


def cpu(fn, repeat: int):
    """Best CPU seconds of ``repeat`` calls of ``fn`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        c0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c0)
    return best, out


#: Runs a command as its own child and prints that child's CPU seconds and peak RSS (KiB).
#: Linux keeps a process's peak RSS across exec, so a command forked straight from this
#: benchmark (which holds the 200,000 x 20 arrays) would report this process's peak; a
#: child of this small launcher reports its own.
_LAUNCH = ("import os, subprocess, sys\n"
           "p = subprocess.Popen(sys.argv[1:])\n"
           "_, status, u = os.wait4(p.pid, 0)\n"
           "print(u.ru_utime + u.ru_stime, u.ru_maxrss, os.waitstatus_to_exitcode(status),"
           " file=sys.stderr)\n")


def child(cmd: list[str], stdout) -> tuple[float, float, float, int]:
    """Wall, CPU seconds and peak RSS (MiB) of one child process, and its exit code."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, *cmd], stdout=stdout,
                          stderr=subprocess.PIPE, cwd=ROOT, text=True)
    wall = time.perf_counter() - start
    *err, last = proc.stderr.rstrip("\n").split("\n")
    c, rss, code = last.split()
    if int(code):
        sys.stderr.write("\n".join(err) + "\n")
    return wall, float(c), int(rss) / 1024, int(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyses", type=int, default=200_000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeat", type=int, default=3, help="repeats of in-process timings")
    parser.add_argument("--cli-repeat", type=int, default=1, help="runs of each command")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-estimators", action="store_true",
                        help="skip part 1 (the in-process batch estimators)")
    parser.add_argument("--stages", action="store_true",
                        help="also time the command's stages in this process (read, pool, "
                             "flag, CSV text)")
    args = parser.parse_args(argv)

    m, k = args.analyses, args.sites
    yi, vi = make_data(m, k, args.seed)
    print(f"{m} analyses x {k} sites; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.skip_estimators:
        estimators(yi, vi, args.repeat)
    if args.skip_cli and not args.stages:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "analyses.csv"
        write_csv(src, yi, vi)
        del yi, vi
        if args.stages:
            stages(src)
        if not args.skip_cli:
            return command_line(src, Path(tmp), args.cli_repeat)
    return 0


def stages(src: Path) -> None:
    """CPU seconds of each stage of ``fedsynth meta SRC --by analysis --format csv``.

    The stages of ``meta._stream_csv`` run in this process: read and validate the CSV
    into (m, K) grids, then per chunk of ``STREAM_CHUNK`` analyses pool, flag and
    format the CSV text (written to /dev/null).
    """
    from fedsynth.cli.commands import meta

    parser = argparse.ArgumentParser()
    meta.add_arguments(parser)
    args = parser.parse_args([str(src), "--by", "analysis", "--format", "csv"])
    meta._resolve_defaults(args)
    spent = dict.fromkeys(("read and validate", "pool", "flag", "CSV text"), 0.0)
    c0 = time.process_time()
    data = meta.load_input(args)
    spent["read and validate"] = time.process_time() - c0
    with open(os.devnull, "w") as sink:
        for start in range(0, len(data.names), meta.STREAM_CHUNK):
            part = meta._chunk(data, start, start + meta.STREAM_CHUNK)
            for cache in ("_flags", "_analyses"):
                args.__dict__.pop(cache, None)
            c0 = time.process_time()
            batch = meta.compute(args, part)
            c1 = time.process_time()
            meta._batch_flags(args, batch)
            c2 = time.process_time()
            columns = meta._csv_columns(args, part, batch)
            sink.write(columns[1] if columns else "")
            c3 = time.process_time()
            spent["pool"] += c1 - c0
            spent["flag"] += c2 - c1
            spent["CSV text"] += c3 - c2
    total = sum(spent.values())
    print(f"stages of the command, in-process (CPU s; imports excluded; total {total:.2f} s)")
    for name, c in spent.items():
        print(f"  {name:20s} {c:7.2f} s  {100 * c / total:5.1f}%")


def estimators(yi: np.ndarray, vi: np.ndarray, repeat: int) -> None:
    """Part 1: the batch estimators on (m, K) arrays against the floor and PyMARE."""
    k = yi.shape[1]

    pool(yi[:10], vi[:10], method="DL")  # imports and first-call set-up, not timed
    c_floor, (t_f, mu_f, se_f) = cpu(lambda: dl_floor(yi, vi), repeat)
    c_dl, (t_dl, mu_dl, se_dl) = cpu(lambda: estimator(yi, vi, "DL"), repeat)
    c_reml, (t_reml, _, _) = cpu(lambda: estimator(yi, vi, "REML"), repeat)
    c_pool_dl, _ = cpu(lambda: pool(yi, vi, method="DL"), repeat)
    c_pool_reml, _ = cpu(lambda: pool(yi, vi, method="REML"), repeat)
    rows = [("numpy DL floor (tau², estimate, SE)", c_floor),
            ("fedsynth DL estimator (tau2_estimate + estimate, SE)", c_dl),
            ("fedsynth REML estimator (tau2_estimate + estimate, SE)", c_reml),
            ("fedsynth pool() DL, every output", c_pool_dl),
            ("fedsynth pool() REML, every output", c_pool_reml)]
    try:
        from pymare.estimators import DerSimonianLaird
    except ImportError:
        print("PyMARE is not installed (pip install PyMARE): its DL is not timed")
        c_pm = None
    else:
        X = np.ones((k, 1))
        c_pm, fit = cpu(lambda: DerSimonianLaird().fit(y=yi.T, v=vi.T, X=X), repeat)
        rows.insert(1, ("PyMARE DerSimonianLaird().fit", c_pm))
        print(f"  PyMARE vs fedsynth DL: max |diff| estimate "
              f"{np.max(np.abs(fit.params_['fe_params'].ravel() - mu_dl)):.1e}, tau² "
              f"{np.max(np.abs(np.ravel(fit.params_['tau2']) - t_dl)):.1e}")
    print(f"  floor vs fedsynth DL: max |diff| estimate {np.max(np.abs(mu_f - mu_dl)):.1e}, "
          f"tau² {np.max(np.abs(t_f - t_dl)):.1e}")
    print(f"{'batch estimator':58s} {'CPU s':>8s} {'/floor':>7s} {'/PyMARE':>8s}")
    for name, c in rows:
        pm = f"{c / c_pm:8.2f}" if c_pm else f"{'-':>8s}"
        print(f"{name:58s} {c:8.3f} {c / c_floor:7.1f} {pm}")
    print(f"load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())} (issue 17's "
          "targets: DL / PyMARE <= 1, REML estimator / floor <= 10)")


def command_line(src: Path, tmp: Path, repeat: int) -> int:
    """Part 2: the baseline pipeline and the command as child processes, alternating."""
    size = src.stat().st_size / 1e6
    cmds = {"pandas + numpy DL pipeline (benchmarks/batch_baseline.py)":
            [sys.executable, "benchmarks/batch_baseline.py", str(src), str(tmp / "base.csv")],
            "fedsynth meta --by analysis --format csv":
            [sys.executable, "-m", "fedsynth", "meta", str(src), "--by", "analysis",
             "--format", "csv"]}
    results: dict[str, tuple[float, float, float]] = {}
    for _ in range(repeat):   # alternate, so drift hits both alike
        for name, cmd in cmds.items():
            with open(tmp / "out.csv", "w") as sink:
                wall, c, rss, code = child(cmd, sink)
            if code:
                return 1
            prev = results.get(name)
            results[name] = (wall, c, rss) if prev is None or c < prev[1] else prev
    print(f"command line on a {size:.0f} MB CSV (best of {repeat}; load average "
          f"now {os.getloadavg()[0]:.1f})")
    base = results[next(iter(cmds))]
    for name, (wall, c, rss) in results.items():
        print(f"  {name:58s} wall {wall:7.2f} s  CPU {c:7.2f} s ({c / base[1]:4.2f}x)  "
              f"peak RSS {rss:7.0f} MiB ({rss / base[2]:4.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
