"""``fedsynth site estimate``: JSON/table output, Parquet, privacy limits, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.cli import main

ROOT = Path(__file__).resolve().parents[2]
SITES = ROOT / "tests" / "data" / "sites_public"
EXPECTED = json.loads((SITES / "expected.json").read_text())
SPEC = ROOT / "fedsynth" / "data" / "demo_spec.toml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_what_the_site_sends(capsys) -> None:
    code, out, err = run(capsys, "site", "estimate", "--data", str(SITES / "mtf-alpha.csv"),
                         "--spec", str(SPEC), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n"] == 1800 and len(doc["analyses"]) == 15
    ref = EXPECTED["sites"]["mtf-alpha"]
    for name, sent in doc["analyses"].items():
        assert set(sent) == {"yi", "vi", "se", "n"}          # no cells, no details
        assert sent["yi"] == pytest.approx(ref[name]["yi"], rel=1e-6)
        assert sent["vi"] == pytest.approx(ref[name]["vi"], rel=1e-6)


def test_privacy_guard_applies_to_the_small_site(capsys) -> None:
    # mtf-foxtrot has a 2x2 cell of 4: with the default min_cell_count=5 the crude table
    # and its siblings are refused; with a limit of 4 they are sent.
    path = str(SITES / "mtf-foxtrot.csv")
    code, out, _ = run(capsys, "site", "estimate", "--data", path, "--spec", str(SPEC),
                       "--format", "json")
    analyses = json.loads(out)["analyses"]
    assert code == 0 and "refused" in analyses["crude_OR"]
    assert "disclosure" in analyses["crude_OR"]["refused"]
    assert "refused" in analyses["adjusted_logOR"]
    code, out, _ = run(capsys, "site", "estimate", "--data", path, "--spec", str(SPEC),
                       "--format", "json", "--min-cell-count", "4")
    assert "yi" in json.loads(out)["analyses"]["crude_OR"]
    code, out, _ = run(capsys, "site", "estimate", "--data", path, "--spec", str(SPEC),
                       "--format", "json", "--min-n", "100")
    assert all("refused" in a for a in json.loads(out)["analyses"].values())


def test_table_output(capsys) -> None:
    code, out, err = run(capsys, "site", "estimate", "--data", str(SITES / "mtf-foxtrot.csv"),
                         "--spec", str(SPEC))
    assert code == 0, err
    assert "logHR_efron" in out and "refused: suppressed" in out and "min_cell_count=5" in out


def test_reads_parquet_and_refusals_of_estimators(tmp_path: Path, capsys) -> None:
    frame = pd.read_csv(SITES / "mtf-bravo.csv")
    frame.loc[:9, "age"] = None
    frame.to_parquet(tmp_path / "site.parquet")
    spec = tmp_path / "spec.toml"
    spec.write_text('[[analysis]]\nname = "adj"\nestimator = "logistic"\noutcome = "outcome"\n'
                    'exposure = "treated"\ncovariates = ["age"]\n\n[[analysis]]\nname = "x"\n'
                    'estimator = "brier"\noutcome = "outcome"\nscore = "no_such_column"\n')
    code, out, err = run(capsys, "site", "estimate", "--data", str(tmp_path / "site.parquet"),
                         "--spec", str(spec), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["analyses"]["adj"]["n"] == len(frame) - 10
    assert doc["analyses"]["x"] == {"refused": "the data has no column 'no_such_column'"}


@pytest.mark.parametrize("args,words", [
    (["--data", "missing.csv"], ["file not found", "missing.csv"]),
    (["--spec", "nospec.toml"], ["file not found", "nospec.toml"]),
    (["--min-cell-count", "0"], ["min_cell_count", "0"]),
    (["--min-n", "-3"], ["min_n"]),
])
def test_bad_input_exit_2_and_no_stdout(capsys, args, words) -> None:
    argv = {"--data": str(SITES / "mtf-alpha.csv"), "--spec": str(SPEC)}
    for key, value in zip(args[::2], args[1::2]):
        argv[key] = value
    flat = [x for pair in argv.items() for x in pair]
    code, out, err = run(capsys, "site", "estimate", *flat)
    assert code == 2 and out == ""
    for word in words:
        assert word in err


def test_bad_spec_and_bad_data_files(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[[analysis]]\nname = "a"\nestimator = "logistic"\noutcome = "y"\n')
    code, out, err = run(capsys, "site", "estimate", "--data", str(SITES / "mtf-alpha.csv"),
                         "--spec", str(spec))
    assert code == 2 and out == "" and "'a'" in err and "'exposure'" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, out, err = run(capsys, "site", "estimate", "--data", str(empty), "--spec",
                         str(SPEC))
    assert code == 2 and out == "" and "empty" in err
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n")
    code, out, err = run(capsys, "site", "estimate", "--data", str(dup), "--spec", str(SPEC))
    assert code == 2 and "'a' twice" in err
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    code, out, err = run(capsys, "site", "estimate", "--data", str(bad), "--spec", str(SPEC))
    assert code == 2 and "Parquet" in err
    code, out, err = run(capsys, "site", "estimate", "--data", str(tmp_path), "--spec",
                         str(SPEC))
    assert code == 2 and "directory" in err


def test_console_entry_point(tmp_path: Path) -> None:
    # The real process, as a site operator runs it.
    proc = subprocess.run([sys.executable, "-m", "fedsynth", "site", "estimate", "--data",
                           str(SITES / "mtf-charlie.csv"), "--spec", str(SPEC), "--format",
                           "json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == EXPECTED["sites"]["mtf-charlie"]["n"]


def test_load_table_formats(tmp_path: Path) -> None:
    from fedsynth.errors import InputError
    from site_agent.data import load_table

    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, None]})
    (tmp_path / "bom.csv").write_bytes("\ufeffa,b\n1,0.5\n2,\n".encode())
    pd.testing.assert_frame_equal(load_table(tmp_path / "bom.csv"), frame)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(load_table(tmp_path / "t.tsv"), frame)
    frame.to_parquet(tmp_path / "noext")            # sniffed by Parquet's magic bytes
    pd.testing.assert_frame_equal(load_table(tmp_path / "noext"), frame)
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n1,2,3,4\n")
    with pytest.raises(InputError) as info:
        load_table(tmp_path / "ragged.csv")
    assert "ragged.csv" in str(info.value) and "not valid CSV" in str(info.value)
    (tmp_path / "latin.csv").write_bytes("a,b\n\xe9,1\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        load_table(tmp_path / "latin.csv")


def test_config_applies_site_limits_policy_and_data(tmp_path: Path, capsys) -> None:
    import shutil

    shutil.copy(SITES / "mtf-foxtrot.csv", tmp_path / "foxtrot.csv")
    (tmp_path / "policy.toml").write_text(
        '[policy]\nestimators = ["two_by_two", "two_group", "auc"]\n')
    (tmp_path / "site.toml").write_text(
        'name = "mtf-foxtrot"\ncoordinator = "127.0.0.1:50051"\ninsecure = true\n'
        'policy = "policy.toml"\n[data]\npath = "foxtrot.csv"\n'
        '[privacy]\nmin_cell_count = 3\nmin_n = 10\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(capsys, "site", "estimate", "--config", str(tmp_path / "site.toml"),
                         "--spec", str(SPEC), "--format", "json")
    assert code == 0, err
    analyses = json.loads(out)["analyses"]
    # min_cell_count = 3 from site.toml: the cell of 4 may leave.
    assert analyses["crude_OR"]["yi"] == pytest.approx(
        EXPECTED["sites"]["mtf-foxtrot"]["crude_OR"]["yi"], rel=1e-6)
    # The policy forbids the Cox estimator: refused without being computed.
    assert "site policy" in analyses["logHR_efron"]["refused"]
    assert "yi" in analyses["auc"]
    # Explicit flags override site.toml.
    code, out, _ = run(capsys, "site", "estimate", "--config", str(tmp_path / "site.toml"),
                       "--spec", str(SPEC), "--format", "json", "--min-cell-count", "5")
    assert "refused" in json.loads(out)["analyses"]["crude_OR"]
    # A dry run writes no state (no release history, no approvals).
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_data_and_no_config(capsys) -> None:
    code, out, err = run(capsys, "site", "estimate", "--spec", str(SPEC))
    assert code == 2 and out == "" and "--data" in err
