"""``fedsynth meta --by --format csv`` built column by column: byte-identical output.

Issue 17: the ``--by`` CSV is formatted a column at a time
(:func:`fedsynth.cli.commands.meta._csv_columns`) instead of a dict per analysis and a
csv-module call per cell. The text must not change: the outputs of
tests/data/meta_by_csv/ were frozen with the code before the change
(tests/data/meta_by_csv/make_frozen.py) and are compared byte for byte, whole and
streamed (a difference confined to the last digits of numbers, from another change of
an estimator, is reported as a warning with what to regenerate; any other difference
fails); on the same cases and on random batches the column builder must write exactly
the bytes of the record path it replaces.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from fedsynth.cli import main
from fedsynth.cli.commands import meta

DATA = Path(__file__).resolve().parents[1] / "data" / "meta_by_csv"


def _frozen_module():
    spec = importlib.util.spec_from_file_location("make_frozen", DATA / "make_frozen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FROZEN = _frozen_module()


@pytest.mark.parametrize("case", sorted(FROZEN.CASES))
def test_output_is_byte_identical_to_the_frozen_output(case, monkeypatch):
    options, chunk = FROZEN.CASES[case]
    used = []
    real = meta._csv_columns
    monkeypatch.setattr(meta, "_csv_columns", lambda *a: used.append(1) or real(*a))
    got = FROZEN.run_case(DATA / "analyses.csv", options, chunk)
    want = (DATA / f"{case}.csv").read_text(encoding="utf-8")
    assert used, "the column builder was not used"
    if got.encode("utf-8") != want.encode("utf-8"):
        verdict = _diagnose(got, want)
        if not verdict.startswith("only numbers differ"):
            pytest.fail(verdict)
        # another branch's estimator (REML fast path, leave-one-out updates) moved the
        # last bits of some numbers: the text is the same, the numbers are not ours
        warnings.warn(verdict, stacklevel=1)


@pytest.mark.parametrize("case", sorted(FROZEN.CASES))
def test_columns_write_the_bytes_the_records_write(case, monkeypatch):
    """Whatever the estimators give: the column path's bytes are the record path's."""
    options, chunk = FROZEN.CASES[case]
    columns = FROZEN.run_case(DATA / "analyses.csv", options, chunk)
    monkeypatch.setattr(meta, "_csv_columns", lambda *a: None)    # main's record path
    assert FROZEN.run_case(DATA / "analyses.csv", options, chunk) == columns


def _diagnose(got: str, want: str) -> str:
    """Say whether only numbers moved in their last digits (an estimator changed) or text."""
    import csv
    import math

    rows_g, rows_w = list(csv.reader(io.StringIO(got))), list(csv.reader(io.StringIO(want)))
    first = next((i for i, (a, b) in enumerate(zip(rows_g, rows_w)) if a != b),
                 min(len(rows_g), len(rows_w)))
    where = (f"first difference in CSV row {first}:\n got  {rows_g[first:first + 1]}\n"
             f" want {rows_w[first:first + 1]}")
    if len(rows_g) != len(rows_w) or any(len(a) != len(b) for a, b in zip(rows_g, rows_w)):
        return "the CSV's shape changed; " + where
    worst = 0.0
    for a_row, b_row in zip(rows_g, rows_w):
        for a, b in zip(a_row, b_row):
            if a == b:
                continue
            try:
                x, y = float(a), float(b)
            except ValueError:
                return "a text cell changed (formatting, or a sentence's rounding); " + where
            worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
            if not math.isclose(x, y, rel_tol=1e-8, abs_tol=1e-12):
                return f"a number changed beyond 1e-8 (relative {worst:.1e}); " + where
    return (f"only numbers differ, in their last digits (max relative {worst:.1e}): an "
            "estimator or refit changed, not the CSV text. If that change is intended, "
            "rerun tests/data/meta_by_csv/make_frozen.py with the new code and record it "
            "in tests/data/README.md. " + where)


def test_the_frozen_input_is_what_the_script_writes(tmp_path):
    path = tmp_path / "analyses.csv"
    FROZEN.write_input(path)
    assert path.read_bytes() == (DATA / "analyses.csv").read_bytes()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    meta.add_arguments(parser)
    return parser


def _write(path: Path, rng: np.random.Generator, m: int) -> None:
    lines = ["analysis,study,yi,vi"]
    for i in range(m):
        k = int(rng.integers(1, 7))
        v = rng.uniform(1e-4, 0.3, k)
        y = rng.normal(rng.choice([0.0, 0.2, 5.0]), 1.0, k) * np.sqrt(v + rng.uniform(0, 1))
        lines += [f"g{i},{'x,' if j == 0 else ''}s{j},{a!r},{b!r}".replace("x,", '"x,"')
                  for j, (a, b) in enumerate(zip(y.tolist(), v.tolist()))]
    path.write_text("\n".join(lines) + "\n")


@settings(max_examples=12, deadline=None)
@given(m=hs.integers(2, 30), seed=hs.integers(0, 10_000),
       method=hs.sampled_from(["REML", "DL", "FE", "HS", "SJ", "EB"]),
       test=hs.sampled_from(["z", "t", "knha"]))
def test_columns_equal_the_records_path(tmp_path_factory, m, seed, method, test):
    path = tmp_path_factory.mktemp("cols") / "g.csv"
    _write(path, np.random.default_rng(seed), m)
    args = _parser().parse_args([str(path), "--by", "analysis", "--format", "csv",
                                 "--method", method, "--test", test])
    meta._resolve_defaults(args)
    data = meta.load_input(args)
    batch = meta.compute(args, data)
    columns = meta._csv_columns(args, data, batch)
    assert columns is not None
    keys, text = columns
    recs = meta.records(args, data, batch)
    assert keys == list(recs[0])
    assert text == meta._csv_rows(recs, keys)
    assert meta.render_csv(args, data, batch) == meta.records_csv(recs)


@pytest.mark.parametrize("extra", [["--diagnostics"], ["--fsn", "Rosenthal"], ["--regtest"]])
def test_options_that_add_columns_use_the_records(tmp_path, extra):
    path = tmp_path / "g.csv"
    _write(path, np.random.default_rng(3), 4)
    args = _parser().parse_args([str(path), "--by", "analysis", "--format", "csv", *extra])
    meta._resolve_defaults(args)
    data = meta.load_input(args)
    assert meta._csv_columns(args, data, meta.compute(args, data)) is None


def test_one_analysis_and_no_by_use_the_records(tmp_path):
    path = tmp_path / "g.csv"
    _write(path, np.random.default_rng(4), 1)
    for argv in ([str(path), "--by", "analysis", "--format", "csv"],
                 [str(path), "--format", "csv"]):
        args = _parser().parse_args(argv)
        meta._resolve_defaults(args)
        data = meta.load_input(args)
        assert meta._csv_columns(args, data, meta.compute(args, data)) is None
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["meta", *argv]) == 0
        assert buf.getvalue().count("\n") == 2


@settings(max_examples=200, deadline=None)
@given(pairs=hs.lists(hs.tuples(hs.integers(0, 5), hs.sampled_from(["a", "b", "c", "a.1"])),
                      min_size=1, max_size=40))
def test_repeated_pairs_and_positions_equal_pandas(pairs):
    import pandas as pd

    codes, _ = pd.factorize(pd.Series([c for c, _ in pairs]), sort=False)
    labels = np.array([lab for _, lab in pairs], dtype=object)
    table = pd.DataFrame({"code": codes, "label": labels})
    want = table.duplicated(["code", "label"], keep=False).to_numpy()
    assert (meta._repeated_pairs(codes, labels) == want).all()            # dense count
    assert (meta._repeated_pairs(codes, labels, pd.factorize(labels)[0]) == want).all()
    big = codes.astype(np.int64) * 10**9                                  # hashed
    assert (meta._repeated_pairs(big, labels) == want).all()
    want_pos = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    assert (meta._positions(codes) == want_pos).all()
    order = np.argsort(codes, kind="stable")          # the same groups, contiguous
    relabel, _ = pd.factorize(pd.Series(codes[order]), sort=False)
    assert (meta._positions(relabel) == want_pos[order]).all()


def test_repeated_labels_are_still_numbered(tmp_path, capsys):
    path = tmp_path / "g.csv"
    path.write_text("analysis,study,yi,vi\nA,x,0.1,0.01\nA,x,0.3,0.02\nA,y,0.2,0.03\n"
                    "B,x,0.5,0.01\nB,y,0.1,0.02\nA,z,0.0,0.05\n")
    args = _parser().parse_args([str(path), "--by", "analysis"])
    meta._resolve_defaults(args)
    data = meta.load_input(args)
    assert data.labels[0].tolist() == ["x.1", "x.2", "y", "z"]
    assert data.labels[1].tolist() == ["x", "y", "", ""]
    assert "study labels repeated: 'x' in analysis 'A' (rows 1, 2)" in capsys.readouterr().err
