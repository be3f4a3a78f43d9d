"""A real federation: coordinator and six site processes over mutual TLS on 127.0.0.1.

One round per pooling method (FE, DL, REML) on the fifteen measures of
``tests/data/sites_public/expected.json``; the pooled results must equal R/metafor's
``pooled`` values. The model-performance measures (AUC, calibration, O:E, Brier) are pooled
as the prediction-model literature does whatever the round's method (REML, Knapp-Hartung,
t(k - 2) prediction interval, an AUC on the logit scale: issue 12; their numbers are checked
against R in tests/reference/test_evalrounds_reference.py): here their REML estimate and
tau² must equal metafor's (Knapp-Hartung changes neither). The sites' disclosure limits
are set to 1 here so that foxtrot's small cell is not suppressed: expected.json pools all
six sites.
"""

from __future__ import annotations

import json

import pytest

from fedsynth.vocabulary import PERFORMANCE_ESTIMATORS
from tests.integration.conftest import DEMO_SPEC, SITE_NAMES

pytestmark = pytest.mark.integration

FIELDS = ("estimate", "se", "ci_lb", "ci_ub", "tau2", "Q", "Q_pval", "I2", "H2", "pi_lb",
          "pi_ub")


def _close(actual, expected, rel=1e-6, absolute=1e-9):
    if expected in ([], None):
        return actual in ([], None)
    return actual is not None and abs(actual - expected) <= max(absolute, rel * abs(expected))


def test_six_sites_pool_like_metafor(federation, site_data):
    expected = json.loads((site_data / "expected.json").read_text())["pooled"]
    federation.start_coordinator(allow=SITE_NAMES)
    rounds = {method: federation.start_round(DEMO_SPEC, deadline="5m", method=method)
              for method in ("FE", "DL", "REML")}
    for name in SITE_NAMES:
        federation.start_site(name, site_data / f"{name}.csv", min_cell_count=1, min_n=1)
    problems = []
    for method, round_id in rounds.items():
        doc = federation.wait_round(round_id, timeout=300)
        assert doc["status"] == "pooled", doc.get("failure_reason")
        assert [s["status"] for s in doc["sites"]] == ["submitted"] * 6
        by_name = {a["analysis"]: a for a in doc["analyses"]}
        assert len(by_name) == 15
        for key, ref in expected.items():
            measure, ref_method = key.split("/")
            if ref_method != method:
                continue
            got = by_name[measure]
            if got["estimator"] in PERFORMANCE_ESTIMATORS:
                assert got["k"] == 6 and (got["method"], got["test"]) == ("REML", "knha")
                if ref_method == "REML" and got["site_scale"] == got["scale"]:
                    # metafor's REML stops at a 1e-5 change in tau² (its default threshold)
                    for field, rel in (("estimate", 1e-5), ("tau2", 1e-3)):
                        if not _close(got.get(field), ref[field], rel=rel):
                            problems.append(f"{key} {field}: {got.get(field)!r} != "
                                            f"{ref[field]!r}")
                continue
            assert got["k"] == 6 and got["method"] == method
            assert sorted(e["site"] for e in got["site_estimates"]) == sorted(SITE_NAMES)
            assert "heterogeneity" in got and "flagged" in got["heterogeneity"]
            for field in FIELDS:
                # Pooling is exact (1e-6 vs R); the site estimates behind it are the
                # estimators' (Cox, GLM, DeLong: also 1e-6 vs R), so 1e-5 covers both.
                # I2 is in percent: R's REML stops with tau2 ~ 1e-12 where the exact
                # maximiser is 0, which shows as I2 ~ 3e-9 %; 1e-7 % absolute covers that.
                absolute = 1e-7 if field in ("I2", "H2") else 1e-9
                if not _close(got.get(field), ref[field], rel=1e-5, absolute=absolute):
                    problems.append(f"{key} {field}: {got.get(field)!r} != {ref[field]!r}")
    assert not problems, "\n".join(problems)
    # The report of every round was written.
    for round_id in rounds.values():
        federation.wait_for((federation.root / "reports" / f"{round_id}.html").exists, 60,
                            f"the report of {round_id}")
    # The registry shows every site online with its agent version.
    sites = json.loads(federation.cli("sites", "--config",
                                      str(federation.coordinator_config_path),
                                      "--format", "json").stdout)
    assert {s["site"]: s["status"] for s in sites} == {n: "online" for n in SITE_NAMES}
