"""fedsynth.meta.valmeta: metamisc's formulas by hand, order of preference, edge cases,
errors and properties (the R comparison is tests/reference/test_valmeta_reference.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedsynth.errors import InputError
from fedsynth.meta import meta_analysis
from fedsynth.meta.valmeta import (
    OE_SOURCES,
    PerformanceData,
    ValmetaResult,
    _make_unique,
    ccalc,
    oecalc,
    valmeta,
)

Z975 = stats.norm.ppf(0.975)


def logit(p):
    return math.log(p / (1 - p))


def expit(x):
    return 1 / (1 + math.exp(-x))


def hanley(c, n_total, events, method=4):
    n, m = events, n_total - events
    mstar, nstar = (n_total / 2 - 1, n_total / 2 - 1) if method == 4 else (m - 1, n - 1)
    return c * (1 - c) * (1 + nstar * (1 - c) / (2 - c) + mstar * c / (1 + c)) / (m * n)


# --- ccalc ---------------------------------------------------------------------------------

def test_ccalc_standard_error_by_the_delta_method():
    d = ccalc(cstat=[0.8], cstat_se=[0.02], g="logit")
    s = d[0]
    assert s.theta == pytest.approx(logit(0.8), rel=1e-12)
    assert s.theta_se == pytest.approx(0.02 / (0.8 * 0.2), rel=1e-12)
    assert (s.theta_source, s.theta_se_source, s.used) == ("c-statistic", "Standard Error", True)
    # identity scale (metamisc's default g = NULL) keeps the c-statistic and its SE
    s = ccalc(cstat=[0.8], cstat_se=[0.02])[0]
    assert (s.theta, s.theta_se) == (0.8, pytest.approx(0.02))


def test_ccalc_confidence_interval_on_the_logit_scale_and_its_level():
    s = ccalc(cstat=[0.8], cstat_cilb=[0.7], cstat_ciub=[0.88], g="logit")[0]
    assert s.theta_se == pytest.approx((logit(0.88) - logit(0.7)) / (2 * Z975), rel=1e-12)
    assert s.theta_se_source == "Confidence Interval"
    # reported at the requested level: the per-study CI is the reported one, transformed
    assert (s.theta_cilb, s.theta_ciub) == (pytest.approx(logit(0.7)),
                                            pytest.approx(logit(0.88)))
    z90 = stats.norm.ppf(0.95)
    s = ccalc(cstat=[0.8], cstat_cilb=[0.7], cstat_ciub=[0.88], cstat_cilv=[0.9], g="logit")[0]
    assert s.theta_se == pytest.approx((logit(0.88) - logit(0.7)) / (2 * z90), rel=1e-12)
    # another level: theta +- z se at the requested one
    assert s.theta_cilb == pytest.approx(logit(0.8) - Z975 * s.theta_se, rel=1e-12)


@pytest.mark.parametrize("method", [4, 2])
def test_ccalc_hanley_mcneil_newcombe(method):
    s = ccalc(cstat=[0.75], N=[200], O=[40], g="logit", approx_se_method=method)[0]
    var = hanley(0.75, 200, 40, method)
    assert s.theta_se == pytest.approx(math.sqrt(var) / (0.75 * 0.25), rel=1e-12)
    assert s.theta_se_source == f"Newcombe (Method {method})"


def test_ccalc_restores_events_and_patients_from_po():
    via_po = ccalc(cstat=[0.75, 0.75], N=[200, None], O=[None, 40], Po=[0.2, 0.2], g="logit")
    direct = ccalc(cstat=[0.75], N=[200], O=[40], g="logit")[0]
    assert via_po[0].theta_se == pytest.approx(direct.theta_se, rel=1e-12)   # O = Po N
    assert via_po[1].theta_se == pytest.approx(direct.theta_se, rel=1e-12)   # N = O / Po


def test_ccalc_order_of_preference_se_then_ci_then_hanley():
    d = ccalc(cstat=[0.8, 0.8, 0.8], cstat_se=[0.02, None, None],
              cstat_cilb=[0.7, 0.7, None], cstat_ciub=[0.88, 0.88, None], N=[500] * 3,
              O=[50] * 3, g="logit")
    assert [s.theta_se_source for s in d] == ["Standard Error", "Confidence Interval",
                                              "Newcombe (Method 4)"]


def test_ccalc_sd_lp_only_where_the_c_statistic_is_missing():
    d = ccalc(cstat=[None, 0.7], sd_LP=[0.0, 1.0], cstat_se=[None, 0.02], N=[400, 400],
              O=[40, 40], g="logit")
    assert d[0].theta == pytest.approx(0.0, abs=1e-12)     # sd(LP) = 0: c = 0.5
    assert d[0].theta_source == "std.dev(LP)"
    assert d[0].theta_se_source == "Newcombe (Method 4)"
    assert d[0].theta_se == pytest.approx(math.sqrt(hanley(0.5, 400, 40)) / 0.25, rel=1e-10)
    assert d[1].theta_source == "c-statistic"


def test_ccalc_rows_that_cannot_be_used_say_why():
    d = ccalc(cstat=[0.7, None, 1.0, 0.8], cstat_se=[None, None, 0.01, 0.0], g="logit",
              slab=["a", "b", "c", "d"])
    assert list(d.used) == [False, False, False, False]
    assert d[0].theta == pytest.approx(logit(0.7)) and math.isnan(d[0].theta_se)
    assert d[0].theta_se_source is None and "without a standard error" in d[0].note
    assert d[1].theta_source is None and "no c-statistic" in d[1].note
    assert "no finite value on the logit scale" in d[2].note
    assert "cannot be weighed" in d[3].note
    assert d.notes[0].startswith("row 1 (study 'a'): ")


# --- oecalc --------------------------------------------------------------------------------

def _one(**kw):
    return oecalc(g="log(OE)", **kw)[0]


@pytest.mark.parametrize("kw, source, oe, var", [
    ({"OE": 1.2, "OE_se": 0.1}, "OE and SE(OE)", 1.2, 0.01),
    ({"OE": 1.2, "OE_cilb": 0.9, "OE_ciub": 1.5}, "OE and CI(OE)", 1.2,
     ((1.5 - 0.9) / (2 * Z975)) ** 2),
    ({"O": 30, "E": 25, "N": 600}, "O, E and N", 30 / 25, 30 * (1 - 30 / 600) / 25 ** 2),
    ({"O": 30, "Pe": 0.04, "N": 600}, "O, Pe and N", 30 / 24, 30 * (1 - 30 / 600) / 24 ** 2),
    ({"E": 25, "Po": 0.05, "N": 600}, "E, Po and N", 30 / 25, 30 * (1 - 0.05) / 25 ** 2),
    ({"Po": 0.05, "Pe": 0.04, "N": 600}, "Po, Pe and N", 1.25, 30 * 0.95 / 24 ** 2),
    ({"EO": 0.8, "EO_se": 0.1}, "EO and SE(EO)", 1.25, 0.01 / 0.8 ** 4),
    ({"O": 30, "E": 25, "Po": 0.05}, "O, E and Po", 1.2, 30 * 0.95 / 25 ** 2),
    ({"O": 30, "E": 25, "Pe": 25 / 600}, "O, E and Pe", 1.2, 30 * (1 - 30 / 600) / 25 ** 2),
    ({"O": 30, "E": 25}, "O and E", 1.2, 30 / 25 ** 2),
    ({"Po": 0.05, "Pe": 0.04, "Po_se": 0.01}, "Po, Pe and SE(Po)", 1.25, 0.01 ** 2 / 0.04 ** 2),
])
def test_oecalc_every_combination_by_hand(kw, source, oe, var):
    s = _one(**{k: [v] for k, v in kw.items()})
    assert s.theta == pytest.approx(math.log(oe), rel=1e-12, abs=1e-14)
    assert s.theta_se == pytest.approx(math.sqrt(var) / oe, rel=1e-12)   # delta method
    assert s.theta_source == s.theta_se_source == source and s.used


def test_oecalc_log_se_closed_forms():
    """metamisc's own checks: SE(log O:E) = sqrt(1/O - 1/N) with N, sqrt(1/O) without."""
    o, e, n = np.array([232., 28, 41]), np.array([222., 46, 34]), np.array([5553., 1027, 1090])
    with_n = oecalc(O=o, E=e, N=n, g="log(OE)")
    np.testing.assert_allclose(with_n.theta_se, np.sqrt(1 / o - 1 / n), rtol=1e-12)
    without = oecalc(O=o, E=e, g="log(OE)")
    np.testing.assert_allclose(without.theta_se, np.sqrt(1 / o), rtol=1e-12)


