"""``fedsynth meta --bayes/--forest/--funnel`` end to end (in-process CLI), checked against
the R reference values in tests/data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fedsynth.cli import main
from tests.conftest import load_json

DATA = load_json("metafor_public.json")
BCG = next(c for c in DATA["pooling"] if c["id"] == "bcg/OR/REML/z")
GROUPS = next(c for c in DATA["subgroup"] if c["id"] == "bcg/OR")["group"]
REF = {c["id"]: c["expected"] for c in DATA["bayes"]}


@pytest.fixture()
def bcg_csv(tmp_path):
    path = tmp_path / "bcg.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study", "yi", "vi", "alloc"])
        for row in zip(BCG["labels"], BCG["yi"], BCG["vi"], GROUPS):
            writer.writerow([row[0], repr(row[1]), repr(row[2]), row[3]])
    return path


@pytest.mark.parametrize("prior", ["half_normal:0.5", "half_cauchy:0.5", "half_normal:1"])
def test_json_bayes_matches_reference(bcg_csv, capsys, prior):
    assert main(["meta", str(bcg_csv), "--bayes", prior, "--format", "json"]) == 0
    bayes = json.loads(capsys.readouterr().out)["bayes"]
    name, scale = prior.split(":")
    expected = REF[f"bcg_OR/{name}/{scale}"]
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(bayes[key], float), np.asarray(value, float),
                                   rtol=1e-7, atol=1e-8, err_msg=key)
    assert bayes["pred_lb"] < bayes["mu_ci"][0] and bayes["pred_ub"] > bayes["mu_ci"][1]


def test_table_and_csv_carry_the_bayesian_summary(bcg_csv, capsys):
    assert main(["meta", str(bcg_csv), "--bayes", "half_normal:0.5"]) == 0
    out = capsys.readouterr().out
    assert "Bayesian random-effects model (flat prior on mu, half_normal prior on tau" in out
    assert "mu   median -0.7398, 95% CrI [-1.1321, -0.3665]" in out
    assert main(["meta", str(bcg_csv), "--bayes", "half_normal:0.5", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert float(rows[0]["bayes_mu_median"]) == pytest.approx(
        REF["bcg_OR/half_normal/0.5"]["mu_median"], abs=1e-9)


@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_forest_and_funnel_files(bcg_csv, tmp_path, capsys, ext, magic):
    forest, funnel = tmp_path / f"forest.{ext}", tmp_path / f"funnel.{ext}"
    assert main(["meta", str(bcg_csv), "--forest", str(forest), "--funnel", str(funnel),
                 "--plot-measure", "OR", "--bayes", "half_cauchy:0.5", "--diagnostics",
                 "--subgroup", "alloc"]) == 0
    assert forest.read_bytes().startswith(magic) and funnel.read_bytes().startswith(magic)
    if ext == "svg":
        svg = forest.read_text(encoding="utf-8")
        # text is drawn as paths; the row labels keep their ids, one per site
        assert all(f'id="label-site-{i}"' in svg for i in range(13))


def test_forest_per_analysis_with_by(bcg_csv, tmp_path, capsys):
    out = tmp_path / "forest.png"
    assert main(["meta", str(bcg_csv), "--by", "alloc", "--forest", str(out)]) == 0
    made = sorted(p.name for p in tmp_path.glob("forest-*.png"))
    assert made == ["forest-alternate.png", "forest-random.png", "forest-systematic.png"]


@pytest.mark.parametrize("argv,message", [
    (["--bayes", "half_student:1"], "--bayes: unknown prior 'half_student'"),
    (["--bayes", "half_normal:0"], "--bayes: scale must be a finite number > 0"),
    (["--bayes", "half_normal"], "--bayes: expected PRIOR:SCALE"),
    (["--forest", "plot.jpg"], "--forest: 'plot.jpg' must end in .png, .svg or .pdf"),
    (["--funnel", "/nonexistent-dir/f.png"], "--funnel: directory"),
])
def test_bad_options_exit_2_and_print_nothing(bcg_csv, tmp_path, capsys, argv, message):
    assert main(["meta", str(bcg_csv), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert list(tmp_path.glob("*.jpg")) == []


@pytest.mark.parametrize("k", [1, 2])
def test_heavy_tailed_prior_with_few_sites_prints_strict_json(tmp_path, capsys, k):
    path = tmp_path / "few.csv"
    path.write_text("study,yi,vi\n" + "".join(f"s{i},{0.1 * i},0.02\n" for i in range(k)))
    assert main(["meta", str(path), "--bayes", "half_cauchy:0.5", "--format", "json"]) == 0
    bayes = json.loads(capsys.readouterr().out)["bayes"]
    assert bayes["mu_sd"] is None and bayes["notes"]
    assert bayes["mu_ci"][0] < bayes["mu_median"] < bayes["mu_ci"][1]
    assert main(["meta", str(path), "--bayes", "half_cauchy:0.5"]) == 0
    assert "sd infinite" in capsys.readouterr().out
