"""Demo data: seeded, realistic, the reference sites' columns, heterogeneity that shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main
from fedsynth.datasets import (
    DEMO_COLUMNS,
    demo_spec_path,
    generate,
    site_names,
    site_parameters,
    write_demo,
)
from fedsynth.effects import Estimate, estimate_all
from fedsynth.errors import InputError
from fedsynth.spec import load_spec

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "sites_public" / "mtf-alpha.csv"


def test_columns_match_the_reference_sites() -> None:
    assert list(pd.read_csv(REFERENCE, nrows=1).columns) == list(DEMO_COLUMNS)
    frame = generate(1, rows=50)["mtf-alpha"]
    assert list(frame.columns) == list(DEMO_COLUMNS)
    assert frame["patient_id"].is_unique
    assert set(frame["treated"]) <= {0, 1} and set(frame["event"]) <= {0, 1}
    assert frame["risk_score"].between(0, 1, inclusive="neither").all()
    assert (frame["time"] > 0).all() and (frame["los_days"] > 0).all()


def test_names() -> None:
    assert site_names(3) == ["mtf-alpha", "mtf-bravo", "mtf-charlie"]
    names = site_names(30)
    assert names[26] == "mtf-alpha-2" and len(set(names)) == 30


def test_seeded() -> None:
    a = generate(3, seed=7, rows=100)
    b = generate(3, seed=7, rows=100)
    c = generate(3, seed=8, rows=100)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["mtf-alpha"].equals(c["mtf-alpha"])
    sizes = [p.rows for p in site_parameters(6, seed=1)]
    assert len(set(sizes)) > 1 and all(600 <= s <= 2000 for s in sizes)


@pytest.mark.parametrize("kwargs,words", [
    (dict(sites=0), ["--sites", "0"]), (dict(sites=3, rows=5), ["--rows", "5"]),
    (dict(sites=3, heterogeneity="medium"), ["--heterogeneity", "'medium'"])])
def test_bad_arguments(kwargs, words) -> None:
    with pytest.raises(InputError) as info:
        generate(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_effects_are_recovered_and_every_estimator_runs() -> None:
    spec = load_spec(demo_spec_path())
    frames = generate(4, seed=3, rows=1500)
    params = {p.name: p for p in site_parameters(4, seed=3, rows=1500)}
    adjusted = []
    for name, frame in frames.items():
        results = estimate_all(frame, spec)
        assert all(isinstance(r, Estimate) for r in results.values()), results
        adjusted.append((results["adjusted_logOR"].yi, params[name].log_or,
                         results["adjusted_logOR"].se))
        # A reasonably calibrated, moderately discriminating risk model.
        assert 0.55 < results["auc"].yi < 0.8
        assert 0.6 < results["calibration_slope"].yi < 1.5
        assert abs(results["calibration_in_the_large"].yi) < 0.4
        assert results["logHR_efron"].yi < 0 and results["adjusted_MD"].yi < 0
    for estimate, truth, se in adjusted:
        assert abs(estimate - truth) < 4 * se


def _flags(heterogeneity: str) -> dict[str, bool]:
    synthesis = pytest.importorskip("fedsynth.meta")
    hetero = pytest.importorskip("fedsynth.meta.heterogeneity")
    spec = load_spec(demo_spec_path())
    frames = generate(6, seed=0, heterogeneity=heterogeneity, rows=800)
    results = {s: estimate_all(f, spec) for s, f in frames.items()}
    flags = {}
    for name in ("crude_OR", "adjusted_logOR", "adjusted_MD", "logHR_efron"):
        fit = synthesis.meta_analysis([results[s][name].yi for s in frames],
                                      [results[s][name].vi for s in frames],
                                      labels=list(frames))
        flags[name] = hetero.assess_heterogeneity(fit).flagged
    return flags


def test_high_heterogeneity_is_flagged_low_is_not() -> None:
    assert all(_flags("high").values())
    assert not any(_flags("low").values())


def test_cli_writes_sites_and_spec(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo-data", "--sites", "3", "--out", str(out), "--seed", "2",
                 "--rows", "60"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.name for p in out.iterdir()) == ["mtf-alpha.csv", "mtf-bravo.csv",
                                                     "mtf-charlie.csv", "spec.toml"]
    assert len(printed) == 4
    frame = pd.read_csv(out / "mtf-bravo.csv")
    pd.testing.assert_frame_equal(frame, generate(3, seed=2, rows=60)["mtf-bravo"],
                                  check_dtype=False)
    assert load_spec(out / "spec.toml") == load_spec(demo_spec_path())
    # No silent overwrite; --force overwrites.
    assert main(["demo-data", "--sites", "3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["demo-data", "--sites", "3", "--out", str(out), "--force", "--rows",
                 "40"]) == 0
    assert len(pd.read_csv(out / "mtf-alpha.csv")) == 40
    assert main(["demo-data", "--sites", "3", "--out", str(out / "spec.toml")]) == 2


def test_write_demo_rejects_a_file_as_out(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write_demo(target, 2)


def test_demo_spec_has_one_analysis_per_estimator() -> None:
    spec = load_spec(demo_spec_path())
    assert len(spec.analyses) == 15
    assert len({a.estimator for a in spec.analyses}) == 10
    assert np.all([a.name for a in spec.analyses])
