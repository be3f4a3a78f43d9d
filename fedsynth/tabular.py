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

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from fedsynth.errors import InputError

__all__ = [
    "MAX_CELL_BYTES",
    "MAX_LINE_BYTES",
    "SEPARATORS",
    "Dialect",
    "check_csv_size",
    "detect_dialect",
    "missing_cells",
    "drop_rows",
    "read_csv",
    "CSV_NA_VALUES",
    "require_columns",
    "numeric_column",
    "text_column",
    "pick_column",
    "float_cells",
    "text_cells",
    "csv_lines",
]

#: Longest line of a CSV file fedsynth reads (1 MiB): a line holds one patient or one
#: study; a megabyte is thousands of columns.
MAX_LINE_BYTES = 1 << 20
#: Longest cell (256 KiB), quotes included; a quoted cell may span lines, and is limited
#: as a whole.
MAX_CELL_BYTES = 256 << 10
#: Cell texts read as missing when ``read_csv(..., none_is_missing=False)``: pandas'
#: defaults without ``"None"``, which is a real level of clinical codings (pupils reactive:
#: Both, One, None) and would otherwise silently become a missing value and drop the row.
CSV_NA_VALUES: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null")
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
    r"""Refuse a CSV file with a line or a cell above the limits, before parsing it.

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
            if not quoted and b'"' not in chunk:
                # No quotes: a cell lies within its line, so when every line of the block
                # (the one carried in included) is within the cell limit, so is every
                # cell, and only the lines are measured (two passes over the block
                # instead of six; a third of the command's read time at 220 MB, issue 17).
                ends = np.flatnonzero(data == _NEWLINE)
                if ends.size:
                    starts = np.empty_like(ends)
                    starts[0] = record_start - offset
                    starts[1:] = ends[:-1] + 1
                    longest = int((ends - starts).max())
                    tail = len(chunk) - int(ends[-1]) - 1
                else:
                    longest, tail = 0, offset + len(chunk) - record_start
                if max(longest, tail) <= min(max_cell, max_line):
                    if ends.size:
                        record_start = offset + int(ends[-1]) + 1
                    last = max(chunk.rfind(b"\n"), chunk.rfind(bytes([sep_byte])))
                    if last >= 0:
                        cell_start = offset + last + 1
                    offset += len(chunk)
                    continue
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


#: Cell separators :func:`detect_dialect` considers, in order of preference on a tie.
SEPARATORS: tuple[str, ...] = (",", ";", "\t", "|")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
#: Bytes of the file's start that :func:`detect_dialect` reads.
_SNIFF_BYTES = 64 << 10
_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d*,\d+(?:[eE][-+]?\d+)?\s*$")
_DECIMAL_POINT = re.compile(r"^\s*[-+]?\d*\.\d+(?:[eE][-+]?\d+)?\s*$")


@dataclass(frozen=True)
class Dialect:
    """How a CSV file is written: its cell separator and decimal mark.

    Attributes
    ----------
    sep : str
        Cell separator (one of :data:`SEPARATORS`).
    decimal : str
        Decimal mark of numbers (``"."`` or ``","``).
    detected : bool
        Whether the separator was detected (False: given, or the default).
    """

    sep: str = ","
    decimal: str = "."
    detected: bool = False

    def describe(self) -> str:
        """``semicolon-separated, decimal comma`` (for notes)."""
        mark = "decimal comma" if self.decimal == "," else "decimal point"
        return f"{_SEP_NAMES.get(self.sep, repr(self.sep))}-separated, {mark}"


def separator_name(sep: str) -> str:
    """``comma``, ``semicolon``, ``tab``, ``pipe`` or the quoted character."""
    return _SEP_NAMES.get(sep, repr(sep))


def detect_dialect(path: str | os.PathLike, *, sep: str | None = None,
                   decimal: str | None = None) -> Dialect:
    """Detect the separator and decimal mark of a CSV file from its first 64 KiB.

    Spreadsheets save "CSV" with commas, semicolons (where the comma is the decimal mark)
    or tabs. :class:`csv.Sniffer` guesses from character frequencies and is easily
    misled (a comma inside ``0,12`` looks like a separator), so the rule here is stricter:
    every candidate of :data:`SEPARATORS` splits the sample's complete lines with the
    csv module (quotes respected); a candidate is *consistent* when the header has at
    least two cells and every line has as many cells as the header. The consistent
    candidate with the most cells wins (ties: the order of :data:`SEPARATORS`); with none,
    the comma. The decimal mark is a comma when the separator is not, no cell of the
    sample is written with a decimal point and some cell reads as ``-?d*,d+``.

    Parameters
    ----------
    path
        The file.
    sep, decimal
        Given by the user (``--sep``, ``--decimal``): used as they are, only the other is
        detected.

    Returns
    -------
    Dialect
    """
    if sep is not None and decimal is not None:
        return Dialect(sep, decimal, detected=False)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_SNIFF_BYTES + 1)
    except OSError:
        return Dialect(sep or ",", decimal or ".", detected=False)   # read_csv reports it
    truncated = len(raw) > _SNIFF_BYTES
    text = raw[:_SNIFF_BYTES].decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]                     # the last line may be cut
    lines = [ln for ln in lines if ln.strip()]
    chosen, detected = sep, False
    if chosen is None:
        best: tuple[int, int] | None = None
        for rank, cand in enumerate(SEPARATORS):
            try:
                rows = list(csv.reader(lines, delimiter=cand, skipinitialspace=True))
            except csv.Error:
                continue
            if not rows or len(rows[0]) < 2:
                continue
            if any(len(r) != len(rows[0]) for r in rows[1:]):
                continue
            score = (len(rows[0]), -rank)
            if best is None or score > best:
                best, chosen = score, cand
        detected = chosen is not None
        chosen = chosen or ","
    mark = decimal
    if mark is None:
        mark = "."
        if chosen != ",":
            try:
                cells = [c for r in csv.reader(lines[1:], delimiter=chosen) for c in r]
            except csv.Error:
                cells = []
            if (any(_DECIMAL_COMMA.match(c) for c in cells)
                    and not any(_DECIMAL_POINT.match(c) for c in cells)):
                mark = ","
    return Dialect(chosen, mark, detected=detected)


def read_csv(path: str | os.PathLike, *, sep: str | None = ",", label: str = "file",
             require_rows: bool = True, skipinitialspace: bool = True,
             strip_names: bool = True, none_is_missing: bool = True,
             decimal: str | None = ".") -> pd.DataFrame:
    r"""Read a CSV file with a header row (size-checked first, see :func:`check_csv_size`).

    Cells are parsed by pandas (numbers become numbers); blank lines are skipped and empty
    cells become missing values, which :func:`numeric_column` reports. A UTF-8 byte-order
    mark is ignored.

    Parameters
    ----------
    path
        The file.
    sep
        Cell separator (``"\t"`` for TSV); ``None`` detects it
        (:func:`detect_dialect`).
    label
        What the file is in messages (``file`` for ``fedsynth meta``, ``data`` for a site).
    require_rows
        Refuse a file with a header but no data rows.
    skipinitialspace
        Ignore spaces after a separator (``fedsynth meta``'s hand-written tables).
    strip_names
        Strip spaces around column names.
    none_is_missing
        Read the text ``None`` as a missing value (pandas' default). A site's data pass
        False: ``None`` is a categorical level there (:data:`CSV_NA_VALUES`).
    decimal
        Decimal mark of numbers (``","`` for ``0,12``); ``None`` detects it.

    The dialect used is in ``frame.attrs["dialect"]`` (a :class:`Dialect`).

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
    dialect = detect_dialect(p, sep=sep, decimal=decimal)
    sep = dialect.sep
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
        missing: dict = {} if none_is_missing else {
            "keep_default_na": False, "na_values": list(CSV_NA_VALUES)}
        frame = pd.read_csv(p, sep=sep, encoding="utf-8-sig", decimal=dialect.decimal,
                            skipinitialspace=skipinitialspace, **missing)
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
    frame.attrs["dialect"] = dialect
    return frame


def missing_cells(frame: pd.DataFrame, columns: Sequence[str]) -> dict[int, list[str]]:
    """Rows with a missing cell in ``columns``: ``{row index: [columns]}`` in row order.

    Missing is what pandas reads as missing (an empty cell, ``NA``, ``NaN``, ``NULL``,
    ``n/a``, ...) or a cell of only spaces. Columns not in ``frame`` are skipped (their
    absence is reported where they are read).
    """
    present = [c for c in dict.fromkeys(columns) if c in frame.columns]
    if not present:
        return {}
    sub = frame[present]
    blank = sub.isna().to_numpy()
    for j, col in enumerate(present):
        if sub[col].dtype == object:
            blank[:, j] |= (sub[col].astype(str).str.strip() == "").to_numpy()
    rows = np.flatnonzero(blank.any(axis=1))
    return {int(i): [present[j] for j in np.flatnonzero(blank[i])] for i in rows}


def drop_rows(frame: pd.DataFrame, rows: Sequence[int]) -> pd.DataFrame:
    """Drop ``rows`` (positions) from ``frame`` and re-index from 0.

    The data-row numbers of the file are kept in ``attrs["row_numbers"]``, so messages
    still cite the file's rows.
    """
    keep = np.setdiff1d(np.arange(len(frame)), np.asarray(list(rows), dtype=np.int64))
    numbers = np.asarray(frame.attrs.get("row_numbers", np.arange(1, len(frame) + 1)))
    out = frame.iloc[keep].reset_index(drop=True)
    out.attrs.update(frame.attrs)
    out.attrs["row_numbers"] = numbers[keep]
    return out


def row_number(frame: pd.DataFrame, i: int) -> int:
    """The file's data-row number (1-based) of position ``i`` (after :func:`drop_rows`)."""
    numbers = frame.attrs.get("row_numbers")
    return int(numbers[i]) if numbers is not None else i + 1


def _source(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "input")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *,
                    option: str | None = None) -> None:
    """Raise :class:`InputError` naming the first missing column and the available ones.

    When a column name holds another separator (``'study;yi;vi'``), the file was split
    with the wrong one: the message says which separator the file seems to use.
    """
    for col in columns:
        if col not in frame.columns:
            via = f" (given by {option})" if option else ""
            raise InputError(
                f"column {col!r}{via} not found in {_source(frame)}; available columns: "
                f"{', '.join(map(repr, frame.columns))}{_separator_hint(frame)}")


def _separator_hint(frame: pd.DataFrame) -> str:
    """A hint when one column name contains separators (the file was split wrongly)."""
    dialect = frame.attrs.get("dialect")
    used = dialect.sep if isinstance(dialect, Dialect) else ","
    for name in frame.columns:
        for cand in SEPARATORS:
            if cand != used and str(name).count(cand) >= 1:
                shown = "'\\t'" if cand == "\t" else repr(cand)
                return (f". Column {str(name)!r} contains {separator_name(cand)}s: the file "
                        f"seems {separator_name(cand)}-separated; read it with --sep {shown}"
                        + (" (and --decimal ',' if numbers are written as 0,12)"
                           if cand in (";", "\t") else ""))
    return ""


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
    if what == "is empty":
        what = "is empty or NA (a missing value)"
    row = row_number(frame, i)
    raise InputError(
        f"column {column!r}, row {row}{label} of {_source(frame)}: value{value} {what} "
        f"(line {row + 1} of the file; a number is required)")


# ---------------------------------------------------------------------------------------
# writing CSV text column by column
# ---------------------------------------------------------------------------------------

#: Python's ``repr`` of a float is positional for ``1e-4 <= |x| < 1e16`` and scientific
#: outside (``1e-05``, ``1e+16``); orjson writes the same shortest digits but switches at
#: other magnitudes, so values outside this range are written by ``repr`` itself.
_REPR_POSITIONAL = (1e-4, 1e16)
#: Smallest magnitude orjson writes positionally (below it: ``1e-06``-like scientific
#: notation, as repr; tests/unit/test_csv_cells.py checks every magnitude).
_ORJSON_POSITIONAL = 1e-5
_EXP_POSITIVE = re.compile(rb"e(?=\d)")
_EXP_ONE_DIGIT = re.compile(rb"e-(\d)(?=[,\]])")


def float_cells(values: np.ndarray) -> list[str]:
    """The CSV text of each float as the csv module writes it: ``repr``, ``""`` if not finite.

    The records of ``fedsynth meta --by --format csv`` hold the float (or None for NaN
    and infinities), and :class:`csv.writer` writes a float with ``repr`` (the shortest
    text that reads back to the same double; Steele & White 1990, Gay 1990). Calling
    ``repr`` once per cell costs about 2 microseconds, most of the command's output time
    at 200,000 analyses (issue 17), so the whole column is formatted at once by orjson,
    whose shortest round-trip digits (Ryu; Adams 2018, PLDI) are the same: its
    exponents are rewritten as repr writes them (``e+16``, ``e-09``) on the whole text,
    and only the cells that repr writes in scientific notation and orjson positionally
    (``1e-5 <= |x| < 1e-4``) are formatted by ``repr`` one by one.
    tests/unit/test_csv_cells.py checks the text against ``repr`` over every magnitude
    (hypothesis).

    Parameters
    ----------
    values
        Any array of numbers (flattened, converted to float64).

    Returns
    -------
    list of str
        One cell per value, in order.
    """
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return []
    finite = np.isfinite(x)
    text = orjson.dumps(np.where(finite, x, 0.0), option=orjson.OPT_SERIALIZE_NUMPY)
    if b"e" in text:        # orjson's 1e16, 2.5e-9 are repr's 1e+16, 2.5e-09
        text = _EXP_ONE_DIGIT.sub(rb"e-0\1", _EXP_POSITIVE.sub(b"e+", text))
    cells = text[1:-1].decode("ascii").split(",")
    a = np.abs(x)
    # repr is scientific from 1e-4 down, orjson from 1e-5 down: those cells by repr
    low = _REPR_POSITIONAL[0]
    for i in np.flatnonzero(~finite | ((a < low) & (a >= _ORJSON_POSITIONAL))).tolist():
        cells[i] = repr(float(x[i])) if finite[i] else ""
    return cells


def text_cells(values: Sequence[str]) -> list[str]:
    """The CSV text of each string as :class:`csv.writer` writes it (QUOTE_MINIMAL, ``,``).

    A cell with a comma or a double quote is quoted (quotes doubled), one with a
    non-printable character (a line break) is written by the csv module itself, every
    other cell is its own text.
    """
    out = list(values)
    whole = "".join(out)
    if "," not in whole and '"' not in whole and whole.isprintable():
        return out                              # the usual column: one check in C
    for i, cell in enumerate(out):
        if not cell.isprintable():
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow([cell, ""])
            out[i] = buf.getvalue()[:-2]        # the cell without ",\n"
        elif "," in cell or '"' in cell:        # what the csv module does to such a cell
            out[i] = '"' + cell.replace('"', '""') + '"'
    return out


def csv_lines(columns: Sequence[Sequence[str]]) -> str:
    """CSV lines, each ending in a newline, from columns of cell texts of equal length.

    Rows have at least two cells: the csv module writes a row of one empty cell as
    ``""``, which this join does not.
    """
    if not columns or not len(columns[0]):
        return ""
    return "\n".join(map(",".join, zip(*columns))) + "\n"
