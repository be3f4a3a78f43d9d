"""CSV input is size-checked before parsing: lines and cells above a documented limit are
refused with bounded memory (issue 10, smaller item), for ``fedsynth meta`` and for a
site's data, which share one reader (:func:`fedsynth.tabular.read_csv`).

Before the fix a 1 GB single-line CSV took 8.6 GB of memory in pandas.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsynth.tabular as tabular
from fedsynth.errors import InputError
from fedsynth.tabular import MAX_CELL_BYTES, MAX_LINE_BYTES, check_csv_size, read_csv
from site_agent.data import load_table

ROOT = Path(__file__).resolve().parents[2]

_PEAK_RSS = r"""
import resource, subprocess, sys
out = subprocess.run([sys.executable, "-m", "fedsynth", *sys.argv[1:]], capture_output=True,
                     text=True)
print(out.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "")
"""


def _huge_single_line(path: Path, size: int) -> Path:
    """A header, then one line of ``size`` bytes (sparse: no disk is written)."""
    with open(path, "wb") as handle:
        handle.write(b"yi,vi\n0.1,")
        handle.truncate(size)
    return path


@pytest.mark.parametrize("command", ["meta", "site"])
def test_a_1gb_single_line_csv_is_refused_with_bounded_memory(tmp_path, command):
    huge = _huge_single_line(tmp_path / "huge.csv", 1 << 30)
    args = ([command, str(huge)] if command == "meta" else
            ["site", "estimate", "--data", str(huge), "--spec",
             str(ROOT / "fedsynth" / "data" / "demo_spec.toml")])
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    code, peak_mib, message = out.stdout.strip().splitlines()
    assert int(code) == 2, out.stdout
    # the line's one cell passes its limit (256 KiB) first
    assert "huge.csv' line 2: a cell is longer than 256 KiB" in message, message
    assert "refused before parsing" in message
    # python + pandas + scipy imports are ~200 MB; the 1 GB line never is in memory
    assert int(peak_mib) < 400, f"peak RSS {peak_mib} MiB"


def test_site_and_meta_readers_share_the_limits(tmp_path):
    long_line = tmp_path / "long.csv"
    # many ordinary cells, one line above 1 MiB
    long_line.write_text("a,b\n" + ",".join(["9" * 100] * (MAX_LINE_BYTES // 100)) + "\n")
    with pytest.raises(InputError, match=r"data: .*long.csv' line 2: the line is longer"):
        load_table(long_line)
    with pytest.raises(InputError, match=r"file: .*long.csv' line 2: the line is longer"):
        read_csv(long_line)
    big_cell = tmp_path / "cell.tsv"
    big_cell.write_text("a\tb\n1\t2\n3\t" + "x" * (MAX_CELL_BYTES + 1) + "\n")
    with pytest.raises(InputError, match=r"line 3: a cell is longer than 256 KiB"):
        load_table(big_cell)
    # a quoted cell spanning many short lines is one cell (and one record)
    spanning = tmp_path / "spanning.csv"
    spanning.write_text('a,b\n1,"' + "note\n" * (MAX_CELL_BYTES // 5 + 10) + '"\n')
    with pytest.raises(InputError, match=r"line 2: a cell is longer"):
        read_csv(spanning)
    # within the limits: read as before (a quoted separator and newline inside a cell)
    fine = tmp_path / "fine.csv"
    fine.write_text('yi,vi,label\n0.1,0.01,"a, b"\n0.2,0.02,"two\nlines"\n')
    frame = read_csv(fine)
    assert list(frame["label"]) == ["a, b", "two\nlines"]


def test_exactly_at_the_limit_is_allowed():
    def check(text: bytes, line: int, cell: int) -> str:
        path = Path(f"/tmp/fedsynth-limit-{line}-{cell}.csv")
        path.write_bytes(text)
        try:
            check_csv_size(path, max_line=line, max_cell=cell)
            return "ok"
        except InputError as error:
            return str(error)
        finally:
            path.unlink()

    assert check(b"abc,de\n", 6, 3) == "ok"                 # line 6 bytes, cells 3 and 2
    assert "the line is longer than 5 bytes" in check(b"abc,de\n", 5, 3)
    assert "a cell is longer than 2 bytes" in check(b"abc,de\n", 6, 2)
    assert check(b"abc,de", 6, 3) == "ok"                   # no final newline


def _reference(data: bytes, sep: int, max_line: int, max_cell: int) -> str | None:
    """Byte-by-byte state machine: the rule check_csv_size vectorises."""
    quoted = False
    record = cell = 0
    for byte in data:
        if byte == 34:
            quoted = not quoted
        if not quoted and byte == 10:
            if record > max_line:
                return "line"
            if cell > max_cell:
                return "cell"
            record = cell = 0
            continue
        if not quoted and byte == sep:
            if cell > max_cell:
                return "cell"
            record += 1
            cell = 0
            if record > max_line:
                return "line"
            continue
        record += 1
        cell += 1
        if record > max_line:
            return "line"
        if cell > max_cell:
            return "cell"
    return None


def _limit_hit(path, max_line: int, max_cell: int, block: int) -> str | None:
    """Which limit ``check_csv_size`` reports ("line"/"cell"), None if none, read in
    blocks of ``block`` bytes."""
    original = tabular._BLOCK
    tabular._BLOCK = block
    try:
        check_csv_size(path, max_line=max_line, max_cell=max_cell)
        return None
    except InputError as error:
        return "line" if "the line" in str(error) else "cell"
    finally:
        tabular._BLOCK = original


@settings(max_examples=1000, deadline=None)
@given(text=st.lists(st.sampled_from([b"a", b"bb", b",", b"\n", b'"', b'""', b"ccc"]),
                     max_size=40).map(b"".join),
       max_line=st.integers(1, 12), max_cell=st.integers(1, 12),
       block=st.integers(1, 9))
def test_vectorised_check_agrees_with_a_byte_by_byte_reading(tmp_path_factory, text,
                                                             max_line, max_cell, block):
    path = tmp_path_factory.mktemp("csv") / "x.csv"
    path.write_bytes(text)
    expected = _reference(text, ord(","), max_line, max_cell)
    # quotes and records across block borders
    got = _limit_hit(path, max_line, max_cell, block)
    if expected is None:
        assert got is None
    else:
        assert got is not None          # which limit is hit first may differ at one byte


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from([b"a", b"bb", b",", b"\n", b"ccc", b"dddd"]),
                     max_size=60).map(b"".join),
       max_line=st.integers(1, 14), max_cell=st.integers(1, 14),
       block=st.integers(1, 11))
def test_quote_free_blocks_measured_by_lines_agree(tmp_path_factory, text, max_line,
                                                   max_cell, block):
    """Blocks without quotes take the lines-only path (issue 17); same verdicts."""
    path = tmp_path_factory.mktemp("csv") / "x.csv"
    path.write_bytes(text)
    expected = _reference(text, ord(","), max_line, max_cell)
    got = _limit_hit(path, max_line, max_cell, block)
    assert (got is None) == (expected is None), (text, got, expected)
