"""Every result follows one convention (scipy.stats / statsmodels style).

For each result type of the library: ``summary()`` (text), ``to_dict()`` (strict JSON),
``to_frame()`` (a DataFrame), ``_repr_html_()`` (notebooks); intervals are one type
(:class:`fedsynth.results.Interval`, named ``low``/``high``, level as a fraction);
``confidence_interval()`` returns a confidence interval and nothing else, prediction and
credible intervals have their own methods; fitted models plot themselves and
``forest_plot`` accepts every result type.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta import diagnostics, heterogeneity
from fedsynth.meta.analysis import analyse
from fedsynth.meta.bayes import bayes_pool
from fedsynth.meta.diagnostics import kendall_tau_test
from fedsynth.results import Interval, ResultMixin


@pytest.fixture(scope="module")
def dat() -> pd.DataFrame:
    return fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                           ci="cpos", di="cneg")


def _results(dat: pd.DataFrame) -> dict[str, object]:
    y, v, labels = dat["yi"].to_numpy(), dat["vi"].to_numpy(), list(dat["author"])
    pooled = fedsynth.meta_analysis(dat, label="author")
    batch = fedsynth.meta_analysis(dat, by="alloc", label="author")
    return {
        "pooled": pooled,
        "batch": batch,
        "batch item": batch["random"],
        "meta-regression": fedsynth.meta_regression(dat, mods=["ablat"], label="author"),
        "subgroups": fedsynth.subgroups(dat, group="alloc", label="author"),
        "subgroup fit": fedsynth.subgroups(dat, group="alloc").groups[0],
        "leave-one-out": diagnostics.leave_one_out(y, v, labels=labels),
        "influence": diagnostics.influence(y, v, labels=labels),
        "blup": pooled.blup(),
        "publication bias": pooled.publication_bias(),
        "cumulative": diagnostics.cumulative(y, v, labels=labels),
        "kendall": kendall_tau_test(y, v),
        "flag": pooled.heterogeneity(),
        "batch flags": heterogeneity.assess_heterogeneity_batch(batch),
        "analysis": analyse(y, v, labels=labels, diagnostics=True, subgroup=dat["alloc"],
                            moderators={"ablat": dat["ablat"]}),
        "bayes": fedsynth.bayes_meta_analysis(dat, label="author", scale=0.5),
        "bayes batch": fedsynth.bayes_meta_analysis(dat, by="alloc", scale=0.5),
    }


@pytest.fixture(scope="module")
def results(dat) -> dict[str, object]:
    return _results(dat)


NAMES = list(_results(fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos",
                                      bi="tneg", ci="cpos", di="cneg")))


@pytest.mark.parametrize("name", NAMES)
def test_every_result_has_summary_to_dict_to_frame_and_html(results, name):
    res = results[name]
    assert isinstance(res, ResultMixin)
    assert dataclasses.is_dataclass(res)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(res, dataclasses.fields(res)[0].name, None)
    text = res.summary()
    assert isinstance(text, str) and text.strip()
    assert str(res) == text
    json.dumps(res.to_dict(), allow_nan=False)           # strict JSON
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) >= 1
    html = res._repr_html_()
    assert html.startswith("<") and len(html) > 20


@pytest.mark.parametrize("name", NAMES)
def test_confidence_interval_is_a_confidence_interval_only(results, name):
    res = results[name]
    method = getattr(res, "confidence_interval", None)
    if name.startswith("bayes"):
        assert method is None        # a posterior has credible intervals, by that name
        cri = res.credible_interval()
        assert isinstance(cri, Interval) and cri.kind == "credible" and cri.level == 0.95
        assert res.prediction_interval().kind == "prediction"
        return
    if method is None:
        return
    ci = method()
    assert isinstance(ci, Interval)
    assert ci.kind == "confidence" and ci.level == 0.95
    assert np.all(np.asarray(ci.low) <= np.asarray(ci.high))
    narrower = method(confidence_level=0.9)
    assert narrower.level == 0.9
    finite = np.isfinite(np.asarray(ci.low, dtype=float))
    assert np.all(np.asarray(narrower.low)[finite] >= np.asarray(ci.low)[finite])
    assert method(confidence_level=90) == narrower          # a percentage is accepted


def test_at_the_fit_level_the_interval_is_the_fit_s_own(results):
    pooled = results["pooled"]
    assert pooled.confidence_interval() == Interval(pooled.ci_lb, pooled.ci_ub, level=0.95)
    assert pooled.prediction_interval() == Interval(pooled.pi_lb, pooled.pi_ub, level=0.95,
                                                    kind="prediction")
    blup = results["blup"]
    pi = blup.prediction_interval()
    assert pi.kind == "prediction" and np.array_equal(pi.low, blup.pi_lb)
    assert not hasattr(blup, "confidence_interval")
    flag = results["flag"]
    assert flag.i2_confidence_interval().low == flag.I2_ci_lb
    assert pooled.tau2_ci.level == 0.95 and pooled.tau2_ci.kind == "confidence"


def test_intervals_are_named_and_compared_by_value():
    ci = Interval(0.1, 0.3, level=0.95)
    assert (ci.low, ci.high) == (0.1, 0.3)
    low, high = ci                     # unpacking works; reading by name is the convention
    assert (low, high) == (0.1, 0.3)
    assert ci == Interval(0.1, 0.3, level=0.95)
    assert ci != Interval(0.1, 0.3, level=0.9)
    assert Interval(np.array([1.0, np.nan]), np.array([2.0, np.nan])) == Interval(
        np.array([1.0, np.nan]), np.array([2.0, np.nan]))
    assert ci.width == pytest.approx(0.2) and ci.contains(0.2)
    assert ci.to_dict() == {"low": 0.1, "high": 0.3, "level": 0.95, "kind": "confidence"}
    assert Interval(float("nan"), 1.0).to_list() == [None, 1.0]
    with pytest.raises(InputError, match="kind: 'odd'"):
        Interval(0, 1, kind="odd")
    with pytest.raises(InputError, match="confidence_level: 0"):
        fedsynth.meta_analysis(yi=[0.1, 0.2], vi=[0.1, 0.1]).confidence_interval(0)


def test_levels_are_fractions_in_the_api_and_percent_in_the_json(results):
    pooled = results["pooled"]
    assert pooled.level == 95.0 and pooled.confidence_level == 0.95
    assert pooled.to_dict()["level"] == 95.0
    assert results["bayes"].credibility_level == 0.95


@pytest.mark.parametrize("name", ["pooled", "batch item", "meta-regression", "subgroups",
                                  "analysis", "bayes"])
def test_fitted_models_draw_their_forest_plot(results, name):
    fig = results[name].forest()
    assert type(fig).__name__ == "Figure"
    # forest_plot accepts the same result directly
    assert type(fedsynth.forest_plot(results[name])).__name__ == "Figure"


@pytest.mark.parametrize("name", ["pooled", "meta-regression", "analysis"])
def test_fitted_models_draw_their_funnel_plot(results, name):
    assert type(results[name].funnel()).__name__ == "Figure"


def test_forest_plot_of_a_batch_needs_one_analysis(results, dat):
    assert type(results["batch"].forest("random")).__name__ == "Figure"
    one = fedsynth.meta_analysis(dat.assign(all="x"), by="all")
    assert type(fedsynth.forest_plot(one)).__name__ == "Figure"
    with pytest.raises(InputError, match="a batch of 3 analyses; plot one of them"):
        fedsynth.forest_plot(results["batch"])


def test_meta_regression_forest_marks_fitted_values(results):
    fit = results["meta-regression"]
    assert fit.fitted == pytest.approx(fit.X @ fit.coef)
    assert fit.residuals == pytest.approx(fit.yi - fit.fitted)
    fig = fit.forest()
    legend = [t.get_text() for t in fig.texts if t.get_gid() and "legend" in t.get_gid()]
    assert any("fitted value" in text for text in legend)


def test_pooled_result_offers_its_diagnostics(results, dat):
    pooled = results["pooled"]
    y, v = dat["yi"].to_numpy(), dat["vi"].to_numpy()
    loo = pooled.leave_one_out()
    assert np.allclose(loo.estimate, diagnostics.leave_one_out(y, v).estimate)
    assert np.allclose(pooled.influence().rstudent, diagnostics.influence(y, v).rstudent)
    assert pooled.heterogeneity().flagged
    assert pooled.analyse(diagnostics=True).leave_one_out is not None
    single = fedsynth.meta_analysis(yi=[0.1], vi=[0.1])
    with pytest.raises(InputError, match="at least 2 sites"):
        single.leave_one_out()


def test_bayes_intervals_at_another_level_are_recomputed():
    post = bayes_pool([0.1, 0.4, -0.2, 0.3], [0.02, 0.03, 0.05, 0.04], scale=0.5)
    at80 = bayes_pool([0.1, 0.4, -0.2, 0.3], [0.02, 0.03, 0.05, 0.04], scale=0.5, level=0.8)
    assert post.credible_interval("tau", credibility_level=0.8) == \
        at80.credible_interval("tau", credibility_level=0.8)
    assert post.prediction_interval(0.8).low == pytest.approx(at80.pred_lb, rel=1e-12)