#: The inputs each O:E combination needs, in OE_SOURCES order (the last never has an SE).
OE_INPUTS = [{"OE": 1.5, "OE_se": 0.2}, {"OE": 1.5, "OE_cilb": 1.0, "OE_ciub": 2.0},
             {"O": 30, "E": 25, "N": 600}, {"O": 30, "Pe": 0.04, "N": 600},
             {"E": 25, "Po": 0.05, "N": 600}, {"Po": 0.05, "Pe": 0.04, "N": 600},
             {"EO": 0.8, "EO_se": 0.1}, {"O": 30, "E": 25, "Po": 0.05},
             {"O": 30, "E": 25, "Pe": 0.04}, {"O": 30, "E": 25},
             {"Po": 0.05, "Pe": 0.04, "Po_se": 0.01}]


@pytest.mark.parametrize("i", range(len(OE_INPUTS)))
@pytest.mark.parametrize("j", range(len(OE_INPUTS)))
def test_oecalc_order_of_preference(i, j):
    """Given the inputs of two combinations, the first combination (in metamisc's order)
    whose inputs are all present wins."""
    given_ = {**OE_INPUTS[i], **OE_INPUTS[j]}
    expected = next(m for m, need in enumerate(OE_INPUTS) if set(need) <= set(given_))
    assert expected <= min(i, j)
    s = _one(**{k: [v] for k, v in given_.items()})
    assert s.theta_se_source == OE_SOURCES[expected]


