"""Internal-external cross-validation: the driver, the site's evaluation, pooling, verdict."""

from __future__ import annotations

import glob
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.cli import main
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.effects.patient_level import estimate
from fedsynth.errors import InputError
from fedsynth.models import build_design
from fedsynth.models.fit import fit_model
from fedsynth.models.iecv import (
    CANDIDATES,
    CHOICES,
    MEASURES,
    POOLED_MEASURES,
    CandidateResult,
    PooledMeasure,
    ScoringModel,
    SiteMeasures,
    VerdictThresholds,
    evaluate_site,
    iecv_for_fit,
    in_process,
    linear_predictor,
    recommend,
    run_iecv,
)
from fedsynth.spec import load_spec

SPEC = load_spec(trauma_spec_path())
MODEL = SPEC.model("tbi_mortality")


def designs_of(frames) -> dict:
    return {site: build_design(frame, MODEL) for site, frame in frames.items()}


@pytest.fixture(scope="module")
def homogeneous():
    designs = designs_of(generate_trauma(8, seed=1, heterogeneity="none"))
    return iecv_for_fit(fit_model(designs, hierarchical=False), designs,
                        hierarchical=False)


@pytest.fixture(scope="module")
def varying():
    designs = designs_of(generate_trauma(8, seed=2, heterogeneity="high"))
    return iecv_for_fit(fit_model(designs, hierarchical=False), designs,
                        hierarchical=False)


def test_homogeneous_sites_get_global(homogeneous) -> None:
    rec = homogeneous.recommendation
    assert rec.choice == "global"
    # the reasons carry the numbers that decided
    assert any("calibration-in-the-large" in r and "tau =" in r for r in rec.reasons)


def test_varying_baseline_risk_is_not_global(varying) -> None:
    rec = varying.recommendation
    assert rec.choice in ("global with local intercept recalibration",
                          "hierarchical / site-specific")
    assert any("calibration-in-the-large (global model)" in r for r in rec.reasons)


def test_recalibration_zeroes_calibration_in_the_large(varying) -> None:
    glob = varying.candidates["global"]
    recal = varying.candidates["global_recalibrated"]
    for site, m in recal.per_site.items():
        g = glob.per_site[site]
        # the recalibration is the site's calibration-in-the-large of the global model
        assert m.recalibration == pytest.approx(g.calibration_in_the_large, rel=1e-12)
        assert abs(m.calibration_in_the_large) < 1e-8
        assert abs(m.log_OE) < 1e-8           # sum of p equals O at the MLE
        assert m.auc == g.auc                 # a shift does not change the ranking
        assert m.calibration_slope == pytest.approx(g.calibration_slope, rel=1e-8)


def test_output_contract_keys(varying) -> None:
    out = json.loads(json.dumps(varying.to_dict(), allow_nan=False))
    assert set(out) == {"iecv", "iecv_candidates", "recommendation", "iecv_notes"}
    site = next(iter(out["iecv"]["per_site"].values()))
    assert list(site)[:len(MEASURES)] == list(MEASURES)
    for measure in POOLED_MEASURES:
        for test in ("z", "knha"):
            assert {"estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "pi_lb",
                    "pi_ub"} <= set(out["iecv"]["pooled"][measure][test])
    assert set(out["iecv_candidates"]) == {"global_recalibrated"}
    assert set(out["recommendation"]) == {"choice", "reasons"}


def test_driver_calls_develop_without_the_held_out_site() -> None:
    designs = designs_of(generate_trauma(4, seed=3, rows=250))
    develop, evaluate = in_process(designs, hierarchical=False)
    calls: list[tuple[str, ...]] = []
    scored: list[tuple[str, str]] = []

    def spy_develop(sites):
        calls.append(tuple(sites))
        return develop(sites)

    def spy_evaluate(site, model):
        assert site not in model.developed_on
        scored.append((site, model.variant))
        # what crosses the wire is JSON both ways
        wire = ScoringModel.from_dict(json.loads(json.dumps(model.to_dict())))
        return SiteMeasures.from_dict(json.loads(json.dumps(
            evaluate(site, wire).to_dict())))

    result = run_iecv(list(designs), spy_develop, spy_evaluate,
                      candidates=("global", "global_recalibrated"))
    assert [set(c) for c in calls] == [set(designs) - {s} for s in designs]
    assert len(scored) == 8
    assert set(result.candidates["global"].per_site) == set(designs)


