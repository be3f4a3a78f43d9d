"""Case diagnostics and Q-profile tau² CIs of meta-regression models against metafor
3.8-1 (tests/data/metafor/regdiag.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta import regdiag

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "regdiag.json").read_text())
DATA = {name: pd.DataFrame(rows) for name, rows in REF["data"].items()}


def close(a, b, rel=1e-6, abs_=1e-9):
    b = np.array([np.nan if x is None else x for x in np.atleast_1d(b)], dtype=float)
    np.testing.assert_allclose(np.asarray(a, dtype=float).ravel(), b, rtol=rel, atol=abs_)


def model(case):
    kw = {"method": case["method"], "test": case["test"], "weighted": case["weighted"]}
    if case["weights"]:
        kw["weights"] = case["weights"]
    if case["tau2"] is not None:
        kw["tau2"] = case["tau2"]
    return fedsynth.meta_regression(DATA[case["data"]], mods=case["mods"], **kw)


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_influence(name):
    case = REF["cases"][name]
    fit = model(case)
    inf = regdiag.influence(fit)
    for key in ("rstudent", "dffits", "cook_d", "cov_r", "tau2_del", "QE_del", "hat",
                "weight"):
        close(getattr(inf, key), case[key], abs_=1e-8)
    # metafor's dfbetas() data frame, column-major (one column per coefficient)
    close(inf.dfbs.T, case["dfbetas"], abs_=1e-8)
    assert [bool(x) for x in inf.is_infl] == [bool(x) for x in case["is_infl"]]


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_residuals_hat_weights(name):
    case = REF["cases"][name]
    fit = model(case)
    rs, rt = regdiag.rstandard(fit), regdiag.rstudent(fit)
    close(rs.resid, case["rstandard_resid"])
    close(rs.se, case["rstandard_se"])
    close(rs.z, case["rstandard_z"])
    close(rt.resid, case["rstudent_resid"])
    close(rt.se, case["rstudent_se"])
    close(rt.z, case["rstudent_z"])
    close(regdiag.hatvalues(fit), case["hatvalues"])
    close(regdiag.weights(fit), case["weights_pct"])
    close(regdiag.cooks_distance(fit), case["cooks"], abs_=1e-8)
    close(regdiag.dfbetas(fit).T, case["dfbetas"], abs_=1e-8)


@pytest.mark.parametrize("name", [n for n, c in REF["cases"].items() if "blup" in c])
def test_blup_and_ranef(name):
    case = REF["cases"][name]
    fit = model(case)
    for got, key in ((regdiag.blup(fit), "blup"), (regdiag.ranef(fit), "ranef")):
        for field in ("pred", "se", "pi_lb", "pi_ub"):
            close(getattr(got, field), case[key][field])


@pytest.mark.parametrize("name", [n for n, c in REF["cases"].items() if "confint" in c])
def test_qprofile_confint_of_meta_regression(name):
    case = REF["cases"][name]
    ci = regdiag.confint(model(case))
    for key in ("tau2", "tau", "I2", "H2"):
        close(getattr(ci, key), case["confint"][key], rel=1e-5, abs_=1e-8)


def test_refusals_as_metafor():
    weighted = model(REF["cases"]["bcg_ablat_weights"])
    with pytest.raises(InputError, match="non-standard weights"):
        regdiag.blup(weighted)
    with pytest.raises(InputError, match="no estimated tau"):
        regdiag.confint(model(REF["cases"]["bcg_ablat_tau2"]))
    with pytest.raises(InputError, match="only for models without moderators"):
        regdiag.leave1out(model(REF["cases"]["bcg_ablat"]))
    intercept_only = fedsynth.meta_regression(DATA["bcg"], mods="~ 1")
    loo = regdiag.leave1out(intercept_only)
    assert len(loo.estimate) == 13
