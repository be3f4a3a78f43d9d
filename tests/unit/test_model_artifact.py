"""The signed model artifact: export, verification, scoring, site score, specs naming it."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.cli import main
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.effects.patient_level import estimate
from fedsynth.errors import ConfigError
from fedsynth.models import build_design
from fedsynth.models.artifact import (
    ArtifactError,
    artifact_body,
    model_hash,
    read_artifact,
    sign_artifact,
    verify_artifact,
)
from fedsynth.models.fit import fit_model
from fedsynth.models.iecv import linear_predictor
from fedsynth.pki import init_ca, issue_coordinator, issue_site
from fedsynth.signing import load_private_key
from fedsynth.spec import embed_model_files, load_spec, parse_spec
from site_agent.connectors.pushdown import estimate_all_sql
from site_agent.connectors.sql import SqlSource

SPEC = load_spec(trauma_spec_path())
MODEL = SPEC.model("tbi_mortality")
FRAMES = generate_trauma(4, seed=11, rows=300)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    issue_coordinator(root, "localhost")
    issue_site(root, "mtf-alpha")
    other = root / "other"
    init_ca(other, name="another CA")
    issue_coordinator(other, "localhost")
    return root


@pytest.fixture(scope="module")
def fitted():
    designs = {s: build_design(f, MODEL) for s, f in FRAMES.items()}
    return fit_model(designs).to_dict(), designs


def signed(pki: Path, entry, variant="global", who="coordinator", root=None) -> dict:
    root = root or pki
    body = artifact_body(entry, MODEL, variant=variant, created="2026-01-01T00:00:00Z")
    return sign_artifact(body, load_private_key(root / f"{who}.key"),
                         (root / f"{who}.crt").read_bytes())


def test_round_trip_and_scores_equal_the_fit(pki, fitted) -> None:
    entry, designs = fitted
    doc = signed(pki, entry)
    art = read_artifact(json.dumps(doc), ca_pem=(pki / "ca.crt").read_bytes())
    assert art.variant == "global" and art.signer == "localhost"
    assert art.spec_hash == model_hash(MODEL)
    assert art.document["model"]["categorical"]["pupil"] == ["Both", "One", "None"]
    site = "mtf-alpha"
    scores = art.score(FRAMES[site].drop(columns="mort"))   # no outcome needed
    coef = entry["one_stage"]["coefficients"]
    lp = linear_predictor(designs[site], list(coef), list(coef.values()))
    np.testing.assert_allclose(scores.linear_predictor, lp, rtol=1e-13)
    np.testing.assert_allclose(scores.prediction, 1 / (1 + np.exp(-lp)), rtol=1e-13)


def test_hierarchical_and_stratified_site_intercepts(pki, fitted) -> None:
    entry, _ = fitted
    ca = (pki / "ca.crt").read_bytes()
    frame = FRAMES["mtf-bravo"]
    h = verify_artifact(signed(pki, entry, "hierarchical"), ca_pem=ca)
    mean, own = h.score(frame), h.score(frame, site="mtf-bravo")
    shift = entry["hierarchical"]["site_intercepts"]["mtf-bravo"]
    np.testing.assert_allclose(own.linear_predictor - mean.linear_predictor, shift,
                               rtol=1e-12)
    s = verify_artifact(signed(pki, entry, "stratified"), ca_pem=ca)
    with pytest.raises(ArtifactError, match="name the site"):
        s.score(frame)
    with pytest.raises(ArtifactError, match="no intercept"):
        s.score(frame, site="nowhere")
    got = s.score(frame, site="mtf-bravo").linear_predictor
    design = build_design(frame, MODEL)
    strat = entry["stratified"]
    beta = [strat["site_intercepts"]["mtf-bravo"] if n == "intercept"
            else strat["coefficients"][n] for n in design.names]
    np.testing.assert_allclose(got, design.x @ np.array(beta), rtol=1e-12)


def test_missing_covariates_are_not_scored_and_bad_levels_refused(pki, fitted) -> None:
    entry, _ = fitted
    art = verify_artifact(signed(pki, entry))
    frame = FRAMES["mtf-alpha"].head(10).copy()
    frame.loc[3, "age"] = np.nan
    scores = art.score(frame)
    assert scores.n_scored == 9 and np.isnan(scores.prediction[3])
    frame.loc[4, "pupil"] = "Neither"
    with pytest.raises(ConfigError.__mro__[1], match="Neither"):
        art.score(frame)


def test_unsigned_tampered_and_foreign_artifacts_are_refused(pki, fitted) -> None:
    entry, _ = fitted
    ca = (pki / "ca.crt").read_bytes()
    doc = signed(pki, entry)
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    with pytest.raises(ArtifactError, match="unsigned"):
        verify_artifact(unsigned, ca_pem=ca)
    tampered = json.loads(json.dumps(doc))
    tampered["model"]["coefficients"]["age"] += 1e-9
    with pytest.raises(ArtifactError, match="tampered"):
        verify_artifact(tampered, ca_pem=ca)
    moved = json.loads(json.dumps(doc))
    moved["model"]["site_intercepts"] = {"mtf-alpha": 1.0}
    with pytest.raises(ArtifactError, match="tampered"):
        verify_artifact(moved, ca_pem=ca)
    with pytest.raises(ArtifactError, match="client"):
        verify_artifact(signed(pki, entry, who="mtf-alpha"), ca_pem=ca)
    with pytest.raises(ArtifactError, match="not issued by the project CA"):
        verify_artifact(signed(pki, entry, root=pki / "other"), ca_pem=ca)
    with pytest.raises(ArtifactError, match="format"):
        verify_artifact({"format": "x"})
    with pytest.raises(ArtifactError, match="version"):
        verify_artifact({**doc, "version": 2})
    with pytest.raises(ArtifactError, match="different identities"):
        body = artifact_body(entry, MODEL, variant="global", created="now")
        sign_artifact(body, load_private_key(pki / "mtf-alpha.key"),
                      (pki / "coordinator.crt").read_bytes())


@settings(max_examples=30, deadline=None)
@given(index=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_of_the_signed_bytes_is_refused(pki, fitted, index, bit) -> None:
    """Flipping one bit anywhere in the signature value never verifies."""
    entry, _ = fitted
    doc = signed(pki, entry)
    raw = bytearray(base64.b64decode(doc["signature"]["value"]))
    raw[index % len(raw)] ^= 1 << bit
    doc["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ArtifactError):
        verify_artifact(doc)


def test_export_errors(pki, fitted) -> None:
    entry, _ = fitted
    with pytest.raises(ArtifactError, match="variant"):
        artifact_body(entry, MODEL, variant="best", created="now")
    with pytest.raises(ArtifactError, match="is of model"):
        artifact_body(entry, SPEC.model("complications"), variant="global", created="now")
    with pytest.raises(ArtifactError, match="no 'hierarchical'"):
        artifact_body({**entry, "hierarchical": None}, MODEL, variant="hierarchical",
                      created="now")


def write_sites(tmp_path: Path) -> list[str]:
    files = []
    for site, frame in FRAMES.items():
        frame.to_csv(tmp_path / f"{site}.csv", index=False)
        files.append(str(tmp_path / f"{site}.csv"))
    return files


def test_cli_export_and_site_score(tmp_path: Path, pki, capsys) -> None:
    files = write_sites(tmp_path)
    spec = str(trauma_spec_path())
    fit = tmp_path / "fit.json"
    assert main(["model", "fit", "--spec", spec, "--data", *files, "--model",
                 "tbi_mortality", "--format", "json", "--out", str(fit)]) == 0
    out = tmp_path / "model.json"
    assert main(["model", "export", "--fit", str(fit), "--spec", spec, "--model",
                 "tbi_mortality", "--cert", str(pki / "coordinator.crt"), "--key",
                 str(pki / "coordinator.key"), "--out", str(out)]) == 0
    assert "signed by coordinator.crt" in capsys.readouterr().out
    scores = tmp_path / "scores.csv"
    assert main(["site", "score", "--model", str(out), "--data", files[0], "--ca",
                 str(pki / "ca.crt"), "--out", str(scores)]) == 0
    assert "300 of 300 rows scored" in capsys.readouterr().out
    table = pd.read_csv(scores)
    assert {"linear_predictor", "prediction"} <= set(table.columns)
    assert table["prediction"].between(0, 1).all()
    # tampered: exit 2, a clear message, no output written
    doc = json.loads(out.read_text())
    doc["model"]["coefficients"]["age"] *= 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    again = tmp_path / "again.csv"
    assert main(["site", "score", "--model", str(bad), "--data", files[0], "--ca",
                 str(pki / "ca.crt"), "--out", str(again)]) == 2
    assert "tampered" in capsys.readouterr().err and not again.exists()
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps({k: v for k, v in doc.items() if k != "signature"}))
    assert main(["site", "score", "--model", str(unsigned), "--data", files[0], "--ca",
                 str(pki / "ca.crt")]) == 2
    assert "unsigned" in capsys.readouterr().err
    # export needs a signing identity; the round form is ROUND NAME with --config only
    assert main(["model", "export", "--fit", str(fit), "--spec", spec, "--model",
                 "tbi_mortality", "--out", str(tmp_path / "x.json")]) == 2
    assert "signing identity" in capsys.readouterr().err
    assert main(["model", "export", "ROUND1", "tbi_mortality", "--spec", spec, "--model",
                 "tbi_mortality", "--out", str(tmp_path / "x.json")]) == 2
    assert "either ROUND NAME or --fit" in capsys.readouterr().err
    assert main(["model", "export", "ROUND1", "tbi_mortality",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert main(["model", "export", "ROUND1", "--out", str(tmp_path / "x.json")]) == 2
    assert "ROUND NAME (two words)" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["model", "export", "--fit", str(fit), "--spec", spec, "--model",
                 "tbi_mortality", "--variant", "stratified", "--cert",
                 str(pki / "coordinator.crt"), "--key", str(pki / "coordinator.key"),
                 "--out", str(tmp_path / "s.json")]) == 0
    capsys.readouterr()
    assert main(["site", "score", "--model", str(tmp_path / "s.json"), "--data", files[0],
                 "--ca", str(pki / "ca.crt")]) == 2
    assert "name the site" in capsys.readouterr().err


EVAL = """
[[analysis]]
name = "c"
estimator = "auc"
outcome = "mort"
model = "{model}"
scale = "logit"