def test_evaluate_site_equals_the_existing_estimators() -> None:
    """The site's measures are the evaluation estimators run on the model's risks."""
    frames = generate_trauma(3, seed=4, rows=400)
    designs = designs_of(frames)
    develop, _ = in_process(designs, hierarchical=False)
    model = develop(["mtf-bravo", "mtf-charlie"])["global"]
    site = "mtf-alpha"
    m = evaluate_site(designs[site], model)
    lp = linear_predictor(designs[site], model.names, model.coefficients)
    frame = frames[site].assign(risk=1 / (1 + np.exp(-lp)))
    auc = estimate(frame, {"name": "a", "estimator": "auc", "outcome": "mort",
                           "score": "risk", "scale": "logit"})
    assert m.logit_auc == pytest.approx(auc.yi, rel=1e-12)
    assert m.logit_auc_var == pytest.approx(auc.vi, rel=1e-12)
    assert m.O == frames[site]["mort"].sum()
    assert m.E == pytest.approx(float(frame["risk"].sum()), rel=1e-12)


def test_site_without_events_is_reported_not_pooled() -> None:
    frames = generate_trauma(4, seed=6, rows=250)
    designs = designs_of(frames)
    develop, _ = in_process(designs, hierarchical=False)
    model = develop(["mtf-bravo", "mtf-charlie"])["global"]
    first = designs["mtf-alpha"]
    no_events = type(first)(model=first.model, names=first.names, x=first.x,
                            y=np.zeros_like(first.y), offset=first.offset)
    m = evaluate_site(no_events, model)
    assert math.isnan(m.auc) and math.isnan(m.log_OE)
    assert "auc" in m.refused and "log_OE" in m.refused
    assert m.O == 0


def test_bad_input() -> None:
    designs = designs_of(generate_trauma(3, seed=3, rows=250))
    develop, evaluate = in_process(designs, hierarchical=False)
    with pytest.raises(InputError, match="at least 3 sites"):
        run_iecv(list(designs)[:2], develop, evaluate)
    with pytest.raises(InputError, match="not one of"):
        run_iecv(list(designs), develop, evaluate, candidates=("best",))
    with pytest.raises(InputError, match="'hierarchical'"):
        run_iecv(list(designs), develop, evaluate)          # develop has no hierarchical
    with pytest.raises(InputError, match="variant"):
        ScoringModel(variant="x", family="binomial", names=("intercept",),
                     coefficients=np.zeros(1))
    model = ScoringModel(variant="global", family="binomial", names=("intercept", "zzz"),
                         coefficients=np.zeros(2))
    with pytest.raises(InputError, match="coding differ"):
        evaluate_site(designs["mtf-alpha"], model)
    with pytest.raises(InputError, match="citl_tau"):
        VerdictThresholds(citl_tau=-1)


def _pooled(tau: float, q_p: float):
    p = PooledMeasure(k=8, estimate=0.0, se=0.1, ci_lb=-0.2, ci_ub=0.2, tau2=tau * tau,
                      I2=50.0, pi_lb=-1.0, pi_ub=1.0, pval=0.5, Q=20.0, Q_pval=q_p)
    return p


@settings(max_examples=60, deadline=None)
@given(citl=st.floats(0, 1), slope=st.floats(0, 0.5), auc=st.floats(0, 0.5),
       q=st.floats(1e-6, 1))
