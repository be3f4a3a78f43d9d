"""The synthetic trauma registry: seeded, realistic, heterogeneity where it is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main
from fedsynth.datasets import (
    TRAUMA_COLUMNS,
    TRAUMA_LEVELS,
    TRAUMA_LOG_ODDS,
    generate_trauma,
    trauma_parameters,
    trauma_spec_path,
    write_demo,
)
from fedsynth.errors import InputError
from fedsynth.models.coding import CSV_NA_VALUES, build_design
from fedsynth.models.glm import fit_one_stage, fit_stratified
from fedsynth.models.twostage import fit_site, pool_site_fits
from fedsynth.spec import load_spec

SPEC = load_spec(trauma_spec_path())
MORTALITY = SPEC.model("tbi_mortality")


def test_columns_levels_and_sizes() -> None:
    frames = generate_trauma()
    assert len(frames) == 10 and list(frames)[0] == "mtf-alpha"
    sizes = [len(f) for f in frames.values()]
    assert len(set(sizes)) == 10 and min(sizes) >= 200 and max(sizes) <= 2400
    for frame in frames.values():
        assert tuple(frame.columns) == TRAUMA_COLUMNS and frame["patient_id"].is_unique
        for column, levels in TRAUMA_LEVELS.items():
            assert set(frame[column]) <= set(levels)
        for column in ("hypox", "hypots", "tsah", "edh", "mort"):
            assert set(frame[column]) <= {0, 1}
        assert (frame["los_days"] > 0).all() and (frame["complications"] >= 0).all()
        np.testing.assert_allclose(frame["log_los"], np.log(frame["los_days"]), atol=1e-6)
        assert 0.05 < frame["mort"].mean() < 0.6
    every = pd.concat(frames.values())
    # Severity links the predictors (as in real TBI data).
    assert every.groupby("motor_score")["mort"].mean()["1/2"] > \
        every.groupby("motor_score")["mort"].mean()["5/6"]


def test_seeded_and_variants() -> None:
    a, b = generate_trauma(3, seed=4), generate_trauma(3, seed=4)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["mtf-alpha"].equals(generate_trauma(3, seed=5)["mtf-alpha"])
    flat = trauma_parameters(10, heterogeneity="none")
    assert {p.intercept for p in flat} == {TRAUMA_LOG_ODDS["intercept"]}
    assert {p.hypots for p in flat} == {TRAUMA_LOG_ODDS["hypots"]}
    spread = trauma_parameters(10, heterogeneity="high")
    assert np.std([p.intercept for p in spread]) > 0.4
    assert np.std([p.hypots for p in spread]) > 0.3
    assert {len(f) for f in generate_trauma(4, rows=50).values()} == {50}


@pytest.mark.parametrize("kwargs,words", [
    (dict(sites=0), ["--sites", "0"]), (dict(sites=3, rows=5), ["--rows", "5"]),
    (dict(sites=3, heterogeneity="wild"), ["--heterogeneity", "'wild'"])])
def test_bad_arguments(kwargs, words) -> None:
    with pytest.raises(InputError) as info:
        generate_trauma(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_the_models_recover_the_truth_and_see_the_heterogeneity() -> None:
    varying = generate_trauma(10, seed=0, heterogeneity="high")
    designs = {s: build_design(f, MORTALITY) for s, f in varying.items()}
    one = fit_one_stage(designs)
    truth = np.array([TRAUMA_LOG_ODDS[n] for n in one.names[1:]])
    z = (one.coefficients[1:] - truth) / one.se[1:]
    assert np.all(np.abs(z) < 4), dict(zip(one.names[1:], z))
    strat = fit_stratified(designs)
    params = {p.name: p for p in trauma_parameters(10, seed=0, heterogeneity="high")}
    fitted = np.array(list(strat.site_intercepts.values()))
    true = np.array([params[s].intercept - 30 * TRAUMA_LOG_ODDS["age"] for s in designs])
    assert np.corrcoef(fitted, true)[0, 1] > 0.9
    two = pool_site_fits({s: fit_site(d) for s, d in designs.items()})
    pooled = two.pooled_dict()
    assert pooled["intercept"]["I2"] > 50 and pooled["hypots"]["tau2"] > 0.05
    homogeneous = generate_trauma(10, seed=0, heterogeneity="none")
    flat = pool_site_fits({s: fit_site(build_design(f, MORTALITY))
                           for s, f in homogeneous.items()}).pooled_dict()
    assert flat["intercept"]["I2"] < 30 and flat["hypots"]["I2"] < 30


def test_cli_writes_the_registry_and_its_spec(tmp_path: Path, capsys) -> None:
    out = tmp_path / "trauma"
    assert main(["demo-data", "--kind", "trauma", "--out", str(out), "--sites", "4",
                 "--seed", "3"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5
    assert load_spec(out / "spec.toml") == SPEC
    frame = pd.read_csv(out / "mtf-charlie.csv", keep_default_na=False,
                        na_values=list(CSV_NA_VALUES))
    pd.testing.assert_frame_equal(frame, generate_trauma(4, seed=3)["mtf-charlie"],
                                  check_dtype=False)
    assert "None" in set(frame["pupil"])
    assert main(["demo-data", "--kind", "trauma", "--out", str(out), "--sites", "4"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["demo-data", "--out", str(tmp_path / "p"), "--heterogeneity", "none"]) == 2
    assert "'none'" in capsys.readouterr().err
    write_demo(tmp_path / "flat", kind="trauma", heterogeneity="none", rows=40)
    assert len(list((tmp_path / "flat").glob("mtf-*.csv"))) == 10
    with pytest.raises(InputError, match="--kind"):
        write_demo(tmp_path / "x", kind="icu")


def test_default_demo_is_unchanged(tmp_path: Path) -> None:
    paths = write_demo(tmp_path / "demo")
    assert len(paths) == 7 and paths[-1].name == "spec.toml"
