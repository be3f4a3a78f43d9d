"""From a model round to a deployed model (issue 14): real processes, mutual TLS on 127.0.0.1.

``fedsynth model export ROUND NAME`` reads a closed round's stored model and writes the
same signed artifact as ``model export --fit`` of an in-process ``model fit`` on the same
site files (coefficients to 1e-8), which ``fedsynth site score`` accepts; its errors name
what is wrong. ``fedsynth round show`` prints the models table. ``fedsynth demo --kind
trauma`` runs the whole story and writes what it says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coordinator.commands.demo_trauma import VARIANT_FOR_CHOICE
from fedsynth.datasets import generate_trauma
from fedsynth.models.artifact import read_artifact

pytestmark = pytest.mark.integration

SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie")
RTOL = 1e-8
MODEL_SPEC = """name = "development"

[[analysis]]
name = "hypotension_logOR"
estimator = "logistic"
outcome = "mort"
exposure = "hypots"
covariates = ["age"]

[[model]]
name = "tbi_mortality"
family = "binomial"
outcome = "mort"
covariates = ["age", "motor_score", "pupil", "hypots"]
[model.categorical]
motor_score = ["5/6", "4", "3", "1/2"]
pupil = ["Both", "One", "None"]
"""


def _coefficients(path: Path, ca: bytes) -> tuple[str, dict, dict | None]:
    artifact = read_artifact(path.read_text(), ca_pem=ca)
    return artifact.variant, dict(artifact.coefficients), (
        None if artifact.site_intercepts is None else dict(artifact.site_intercepts))


def test_export_from_a_round_equals_export_from_a_fit(federation, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for site, frame in generate_trauma(len(SITES), seed=5, rows=400).items():
        frame.to_csv(data / f"{site}.csv", index=False)
    spec = tmp_path / "development.toml"
    spec.write_text(MODEL_SPEC, encoding="utf-8")
    config = federation.write_coordinator_config(allow=SITES, extra='model_step_timeout = "4m"')
    federation.start_coordinator(config)
    round_id = federation.start_round(spec, deadline="5m")
    for site in SITES:
        federation.start_site(site, data / f"{site}.csv")
    doc = federation.wait_round(round_id, timeout=300)
    assert doc["status"] == "pooled", doc.get("failure_reason")
    assert doc["models"][0]["status"] == "fitted", doc["models"][0].get("reason")

    # round show: the models table (text); the JSON output keeps its keys
    text = federation.cli("round", "show", round_id, "--config", str(config)).stdout
    assert "model tbi_mortality  family binomial  status fitted  sites 3  n 1200" in text
    assert "hier_est" in text and "hierarchical: tau " in text and "ICC (latent)" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("coefficient"))
    assert lines[first + 1].split()[0] == "intercept"
    assert lines[first + 2].split()[0] == "age"      # the spec's order, not sorted
    assert set(doc["models"][0]) >= {"name", "one_stage", "hierarchical", "two_stage"}

    # the same fit in this process, exported from the fit file
    files = [str(data / f"{s}.csv") for s in SITES]
    fit = tmp_path / "fit.json"
    federation.cli("model", "fit", "--spec", str(spec), "--data", *files, "--format",
                   "json", "--out", str(fit))
    ca = federation.pki.ca.read_bytes()
    for variant in ("global", "hierarchical", "recalibrated"):
        from_round, from_fit = tmp_path / f"round-{variant}.json", tmp_path / f"fit-{variant}.json"
        shown = federation.cli("model", "export", round_id, "tbi_mortality", "--variant",
                               variant, "--config", str(config), "--out",
                               str(from_round)).stdout
        assert f"({variant}, binomial)" in shown
        federation.cli("model", "export", "--fit", str(fit), "--spec", str(spec), "--model",
                       "tbi_mortality", "--variant", variant, "--cert",
                       str(federation.pki.cert("coordinator")), "--key",
                       str(federation.pki.key("coordinator")), "--out", str(from_fit))
        v1, c1, s1 = _coefficients(from_round, ca)
        v2, c2, s2 = _coefficients(from_fit, ca)
        assert v1 == v2 == variant and sorted(c1) == sorted(c2)
        # the global fit is the same IRLS on the same sums: 1e-8; the hierarchical one is
        # the same optimiser on the same contributions, converged to its tolerance
        rtol = RTOL if variant != "hierarchical" else 1e-6
        for name in c1:
            assert np.isclose(c1[name], c2[name], rtol=rtol, atol=1e-9), (variant, name)
        if variant == "hierarchical":
            assert s1 is not None and s2 is not None and sorted(s1) == sorted(SITES)
            for site in SITES:
                assert np.isclose(s1[site], s2[site], rtol=1e-5, atol=1e-7), site
        body = json.loads(from_round.read_text())["model"]
        assert body["source"] == f"round {round_id}"
        assert body["spec_hash"] == json.loads(from_fit.read_text())["model"]["spec_hash"]

    # a site scores its patients with the artifact exported from the round
    scores = tmp_path / "scores.csv"
    out = federation.cli("site", "score", "--model", str(tmp_path / "round-global.json"),
                         "--data", files[0], "--ca", str(federation.pki.ca), "--out",
                         str(scores)).stdout
    assert "400 of 400 rows scored with model 'tbi_mortality' (global" in out
    table = pd.read_csv(scores)
    assert table["prediction"].between(0, 1).all()

    # errors: exit 2, a sentence naming what is wrong, nothing written
    bad = tmp_path / "bad.json"
    for argv, message in (
            ((round_id, "mortality"), "has no model 'mortality' (it has tbi_mortality)"),
            (("r-nope", "tbi_mortality"), "round 'r-nope' does not exist"),
            ((round_id, "tbi_mortality", "--variant", "stratified", "--config", str(config)),
             None)):
        args = ["model", "export", *argv]
        if "--config" not in args:
            args += ["--config", str(config)]
        result = federation.cli(*args, "--out", str(bad), check=False)
        if message is None:     # the stratified fit is stored too: it exports
            assert result.returncode == 0, result.stderr
            bad.unlink()
            continue
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not bad.exists()
    still_open = federation.start_round(spec, deadline="5m")
    result = federation.cli("model", "export", still_open, "tbi_mortality", "--config",
                            str(config), "--out", str(bad), check=False)
    assert result.returncode == 2 and "is still open" in result.stderr
    assert not bad.exists()


def test_demo_trauma_runs_the_whole_story(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "fedsynth", "demo", "--kind", "trauma",
                             "--sites-count", "4", "--out", str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stdout = result.stdout
    for line in ("writing the trauma registry for 4 MTFs", "[1/5]", "[2/5]",
                 "(round 1 of 2)", "(round 2 of 2)", "mtf-delta answered (",
                 "verdict on model tbi_mortality: ", "exporting the model from the round: "
                 "fedsynth model export ", "evaluation round: every site scores"):
        assert line in stdout, line
    # the development round: both models fitted, shown in the table
    assert "model tbi_mortality  family binomial  status fitted  sites 4" in stdout
    assert "hierarchical: tau " in stdout
    # internal-external cross-validation in the round, and the verdict it drives
    development = (out / "development.toml").read_text()
    assert "\niecv = true\n" in development
    # the exported model: signed by the demo's coordinator, from round 1
    ca = (out / "federation" / "pki" / "ca.crt").read_bytes()
    artifact = read_artifact((out / "model.json").read_text(), ca_pem=ca)
    reports = sorted((out / "federation" / "reports").glob("*.json"))
    assert len(reports) == 2
    first, second = (json.loads(p.read_text()) for p in reports)
    assert artifact.source == f"round {first['round']}"
    assert artifact.variant in ("global", "recalibrated", "hierarchical")
    assert first["models"][0]["status"] == "fitted"
    assert first["models"][0]["hierarchical"]["tau"] > 0
    iecv = first["models"][0]["iecv"]
    assert len(iecv["per_site"]) == 4
    assert set(iecv["pooled"]) == {"logit_auc", "calibration_slope",
                                   "calibration_in_the_large", "log_OE"}
    assert first["models"][0]["recommendation"]["choice"] in VARIANT_FOR_CHOICE
    assert "internal-external cross-validation in the round" in stdout
    # the evaluation round scored the exported model at every site
    assert second["status"] == "pooled"
    by_name = {a["analysis"]: a for a in second["analyses"]}
    assert set(by_name) == {"c_statistic", "calibration_slope", "calibration_in_the_large",
                            "oe_ratio"}
    assert all(a["k"] == 4 for a in by_name.values())
    embedded = json.loads(second["spec"]["analyses"][0]["model"])
    assert embedded["signature"] == json.loads((out / "model.json").read_text())["signature"]
    # the summary it names, with both rounds and their reports
    summary = (out / "summary.txt").read_text()
    assert f"== development round {first['round']}" in summary
    assert f"== evaluation round {second['round']}" in summary
    for report in reports:
        html = report.with_suffix(".html")
        assert html.exists() and str(html) in summary
    assert f"summary of both rounds: {out / 'summary.txt'}" in stdout