def test_oecalc_estimate_without_variance_is_kept_but_not_used():
    """metamisc keeps the first estimate it has (Po/Pe) and names the first column that
    gives one, even though its SE is missing."""
    s = _one(Po=[0.08], Pe=[0.09])
    assert s.theta == pytest.approx(math.log(0.08 / 0.09))
    assert s.theta_source == "Po, Pe and SE(Po)" and s.theta_se_source is None
    assert not s.used and "from Po and Pe" in s.note


def test_oecalc_continuity_correction_only_when_e_is_zero():
    s = _one(O=[3], E=[0], N=[150])
    assert s.theta == pytest.approx(math.log(3.5 / 0.5))
    assert s.theta_se == pytest.approx(math.sqrt(3.5 * (1 - 3.5 / 150.5) / 0.25) / 7)
    assert s.corrected and s.used
    zero_o = _one(O=[0], E=[12], N=[900])
    assert zero_o.theta == -math.inf and not zero_o.used
    assert "O = 0" in zero_o.note
    no_add = oecalc(O=[3], E=[0], N=[150], g="log", add=0.0)[0]
    assert not no_add.corrected and not no_add.used


def test_oecalc_restores_o_e_n():
    s = oecalc(Po=[0.05], Pe=[0.04], N=[600])[0]
    assert (s.O, s.E, s.N) == (pytest.approx(30), pytest.approx(24), 600)
    s = oecalc(O=[30], Po=[0.05], E=[25])[0]
    assert s.N == pytest.approx(600)


# --- valmeta -------------------------------------------------------------------------------

C = [0.81, 0.87, 0.81, 0.79, 0.81, 0.85, 0.72, 0.82]
SE = [0.014, 0.035, 0.036, 0.01, 0.008, 0.01, 0.051, 0.007]


