"""``fedsynth meta --random/--V/--robust`` (rma.mv) and the bias tools' options."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

import fedsynth
from fedsynth.cli import main
from fedsynth.meta import bias
from fedsynth.meta.mv import bldiag

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "rma_mv.json").read_text())


@pytest.fixture()
def kon_csv(tmp_path: Path) -> Path:
    path = tmp_path / "kon.csv"
    fedsynth.example_data("konstantopoulos2011").to_csv(path, index=False)
    return path


@pytest.fixture()
def bcg_csv(tmp_path: Path) -> Path:
    frame = fedsynth.example_data("bcg").rename(columns={
        "tpos": "ai", "tneg": "bi", "cpos": "ci", "cneg": "di", "author": "study"})
    path = tmp_path / "bcg.csv"
    frame.to_csv(path, index=False)
    return path


def run_json(argv: list[str], capsys) -> dict:
    assert main([*argv, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_random_nested_equals_metafor(kon_csv: Path, capsys) -> None:
    out = run_json(["meta", str(kon_csv), "--random", "~ 1 | district/school"], capsys)
    r = REF["fits"]["kon_REML_z"]["values"]
    np.testing.assert_allclose(out["sigma2"], r["sigma2"], rtol=1e-6)
    assert out["beta"][0] == pytest.approx(r["beta"], rel=1e-6)
    assert out["logLik"] == pytest.approx(r["logLik"], rel=1e-9)
    assert out["I2"]["I2"] == pytest.approx(REF["fits"]["kon_REML_z"]["I2"]["I2"], rel=1e-6)
    assert out["s_names"] == ["district", "district/school"]


@pytest.mark.parametrize("cr2", [False, True])
def test_robust_on_rma_mv_equals_metafor(kon_csv: Path, capsys, cr2: bool) -> None:
    argv = ["meta", str(kon_csv), "--random", "~ 1 | district/school", "--robust",
            "district"] + (["--cr2"] if cr2 else [])
    out = run_json(argv, capsys)["robust"]
    ref = next(c for c in REF["robust"] if c["name"] == "kon_REML_z"
               and c["clubSandwich"] == cr2)["values"]
    assert out["se"][0] == pytest.approx(ref["se"], rel=1e-6)
    assert out["dfs"][0] == pytest.approx(ref["dfs"], rel=1e-6)
    assert out["pval"][0] == pytest.approx(ref["pval"], rel=1e-5)


def test_multivariate_with_a_covariance_file(tmp_path: Path, capsys) -> None:
    b = fedsynth.example_data("berkey1998")
    b["is_AL"] = (b["outcome"] == "AL").astype(int)
    b["is_PD"] = (b["outcome"] == "PD").astype(int)
    data = tmp_path / "berkey.csv"
    b.to_csv(data, index=False)
    V = bldiag([b.loc[b.trial == t, ["v1i", "v2i"]].to_numpy() for t in b.trial.unique()])
    vfile = tmp_path / "V.csv"
    vfile.write_text("\n".join([",".join(f"c{j}" for j in range(10))]
                               + [",".join(repr(float(x)) for x in row) for row in V]) + "\n")
    out = run_json(["meta", str(data), "--random", "~ outcome | trial", "--struct", "UN",
                    "--V", str(vfile), "--moderator", "is_AL", "--moderator", "is_PD",
                    "--no-intercept"], capsys)
    r = REF["fits"]["ber_UN_REML"]["values"]
    np.testing.assert_allclose(out["beta"], r["beta"], rtol=1e-6)
    np.testing.assert_allclose(out["tau2"], r["tau2"], rtol=1e-5)
    assert out["rho"][0] == pytest.approx(r["rho"], rel=1e-5)
    assert out["g_levels"] == ["AL", "PD"]
    # the table output prints the structure and the model results
    assert main(["meta", str(data), "--random", "~ outcome | trial", "--struct", "UN",
                 "--V", str(vfile), "--moderator", "is_AL", "--moderator", "is_PD",
                 "--no-intercept"]) == 0
    text = capsys.readouterr().out
    assert "struct: UN" in text and "rho: 0.6088" in text


def test_bias_tools_json_equals_the_api(bcg_csv: Path, capsys) -> None:
    out = run_json(["meta", str(bcg_csv), "--measure", "RR", "--fsn", "orwin", "--regtest",
                    "--regtest-predictor", "vi", "--trimfill", "--estimator", "R0",
                    "--side", "right", "--hc", "--selmodel", "step", "--steps", "0.05", "1",
                    "--alternative", "less"], capsys)
    dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                          ci="cpos", di="cneg")
    yi, vi = dat["yi"].to_numpy(), dat["vi"].to_numpy()
    assert out["fsn"] == bias.fsn(yi, vi, type="Orwin").to_dict()
    assert out["regtest"]["zval"] == pytest.approx(
        bias.regtest(yi, vi, predictor="vi").zval, rel=1e-12)
    tf = bias.trimfill(yi, vi, estimator="R0", side="right")
    assert out["trimfill"]["k0"] == tf.k0 and out["trimfill"]["p_k0"] == tf.p_k0
    assert out["hc"]["ci_ub"] == pytest.approx(bias.hc(yi, vi).ci_ub, rel=1e-12)
    sel = bias.selmodel(yi, vi, type="stepfun", steps=[0.05, 1], alternative="less")
    assert out["selmodel"]["delta"][1] == pytest.approx(sel.delta[1], rel=1e-9)


def test_bias_tools_print_after_the_model(bcg_csv: Path, capsys) -> None:
    assert main(["meta", str(bcg_csv), "--measure", "RR", "--fsn", "Rosenberg",
                 "--regtest", "--trimfill", "--hc", "--selmodel", "beta"]) == 0
    text = capsys.readouterr().out
    for heading in ("Fail-safe N Calculation Using the Rosenberg Approach",
                    "Regression Test for Funnel Plot Asymmetry",
                    "Estimated number of missing studies", "hc       DL",
                    "Random-Effects Model (tau^2 estimator: ML)", "delta.2"):
        assert heading in text, heading


def test_robust_on_the_ordinary_model(bcg_csv: Path, capsys) -> None:
    frame = fedsynth.example_data("bcg")
    frame["cl2"] = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    frame = frame.rename(columns={"tpos": "ai", "tneg": "bi", "cpos": "ci", "cneg": "di"})
    frame.to_csv(bcg_csv, index=False)
    for cs in (False, True):
        argv = ["meta", str(bcg_csv), "--measure", "RR", "--robust", "cl2"]
        out = run_json(argv + (["--cr2"] if cs else []), capsys)["robust"]
        ref = next(c for c in REF["robust"] if c["name"] == "bcg_intercept"
                   and c["clubSandwich"] == cs)["values"]
        assert out["se"][0] == pytest.approx(ref["se"], rel=1e-6)
        assert out["dfs"][0] == pytest.approx(ref["dfs"], rel=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--random", "~ 1 | district", "--by", "year"], "--by: not available with --random"),
    (["--random", "~ 1 | nope"], "unknown column 'nope'"),
    (["--random", "1 | district"], "is not of the form"),
    (["--random", "~ 1 | district", "--method", "DL"], "rma.mv estimates by REML or ML"),
    (["--random", "~ 1 | district", "--test", "knha"], "rma.mv tests with z or t"),
    (["--cr2"], "--cr2: only used with --robust"),
    (["--V", "v.csv"], "--V: only used with --random"),
    (["--steps", "0.05", "1"], "--steps: only used by --selmodel step"),
    (["--selmodel", "step"], "give the p-value cut points with --steps"),
    (["--random", "~ 1 | district", "--robust", "school", "--cr2"], "not nested"),
    (["--random", "~ 1 | district", "--robust", "district", "--fsn", "Orwin"],
     "bias tools"),
])
def test_bad_requests_exit_2(kon_csv: Path, capsys, extra, message) -> None:
    assert main(["meta", str(kon_csv), *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_a_covariance_file_of_the_wrong_size_exits_2(kon_csv: Path, tmp_path: Path,
                                                      capsys) -> None:
    vfile = tmp_path / "V.csv"
    vfile.write_text("1,0\n0,1\n")
    assert main(["meta", str(kon_csv), "--random", "~ 1 | district", "--V",
                 str(vfile)]) == 2
    assert "a 56 x 56 matrix is needed" in capsys.readouterr().err
    vfile.write_text("\n".join(",".join("x" if i == j == 3 else "0" for j in range(56))
                               for i in range(56)))
    assert main(["meta", str(kon_csv), "--random", "~ 1 | district", "--V",
                 str(vfile)]) == 2
    assert "row 4, column 4" in capsys.readouterr().err


def test_bias_summaries_print_as_metafor() -> None:
    """Lines of metafor 3.8-1's print methods on dat.bcg (log RR), copied from R."""
    dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                          ci="cpos", di="cneg")
    yi, vi = dat["yi"].to_numpy(), dat["vi"].to_numpy()
    ni = fedsynth.example_data("bcg")[["tpos", "tneg", "cpos", "cneg"]].sum(axis=1).to_numpy()
    expected = {
        bias.fsn(yi, vi): ["Fail-safe N Calculation Using the Rosenthal Approach",
                           "Observed Significance Level: <.0001",
                           "Target Significance Level:   0.05", "Fail-safe N: 598"],
        bias.fsn(yi, vi, type="Orwin"): ["Average Effect Size: -0.7407",
                                         "Target Effect Size:  -0.3703", "Fail-safe N: 13"],
        bias.regtest(yi, vi, predictor="vi"): [
            "Predictor: sampling variance",
            "Test for Funnel Plot Asymmetry: z = -0.4268, p = 0.6695",
            "Limit Estimate (as vi -> 0):    b = -0.6554 (CI: -1.1073, -0.2035)"],
        bias.regtest(yi, vi, ni=ni, model="lm", predictor="ninv"): [
            "Model:     weighted regression with multiplicative dispersion",
            "Predictor: inverse of the sample size",
            "Test for Funnel Plot Asymmetry: t = -1.4485, df = 11, p = 0.1754",
            "Limit Estimate (as ni -> inf):  b = -0.3491 (CI: -0.6771, -0.0211)"],
        bias.trimfill(yi, vi, estimator="R0", side="right"): [
            "Estimated number of missing studies on the right side: 0 (SE = 1.4142)",
            "Test of H0: no missing studies on the right side:      p-val = 0.5000"],
        bias.selmodel(yi, vi, type="stepfun", steps=[0.05, 1], alternative="less"): [
            "Test for Selection Model Parameters:", "LRT(df = 1) = 0.0138, p-val = 0.9063",
            "tau^2 (estimated amount of total heterogeneity): 0.2764 (SE = 0.1471)"],
    }
    for result, lines in expected.items():
        text = result.summary().splitlines()
        for line in lines:
            assert line in text, (line, text)


def test_bias_tools_and_robust_as_csv_columns(bcg_csv: Path, capsys) -> None:
    frame = fedsynth.example_data("bcg").rename(columns={
        "tpos": "ai", "tneg": "bi", "cpos": "ci", "cneg": "di"})
    frame["cl2"] = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    frame.to_csv(bcg_csv, index=False)
    assert main(["meta", str(bcg_csv), "--measure", "RR", "--fsn", "Rosenthal", "--hc",
                 "--robust", "cl2", "--format", "csv"]) == 0
    header, row = csv.reader(io.StringIO(capsys.readouterr().out))
    columns = dict(zip(header, row, strict=True))
    assert columns["fsn_fsnum"] == "598.0"
    assert float(columns["robust_se"]) == pytest.approx(next(
        c for c in REF["robust"] if c["name"] == "bcg_intercept"
        and not c["clubSandwich"])["values"]["se"], rel=1e-6)
    assert "hc_ci_lb" in columns
