"""permutest against metafor 3.8-1's exact permutation tests (tests/data/metafor/permutest.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta.metareg import fit_rma
from fedsynth.meta.permutation import exact_permutation_count, permutest

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "permutest.json")
                 .read_text())
DATA = {name: pd.DataFrame(rows) for name, rows in REF["data"].items()}


def vec(x):
    return x if isinstance(x, list) else [x]


def model(case):
    rows = np.array(vec(case["rows"])) - 1
    d = DATA[case["data"]].iloc[rows].reset_index(drop=True)
    return fedsynth.meta_regression(d, mods=case["mods"] or "~ 1", method=case["method"],
                                    test=case["test"])


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_exact_permutation_test_matches_metafor(name):
    case = REF["cases"][name]
    fit = model(case)
    res = permutest(fit, exact=case["exact"])
    assert res.exact
    assert res.iter == case["iter"] == exact_permutation_count(fit)
    np.testing.assert_allclose(res.zval, vec(case["zval"]), rtol=1e-6)
    np.testing.assert_allclose(res.QM, case["QM"], rtol=1e-6)
    np.testing.assert_allclose(res.pval, vec(case["pval"]), rtol=1e-12)
    np.testing.assert_allclose(res.QMp, case["QMp"], rtol=1e-12)


def test_seeded_approximate_test_is_reproducible_and_close_to_exact():
    case = REF["cases"]["bcg7_ablat"]
    fit = model(case)
    a = permutest(fit, iter=2000, seed=42)
    b = permutest(fit, iter=2000, seed=42)
    assert not a.exact and a.iter == 2000 and a.seed == 42
    np.testing.assert_array_equal(a.pval, b.pval)
    # Monte Carlo error of a p-value from 2000 draws is at most ~0.011
    np.testing.assert_allclose(a.pval, vec(case["pval"]), atol=0.045)
    # the first permutation is the observed arrangement, as metafor
    np.testing.assert_allclose(a.zval_perm[0], fit.stat, rtol=1e-10)


def test_refusals():
    fit = model(REF["cases"]["toy_x"])
    with pytest.raises(InputError, match="iter"):
        permutest(fit, iter=1)
    big = fit_rma(np.linspace(0, 1, 30), np.full(30, 0.1),
                  np.column_stack([np.ones(30), np.arange(30.0)]))
    with pytest.raises(InputError, match="too many"):
        permutest(big, exact=True)