def test_valmeta_pools_the_logit_with_the_engine_and_t_k_minus_2():
    res = valmeta(cstat=C, cstat_se=SE)
    y = np.log(np.array(C) / (1 - np.array(C)))
    v = (np.array(SE) / (np.array(C) * (1 - np.array(C)))) ** 2
    fit = meta_analysis(y, v, method="REML", test="knha")
    assert res.mu == pytest.approx(fit.estimate, rel=1e-12)
    assert res.estimate == pytest.approx(expit(fit.estimate), rel=1e-12)
    assert (res.ci_lb, res.ci_ub) == (pytest.approx(expit(fit.ci_lb)),
                                      pytest.approx(expit(fit.ci_ub)))
    crit = stats.t.ppf(0.975, len(C) - 2)
    half = crit * math.sqrt(fit.tau2 + fit.se ** 2)
    assert res.pi_lb == pytest.approx(expit(fit.estimate - half), rel=1e-10)
    assert res.pi_ub == pytest.approx(expit(fit.estimate + half), rel=1e-10)
    assert res.pval == pytest.approx(2 * stats.t.sf(abs(fit.estimate / fit.se), len(C) - 1))
    assert (res.method, res.test, res.model, res.scale, res.k) == (
        "REML", "knha", "normal/logit", "logit", 8)
    assert res.null_value == 0.5 and res.pi == (res.pi_lb, res.pi_ub)


def test_valmeta_fixed_effect_uses_z_and_has_no_prediction_interval():
    res = valmeta(cstat=C, cstat_se=SE, method="FE", test="knha")
    assert res.test == "z" and res.pi is None and math.isnan(res.pi_lb)
    assert any("fixed-effect" in n for n in res.notes)
    assert res.to_dict()["pi_lb"] is None


def test_valmeta_small_k():
    two = valmeta(cstat=C[:2], cstat_se=SE[:2])
    assert two.k == 2 and two.pi is None and any("k = 2" in n for n in two.notes)
    one = valmeta(cstat=[0.8, 0.7], cstat_se=[0.02, None])
    assert one.k == 1 and one.estimate == pytest.approx(0.8) and one.test == "z"
    assert one.ci_lb == pytest.approx(expit(logit(0.8) - Z975 * 0.02 / 0.16))
    with pytest.raises(InputError, match="nothing to pool.*row 1 \\(study '1'\\)"):
        valmeta(cstat=[0.8, 0.7])


def test_valmeta_identity_model_and_oe_measure():
    ident = valmeta(cstat=C, cstat_se=SE, model="normal/identity")
    assert ident.scale == "identity" and ident.estimate == ident.mu
    fit = meta_analysis(C, np.square(SE), test="knha")
    assert ident.estimate == pytest.approx(fit.estimate, rel=1e-12)
    oe = valmeta("oe", O=[232, 28, 41, 191], E=[222, 46, 34, 261], N=[5553, 1027, 1090, 5576])
    assert oe.measure == "OE" and oe.scale == "log" and oe.null_value == 1.0
    assert oe.estimate == pytest.approx(math.exp(oe.mu))


def test_valmeta_result_fields_and_json():
    res = valmeta(cstat=C + [0.7], cstat_se=SE + [None], slab=list("abcdefghi"))
    assert dataclasses.is_dataclass(res) and isinstance(res.data, PerformanceData)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.k = 3  # type: ignore[misc]
    doc = res.to_dict()
    assert list(doc)[:8] == ["estimate", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "k", "tau2",
                             "studies"]
    assert doc["studies"][-1] == {"theta": None, "theta_se": None, "theta_se_source": None}
    assert doc["studies"][0]["theta_se_source"] == "Standard Error"
    assert doc["labels"][-1] == "i" and "row 9 (study 'i')" in doc["notes"][0]
    assert res.theta.shape == (9,) and res.theta_se_source[-1] is None
    text = res.summary()
    assert "left out" in text and "Notes:" in text and str(res) == text


