"""rma tests (z, t, knha, adhoc), weights, weighted=FALSE, fixed tau², R² and formula
meta-regression against metafor 3.8-1 (tests/data/metafor/metareg_tests.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "metareg_tests.json")
                 .read_text())
DATA = {name: pd.DataFrame(cols) for name, cols in REF["data"].items()}
CASES = REF["cases"]
REL = 1e-6


def vec(x):
    return x if isinstance(x, list) else [x]


def close(actual, expected, rel=REL, abs_=1e-9):
    if expected is None:
        assert actual is None or not np.all(np.isfinite(actual))
        return
    np.testing.assert_allclose(np.asarray(actual, dtype=float),
                               np.asarray(expected, dtype=float), rtol=rel, atol=abs_)


def options(args):
    opts = {"method": args.get("method", "REML"), "test": args.get("test", "z")}
    if "weights" in args:
        opts["weights"] = args["weights"]
    if "weighted" in args:
        opts["weighted"] = args["weighted"]
    if "tau2" in args:
        opts["tau2"] = args["tau2"]
    return opts


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "mods" not in c["args"]])
def test_intercept_only(name):
    case = CASES[name]
    res = fedsynth.meta_analysis(DATA[case["data"]], yi="yi", vi="vi", **options(case["args"]))
    close(res.estimate, case["coef"])
    close(res.se, case["se"])
    close(res.stat, case["zval"])
    close(res.pval, case["pval"])
    close([res.ci_lb, res.ci_ub], [case["ci_lb"], case["ci_ub"]])
    close(res.tau2, case["tau2"])
    close(res.Q, case["QE"])
    close(res.I2, case["I2"])
    close(res.H2, case["H2"])
    stats = case["fit_stats_REML" if case["args"].get("method", "REML") == "REML"
                 else "fit_stats_ML"]
    close(res.logLik, stats[0])
    if case["args"].get("tau2") is not None:
        assert np.isnan(res.se_tau2)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "mods" in c["args"]])
def test_meta_regression(name):
    case = CASES[name]
    fit = fedsynth.meta_regression(DATA[case["data"]], yi="yi", vi="vi",
                                   mods=case["args"]["mods"], **options(case["args"]))
    # R deparses relevel(factor(setting), ref = "indiv"); formulaic keeps the text as typed
    assert [n.replace('"', "'").replace(" = ", "=") for n in fit.names] == \
        [n.replace('"', "'").replace(" = ", "=") for n in vec(case["names"])]
    close(fit.coef, case["coef"])
    close(fit.se, case["se"])
    close(fit.stat, case["zval"])
    close(fit.pval, case["pval"])
    close(fit.ci_lb, case["ci_lb"])
    close(fit.ci_ub, case["ci_ub"])
    close(fit.vb.ravel(), case["vb"])
    close(fit.tau2, case["tau2"])
    close(fit.QE, case["QE"])
    close(fit.QEp, case["QEp"])
    close(fit.I2, case["I2"], abs_=1e-6)  # percent; tau² on the boundary
    close(fit.H2, case["H2"])
    close(fit.s2w, case["s2w"])
    if case["R2"] is None:
        assert fit.R2 is None
    else:
        close(fit.R2, case["R2"])
    om = fit.omnibus
    close(om.QM, case["QM"])
    close(om.QMp, case["QMp"])
    qmdf = vec(case["QMdf"])
    assert om.QMdf[0] == qmdf[0]
    assert om.QMdf[1] == qmdf[1]
    assert [i + 1 for i in om.btt] == vec(case["btt"])
    assert fit.parms == case["parms"]
    close([fit.fit_stats["ML"].logLik, fit.fit_stats["ML"].deviance, fit.fit_stats["ML"].AIC,
           fit.fit_stats["ML"].BIC, fit.fit_stats["ML"].AICc], case["fit_stats_ML"])
    close([fit.fit_stats["REML"].logLik, fit.fit_stats["REML"].deviance,
           fit.fit_stats["REML"].AIC, fit.fit_stats["REML"].BIC, fit.fit_stats["REML"].AICc],
          case["fit_stats_REML"])
