"""Diagnostics beyond the R reference: definitions, invariants, knha, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedsynth.errors import InputError
from fedsynth.meta import diagnostics as D
from fedsynth.meta.metareg import fit_rma
from fedsynth.meta.subgroups import subgroup_analysis
from tests.conftest import load_json

REF = load_json("metafor_public.json")
BCG = next(c for c in REF["influence"] if c["id"] == "bcg/OR")
SEED_YI = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
SEED_VI = [s**2 for s in (0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13)]


def test_leave_one_out_rows_are_single_fits_without_the_site():
    y, v = np.array(BCG["yi"]), np.array(BCG["vi"])
    res = D.leave_one_out(y, v, labels=BCG["labels"], test="knha")
    for i in (0, 7, 12):
        keep = np.arange(13) != i
        single = fit_rma(y[keep], v[keep], test="knha")
        assert res.estimate[i] == pytest.approx(single.coef[0], rel=1e-8)
        assert res.se[i] == pytest.approx(single.se[0], rel=1e-8)
        assert res.pval[i] == pytest.approx(single.pval[0], rel=1e-8)
        assert res.ci_lb[i] == pytest.approx(single.ci_lb[0], rel=1e-8)
    assert res.to_dict()["labels"] == BCG["labels"]


def test_influence_knha_matches_the_definition():
    y, v = np.array(BCG["yi"]), np.array(BCG["vi"])
    res = D.influence(y, v, test="knha")
    i = 3
    keep = np.arange(13) != i
    dele = fit_rma(y[keep], v[keep], test="knha")
    # studentized deleted residual with the deleted model's Knapp-Hartung factor
    denom = np.sqrt(v[i] * dele.s2w + dele.vb[0, 0] + dele.tau2 * dele.s2w)
    assert res.rstudent[i] == pytest.approx((y[i] - dele.coef[0]) / denom, rel=1e-8)
    z = D.influence(y, v)
    assert not np.allclose(res.rstudent, z.rstudent)
    assert np.allclose(res.hat, z.hat) and np.allclose(res.tau2_deleted, z.tau2_deleted)


def test_influential_rule_and_outliers_on_bcg():
    res = D.influence(BCG["yi"], BCG["vi"], labels=BCG["labels"])
    k = 13
    expected = ((np.abs(res.dffits) > 3 * np.sqrt(1 / (k - 1)))
                | (stats.chi2.cdf(res.cooks_distance, 1) > 0.5)
                | (res.hat > 3 / k) | (np.abs(res.dfbetas) > 1))
    assert np.array_equal(res.influential, expected)
    assert res.outliers() == ()          # no |rstudent| > 1.96 in BCG
    assert res.weight_percent.sum() == pytest.approx(100.0)


def test_blup_without_heterogeneity_is_the_pooled_estimate():
    # FE: tau² = 0, every site is shrunk all the way to the common estimate
    fit = fit_rma(SEED_YI, SEED_VI, method="FE")
    res = D.blup(SEED_YI, SEED_VI, fit=fit)
    assert np.allclose(res.pred, fit.coef[0])
    assert np.allclose(res.se, np.sqrt(fit.vb[0, 0]))
    assert res.outlying() == ()


def test_blup_lies_between_site_and_pooled_estimate():
    res = D.blup(BCG["yi"], BCG["vi"], labels=BCG["labels"])
    y = np.array(BCG["yi"])
    lo, hi = np.minimum(y, res.estimate), np.maximum(y, res.estimate)
    assert np.all((res.pred >= lo - 1e-12) & (res.pred <= hi + 1e-12))
    assert set(res.outlying()) <= set(BCG["labels"]) and res.outlying()


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=3, max_value=12), st.integers(min_value=0, max_value=10**6))
def test_kendall_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=n), rng.normal(size=n)
    res = D.kendall_tau_test(x, y, exact=True)
    ref = stats.kendalltau(x, y, method="exact")
    assert res.tau == pytest.approx(ref.statistic, abs=1e-12)
    assert res.pval == pytest.approx(ref.pvalue, rel=1e-9)


def test_kendall_with_ties_uses_normal_approximation():
    x = [1, 2, 2, 3, 4, 5, 5, 6]
    y = [2, 1, 3, 3, 5, 4, 6, 7]
    res = D.kendall_tau_test(x, y)
    ref = stats.kendalltau(x, y, method="asymptotic")
    assert res.tau == pytest.approx(ref.statistic, abs=1e-12)
    assert res.pval == pytest.approx(ref.pvalue, rel=1e-9)


def test_trimfill_fills_the_missing_side():
    # a funnel with small studies only on the right: missing on the left
    v = np.array([0.01, 0.02, 0.04, 0.06, 0.09, 0.12, 0.16, 0.2, 0.25, 0.3])
    y = 0.1 + 1.5 * np.sqrt(v) * np.array([0.1, -0.2, 0.5, 0.8, 1.0, 1.2, 1.1, 1.4, 1.6, 1.5])
    res = D.publication_bias(y, v, method="REML")
    assert res.trimfill_side == "left" and res.trimfill_k0 > 0
    assert len(res.trimfill_filled_yi) == res.trimfill_k0
    full = fit_rma(y, v)
    assert res.trimfill_estimate < full.coef[0]       # filling pulls the estimate down
    assert res.egger_rma_stat > 0 and res.egger_lm_stat > 0
    # mirrored data: the same k0 on the other side
    mir = D.publication_bias(-y, v, method="REML")
    assert mir.trimfill_side == "right" and mir.trimfill_k0 == res.trimfill_k0
    assert mir.trimfill_estimate == pytest.approx(-res.trimfill_estimate, rel=1e-6)


def test_cumulative_last_step_is_the_full_fit():
    order = [3, 1, 0, 2, 7, 6, 5, 4]
    res = D.cumulative(SEED_YI, SEED_VI, order, labels=list("abcdefgh"))
    full = fit_rma(SEED_YI, SEED_VI)
    assert res.estimate[-1] == pytest.approx(full.coef[0], rel=1e-9)
    assert res.estimate[0] == pytest.approx(SEED_YI[3], rel=1e-12)
    assert res.labels[:2] == ("d", "b") and list(res.k) == list(range(1, 9))


@pytest.mark.parametrize("call, message", [
    (lambda: D.leave_one_out([0.1], [0.1]), "at least 2"),
    (lambda: D.publication_bias([0.1, 0.2], [0.1, 0.1]), "at least 3"),
    (lambda: D.influence([0.1, 0.2], [0.1, -0.1]), r"vi\[1\]"),
    (lambda: D.cumulative([0.1, 0.2], [0.1, 0.1], [0, 0]), "order"),
    (lambda: D.blup([0.1, 0.2], [0.1, 0.1], labels=["a"]), "labels"),
    (lambda: subgroup_analysis([0.1, 0.2, 0.3], [0.1] * 3, ["a", "a", "a"]), "single level"),
    (lambda: subgroup_analysis([0.1, 0.2, 0.3], [0.1] * 3, ["a", None, "b"]), "row 1"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_subgroup_separate_fits_equal_single_fits():
    case = next(c for c in REF["subgroup"] if c["id"] == "bcg/RR")
    res = subgroup_analysis(case["yi"], case["vi"], case["group"], labels=case["labels"],
                            variable="alloc")
    y, v = np.array(case["yi"]), np.array(case["vi"])
    for g in res.groups:
        sel = np.array([x == g.group for x in case["group"]])
        single = fit_rma(y[sel], v[sel])
        assert g.estimate == pytest.approx(single.coef[0], rel=1e-8)
        assert len(g.sites) == g.k == sel.sum()
    assert res.to_dict()["variable"] == "alloc"


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=10**6),
       st.sampled_from(["REML", "ML", "DL", "FE", "PM", "EB", "HE", "HS", "SJ"]),
       st.sampled_from(["z", "knha"]))
def test_analyse_is_total_and_strict_json(k, seed, method, test):
    # any valid input gives a result whose JSON has no NaN/Infinity (the CLI prints
    # strict JSON) and a well-formed flag
    import json

    from fedsynth.meta.analysis import analyse

    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, rng.uniform(0.01, 1.0), size=k)
    v = rng.uniform(0.001, 0.5, size=k)
    groups = ["a", "b"] * k
    mods = {"x": rng.normal(size=k).tolist()} if k >= 3 else None
    res = analyse(y, v, labels=[f"s{i}" for i in range(k)], method=method, test=test,
                  subgroup=groups[:k] if k >= 3 else None, moderators=mods,
                  cumulative_order=list(range(k))[::-1])
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    flag = d["heterogeneity"]
    assert flag["level"] in (None, "moderate", "strong")
    assert (flag["level"] is None) == (not flag["flagged"])
    assert set(flag["sites"]) <= {f"s{i}" for i in range(k)}
    assert bool(flag["reasons"]) == flag["flagged"]


def test_saturated_meta_regression_is_strict_json():
    # k == p: no residual df, Knapp-Hartung undefined -> null in JSON, never NaN (FE only:
    # metafor refuses a random-effects model with k - p < 1, tests/unit/test_cli_defects.py)
    import json

    from fedsynth.meta.analysis import analyse

    res = analyse([0.1, 0.5], [0.01, 0.02], labels=["a", "b"], moderators={"x": [1, 2]},
                  method="FE")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["meta_regression"]["knha_se"] == [None, None]
    assert d["meta_regression"]["QE_df"] == 0


def test_cumulative_knha_steps_are_single_knha_fits():
    order = [3, 1, 0, 2, 7, 6, 5, 4]
    res = D.cumulative(SEED_YI, SEED_VI, order, test="knha")
    y, v = np.array(SEED_YI)[order], np.array(SEED_VI)[order]
    for j in (2, 5, 7):
        single = fit_rma(y[: j + 1], v[: j + 1], test="knha")
        assert res.se[j] == pytest.approx(single.se[0], rel=1e-8)
        assert res.ci_lb[j] == pytest.approx(single.ci_lb[0], rel=1e-8)
    assert np.isnan(res.ci_lb[0])


def test_subgroup_common_tau2_knapp_hartung_is_the_meta_regression_F():
    from fedsynth.meta.metareg import meta_regression

    case = next(c for c in REF["subgroup"] if c["id"] == "bcg/OR")
    res = subgroup_analysis(case["yi"], case["vi"], case["group"])
    mr = meta_regression(case["yi"], case["vi"], {"g": case["group"]}, test="knha")
    assert res.common_tau2_knha_F == pytest.approx(mr.knha_F, rel=1e-12)
    assert 0 < res.common_tau2_knha_Fp < 1


def test_trimfill_that_does_not_settle_is_an_error_not_a_wrong_answer():
    from fedsynth.errors import FedsynthError

    v = np.array([0.01, 0.02, 0.04, 0.06, 0.09, 0.12, 0.16, 0.2, 0.25, 0.3])
    y = 0.1 + 1.5 * np.sqrt(v) * np.array([0.1, -0.2, 0.5, 0.8, 1.0, 1.2, 1.1, 1.4, 1.6, 1.5])
    with pytest.raises(FedsynthError, match="did not settle within 1 iterations"):
        D._trimfill(y, v, "REML", maxiter=1)


def test_kendall_large_n_uses_the_normal_approximation():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=400), rng.normal(size=400)
    res = D.kendall_tau_test(x, y, exact=True)
    ref = stats.kendalltau(x, y, method="asymptotic")
    assert res.pval == pytest.approx(ref.pvalue, rel=1e-9)