@pytest.mark.parametrize("kwargs, message", [
    ({"measure": "brier"}, "measure: 'brier' is not one of cstat, OE"),
    ({"model": "normal/log"}, "model: 'normal/log' is not available for measure 'cstat'"),
    ({"method": "BAYES"}, "method: 'BAYES'"),
    ({"E": [1] * 8}, "E: is an input of measure OE, not of 'cstat'"),
    ({"level": 1.0}, "level"),
    ({"approx_se_method": 3}, "approx_se_method: 3 is not 2 or 4"),
])
def test_valmeta_bad_options(kwargs, message):
    base = {"cstat": C, "cstat_se": SE}
    with pytest.raises(InputError, match=message.replace("(", "\\(").replace(")", "\\)")):
        valmeta(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"cstat": [0.8, 1.2]}, "cstat: row 2 (study 'b') has value 1.2, which must lie between"),
    ({"cstat_se": [0.01, -0.02]}, "cstat_se: row 2 (study 'b') has value -0.02"),
    ({"cstat_cilb": [0.9, None], "cstat_ciub": [0.7, None]},
     "cstat_cilb, cstat_ciub: row 1 (study 'a') has lower bound 0.9 above upper bound 0.7"),
    ({"cstat_cilb": [0.7, None], "cstat_ciub": [0.9, None], "cstat_cilv": [None, 0.95]},
     "cstat_cilv: row 1 (study 'a') has a confidence interval but no level"),
    ({"cstat_cilv": 95}, "cstat_cilv: row 1 (study 'a') has value 95.0"),
    ({"N": [100, 100], "O": [10, 120]}, "O, N: row 2 (study 'b') has 120.0 events among"),
    ({"N": [100, 0]}, "N: row 2 (study 'b') has value 0.0"),
    ({"cstat": [0.8, "high"]}, "cstat: row 2 (study 'b') has value 'high', which is not a"),
    ({"cstat": [0.8, True]}, "cstat: row 2 (study 'b') has value True, which is a truth "
                             "value"),
    ({"cstat": [[0.8, 0.7]]}, "cstat: expected one value per study (1-D), got 2 dimensions"),
    ({"cstat_se": [0.1, 0.1, 0.1]}, "cstat_se: 3 values, but cstat has 2"),
    ({"cstat": "c.index"}, "cstat: 'c.index' names a column, but no data was given"),
])
def test_valmeta_bad_values_name_field_row_study_value(kwargs, message):
    base = {"cstat": [0.8, 0.7], "cstat_se": [0.02, 0.03], "slab": ["a", "b"]}
    with pytest.raises(InputError) as info:
        valmeta("cstat", **{**base, **kwargs})
    assert message in str(info.value)
    assert "np.float64" not in str(info.value)


def test_field_names_name_the_column_in_messages():
    with pytest.raises(InputError, match="column 'c' \\(--cstat\\): row 2"):
        valmeta(cstat=[0.8, 2.0], cstat_se=[0.1, 0.1], field_names={"cstat": "column 'c' "
                                                                            "(--cstat)"})


def test_oe_bad_values():
    with pytest.raises(InputError, match="E, N: row 1 \\(study '1'\\) expects 700.0 events"):
        valmeta("OE", O=[30], E=[700], N=[600])
    with pytest.raises(InputError, match="Pe: row 1 .* must be a probability"):
        valmeta("OE", O=[30], Pe=[1.5], N=[600])
    with pytest.raises(InputError, match="OE: row 1 .* must be a ratio >= 0"):
        valmeta("OE", OE=[-1.0], OE_se=[0.1])


def test_data_and_column_names_like_metamisc():
    data = {"auc": C, "se": SE, "who": list("abcdefgh")}
    by_name = valmeta(cstat="auc", cstat_se="se", slab="who", data=data)
    direct = valmeta(cstat=C, cstat_se=SE)
    assert by_name.estimate == direct.estimate and by_name.data.labels[0] == "a"
    with pytest.raises(InputError, match="cstat: column 'nope' not found"):
        valmeta(cstat="nope", data=data)


def test_labels_are_made_unique_as_r_does():
    assert _make_unique(["a", "a", "a.1", "a", "b"]) == ["a", "a.2", "a.1", "a.3", "b"]
    res = valmeta(cstat=C[:3], cstat_se=SE[:3], slab=["x", "x", "y"])
    assert res.data.labels == ("x", "x.1", "y")


