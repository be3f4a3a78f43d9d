"""``fedsynth meta`` with --diagnostics, --subgroup, --moderator, --i2-threshold."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from fedsynth.cli import main
from tests.conftest import load_json

REF = load_json("metafor_public.json")
SUB = next(c for c in REF["subgroup"] if c["id"] == "bcg/OR")
MR = next(c for c in REF["meta_regression"] if c["id"] == "bcg/OR")
INF = next(c for c in REF["influence"] if c["id"] == "bcg/OR")


@pytest.fixture()
def bcg_csv(tmp_path):
    path = tmp_path / "bcg.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "yi", "vi", "alloc", "ablat", "const"])
        for row in zip(SUB["labels"], SUB["yi"], SUB["vi"], SUB["group"], MR["moderator"]):
            w.writerow([row[0], repr(row[1]), repr(row[2]), row[3], row[4], 1])
    return path


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_every_section_with_reference_names(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--diagnostics", "--subgroup", "alloc",
                          "--moderator", "ablat", "--format", "json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    for key in ("heterogeneity", "leave_one_out", "influence", "blup", "publication_bias",
                "subgroup", "meta_regression"):
        assert key in d, key
    assert d["heterogeneity"]["flagged"] is True and d["heterogeneity"]["level"] == "strong"
    for field in INF["expected"]:
        assert d["influence"][field] == pytest.approx(INF["expected"][field], rel=1e-6)
    assert set(REF["blup"][0]["expected"]) <= set(d["blup"])
    assert set(REF["leave_one_out"][0]["expected"]) <= set(d["leave_one_out"])
    assert set(REF["publication_bias"][0]["expected"]) <= set(d["publication_bias"])
    for field in ("QM", "QMp", "QE", "tau2", "R2", "knha_F"):
        assert d["meta_regression"][field] == pytest.approx(MR["expected"][field], rel=1e-6)
    assert d["subgroup"]["common_tau2_QM"] == pytest.approx(
        SUB["expected"]["common_tau2_QM"], rel=1e-6)


def test_heterogeneity_always_present_and_threshold_option(bcg_csv, capsys):
    code, out, _ = run(["meta", str(bcg_csv), "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["heterogeneity"]["flagged"] and "influence" not in d
    # a threshold above the upper CI bound of I^2: only the PI rule can flag
    code, out, _ = run(["meta", str(bcg_csv), "--format", "json", "--i2-threshold", "99",
                        "--null-value", "-5"], capsys)
    d = json.loads(out)
    assert not d["heterogeneity"]["flagged"] and d["heterogeneity"]["i2_threshold"] == 99


def test_table_prints_readable_blocks(bcg_csv, capsys):
    code, out, _ = run(["meta", str(bcg_csv), "--diagnostics", "--subgroup", "alloc",
                        "--moderator", "ablat", "--moderator", "alloc"], capsys)
    assert code == 0
    for title in ("Heterogeneity flag:", "FLAGGED (strong)", "Leave-one-out",
                  "Influence diagnostics", "Site-specific estimates (BLUPs",
                  "Small-study effects:", "Trim-and-fill (L0)",
                  "Subgroups by alloc", "Meta-regression (k = 13", "allocrandom"):
        assert title in out, title


def test_csv_gets_flat_flag_columns(bcg_csv, capsys):
    code, out, _ = run(["meta", str(bcg_csv), "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows[0]["heterogeneity_flagged"] == "True"
    assert rows[0]["heterogeneity_level"] == "strong"


@pytest.mark.parametrize("argv, message", [
    (["--subgroup", "nope"], "nope"),
    (["--moderator", "nope"], "nope"),
    (["--moderator", "const"], "moderator 'const': constant"),
    (["--moderator", "alloc", "--moderator", "ablat", "--moderator", "const"], "'const'"),
    (["--subgroup", "const"], "single level"),
])
def test_bad_columns_exit_2_and_print_nothing(bcg_csv, capsys, argv, message):
    code, out, err = run(["meta", str(bcg_csv), "--format", "json", *argv], capsys)
    assert code == 2 and out == "" and message in err


def test_bad_threshold_is_a_usage_error(bcg_csv):
    proc = subprocess.run([sys.executable, "-m", "fedsynth", "meta", str(bcg_csv),
                           "--i2-threshold", "120"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--i2-threshold" in proc.stderr and proc.stdout == ""


def test_cumulative_by_column(bcg_csv, capsys):
    order = next(c for c in REF["cumulative"] if c["id"] == "bcg/OR")
    rank = {site: pos for pos, site in enumerate(order["order"])}
    # a column that sorts the sites into the reference's order
    import pandas as pd

    frame = pd.read_csv(bcg_csv)
    frame["round"] = [rank[i] for i in range(len(frame))]
    frame.to_csv(bcg_csv, index=False)
    code, out, err = run(["meta", str(bcg_csv), "--cumulative-by", "round", "--format", "json"],
                         capsys)
    assert code == 0, err
    cum = json.loads(out)["cumulative"]
    assert cum["order"] == order["order"]
    for field in ("estimate", "se", "tau2", "I2"):
        assert cum[field] == pytest.approx(order["expected"][field], rel=1e-6, abs=1e-9)
    code, out, _ = run(["meta", str(bcg_csv), "--cumulative-by", "round"], capsys)
    assert "Cumulative meta-analysis" in out
    code, out, err = run(["meta", str(bcg_csv), "--cumulative-by", "nope"], capsys)
    assert code == 2 and "nope" in err and out == ""


def test_by_groups_each_get_flag_and_diagnostics(bcg_csv, capsys):
    code, out, err = run(["meta", str(bcg_csv), "--by", "alloc", "--diagnostics",
                          "--format", "json"], capsys)
    assert code == 0, err
    arr = json.loads(out)
    assert [a["analysis"] for a in arr] == ["random", "alternate", "systematic"]
    sub = {g["group"]: g for g in SUB["expected"]["groups"]}
    for a in arr:
        assert "heterogeneity" in a and "leave_one_out" in a and "influence" in a
        assert a["estimate"] == pytest.approx(sub[a["analysis"]]["estimate"], rel=1e-6)
        assert len(a["influence"]["rstudent"]) == a["k"]
    two = next(a for a in arr if a["k"] == 2)
    assert "publication_bias" not in two and two["notes"]
