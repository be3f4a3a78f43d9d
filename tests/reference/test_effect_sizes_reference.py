"""escalc against R's metafor 3.8-1: every ``effect_sizes`` case of metafor_public.json.

Tolerance (tests/data/README.md): relative error <= 1e-6, absolute <= 1e-9 near zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth.effects import escalc

DATA = Path(__file__).resolve().parents[1] / "data" / "metafor_public.json"
CASES = json.loads(DATA.read_text())["effect_sizes"]


def test_every_measure_is_covered() -> None:
    assert {c["measure"] for c in CASES} == {"OR", "RR", "RD", "MD", "SMD", "ROM", "ZCOR",
                                             "IRR", "PLO", "PR"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_escalc_matches_metafor(case: dict) -> None:
    columns = {k: v for k, v in case["data"].items() if k not in ("kind", "labels")}
    result = escalc(case["measure"], labels=case["data"].get("labels"), **columns)
    expected = case["expected"]
    np.testing.assert_allclose(result.yi, expected["yi"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.vi, expected["vi"], rtol=1e-6, atol=1e-9)
    assert len(result) == len(case["data"]["labels"])


def test_zero_cell_tables_are_the_corrected_ones() -> None:
    # nielweise2007 has zero cells: only those rows get the 1/2 (metafor to="only0").
    case = next(c for c in CASES if c["id"] == "nielweise2007/OR")
    data = {k: np.array(case["data"][k]) for k in ("ai", "bi", "ci", "di")}
    result = escalc("OR", **data)
    has_zero = (data["ai"] == 0) | (data["bi"] == 0) | (data["ci"] == 0) | (data["di"] == 0)
    assert has_zero.any() and not has_zero.all()
    np.testing.assert_array_equal(result.corrected, has_zero)