# --- properties ----------------------------------------------------------------------------

cstats = st.floats(0.55, 0.95)
ses = st.floats(0.005, 0.08)


@settings(max_examples=60, deadline=None)
@given(c=cstats, se=st.floats(0.01, 0.5), level=st.sampled_from([0.9, 0.95, 0.99]))
def test_se_from_a_symmetric_logit_ci_round_trips(c, se, level):
    z = stats.norm.ppf((1 + level) / 2)
    lb, ub = expit(logit(c) - z * se), expit(logit(c) + z * se)
    s = ccalc(cstat=[c], cstat_cilb=[lb], cstat_ciub=[ub], cstat_cilv=[level], g="logit")[0]
    assert s.theta_se == pytest.approx(se, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(cstats, ses), min_size=3, max_size=12),
       method=st.sampled_from(["REML", "DL", "PM", "ML"]), test=st.sampled_from(["knha", "z"]))
def test_intervals_nest_and_back_transform(data, method, test):
    c, se = map(list, zip(*data))
    res = valmeta(cstat=c, cstat_se=se, method=method, test=test)
    assert res.ci_lb <= res.estimate <= res.ci_ub
    assert res.pi_lb <= res.ci_lb + 1e-12 and res.ci_ub <= res.pi_ub + 1e-12
    assert res.estimate == pytest.approx(expit(res.mu), rel=1e-12)
    assert 0 < res.pi_lb <= res.pi_ub < 1 and res.tau2 >= 0


@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.tuples(cstats, ses), min_size=3, max_size=10), seed=st.integers(0, 99))
def test_pooled_result_does_not_depend_on_study_order(data, seed):
    c, se = map(np.array, zip(*data))
    perm = np.random.default_rng(seed).permutation(len(c))
    a = valmeta(cstat=c, cstat_se=se)
    b = valmeta(cstat=c[perm], cstat_se=se[perm])
    assert b.estimate == pytest.approx(a.estimate, rel=1e-9)
    assert b.tau2 == pytest.approx(a.tau2, rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(b.theta, a.theta[perm])


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 500), extra=st.integers(1, 5000), share=st.floats(0.001, 1.0))
def test_log_oe_variance_is_one_over_o_minus_one_over_n(o, extra, share):
    n = o + extra
    s = oecalc(O=[o], E=[share * n], N=[n], g="log")[0]
    assert s.theta_se ** 2 == pytest.approx(1 / o - 1 / n, rel=1e-10)


def test_result_types_are_frozen_dataclasses():
    for cls in (ValmetaResult, PerformanceData):
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_oe_notes_say_what_a_left_out_study_has():
    d = oecalc(N=[100, None, 200], O=[10, None, 20], E=[None, None, 18], g="log",
               slab=["a", "b", "c"])
    assert d[0].note == ("N, O alone give no O:E estimate (it needs OE, EO, or O or Po "
                         "together with E or Pe)")
    assert d[1].note == "no O:E inputs (every cell empty)"
    assert d[2].used and d.notes == (f"row 1 (study 'a'): {d[0].note}; left out",
                                     f"row 2 (study 'b'): {d[1].note}; left out")


def test_performance_data_as_a_frame_with_metamiscs_columns():
    frame = oecalc(O=[30, None], E=[25, 10], N=[600, 100], g="log", slab=["a", "b"]).to_frame()
    assert list(frame.columns) == ["theta", "theta.se", "theta.cilb", "theta.ciub",
                                   "theta.source", "theta.se.source", "used", "O", "E", "N"]
    assert list(frame.index) == ["a", "b"] and frame.loc["a", "theta.source"] == "O, E and N"
    assert frame.loc["a", "theta"] == pytest.approx(math.log(1.2))
    assert not frame.loc["b", "used"] and math.isnan(frame.loc["b", "O"])
    assert "O" not in ccalc(cstat=[0.8], cstat_se=[0.01]).to_frame().columns
