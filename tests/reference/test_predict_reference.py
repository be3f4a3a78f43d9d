"""predict (newmods, transf, intercept, addx, level) against metafor 3.8-1
(tests/data/metafor/predict.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.errors import InputError
from fedsynth.meta.metareg import Prediction

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "predict.json").read_text())
DATA = {name: pd.DataFrame(rows) for name, rows in REF["data"].items()}


def vec(x):
    return x if isinstance(x, list) else [x]


def close(a, b):
    b = np.array([np.nan if x is None else x for x in vec(b)], dtype=float)
    np.testing.assert_allclose(np.asarray(a, dtype=float), b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(REF["cases"]))
def test_predict_matches_metafor(name):
    case = REF["cases"][name]
    fit = fedsynth.meta_regression(DATA[case["data"]], mods=case["mods"] or "~ 1",
                                   test=case["test"], method=case["method"])
    kwargs = {"transf": case["transf"], "addx": case["addx"], "level": case["level"]}
    if case["newmods"] is not None:
        kwargs["intercept"] = case["intercept"]
    pr = fit.predict(case["newmods"], **kwargs)
    assert isinstance(pr, Prediction)
    for key in ("pred", "se", "ci_lb", "ci_ub", "pi_lb", "pi_ub"):
        close(getattr(pr, key), case[key])
    if case["addx"]:
        np.testing.assert_allclose(pr.X, np.array(case["X"]).reshape(pr.X.shape))
    assert pr.to_frame().shape[0] == len(vec(case["pred"]))


def test_predict_refusals_and_callables():
    fit = fedsynth.meta_regression(DATA["bcg"], mods="~ ablat + factor(alloc)")
    with pytest.raises(InputError, match="3 moderator coefficients"):
        fit.predict([[30, 1]])
    with pytest.raises(InputError, match="transf"):
        fit.predict([[30, 1, 0]], transf="nope")
    with pytest.raises(InputError, match="finite"):
        fit.predict([[np.nan, 1, 0]])
    a = fit.predict([[30, 1, 0]], transf=np.exp)
    b = fit.predict([[30, 1, 0]], transf="exp")
    np.testing.assert_allclose(a.pred, b.pred)
    assert np.isnan(a.se).all()
