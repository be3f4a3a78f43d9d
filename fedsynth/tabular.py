"""Reading and validating CSV input: the one CSV reader of fedsynth.

Every error is an :class:`fedsynth.errors.InputError` that names the file, the column, the
row and the offending value, so a user can fix a spreadsheet without reading a traceback.
Rows are numbered as a spreadsheet shows them: data row 1 is line 2 of the file (line 1
holds the header).

Both ``fedsynth meta FILE.csv`` and the site's data loading (:mod:`site_agent.data`) read
CSV through :func:`read_csv`, which first checks the file's shape in fixed-size blocks
(:func:`check_csv_size`): a line longer than :data:`MAX_LINE_BYTES` or a cell longer than
:data:`MAX_CELL_BYTES` is refused *before* any parser sees the file. A parser holds a whole
line (and a whole cell) in memory, and pandas needed 8.6 GB for one line of 1 GB; with the
check, memory stays bounded by the block size whatever the file holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.errors import InputError

__all__ = [
    "MAX_CELL_BYTES",
    "MAX_LINE_BYTES",
    "check_csv_size",
    "read_csv",
    "require_columns",
    "numeric_column",
    "text_column",
    "pick_column",
]

#: Longest line of a CSV file fedsynth reads (1 MiB): a line holds one patient or one
#: study; a megabyte is thousands of columns.
MAX_LINE_BYTES = 1 << 20
#: Longest cell (256 KiB), quotes included; a quoted cell may span lines, and is limited
#: as a whole.
MAX_CELL_BYTES = 256 << 10
_BLOCK = 1 << 20
_QUOTE, _NEWLINE = 34, 10


def _size(limit: int) -> str:
    if limit % (1 << 20) == 0:
        return f"{limit >> 20} MiB"
    if limit % 1024 == 0:
        return f"{limit >> 10} KiB"
    return f"{limit} bytes"


def _line_of(path: Path, position: int) -> int:
    """1-based line number of byte ``position`` (counted again, only for the message)."""
    line, done = 1, 0
    with open(path, "rb") as handle:
        while done < position:
            chunk = handle.read(min(_BLOCK, position - done))
            if not chunk:
                break
            line += chunk.count(b"\n")
            done += len(chunk)
    return line


def check_csv_size(path: str | os.PathLike, *, sep: str = ",", label: str = "file",
                   max_line: int = MAX_LINE_BYTES, max_cell: int = MAX_CELL_BYTES) -> None:
    """Refuse a CSV file with a line or a cell above the limits, before parsing it.

    The file is read in blocks of 1 MiB; in each, record boundaries (newlines outside
    quotes) and cell boundaries (separators or newlines outside quotes) are found with
    vectorised numpy operations, carrying the quote state and the current record's and
    cell's start across blocks, so memory stays bounded and a single 1 GB line is refused
    after reading ``max_line`` bytes of it. A line is a record: a quoted cell that spans
    physical lines makes its record longer.

    Parameters
    ----------
    path
        The CSV file.
    sep
        Cell separator (``","``, or ``"\t"`` for TSV).
    label
        What the file is, for the message (``file``, ``data``).
    max_line, max_cell
        Limits in bytes (:data:`MAX_LINE_BYTES`, :data:`MAX_CELL_BYTES`).

    Raises
    ------
    InputError
        A line or cell above its limit, naming the file, the line and the limit.
    """
    target = Path(path)
    sep_byte = ord(sep)
    offset = 0
    record_start = cell_start = 0
    quoted = 0

    def refuse(start: int, what: str, limit: int) -> None:
        raise InputError(
            f"{label}: {str(target)!r} line {_line_of(target, start)}: {what} is longer than "
            f"{_size(limit)}, the most fedsynth reads; refused before parsing (is this "
            "really a CSV file of patients or studies?)")

    with open(target, "rb") as handle:
        while chunk := handle.read(_BLOCK):
            data = np.frombuffer(chunk, dtype=np.uint8)
            newline = data == _NEWLINE
            cellend = newline | (data == sep_byte)
            if quoted or b'"' in chunk:        # quote handling only where quotes occur
                quote = data == _QUOTE
                # quote state before each byte: outside quotes when even
                inside = ((np.cumsum(quote, dtype=np.int64) - quote + quoted) & 1).astype(bool)
                quoted = int((quoted + int(quote.sum())) & 1)
                newline &= ~inside
                cellend &= ~inside
            for ends, start, limit, what in (
                    (np.flatnonzero(newline), record_start, max_line, "the line"),
                    (np.flatnonzero(cellend), cell_start, max_cell, "a cell")):
                if ends.size:
                    starts = np.empty_like(ends)
                    starts[0] = start - offset
                    starts[1:] = ends[:-1] + 1
                    bad = np.flatnonzero(ends - starts > limit)
                    if bad.size:
                        refuse(offset + int(starts[bad[0]]), what, limit)
                    start = offset + int(ends[-1]) + 1
                if offset + len(chunk) - start > limit:
                    refuse(start, what, limit)
                if what == "the line":
                    record_start = start
                else:
                    cell_start = start
            offset += len(chunk)


def read_csv(path: str | os.PathLike, *, sep: str = ",", label: str = "file",
             require_rows: bool = True, skipinitialspace: bool = True,
             strip_names: bool = True) -> pd.DataFrame:
    """Read a CSV file with a header row (size-checked first, see :func:`check_csv_size`).

    Cells are parsed by pandas (numbers become numbers); blank lines are skipped and empty
    cells become missing values, which :func:`numeric_column` reports. A UTF-8 byte-order
    mark is ignored.

    Parameters
    ----------
    path
        The file.
    sep
        Cell separator (``"\t"`` for TSV).
    label
        What the file is in messages (``file`` for ``fedsynth meta``, ``data`` for a site).
    require_rows
        Refuse a file with a header but no data rows.
    skipinitialspace
        Ignore spaces after a separator (``fedsynth meta``'s hand-written tables).
    strip_names
        Strip spaces around column names.

    Raises
    ------
    InputError
        The file does not exist, is not readable, is empty, has a line or cell above the
        size limits, names a column twice, has no data rows (``require_rows``) or is not
        valid UTF-8 CSV.
    """
    p = Path(path)
    where = f"{label}: {str(path)!r}"
    if not p.exists():
        raise InputError(f"{where} does not exist")
    if p.is_dir():
        raise InputError(f"{where} is a directory, not a CSV file")
    try:
        check_csv_size(p, sep=sep, label=label)
        with p.open("r", encoding="utf-8-sig", newline="") as handle:
            header = handle.readline()          # bounded: lines were checked above
        if not header.strip():
            raise InputError(f"{where} is empty (no header row)")
        names = [n.strip().strip('"') for n in header.rstrip("\r\n").split(sep)]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(f"{where} has the column {dup!r} twice")
        frame = pd.read_csv(p, sep=sep, encoding="utf-8-sig",
                            skipinitialspace=skipinitialspace)
    except pd.errors.EmptyDataError:
        raise InputError(f"{where} is empty (no header row)") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"{where} is not valid CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text: {exc}") from None
    except PermissionError:
        raise InputError(f"{where} cannot be read: permission denied") from None
    except OSError as exc:
        raise InputError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if strip_names:
        frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame.columns) == 0:
        raise InputError(f"{where} has no columns")
    if require_rows and frame.empty:
        raise InputError(f"{where} has a header but no data rows")
    frame.attrs["source"] = str(path)
    return frame


def _source(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "input")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *,
                    option: str | None = None) -> None:
    """Raise :class:`InputError` naming the first missing column and the available ones."""
    for col in columns:
        if col not in frame.columns:
            via = f" (given by {option})" if option else ""
            raise InputError(
                f"column {col!r}{via} not found in {_source(frame)}; available columns: "
                f"{', '.join(map(repr, frame.columns))}")


def pick_column(frame: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` present in ``frame`` (case-sensitive), else None."""
    for col in candidates:
        if col in frame.columns:
            return col
    return None


def numeric_column(frame: pd.DataFrame, column: str, *, option: str | None = None,
                   labels: Sequence[str] | None = None) -> np.ndarray:
    """Column ``column`` as a float array; every cell must be a number.

    Parameters
    ----------
    frame : DataFrame
        From :func:`read_csv`.
    column : str
        Column name.
    option : str, optional
        The command-line option that named the column (for the message).
    labels : sequence of str, optional
        Row labels (e.g. study names) quoted in the message.

    Raises
    ------
    InputError
        Missing column, or an empty or non-numeric cell: the message names the column,
        the row (and its label) and the value.
    """
    require_columns(frame, [column], option=option)
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=float)
        bad = np.flatnonzero(np.isnan(values))
        if bad.size:
            _raise_cell(frame, column, int(bad[0]), "", labels, "is empty")
        return values
    converted = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(converted.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raw = series.iloc[i]
        what = "is empty" if (raw is None or (isinstance(raw, float) and np.isnan(raw))
                              or str(raw).strip() == "") else "is not a number"
        _raise_cell(frame, column, i, raw, labels, what)
    return converted.to_numpy(dtype=float)


def text_column(frame: pd.DataFrame, column: str, *, option: str | None = None) -> list[str]:
    """Column ``column`` as strings (empty cells become ``""``)."""
    require_columns(frame, [column], option=option)
    series = frame[column]
    return series.where(series.notna(), "").astype(str).str.strip().tolist()


def _raise_cell(frame, column, i, raw, labels, what) -> None:
    label = f" (study {labels[i]!r})" if labels is not None else ""
    value = "" if what == "is empty" else f" {str(raw)!r}"
    raise InputError(
        f"column {column!r}, row {i + 1}{label} of {_source(frame)}: value{value} {what} "
        f"(line {i + 2} of the file; a number is required)")
