"""Simulation after Schuemie et al. (2022): pooling Cox regressions across sites with small
and zero counts.

Run ``python benchmarks/rare_events.py [--replicates N] [--seed S]`` from the repository
root. Each replicate simulates 10 sites with a rare outcome (site-specific baseline hazards,
exposure prevalence 20-40%, exponential event and censoring times) and a known true log
hazard ratio, and pools the sites' univariable Cox models three ways:

(a) the normal approximation: inverse-variance fixed-effect pooling of ``(yi, se)``, which
    must drop every site without an estimate (no events in one exposure group);
(b) likelihood pooling: each site releases the "grid with gradients" approximation of its
    partial log-likelihood (:mod:`fedsynth.effects.likelihood`) and the coordinator takes
    the maximum of their sum with a likelihood-ratio interval
    (:func:`fedsynth.meta.likelihood.pool_likelihoods`); the same with the "custom"
    parametric approximation;
(c) the gold standard a federation cannot run: the Cox model stratified by site on the
    pooled rows (statsmodels ``PHReg`` with ``strata``).

It prints bias, empirical coverage of the 95% intervals and the mean interval width of
(a) and (b), and how far (b) lies from (c). Figures are recorded in benchmarks/README.md
(section ``rare-events``).

``python benchmarks/rare_events.py --random-effects-cost`` instead times the
random-effects pooling of one federation's grid likelihoods
(:func:`fedsynth.meta.likelihood.pool_likelihoods_random`, as a round close runs it).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statsmodels.duration.hazard_regression import PHReg  # noqa: E402

from fedsynth.effects.likelihood import approximate, profiler  # noqa: E402
from fedsynth.errors import InputError  # noqa: E402
from fedsynth.meta.likelihood import pool_likelihoods, pool_likelihoods_random  # noqa: E402

TRUE_LOG_HR = math.log(2.0)
N_SITES = 10


def simulate(rng: np.random.Generator, true_log_hr: float = TRUE_LOG_HR):
    """One federation: a list of (time, event, exposure) per site."""
    sites = []
    for _ in range(N_SITES):
        n = int(rng.integers(300, 2000))
        x = (rng.random(n) < rng.uniform(0.2, 0.4)).astype(float)
        base = rng.uniform(0.0001, 0.0008)          # per unit time: rare
        t_event = rng.exponential(1.0 / (base * np.exp(true_log_hr * x)))
        t_cens = rng.exponential(5.0, n)
        follow = np.minimum(t_event, np.minimum(t_cens, 10.0))
        sites.append((follow, (t_event <= np.minimum(t_cens, 10.0)).astype(float), x))
    return sites


def stratified_cox(sites) -> tuple[float, float]:
    t = np.concatenate([s[0] for s in sites])
    e = np.concatenate([s[1] for s in sites])
    x = np.concatenate([s[2] for s in sites])
    strata = np.concatenate([np.full(s[0].size, i) for i, s in enumerate(sites)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = PHReg(t, x[:, None], status=e, strata=strata, ties="efron").fit(
            method="newton", gtol=1e-12)
    return float(fit.params[0]), float(math.sqrt(fit.cov_params()[0, 0]))


def one_replicate(rng: np.random.Generator) -> dict:
    sites = simulate(rng)
    grids, customs, normal = [], [], []
    for t, e, x in sites:
        if e.sum() == 0:
            continue                                  # no events at all: flat likelihood
        prof = profiler("cox", time=t, event=e, exposure=x)
        grids.append(approximate(prof, "grid_with_gradients"))
        customs.append(approximate(prof, "custom"))
        if math.isfinite(prof.estimate):
            normal.append((prof.estimate, prof.se))
    out: dict = {"sites_with_events": len(grids), "sites_with_estimate": len(normal),
                 "events": int(sum(s[1].sum() for s in sites))}
    if normal:
        y = np.array([a for a, _ in normal])
        w = 1.0 / np.array([b for _, b in normal]) ** 2
        est, se = float((w * y).sum() / w.sum()), float(1 / math.sqrt(w.sum()))
        out["normal"] = (est, est - 1.959964 * se, est + 1.959964 * se)
    for name, approx in (("grid", grids), ("custom", customs)):
        try:
            r = pool_likelihoods(approx)
            out[name] = (r.estimate, r.ci_lb, r.ci_ub)
        except InputError:
            pass
    est, se = stratified_cox(sites)
    out["stratified"] = (est, est - 1.959964 * se, est + 1.959964 * se)
    return out


def summarise(results: list[dict], key: str) -> dict:
    rows = [r[key] for r in results if key in r]
    est = np.array([r[0] for r in rows])
    lo = np.array([r[1] for r in rows])
    hi = np.array([r[2] for r in rows])
    finite = np.isfinite(lo) & np.isfinite(hi)
    return {"n": len(rows), "bias": float(np.mean(est) - TRUE_LOG_HR),
            "rmse": float(np.sqrt(np.mean((est - TRUE_LOG_HR) ** 2))),
            "coverage": float(np.mean((lo <= TRUE_LOG_HR) & (TRUE_LOG_HR <= hi))),
            "width": float(np.median(np.where(finite, hi - lo, np.nan)[finite]))
            if finite.any() else math.nan}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--random-effects-cost", action="store_true",
                        help="time random-effects pooling of one federation's likelihoods")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    if args.random_effects_cost:
        grids = [approximate(profiler("cox", time=t, event=e, exposure=x),
                             "grid_with_gradients") for t, e, x in simulate(rng) if e.sum()]
        start, cpu = time.perf_counter(), time.process_time()
        r = pool_likelihoods_random(grids)
        print(f"random-effects pooling of {len(grids)} grid likelihoods: "
              f"{time.perf_counter() - start:.2f} s wall, {time.process_time() - cpu:.2f} s "
              f"CPU (mu {r.mu_median:.6f} "
              f"[{r.mu_ci_lb:.6f}, {r.mu_ci_ub:.6f}], tau {r.tau_median:.6f})")
        return 0
    start = time.perf_counter()
    results = [one_replicate(rng) for _ in range(args.replicates)]
    elapsed = time.perf_counter() - start
    ev = np.array([r["events"] for r in results])
    dropped = np.array([r["sites_with_events"] - r["sites_with_estimate"] for r in results])
    print(f"{args.replicates} replicates x {N_SITES} sites, true log HR {TRUE_LOG_HR:.4f} "
          f"(HR 2), seed {args.seed}, {elapsed:.1f} s")
    print(f"events per federation: median {np.median(ev):.0f} (range {ev.min()}-{ev.max()});"
          f" sites without an estimate: mean {dropped.mean():.2f} of {N_SITES} "
          f"(sites with no events at all: mean "
          f"{np.mean([N_SITES - r['sites_with_events'] for r in results]):.2f})")
    print(f"{'method':48s} {'n':>4s} {'bias':>8s} {'RMSE':>7s} {'coverage':>9s} "
          f"{'CI width':>9s}")
    labels = {"normal": "(a) normal approximation, sites w/o estimate dropped",
              "grid": "(b) likelihood pooling, grid with gradients",
              "custom": "(b') likelihood pooling, custom parametric",
              "stratified": "(c) stratified Cox on pooled rows (gold standard)"}
    for key, label in labels.items():
        s = summarise(results, key)
        print(f"{label:48s} {s['n']:4d} {s['bias']:8.4f} {s['rmse']:7.4f} "
              f"{s['coverage']:9.3f} {s['width']:9.4f}")
    for key in ("grid", "custom"):
        d = np.array([abs(r[key][0] - r["stratified"][0]) for r in results if key in r])
        print(f"|{key} - stratified| estimate: median {np.median(d):.2e}, 95th percentile "
              f"{np.quantile(d, 0.95):.2e}, max {d.max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