[[analysis]]
name = "slope"
estimator = "calibration_slope"
outcome = "mort"
model = "{model}"
"""


def test_spec_embeds_the_artifact_and_the_site_scores_with_it(tmp_path: Path, pki,
                                                              fitted) -> None:
    entry, designs = fitted
    path = tmp_path / "model.json"
    path.write_text(json.dumps(signed(pki, entry)))
    spec_file = tmp_path / "eval.toml"
    spec_file.write_text(EVAL.format(model="model.json"))
    spec = load_spec(spec_file)
    a = spec["c"]
    assert a.model is not None and a.model.startswith("{") and a.score is None
    assert set(a.columns) >= {"mort", "age", "pupil", "ct"}
    # the spec that travels carries the artifact, and reads back equal
    again = parse_spec(spec.to_toml())
    assert again == spec and again["c"].model == a.model
    text = embed_model_files(spec_file.read_text(), tmp_path)
    assert parse_spec(text) == spec
    # a spec received from elsewhere cannot make a site read a file
    with pytest.raises(ConfigError, match="names a file"):
        parse_spec(EVAL.format(model="model.json"))
    # the estimate equals the estimator on the model's risks as a score column
    frame = FRAMES["mtf-charlie"]
    got = estimate(frame, a)
    coef = entry["one_stage"]["coefficients"]
    lp = linear_predictor(designs["mtf-charlie"], list(coef), list(coef.values()))
    direct = estimate(frame.assign(risk=1 / (1 + np.exp(-lp))),
                      {"name": "c", "estimator": "auc", "outcome": "mort", "score": "risk",
                       "scale": "logit"})
    assert got.yi == pytest.approx(direct.yi, rel=1e-12)
    assert got.vi == pytest.approx(direct.vi, rel=1e-12)
    # a site whose data lack a covariate refuses the analysis, naming the column only
    refusal = estimate(frame.drop(columns="pupil"), a)
    assert refusal.code == "missing_column" and "pupil" in refusal.reason


def test_spec_refuses_bad_model_keys(tmp_path: Path, pki, fitted) -> None:
    entry, _ = fitted
    doc = signed(pki, entry)
    doc["model"]["coefficients"]["age"] = 0.5
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    (tmp_path / "eval.toml").write_text(EVAL.format(model="bad.json"))
    with pytest.raises(ConfigError, match="analysis 'c': key 'model'.*tampered"):
        load_spec(tmp_path / "eval.toml")
    (tmp_path / "eval.toml").write_text(EVAL.format(model="absent.json"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "eval.toml")
    both = EVAL.format(model="x.json").replace('scale = "logit"', 'score = "p"')
    with pytest.raises(ConfigError, match="either 'score'.*or 'model'.*not both"):
        parse_spec(both)
    neither = EVAL.format(model="x.json").replace('model = "x.json"\n', "", 1)
    with pytest.raises(ConfigError, match="missing key 'score' or 'model'"):
        parse_spec(neither)
    with pytest.raises(ConfigError, match="does not apply"):
        parse_spec('[[analysis]]\nname = "a"\nestimator = "logistic"\noutcome = "y"\n'
                   'exposure = "x"\nmodel = "m.json"\n')


def test_sql_source_scores_a_model_analysis_like_a_file(tmp_path: Path, pki,
                                                        fitted) -> None:
    """A database site fetches the artifact's columns and scores them (no pushdown)."""
    entry, _ = fitted
    (tmp_path / "model.json").write_text(json.dumps(signed(pki, entry)))
    spec_file = tmp_path / "eval.toml"
    spec_file.write_text(EVAL.format(model="model.json"))
    spec = load_spec(spec_file)
    frame = FRAMES["mtf-delta"]
    with sqlite3.connect(tmp_path / "site.db") as conn:
        frame.to_sql("patients", conn, index=False)
    source = SqlSource(f"sqlite:///{tmp_path / 'site.db'}", table="patients")
    try:
        from_sql = estimate_all_sql(source, spec)
    finally:
        source.dispose()
    for name in ("c", "slope"):
        direct = estimate(frame, spec[name])
        assert from_sql[name].yi == pytest.approx(direct.yi, rel=1e-12)
        assert from_sql[name].vi == pytest.approx(direct.vi, rel=1e-12)


