"""Unit tests of fedsynth.meta.robust (cluster-robust inference)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.errors import InputError
from fedsynth.meta.metareg import fit_rma
from fedsynth.meta.mv import rma_mv
from fedsynth.meta.pooling import meta_analysis
from fedsynth.meta.robust import robust

DATA = {"district": [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5],
        "school": [1, 2, 3, 1, 2, 1, 2, 3, 1, 2, 1, 2]}
YI = [0.1, 0.3, 0.2, -0.2, 0.0, 0.5, 0.6, 0.4, 0.2, 0.1, -0.1, 0.3]
VI = [0.02, 0.03, 0.02, 0.05, 0.04, 0.02, 0.03, 0.02, 0.04, 0.05, 0.03, 0.02]


def test_cr0_is_cr1_without_the_adjustment() -> None:
    fit = rma_mv(YI, VI, random="~ 1 | district/school", data=DATA)
    cr1 = robust(fit, DATA["district"])
    cr0 = robust(fit, DATA["district"], adjust=False)
    n, p = 5, 1
    np.testing.assert_allclose(cr0.vb * n / (n - p), cr1.vb, rtol=1e-12)
    assert cr0.vbest == "CR0" and cr1.vbest == "CR1" and cr1.dfs[0] == n - p
    assert fit.robust(DATA["district"]).se[0] == pytest.approx(cr1.se[0])


def test_one_cluster_per_estimate_is_the_hc_sandwich() -> None:
    """With every estimate its own cluster, CR0 is the heteroscedasticity-consistent HC0."""
    yi, vi = np.array(YI), np.array(VI)
    X = np.column_stack([np.ones(12), np.arange(12.0)])
    fit = fit_rma(yi, vi, X, method="DL")
    w = 1 / (vi + fit.tau2)
    bread = np.linalg.inv(X.T @ (w[:, None] * X))
    e = yi - X @ fit.coef
    hc0 = bread @ ((X * (w * e)[:, None]).T @ (X * (w * e)[:, None])) @ bread
    np.testing.assert_allclose(robust(fit, range(12), adjust=False).vb, hc0, rtol=1e-10)


def test_cr2_equals_cr1_structure_and_checks_nesting() -> None:
    fit = rma_mv(YI, VI, random="~ 1 | district/school", data=DATA)
    cr2 = robust(fit, DATA["district"], clubSandwich=True)
    assert cr2.robumethod == "clubSandwich" and cr2.vbest == "CR2"
    assert 1 < cr2.dfs[0] < 4   # Satterthwaite df below n - 1 with 5 clusters
    with pytest.raises(InputError, match="not nested"):
        robust(fit, DATA["school"], clubSandwich=True)
    # the default sandwich does not need nesting
    assert robust(fit, DATA["school"]).n == 3


def test_robust_validation() -> None:
    fit = meta_analysis(np.array(YI), np.array(VI))
    with pytest.raises(InputError, match="cluster: 3 values for 12 estimates"):
        robust(fit, [1, 2, 3])
    with pytest.raises(InputError, match="number of clusters \\(1\\)"):
        robust(fit, [1] * 12)
    with pytest.raises(InputError, match="missing value in row 2"):
        robust(fit, [1, None] + [2] * 10)
    with pytest.raises(InputError, match="expects a fitted model"):
        robust("fit", [1] * 12)


def test_result_conventions() -> None:
    fit = rma_mv(YI, VI, mods=np.column_stack([np.ones(12), np.arange(12.0)]),
                 random="~ 1 | district/school", data=DATA)
    for cs in (False, True):
        rob = robust(fit, DATA["district"], clubSandwich=cs)
        d = rob.to_dict()
        assert d["n"] == 5 and len(d["se"]) == 2 and d["btt"] == [2]
        text = rob.summary()
        assert "Number of clusters:    5" in text and "Test of Moderators" in text
        assert rob.to_frame().shape == (2, 8)
        ci = rob.confidence_interval(0.95)
        np.testing.assert_allclose(ci.low, rob.ci_lb)
