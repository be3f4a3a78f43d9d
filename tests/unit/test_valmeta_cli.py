"""``fedsynth valmeta``: options, missing cells, notes, output formats and input errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedsynth.cli import main
from tests.conftest import DATA_DIR

EUROSCORE = str(DATA_DIR / "valmeta" / "EuroSCORE.csv")
SYNTHETIC = str(DATA_DIR / "valmeta" / "synthetic_validations.csv")
C_ARGS = ["--cstat", "c.index", "--cstat-se", "se.c.index", "--cstat-cilb", "c.index.95CIl",
          "--cstat-ciub", "c.index.95CIu", "--N", "n", "--O", "n.events"]


def run(capsys, *argv):
    code = main(["valmeta", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, text, name="v.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_help_names_the_options_as_metamisc(capsys):
    with pytest.raises(SystemExit) as info:
        main(["valmeta", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--measure", "--cstat", "--cstat-se", "--cstat-cilb", "--cstat-ciub",
                   "--cstat-cilv", "--O ", "--E ", "--N ", "--Po ", "--Pe ", "--Po-se",
                   "--method", "--test", "--format", "--OE-se", "--EO", "--sd-LP", "--model"):
        assert option in out


def test_defaults_are_valmetas(capsys):
    code, out, _ = run(capsys, EUROSCORE, *C_ARGS, "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert (doc["measure"], doc["method"], doc["test"], doc["level"], doc["model"]) == (
        "cstat", "REML", "knha", 0.95, "normal/logit")


def test_measure_is_case_insensitive_and_level_accepts_percent(capsys):
    base = [EUROSCORE, "--O", "n.events", "--E", "e.events", "--N", "n", "--format", "json"]
    a = json.loads(run(capsys, "--measure", "oe", *base, "--level", "90")[1])
    b = json.loads(run(capsys, "--measure", "OE", *base, "--level", "0.9")[1])
    assert a == b and a["level"] == 0.9


def test_cilv_as_a_number_in_either_form_or_a_column(capsys, tmp_path):
    same = [json.loads(run(capsys, EUROSCORE, *C_ARGS, "--cstat-cilv", lv, "--format",
                           "json")[1]) for lv in ("0.95", "95")]
    assert same[0] == same[1]
    path = write(tmp_path, "study,c,lb,ub,lv\na,0.8,0.7,0.88,0.9\nb,0.75,0.7,0.8,95\n"
                           "c,0.7,0.6,0.79,0.95\n")
    doc = json.loads(run(capsys, path, "--cstat", "c", "--cstat-cilb", "lb", "--cstat-ciub",
                         "ub", "--cstat-cilv", "lv", "--format", "json")[1])
    from fedsynth.meta.valmeta import valmeta

    api = valmeta(cstat=[0.8, 0.75, 0.7], cstat_cilb=[0.7, 0.7, 0.6],
                  cstat_ciub=[0.88, 0.8, 0.79], cstat_cilv=[0.9, 0.95, 0.95])
    assert doc["estimate"] == pytest.approx(api.estimate, rel=1e-12)


def test_missing_cells_are_missing_values_and_rows_are_left_out_with_a_note(capsys):
    code, out, err = run(capsys, SYNTHETIC, "--cstat", "c", "--cstat-se", "c_se",
                         "--N", "n", "--O", "events", "--format", "json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert len(doc["studies"]) == 16 and doc["k"] == 8
    nulls = [i for i, s in enumerate(doc["studies"]) if s["theta"] is None]
    assert nulls == [4, 5, 6, 7, 8, 10, 11, 14] and len(doc["notes"]) == 8
    # Echo reports neither O nor Po (--Po not given): no Hanley-McNeil
    assert doc["notes"][0].startswith("row 5 (study 'Echo'): c-statistic 0.72 without a "
                                      "standard error")
    assert doc["studies"][1]["theta_se_source"] == "Newcombe (Method 4)"
    assert doc["labels"][:2] == ["Alpha", "Bravo"]


def test_table_output(capsys):
    code, out, _ = run(capsys, SYNTHETIC, "--measure", "OE", "--O", "events", "--E",
                       "e_events", "--N", "n")
    assert code == 0
    for needle in ("Meta-analysis of the total O:E ratio: 16 validations, 7 pooled, 9 left "
                   "out", "Random-Effects Model (k = 7; tau^2 estimator: REML",
                   "Summary Total O:E ratio with 95% confidence and (approximate) 95% "
                   "prediction interval:", "Knapp-Hartung, t with df = 6",
                   "prediction interval with t, df = 5 (k - 2)",
                   "Test of Total O:E ratio = 1 (log(O:E) = 0)", "Notes:",
                   "- row 15 (study 'Oscar'): no observed events (O = 0)",
                   "- row 16 (study 'Papa'): E = 0, so the continuity correction"):
        assert needle in out, needle
    assert out.count("left out") == 1 + 9 + 9   # header, study rows, notes


def test_fixed_effect_and_identity_model(capsys):
    doc = json.loads(run(capsys, EUROSCORE, *C_ARGS, "--method", "fe", "--format", "json")[1])
    assert doc["test"] == "z" and doc["pi_lb"] is None and doc["pi_ub"] is None
    code, out, _ = run(capsys, EUROSCORE, *C_ARGS, "--method", "FE")
    assert code == 0 and "Fixed-Effect Model (k = 23)" in out and "pi.lb" not in out
    doc = json.loads(run(capsys, EUROSCORE, *C_ARGS, "--model", "normal/identity",
                         "--format", "json")[1])
    assert doc["scale"] == "identity" and doc["pooled"]["estimate"] == doc["estimate"]


def test_duplicate_labels_are_made_unique(capsys):
    doc = json.loads(run(capsys, EUROSCORE, *C_ARGS, "--format", "json")[1])
    assert doc["labels"].count("Wang") == 1 and "Wang.1" in doc["labels"]
    doc = json.loads(run(capsys, EUROSCORE, *C_ARGS, "--slab", "n", "--format", "json")[1])
    assert doc["labels"][0] == "5553"


@pytest.mark.parametrize("argv, message", [
    ([EUROSCORE, "--cstat", "auc"],
     "column 'auc' (given by --cstat) not found in"),
    ([EUROSCORE, "--measure", "OE", "--O", "n.events", "--cstat", "c.index"],
     "--cstat: is an input of --measure cstat, not of --measure OE"),
    ([EUROSCORE, "--cstat", "c.index", "--E", "e.events"],
     "--E: is an input of --measure OE, not of --measure cstat"),
    ([EUROSCORE, "--cstat", "c.index", "--OE-cilv", "0.95"],
     "--OE-cilv: is an input of --measure OE"),
    ([EUROSCORE, "--measure", "OE", "--O", "n.events", "--approx-se-method", "2"],
     "--approx-se-method: applies to --measure cstat only"),
    ([EUROSCORE], "no input columns given for --measure cstat"),
    ([EUROSCORE, "--cstat", "c.index", "--cstat-cilv", "1.5"],
     "--cstat-cilv: '1.5' must be a level such as 0.95"),
    ([EUROSCORE, "--cstat", "c.index", "--model", "normal/log"],
     "model: 'normal/log' is not available for measure 'cstat'"),
    ([EUROSCORE, "--cstat", "c.index"], "nothing to pool"),
    ([EUROSCORE, "--cstat", "n", "--N", "n"],
     "column 'n' (--cstat): row 1 (study 'Nashef') has value 5553.0, which must lie between "
     "0 and 1"),
    ([EUROSCORE, "--cstat", "c.index", "--cstat-se", "se.c.index", "--cstat-cilb", "Pe",
      "--cstat-ciub", "Po"],
     "column 'Pe' (--cstat-cilb), column 'Po' (--cstat-ciub): row 2 (study 'Biancari') has "
     "lower bound 0.045 above upper bound 0.0273"),
    ([EUROSCORE, "--measure", "OE", "--O", "n", "--N", "n.events"],
     "column 'n' (--O), column 'n.events' (--N): row 1 (study 'Nashef') has 5553.0 events "
     "among 232.0 patients"),
    ([EUROSCORE, "--cstat", "c.index", "--cstat-se", "multicentre"], "TRUE/FALSE"),
])
def test_bad_input_exits_2_naming_the_field(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_non_numeric_cell_names_column_row_study_and_value(capsys, tmp_path):
    path = write(tmp_path, "study,c,se\na,0.8,0.02\nb,0.7x,0.03\nc,NA,\n")
    code, out, err = run(capsys, path, "--cstat", "c", "--cstat-se", "se")
    assert code == 2 and out == ""
    assert "column 'c' (given by --cstat), row 2 (study 'b')" in err
    assert "value '0.7x' is not a number (line 3 of the file" in err


def test_missing_file_and_bad_choices(capsys):
    code, _, err = run(capsys, "/nonexistent/v.csv", "--cstat", "c")
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as info:
        main(["valmeta", EUROSCORE, "--measure", "brier"])
    assert info.value.code == 2
    assert "--measure: 'brier' is not cstat or OE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["valmeta", EUROSCORE, "--method", "BAYES"])
    assert info.value.code == 2


def test_real_process_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "fedsynth", "valmeta", EUROSCORE, "--measure",
                         "OE", "--O", "n.events", "--E", "e.events", "--N", "n", "--format",
                         "json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert round(json.loads(ok.stdout)["estimate"], 4) == 1.1076
    bad = subprocess.run([sys.executable, "-m", "fedsynth", "valmeta", EUROSCORE, "--cstat",
                          "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("fedsynth: error: column 'nope' (given by --cstat)")


def test_readme_shows_real_output(capsys):
    """The README's valmeta example is the command's output (an elided middle aside)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("<!-- section:valmeta -->")[1].split("<!-- /section:valmeta -->")[0]
    block = section.split("prints (real output; 17 of the 23 study rows elided")[1]
    shown = block.split("```\n")[1].splitlines()
    code, out, _ = run(capsys, EUROSCORE, *C_ARGS)
    lines = out.splitlines()
    cut = next(i for i, line in enumerate(shown) if line.startswith("..."))
    assert code == 0
    assert shown[:cut] == lines[:cut]
    assert shown[cut + 1:] == lines[len(lines) - (len(shown) - cut - 1):]
    assert len(lines) == len(shown) - 1 + 17
    doc = json.loads(run(capsys, EUROSCORE, "--measure", "OE", "--O", "n.events", "--E",
                         "e.events", "--N", "n", "--format", "json")[1])
    for key in ("estimate", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "tau2"):
        assert f'"{key}": {doc[key]!r}' in section