def test_recalibrated_variant_reestimates_the_intercept(pki, fitted) -> None:
    """A recalibrated artifact: global slopes, the intercept re-estimated from the rows.

    The shift solves glm(y ~ offset(lp), binomial)'s score equation: after it, the
    predicted risks sum to the events (calibration-in-the-large 0, O:E 1), and it equals
    the evaluation estimator's calibration-in-the-large of the global model's risks.
    """
    entry, _ = fitted
    doc = sign_artifact(artifact_body(entry, MODEL, variant="recalibrated", created="now"),
                        load_private_key(pki / "coordinator.key"),
                        (pki / "coordinator.crt").read_bytes())
    recal = verify_artifact(doc, ca_pem=(pki / "ca.crt").read_bytes())
    glob = verify_artifact(signed(pki, entry), ca_pem=(pki / "ca.crt").read_bytes())
    assert recal.variant == "recalibrated" and recal.coefficients == glob.coefficients
    frame = next(iter(FRAMES.values()))
    scores = recal.score(frame)
    base = glob.score(frame)
    assert np.isclose(scores.prediction.sum(), frame["mort"].sum(), rtol=1e-10)
    assert np.allclose(scores.linear_predictor - base.linear_predictor,
                       scores.recalibration, rtol=0, atol=1e-12)
    citl = estimate(frame.assign(risk=base.prediction),
                    {"name": "c", "estimator": "calibration_in_the_large",
                     "outcome": "mort", "score": "risk"})
    assert np.isclose(scores.recalibration, citl.yi, rtol=1e-8)
    with pytest.raises(ArtifactError, match="need column 'mort'"):
        recal.score(frame.drop(columns=["mort"]))
    with pytest.raises(ArtifactError, match="events"):
        recal.score(frame.assign(mort=0))
    # in an evaluation analysis: a refusal from the vocabulary, not an error
    spec = parse_spec(f"""
[[analysis]]
name = "c"
estimator = "auc"
outcome = "mort"
model = '{json.dumps(doc, sort_keys=True, separators=(",", ":"))}'
""")
    analysis = spec.analyses[0]
    assert estimate(frame, analysis).yi == pytest.approx(
        estimate(frame.assign(risk=scores.prediction),
                 {"name": "c", "estimator": "auc", "outcome": "mort", "score": "risk"}).yi,
        rel=1e-12)
    refused = estimate(frame.assign(mort=0), analysis)
    assert refused.code == "no_events", refused
