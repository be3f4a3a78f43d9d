"""``fedsynth meta`` with --mods, --btt, --tau2, --weights, --unweighted, --test t|adhoc,
checked against the metafor values of tests/data/metafor/metareg_tests.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "metareg_tests.json")
                 .read_text())
CASES = REF["cases"]


@pytest.fixture()
def bcg_csv(tmp_path):
    path = tmp_path / "bcg.csv"
    frame = pd.DataFrame(REF["data"]["bcg"])
    frame["study"] = [f"{a} ({y})" for a, y in zip(frame["author"], frame["year"])]
    frame.to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_mods_formula_json_matches_metafor(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ year + factor(alloc)",
                          "--format", "json"], capsys)
    assert code == 0, err
    mr = json.loads(out)["meta_regression"]
    case = CASES["bcg_year_alloc"]
    assert mr["names"] == case["names"]
    np.testing.assert_allclose(mr["coef"], case["coef"], rtol=1e-6)
    np.testing.assert_allclose(mr["tau2"], case["tau2"], rtol=1e-6)
    assert mr["omnibus"]["btt"] == case["btt"]
    np.testing.assert_allclose(mr["omnibus"]["QM"], case["QM"], rtol=1e-6)


def test_btt_positions_and_pattern_with_knha(bcg_csv, capsys):
    ref = REF["btt"]["bcg_alloc_knha"]
    for spec in ("3:4", "3,4", "alloc"):
        code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat + factor(alloc)",
                              "--test", "knha", "--btt", spec, "--format", "json"], capsys)
        assert code == 0, err
        om = json.loads(out)["meta_regression"]["omnibus"]
        assert om["btt"] == [3, 4] and om["QMdf"] == ref["QMdf"]
        np.testing.assert_allclose([om["QM"], om["QMp"]], [ref["QM"], ref["QMp"]], rtol=1e-6)
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat + factor(alloc)",
                          "--btt", "3:4"], capsys)
    assert code == 0 and "Test of Moderators (coefficients 3, 4)" in out


@pytest.mark.parametrize("name, argv", [
    ("bcg_tau2_int", ["--tau2", "0.1"]),
    ("bcg_tau2_int_t", ["--tau2", "0.05", "--test", "t"]),
    ("bcg_w_int_adhoc", ["--weights", "ni", "--test", "adhoc"]),
    ("bcg_unw_int_knha", ["--unweighted", "--test", "knha"]),
    ("bcg_int_DL_t", ["--method", "DL", "--test", "t"]),
])
def test_intercept_only_options_match_metafor(bcg_csv, capsys, name, argv):
    code, out, err = run(["meta", str(bcg_csv), *argv, "--format", "json"], capsys)
    assert code == 0, err
    rec = json.loads(out)
    case = CASES[name]
    np.testing.assert_allclose([rec["estimate"], rec["se"], rec["tau2"]],
                               [case["coef"], case["se"], case["tau2"]], rtol=1e-6)
    np.testing.assert_allclose([rec["ci_lb"], rec["ci_ub"]], [case["ci_lb"], case["ci_ub"]],
                               rtol=1e-6)


def test_mods_with_weights_and_fixed_tau2(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--tau2", "0.1",
                          "--test", "knha", "--format", "json"], capsys)
    assert code == 0, err
    mr = json.loads(out)["meta_regression"]
    case = CASES["bcg_tau2_ablat_knha"]
    np.testing.assert_allclose(mr["coef"], case["coef"], rtol=1e-6)
    np.testing.assert_allclose(mr["test_se"], case["se"], rtol=1e-6)
    assert mr["tau2_fixed"] is True
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--weights", "ni",
                          "--test", "t", "--format", "json"], capsys)
    mr = json.loads(out)["meta_regression"]
    case = CASES["bcg_w_ablat_t"]
    np.testing.assert_allclose(mr["test_se"], case["se"], rtol=1e-6)
    np.testing.assert_allclose(mr["test_pval"], case["pval"], rtol=1e-6)


@pytest.mark.parametrize("argv, words", [
    (["--mods", "~ nope"], "'nope'"),
    (["--mods", "ablat"], "starts with '~'"),
    (["--btt", "2"], "--btt: needs --mods"),
    (["--weights", "ni", "--unweighted"], "exclude each other"),
    (["--mods", "~ ablat", "--moderator", "ablat"], "not both"),
    (["--tau2", "0.1", "--diagnostics"], "--tau2: not available"),
    (["--mods", "~ ablat", "--btt", "7"], "btt"),
    (["--tau2", "0.1", "--method", "FE"], "contradicts method FE"),
    (["--weights", "alloc"], "alloc"),
])
def test_bad_model_options_exit_2(bcg_csv, capsys, argv, words):
    code, out, err = run(["meta", str(bcg_csv), *argv], capsys)
    assert code == 2
    assert out == ""
    assert words in err


def test_negative_tau2_is_refused_by_the_parser(bcg_csv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["meta", str(bcg_csv), "--tau2", "-1"])
    assert exc.value.code == 2
    assert "--tau2" in capsys.readouterr().err


PRED = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "predict.json").read_text())
PERM = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "permutest.json")
                  .read_text())


def test_newmods_transf_match_metafor(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--newmods", "10;30;50",
                          "--transf", "exp", "--format", "json"], capsys)
    assert code == 0, err
    pr = json.loads(out)["meta_regression"]["predict"]
    case = PRED["cases"]["ablat_new_exp_addx"]
    for key in ("pred", "ci_lb", "ci_ub", "pi_lb", "pi_ub"):
        np.testing.assert_allclose(pr[key], case[key], rtol=1e-6)
    assert pr["se"] == [None, None, None]
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--newmods", "10;30"],
                         capsys)
    assert code == 0 and "Predicted values (newmods = 10;30)" in out


def test_permutest_exact_matches_metafor(tmp_path, capsys):
    toy = pd.DataFrame(PERM["data"]["toy"])
    path = tmp_path / "toy.csv"
    toy.to_csv(path, index=False)
    code, out, err = run(["meta", str(path), "--mods", "~ x", "--permutest", "--format",
                          "json"], capsys)
    assert code == 0, err
    pt = json.loads(out)["meta_regression"]["permutest"]
    case = PERM["cases"]["toy_x"]
    assert pt["exact"] and pt["iter"] == case["iter"]
    np.testing.assert_allclose(pt["pval"], case["pval"], rtol=1e-12)
    code, out, err = run(["meta", str(path), "--mods", "~ x", "--permutest", "500", "--seed",
                          "3"], capsys)
    # 720 distinct permutations > 500: an approximate test from the seeded generator
    assert code == 0 and "Permutation test, approximate (500 permutations)" in out


@pytest.mark.parametrize("argv, words", [
    (["--newmods", "1"], "--newmods: needs --mods"),
    (["--permutest"], "--permutest: needs --mods"),
    (["--mods", "~ ablat", "--newmods", "1;x"], "not a list of numbers"),
    (["--mods", "~ ablat", "--newmods", "1", "--transf", "nope"], "transf"),
    (["--mods", "~ ablat", "--transf", "exp"], "--transf: needs --newmods"),
    (["--mods", "~ ablat", "--permutest", "many"], "--permutest"),
])
def test_bad_prediction_options_exit_2(bcg_csv, capsys, argv, words):
    code, out, err = run(["meta", str(bcg_csv), *argv], capsys)
    assert code == 2 and out == "" and words in err


REG = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "regdiag.json").read_text())


def test_mods_diagnostics_influence_and_confint_match_metafor(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--diagnostics",
                          "--format", "json"], capsys)
    assert code == 0, err
    mr = json.loads(out)["meta_regression"]
    case = REG["cases"]["bcg_ablat"]
    for key in ("rstudent", "cook_d", "hat", "tau2_del"):
        np.testing.assert_allclose(mr["influence"][key], case[key], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mr["confint"]["tau2"], case["confint"]["tau2"], rtol=1e-5)


PROF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "profile.json").read_text())


def test_profile_plot_and_pl_confint(bcg_csv, tmp_path, capsys):
    out_png = tmp_path / "profile.png"
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--diagnostics",
                          "--profile", str(out_png), "--format", "json"], capsys)
    assert code == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pl = json.loads(out)["meta_regression"]["confint_pl"]
    np.testing.assert_allclose(pl["tau2"], PROF["cases"]["bcg_ablat_REML"]["tau2"], rtol=1e-5)
    code, out, err = run(["meta", str(bcg_csv), "--profile", str(out_png)], capsys)
    assert code == 2 and "--profile: needs --mods" in err
    code, out, err = run(["meta", str(bcg_csv), "--mods", "~ ablat", "--profile", "p.txt"],
                         capsys)
    assert code == 2 and ".png" in err
