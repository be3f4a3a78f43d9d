"""The command-line defects a new user hit (issue 12, "Defects a new user hit"): one test
(or more) per defect, through the real ``fedsynth`` entry point."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.cli import main
from fedsynth.errors import InputError
from fedsynth.meta.metareg import fit_rma
from tests.conftest import load_json


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- meta-regression with as many coefficients as studies -------------------------------

DF0 = load_json("clidefects/metareg_df0.json")


def _df0_design():
    x = np.array([row["x"] for row in DF0["data"]], dtype=float)
    y = np.array([row["yi"] for row in DF0["data"]])
    v = np.array([row["vi"] for row in DF0["data"]])
    return y, v, np.column_stack([np.ones(3), x, x * x])


@pytest.mark.parametrize("method", ["REML", "DL", "PM"])
def test_df0_random_effects_refused_as_metafor(method):
    y, v, X = _df0_design()
    assert DF0[f"error_{method}"].startswith("Number of parameters to be estimated is larger")
    with pytest.raises(InputError, match="number of parameters to be estimated is larger "
                                         "than the number of observations"):
        fit_rma(y, v, X, method=method)


def test_df0_fixed_effect_fits_exactly_as_metafor():
    y, v, X = _df0_design()
    fit = fit_rma(y, v, X, method="FE")
    ref = DF0["FE"]
    np.testing.assert_allclose(fit.coef, ref["coef"], rtol=1e-6)
    np.testing.assert_allclose(fit.se, ref["se"], rtol=1e-6)
    assert fit.QE == 0.0 and fit.QE_df == 0 and fit.QEp == ref["QEp"]
    assert fit.I2 == ref["I2"] and fit.H2 == ref["H2"] and fit.R2 is None
    assert fit.QM == pytest.approx(ref["QM"], rel=1e-6)


def test_df0_cli_refuses_and_prints_no_qe(capsys, tmp_path):
    path = write(tmp_path, "g.csv", "study,yi,vi,g\nA,0.1,0.01,a\nB,0.3,0.02,b\nC,0.5,0.03,c\n")
    code, out, err = run(capsys, "meta", path, "--moderator", "g")
    assert code == 2 and out == ""
    assert "3 coefficients" in err and "3 studies" in err and "--method FE" in err
    code, out, err = run(capsys, "meta", path, "--moderator", "g", "--method", "FE")
    assert code == 0 and "QE(df = 0) = 0.0000" in out and "-0.0000" not in out
    assert "R^2 = NA%" in out


# --- --cumulative-by states the order and shows the ordering column ---------------------

def test_cumulative_by_says_the_order_and_shows_the_column(capsys, tmp_path):
    path = write(tmp_path, "y.csv", "study,yi,vi,year\nA,0.1,0.01,2004\nB,0.3,0.02,1999\n"
                                    "C,0.5,0.03,2010\nD,0.2,0.02,2001\n")
    code, out, _ = run(capsys, "meta", path, "--cumulative-by", "year")
    assert code == 0
    assert "in the given order" not in out
    assert "increasing order of year" in out
    lines = out[out.index("Cumulative meta-analysis"):].splitlines()
    assert lines[1].split()[:3] == ["added", "year", "k"]
    assert [ln.split()[:2] for ln in lines[2:6]] == [["B", "1999"], ["D", "2001"],
                                                    ["A", "2004"], ["C", "2010"]]
    code, out, _ = run(capsys, "meta", path, "--cumulative-by", "year", "--format", "json")
    import json

    cum = json.loads(out)["cumulative"]
    assert cum["order_by"] == "year" and cum["order_values"] == ["1999", "2001", "2004", "2010"]
    assert cum["labels"] == ["B", "D", "A", "C"]


# --- numbers in messages -------------------------------------------------------------

def test_show_value_renders_numbers_plainly():
    from fedsynth.errors import show_value

    assert show_value(np.float64(-1.0)) == "-1.0"
    assert show_value(np.int64(3)) == "3"
    assert show_value(np.float64("nan")) == "nan"
    assert show_value(np.bool_(True)) == "True"
    assert show_value("a b") == "'a b'"
    assert show_value(np.str_("x")) == "'x'"


def test_every_fedsynth_error_shows_plain_numbers():
    # the net under any message built with {value!r} of a numpy scalar
    s = np.str_("Smith")
    message = str(InputError(f"vi: {np.float64(-1.0)!r}, k {np.int64(2)!r}, {s!r}, "
                             f"{np.True_!r}"))
    assert message == "vi: -1.0, k 2, 'Smith', True"
    assert "np." not in message


@pytest.mark.parametrize("call", [
    lambda: fit_rma([0.1, np.inf], [0.01, 0.02]),
    lambda: fit_rma([0.1, 0.2], [0.01, -1.0]),
    lambda: __import__("fedsynth.meta.bayes", fromlist=["bayes_pool"]).bayes_pool(
        np.array([0.1, 0.2]), np.array([0.01, -1.0])),
    lambda: __import__("fedsynth.meta.mh", fromlist=["mantel_haenszel"]).mantel_haenszel(
        ai=np.array([1.5, 2.0]), bi=np.array([3.0, 4.0]), ci=np.array([1.0, 2.0]),
        di=np.array([5.0, 6.0])),
])
def test_library_messages_have_no_numpy_spelling(call):
    with pytest.raises(InputError) as info:
        call()
    assert "np.float64" not in str(info.value) and "np." not in str(info.value)


def test_cli_message_of_a_bad_count_is_plain(capsys, tmp_path):
    path = write(tmp_path, "c.csv", "study,ai,bi,ci,di\nA,1.5,3,1,5\nB,2,4,2,6\n")
    code, out, err = run(capsys, "meta", path, "--measure", "OR")
    assert code == 2 and out == "" and "np." not in err and "1.5" in err


# --- --plot-measure is validated against the vocabulary --------------------------------

def test_unknown_plot_measure_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["meta", "--example", "--forest", str(tmp_path / "f.png"),
              "--plot-measure", "ORR"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'ORR' is not a known measure" in err and "HR" in err and "SMD" in err
    assert not (tmp_path / "f.png").exists()


def test_plot_measure_is_case_insensitive(capsys, tmp_path):
    code, _, _ = run(capsys, "meta", "--example", "--forest", tmp_path / "f.png",
                     "--plot-measure", "or")
    assert code == 0 and (tmp_path / "f.png").exists()


# --- duplicate study labels -----------------------------------------------------------

def test_duplicate_labels_are_numbered_as_metafor_with_a_note(capsys, tmp_path):
    path = write(tmp_path, "d.csv", "study,yi,vi\nA,0.1,0.01\nB,0.3,0.02\nA,0.5,0.03\n"
                                    "B,0.2,0.02\nC,0.1,0.1\n")
    code, out, err = run(capsys, "meta", path, "--diagnostics", "--format", "json")
    assert code == 0
    assert "'A' (rows 1, 3)" in err and "'B' (rows 2, 4)" in err and "--label" in err
    import json

    labels = json.loads(out)["leave_one_out"]["labels"]
    assert labels == ["A.1", "B.1", "A.2", "B.2", "C"]


def test_bcg_labels_match_metafor_slab(capsys, tmp_path):
    # metafor: rma(yi, vi, data = dat.bcg, slab = author)$slab
    ref = DF0["bcg_slab"]
    cases = {c["id"]: c for c in load_json("metafor_public.json")["pooling"]}
    case = cases["bcg/OR/REML/z"]
    rows = ["study,yi,vi"] + [f'"{lab}",{y!r},{v!r}' for lab, y, v in
                              zip(case["labels"], case["yi"], case["vi"])]
    path = write(tmp_path, "bcg.csv", "\n".join(rows) + "\n")
    code, out, _ = run(capsys, "meta", path, "--diagnostics", "--format", "json")
    import json

    assert code == 0 and json.loads(out)["blup"]["labels"] == ref


def test_same_label_in_different_analyses_is_not_renamed(capsys, tmp_path):
    path = write(tmp_path, "d.csv", "outcome,study,yi,vi\nx,A,0.1,0.01\nx,B,0.3,0.02\n"
                                    "y,A,0.5,0.03\ny,B,0.2,0.02\n")
    code, _, err = run(capsys, "meta", path, "--by", "outcome")
    assert code == 0 and "repeated" not in err
    path = write(tmp_path, "e.csv", "outcome,study,yi,vi\nx,A,0.1,0.01\nx,A,0.3,0.02\n"
                                    "y,A,0.5,0.03\ny,B,0.2,0.02\n")
    code, _, err = run(capsys, "meta", path, "--by", "outcome")
    assert code == 0 and "'A' in analysis 'x' (rows 1, 2)" in err


# --- --measure maps raw columns as escalc's arguments --------------------------------

RAW = "study,{}\nA,4,119,11,128\nB,6,300,29,274\nC,3,228,11,209\nD,62,13536,248,12619\n"


def test_measure_maps_2x2_columns(capsys, tmp_path):
    named = write(tmp_path, "n.csv", RAW.format("ai,bi,ci,di"))
    mine = write(tmp_path, "m.csv", RAW.format("tpos,tneg,cpos,cneg"))
    _, ref, _ = run(capsys, "meta", named, "--measure", "OR", "--format", "json")
    code, out, err = run(capsys, "meta", mine, "--measure", "OR", "--ai", "tpos", "--bi",
                         "tneg", "--ci", "cpos", "--di", "cneg", "--format", "json")
    assert code == 0 and out == ref


@pytest.mark.parametrize("measure,names", [
    ("SMD", ["m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i"]),
    ("MD", ["m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i"]),
    ("ZCOR", ["ri", "ni"]),
    ("PLO", ["xi", "ni"]),
    ("IRR", ["x1i", "t1i", "x2i", "t2i"]),
])
def test_measure_maps_every_escalc_argument(capsys, tmp_path, measure, names):
    values = {"m1i": [1.0, 1.2, 0.8], "sd1i": [2, 2, 1.5], "n1i": [30, 40, 25],
              "m2i": [1.5, 1.0, 1.1], "sd2i": [2, 2.2, 1.4], "n2i": [30, 35, 26],
              "ri": [0.3, 0.45, 0.2], "ni": [50, 80, 60], "xi": [5, 9, 12],
              "x1i": [5, 9, 12], "t1i": [100, 150, 120], "x2i": [8, 7, 15],
              "t2i": [110, 140, 130]}
    def csv(cols):
        rows = [",".join(["study", *cols])]
        for i in range(3):
            rows.append(",".join([f"S{i}", *(str(values[n][i]) for n in names)]))
        return "\n".join(rows) + "\n"
    named = write(tmp_path, "n.csv", csv(names))
    mine = write(tmp_path, "m.csv", csv([f"my_{n}" for n in names]))
    _, ref, _ = run(capsys, "meta", named, "--measure", measure, "--format", "json")
    argv = ["meta", mine, "--measure", measure, "--format", "json"]
    for n in names:
        argv += [f"--{n}", f"my_{n}"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out == ref


def test_raw_column_errors_name_the_users_column(capsys, tmp_path):
    mine = write(tmp_path, "m.csv", RAW.format("tpos,tneg,cpos,cneg"))
    code, _, err = run(capsys, "meta", mine, "--measure", "OR", "--ai", "tpos", "--bi",
                       "tneg", "--ci", "cpos", "--di", "nope")
    assert code == 2 and "'nope' (given by --di) not found" in err
    code, _, err = run(capsys, "meta", mine, "--ai", "tpos")
    assert code == 2 and "need --measure" in err
    code, _, err = run(capsys, "meta", mine, "--measure", "OR", "--m1i", "tpos",
                       "--method", "MH")
    assert code == 2 and "--m1i: not used by --method MH" in err
    bad = write(tmp_path, "b.csv", "study,tpos,tneg,cpos,cneg\nA,x,1,2,3\nB,1,2,3,4\n")
    code, _, err = run(capsys, "meta", bad, "--measure", "OR", "--ai", "tpos", "--bi",
                       "tneg", "--ci", "cpos", "--di", "cneg")
    assert code == 2 and "column 'tpos' (--ai)" in err


# --- CSV dialects, NA cells ------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fedsynth import tabular  # noqa: E402

COMMA = "study,yi,vi\nA,0.12,0.01\nB,0.3,0.02\nC,-0.1,0.015\n"


@pytest.mark.parametrize("text,note", [
    ("study;yi;vi\nA;0,12;0,01\nB;0,3;0,02\nC;-0,1;0,015\n", "semicolon-separated, decimal comma"),
    ("study\tyi\tvi\nA\t0.12\t0.01\nB\t0.3\t0.02\nC\t-0.1\t0.015\n", "tab-separated"),
    ("study\tyi\tvi\nA\t0,12\t0,01\nB\t0,3\t0,02\nC\t-0,1\t0,015\n",
     "tab-separated, decimal comma"),
    ("study|yi|vi\nA|0.12|0.01\nB|0.3|0.02\nC|-0.1|0.015\n", "pipe-separated"),
    ('study;yi;vi\n"Smith; Jones";0.12;0.01\nB;0.3;0.02\nC;-0.1;0.015\n', "semicolon"),
])
def test_other_dialects_are_detected(capsys, tmp_path, text, note):
    ref = write(tmp_path, "ref.csv", COMMA)
    path = write(tmp_path, "x.csv", text)
    _, expected, _ = run(capsys, "meta", ref, "--format", "json")
    code, out, err = run(capsys, "meta", path, "--format", "json")
    assert code == 0 and out == expected
    assert note in err


def test_sep_and_decimal_options(capsys, tmp_path):
    ref = write(tmp_path, "ref.csv", COMMA)
    _, expected, _ = run(capsys, "meta", ref, "--format", "json")
    # the options name the dialect instead of detecting it
    path = write(tmp_path, "x.csv", "study;yi;vi\nA;0,12;0,01\nB;0,3;0,02\nC;-0,1;0,015\n")
    code, out, _ = run(capsys, "meta", path, "--sep", ";", "--decimal", ",", "--format",
                       "json")
    assert code == 0 and out == expected
    code, out, _ = run(capsys, "meta", path, "--sep", "semicolon", "--format", "json")
    assert code == 0 and out == expected
    tab = write(tmp_path, "t.tsv", COMMA.replace(",", "\t"))
    code, out, _ = run(capsys, "meta", tab, "--sep", "tab", "--format", "json")
    assert code == 0 and out == expected
    code, _, err = run(capsys, "meta", ref, "--sep", ",", "--decimal", ",")
    assert code == 2 and "--decimal ','" in err
    with pytest.raises(SystemExit):
        main(["meta", ref, "--sep", "x"])
    assert "'x' is not a separator" in capsys.readouterr().err


def test_wrong_separator_hints_at_the_right_one(capsys, tmp_path):
    path = write(tmp_path, "x.csv", "study;yi;vi\nA;0,12;0,01\nB;0,3;0,02\n")
    code, out, err = run(capsys, "meta", path, "--sep", ",")
    assert code == 2 and out == ""
    assert "'study;yi;vi'" in err and "semicolon-separated" in err and "--sep ';'" in err


def test_na_cells_are_named_and_drop_na_drops_them(capsys, tmp_path):
    path = write(tmp_path, "na.csv", "study,yi,vi\nA,0.12,0.01\nB,NA,0.02\nC,-0.1,\n"
                                     "D,0.2,0.03\nE,0.1,0.02\n")
    code, out, err = run(capsys, "meta", path)
    assert code == 2 and out == ""
    assert "missing values in 2 row(s)" in err
    assert "row 2: column 'yi' is empty or NA" in err and "row 3: column 'vi'" in err
    assert "--drop-na" in err
    code, out, err = run(capsys, "meta", path, "--drop-na", "--format", "json")
    assert code == 0
    assert "--drop-na dropped 2 of 5 rows" in err and "row 2: column 'yi'" in err
    kept = write(tmp_path, "kept.csv", "study,yi,vi\nA,0.12,0.01\nD,0.2,0.03\nE,0.1,0.02\n")
    _, expected, _ = run(capsys, "meta", kept, "--format", "json")
    assert out == expected


def test_drop_na_keeps_file_row_numbers_in_later_messages(capsys, tmp_path):
    path = write(tmp_path, "na.csv", "study,yi,sei\nA,0.12,0.1\nB,NA,0.2\nC,0.1,-1\n")
    code, _, err = run(capsys, "meta", path, "--drop-na")
    assert code == 2 and "row 3 (study 'C')" in err


def test_na_in_raw_columns_and_groups(capsys, tmp_path):
    path = write(tmp_path, "r.csv", "study,ai,bi,ci,di\nA,4,119,11,128\nB,NA,300,29,274\n"
                                    "C,3,228,11,209\n")
    code, _, err = run(capsys, "meta", path, "--measure", "OR")
    assert code == 2 and "row 2: column 'ai' is empty or NA" in err


_cell = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda x: round(x, 4))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(_cell, _cell.map(abs)), min_size=2, max_size=12),
       dialect=st.sampled_from([(",", "."), (";", ","), (";", "."), ("\t", "."),
                                ("\t", ","), ("|", ".")]))
def test_dialect_detection_property(tmp_path_factory, rows, dialect):
    sep, mark = dialect
    lines = [sep.join(["study", "yi", "vi"])]
    for i, (y, v) in enumerate(rows):
        cells = [f"{y:.4f}", f"{v + 0.001:.4f}"]
        if mark == ",":
            cells = [c.replace(".", ",") for c in cells]
        lines.append(sep.join([f"S{i}", *cells]))
    path = tmp_path_factory.mktemp("d") / "x.csv"
    path.write_text("\n".join(lines) + "\n")
    found = tabular.detect_dialect(path)
    assert (found.sep, found.decimal) == (sep, mark)
    frame = tabular.read_csv(path, sep=None, decimal=None)
    np.testing.assert_allclose(frame["yi"].to_numpy(), [round(y, 4) for y, _ in rows])
