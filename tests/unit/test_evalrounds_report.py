"""Issue 12 phase 2: the round report follows its own advice, and the report defects."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from coordinator.reports import _fmt, _interval, _trend_figure, render_round_html, trend_summary
from coordinator.rounds import pool_analyses
from coordinator.store import SubmissionRecord
from fedsynth.datasets import site_parameters
from fedsynth.meta import meta_analysis
from fedsynth.round_document import RoundDocument

SITES = [f"mtf-{n}" for n in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")]
AUC = [0.62, 0.78, 0.70, 0.81, 0.66, 0.74]
SLOPE = [0.95, 1.08, 0.99, 1.02, 0.97, 1.01]


def _doc() -> RoundDocument:
    subs = []
    for j, site in enumerate(SITES):
        results = {
            "auc": {"yi": AUC[j], "vi": 0.0003, "se": 0.0003 ** 0.5, "n": 900},
            "slope": {"yi": SLOPE[j], "vi": 0.004, "se": 0.004 ** 0.5, "n": 900},
            "brier": {"yi": 0.15 + 0.001 * j, "vi": 1e-5, "se": 1e-5 ** 0.5, "n": 900},
            "tiny": {"yi": 0.1 + 1e-5 * j, "vi": 0.01, "se": 0.1, "n": 900}}
        subs.append(SubmissionRecord("r", site, site, "", "", b"", b"", "", results, None))
    analyses = [{"name": "auc", "estimator": "auc", "scale": "raw"},
                {"name": "slope", "estimator": "calibration_slope"},
                {"name": "brier", "estimator": "brier"},
                {"name": "tiny", "estimator": "two_group", "measure": "MD"}]
    entries = pool_analyses(analyses, subs, {"method": "REML", "test": "z", "level": 95.0,
                                             "i2_threshold": 50.0})
    return RoundDocument(round="r-20261127-0001", status="pooled", analyses=tuple(entries),
                         quorum=6)


@pytest.fixture(scope="module")
def page() -> str:
    return render_round_html(_doc())


def test_pvalues_test_each_measures_null():
    doc = _doc()
    auc, slope, brier = (doc.analysis(n) for n in ("auc", "slope", "brier"))
    # the AUC's p-value is against 0.5 (logit 0), the slope's against 1
    p = auc.pooled
    assert p.stat == pytest.approx(p.estimate / p.se)
    assert slope.pooled.stat == pytest.approx((slope.pooled.estimate - 1.0) / slope.pooled.se)
    assert slope.pooled.pval > 0.05           # slopes around 1: no evidence against 1
    assert brier.pooled.pval is None and brier.pooled.stat is None


def test_report_states_null_scale_and_backtransforms(page):
    text = re.sub(r"<[^>]+>", " ", page)
    assert "H0: c-statistic = 0.5" in text and "H0: calibration slope = 1" in text
    assert "pooled on the logit scale" in text and "no null" in text
    auc = _doc().analysis("auc").pooled
    c = 1 / (1 + math.exp(-auc.estimate))
    assert f"{c:.3f}" in text                 # the c-statistic, not its logit


def test_flagged_analysis_shows_blups_drivers_and_one_paragraph(page):
    doc = _doc()
    auc = doc.analysis("auc")
    assert auc.heterogeneity.flagged and len(auc.blups) == 6
    section = page[page.index('id="a-auc"'):page.index('id="a-slope"')]
    assert "BLUP</th>" in section and "95% PI of the BLUP" in section
    # the forest plot draws every BLUP with its interval as a second marker
    # (one path per kind of mark in the direct SVG writer of issue 17: 6 intervals, 6 circles)
    pi = re.search(r'<path d="([^"]*)" stroke="#c25e00"', section).group(1)
    circles = re.search(r'<path d="([^"]*)" fill="none" stroke="#c25e00"', section).group(1)
    assert pi.count("M") == 6 and pi.count("H") == 6 and circles.count("M") == 6
    # the reasons: one paragraph, numbers first, rule named, no boilerplate sentence
    (para,) = re.findall(r'<div class="alert"><p>(.*?)</p></div>', section, flags=re.S)
    assert re.match(r"^(95% PI|I²) ", para) and "(rule " in para
    assert "hierarchical model" not in para
    for site in auc.heterogeneity.sites:
        assert f"\u25b2 {site}" in section          # driver marked in the plot


def test_no_mixed_number_formats():
    # the defect: 2.550e-05 beside 0.0000 in one column
    assert _fmt(2.55e-5, 4) == "0.0000" and _fmt(0.1234567, 4) == "0.1235"
    assert _fmt(-1e-9, 3) == "0.000" and _fmt(2.5e7, 3) == "25000000.000"
    assert _interval(5e-5, 0.015, 3) == "0.000 to 0.015"
    page = render_round_html(_doc())
    cells = re.findall(r'<td class="num">([^<]*)', page)
    assert cells and not any(re.search(r"\de[-+]\d", c) for c in cells)


def test_tables_scroll_instead_of_overflowing(page):
    # the defect: the pooled-results table overflowed the page at 1400 px
    assert page.count("<table") == page.count('<div class="scroll"><table')
    assert re.search(r"\.scroll \{ overflow-x: auto;", page)
    assert 'class="name"' in page and "overflow-wrap: anywhere" in page


def test_no_restricted_loglik_for_a_single_site():
    one = meta_analysis([0.5], [0.1], method="REML").summary()
    assert "Fixed-Effect Model (k = 1)" in one and "log-likelihood" not in one
    fe = meta_analysis([0.5, 0.7], [0.1, 0.1], method="FE").summary()
    assert "log-likelihood" in fe and "restricted" not in fe
    re_fit = meta_analysis([0.5, 0.7, 0.1], [0.1, 0.1, 0.1], method="REML").summary()
    assert "restricted log-likelihood" in re_fit


def test_trend_of_a_single_round_is_not_clipped():
    doc = _doc().to_dict()
    doc["closed_at"] = doc["opened_at"] = "2026-11-27T06:00:00.000Z"
    trend = [t for t in trend_summary([doc]) if t.analysis == "auc"][0]
    fig = _trend_figure(trend, 50.0)
    ax_est, ax_site, ax_i2 = fig.axes
    # the prediction interval of one round is drawn (a band between rounds has no width)
    assert ax_est.collections and any(len(c.get_segments()) == 1 for c in ax_est.collections
                                      if hasattr(c, "get_segments"))
    # the pooled series in the site panel shows a marker, so its legend entry has one too
    (pooled,) = [ln for ln in ax_site.get_lines() if ln.get_label() == "pooled"]
    assert pooled.get_marker() not in (None, "None", "") and pooled.get_linestyle() == "--"
    # the points at the panels' edges are not clipped
    lo, hi = ax_i2.get_ylim()
    assert lo < 0 - 3 and hi > 100 + 3
    assert all(not ln.get_clip_on() for ln in ax_est.get_lines() if ln.get_marker() == "o")


def test_high_heterogeneity_demo_spreads_model_performance():
    high = site_parameters(6, heterogeneity="high")
    low = site_parameters(6)
    assert {p.score_noise for p in low} == {0.25}
    noise = sorted(p.score_noise for p in high)
    assert noise[0] == pytest.approx(0.25) and noise[-1] == pytest.approx(1.45)
    assert np.ptp([p.log_or for p in high]) > 0.5
