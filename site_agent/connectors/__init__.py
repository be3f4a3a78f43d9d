"""Data connectors of the site agent: where a site's data lives.

A site's ``[data]`` section names one of:

* a file (``path``: CSV or Parquet, read by :func:`site_agent.data.load_table`);
* a folder of (partitioned) Parquet files (``path`` to a directory), scanned in record
  batches by :func:`site_agent.data.parquet_dataset_engine`;
* a database (``url`` with ``table`` or ``query``): every estimator runs inside it
  (:mod:`site_agent.connectors.engine`, SQLAlchemy Core; SQLite, PostgreSQL, DuckDB);
* a Spark table (``spark = { table = "...", master = "local[2]" }``): the aggregates run
  as Spark jobs (:mod:`site_agent.connectors.spark`).

Whatever the source, the estimates come from the same finishing step
(:mod:`fedsynth.effects.chunked`), with the same refusals and the same counts for
disclosure control; only sums leave the engine, and the agent's memory does not grow with
the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsynth.effects import estimate_all
from fedsynth.effects.aggregates import AucPlacements
from fedsynth.effects.chunked import estimate_on_engine
from fedsynth.errors import InputError
from site_agent.connectors.pushdown import estimate_all_sql as run
from site_agent.connectors.pushdown import tag_source
from site_agent.connectors.sql import (
    BrierMoments,
    DataProblem,
    GroupMoments,
    ObservedExpected,
    SqlSource,
    TwoByTwoCounts,
    TwoGroupMoments,
)
from site_agent.data import load_table, parquet_dataset_engine

__all__ = ["SqlSource", "DataProblem", "TwoByTwoCounts", "GroupMoments", "TwoGroupMoments",
           "ObservedExpected", "BrierMoments", "AucPlacements", "estimate_all_sql",
           "estimate_from_data"]


def estimate_all_sql(source: SqlSource, spec: Any) -> dict[str, Any]:
    """See :func:`site_agent.connectors.pushdown.estimate_all_sql`."""
    return run(source, spec)


def estimate_from_data(data: Any, spec: Any) -> dict[str, Any]:
    """Estimates for ``spec`` from a site's ``[data]`` settings, wherever the data lives.

    Parameters
    ----------
    data
        The ``[data]`` section: a mapping or an object with ``path`` (a file or a Parquet
        folder), ``url`` (with ``table`` or ``query``) or ``spark``.
    spec
        The analysis spec.
    """
    def get(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    path, url, spark = get("path"), get("url"), get("spark")
    given = [k for k, v in (("path", path), ("url", url), ("spark", spark)) if v is not None]
    if len(given) != 1:
        raise InputError(f"[data] needs exactly one of 'path', 'url' and 'spark' "
                         f"(got {', '.join(given) or 'none'})")
    if url is not None:
        source = SqlSource(str(url), table=get("table"), query=get("query"))
        try:
            return estimate_all_sql(source, spec)
        finally:
            source.dispose()
    if spark is not None:
        # lazy: pyspark (an optional extra, ~1 s and a JVM) only for a Spark source
        from site_agent.connectors.spark import estimate_all_spark

        return estimate_all_spark(spark, spec)
    if Path(path).is_dir():
        engine = parquet_dataset_engine(path)
        return {a.name: tag_source(estimate_on_engine(engine, a), "parquet")
                for a in spec.analyses}
    return dict(estimate_all(load_table(path), spec))
