"""``fedsynth meta --measure``: effect sizes from raw columns, then pooling, vs metafor."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.cli import main

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" /
                   "metafor_public.json").read_text())
POOLING = {c["id"]: c for c in DATA["pooling"]}
CASES = [c for c in DATA["effect_sizes"] if f"{c['id']}/REML/z" in POOLING]


def write_case(case: dict, path: Path) -> Path:
    columns = {k: v for k, v in case["data"].items() if k not in ("kind", "labels")}
    frame = pd.DataFrame({"study": case["data"]["labels"], **columns})
    frame.to_csv(path, index=False)
    return path


def test_some_cases_have_pooling_references() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
@pytest.mark.parametrize("method", ["FE", "REML"])
def test_measure_then_pool_matches_metafor(case, method, tmp_path: Path, capsys) -> None:
    csv = write_case(case, tmp_path / "studies.csv")
    code = main(["meta", str(csv), "--measure", case["measure"].lower(), "--method", method,
                 "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    ref = POOLING[f"{case['id']}/{method}/z"]["expected"]
    for key in ("estimate", "se", "tau2", "Q", "I2"):
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("rows,extra,words", [
    ({"ai": [1, -2], "bi": [3, 3], "ci": [1, 1], "di": [5, 5]}, [], ["row 2", "'ai'",
                                                                     "negative"]),
    ({"ai": [1, "x"], "bi": [3, 3], "ci": [1, 1], "di": [5, 5]}, [], ["row 2", "'ai'",
                                                                      "'x'"]),
    ({"ai": [1, 2], "bi": [3, 3], "ci": [1, 1]}, [], ["'di'", "not found"]),
    ({"ri": [0.2, 1.2], "ni": [30, 40]}, ["--measure", "ZCOR"], ["row 2", "'ri'"]),
    ({"ri": [0.2, 0.3], "ni": [30, 3]}, ["--measure", "ZCOR"], ["row 2", "'ni'", "n > 3"]),
    ({"m1i": [1, 2], "sd1i": [1, 0], "n1i": [5, 5], "m2i": [1, 1], "sd2i": [1, 1],
      "n2i": [5, 5]}, ["--measure", "SMD"], ["row 2", "'sd1i'"]),
    ({"ai": [1, 2], "bi": [3, 3], "ci": [1, 1], "di": [5, 5], "yi": [0, 0]},
     ["--yi", "yi"], ["--yi", "--measure"]),
])
def test_impossible_rows_exit_2_naming_the_row(rows, extra, words, tmp_path: Path,
                                               capsys) -> None:
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"study": ["A", "B"], **rows}).to_csv(csv, index=False)
    argv = ["meta", str(csv), *(extra if "--measure" in extra else ["--measure", "OR",
                                                                    *extra])]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    for word in words:
        assert word in err, (word, err)
    if "row 2" in words:
        assert "(B)" in err        # the study label is named too
