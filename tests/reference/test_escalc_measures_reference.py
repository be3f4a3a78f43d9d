"""The issue-16 escalc measures, vtypes and add/to/drop00 against R's metafor 3.8-1.

Reference values: tests/data/metafor/escalc_measures.json, written once by
tests/data/metafor/escalc_measures.R (metafor's NA is ``null``). Tolerance: relative
error <= 1e-9 (absolute 1e-12 near zero): these are closed forms, except UCOR's
hypergeometric function (an integral here, gsl's series in R).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsynth
from fedsynth.effects import escalc
from fedsynth.errors import InputError
from fedsynth.vocabulary import ESCALC_MEASURES

DOC = json.loads((Path(__file__).resolve().parents[1] / "data" / "metafor" /
                  "escalc_measures.json").read_text())
CASES = DOC["cases"]
NEW = {"SMDH", "SMCC", "SMCR", "MN", "MC", "CVR", "VR", "COR", "UCOR", "PHI", "OR2D", "PFT",
       "PLN", "IRD", "IRSD", "AS"}
OPTIONS = ("add", "to", "drop00", "vtype")


def _values(x) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in np.atleast_1d(x).tolist()],
                    dtype=float)


def _columns(case: dict) -> dict[str, np.ndarray]:
    data = DOC["data"][case["dataset"]]
    return {arg: _values(data[col]) for arg, col in case["args"].items()}


def test_every_new_measure_and_option_is_covered() -> None:
    assert NEW <= set(ESCALC_MEASURES)
    assert NEW <= {c["measure"] for c in CASES}
    for option in OPTIONS:
        assert any(option in c for c in CASES), option
    assert {c["vtype"] for c in CASES if "vtype" in c} >= {"UB", "LS2", "HO", "ST", "AV",
                                                            "AVHO"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_escalc_matches_metafor(case: dict) -> None:
    opts = {k: case[k] for k in OPTIONS if k in case}
    result = escalc(case["measure"], undefined="nan", **opts, **_columns(case))
    np.testing.assert_allclose(result.yi, _values(case["yi"]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.vi, _values(case["vi"]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c["measure"] in NEW][:40],
                         ids=lambda c: c["id"])
def test_public_api_matches_metafor(case: dict) -> None:
    # fedsynth.escalc (a DataFrame in, the columns named as metafor's arguments)
    frame = pd.DataFrame(_columns(case))
    opts = {k: case[k] for k in OPTIONS if k in case}
    out = fedsynth.escalc(case["measure"], frame, **{a: a for a in case["args"]}, **opts)
    np.testing.assert_allclose(out["yi"], _values(case["yi"]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["vi"], _values(case["vi"]), rtol=1e-9, atol=1e-12)


def test_strict_mode_names_the_undefined_row() -> None:
    # UCOR with ni = 4 is NA in metafor: by default an error naming the row and column
    case = next(c for c in CASES if c["id"] == "molloy2014/UCOR")
    with pytest.raises(InputError,
                       match=r"row 18: column 'ni' = 4.0: UCOR is undefined for n <= 4"):
        escalc("UCOR", **_columns(case))


def test_vtype_not_offered_by_the_measure_is_refused() -> None:
    with pytest.raises(InputError, match="vtype 'HO' is not available for measure SMDH"):
        escalc("SMDH", m1i=[1.0], sd1i=[1.0], n1i=[10], m2i=[0.0], sd2i=[1.0], n2i=[10],
               vtype="HO")
    with pytest.raises(InputError, match="vtype 'XX' is not one of"):
        escalc("SMD", m1i=[1.0], sd1i=[1.0], n1i=[10], m2i=[0.0], sd2i=[1.0], n2i=[10],
               vtype="xx")


def test_per_study_vtype_equals_the_single_vtype_rows() -> None:
    case = next(c for c in CASES if c["id"] == "normand1999/SMD/vtype=UB")
    cols = _columns(case)
    k = cols["n1i"].size
    vt = ["UB" if i % 2 else "AV" for i in range(k)]
    mixed = escalc("SMD", vtype=vt, **cols)
    ub, av = escalc("SMD", vtype="UB", **cols), escalc("SMD", vtype="AV", **cols)
    np.testing.assert_allclose(mixed.vi, np.where(np.arange(k) % 2, ub.vi, av.vi))


def test_metafor_default_add_is_zero_for_arcsine_measures() -> None:
    # AS, PHI, PFT, IRSD are defined at zero counts: metafor's add defaults to 0 for them
    a = escalc("AS", ai=[0, 3], n1i=[10, 12], ci=[2, 4], n2i=[11, 12])
    b = escalc("AS", ai=[0, 3], n1i=[10, 12], ci=[2, 4], n2i=[11, 12], add=0)
    np.testing.assert_array_equal(a.yi, b.yi)
    assert not a.corrected.any()
    c = escalc("OR2D", ai=[0, 3], n1i=[10, 12], ci=[2, 4], n2i=[11, 12])
    assert c.corrected.tolist() == [True, False]
