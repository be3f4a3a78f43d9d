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

Trauma registry (``kind = "trauma"``)
-------------------------------------
A synthetic traumatic-brain-injury registry of military treatment facilities (MTFs) for
federated model development (:mod:`fedsynth.models`), shaped after the IMPACT prognostic
models (Steyerberg et al., "Predicting outcome after traumatic brain injury: development
and international validation of prognostic scores based on admission characteristics",
*PLoS Med* 5(8):e165, 2008) and the CRASH-style predictors (MRC CRASH Trial
Collaborators, *BMJ* 336:425, 2008). Per patient: ``age``; ``motor_score`` (GCS motor,
levels ``5/6, 4, 3, 1/2``), ``pupil`` reactivity (``Both, One, None``) and ``ct``
(Marshall class ``I/II, III, IV/V``), correlated through a latent injury severity;
``hypox``, ``hypots`` (hypoxia, hypotension), ``tsah`` (traumatic subarachnoid
haemorrhage), ``edh`` (epidural haematoma), all 0/1; ``mort`` (6-month mortality, 0/1)
from the logistic model of :data:`TRAUMA_LOG_ODDS` with the site's own intercept and its
own hypotension slope; ``los_days`` (length of stay, normal errors, for a gaussian model),
``complications`` (a Poisson count over the stay) and ``log_los`` (its offset).

Sites differ in size (about 200 to 2400 patients: one large Role 4 centre and many small
facilities), case mix (mean age, severity) and, with ``heterogeneity``: ``none`` (every
site has the same true model: the homogeneous variant), ``low`` (baseline SD 0.1,
hypotension-slope SD 0.05) or ``high`` (default; baseline SD 0.5, slope SD 0.4, evenly
spread normal scores so even few sites differ clearly).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from fedsynth.errors import InputError

__all__ = ["DEMO_COLUMNS", "SiteParameters", "site_names", "site_parameters",
           "generate_site", "generate", "write_demo", "demo_spec_path", "KINDS",
           "TRAUMA_COLUMNS", "TRAUMA_LEVELS", "TRAUMA_LOG_ODDS", "TraumaSiteParameters",
           "trauma_parameters", "generate_trauma_site", "generate_trauma",
           "trauma_spec_path"]

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
#: Kinds of demo data: the effect-estimate demo and the trauma registry.
KINDS = ("patients", "trauma")
TRAUMA_COLUMNS = ("patient_id", "age", "motor_score", "pupil", "ct", "hypox", "hypots",
                  "tsah", "edh", "mort", "los_days", "log_los", "complications")
#: Declared levels (first = reference) of the trauma registry's categorical columns.
TRAUMA_LEVELS: dict[str, tuple[str, ...]] = {
    "motor_score": ("5/6", "4", "3", "1/2"), "pupil": ("Both", "One", "None"),
    "ct": ("I/II", "III", "IV/V")}
#: True log-odds of 6-month mortality (intercept at age 30; the site's own intercept and
#: hypotension slope vary around these with heterogeneity).
TRAUMA_LOG_ODDS: dict[str, float] = {
    "intercept": -2.6, "age": 0.03, "motor_score=4": 0.5, "motor_score=3": 1.0,
    "motor_score=1/2": 1.4, "pupil=One": 0.6, "pupil=None": 1.3, "ct=III": 0.7,
    "ct=IV/V": 0.9, "hypox": 0.35, "hypots": 0.65, "tsah": 0.6, "edh": -0.45}
_TRAUMA_SPREAD = {"none": (0.0, 0.0), "low": (0.1, 0.05), "high": (0.5, 0.4)}
#: Site sizes of the registry (shuffled by the seed), largest first; beyond ten sites the
#: pattern repeats.
_TRAUMA_SIZES = (2400, 1600, 1200, 900, 700, 550, 450, 350, 280, 220)


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


