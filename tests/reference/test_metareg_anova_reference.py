"""btt omnibus tests, linear contrasts and likelihood-ratio comparisons against metafor
3.8-1 (tests/data/metafor/metareg_tests.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta.metareg import ContrastTest, ModelComparison, WaldTest

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "metareg_tests.json")
                 .read_text())
DATA = {name: pd.DataFrame(cols) for name, cols in REF["data"].items()}


def vec(x):
    return x if isinstance(x, list) else [x]


def fit(data, mods, **kw):
    if mods == "~ 1":
        return fedsynth.meta_regression(DATA[data], mods="~ 1", **kw)
    return fedsynth.meta_regression(DATA[data], mods=mods, **kw)


@pytest.mark.parametrize("name", list(REF["btt"]))
def test_btt(name):
    case = REF["btt"][name]
    btt = case["btt"]
    btt = btt if isinstance(btt, str) else vec(btt)
    res = fit(case["data"], case["mods"], btt=btt, test=case["test"], method=case["method"])
    for om in (res.omnibus, res.anova(btt=btt)):
        assert isinstance(om, WaldTest)
        assert [i + 1 for i in om.btt] == vec(case["btt_used"])
        np.testing.assert_allclose([om.QM, om.QMp], [case["QM"], case["QMp"]], rtol=1e-6)
        assert list(om.QMdf) == vec(case["QMdf"])


@pytest.mark.parametrize("name", list(REF["contrasts"]))
def test_linear_contrasts(name):
    case = REF["contrasts"][name]
    res = fit(case["data"], case["mods"], test=case["test"])
    ct = res.anova(X=np.array(case["X"]), rhs=case["rhs"])
    assert isinstance(ct, ContrastTest)
    for key in ("Xb", "se", "zval", "pval"):
        np.testing.assert_allclose(getattr(ct, key), vec(case[key]), rtol=1e-6, atol=1e-12)
    if case["QM"] is None:
        assert ct.QM is None and ct.QMdf is None
    else:
        np.testing.assert_allclose([ct.QM, ct.QMp], [case["QM"], case["QMp"]], rtol=1e-6)
        assert list(ct.QMdf) == vec(case["QMdf"])
    assert list(ct.hyp) == vec(case["hyp"])


@pytest.mark.parametrize("name", list(REF["anova"]))
def test_likelihood_ratio(name):
    case = REF["anova"][name]
    full = fit(case["data"], case["full"], method=case["method"], test=case["test"])
    reduced = fit(case["data"], case["reduced"], method=case["method"], test=case["test"])
    if case["method"] == "REML":
        with pytest.raises(InputError, match="REML comparisons are not meaningful"):
            full.anova(reduced)
    cmp = full.anova(reduced, refit=case["refit"])
    assert isinstance(cmp, ModelComparison)
    for got, key in ((cmp.fit_stats_f, "fit_stats_f"), (cmp.fit_stats_r, "fit_stats_r")):
        np.testing.assert_allclose([got.logLik, got.deviance, got.AIC, got.BIC, got.AICc],
                                   case[key], rtol=1e-6)
    assert (cmp.parms_f, cmp.parms_r) == (case["parms_f"], case["parms_r"])
    np.testing.assert_allclose([cmp.LRT, cmp.pval, cmp.QE_f, cmp.QE_r],
                               [case["LRT"], case["pval"], case["QE_f"], case["QE_r"]],
                               rtol=1e-6)
    np.testing.assert_allclose([cmp.tau2_f, cmp.tau2_r], [case["tau2_f"], case["tau2_r"]],
                               rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(cmp.R2, case["R2"], rtol=1e-6, atol=1e-8)
    # the order of the two models does not matter
    assert reduced.anova(full, refit=case["refit"]).LRT == pytest.approx(cmp.LRT, rel=1e-12)


def test_same_fixed_effects_reml_against_fixed_tau2_zero():
    case = REF["anova_same_X"]
    full = fit("bcg", "~ ablat")
    reduced = fit("bcg", "~ ablat", tau2=0.0)
    cmp = full.anova(reduced)
    np.testing.assert_allclose([cmp.LRT, cmp.pval], [case["LRT"], case["pval"]], rtol=1e-6)
    assert (cmp.parms_f, cmp.parms_r) == (case["parms_f"], case["parms_r"])


def test_anova_refusals():
    a = fit("bcg", "~ ablat", method="ML")
    with pytest.raises(InputError, match="same number of parameters"):
        a.anova(fit("bcg", "~ year", method="ML"))
    with pytest.raises(InputError, match="mismatch between"):
        a.anova(fit("bcg", "~ 1", method="REML"))
    with pytest.raises(InputError, match="differ"):
        a.anova(fedsynth.meta_regression(DATA["bcg"].iloc[:12], mods="~ 1", method="ML"))
    with pytest.raises(InputError, match="fixed-effect"):
        fit("bcg", "~ ablat + year", method="FE").anova(fit("bcg", "~ 1", method="ML"))
    with pytest.raises(InputError, match="btt or X"):
        a.anova(btt=[2], X=[[0, 1]])
    with pytest.raises(InputError, match="columns"):
        a.anova(X=[[1, 2, 3]])
    with pytest.warns(UserWarning, match="ML/REML"):
        fit("bcg", "~ ablat", method="DL").anova(fit("bcg", "~ 1", method="DL"))
