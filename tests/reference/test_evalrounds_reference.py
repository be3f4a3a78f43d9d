"""Performance measures pooled in a round match R (tests/data/evalrounds/make_reference.R).

REML with Knapp-Hartung, a t(k - 2) prediction interval, each measure's own null, an AUC
sent raw pooled as a logit by the delta method, and the BLUPs the report shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.rounds import pool_analyses
from coordinator.store import SubmissionRecord

REF = json.loads((Path(__file__).parents[1] / "data" / "evalrounds" / "reference.json")
                 .read_text())
POOLING = {"method": "REML", "test": "z", "level": 95.0, "i2_threshold": 50.0}
ANALYSES = [{"name": name, "estimator": name, **({"scale": "raw"} if name == "auc" else {})}
            for name in REF["analyses"]]


def _close(a, b):
    if b is None:
        return a is None
    return a == pytest.approx(b, rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def entries():
    subs = []
    for j, site in enumerate(REF["sites"]):
        results = {}
        for name, data in REF["input"].items():
            y, v = data["yi"][j], data["vi"][j]
            results[name] = {"yi": y, "vi": v, "se": v ** 0.5, "n": 500}
        subs.append(SubmissionRecord("r", site, site, "", "", b"", b"", "", results, None))
    return {e.analysis: e for e in pool_analyses(ANALYSES, subs, POOLING)}


@pytest.mark.parametrize("name", list(REF["analyses"]))
def test_pooled_like_r(entries, name):
    ref, e = REF["analyses"][name], entries[name]
    assert (e.method, e.test, e.pi_df) == ("REML", "knha", "k-2")
    p = e.pooled
    for key in ("estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "Q", "pi_lb", "pi_ub",
                "stat", "pval"):
        assert _close(getattr(p, key), ref[key]), (name, key, getattr(p, key), ref[key])
    for b, y, v, bl, lo, hi in zip(e.blups, ref["yi"], ref["vi"], ref["blup"],
                                   ref["blup_pi_lb"], ref["blup_pi_ub"]):
        assert _close(b.yi, y) and _close(b.vi, v)
        assert _close(b.blup, bl) and _close(b.blup_pi_lb, lo) and _close(b.blup_pi_ub, hi)


def test_nulls_and_scales_in_the_document(entries):
    auc = entries["auc"]
    assert (auc.scale, auc.null_value, auc.estimand, auc.site_scale) == (
        "logit", 0.5, "c-statistic", "identity")
    # what left the sites is kept as sent: the raw AUC
    assert [s.yi for s in auc.site_estimates] == REF["input"]["auc"]["yi"]
    assert entries["calibration_slope"].null_value == 1.0
    assert entries["oe_ratio"].scale == "log" and entries["oe_ratio"].null_value == 1.0
    brier = entries["brier"]
    assert brier.null_value is None and brier.pooled.pval is None
    assert brier.pooled.stat is None and brier.heterogeneity.details.null_value is None
    assert any("no null value" in n for n in brier.notes)
