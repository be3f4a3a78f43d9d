"""Data connectors of the site agent: where a site's data lives.

A site's ``[data]`` section names either a file (``path``: CSV or Parquet, read by
:func:`site_agent.data.load_table`) or a database (``url`` with ``table`` or ``query``).
For a database, :func:`estimate_from_data` computes count- and moment-based estimators as
SQL aggregates inside the database and streams only the needed columns for regression
estimators (:mod:`site_agent.connectors.pushdown`), so patient rows do not leave the
database for a 2×2 table and the agent's memory does not grow with the table.
"""

from __future__ import annotations

from typing import Any

from fedsynth.effects import estimate_all
from fedsynth.errors import InputError
from site_agent.connectors.pushdown import estimate_all_sql as run
from site_agent.connectors.sql import (
    AucPlacements,
    BrierMoments,
    DataProblem,
    GroupMoments,
    ObservedExpected,
    SqlSource,
    TwoByTwoCounts,
    TwoGroupMoments,
)
from site_agent.data import load_table

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
        The ``[data]`` section: a mapping or an object with ``path`` or ``url`` (with
        ``table`` or ``query``).
    spec
        The analysis spec.
    """
    def get(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    path, url = get("path"), get("url")
    if (path is None) == (url is None):
        raise InputError(f"[data] needs exactly one of 'path' and 'url' "
                         f"(got path={path!r}, url={'<set>' if url else None})")
    if url is not None:
        source = SqlSource(str(url), table=get("table"), query=get("query"))
        try:
            return estimate_all_sql(source, spec)
        finally:
            source.dispose()

    return dict(estimate_all(load_table(path), spec))
