"""Issue 12 phase 2: each estimator carries its null and its pooling scale."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsynth import vocabulary as voc
from fedsynth.errors import InputError
from fedsynth.meta import meta_analysis
from fedsynth.meta.heterogeneity import ClinicalWidth, assess_heterogeneity


@pytest.mark.parametrize("estimator, null, scale, estimand", [
    ("auc", 0.5, "logit", "c-statistic"),
    ("calibration_slope", 1.0, "identity", "calibration slope"),
    ("calibration_in_the_large", 0.0, "identity", "calibration-in-the-large"),
    ("oe_ratio", 1.0, "log", "O:E"),
    ("brier", None, "identity", "Brier score"),
    ("logistic", 1.0, "log", "OR"),
    ("cox", 1.0, "log", "HR"),
    ("linear", 0.0, "identity", "MD"),
])
def test_every_estimator_has_its_null_and_scale(estimator, null, scale, estimand):
    info = voc.ESTIMATOR_INFO[estimator]
    assert (info.null_value, info.scale, info.estimand) == (null, scale, estimand)
    s = voc.analysis_scale(estimator)
    assert (s.null_value, s.scale, s.estimand) == (null, scale, estimand)
    # the null on the pooling scale: 0 for OR/HR (log), O:E (log) and the c-statistic
    # (logit); 1 for the calibration slope; none for the Brier score
    expected = {"calibration_slope": 1.0, "brier": None}.get(estimator, 0.0)
    assert s.null_on_scale == expected


def test_performance_estimators():
    assert voc.PERFORMANCE_ESTIMATORS == ("auc", "calibration_slope",
                                          "calibration_in_the_large", "oe_ratio", "brier")


@pytest.mark.parametrize("measure, null, scale", [
    ("OR", 1.0, "log"), ("RR", 1.0, "log"), ("RD", 0.0, "identity"),
    ("MD", 0.0, "identity"), ("SMD", 0.0, "identity"), ("ROM", 1.0, "log")])
def test_effect_measures_by_measure(measure, null, scale):
    est = "two_by_two" if measure in ("OR", "RR", "RD") else "two_group"
    s = voc.analysis_scale(est, measure)
    assert (s.null_value, s.scale, s.estimand, s.null_on_scale) == (null, scale, measure, 0.0)
    # published data without an estimator: read by the measure
    assert voc.analysis_scale(None, measure).scale == scale


def test_auc_is_pooled_on_logit_whatever_the_sites_send():
    raw = voc.analysis_scale("auc", site_scale="raw")
    logit = voc.analysis_scale("auc", site_scale="logit")
    assert raw.scale == logit.scale == "logit"
    assert (raw.site_scale, logit.site_scale) == ("identity", "logit")


@given(st.floats(min_value=-30, max_value=30), st.sampled_from(voc.SCALES))
def test_scales_round_trip(x, scale):
    back = voc.to_scale(voc.from_scale(x, scale), scale)
    if scale == "logit" and abs(x) > 12:      # expit loses digits near 0 and 1
        return
    assert back == pytest.approx(x, rel=1e-6, abs=1e-9)


def _pooled(yi, vi, **kw):
    return meta_analysis(yi, vi, labels=[f"s{i}" for i in range(len(yi))], **kw)


def test_brier_has_no_null_rule():
    res = _pooled([0.10, 0.12, 0.11, 0.13], [1e-4, 1e-4, 1e-4, 1e-4])
    flag = assess_heterogeneity(res, null_value=None)
    assert flag.null_value is None and not flag.pi_crosses_null
    assert "pi_crosses_null" not in flag.rules
    assert flag.to_dict()["null_value"] is None


def test_clinical_width_rule_fires_and_names_itself():
    # logit c-statistics of 5 big sites: a tight CI, a PI wider than ±0.05 on the c scale
    c = [0.70, 0.78, 0.74, 0.66, 0.80]
    y = [math.log(x / (1 - x)) for x in c]
    res = _pooled(y, [0.002] * 5, test="knha")
    flag = assess_heterogeneity(res, null_value=0.0, scale="logit",
                                clinical=ClinicalWidth(halfwidth=0.05),
                                estimand="c-statistic")
    assert flag.flagged and "pi_width" in flag.rules and flag.pi_beyond_width
    text = " ".join(flag.reasons)
    assert "(rule pi_width)" in text and "±0.05" in text and "c-statistic" in text
    # the reasons are numbers first and back-transformed: the PI reads as c-statistics
    lo, hi = (voc.from_scale(v, "logit") for v in (res.pi_lb, res.pi_ub))
    assert f"{lo:.3f} to {hi:.3f}" in text          # c-statistics to 3 decimals


def test_clinical_width_overrules_i2_for_trivial_tau():
    # huge sites: I² near 100% for a spread of c-statistics of 0.002 (clinically trivial)
    c = [0.750, 0.752, 0.748, 0.751, 0.749, 0.750]
    y = [math.log(x / (1 - x)) for x in c]
    res = _pooled(y, [1e-7] * 6)
    assert res.I2 > 90
    plain = assess_heterogeneity(res, null_value=0.0, scale="logit")
    assert plain.flagged and plain.rules == ("i2",)
    clinical = assess_heterogeneity(res, null_value=0.0, scale="logit",
                                    clinical=ClinicalWidth(halfwidth=0.05))
    assert not clinical.flagged and clinical.rules == ()
    assert "clinically meaningful width (±0.05)" in clinical.summary()


def test_clinical_range_rule_for_oe():
    oe = [0.7, 1.1, 0.9, 1.3, 1.0]
    res = _pooled([math.log(x) for x in oe], [0.003] * 5)
    flag = assess_heterogeneity(res, null_value=0.0, scale="log",
                                clinical=ClinicalWidth(low=0.8, high=1.25), estimand="O:E")
    assert "pi_width" in flag.rules and "0.8 to 1.25" in " ".join(flag.reasons)
    narrow = [1.0, 1.01, 0.99, 1.0, 1.005]
    res2 = _pooled([math.log(x) for x in narrow], [0.0001] * 5)
    flag2 = assess_heterogeneity(res2, null_value=0.0, scale="log",
                                 clinical=ClinicalWidth(low=0.8, high=1.25))
    assert "pi_width" not in flag2.rules


@pytest.mark.parametrize("kwargs, match", [
    ({"halfwidth": -0.1}, "halfwidth"), ({"low": 1.2, "high": 0.8}, "low"),
    ({}, "halfwidth or a low/high"), ({"halfwidth": float("nan")}, "halfwidth")])
def test_clinical_width_rejects_bad_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        ClinicalWidth(**kwargs)


def test_no_single_driver_says_why():
    # evenly spread sites: flagged by I², no site stands out on its own
    y = [0.1 + 1.6 * x for x in (-0.2, -0.1, 0, 0.1, 0.2, -0.15, 0.15, -0.05, 0.05, 0.12,
                                 -0.12, 0.02)]
    res = _pooled(y, [0.02] * 12)
    from fedsynth.meta.analysis import analyse

    flag = analyse(res.yi, res.vi, labels=res.labels, pooled=res,
                   diagnostics=False).heterogeneity
    assert flag.flagged and flag.sites == ()
    assert "spread across the sites" in flag.reasons[-1]
