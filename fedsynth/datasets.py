"""Seeded synthetic patients for demonstrations and tests: one table per site.

Why
---
A federation demo needs several sites whose data look like a hospital's: confounded
treatment assignment, a treatment effect on a binary outcome, on length of stay and on a
hazard, and a deployed risk model to evaluate. The generator follows the usual simulation
design for IPD meta-analysis (Burke, Ensor & Riley, "Meta-analysis using individual
participant data: one-stage and two-stage approaches, and why they may differ", *Stat Med*
36(5), 2017): each site has its own baseline risk and, with heterogeneity, its own
treatment effects drawn around a common mean, so that a two-stage meta-analysis of the
sites recovers the mean and (with ``high``) finds between-site heterogeneity.

Model, per site ``s`` (``u_s`` a site's standardised deviation, ``tau`` 0.03 for ``low``
and 0.45 for ``high``; the site baseline ``b_s ~ N(-1.35, sd)`` with sd 0.05 for ``low``
and 0.3 for ``high``):

* ``age ~ N(mu_s, 12)`` in [18, 95]; ``sex ~ Bernoulli(0.5)``;
* ``treated ~ Bernoulli(expit(-0.2 + 0.03 (age - 60)))`` (older patients treated more: the
  crude and adjusted effects differ, as in observational data);
* ``outcome ~ Bernoulli(expit(b_s + 0.035 (age - 60) + 0.25 sex + (-0.45 + tau u_s)
  treated))``;
* ``los_days = exp(1.9 + 0.01 (age - 60) + 0.1 sex + (-0.08 + tau/3 u_s) treated + e)``,
  ``e ~ N(0, 0.45)``;
* Exponential survival with hazard ``0.006 exp(0.02 (age - 60) + 0.2 sex + (-0.3 + tau u_s)
  treated)`` per day, administratively censored at ``Uniform(60, 180)`` days;
* ``risk_score``: a model fitted elsewhere, ``expit(-1.35 + 0.033 (age - 60) + 0.25 sex
  - 0.4 treated + N(0, 0.25))``: reasonably calibrated on average, miscalibrated where a
  site's baseline ``b_s`` departs from -1.35.

With ``high`` heterogeneity the site deviations ``u_s`` are spread evenly (shuffled by
the seed) rather than drawn, so even a handful of sites differs clearly and the pooled
analyses are flagged. The risk model's performance then differs between sites too, as a
deployed model's does across case mixes (Riley et al. 2016, BMJ 353:i3140): the score's
noise, ``N(0, 0.25)`` everywhere with ``low``, has a standard deviation from 0.25 to 1.45
across the sites with ``high`` (ordered by ``u_s``), which spreads the c-statistic and the
calibration slope.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from fedsynth.errors import InputError

__all__ = ["DEMO_COLUMNS", "SiteParameters", "site_names", "site_parameters",
           "generate_site", "generate", "write_demo", "demo_spec_path"]

DEMO_COLUMNS = ("patient_id", "age", "sex", "treated", "outcome", "los_days", "time",
                "event", "risk_score")
_NATO = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
         "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec",
         "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee",
         "zulu")
_TAU = {"low": 0.03, "high": 0.45}
#: Between-site SD of the baseline log odds (drives calibration-in-the-large and O/E).
_BASELINE_SD = {"low": 0.05, "high": 0.3}
MAX_SITES = 200
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class SiteParameters:
    """The true parameters of one synthetic site (what a meta-analysis should recover)."""

    name: str
    rows: int
    age_mean: float
    baseline_logit: float
    log_or: float
    log_los_ratio: float
    log_hr: float
    score_noise: float = 0.25


def site_names(n: int) -> list[str]:
    """``mtf-alpha, mtf-bravo, ...``; beyond 26 sites the alphabet repeats with a number."""
    return [f"mtf-{_NATO[i % 26]}" + (f"-{i // 26 + 1}" if i >= 26 else "")
            for i in range(n)]


def _check(sites: int, rows: int | None, heterogeneity: str) -> None:
    if isinstance(sites, bool) or not isinstance(sites, int) or not 1 <= sites <= MAX_SITES:
        raise InputError(f"--sites must be an integer from 1 to {MAX_SITES}, got {sites!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)
                             or not 20 <= rows <= MAX_ROWS):
        raise InputError(f"--rows must be an integer from 20 to {MAX_ROWS}, got {rows!r}")
    if heterogeneity not in _TAU:
        raise InputError(f"--heterogeneity must be 'low' or 'high', got {heterogeneity!r}")


def site_parameters(sites: int, *, seed: int = 0, heterogeneity: str = "low",
                    rows: int | None = None) -> list[SiteParameters]:
    """The true parameters of each site (seeded)."""
    _check(sites, rows, heterogeneity)
    rng = np.random.default_rng([seed, 0])
    tau = _TAU[heterogeneity]
    if heterogeneity == "high":
        # Evenly spread normal scores, shuffled: a clear, seed-independent spread.
        u = norm.ppf((np.arange(sites) + 0.5) / sites) if sites > 1 else np.zeros(1)
        u = rng.permutation(u)
    else:
        u = rng.standard_normal(sites)
    sizes = (np.full(sites, rows) if rows is not None
             else rng.integers(600, 2001, size=sites))
    params = []
    for i, name in enumerate(site_names(sites)):
        params.append(SiteParameters(
            name=name, rows=int(sizes[i]), age_mean=float(58 + 4 * rng.standard_normal()),
            baseline_logit=float(-1.35 + _BASELINE_SD[heterogeneity] * rng.standard_normal()),
            log_or=float(-0.45 + tau * u[i]), log_los_ratio=float(-0.08 + tau / 3 * u[i]),
            log_hr=float(-0.3 + tau * u[i]),
            score_noise=(0.25 if heterogeneity == "low" or sites == 1
                         else float(0.25 + 1.2 * (np.argsort(np.argsort(u))[i] / (sites - 1))))))
    return params


def generate_site(params: SiteParameters, rng: np.random.Generator) -> pd.DataFrame:
    """Simulate one site's patients from its parameters."""
    n = params.rows
    age = np.clip(np.round(rng.normal(params.age_mean, 12, n)), 18, 95).astype(int)
    centred = age - 60.0
    sex = rng.binomial(1, 0.5, n)
    treated = rng.binomial(1, expit(-0.2 + 0.03 * centred))
    outcome = rng.binomial(1, expit(params.baseline_logit + 0.035 * centred + 0.25 * sex
                                    + params.log_or * treated))
    los = np.exp(1.9 + 0.01 * centred + 0.1 * sex + params.log_los_ratio * treated
                 + rng.normal(0, 0.45, n))
    hazard = 0.006 * np.exp(0.02 * centred + 0.2 * sex + params.log_hr * treated)
    latent = rng.exponential(1 / hazard)
    censor = rng.uniform(60, 180, n)
    time = np.maximum(np.round(np.minimum(latent, censor), 1), 0.1)
    event = (latent <= censor).astype(int)
    score = expit(-1.35 + 0.033 * centred + 0.25 * sex - 0.4 * treated
                  + rng.normal(0, params.score_noise, n))
    return pd.DataFrame({
        "patient_id": [f"{params.name}-{i + 1:05d}" for i in range(n)],
        "age": age, "sex": sex, "treated": treated, "outcome": outcome,
        "los_days": np.maximum(np.round(los, 1), 0.1), "time": time, "event": event,
        "risk_score": np.clip(np.round(score, 6), 1e-6, 1 - 1e-6)}, columns=DEMO_COLUMNS)


