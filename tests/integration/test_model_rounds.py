"""Models fitted in a federated round (issue 13, phase 2): real site processes over mTLS.

The synthetic trauma registry (``fedsynth.datasets.generate_trauma``) is split over four
site processes; one round carries the trauma spec's analyses and models; the coordinator
fits every model over the sites' step streams while the round is open. Checked against
statsmodels on the pooled rows: the one-stage model (``glm(y ~ ...)``) and the stratified
model (``glm(y ~ 0 + site + ...)``) to 1e-8 relative. Then the failures: a site killed
mid-fit and restarted (its unanswered step is pushed again: every site contributes), and a
site killed for good (dropped after ``model_step_timeout``; the fit goes on with the
others because the quorum holds).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.models.coding import build_design
from fedsynth.models.hierarchical import fit_sites, site_data
from fedsynth.spec import load_spec

SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta")
RTOL = 1e-8


@pytest.fixture(scope="module")
def trauma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four MTFs of the trauma registry as CSV files (seeded)."""
    root = tmp_path_factory.mktemp("trauma")
    for name, frame in generate_trauma(len(SITES), seed=11).items():
        frame.to_csv(root / f"{name}.csv", index=False)
    return root


def _statsmodels_fits(trauma: Path, sites: tuple[str, ...], model_name: str
                      ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Pooled-rows statsmodels fits: one-stage coefficients/se and stratified slopes."""
    spec = load_spec(trauma_spec_path())
    model = next(m for m in spec.models if m.name == model_name)
    designs = {s: build_design(pd.read_csv(trauma / f"{s}.csv", keep_default_na=False,
                                           na_values=[""]), model) for s in sites}
    x = np.vstack([d.x for d in designs.values()])
    y = np.concatenate([d.y for d in designs.values()])
    offset = np.concatenate([d.offset for d in designs.values()])
    family = {"binomial": sm.families.Binomial(), "gaussian": sm.families.Gaussian(),
              "poisson": sm.families.Poisson()}[model.family]
    names = list(model.coefficient_names)
    one = sm.GLM(y, x, family=family, offset=offset).fit(tol=1e-14, maxiter=100)
    site_cols = np.zeros((len(y), len(sites)))
    start = 0
    for j, d in enumerate(designs.values()):
        site_cols[start:start + d.n, j] = 1.0
        start += d.n
    strat = sm.GLM(y, np.hstack([site_cols, x[:, 1:]]), family=family,
                   offset=offset).fit(tol=1e-14, maxiter=100)
    return (dict(zip(names, one.params)), dict(zip(names, one.bse)),
            dict(zip(names[1:], strat.params[len(sites):])))


def _hierarchical_fit(trauma: Path, sites: tuple[str, ...], model_name: str) -> Any:
    """The in-process federated hierarchical fit on the same rows (fedsynth.models)."""
    spec = load_spec(trauma_spec_path())
    model = next(m for m in spec.models if m.name == model_name)
    data = {}
    for s in sites:
        design = build_design(pd.read_csv(trauma / f"{s}.csv", keep_default_na=False,
                                          na_values=[""]), model)
        data[s] = site_data(design.x, design.y, family=model.family, offset=design.offset)
    return fit_sites(data, names=model.coefficient_names)


def _assert_close(got: dict[str, float | None], want: dict[str, float], what: str) -> None:
    for name, value in want.items():
        assert got[name] is not None, f"{what}: {name} missing"
        assert got[name] == pytest.approx(value, rel=RTOL, abs=1e-10), (what, name)


def _start(federation, trauma: Path, *, step_timeout: str, quorum: int | None = None,
           deadline: str = "180s") -> str:
    federation.start_coordinator(allow=list(SITES),
                                 extra=f'model_step_timeout = "{step_timeout}"')
    round_id = federation.start_round(trauma_spec_path(), deadline=deadline, quorum=quorum)
    return round_id


def _step_log(federation, site: str) -> str:
    return federation.log(site)


def test_models_fitted_in_one_round_equal_pooled_statsmodels(federation, trauma: Path
                                                             ) -> None:
    started = time.monotonic()
    round_id = _start(federation, trauma, step_timeout="60s")
    for site in SITES:
        federation.start_site(site, trauma / f"{site}.csv")
    doc = federation.wait_round(round_id, timeout=240)
    wall = time.monotonic() - started
    assert doc["schema_version"] == 4 and doc["status"] == "pooled"
    models = {m["name"]: m for m in doc["models"]}
    assert set(models) == {"tbi_mortality", "length_of_stay", "complications"}
    for name, entry in models.items():
        assert entry["status"] == "fitted", entry
        assert entry["sites"] == list(SITES) and entry["dropped"] == {}
        coef, se, slopes = _statsmodels_fits(trauma, SITES, name)
        _assert_close(entry["one_stage"]["coefficients"], coef, f"{name} one-stage")
        _assert_close(entry["one_stage"]["se"], se, f"{name} one-stage se")
        _assert_close(entry["stratified"]["coefficients"], slopes, f"{name} stratified")
        assert set(entry["stratified"]["site_intercepts"]) == set(SITES)
        assert set(entry["two_stage"]["per_site"]) == set(SITES)
        pooled = entry["two_stage"]["pooled"]["age"]
        assert pooled["k"] == len(SITES) and pooled["pi_lb"] < pooled["estimate"]
        assert entry["one_stage"]["iterations"] >= 2
        # the hierarchical model over the same stream: the in-process federated fit
        hier = _hierarchical_fit(trauma, SITES, name)
        got = entry["hierarchical"]
        _assert_close(got["coefficients"], dict(zip(hier.names, hier.coefficients)),
                      f"{name} hierarchical")
        assert got["tau2"] == pytest.approx(hier.tau2, rel=1e-6, abs=1e-10)
        assert set(got["site_intercepts"]) == set(SITES)
        assert entry["round_trips"] >= entry["one_stage"]["round_trips"] + 1
        print(f"\n{name}: one-stage {entry['one_stage']['iterations']} iterations, "
              f"hierarchical {got['evaluations']} evaluations, {entry['round_trips']} round "
              f"trips, {entry['seconds']:.2f} s of fitting")
    print(f"round with 3 models over {len(SITES)} sites: {wall:.1f} s wall time "
          "(processes started to round closed)")
    # signed and audited on both sides: every accepted answer stored with its signature,
    # a model_step.accepted entry per answer at the coordinator, model_step.signed at sites
    state = federation.root / "coordinator-state.db"
    with sqlite3.connect(state) as conn:
        stored = conn.execute("SELECT count(*), count(DISTINCT nonce) FROM step_answers "
                              "WHERE round_id = ?", (round_id,)).fetchone()
    assert stored[0] == stored[1] > 0
    audit = [json.loads(line) for line in
             (federation.root / "coordinator-audit.jsonl").read_text().splitlines()]
    accepted = [e for e in audit if e.get("event") == "model_step.accepted"]
    assert len(accepted) == stored[0]
    site_audit = (federation.root / "sites" / "mtf-alpha-audit.jsonl").read_text()
    # Every answer the coordinator stored was signed and audited at the site first; a site
    # may sign more than is stored (an answer resent after a reconnect, or one that arrived
    # after its step was superseded, is audited at the site and not stored twice).
    assert site_audit.count('"model_step.signed"') >= stored[0] // len(SITES)


def test_site_killed_mid_fit_is_retried_then_a_site_that_never_returns_is_dropped(
        federation, trauma: Path) -> None:
    # the step timeout must outlast an agent's restart on a loaded 2-core machine (~20 s)
    round_id = _start(federation, trauma, step_timeout="45s", quorum=3, deadline="400s")
    procs = {site: federation.start_site(site, trauma / f"{site}.csv") for site in SITES}
    # 1. mtf-bravo dies as soon as it answered its first model step, and comes back
    federation.wait_for(lambda: "one_stage fit, step 0" in _step_log(federation, "mtf-bravo"),
                        timeout=120, what="mtf-bravo's first model step")
    federation.kill(procs["mtf-bravo"], signal.SIGKILL)
    time.sleep(1.0)
    procs["mtf-bravo"] = federation.start_site("mtf-bravo", trauma / "mtf-bravo.csv")
    # 2. mtf-delta dies later in the fits and never comes back
    federation.wait_for(lambda: "stratified fit" in _step_log(federation, "mtf-delta"),
                        timeout=120, what="mtf-delta's stratified steps")
    federation.kill(procs["mtf-delta"], signal.SIGKILL)
    doc = federation.wait_round(round_id, timeout=400)
    models = {m["name"]: m for m in doc["models"]}
    survivors = ("mtf-alpha", "mtf-bravo", "mtf-charlie")
    for name, entry in models.items():
        assert entry["status"] == "fitted", entry
        assert entry["sites"] == list(survivors), (name, entry["sites"], entry["dropped"])
        assert "mtf-delta" in entry["dropped"]
        coef, _se, slopes = _statsmodels_fits(trauma, survivors, name)
        _assert_close(entry["one_stage"]["coefficients"], coef, f"{name} one-stage")
        _assert_close(entry["stratified"]["coefficients"], slopes, f"{name} stratified")
    dropped = models["tbi_mortality"]["dropped"]["mtf-delta"]
    assert "did not answer" in dropped
    # the later models did not wait for it again: it was not connected any more
    assert "not connected" in models["complications"]["dropped"]["mtf-delta"]
    # the restarted mtf-bravo answered steps in both of its lives
    assert _step_log(federation, "mtf-bravo").count("connected to the coordinator") >= 2
