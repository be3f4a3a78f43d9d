"""Reading a site's data file (CSV or Parquet) into a DataFrame, with clear errors.

Why
---
The site operator points the agent at a file; a wrong path, an empty file or a malformed
CSV must say so in one line naming the file (and the line, where the parser knows it)
instead of a pandas traceback. SQL sources are added by :mod:`site_agent.connectors`.

A *folder* of Parquet files (partitioned as ``key=value/`` sub-folders or not) may be
larger than memory: :func:`parquet_dataset_engine` scans it with pyarrow datasets in
record batches of the analysis's columns only, and every estimator adds up its sums batch
by batch (:class:`fedsynth.effects.chunked.BlockEngine`), so memory holds one batch and
the aggregates, never the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fedsynth.effects.chunked import BlockEngine
from fedsynth.errors import InputError
from fedsynth.tabular import read_csv

__all__ = ["load_table", "TABLE_SUFFIXES", "parquet_dataset_engine", "PARQUET_BATCH_ROWS"]

#: Rows per record batch when scanning a Parquet folder: ~10 columns x 8 bytes x 128k rows
#: is ~10 MB per batch, small next to the agent's baseline and large enough that per-batch
#: overhead stays below the arithmetic.
PARQUET_BATCH_ROWS = 131_072

#: Record batches pyarrow may read ahead of the one being summed (memory: this + 1 batches).
PARQUET_READAHEAD = 1

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
            # limits are refused before parsing, so memory stays bounded; "None" is a
            # categorical level (pupils), not a missing value
            frame = read_csv(path, sep="\t" if kind == "tsv" else ",", label="data",
                             require_rows=False, skipinitialspace=False, strip_names=False,
                             none_is_missing=False)
    except UnicodeDecodeError as error:
        raise InputError(f"data: {str(path)!r} is not UTF-8 text: {error}") from None
    except PermissionError:
        raise InputError(f"data: cannot read {str(path)!r}: permission denied") from None
    except OSError as error:
        raise InputError(f"data: cannot read {str(path)!r}: {error}") from None
    if len(frame.columns) == 0:
        raise InputError(f"data: {str(path)!r} has no columns")
    return frame


def parquet_dataset_engine(path: str | Path, *, batch_rows: int = PARQUET_BATCH_ROWS
                           ) -> BlockEngine:
    """An aggregate engine over a folder of Parquet files, scanned in record batches.

    Parameters
    ----------
    path
        A folder of ``*.parquet`` files, possibly partitioned in ``key=value`` sub-folders
        (hive partitioning: the keys become columns), or one Parquet file.
    batch_rows
        Rows per record batch (the unit of memory).

    Returns
    -------
    BlockEngine
        Each pass over the data scans the dataset again, reading only the columns the
        analysis names.

    Raises
    ------
    InputError
        The folder does not exist, holds no Parquet file, or its files cannot be read as
        one dataset (the message names the folder).
    """
    folder = Path(path)
    if not folder.exists():
        raise InputError(f"data: Parquet folder not found: {str(folder)!r}")
    if batch_rows < 1:
        raise InputError(f"data: batch_rows = {batch_rows!r} must be a positive integer")
    try:
        dataset = ds.dataset(str(folder), format="parquet", partitioning="hive")
        files = list(dataset.files)
    except Exception as error:  # pyarrow raises several types for unreadable datasets
        raise InputError(f"data: the directory {str(folder)!r} is not a readable folder of "
                         f"Parquet files: {error}") from None
    if not files:
        raise InputError(f"data: the directory {str(folder)!r} holds no Parquet file")
    names = dataset.schema.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"data: {str(folder)!r} has the column {dup!r} twice")

    def blocks(columns: list[str]) -> Iterator[pd.DataFrame]:
        present = [c for c in columns if c in names]
        scanned = False
        # pyarrow reads ahead 16 batches of each of 4 files by default: up to 64 batches
        # (8 million rows at 131,072) in memory, so the peak grew with the table until
        # the folder was that large. One batch ahead of one file keeps the scan
        # overlapped with the arithmetic and the memory flat.
        for batch in dataset.to_batches(columns=present, batch_size=batch_rows,
                                        batch_readahead=PARQUET_READAHEAD,
                                        fragment_readahead=1):
            scanned = True
            yield batch.to_pandas()
        if not scanned:  # an empty dataset still has its columns
            yield pd.DataFrame({c: pd.Series(dtype=float) for c in present})

    return BlockEngine(blocks)
