"""The public Python API reproduces metafor from data frames (R 4.2.2, metafor 3.8-1).

``tests/data/api/export_bcg.R`` exports dat.bcg (Colditz et al. 1994) as the package's
example data and records escalc(OR), rma() (REML z and knha, DL, REML at 90%), the
meta-regression on latitude and allocation, and the per-allocation fits;
``tests/data/escalc/escalc_options.R`` records escalc's continuity-correction options
(add, to, drop00) on tables with zero cells and double zeros. Tolerance 1e-6 relative.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import fedsynth
from tests.conftest import load_json

BCG = load_json("api/bcg_api.json")
OPTIONS = load_json("escalc/escalc_options.json")
RTOL = 1e-6


def _dat() -> pd.DataFrame:
    return fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                           ci="cpos", di="cneg")


def _check(result, expected: dict) -> None:
    for key, value in expected.items():
        got = getattr(result, key)
        assert got == pytest.approx(value, rel=RTOL, abs=1e-12), key


def test_example_data_is_metafor_dat_bcg_and_escalc_matches():
    dat = _dat()
    assert list(dat.columns) == ["trial", "author", "year", "tpos", "tneg", "cpos", "cneg",
                                 "ablat", "alloc", "yi", "vi"]
    assert dat["yi"].to_numpy() == pytest.approx(BCG["escalc_OR"]["yi"], rel=1e-12)
    assert dat["vi"].to_numpy() == pytest.approx(BCG["escalc_OR"]["vi"], rel=1e-12)
    assert dat.attrs["measure"] == "OR"


@pytest.mark.parametrize("key,options", [
    ("REML_z", {"method": "REML"}),
    ("REML_knha", {"method": "REML", "test": "knha"}),
    ("DL_z", {"method": "DL"}),
    ("REML_z_90", {"method": "REML", "level": 0.9}),
])
def test_meta_analysis_of_a_data_frame_matches_rma(key, options):
    res = fedsynth.meta_analysis(_dat(), yi="yi", vi="vi", label="author", **options)
    _check(res, BCG["pooling"][key])
    assert res.labels[0] == "Aronson"


def test_levels_are_fractions_and_percentages_alike():
    dat = _dat()
    at90 = fedsynth.meta_analysis(dat, level=0.9)
    assert at90.level == 90.0 and at90.confidence_level == pytest.approx(0.9)
    assert fedsynth.meta_analysis(dat, level=90).to_dict() == at90.to_dict()
    # the 95% fit's interval at 90% is the 90% fit's interval
    ci = fedsynth.meta_analysis(dat).confidence_interval(confidence_level=0.9)
    assert (ci.low, ci.high) == pytest.approx((BCG["pooling"]["REML_z_90"]["ci_lb"],
                                               BCG["pooling"]["REML_z_90"]["ci_ub"]), rel=RTOL)
    pi = fedsynth.meta_analysis(dat).prediction_interval(confidence_level=0.9)
    assert (pi.low, pi.high) == pytest.approx((BCG["pooling"]["REML_z_90"]["pi_lb"],
                                               BCG["pooling"]["REML_z_90"]["pi_ub"]), rel=RTOL)
    assert pi.kind == "prediction" and ci.kind == "confidence"


def test_standard_errors_instead_of_variances():
    dat = _dat()
    dat["sei"] = np.sqrt(dat.pop("vi"))
    _check(fedsynth.meta_analysis(dat, sei="sei"), BCG["pooling"]["REML_z"])
    # without vi or sei, a sei column is found
    _check(fedsynth.meta_analysis(dat), BCG["pooling"]["REML_z"])


def test_by_is_one_batch_with_named_analyses():
    batch = fedsynth.meta_analysis(_dat(), by="alloc", label="author")
    assert isinstance(batch, fedsynth.meta.BatchPoolingResult)
    assert set(batch.names) == set(BCG["by_alloc"])
    for name, expected in BCG["by_alloc"].items():
        _check(batch[name], expected)
    frame = batch.to_frame()
    assert list(frame.index) == list(batch.names)
    assert frame.loc["random", "estimate"] == pytest.approx(
        BCG["by_alloc"]["random"]["estimate"], rel=RTOL)


def test_meta_regression_matches_rma_with_mods():
    fit = fedsynth.meta_regression(_dat(), mods=["ablat", "alloc"])
    exp = BCG["meta_regression"]
    assert fit.names == ("intrcpt", "ablat", "allocrandom", "allocsystematic")
    assert fit.coef == pytest.approx(exp["coef"], rel=RTOL)
    assert fit.se == pytest.approx(exp["se"], rel=RTOL)
    for key in ("tau2", "QM", "QMp", "QE", "R2"):
        assert getattr(fit, key) == pytest.approx(exp[key], rel=RTOL), key


def test_subgroups_are_the_per_group_fits():
    sg = fedsynth.subgroups(_dat(), group="alloc", label="author")
    assert sg.variable == "alloc"
    for g in sg.groups:
        _check(g, {k: v for k, v in BCG["by_alloc"][g.group].items()
                   if k in ("estimate", "se", "tau2", "I2", "Q")})


@pytest.mark.parametrize("case", OPTIONS["cases"], ids=[c["id"] for c in OPTIONS["cases"]])
def test_escalc_options_match_metafor(case):
    frame = pd.DataFrame(OPTIONS["data"][case["dataset"]])
    columns = {name: name for name in frame.columns}
    out = fedsynth.escalc(case["measure"], frame, add=case["add"], to=case["to"],
                          drop00=case["drop00"], **columns)
    expected_yi = np.array([np.nan if x is None else x for x in case["yi"]])
    expected_vi = np.array([np.nan if x is None else x for x in case["vi"]])
    assert np.allclose(out["yi"], expected_yi, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.allclose(out["vi"], expected_vi, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_drop00_studies_are_omitted_from_pooling_with_a_warning():
    frame = pd.DataFrame(OPTIONS["data"]["nielweise2007"])
    dat = fedsynth.escalc("OR", frame, ai="ai", n1i="n1i", ci="ci", n2i="n2i", drop00=True)
    assert dat["yi"].isna().sum() == 1
    with pytest.warns(UserWarning, match=r"1 studies with missing values omitted.*row 15"):
        res = fedsynth.meta_analysis(dat)
    assert res.k == 17
    with pytest.raises(fedsynth.errors.InputError, match="row 15"):
        fedsynth.meta_analysis(dat, na_action="fail")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fedsynth.meta_analysis(dat.dropna()).to_dict() == res.to_dict()
