"""Every estimator as Spark jobs: the aggregate engine over a Spark DataFrame.

Why
---
A hospital whose data sit in a Spark cluster (Databricks, a Hadoop lake) should not copy
them to the agent. The estimators' sums (:mod:`fedsynth.effects.aggregates`) are Spark
aggregations: one ``agg`` per pass for counts, moments and each logistic Newton step, a
``groupBy`` over event-time buckets per Cox Newton step (the bucketed rows are cached once
per analysis, so each step is one parallel aggregation), and window sums over the distinct
scores for DeLong's placements. Only those sums reach the driver; the finishing step is
:mod:`fedsynth.effects.chunked`, as for every other engine.

``[data] spark = { table = "...", master = "local[2]" }`` in site.toml names a table of the
session's catalog (or ``parquet.`/path```); the Python API takes a DataFrame
(:func:`estimate_all_spark`). Needs ``pip install fedsynth[spark]`` and a Java runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from fedsynth.effects.aggregates import AucPlacements
from fedsynth.effects.chunked import Categorical, Terms, estimate_on_engine
from fedsynth.effects.patient_level import Refuse
from fedsynth.effects.results import Estimate, Refusal
from fedsynth.errors import InputError

__all__ = ["SparkEngine", "SparkOps", "estimate_all_spark", "get_session"]

_HUGE = 1.7976931348623157e308


def get_session(conf: Mapping[str, Any]) -> SparkSession:
    """The Spark session of ``[data] spark`` (``master``, ``app_name``), created once.

    The UI is off and shuffles use few partitions: a site agent runs a handful of small
    aggregations, not a long job.
    """
    builder = (SparkSession.builder.master(str(conf.get("master", "local[2]")))
               .appName(str(conf.get("app_name", "fedsynth-site")))
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.ansi.enabled", "false"))
    try:
        return builder.getOrCreate()
    except Exception as error:  # noqa: BLE001 - py4j/JVM start-up failures have many types
        raise InputError(f"[data] spark: cannot start Spark (master = "
                         f"{conf.get('master', 'local[2]')!r}): {error}") from None


class SparkOps:
    """The operations terms may use, as Spark columns."""

    @staticmethod
    def exp(e: Any) -> Any:
        """``exp(e)``."""
        return F.exp(e)

    @staticmethod
    def log(e: Any) -> Any:
        """Natural logarithm."""
        return F.log(e)

    @staticmethod
    def abs(e: Any) -> Any:
        """``abs(e)``."""
        return F.abs(e)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        """``a`` where ``condition`` holds, else ``b``."""
        return F.when(condition, _value(a)).otherwise(_value(b))


class _StagedOps(SparkOps):
    """Spark operations that also collect staged columns (computed once per row)."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, Column]] = []

    def stage(self, name: str, value: Any) -> Any:
        """``value`` as a column of its own, added before the aggregation."""
        self.stages.append((name, _value(value)))
        return F.col(name)

    def apply(self, frame: DataFrame) -> DataFrame:
        """``frame`` with the staged columns, in the order they were staged."""
        for name, value in self.stages:
            frame = frame.withColumn(name, value)
        return frame


def _value(v: Any) -> Any:
    return F.lit(float(v)) if isinstance(v, (int, float)) else v


