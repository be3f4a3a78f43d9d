"""An evaluation round whose analyses name a signed model artifact (issue 14), over real
coordinator and site processes on 127.0.0.1 with mutual TLS.

The model is fitted on three sites (``fedsynth model fit``), exported and signed with the
coordinator's key (``fedsynth model export --config``), and named by the spec's
evaluation analyses (``model = "model.json"``). ``round start`` embeds it in the spec the
sites receive; each of four sites scores its own patients and runs the existing
estimators; the coordinator pools them. Each site's estimate equals the estimator run
locally on the artifact's risks as a score column.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.effects.patient_level import estimate
from fedsynth.models.artifact import read_artifact

pytestmark = pytest.mark.integration

SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta")
SPEC = """name = "monthly-validation"

[[analysis]]
name = "c_statistic"
estimator = "auc"
outcome = "mort"
model = "model.json"
scale = "logit"

[[analysis]]
name = "calibration"
estimator = "calibration_slope"
outcome = "mort"
model = "model.json"

[[analysis]]
name = "oe"
estimator = "oe_ratio"
outcome = "mort"
model = "model.json"
"""


def test_evaluation_round_of_a_signed_model(federation, tmp_path: Path) -> None:
    frames = generate_trauma(len(SITES), seed=21, rows=400)
    data = tmp_path / "data"
    data.mkdir()
    for site, frame in frames.items():
        frame.to_csv(data / f"{site}.csv", index=False)
    config = federation.write_coordinator_config(allow=SITES)
    work = tmp_path / "model"
    work.mkdir()
    develop = [str(data / f"{s}.csv") for s in SITES[1:]]
    federation.cli("model", "fit", "--spec", str(trauma_spec_path()), "--data", *develop,
                   "--model", "tbi_mortality", "--format", "json", "--out",
                   str(work / "fit.json"))
    federation.cli("model", "export", "--fit", str(work / "fit.json"), "--spec",
                   str(trauma_spec_path()), "--model", "tbi_mortality", "--config",
                   str(config), "--out", str(work / "model.json"))
    spec = work / "validation.toml"
    spec.write_text(SPEC, encoding="utf-8")

    # what a site would send, shown before the round
    shown = federation.cli("site", "estimate", "--spec", str(spec), "--data",
                           str(data / "mtf-alpha.csv")).stdout
    assert "scored at this site with model 'tbi_mortality' (global" in shown

    federation.start_coordinator(config)
    round_id = federation.start_round(spec, deadline="5m")
    for site in SITES:
        federation.start_site(site, data / f"{site}.csv", once=True)
    doc = federation.wait_round(round_id, timeout=300)
    assert doc["status"] == "pooled", doc.get("failure_reason")
    assert sorted(s["status"] for s in doc["sites"]) == ["submitted"] * len(SITES)
    # the spec the round sent carries the artifact itself (signed), not a path
    embedded = json.loads(doc["spec"]["analyses"][0]["model"])
    assert embedded["format"] == "fedsynth-model-artifact" and embedded["signature"]

    artifact = read_artifact((work / "model.json").read_text(),
                             ca_pem=federation.pki.ca.read_bytes())
    by_name = {a["analysis"]: a for a in doc["analyses"]}
    assert by_name["c_statistic"]["k"] == len(SITES)
    for name, estimator, extra in (("c_statistic", "auc", {"scale": "logit"}),
                                   ("calibration", "calibration_slope", {}),
                                   ("oe", "oe_ratio", {})):
        got = {e["site"]: e for e in by_name[name]["site_estimates"]}
        assert sorted(got) == sorted(SITES)
        for site in SITES:
            risk = artifact.score(frames[site]).prediction
            local = estimate(frames[site].assign(risk=risk),
                             {"name": name, "estimator": estimator, "outcome": "mort",
                              "score": "risk", **extra})
            assert np.isclose(got[site]["yi"], local.yi, rtol=1e-9), (name, site)
            assert np.isclose(got[site]["vi"], local.vi, rtol=1e-9), (name, site)