def test_verdict_is_monotone_in_the_thresholds(citl, slope, auc, q) -> None:
    """Raising a threshold never moves the verdict towards a more local model."""
    def cand(citl_tau):
        pooled = {"calibration_in_the_large": {"knha": _pooled(citl_tau, q)},
                  "calibration_slope": {"knha": _pooled(slope, q)},
                  "logit_auc": {"knha": _pooled(auc, q)},
                  "log_OE": {"knha": _pooled(0.0, q)}}
        return CandidateResult(variant="global", per_site={}, pooled=pooled)

    results = {"global": cand(citl), "global_recalibrated": cand(0.0)}
    loose = recommend(results, thresholds=VerdictThresholds(citl_tau=0.05, slope_tau=0.05,
                                                            logit_auc_tau=0.05))
    strict = recommend(results, thresholds=VerdictThresholds(citl_tau=0.5, slope_tau=0.3,
                                                             logit_auc_tau=0.3))
    assert CHOICES.index(strict.choice) <= CHOICES.index(loose.choice)
    if q >= 0.05:                                   # Q never rejects: nothing flagged
        assert loose.choice == "global"


def test_model_fit_iecv_cli(tmp_path: Path, capsys) -> None:
    frames = generate_trauma(4, seed=7, rows=300)
    files = []
    for site, frame in frames.items():
        frame.to_csv(tmp_path / f"{site}.csv", index=False)
        files.append(str(tmp_path / f"{site}.csv"))
    out = tmp_path / "fit.json"
    assert main(["model", "fit", "--spec", str(trauma_spec_path()), "--data", *files,
                 "--iecv", "--format", "json", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    tbi = next(m for m in doc["models"] if m["name"] == "tbi_mortality")
    assert set(tbi["iecv"]["per_site"]) == set(frames)
    assert set(tbi["iecv_candidates"]) == set(CANDIDATES) - {"global"}
    assert tbi["recommendation"]["choice"]
    assert tbi["hierarchical"]["tau"] is not None
    los = next(m for m in doc["models"] if m["name"] == "length_of_stay")
    assert "iecv" not in los and any("no IECV" in n for n in los["notes"])
    capsys.readouterr()
    plots = tmp_path / "plots"
    assert main(["model", "fit", "--spec", str(trauma_spec_path()), "--data", *files,
                 "--model", "tbi_mortality", "--iecv", "--no-hierarchical", "--plot",
                 str(plots)]) == 0
    text = capsys.readouterr().out
    assert "internal-external cross-validation over 4 sites" in text
    assert "recommendation: " in text
    for measure in ("calibration_in_the_large", "logit_auc"):
        png = plots / f"tbi_mortality-iecv-{measure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"forest plot: {png}" in text
    assert main(["model", "fit", "--spec", str(trauma_spec_path()), "--data", *files,
                 "--plot", str(plots)]) == 2
    assert "give --iecv too" in capsys.readouterr().err


def test_forest_input_is_the_pooled_measure(varying) -> None:
    glob = varying.candidates["global"]
    data = glob.forest_input("logit_auc")
    p = glob.pooled["logit_auc"]["knha"]
    assert data["scale"] == "logit" and data["null_value"] == 0.5
    assert data["estimate"] == p.estimate and sum(data["weights"]) == pytest.approx(100)
    assert data["labels"] == list(glob.per_site)
    with pytest.raises(InputError, match="measure"):
        glob.forest_input("auc")


def test_readme_iecv_block_is_real_output(tmp_path: Path, capsys, monkeypatch) -> None:
    """The README's IECV output is what the command prints on the demo registry."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("<!-- section:iecv -->"):text.index("<!-- /section:iecv -->")]
    block = re.findall(r"```\n(\$ fedsynth.*?)\n```", section, re.S)[0]
    line, _, expected = block.partition("\n")
    expected = expected.removeprefix("...\n")
    monkeypatch.chdir(tmp_path)
    assert main(["demo-data", "--kind", "trauma", "--out", "trauma"]) == 0
    capsys.readouterr()
    argv = []
    for word in line.split()[2:]:
        argv.extend(sorted(glob.glob(word)) if "*" in word else [word])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out[out.index("internal-external"):].rstrip("\n") == expected.rstrip("\n")
