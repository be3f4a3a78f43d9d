"""Reading a site's data file (CSV or Parquet) into a DataFrame, with clear errors.

Why
---
The site operator points the agent at a file; a wrong path, an empty file or a malformed
CSV must say so in one line naming the file (and the line, where the parser knows it)
instead of a pandas traceback. SQL sources are added by :mod:`site_agent.connectors`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsynth.errors import InputError
from fedsynth.tabular import read_csv

__all__ = ["load_table", "TABLE_SUFFIXES"]

#: File suffixes read as CSV and as Parquet (others are sniffed by content).
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".txt": "csv", ".tsv": "tsv",
                                  ".parquet": "parquet", ".pq": "parquet"}


def _kind(path: Path) -> str:
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind:
        return kind
    with path.open("rb") as handle:
        head = handle.read(4)
    return "parquet" if head == b"PAR1" else "csv"


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (comma-separated, header row) or Parquet file.

    Parameters
    ----------
    path
        The file. ``.parquet``/``.pq`` are Parquet, ``.tsv`` tab-separated, anything else
        CSV unless its first bytes are Parquet's magic number.

    Returns
    -------
    pandas.DataFrame
        One row per patient, columns as in the file's header.

    Raises
    ------
    InputError
        The file does not exist, cannot be read, is empty, has no header, has duplicate
        column names, has a line or cell above the limits of
        :func:`fedsynth.tabular.check_csv_size` or cannot be parsed; the message names the
        file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data: file not found: {str(path)!r}")
    if path.is_dir():
        raise InputError(f"data: {str(path)!r} is a directory, not a CSV or Parquet file")
    try:
        kind = _kind(path)
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as error:  # pyarrow raises several types for bad files
                raise InputError(f"data: {str(path)!r} is not a readable Parquet file: "
                                 f"{error}") from None
            names = table.column_names
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise InputError(f"data: {str(path)!r} has the column {dup!r} twice")
            frame = table.to_pandas()
        else:
            # the one CSV reader (fedsynth.tabular): lines and cells above its documented
            # limits are refused before parsing, so memory stays bounded
            frame = read_csv(path, sep="\t" if kind == "tsv" else ",", label="data",
                             require_rows=False, skipinitialspace=False, strip_names=False)
    except UnicodeDecodeError as error:
        raise InputError(f"data: {str(path)!r} is not UTF-8 text: {error}") from None
    except PermissionError:
        raise InputError(f"data: cannot read {str(path)!r}: permission denied") from None
    except OSError as error:
        raise InputError(f"data: cannot read {str(path)!r}: {error}") from None
    if len(frame.columns) == 0:
        raise InputError(f"data: {str(path)!r} has no columns")
    return frame
