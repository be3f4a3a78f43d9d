"""Column-wise CSV text (fedsynth.tabular.float_cells/text_cells/csv_lines) equals csv.writer's.

``fedsynth meta --by --format csv`` writes its cells column by column (issue 17); the
text must be byte for byte what :class:`csv.writer` writes for the same records (floats
by ``repr``, None as an empty cell, strings quoted only where needed).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hs

from fedsynth.tabular import csv_lines, float_cells, text_cells


def _writer_cells(row: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _as_record(x: float):
    return x if math.isfinite(x) else None


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40))
def test_float_cells_are_repr_of_every_float(values):
    cells = float_cells(np.array(values, dtype=float))
    # one more (empty) cell: the csv module writes a row of one empty cell as ""
    want = _writer_cells([*(_as_record(x) for x in values), ""]).rstrip("\n")
    assert ",".join(cells) + "," == want


def test_float_cells_at_the_switch_to_scientific_notation():
    edges = [0.0, -0.0, 1e-4, -1e-4, np.nextafter(1e-4, 0), 9.999999999999999e-05, 1e-5,
             1.5e-5, 1e16, np.nextafter(1e16, 0), -1e16, 9007199254740993.0, 1e15, 5e-324,
             1.7976931348623157e308, 2.2250738585072014e-308, 95.0, 1.0, 0.1, 1 / 3,
             float("nan"), float("inf"), -float("inf"), 123456789.0, 1e22, 1e21]
    rng = np.random.default_rng(17)
    mags = 10.0 ** rng.integers(-330, 309, 20_000)
    with np.errstate(over="ignore", under="ignore"):
        more = (rng.uniform(-10, 10, 20_000) * mags).tolist()
    values = [float(v) for v in edges] + more
    assert float_cells(np.array(values)) == ["" if not math.isfinite(v) else repr(v)
                                             for v in values]


def test_float_cells_of_an_empty_column_and_a_2d_array():
    assert float_cells(np.array([])) == []
    assert float_cells(np.array([[1.0, 2.5], [np.nan, 3e-9]])) == ["1.0", "2.5", "", "3e-09"]


_TEXT = hs.text(alphabet=hs.sampled_from(list('ab ,;"\'\n\r\t\x00é²±') + ["\u2028"]),
                max_size=12)


@settings(max_examples=300, deadline=None)
@given(hs.lists(_TEXT, min_size=1, max_size=6), hs.lists(_TEXT, min_size=1, max_size=6))
def test_text_cells_and_lines_equal_csv_writer(first, second):
    n = min(len(first), len(second))
    first, second = first[:n], second[:n]
    got = csv_lines([text_cells(first), text_cells(second), float_cells(np.arange(n) / 7)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        zip(first, second, (np.arange(n) / 7).tolist()))
    assert got == buf.getvalue()


def test_csv_lines_of_no_rows():
    assert csv_lines([]) == ""
    assert csv_lines([[], []]) == ""
