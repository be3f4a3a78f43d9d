"""The public Python API: lazy import, inputs (columns or values), errors, missing values.

Numbers against R are in tests/reference/test_api_reference.py; here the behaviour a user
meets: what ``import fedsynth`` costs, which arguments name what, the messages of bad
input, and that a batch, a single analysis and the array API agree.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta import BatchPoolingResult, PoolingResult
from fedsynth.meta import meta_analysis as array_meta_analysis


def _dat() -> pd.DataFrame:
    return fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                           ci="cpos", di="cneg")


def test_import_fedsynth_is_lazy():
    code = ("import sys, fedsynth; heavy = [m for m in ('numpy', 'pandas', 'scipy') "
            "if m in sys.modules]; print(heavy); fedsynth.meta_analysis; "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]"            # nothing heavy before first use
    assert out[1] == "True"          # the API loads on first use


def test_public_names_resolve_and_unknown_names_raise():
    for name in fedsynth.__all__:
        assert getattr(fedsynth, name) is not None
    assert "meta_analysis" in dir(fedsynth)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fedsynth.nope  # noqa: B018


def test_data_frame_api_equals_the_array_api():
    dat = _dat()
    res = fedsynth.meta_analysis(dat, label="author", method="PM", test="knha")
    arr = array_meta_analysis(dat["yi"], dat["vi"], labels=dat["author"], method="PM",
                              test="knha")
    assert isinstance(res, PoolingResult)
    assert res.to_dict() == arr.to_dict() and res.labels == arr.labels
    # values instead of column names, with or without a frame
    assert fedsynth.meta_analysis(yi=dat["yi"].to_numpy(), vi=list(dat["vi"]),
                                  method="PM", test="knha").to_dict() == arr.to_dict()
    assert fedsynth.meta_analysis(dat, yi=dat["yi"], vi="vi", method="PM",
                                  test="knha").to_dict() == arr.to_dict()


def test_default_labels_come_from_a_known_column_or_row_numbers():
    dat = _dat()
    assert fedsynth.meta_analysis(dat).labels[0] == "Aronson"          # author column
    plain = dat[["yi", "vi"]]
    assert fedsynth.meta_analysis(plain).labels[:3] == ("1", "2", "3")


def test_batch_with_by_equals_separate_analyses():
    dat = _dat()
    batch = fedsynth.meta_analysis(dat, by="alloc", method="ML")
    assert isinstance(batch, BatchPoolingResult) and len(batch) == 3
    for name in batch.names:
        rows = dat[dat["alloc"] == name]
        alone = fedsynth.meta_analysis(rows, method="ML")
        got = batch[name].to_dict()
        for key, value in alone.to_dict().items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert batch.index_of("random") == batch.names.index("random")
    with pytest.raises(KeyError, match="'nope' is not in this batch"):
        batch["nope"]
    d = batch.to_dict()
    assert [r["analysis"] for r in d["analyses"]] == list(batch.names)


@pytest.mark.parametrize("kwargs,message", [
    ({"yi": "effect"}, "yi: column 'effect' not found; available columns: 'trial'"),
    ({"vi": "var"}, "vi: column 'var' not found"),
    ({"vi": "vi", "sei": "vi"}, "vi and sei: give only one of them"),
    ({"method": "XX"}, "method: 'XX' is not one of FE, DL"),
    ({"test": "wald"}, "test: 'wald' is not one of z, knha, t, adhoc"),
    ({"level": 1.5e2}, "level: 150.0 must be a fraction"),
    ({"na_action": "drop"}, "na_action: 'drop' is not one of omit, fail"),
    ({"by": "nope"}, "by: column 'nope' not found"),
    ({"label": [1, 2]}, "label: 2 values for the 13 rows of data"),
])
def test_bad_input_names_the_argument_and_the_value(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fedsynth.meta_analysis(_dat(), **kwargs)


def test_a_value_that_is_not_a_number_names_column_row_and_study():
    dat = _dat()
    dat["yi"] = dat["yi"].astype(object)
    dat.loc[3, "yi"] = "n/a?"
    with pytest.raises(InputError, match=r"yi: column 'yi', row 4 \(study 'Hart & "
                                         r"Sutherland'\): 'n/a\?' is not a number"):
        fedsynth.meta_analysis(dat)


def test_variances_must_be_positive_and_standard_errors_too():
    dat = _dat()
    dat.loc[2, "vi"] = -0.1
    with pytest.raises(InputError, match=r"vi: study 'Rosenthal et al' has sampling "
                                         r"variance -0.1"):
        fedsynth.meta_analysis(dat)
    with pytest.raises(InputError, match=r"sei: row 1 \(study 'a'\): standard error 0.0"):
        fedsynth.meta_analysis(yi=[0.1, 0.2], sei=[0.0, 0.1], label=["a", "b"])


def test_no_variance_column_is_explained():
    with pytest.raises(InputError, match="vi: no sampling variances"):
        fedsynth.meta_analysis(pd.DataFrame({"yi": [0.1, 0.2]}))
    with pytest.raises(InputError, match="yi: 'yi' names a column, but no data frame"):
        fedsynth.meta_analysis(vi=[0.1, 0.2])


def test_missing_values_are_omitted_with_a_warning_or_refused():
    dat = _dat()
    dat.loc[[0, 5], "vi"] = np.nan
    with pytest.warns(UserWarning, match=r"2 studies with missing values omitted.*row 1 "
                                         r"\('Aronson'\), row 6"):
        res = fedsynth.meta_analysis(dat)
    assert res.k == 11
    with pytest.raises(InputError, match=r"yi/vi: missing value in row 1 \('Aronson'\)"):
        fedsynth.meta_analysis(dat, na_action="fail")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = fedsynth.meta_analysis(_dat())
    assert full.k == 13


def test_escalc_returns_the_data_with_yi_and_vi():
    bcg = fedsynth.example_data("bcg")
    out = fedsynth.escalc("OR", bcg, ai="tpos", bi="tneg", ci="cpos", di="cneg")
    assert list(out.columns) == list(bcg.columns) + ["yi", "vi"]
    assert "yi" not in bcg.columns                       # the input is not modified
    alone = fedsynth.escalc("OR", ai=bcg["tpos"], bi=bcg["tneg"].to_numpy(),
                            ci=list(bcg["cpos"]), di=bcg["cneg"])
    assert list(alone.columns) == ["yi", "vi"]
    assert np.array_equal(alone["yi"], out["yi"])
    named = fedsynth.escalc("OR", bcg, ai="tpos", bi="tneg", ci="cpos", di="cneg",
                            var_names=("lnor", "v"))
    assert np.array_equal(named["lnor"], out["yi"])
    # group sizes instead of the second cells
    bcg["n1"] = bcg["tpos"] + bcg["tneg"]
    bcg["n2"] = bcg["cpos"] + bcg["cneg"]
    sizes = fedsynth.escalc("OR", bcg, ai="tpos", n1i="n1", ci="cpos", n2i="n2")
    assert np.allclose(sizes["yi"], out["yi"], rtol=1e-14)


def test_escalc_proportions_accept_events_and_non_events():
    a = fedsynth.escalc("PLO", xi=[3, 10], ni=[10, 10])
    b = fedsynth.escalc("PLO", xi=[3, 10], mi=[7, 0])
    assert np.allclose(a["yi"], b["yi"]) and np.allclose(a["vi"], b["vi"])


def test_escalc_missing_summary_data_give_missing_effect_sizes():
    out = fedsynth.escalc("RR", ai=[4, None, 6], bi=[119, 300, 300], ci=[11, 29, 29],
                          di=[128, 274, 274])
    assert np.isnan(out["yi"][1]) and np.isnan(out["vi"][1])
    assert np.isfinite(out["yi"][[0, 2]]).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"measure": "XYZ"}, "measure: unknown measure 'XYZ'"),
    ({"measure": "OR", "ai": "tpos"}, "escalc: measure OR needs ai, bi, ci, di or ai, n1i"),
    ({"measure": "OR", "ai": "tpos", "bi": "tneg", "ci": "cpos", "di": "cneg",
      "ri": "ablat"}, "escalc: 'ri' is not used by measure OR"),
    ({"measure": "OR", "ai": "nope", "bi": "tneg", "ci": "cpos", "di": "cneg"},
     "ai: column 'nope' not found"),
    ({"measure": "OR", "ai": "tpos", "bi": "tneg", "ci": "cpos", "di": "cneg", "to": "x"},
     "escalc: 'to' must be one of only0, all, if0all, none"),
    ({"measure": "OR", "ai": "tpos", "bi": "tneg", "ci": "cpos", "di": "cneg",
      "var_names": ("yi",)}, "var_names: expected two column names"),
])
def test_escalc_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fedsynth.escalc(data=fedsynth.example_data("bcg"), **kwargs)


def test_meta_regression_moderators_as_names_or_values():
    dat = _dat()
    a = fedsynth.meta_regression(dat, mods="ablat")
    b = fedsynth.meta_regression(dat, mods={"ablat": dat["ablat"].to_numpy()})
    assert a.names == b.names == ("intrcpt", "ablat")
    assert np.array_equal(a.coef, b.coef)
    c = fedsynth.meta_regression(dat, mods=["year"], categorical=["year"])
    assert len(c.names) == dat["year"].nunique()
    with pytest.raises(InputError, match="mods: at least one moderator"):
        fedsynth.meta_regression(dat, mods=[])
    with pytest.raises(InputError, match="mods: column 'nope' not found"):
        fedsynth.meta_regression(dat, mods=["nope"])
    dat.loc[0, "ablat"] = np.nan
    with pytest.warns(UserWarning, match="1 studies with missing values omitted"):
        assert fedsynth.meta_regression(dat, mods="ablat").k == 12


def test_subgroups_and_bayes_from_a_data_frame():
    dat = _dat()
    sg = fedsynth.subgroups(dat, group="alloc")
    assert [g.group for g in sg.groups] == ["alternate", "random", "systematic"]
    assert sg.labels is not None and len(sg.labels) == 13
    with pytest.raises(InputError, match="group: name the grouping column"):
        fedsynth.subgroups(dat)
    post = fedsynth.bayes_meta_analysis(dat, label="author", prior="half_normal", scale=0.5)
    assert post.k == 13 and post.labels[0] == "Aronson"
    batch = fedsynth.bayes_meta_analysis(dat, by="alloc", scale=0.5)
    assert len(batch) == 3
    assert batch[0].mu_median == pytest.approx(
        fedsynth.bayes_meta_analysis(dat[dat["alloc"] == "random"], scale=0.5).mu_median,
        rel=1e-12)


def test_example_data():
    assert list(fedsynth.example_data("seed").columns) == ["study", "yi", "sei"]
    with pytest.raises(InputError, match="unknown example data set 'nope'"):
        fedsynth.example_data("nope")