class SparkEngine:
    """An :class:`~fedsynth.effects.chunked.AggregateEngine` over a Spark DataFrame.

    Parameters
    ----------
    frame
        The site's rows (a catalog table, a Parquet scan, any DataFrame).
    """

    ops = SparkOps()

    def __init__(self, frame: DataFrame) -> None:
        self.frame = frame
        self._types = {f.name: f.dataType for f in frame.schema.fields}
        self._cached: dict[tuple[Any, ...], DataFrame] = {}

    def close(self) -> None:
        """Release the cached bucketed frames of Cox fits."""
        for frame in self._cached.values():
            frame.unpersist()
        self._cached.clear()

    # ------------------------------------------------------------------ relation
    def _column(self, name: str, categorical: Categorical) -> Column:
        raw = F.col(f"`{name}`")
        if name in categorical:
            text = raw.cast("string")
            code: Column = F.lit(-1.0)
            for j, level in reversed(list(enumerate(categorical[name]))):
                code = F.when(text == level, F.lit(float(j))).otherwise(code)
            return code
        return raw.cast("double")

    def _complete(self, columns: Sequence[str], categorical: Categorical) -> DataFrame:
        complete = F.lit(True)
        for c in columns:
            complete = complete & F.col(f"`{c}`").isNotNull()
        return self.frame.where(complete).select(
            *[self._column(c, categorical).alias(c) for c in columns])

    def _collect(self, frame: DataFrame) -> list[Any]:
        try:
            return frame.collect()
        except PySparkException as error:
            # a column of the wrong type; the message (which may quote data) stays local
            raise Refuse("database_values", detail=f"Spark said: {str(error)[:500]}") from None

    # ------------------------------------------------------------------ engine
    def screen(self, columns: Sequence[str], categorical: Categorical) -> tuple[int, int]:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.screen`."""
        for c in columns:
            if c not in self._types:
                raise Refuse("missing_column", column=c,
                             detail=f"column {c!r} is not in the Spark table")
        complete = F.lit(True)
        for c in columns:
            complete = complete & F.col(f"`{c}`").isNotNull()
        checks = [F.count(F.lit(1)).alias("total"),
                  F.sum(F.when(complete, 1).otherwise(0)).alias("complete")]
        for i, c in enumerate(columns):
            raw = F.col(f"`{c}`")
            value = self._column(c, categorical)
            if c in categorical:
                bad = raw.isNotNull() & (value < 0)
            elif isinstance(self._types[c], NumericType):
                bad = F.lit(False)
            else:  # text: a value that does not parse as a number (as the CSV path)
                bad = raw.isNotNull() & value.isNull()
            checks.append(F.sum(F.when(bad, 1).otherwise(0)).alias(f"bad_{i}"))
            if c not in categorical:
                inf = (value > _HUGE) | (value < -_HUGE)
                checks.append(F.sum(F.when(inf, 1).otherwise(0)).alias(f"inf_{i}"))
        row = self._collect(self.frame.agg(*checks))[0].asDict()
        for i, c in enumerate(columns):
            if row.get(f"bad_{i}"):
                raise Refuse("undeclared_level" if c in categorical else "not_numeric",
                             column=c)
        for i, c in enumerate(columns):
            if row.get(f"inf_{i}"):
                raise Refuse("infinite_values", column=c)
        return int(row["total"]), int(row["complete"] or 0)

    def sums(self, columns: Sequence[str], categorical: Categorical, terms: Terms,
             maxima: Terms | None = None) -> dict[str, float]:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.sums` (one ``agg``)."""
        frame = self._complete(columns, categorical)
        cols = {c: F.col(f"`{c}`") for c in columns}
        ops = _StagedOps()
        summed = terms(ops, cols)
        biggest = maxima(ops, cols) if maxima else {}
        frame = ops.apply(frame)
        names = list(summed)
        aggs = [F.count(F.lit(1)).alias("n")]
        aggs += [F.sum(_value(summed[k])).alias(f"s{i}") for i, k in enumerate(names)]
        aggs += [F.max(_value(v)).alias(f"m{i}") for i, v in enumerate(biggest.values())]
        row = self._collect(frame.agg(*aggs))[0].asDict()
        out = {"n": float(row["n"])}
        for i, k in enumerate(names):
            out[k] = float(row[f"s{i}"]) if row[f"s{i}"] is not None else 0.0
        for i, k in enumerate(biggest):
            out[k] = float(row[f"m{i}"]) if row[f"m{i}"] is not None else -np.inf
        return out

    def level_counts(self, columns: Sequence[str], categorical: Categorical,
                     levels_of: str, by: str, max_levels: int) -> np.ndarray | None:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.level_counts`."""
        frame = self._complete(columns, categorical)
        by_col = F.col(f"`{by}`")
        rows = self._collect(frame.groupBy(F.col(f"`{levels_of}`")).agg(
            F.sum(F.when(by_col == 0, 1).otherwise(0)).alias("n0"),
            F.sum(F.when(by_col == 1, 1).otherwise(0)).alias("n1")).limit(max_levels + 1))
        if len(rows) > max_levels:
            return None
        return np.array([(int(r["n0"]), int(r["n1"])) for r in rows],
                        dtype=np.int64).reshape(-1, 2)

    def auc(self, columns: Sequence[str], categorical: Categorical, outcome: str,
            score: str) -> AucPlacements:
        """DeLong's placements: counts per distinct score, then window sums over them."""
        frame = self._complete(columns, categorical)
        y = F.col(f"`{outcome}`")
        groups = frame.groupBy(F.col(f"`{score}`").alias("s")).agg(
            F.sum(F.when(y == 1, 1.0).otherwise(0.0)).alias("npos"),
            F.sum(F.when(y == 0, 1.0).otherwise(0.0)).alias("nneg"))
        totals = self._collect(groups.agg(F.sum("npos").alias("n1"),
                                          F.sum("nneg").alias("n0")))[0]
        n1, n0 = int(totals["n1"] or 0), int(totals["n0"] or 0)
        if n1 == 0 or n0 == 0:
            return AucPlacements(float("nan"), float("nan"), float("nan"), n1, n0)
        below = Window.orderBy("s").rowsBetween(Window.unboundedPreceding, -1)
        above = Window.orderBy("s").rowsBetween(1, Window.unboundedFollowing)
        placed = groups.select(
            "npos", "nneg",
            ((F.coalesce(F.sum("nneg").over(below), F.lit(0.0)) + 0.5 * F.col("nneg"))
             / float(n0)).alias("v10"),
            ((F.coalesce(F.sum("npos").over(above), F.lit(0.0)) + 0.5 * F.col("npos"))
             / float(n1)).alias("v01")).cache()
        try:
            auc = float(self._collect(placed.agg(
                F.sum(F.col("npos") * F.col("v10")).alias("s")))[0]["s"]) / n1
            a = F.lit(auc)
            second = self._collect(placed.agg(
                F.sum(F.col("npos") * (F.col("v10") - a) * (F.col("v10") - a)).alias("q10"),
                F.sum(F.col("nneg") * (F.col("v01") - a) * (F.col("v01") - a))
                .alias("q01")))[0]
        finally:
            placed.unpersist()
        s10 = float(second["q10"]) / (n1 - 1) if n1 > 1 else float("nan")
        s01 = float(second["q01"]) / (n0 - 1) if n0 > 1 else float("nan")
        return AucPlacements(auc, s10, s01, n1, n0)

    def event_time_sums(self, columns: Sequence[str], categorical: Categorical, time: str,
                        event: str, terms: Terms) -> dict[str, np.ndarray]:
        """Sums per event-time bucket, one ``groupBy`` over the cached bucketed rows."""
        key = (tuple(columns), tuple(categorical.items()), time, event)
        staged = self._cached.get(key)
        if staged is None:
            frame = self._complete(columns, categorical)
            t, ev = F.col(f"`{time}`"), F.col(f"`{event}`")
            # the default frame of an ordered window (RANGE … CURRENT ROW) includes ties
            bucket = F.max(F.when(ev == 1, t)).over(Window.orderBy(t))
            staged = (frame.withColumn("bucket_", bucket).where(F.col("bucket_").isNotNull())
                      .repartition(4, "bucket_").cache())
            self._cached[key] = staged
        cols = {c: F.col(f"`{c}`") for c in columns}
        ops = _StagedOps()
        summed = terms(ops, cols)
        names = list(summed)
        rows = self._collect(ops.apply(staged).groupBy("bucket_").agg(
            *[F.sum(_value(summed[k])).alias(f"s{i}") for i, k in enumerate(names)])
            .orderBy("bucket_"))
        return {k: np.array([float(r[f"s{i}"] or 0.0) for r in rows])
                for i, k in enumerate(names)}