def generate(sites: int, *, seed: int = 0, heterogeneity: str = "low",
             rows: int | None = None) -> dict[str, pd.DataFrame]:
    """``{site name: DataFrame}`` for ``sites`` sites; identical for identical arguments."""
    params = site_parameters(sites, seed=seed, heterogeneity=heterogeneity, rows=rows)
    return {p.name: generate_site(p, np.random.default_rng([seed, 1, i]))
            for i, p in enumerate(params)}


def demo_spec_path() -> Path:
    """The example spec shipped with the package (one analysis per estimator)."""
    from importlib.resources import files

    return Path(str(files("fedsynth") / "data" / "demo_spec.toml"))


def write_demo(out: str | Path, sites: int, *, seed: int = 0, heterogeneity: str = "low",
               rows: int | None = None, force: bool = False) -> list[Path]:
    """Write one CSV per site (``DIR/mtf-alpha.csv``, ...) and ``DIR/spec.toml``.

    Existing files are not overwritten unless ``force``; the error names the file.
    """
    _check(sites, rows, heterogeneity)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a directory")
    names = site_names(sites)
    targets = [out / f"{name}.csv" for name in names] + [out / "spec.toml"]
    if not force:
        for target in targets:
            if target.exists():
                raise InputError(f"--out: {str(target)!r} already exists (use --force to "
                                 "overwrite)")
    frames = generate(sites, seed=seed, heterogeneity=heterogeneity, rows=rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / "spec.toml").write_text(demo_spec_path().read_text(encoding="utf-8"),
                                   encoding="utf-8")
    return targets
