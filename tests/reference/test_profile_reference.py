"""Profile-likelihood CIs of tau² and the profiled log-likelihood against metafor 3.8-1
(tests/data/metafor/profile.R)."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta.profile import profile, profile_loglik

matplotlib.use("Agg")

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "profile.json").read_text())
DATA = {name: pd.DataFrame(rows) for name, rows in REF["data"].items()}


def model(case):
    return fedsynth.meta_regression(DATA[case["data"]], mods=case["mods"],
                                    method=case["method"])


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_profile_likelihood_ci(name):
    case = REF["cases"][name]
    ci = model(case).confint(type="PL")
    for key in ("tau2", "tau", "I2", "H2"):
        np.testing.assert_allclose(getattr(ci, key), case[key], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_profile_grid_and_loglik(name):
    case = REF["cases"][name]
    fit = model(case)
    pr = fit.profile()
    # the default grid comes from the Q-profile CI, as metafor's; metafor's profile() calls
    # confint() with uniroot's default tolerance (1.2e-4), so its grid ends are that coarse
    np.testing.assert_allclose(pr.tau2, case["profile_tau2"], rtol=2e-3, atol=1.3e-4)
    np.testing.assert_allclose(profile_loglik(fit, case["profile_tau2"]),
                               case["profile_ll"], rtol=1e-8)
    assert np.all(pr.ll <= fit.logLik + 1e-9)
    fig = pr.plot()
    assert fig.axes[0].get_xlabel() == r"$\tau^2$"


def test_profile_refusals():
    fe = fedsynth.meta_regression(DATA["bcg"], mods="~ ablat", method="FE")
    with pytest.raises(InputError, match="fixed-effect"):
        profile(fe)
    fixed = fedsynth.meta_regression(DATA["bcg"], mods="~ ablat", tau2=0.1)
    with pytest.raises(InputError, match="fixed by the user"):
        fixed.confint(type="PL")
    with pytest.raises(InputError, match="QP, PL"):
        model(REF["cases"]["bcg_ablat_REML"]).confint(type="Wald")