def estimate_all_spark(source: DataFrame | Mapping[str, Any], spec: Any
                       ) -> dict[str, Estimate | Refusal]:
    """Every analysis of ``spec`` computed by Spark, in the spec's order.

    Parameters
    ----------
    source
        A Spark DataFrame (the Python API), or the ``[data] spark`` settings
        (``table``, ``master``, ``app_name``): the table is read from the session's
        catalog.
    spec
        The analysis spec (anything with ``analyses``).

    Returns
    -------
    dict
        ``{analysis name: Estimate | Refusal}``, as on a DataFrame; estimates carry
        ``details["source"] = "spark"``.

    Raises
    ------
    InputError
        Spark cannot start or the table does not exist (the message names the table).
    """
    if isinstance(source, DataFrame):
        frame = source
    else:
        table = str(source.get("table", ""))
        session = get_session(source)
        try:
            frame = session.table(table)
        except PySparkException as error:
            raise InputError(f"[data] spark.table = {table!r}: Spark cannot read it: "
                             f"{str(error).splitlines()[0]}") from None
    engine = SparkEngine(frame)
    try:
        out: dict[str, Estimate | Refusal] = {}
        for analysis in spec.analyses:
            result = estimate_on_engine(engine, analysis)
            if isinstance(result, Estimate):
                result = dataclasses.replace(result,
                                             details={**result.details, "source": "spark"})
            out[analysis.name] = result
        return out
    finally:
        engine.close()
