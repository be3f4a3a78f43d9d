"""The command-line defects a new user hit (issue 12, "Defects a new user hit"): one test
(or more) per defect, through the real ``fedsynth`` entry point."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.cli import main
from fedsynth.errors import InputError
from fedsynth.meta.metareg import fit_rma
from tests.conftest import load_json


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- meta-regression with as many coefficients as studies -------------------------------

DF0 = load_json("clidefects/metareg_df0.json")


def _df0_design():
    x = np.array([row["x"] for row in DF0["data"]], dtype=float)
    y = np.array([row["yi"] for row in DF0["data"]])
    v = np.array([row["vi"] for row in DF0["data"]])
    return y, v, np.column_stack([np.ones(3), x, x * x])


@pytest.mark.parametrize("method", ["REML", "DL", "PM"])
def test_df0_random_effects_refused_as_metafor(method):
    y, v, X = _df0_design()
    assert DF0[f"error_{method}"].startswith("Number of parameters to be estimated is larger")
    with pytest.raises(InputError, match="number of parameters to be estimated is larger "
                                         "than the number of observations"):
        fit_rma(y, v, X, method=method)


def test_df0_fixed_effect_fits_exactly_as_metafor():
    y, v, X = _df0_design()
    fit = fit_rma(y, v, X, method="FE")
    ref = DF0["FE"]
    np.testing.assert_allclose(fit.coef, ref["coef"], rtol=1e-6)
    np.testing.assert_allclose(fit.se, ref["se"], rtol=1e-6)
    assert fit.QE == 0.0 and fit.QE_df == 0 and fit.QEp == ref["QEp"]
    assert fit.I2 == ref["I2"] and fit.H2 == ref["H2"] and fit.R2 is None
    assert fit.QM == pytest.approx(ref["QM"], rel=1e-6)


def test_df0_cli_refuses_and_prints_no_qe(capsys, tmp_path):
    path = write(tmp_path, "g.csv", "study,yi,vi,g\nA,0.1,0.01,a\nB,0.3,0.02,b\nC,0.5,0.03,c\n")
    code, out, err = run(capsys, "meta", path, "--moderator", "g")
    assert code == 2 and out == ""
    assert "3 coefficients" in err and "3 studies" in err and "--method FE" in err
    code, out, err = run(capsys, "meta", path, "--moderator", "g", "--method", "FE")
    assert code == 0 and "QE(df = 0) = 0.0000" in out and "-0.0000" not in out
    assert "R^2 = NA%" in out


# --- --cumulative-by states the order and shows the ordering column ---------------------

def test_cumulative_by_says_the_order_and_shows_the_column(capsys, tmp_path):
    path = write(tmp_path, "y.csv", "study,yi,vi,year\nA,0.1,0.01,2004\nB,0.3,0.02,1999\n"
                                    "C,0.5,0.03,2010\nD,0.2,0.02,2001\n")
    code, out, _ = run(capsys, "meta", path, "--cumulative-by", "year")
    assert code == 0
    assert "in the given order" not in out
    assert "increasing order of year" in out
    lines = out[out.index("Cumulative meta-analysis"):].splitlines()
    assert lines[1].split()[:3] == ["added", "year", "k"]
    assert [ln.split()[:2] for ln in lines[2:6]] == [["B", "1999"], ["D", "2001"],
                                                    ["A", "2004"], ["C", "2010"]]
    code, out, _ = run(capsys, "meta", path, "--cumulative-by", "year", "--format", "json")
    import json

    cum = json.loads(out)["cumulative"]
    assert cum["order_by"] == "year" and cum["order_values"] == ["1999", "2001", "2004", "2010"]
    assert cum["labels"] == ["B", "D", "A", "C"]
