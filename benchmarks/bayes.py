"""Benchmark: Bayesian normal-normal pooling by vectorised quadrature vs plain scipy ``quad``.

Run ``python benchmarks/bayes.py`` from the repository root. For each data set and prior it
prints the time per analysis of :func:`fedsynth.meta.bayes.bayes_pool` (one call per
analysis, and per analysis inside a masked batch of 1,000), the time of a straightforward
implementation with ``scipy.integrate.quad`` over tau (normalising constant, each moment,
``P(mu > 0)``, each site's posterior mean, and ``brentq`` on quad-computed CDFs for the
quantiles of mu, tau and a new site), the ratio, and the largest difference between the two
answers. Figures are recorded in benchmarks/README.md (section ``bayes``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import integrate, optimize, special

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsynth.meta.bayes import bayes_pool, get_prior  # noqa: E402

QUAD = dict(epsabs=1e-11, epsrel=1e-10, limit=200)


def quad_baseline(yi, vi, prior: str, scale: float, level: float = 95.0) -> dict:
    """Every summary of bayes_pool with scipy quad over tau in [0, inf) (no vectorisation)."""
    y, v = np.asarray(yi, float), np.asarray(vi, float)
    logprior = get_prior(prior).logpdf

    def parts(t):
        w = 1.0 / (v + t * t)
        sw = w.sum()
        mh = (w * y).sum() / sw
        g = (float(logprior(np.array(t), scale)) + 0.5 * np.log(w).sum() - 0.5 * math.log(sw)
             - 0.5 * (w * (y - mh) ** 2).sum())
        return g, mh, 1.0 / sw

    g0 = max(parts(t)[0] for t in (0.0, scale, math.sqrt(np.median(v))))

    def dens(t):
        return math.exp(parts(t)[0] - g0)

    def integral(f):
        return integrate.quad(f, 0.0, np.inf, **QUAD)[0]

    Z = integral(dens)

    def E(f):
        return integral(lambda t: f(t, *parts(t)[1:]) * dens(t)) / Z

    out = {"mu_mean": E(lambda t, m, V: m)}
    out["mu_sd"] = math.sqrt(E(lambda t, m, V: V + m * m) - out["mu_mean"] ** 2)
    out["tau_mean"] = E(lambda t, m, V: t)
    out["prob_mu_positive"] = E(lambda t, m, V: special.ndtr(m / math.sqrt(V)))
    out["theta_mean"] = [E(lambda t, m, V, i=i: y[i] + v[i] / (v[i] + t * t) * (m - y[i]))
                         for i in range(y.size)]
    a = (1 - level / 100) / 2

    def tq(p):
        def f(x):
            return integrate.quad(dens, 0.0, x, **QUAD)[0] / Z - p
        hi = 1.0
        while f(hi) < 0:
            hi *= 2
        return optimize.brentq(f, 0.0, hi, xtol=1e-12)

    def mq(p, pred=False):
        def f(x):
            return E(lambda t, m, V: special.ndtr(
                (x - m) / math.sqrt(V + (t * t if pred else 0.0)))) - p
        lo, hi = -1.0, 1.0
        while f(lo) > 0:
            lo *= 2
        while f(hi) < 0:
            hi *= 2
        return optimize.brentq(f, lo, hi, xtol=1e-12)

    out["tau_ci"] = [tq(a), tq(1 - a)]
    out["tau_median"] = tq(0.5)
    out["mu_ci"] = [mq(a), mq(1 - a)]
    out["mu_median"] = mq(0.5)
    out["pred_lb"], out["pred_ub"] = mq(a, True), mq(1 - a, True)
    return out


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def datasets() -> list[tuple[str, list[float], list[float]]]:
    ref = json.loads((ROOT / "tests" / "data" / "metafor_public.json").read_text())
    bcg = next(c for c in ref["pooling"] if c["id"] == "bcg/OR/REML/z")
    seed = next(c for c in ref["pooling"] if c["id"] == "seed8/REML/z")
    rng = np.random.default_rng(2026)
    v50 = rng.uniform(0.005, 0.2, 50)
    y50 = rng.normal(0.1, 0.25, 50) + rng.normal(0, np.sqrt(v50))
    return [("seed8 (k=8)", seed["yi"], seed["vi"]), ("bcg OR (k=13)", bcg["yi"], bcg["vi"]),
            ("synthetic (k=50)", list(y50), list(v50))]


def main() -> None:
    warnings.simplefilter("ignore")
    print(f"{'data':<18} {'prior':<16} {'bayes_pool':>11} {'batch/anal.':>12} "
          f"{'scipy quad':>11} {'ratio':>8} {'max |diff|':>11}")
    for name, y, v in datasets():
        for prior, scale in (("half_normal", 0.5), ("half_cauchy", 0.5)):
            ours = timed(lambda: bayes_pool(y, v, prior=prior, scale=scale), 30)
            m = 1000
            Y = np.tile(np.asarray(y), (m, 1))
            V = np.tile(np.asarray(v), (m, 1))
            batch = timed(lambda: bayes_pool(Y, V, prior=prior, scale=scale), 1) / m
            t0 = time.perf_counter()
            ref = quad_baseline(y, v, prior, scale)
            base = time.perf_counter() - t0
            got = bayes_pool(y, v, prior=prior, scale=scale).to_dict()
            diff = max(float(np.max(np.abs(np.asarray(got[k], float) - np.asarray(r, float))))
                       for k, r in ref.items())
            print(f"{name:<18} {prior + ':' + str(scale):<16} {ours * 1e3:>8.2f} ms "
                  f"{batch * 1e3:>9.2f} ms {base * 1e3:>8.0f} ms {base / ours:>7.0f}x "
                  f"{diff:>11.1e}")


if __name__ == "__main__":
    main()
