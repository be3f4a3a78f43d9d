"""Benchmark: pooling many analyses at once against a statsmodels loop.

Generates ``--analyses`` x ``--sites`` random-effects data (default 20,000 x 20), then
times

1. fedsynth's batch API: ``pool(yi, vi, method="REML")`` -- REML tau², z inference,
   Q-profile CIs for tau²/I²/H², prediction intervals, Q test, log-likelihood, all rows in
   one vectorised call (also DL, to compare like with like);
2. the command line: ``fedsynth meta FILE.csv --by analysis --format csv`` in a
   subprocess on a generated CSV (reading, validation, pooling, the heterogeneity flag of
   every analysis, output) -- the whole CLI, interpreter start included; then where its
   time goes (start-up and imports, read, pool, heterogeneity flags, output), and the
   per-analysis flag path it replaced, extrapolated;
3. the baseline: ``statsmodels.stats.meta_analysis.combine_effects(y, v,
   method_re="dl")`` plus ``conf_int()`` looped over the analyses (DerSimonian-Laird
   only, no Q-profile, no prediction interval).

and prints times and ratios, and the largest difference between fedsynth's DL and
statsmodels' DL estimates (they must agree). Run from the repository root:

    python benchmarks/pooling.py                 # the recorded figures
    python benchmarks/pooling.py --analyses 2000 # quick run
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(m: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-effects data: true tau between 0 and 0.3, within-site variances 0.005-0.1."""
    rng = np.random.default_rng(seed)
    tau = rng.uniform(0.0, 0.3, m)
    vi = rng.uniform(0.005, 0.1, (m, k))
    mu = rng.normal(0.2, 0.3, (m, 1))
    yi = mu + rng.normal(0.0, 1.0, (m, k)) * np.sqrt(vi + tau[:, None] ** 2)
    return yi, vi


def write_csv(path: Path, yi: np.ndarray, vi: np.ndarray) -> None:
    import pandas as pd

    m, k = yi.shape
    frame = pd.DataFrame({
        "analysis": np.repeat([f"a{i:06d}" for i in range(m)], k),
        "study": np.tile([f"site{j:02d}" for j in range(k)], m),
        "yi": yi.ravel(), "vi": vi.ravel(),
    })
    frame.to_csv(path, index=False)


def cpu_timed(fn, repeat: int = 1):
    """Best (wall, CPU) seconds of ``repeat`` runs and the last result.

    CPU time of this process is reported beside wall time because a shared machine's
    load inflates the wall time of both sides unevenly.
    """
    best = (float("inf"), float("inf"))
    result = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        cur = (time.perf_counter() - w0, time.process_time() - c0)
        best = min(best, cur)
    return best, result


def statsmodels_loop(yi: np.ndarray, vi: np.ndarray) -> np.ndarray:
    from statsmodels.stats.meta_analysis import combine_effects

    out = np.empty((yi.shape[0], 5))
    with np.errstate(invalid="ignore"):
        for i in range(yi.shape[0]):
            res = combine_effects(yi[i], vi[i], method_re="dl")
            lo, hi = res.conf_int(use_t=False)[1]  # row 1: random effect (DL)
            out[i] = res.mean_effect_re, res.sd_eff_w_re, lo, hi, res.tau2
    return out


def child_cpu(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, **kw)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), proc


