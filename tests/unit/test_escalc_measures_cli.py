"""``fedsynth meta --measure`` with the issue-16 measures and --add/--to/--drop00/--vtype.

The effect sizes are metafor's (tests/data/metafor/escalc_measures.json); the fixed-effect
pool of them is the inverse-variance mean of metafor's yi and vi (studies with NA left out,
as rma does).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main

DOC = json.loads((Path(__file__).resolve().parents[1] / "data" / "metafor" /
                  "escalc_measures.json").read_text())
IDS = ["morris2008/SMCC/vtype=LS2", "morris2008/SMCR", "normand1999/SMDH", "normand1999/CVR",
       "normand1999/VR/sd-only", "normand1999/MN", "pritz1997/PFT", "hart1999/IRSD",
       "bcg/PHI/vtype=ST", "nielweise2007/AS", "rates/IRD/drop00=TRUE",
       "nielweise2007/OR2D/add=1/to=all/drop00=TRUE", "pritz1997/PLN/add=1/to=if0all"]
CASES = {c["id"]: c for c in DOC["cases"]}


def _csv(case: dict, path: Path) -> Path:
    data = DOC["data"][case["dataset"]]
    frame = pd.DataFrame({arg: data[col] for arg, col in case["args"].items()})
    frame.insert(0, "study", [f"s{i + 1}" for i in range(len(frame))])
    frame.to_csv(path, index=False)
    return path


def _values(x) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=float)


@pytest.mark.parametrize("case_id", IDS)
def test_measure_options_then_fixed_effect_pool(case_id: str, tmp_path: Path,
                                                capsys) -> None:
    case = CASES[case_id]
    argv = ["meta", str(_csv(case, tmp_path / "s.csv")), "--measure", case["measure"],
            "--method", "FE", "--format", "json"]
    for option in ("add", "to", "vtype"):
        if option in case:
            argv += [f"--{option}", str(case[option])]
    if case.get("drop00"):
        argv.append("--drop00")
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    yi, vi = _values(case["yi"]), _values(case["vi"])
    ok = np.isfinite(yi) & np.isfinite(vi)
    w = 1 / vi[ok]
    assert got["k"] == int(ok.sum())
    assert got["estimate"] == pytest.approx(np.sum(w * yi[ok]) / np.sum(w), rel=1e-9)
    assert got["se"] == pytest.approx(np.sqrt(1 / np.sum(w)), rel=1e-9)
    if not ok.all():
        assert "--drop00 left out" in err


def test_drop00_names_the_studies_left_out(tmp_path: Path, capsys) -> None:
    case = CASES["rates/IRD/drop00=TRUE"]
    code = main(["meta", str(_csv(case, tmp_path / "s.csv")), "--measure", "IRD",
                 "--drop00", "--format", "json"])
    _, err = capsys.readouterr()
    assert code == 0
    assert "left out 1 study with no events (or only events) in both groups: s3" in err


def test_unavailable_vtype_is_bad_input(tmp_path: Path, capsys) -> None:
    case = CASES["morris2008/SMCC/vtype=LS2"]
    code = main(["meta", str(_csv(case, tmp_path / "s.csv")), "--measure", "SMCC",
                 "--vtype", "HO"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "vtype 'HO' is not available for measure SMCC" in err


def test_missing_raw_column_is_named(tmp_path: Path, capsys) -> None:
    case = CASES["morris2008/SMCR"]
    path = _csv(case, tmp_path / "s.csv")
    pd.read_csv(path).drop(columns=["ri"]).to_csv(path, index=False)
    code = main(["meta", str(path), "--measure", "SMCR"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "'ri' not found" in err
