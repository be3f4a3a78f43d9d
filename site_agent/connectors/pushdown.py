"""Estimates from a SQL source: every estimator computed inside the database.

:func:`estimate_all_sql` is the SQL counterpart of :func:`fedsynth.effects.estimate_all`
(which takes a DataFrame) and returns the same ``{analysis name: Estimate | Refusal}``:
the database computes each estimator's sums (:class:`site_agent.connectors.engine.SqlEngine`:
counts, moments, DeLong's placements, the Newton steps of logistic, linear, calibration
and Cox fits) and :mod:`fedsynth.effects.chunked` finishes them with the checks, refusals
and disclosure ``cells`` of the DataFrame estimators, so CSV, SQL, Parquet and Spark
sources cannot drift apart (tests/integration/test_engines_agree.py holds them to 1e-10).
No patient row is fetched into Python for any estimator.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedsynth.effects.chunked import estimate_on_engine
from fedsynth.effects.results import Estimate, Refusal
from site_agent.connectors.engine import SqlEngine
from site_agent.connectors.sql import SqlSource

__all__ = ["estimate_all_sql", "tag_source"]


def estimate_all_sql(source: SqlSource, spec: Any) -> dict[str, Estimate | Refusal]:
    """Every analysis of ``spec`` on a SQL source, in the spec's order.

    Parameters
    ----------
    source
        The site's data in a database.
    spec
        The analysis spec (:class:`fedsynth.spec.Spec`; anything with ``analyses``).

    Returns
    -------
    dict
        ``{analysis name: Estimate | Refusal}``, as
        :func:`fedsynth.effects.estimate_all` returns for a DataFrame.

    Raises
    ------
    InputError
        The source itself cannot be read (a refused login, a lost connection, a bad table
        name): a problem of the site's configuration, not of one analysis.
    """
    engine = SqlEngine(source)
    return {a.name: tag_source(estimate_on_engine(engine, a), "sql") for a in spec.analyses}


def tag_source(result: Estimate | Refusal, source: str) -> Estimate | Refusal:
    """The result with ``details["source"]`` naming the engine that computed it."""
    if isinstance(result, Estimate):
        return dataclasses.replace(result, details={**result.details, "source": source})
    return result
