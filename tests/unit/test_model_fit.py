"""fit_model (one-stage, stratified and two-stage together) and ``fedsynth model fit``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.errors import InputError
from fedsynth.models import (
    ModelLimits,
    build_design,
    fit_one_stage,
    fit_site,
    fit_stratified,
    pool_site_fits,
)
from fedsynth.models.fit import fit_model
from fedsynth.spec import load_spec

SPEC = load_spec(trauma_spec_path())
FRAMES = generate_trauma(6, seed=5, rows=300)


def designs_for(name: str, frames=FRAMES) -> dict:
    model = SPEC.model(name)
    return {site: build_design(frame, model) for site, frame in frames.items()}


def test_fit_model_is_the_three_fits_and_the_issue_contract() -> None:
    designs = designs_for("complications")
    fit = fit_model(designs)
    assert fit.sites == tuple(FRAMES) and not fit.refused
    one, strat = fit_one_stage(designs), fit_stratified(designs)
    two = pool_site_fits({s: fit_site(d) for s, d in designs.items()})
    np.testing.assert_array_equal(fit.one_stage.coefficients, one.coefficients)
    np.testing.assert_array_equal(fit.stratified.fit.coefficients, strat.fit.coefficients)
    assert fit.two_stage.pooled_dict() == two.pooled_dict()
    out = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert {"name", "family", "n", "sites", "one_stage", "stratified", "two_stage"} <= set(out)
    assert out["n"] == sum(d.n for d in designs.values())
    assert {"coefficients", "se", "deviance", "iterations"} <= set(out["one_stage"])
    assert {"coefficients", "se", "site_intercepts", "site_intercepts_se"} <= set(
        out["stratified"])
    assert {"per_site", "pooled", "multivariate"} <= set(out["two_stage"])
    pooled = out["two_stage"]["pooled"]["hypots"]
    assert {"k", "estimate", "se", "tau2", "I2", "Q", "pi_lb", "pi_ub"} <= set(pooled)
    text = fit.summary()
    assert "one-stage: converged" in text and "hypots" in text and "multivariate" in text
    assert [row["coefficient"] for row in fit.table()] == list(
        SPEC.model("complications").coefficient_names)


def test_a_site_its_disclosure_control_refuses_takes_part_in_nothing() -> None:
    frames = dict(FRAMES)
    frames["tiny"] = generate_trauma(1, seed=9, rows=40)["mtf-alpha"].iloc[:12]
    designs = designs_for("length_of_stay", frames)
    fit = fit_model(designs)
    assert "tiny" in fit.refused and "minimum" in fit.refused["tiny"]
    assert "tiny" not in fit.sites and "tiny" not in fit.one_stage.sites
    assert "tiny" not in fit.stratified.site_intercepts
    assert "tiny" not in fit.two_stage.per_site
    assert "refused by tiny" in fit.summary()
    everyone = fit_model(designs, limits=None)
    assert "tiny" in everyone.sites and everyone.n == fit.n + 12
    strict = fit_model(designs, limits=ModelLimits(min_rows=10_000))
    assert strict.sites == () and strict.one_stage is None
    assert "no site took part" in strict.summary()


def test_fit_model_bad_input() -> None:
    with pytest.raises(InputError, match="no sites"):
        fit_model({})
    mixed = {"a": designs_for("complications")["mtf-alpha"],
             "b": designs_for("length_of_stay")["mtf-bravo"]}
    with pytest.raises(InputError, match="different models"):
        fit_model(mixed)
    with pytest.raises(InputError, match="struct"):
        fit_model(designs_for("complications"), struct="AR")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trauma")
    assert main(["demo-data", "--kind", "trauma", "--out", str(out), "--sites", "5",
                 "--rows", "250", "--seed", "2"]) == 0
    return out


def test_cli_fits_the_models_of_the_demo(demo: Path, capsys) -> None:
    files = sorted(str(p) for p in demo.glob("mtf-*.csv"))
    assert main(["model", "fit", "--spec", str(demo / "spec.toml"), "--data", *files,
                 "--model", "complications", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (entry,) = out["models"]
    assert entry["name"] == "complications" and len(entry["sites"]) == 5
    frames = {Path(f).stem: pd.read_csv(f, keep_default_na=False, na_values=[""])
              for f in files}
    ours = fit_one_stage({s: build_design(f, SPEC.model("complications"))
                          for s, f in frames.items()})
    np.testing.assert_allclose([entry["one_stage"]["coefficients"][n] for n in ours.names],
                               ours.coefficients, rtol=1e-12)
    assert main(["model", "fit", "--spec", str(demo / "spec.toml"), "--data", *files]) == 0
    text = capsys.readouterr().out
    for name in ("tbi_mortality", "length_of_stay", "complications"):
        assert f"model {name}:" in text
    assert "pupil=None" in text and "site intercepts (stratified)" in text


def test_cli_site_column_gives_the_same_fit(demo: Path, tmp_path: Path, capsys) -> None:
    files = sorted(demo.glob("mtf-*.csv"))
    stacked = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=[""])
                         .assign(site=f.stem) for f in files])
    stacked.to_csv(tmp_path / "registry.csv", index=False)
    args = ["model", "fit", "--spec", str(demo / "spec.toml"), "--model", "tbi_mortality",
            "--format", "json"]
    assert main([*args, "--data", *map(str, files)]) == 0
    per_file = json.loads(capsys.readouterr().out)
    out = tmp_path / "fit.json"
    assert main([*args, "--data", str(tmp_path / "registry.csv"), "--site-column", "site",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads(out.read_text()) == per_file


def test_cli_bad_input_exits_2_naming_the_problem(demo: Path, tmp_path: Path,
                                                   capsys) -> None:
    spec, data = str(demo / "spec.toml"), str(demo / "mtf-alpha.csv")
    assert main(["model", "fit", "--spec", spec, "--data", data, "--model", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    bad = pd.read_csv(data, keep_default_na=False, na_values=[""])
    bad.loc[3, "ct"] = "VI"
    bad.to_csv(tmp_path / "mtf-x.csv", index=False)
    assert main(["model", "fit", "--spec", spec, "--data", str(tmp_path / "mtf-x.csv"),
                 "--model", "complications"]) == 2
    err = capsys.readouterr().err
    assert "'mtf-x'" in err and "'ct'" in err and "'VI'" in err
    plain = tmp_path / "plain.toml"
    plain.write_text('[[analysis]]\nname = "a"\nestimator = "auc"\noutcome = "mort"\n'
                     'score = "age"\n')
    assert main(["model", "fit", "--spec", str(plain), "--data", data]) == 2
    assert "no [[model]] tables" in capsys.readouterr().err
    assert main(["model", "fit", "--spec", spec, "--data", data,
                 "--site-column", "nowhere"]) == 2
    assert "no column 'nowhere'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:     # argparse: exit status 2
        main(["model", "fit", "--spec", spec, "--data", data, "--method", "XX"])
    assert exited.value.code == 2 and "--method" in capsys.readouterr().err
    assert main(["model", "fit", "--spec", spec, "--data", data, "--level", "100"]) == 2
    assert "--level" in capsys.readouterr().err


def test_readme_models_block_is_real_output(tmp_path: Path, capsys, monkeypatch) -> None:
    import glob
    import re

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("<!-- section:models -->"):
                   text.index("<!-- /section:models -->")]
    block = re.findall(r"```\n(\$ fedsynth.*?)\n```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    commands = re.split(r"^\$ ", block, flags=re.M)[1:]
    assert len(commands) == 2
    for command in commands:
        line, _, expected = command.partition("\n")
        argv = []
        for word in line.split()[1:]:
            argv.extend(sorted(glob.glob(word)) if "*" in word else [word])
        assert main(argv) == 0
        assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")
