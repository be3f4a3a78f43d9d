"""The heterogeneity flag (docs/architecture.md): each path, each level, each kind of site driver.

Data are real: the BCG vaccine trials (log OR) and the other metafor data sets of
tests/data/metafor_public.json, and the 8-study seed example.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsynth.errors import InputError
from fedsynth.meta.analysis import analyse
from fedsynth.meta.heterogeneity import assess_heterogeneity
from tests.conftest import load_json

REF = load_json("metafor_public.json")
DATA = {c["id"]: c for c in REF["influence"]}
SEED_YI = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
SEED_SEI = [0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13]


def _bcg_pooling_case():
    return next(c for c in REF["pooling"] if c["id"] == "bcg/OR/REML/z")


def run(case_id, **kw):
    c = DATA[case_id]
    return analyse(c["yi"], c["vi"], labels=c["labels"], **kw)


def test_bcg_is_flagged_strong():
    case = _bcg_pooling_case()         # the bcg/OR pooling case holds its yi/vi
    res = analyse(case["yi"], case["vi"], labels=case["labels"])
    flag = res.heterogeneity
    assert flag.flagged and flag.level == "strong"
    assert flag.I2 == pytest.approx(case["expected"]["I2"], rel=1e-6)
    assert flag.I2_ci_lb == pytest.approx(case["expected"]["I2_ci"][0], rel=1e-5)
    assert flag.I2_ci_lb >= 50
    assert flag.i2_confidence_interval().low == flag.I2_ci_lb
    assert flag.i2_confidence_interval().level == 0.95
    text = " ".join(flag.reasons)
    assert "I² = 92.07%" in text and "81.74%" in text and "strong" in text
    assert "(rule i2)" in text and flag.rules == ("i2", "pi_crosses_null")
    # one paragraph, numbers first, no boilerplate: the advice is printed once by summary()
    assert text.startswith("I² = 92.07%") and "hierarchical model" not in text
    assert flag.summary().count("BLUPs") == 1
    assert flag.sites and set(flag.sites) <= set(case["labels"])
    d = flag.to_dict()
    assert set(d) >= {"flagged", "level", "reasons", "sites"}
    json.dumps(d)


def test_seed_example_is_not_flagged():
    res = analyse(SEED_YI, [s * s for s in SEED_SEI], labels=[f"site{i}" for i in range(8)])
    flag = res.heterogeneity
    assert not flag.flagged
    assert flag.to_dict()["flagged"] is False
    assert (flag.level, flag.reasons, flag.sites) == (None, (), ())
    assert res.pooling.I2 < 50 and not flag.pi_crosses_null


def test_i2_path_moderate_when_lower_bound_below_threshold():
    # pritz1997/PR: I² 75%, Q-profile lower bound 48% < 50%, PI does not cross 0
    res = run("pritz1997/PR")
    flag = res.heterogeneity
    assert flag.flagged and flag.level == "moderate"
    assert flag.I2 >= 50 > flag.I2_ci_lb
    assert not flag.pi_crosses_null
    assert any("moderate" in r for r in flag.reasons)
    assert not any("crosses the null" in r for r in flag.reasons)
    # the threshold is a parameter: at 40% the same data are strong, at 80% not flagged
    assert run("pritz1997/PR", i2_threshold=40).heterogeneity.level == "strong"
    assert not run("pritz1997/PR", i2_threshold=80).heterogeneity.flagged


def test_prediction_interval_path_alone():
    # hackshaw1998: I² 30% < 50%, CI excludes 0, PI crosses 0 -> flagged, moderate
    res = run("hackshaw1998")
    p, flag = res.pooling, res.heterogeneity
    assert p.I2 < 50 and (p.ci_lb > 0) and p.pi_lb < 0 < p.pi_ub
    assert flag.flagged and flag.level == "moderate" and flag.pi_crosses_null
    assert any("PI" in r and "crosses the null value 0.00" in r
               and "(rule pi_crosses_null)" in r for r in flag.reasons)
    assert flag.rules == ("pi_crosses_null",)
    assert not any("threshold" in r for r in flag.reasons)


def test_null_value_is_a_parameter():
    # hackshaw1998 on the log scale: against a null of 1.0 the CI no longer excludes...
    res = run("hackshaw1998", null_value=1.0)
    assert not res.heterogeneity.pi_crosses_null and not res.heterogeneity.flagged
    # ...and a null inside the CI does not trigger the PI path either
    mid = float(res.pooling.estimate)
    assert not run("hackshaw1998", null_value=mid).heterogeneity.flagged


@pytest.mark.parametrize("case_id, kind", [
    ("bcg/OR", "outlying_blup"),
    ("pritz1997/PR", "studentized_residual"),
    ("normand1999/SMD", "influential"),
])
def test_each_site_driver_kind(case_id, kind):
    res = run(case_id)
    flag = res.heterogeneity
    assert flag.flagged
    drivers = [d for d in flag.drivers if kind in d.kinds]
    assert drivers, f"no {kind} driver in {case_id}"
    for d in drivers:
        assert d.site in flag.sites
        assert any(r.startswith("Driving sites:") and d.site in r for r in flag.reasons)
    infl = res.influence
    for d in drivers:
        i = d.index                     # BCG has two "Comstock et al": labels repeat
        assert infl.labels[i] == d.site
        if kind == "studentized_residual":
            assert abs(infl.rstudent[i]) > 1.96
        elif kind == "influential":
            assert infl.influential[i]
        else:
            b = res.blup
            assert not (b.pi_lb[i] <= res.pooling.estimate <= b.pi_ub[i])


def test_fixed_effect_fit_still_gets_a_level():
    # FE fits carry no I² interval; the Q-profile interval (estimator-free) is used
    res = run("bcg/OR", method="FE")
    assert res.heterogeneity.level == "strong"
    assert not res.heterogeneity.pi_crosses_null        # FE has no prediction interval


def test_bad_settings_are_named():
    pooled = run("bcg/OR", diagnostics=False).pooling
    with pytest.raises(InputError, match="i2_threshold"):
        assess_heterogeneity(pooled, i2_threshold=150)
    with pytest.raises(InputError, match="null_value"):
        assess_heterogeneity(pooled, null_value=float("nan"))


def test_analyse_sections_and_json():
    c = next(x for x in REF["subgroup"] if x["id"] == "bcg/OR")
    mods = next(x for x in REF["meta_regression"] if x["id"] == "bcg/OR")["moderator"]
    res = analyse(c["yi"], c["vi"], labels=c["labels"], subgroup=c["group"],
                  subgroup_name="alloc", moderators={"ablat": mods},
                  cumulative_order=list(range(13)))
    d = json.loads(json.dumps(res.to_dict()))
    for key in ("estimate", "tau2", "I2_ci", "heterogeneity", "leave_one_out", "influence",
                "blup", "publication_bias", "cumulative", "subgroup", "meta_regression"):
        assert key in d, key
    assert d["meta_regression"]["QM"] == pytest.approx(25.2472755861341, rel=1e-6)
    assert d["subgroup"]["common_tau2"] == pytest.approx(0.393305506729123, rel=1e-6)
    assert d["influence"]["rstudent"][0] == pytest.approx(-0.232033143180538, rel=1e-6)
    lean = analyse(c["yi"], c["vi"], labels=c["labels"], diagnostics=False).to_dict()
    assert "influence" not in lean and "heterogeneity" in lean
    np.testing.assert_allclose(lean["estimate"], d["estimate"])


def test_two_sites_get_a_flag_and_a_note():
    res = analyse([0.1, 0.9], [0.01, 0.01], labels=["a", "b"])
    assert res.heterogeneity.flagged
    assert res.leave_one_out is not None and res.publication_bias is None
    assert any("at least 3 sites" in n for n in res.notes)
    one = analyse([0.1], [0.01], labels=["a"])
    assert not one.heterogeneity.flagged and one.influence is None