def stage_times(yi: np.ndarray, vi: np.ndarray, m: int) -> None:
    """Where the CLI's time goes: start-up and imports (child processes), then in-process
    read+validate, pool, the heterogeneity flag of every analysis, CSV output."""
    from fedsynth.cli import build_parser
    from fedsynth.cli.commands import meta

    # interpreter start-up alone, and with every module the csv path imports
    _, c_bare, _ = child_cpu([sys.executable, "-c", "pass"], cwd=ROOT)
    mods = ("fedsynth.cli, fedsynth.cli.commands.meta, fedsynth.tabular, pandas, "
            "fedsynth.meta, fedsynth.meta.heterogeneity, "
            "fedsynth.meta.metareg")
    _, c_imp, _ = child_cpu([sys.executable, "-c", f"import {mods}"], cwd=ROOT)
    _, c_imp_nometareg, _ = child_cpu(
        [sys.executable, "-c", f"import {mods.rsplit(',', 1)[0]}"], cwd=ROOT)
    print(f"  CLI stages (CPU): interpreter start-up {c_bare:.3f} s; start-up + imports "
          f"{c_imp:.3f} s (of which metareg's scipy.stats/scipy.optimize "
          f"{c_imp - c_imp_nometareg:.3f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "analyses.csv"
        write_csv(path, yi, vi)
        args = build_parser().parse_args(["meta", str(path), "--by", "analysis",
                                          "--format", "csv"])
        (_, c_load), data = cpu_timed(lambda: meta.load_input(args))
    (_, c_pool), batch = cpu_timed(lambda: meta.compute(args, data))
    (_, c_flag), _ = cpu_timed(lambda: meta._batch_flags(args, batch))
    (_, c_out), _ = cpu_timed(lambda: meta.render_csv(args, data, batch))
    from fedsynth.meta.heterogeneity import assess_heterogeneity_batch

    (_, c_flag_all), _ = cpu_timed(lambda: assess_heterogeneity_batch(batch))
    print(f"  in-process: read+validate CSV {c_load:.3f} s, pool {c_pool:.3f} s, "
          f"heterogeneity flags (batch, drivers of flagged analyses, as csv/table) "
          f"{c_flag:.3f} s [drivers of all, as json: {c_flag_all:.3f} s], "
          f"records + CSV text {c_out:.3f} s")
    # the per-analysis path the batch flag replaced (analysis.analyse per analysis)
    from fedsynth.meta.analysis import analyse

    n_flag = min(m, 300)
    c0 = time.process_time()
    for i in range(n_flag):
        sel = batch.mask[i]
        analyse(batch.yi[i][sel], batch.vi[i][sel], labels=list(batch.labels_of(i)),
                method=batch.method, diagnostics=False, pooled=batch[i])
    c_slow = (time.process_time() - c0) / n_flag * m
    print(f"  before: heterogeneity flag by analysis.analyse per analysis (extrapolated from "
          f"{n_flag}) {c_slow:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyses", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the batch API timing")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args(argv)

    from fedsynth.meta import pool

    m, k = args.analyses, args.sites
    yi, vi = make_data(m, k, args.seed)
    print(f"{m} analyses x {k} sites; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")

    # the baseline's import is timed apart, so the loop figure is the loop alone
    (_, c_sm_imp), _ = cpu_timed(lambda: statsmodels_loop(yi[:1], vi[:1]))
    (t_sm, c_sm), sm = cpu_timed(lambda: statsmodels_loop(yi, vi))
    print(f"statsmodels combine_effects loop (DL, estimate+CI):   {t_sm:8.3f} s wall "
          f"{c_sm:8.3f} s CPU   (its import, not included: {c_sm_imp:.3f} s CPU)")

    pool(yi[:10], vi[:10])  # warm imports
    (t_reml, c_reml), batch = cpu_timed(lambda: pool(yi, vi, method="REML"), args.repeat)
    assert batch.converged.all(), "REML did not converge everywhere"
    (t_dl, c_dl), dl = cpu_timed(lambda: pool(yi, vi, method="DL"), args.repeat)
    # statsmodels does not truncate the DL tau² at 0 (a negative tau² even gives NaN
    # standard errors); compare where its tau² is >= 0, where both definitions agree
    same = sm[:, 4] >= 0
    diff = np.max(np.abs(dl.estimate[same] - sm[same, 0]))
    diff_ci = np.max(np.abs(dl.ci_lb[same] - sm[same, 2]))
    print(f"fedsynth pool() REML + Q-profile CIs + PI (batch):   {t_reml:8.3f} s wall "
          f"{c_reml:8.3f} s CPU   {t_sm / t_reml:6.1f}x (wall) {c_sm / c_reml:6.1f}x (CPU)")
    print(f"fedsynth pool() DL + Q-profile CIs + PI (batch):     {t_dl:8.3f} s wall "
          f"{c_dl:8.3f} s CPU   {t_sm / t_dl:6.1f}x (wall) {c_sm / c_dl:6.1f}x (CPU)")
    print(f"  DL estimate vs statsmodels: max |diff| {diff:.2e}; CI lower bound {diff_ci:.2e} "
          f"({same.sum()} analyses; statsmodels reports a negative tau² in {(~same).sum()})")
    if not args.skip_cli:
        stage_times(yi, vi, m)

    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "analyses.csv"
            write_csv(csv_path, yi, vi)
            out_path = Path(tmp) / "out.csv"
            cmd = [sys.executable, "-m", "fedsynth", "meta", str(csv_path), "--by", "analysis",
                   "--format", "csv"]
            best = (float("inf"), float("inf"))
            for _ in range(args.repeat):
                with open(out_path, "w") as sink:
                    t_run, c_run, proc = child_cpu(cmd, stdout=sink, stderr=subprocess.PIPE,
                                                   text=True, cwd=ROOT)
                if proc.returncode != 0:
                    break
                best = min(best, (t_run, c_run))
            t_cli, c_cli = best
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            import pandas as pd

            got = pd.read_csv(out_path)
            assert len(got) == m
            assert np.allclose(got["estimate"].to_numpy(), batch.estimate, rtol=1e-12)
            n_flagged = int(got["heterogeneity_flagged"].sum())
            size = csv_path.stat().st_size / 1e6
        print(f"fedsynth meta --by (CLI, subprocess, {size:.0f} MB CSV): {t_cli:8.3f} s wall "
              f"{c_cli:8.3f} s CPU   {t_sm / t_cli:6.1f}x (wall) {c_sm / c_cli:6.1f}x (CPU)")
        print(f"  ({n_flagged} of {m} analyses flagged for heterogeneity; best of "
              f"{args.repeat} runs)")
    print("ratios > 1: fedsynth faster; fedsynth computes REML, Q-profile CIs for tau², I², "
          "H² and prediction intervals on top of what the baseline computes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