@dataclass(frozen=True)
class TraumaSiteParameters:
    """The true parameters of one synthetic MTF of the trauma registry."""

    name: str
    rows: int
    age_mean: float
    severity_mean: float
    intercept: float
    hypots: float


def _check_trauma(sites: int, rows: int | None, heterogeneity: str) -> None:
    if isinstance(sites, bool) or not isinstance(sites, int) or not 1 <= sites <= MAX_SITES:
        raise InputError(f"--sites must be an integer from 1 to {MAX_SITES}, got {sites!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)
                             or not 20 <= rows <= MAX_ROWS):
        raise InputError(f"--rows must be an integer from 20 to {MAX_ROWS}, got {rows!r}")
    if heterogeneity not in _TRAUMA_SPREAD:
        raise InputError(f"--heterogeneity must be 'none', 'low' or 'high' for the trauma "
                         f"registry, got {heterogeneity!r}")


def trauma_parameters(sites: int = 10, *, seed: int = 0, heterogeneity: str = "high",
                      rows: int | None = None) -> list[TraumaSiteParameters]:
    """The true parameters of each MTF of the trauma registry (seeded)."""
    _check_trauma(sites, rows, heterogeneity)
    rng = np.random.default_rng([seed, 7])
    base_sd, slope_sd = _TRAUMA_SPREAD[heterogeneity]
    if heterogeneity == "high" and sites > 1:
        # Evenly spread normal scores, shuffled: a clear, seed-independent spread.
        scores = norm.ppf((np.arange(sites) + 0.5) / sites)
        u_base, u_slope = rng.permutation(scores), rng.permutation(scores)
    else:
        u_base, u_slope = rng.standard_normal(sites), rng.standard_normal(sites)
    sizes = (np.full(sites, rows) if rows is not None else
             rng.permutation(np.resize(np.array(_TRAUMA_SIZES), sites)))
    params = []
    for i, name in enumerate(site_names(sites)):
        params.append(TraumaSiteParameters(
            name=name, rows=int(sizes[i]), age_mean=float(30 + 3 * rng.standard_normal()),
            severity_mean=float(0.2 * rng.standard_normal()),
            intercept=float(TRAUMA_LOG_ODDS["intercept"] + base_sd * u_base[i]),
            hypots=float(TRAUMA_LOG_ODDS["hypots"] + slope_sd * u_slope[i])))
    return params


def _ordinal(latent: np.ndarray, cuts: tuple[float, ...], levels: tuple[str, ...]
             ) -> np.ndarray:
    return np.array(levels, dtype=object)[np.searchsorted(np.array(cuts), latent)]


