"""Estimates from a SQL source: every estimator computed inside the database.

:func:`estimate_all_sql` is the SQL counterpart of :func:`fedsynth.effects.estimate_all`
(which takes a DataFrame) and returns the same ``{analysis name: Estimate | Refusal}``:
the database computes each estimator's sums (:class:`site_agent.connectors.engine.SqlEngine`:
counts, moments, DeLong's placements, the Newton steps of logistic, linear, calibration
and Cox fits) and :mod:`fedsynth.effects.chunked` finishes them with the checks, refusals
and disclosure ``cells`` of the DataFrame estimators, so CSV, SQL, Parquet and Spark
sources cannot drift apart (tests/integration/test_engines_agree.py holds them to 1e-10).
No patient row is fetched into Python for any estimator, except for an analysis scored
by a signed model artifact (``model = "model.json"``): the site scores its rows with the
model in Python, fetching only the columns the model and the estimator read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from fedsynth.effects import estimate_all
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
    # An analysis scored by a model artifact needs its rows: the site scores them in Python
    # (fedsynth.models.artifact) and runs the DataFrame estimator on the scores.
    scored = [a for a in spec.analyses if getattr(a, "model", None) is not None]
    results: dict[str, Estimate | Refusal] = {
        a.name: tag_source(estimate_on_engine(engine, a), "sql")
        for a in spec.analyses if getattr(a, "model", None) is None}
    if scored:
        results.update(_scored_by_model(source, spec, scored))
    return {a.name: results[a.name] for a in spec.analyses}


def _scored_by_model(source: SqlSource, spec: Any, analyses: list[Any]
                     ) -> dict[str, Estimate | Refusal]:
    """Analyses scored by a model artifact: their columns, then the DataFrame estimators.

    The DataFrame estimators score the rows with the embedded model.
    """
    present = set(source.columns())
    wanted = list(dict.fromkeys(c for a in analyses for c in a.columns if c in present))
    arrays = source.fetch_columns(wanted, analysis=", ".join(a.name for a in analyses))
    frame = pd.DataFrame(arrays, columns=wanted)
    sub_spec = dataclasses.replace(spec, analyses=tuple(analyses))
    return {name: tag_source(result, "sql")
            for name, result in estimate_all(frame, sub_spec).items()}


def tag_source(result: Estimate | Refusal, source: str) -> Estimate | Refusal:
    """The result with ``details["source"]`` naming the engine that computed it."""
    if isinstance(result, Estimate):
        return dataclasses.replace(result, details={**result.details, "source": source})
    return result
