"""``fedsynth meta``: options, output formats, --by batching and error handling."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from fedsynth.cli import main
from fedsynth.meta import meta_analysis
from tests.conftest import load_json

SEED_YI = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
SEED_SEI = [0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13]
KEYS = ["k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2", "Q",
        "Q_df", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik", "tau2_ci", "I2_ci",
        "H2_ci", "method", "test", "level"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def grouped_csv(tmp_path):
    """Three analyses of the bcg, hackshaw and seed cases of the reference, one CSV."""
    cases = {c["id"]: c for c in load_json("metafor_public.json")["pooling"]}
    rows = ["outcome,study,yi,vi"]
    picked = {"bcg": cases["bcg/OR/REML/z"], "hack": cases["hackshaw1998/REML/z"],
              "seed": cases["seed8/REML/z"]}
    for name, case in picked.items():
        for lab, y, v in zip(case["labels"], case["yi"], case["vi"]):
            rows.append(f'{name},"{lab}",{y!r},{v!r}')
    return write(tmp_path, "all.csv", "\n".join(rows) + "\n"), picked


def test_example_prints_full_summary(capsys):
    code, out, err = run(capsys, "meta", "--example")
    assert code == 0 and err == ""
    for needle in ("Random-Effects Model (k = 8; tau^2 estimator: REML",
                   "Q(df = 7) = 5.4316", "I^2", "H^2", "Q-profile", "0.2458", "pi.lb"):
        assert needle in out


def test_example_json_matches_api(capsys):
    code, out, _ = run(capsys, "meta", "--example", "--method", "dl", "--format", "json")
    assert code == 0
    got = json.loads(out)
    # the reference keys come first and in order; other options may append sections
    assert list(got)[: len(KEYS)] == KEYS
    ref = meta_analysis(SEED_YI, [s * s for s in SEED_SEI], method="DL").to_dict()
    assert {k: got[k] for k in KEYS} == ref
    assert got["tau2"] == 0 and got["Q_df"] == 7 and got["I2"] == 0
    assert got["estimate"] == pytest.approx(0.2458, abs=5e-5)


def test_fe_json_has_null_prediction_interval(capsys):
    code, out, _ = run(capsys, "meta", "--example", "--method", "FE", "--format", "json")
    got = json.loads(out)
    assert got["pi_lb"] is None and got["tau2_ci"] is None and got["se_tau2"] is None


def test_by_pools_groups_in_one_batch_json(capsys, grouped_csv, monkeypatch):
    path, picked = grouped_csv
    import fedsynth.meta as synthesis

    calls = []
    real_pool = synthesis.pool

    def counting_pool(*a, **kw):
        calls.append(np.shape(a[0]))
        return real_pool(*a, **kw)

    monkeypatch.setattr(synthesis, "pool", counting_pool)
    code, out, _ = run(capsys, "meta", path, "--by", "outcome", "--format", "json")
    assert code == 0
    assert calls == [(3, max(len(c["yi"]) for c in picked.values()))]  # ONE batch call
    got = json.loads(out)
    assert isinstance(got, list) and [g["analysis"] for g in got] == ["bcg", "hack", "seed"]
    for obj, (name, case) in zip(got, picked.items()):
        assert list(obj)[: len(KEYS) + 1] == ["analysis"] + KEYS
        for key, exp in case["expected"].items():
            if isinstance(exp, list):
                assert obj[key] == pytest.approx(exp, rel=1e-5)
            else:
                assert obj[key] == pytest.approx(exp, rel=1e-6, abs=1e-9), (name, key)


def test_by_csv_one_row_per_analysis(capsys, grouped_csv):
    path, picked = grouped_csv
    code, out, _ = run(capsys, "meta", path, "--by", "outcome", "--format", "csv",
                       "--method", "PM", "--test", "knha")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["analysis"] for r in rows] == ["bcg", "hack", "seed"]
    assert {"tau2_ci_lb", "tau2_ci_ub", "I2_ci_lb", "H2_ci_ub"} <= set(rows[0])
    assert rows[0]["method"] == "PM" and rows[0]["test"] == "knha"
    assert int(rows[2]["k"]) == 8
    # floats are written round-trip exact
    case = picked["seed"]
    ref = meta_analysis(case["yi"], case["vi"], method="PM", test="knha")
    assert float(rows[2]["estimate"]) == ref.estimate
    assert float(rows[2]["tau2_ci_ub"]) == ref.tau2_ci.high


def test_by_table_prints_every_analysis(capsys, grouped_csv):
    path, _ = grouped_csv
    code, out, _ = run(capsys, "meta", path, "--by", "outcome")
    assert code == 0
    for name in ("Analysis: bcg", "Analysis: hack", "Analysis: seed"):
        assert name in out


def test_columns_options_and_sei(capsys, tmp_path):
    text = "name,effect,se\n" + "\n".join(
        f"S{i},{y},{s}" for i, (y, s) in enumerate(zip(SEED_YI, SEED_SEI)))
    path = write(tmp_path, "c.csv", text + "\n")
    code, out, _ = run(capsys, "meta", path, "--yi", "effect", "--sei", "se", "--label",
                       "name", "--level", "90", "--format", "json")
    assert code == 0
    got = json.loads(out)
    ref = meta_analysis(SEED_YI, [s * s for s in SEED_SEI], level=90).to_dict()
    assert {k: got[k] for k in KEYS} == ref and got["level"] == 90.0
    # vi column by default when present
    text = "yi,vi\n0.1,0.01\n0.3,0.02\n0.2,0.04\n"
    code, out, _ = run(capsys, "meta", write(tmp_path, "v.csv", text), "--format", "json")
    assert json.loads(out)["k"] == 3


@pytest.mark.parametrize("content,args,needles", [
    ("study,yi,sei\nA,0.1,0.1\nB,abc,0.2\n", [],
     ["column 'yi'", "row 2", "study 'B'", "'abc'", "not a number"]),
    ("study,yi,sei\nA,0.1,0.1\nB,,0.2\n", [], ["column 'yi'", "row 2", "is empty"]),
    ("study,yi,sei\nA,0.1,0.1\nB,0.2,-0.2\n", [], ["column 'sei'", "row 2", "-0.2"]),
    ("study,yi,vi\nA,0.1,0.1\nB,0.2,0\n", [], ["vi: study 'B'", "0.0"]),
    ("study,yi,sei\nA,0.1,0.1\n", ["--yi", "effect"],
     ["column 'effect' (given by --yi) not found", "available columns", "'study'"]),
    ("study,yi\nA,0.1\n", [], ["column 'vi' (or 'sei') not found", "--vi", "--sei"]),
    ("study,yi,sei\nA,0.1,0.1\n", ["--vi", "sei", "--sei", "sei"], ["give only one"]),
    ("study,yi,sei\nA,0.1,0.1\n", ["--by", "grp"], ["column 'grp' (given by --by)"]),
    ("", [], ["is empty"]),
])
def test_input_errors_exit_2_and_print_nothing(capsys, tmp_path, content, args, needles):
    path = write(tmp_path, "bad.csv", content)
    code, out, err = run(capsys, "meta", path, *args)
    assert code == 2
    assert out == ""
    for needle in needles:
        assert needle in err


def test_missing_file_and_no_input(capsys, tmp_path):
    code, out, err = run(capsys, "meta", str(tmp_path / "nope.csv"))
    assert code == 2 and out == "" and "does not exist" in err
    code, out, err = run(capsys, "meta")
    assert code == 2 and out == "" and "--example" in err
    code, out, err = run(capsys, "meta", "x.csv", "--example")
    assert code == 2 and "not both" in err


@pytest.mark.parametrize("args,needle", [
    (["--method", "XYZ"], "choose from 'FE', 'DL', 'HE', 'HS', 'SJ', 'ML', 'REML', 'EB', 'PM'"),
    (["--test", "wald"], "choose from 'z', 'knha', 't', 'adhoc'"),
    (["--format", "xml"], "choose from 'table', 'json', 'csv'"),
    (["--level", "120"], "--level: '120' must lie strictly between 0 and 100"),
    (["--level", "high"], "--level: 'high' is not a number"),
])
def test_bad_options_exit_2(capsys, args, needle):
    with pytest.raises(SystemExit) as exc:
        main(["meta", "--example", *args])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert needle in err


def test_console_script_end_to_end(tmp_path):
    """The real entry point in a subprocess: exit codes and streams."""
    ok = subprocess.run([sys.executable, "-m", "fedsynth", "meta", "--example", "--format",
                         "json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["k"] == 8
    bad = tmp_path / "bad.csv"
    bad.write_text("study,yi,sei\nA,x,0.1\n")
    fail = subprocess.run([sys.executable, "-m", "fedsynth", "meta", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert fail.returncode == 2 and fail.stdout == ""
    assert "column 'yi', row 1" in fail.stderr and "Traceback" not in fail.stderr


def test_bad_variance_of_a_single_unnamed_analysis_names_only_the_study(tmp_path, capsys):
    """One analysis without --by has no name: the message names the study, not "analysis ''"."""
    from fedsynth.cli import main

    path = tmp_path / "bad.csv"
    path.write_text("study,yi,vi\nA,0.1,0.01\nB,0.2,-0.02\n", encoding="utf-8")
    assert main(["meta", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "study 'B' has sampling variance -0.02" in captured.err
    assert "analysis ''" not in captured.err