def generate_trauma_site(params: TraumaSiteParameters, rng: np.random.Generator
                         ) -> pd.DataFrame:
    """Simulate one MTF's TBI patients from its parameters."""
    n = params.rows
    age = np.clip(np.round(rng.normal(params.age_mean, 9, n)), 18, 80).astype(int)
    severity = rng.normal(params.severity_mean, 1.0, n)
    motor = _ordinal(severity + rng.normal(0, 0.8, n), (0.35, 0.95, 1.45),
                     TRAUMA_LEVELS["motor_score"])
    pupil = _ordinal(severity + rng.normal(0, 0.9, n), (1.2, 1.75), TRAUMA_LEVELS["pupil"])
    ct = _ordinal(severity + rng.normal(0, 0.9, n), (0.15, 0.95), TRAUMA_LEVELS["ct"])
    hypox = rng.binomial(1, expit(-1.9 + 0.4 * severity))
    hypots = rng.binomial(1, expit(-2.1 + 0.4 * severity))
    tsah = rng.binomial(1, expit(-0.5 + 0.5 * severity))
    edh = rng.binomial(1, 0.12, n)
    coef = TRAUMA_LOG_ODDS
    lp = (params.intercept + coef["age"] * (age - 30)
          + np.select([motor == lvl for lvl in ("4", "3", "1/2")],
                      [coef["motor_score=4"], coef["motor_score=3"],
                       coef["motor_score=1/2"]], 0.0)
          + np.select([pupil == "One", pupil == "None"],
                      [coef["pupil=One"], coef["pupil=None"]], 0.0)
          + np.select([ct == "III", ct == "IV/V"], [coef["ct=III"], coef["ct=IV/V"]], 0.0)
          + coef["hypox"] * hypox + params.hypots * hypots + coef["tsah"] * tsah
          + coef["edh"] * edh)
    mort = rng.binomial(1, expit(lp))
    severe = (motor != "5/6").astype(float) + (ct == "IV/V") + hypox + hypots
    los = np.maximum(np.round(7 + 0.08 * (age - 30) + 2.5 * severe + 0.6 * params.intercept
                              + rng.normal(0, 3, n), 1), 0.5)
    rate = np.exp(-2.8 + 0.35 * hypox + 0.45 * hypots + 0.3 * (ct == "IV/V")
                  + 0.01 * (age - 30))
    complications = rng.poisson(rate * los)
    return pd.DataFrame({
        "patient_id": [f"{params.name}-{i + 1:05d}" for i in range(n)],
        "age": age, "motor_score": motor, "pupil": pupil, "ct": ct, "hypox": hypox,
        "hypots": hypots, "tsah": tsah, "edh": edh, "mort": mort, "los_days": los,
        "log_los": np.round(np.log(los), 6), "complications": complications},
        columns=TRAUMA_COLUMNS)


def generate_trauma(sites: int = 10, *, seed: int = 0, heterogeneity: str = "high",
                    rows: int | None = None) -> dict[str, pd.DataFrame]:
    """``{MTF name: DataFrame}`` of the trauma registry; identical for identical arguments.

    ``heterogeneity="none"`` is the homogeneous variant (one true model at every site).
    """
    params = trauma_parameters(sites, seed=seed, heterogeneity=heterogeneity, rows=rows)
    return {p.name: generate_trauma_site(p, np.random.default_rng([seed, 8, i]))
            for i, p in enumerate(params)}


def trauma_spec_path() -> Path:
    """The trauma registry's example spec (analyses with categorical covariates, models)."""
    return Path(str(files("fedsynth") / "data" / "trauma_spec.toml"))


def demo_spec_path() -> Path:
    """The example spec shipped with the package (one analysis per estimator)."""
    return Path(str(files("fedsynth") / "data" / "demo_spec.toml"))


def write_demo(out: str | Path, sites: int | None = None, *, seed: int = 0,
               heterogeneity: str | None = None, rows: int | None = None,
               force: bool = False, kind: str = "patients") -> list[Path]:
    """Write one CSV per site (``DIR/mtf-alpha.csv``, ...) and ``DIR/spec.toml``.

    ``kind="patients"`` (default: 6 sites, ``low`` heterogeneity) writes the effect-estimate
    demo; ``kind="trauma"`` (default: 10 MTFs, ``high``) the trauma registry with its spec
    (analyses with categorical covariates and ``[[model]]`` tables). Existing files are not
    overwritten unless ``force``; the error names the file.
    """
    if kind not in KINDS:
        raise InputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    trauma = kind == "trauma"
    if sites is None:
        sites = 10 if trauma else 6
    if heterogeneity is None:
        heterogeneity = "high" if trauma else "low"
    if trauma:
        _check_trauma(sites, rows, heterogeneity)
    else:
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
    if trauma:
        frames = generate_trauma(sites, seed=seed, heterogeneity=heterogeneity, rows=rows)
        spec = trauma_spec_path()
    else:
        frames = generate(sites, seed=seed, heterogeneity=heterogeneity, rows=rows)
        spec = demo_spec_path()
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / "spec.toml").write_text(spec.read_text(encoding="utf-8"), encoding="utf-8")
    return targets
