"""Reading and validating CSV input of the command line.

Every error is an :class:`fedsynth.errors.InputError` that names the file, the column, the
row and the offending value, so a user can fix a spreadsheet without reading a traceback.
Rows are numbered as a spreadsheet shows them: data row 1 is line 2 of the file (line 1
holds the header).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.errors import InputError

__all__ = [
    "read_csv",
    "require_columns",
    "numeric_column",
    "text_column",
    "pick_column",
]


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV file with a header row.

    Cells are parsed by pandas (numbers become numbers); blank lines are skipped and empty
    cells become missing values, which :func:`numeric_column` reports.

    Raises
    ------
    InputError
        The file does not exist, is not readable, is empty, has no data rows or is not
        valid CSV.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file: {str(path)!r} does not exist")
    if p.is_dir():
        raise InputError(f"file: {str(path)!r} is a directory, not a CSV file")
    try:
        frame = pd.read_csv(p, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"file: {str(path)!r} is empty (expected a header row and data)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"file: {str(path)!r} is not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise InputError(f"file: {str(path)!r} cannot be read ({exc.strerror})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise InputError(f"file: {str(path)!r} has a header but no data rows")
    frame.attrs["source"] = str(path)
    return frame


def _source(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "input")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *, option: str | None = None) -> None:
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
