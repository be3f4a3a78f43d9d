"""Every estimator inside the database: the aggregate engine over a SQLAlchemy source.

Why
---
:mod:`fedsynth.effects.chunked` turns sums into estimates; this engine has the database
compute the sums, so patient rows never leave it, whatever the estimator: counts and
moments, DeLong's placements (window sums over the distinct scores), each Newton step of a
logistic fit (``Σ w x xᵀ``, ``Σ x (y − μ)``, the log-likelihood) and each Newton step of a
Cox fit (sums per event-time bucket; the bucket of a row is a window ``max`` over the
time order). Every statement is a SQLAlchemy Core expression (no SQL text is pasted
together), so each dialect's quoting and functions come from the library: it runs
unchanged on SQLite, PostgreSQL and DuckDB (``duckdb-engine``) and any other dialect with
``exp``, ``ln``, ``CASE``, ``FILTER``/``CASE`` aggregates and window functions.

What comes back is one row of sums per pass, per-distinct-event-time sums for Cox, and
counts per level (at most :data:`~fedsynth.effects.patient_level.CATEGORICAL_LEVELS` + 1
rows) for disclosure control. A database error is a refusal worded from the fixed
vocabulary (``database_values``); the database's own message stays in the site's log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from fedsynth.effects.aggregates import AucPlacements
from fedsynth.effects.chunked import Categorical, Terms
from fedsynth.effects.patient_level import Refuse
from fedsynth.tabular import CSV_NA_VALUES
from site_agent.connectors.sql import DataProblem, SqlSource

__all__ = ["SqlEngine", "SqlOps"]

_HUGE = 1.7976931348623157e308


class SqlOps:
    """The operations terms may use, as SQLAlchemy expressions."""

    @staticmethod
    def exp(e: Any) -> Any:
        """``exp(e)`` in SQL."""
        return sa.func.exp(e)

    @staticmethod
    def log(e: Any) -> Any:
        """Natural logarithm (``ln``; SQLite, PostgreSQL and DuckDB spell it alike)."""
        return sa.func.ln(e)

    @staticmethod
    def abs(e: Any) -> Any:
        """``abs(e)`` in SQL."""
        return sa.func.abs(e)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        """``CASE WHEN condition THEN a ELSE b END`` (floats bound as parameters)."""
        return sa.case((condition, _value(a)), else_=_value(b))


def _value(v: Any) -> Any:
    if isinstance(v, (int, float)):
        return sa.literal(float(v), sa.Double)
    return v


class SqlEngine:
    """An :class:`~fedsynth.effects.chunked.AggregateEngine` running inside a database.

    Parameters
    ----------
    source
        The site's table or read-only query (:class:`SqlSource`).
    """

    ops = SqlOps()

    def __init__(self, source: SqlSource) -> None:
        self.source = source
        self._sqlite = source.engine.dialect.name == "sqlite"
        if self._sqlite:
            _ensure_sqlite_math(source.engine)

    def _present(self, raw: Any) -> Any:
        """The condition that a stored value is not missing.

        NULL is missing everywhere. On SQLite the texts the CSV reader reads as missing
        (:data:`fedsynth.tabular.CSV_NA_VALUES`: the empty field, ``NA``, ``NULL``, ...)
        are missing too: the ``sqlite3`` shell's ``.import`` of a CSV file stores every
        field as text and cannot write NULL, so the same file gives the same rows whether
        the site reads it or imports it first.
        """
        present = raw.is_not(None)
        return (present & raw.not_in(CSV_NA_VALUES)) if self._sqlite else present

    def _all_present(self, rel: sa.Subquery, columns: Sequence[str]) -> Any:
        return sa.and_(sa.true(), *[self._present(rel.c[c]) for c in columns])

    # ------------------------------------------------------------------ relation
    def _columns(self, rel: sa.Subquery, columns: Sequence[str], categorical: Categorical
                 ) -> dict[str, Any]:
        """The analysis's columns as floats (level index for a categorical column)."""
        out: dict[str, Any] = {}
        for c in columns:
            if c in categorical:
                text = sa.cast(rel.c[c], sa.String)
                out[c] = sa.case(*[(text == level, float(j))
                                   for j, level in enumerate(categorical[c])],
                                 else_=-1.0)
            else:
                out[c] = sa.cast(rel.c[c], sa.Double)
        return out

    def _complete(self, columns: Sequence[str], categorical: Categorical
                  ) -> tuple[sa.Subquery, dict[str, Any]]:
        """The complete rows with the analysis's columns cast (a sub-select)."""
        rel = self.source._relation(columns)
        cols = self._columns(rel, columns, categorical)
        inner = sa.select(*[cols[c].label(c) for c in columns]).where(
            self._all_present(rel, columns)).subquery("cc")
        return inner, {c: inner.c[c] for c in columns}

    def _one(self, statement: sa.Executable) -> sa.Row:
        try:
            return self.source._scalar_row(statement)
        except DataProblem as problem:
            raise _refusal(problem) from None

    def _all(self, statement: sa.Executable) -> list[sa.Row]:
        try:
            with self.source.engine.connect() as conn:
                return list(conn.execute(statement).all())
        except sa.exc.SQLAlchemyError as error:
            problem = self.source._query_error(error)
            if isinstance(problem, DataProblem):
                raise _refusal(problem) from None
            raise problem from None

    # ------------------------------------------------------------------ engine
    def screen(self, columns: Sequence[str], categorical: Categorical) -> tuple[int, int]:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.screen`."""
        try:
            self.source.require("?", columns)
        except DataProblem as problem:
            raise _refusal(problem) from None
        rel = self.source._relation(columns)
        checks: list[Any] = [sa.func.count().label("total"),
                             sa.func.count().filter(self._all_present(rel, columns))
                             .label("complete")]
        for i, c in enumerate(columns):
            raw = rel.c[c]
            if c in categorical:
                code = self._columns(rel, [c], categorical)[c]
                checks.append(sa.func.count().filter(self._present(raw) & (code < 0))
                              .label(f"bad_{i}"))
                continue
            if self._sqlite:
                checks.append(sa.func.count().filter(
                    self._present(raw) & sa.not_(_sqlite_number(raw))).label(f"bad_{i}"))
            value = sa.cast(raw, sa.Double)
            checks.append(sa.func.count().filter((value > _HUGE) | (value < -_HUGE))
                          .label(f"inf_{i}"))
        row = self._one(sa.select(*checks))
        mapping = row._mapping
        for i, c in enumerate(columns):
            if mapping.get(f"bad_{i}"):
                if c in categorical:
                    raise Refuse("undeclared_level", column=c)
                raise Refuse("not_numeric", column=c, detail=self._not_numeric_detail(c))
        for i, c in enumerate(columns):
            if mapping.get(f"inf_{i}"):
                raise Refuse("infinite_values", column=c)
        return int(row.total), int(row.complete)

    def _not_numeric_detail(self, column: str) -> str:
        """The site's local explanation of a SQLite column refused as not numeric."""
        declared = self.source.declared_type(column)
        where = (f"declared {declared or 'without a type'} in [data] "
                 f"{self.source._describe()}" if self.source.table is not None else
                 f"of [data] {self.source._describe()}")
        return (f"column {column!r} ({where}) holds text that is not a number in some "
                "rows. Text that is a well-formed number ('12', '0.5', '1e-3', as the "
                "sqlite3 shell's .import stores every field) is read as that number, and "
                "the CSV reader's missing-value texts ('', 'NA', 'NULL', ...) as missing; "
                "fix or set to NULL the other values (the rows where "
                f"{column} = CAST({column} AS NUMERIC) is not true), or leave the column "
                "out of the analysis")

    def sums(self, columns: Sequence[str], categorical: Categorical, terms: Terms,
             maxima: Terms | None = None) -> dict[str, float]:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.sums` (one SELECT)."""
        inner, cols = self._complete(columns, categorical)
        summed = terms(self.ops, cols)
        biggest = maxima(self.ops, cols) if maxima else {}
        names = list(summed)
        select = [sa.func.count().label("n")]
        select += [sa.func.sum(_value(summed[k])).label(f"s{i}") for i, k in enumerate(names)]
        select += [sa.func.max(_value(v)).label(f"m{i}") for i, v in
                   enumerate(biggest.values())]
        row = self._one(sa.select(*select).select_from(inner))
        out = {"n": float(row.n)}
        for i, k in enumerate(names):
            value = row._mapping[f"s{i}"]
            out[k] = float(value) if value is not None else 0.0
        for i, k in enumerate(biggest):
            value = row._mapping[f"m{i}"]
            out[k] = float(value) if value is not None else -math.inf
        return out

    def level_counts(self, columns: Sequence[str], categorical: Categorical,
                     levels_of: str, by: str, max_levels: int) -> np.ndarray | None:
        """See :meth:`fedsynth.effects.chunked.AggregateEngine.level_counts`."""
        inner, cols = self._complete(columns, categorical)
        statement = (sa.select(sa.func.count().filter(cols[by] == 0).label("n0"),
                               sa.func.count().filter(cols[by] == 1).label("n1"))
                     .select_from(inner).group_by(cols[levels_of]).limit(max_levels + 1))
        rows = self._all(statement)
        if len(rows) > max_levels:
            return None
        return np.array([(int(r.n0), int(r.n1)) for r in rows], dtype=np.int64).reshape(-1, 2)

    def auc(self, columns: Sequence[str], categorical: Categorical, outcome: str,
            score: str) -> AucPlacements:
        """DeLong's placements by window sums over the distinct scores, in the database."""
        inner, cols = self._complete(columns, categorical)
        y, s = cols[outcome], cols[score]
        groups = (sa.select(s.label("s"),
                            sa.func.count().filter(y == 1).label("npos"),
                            sa.func.count().filter(y == 0).label("nneg"))
                  .select_from(inner).group_by(s).cte("groups"))
        totals = self._one(sa.select(
            sa.func.coalesce(sa.func.sum(groups.c.npos), 0).label("n1"),
            sa.func.coalesce(sa.func.sum(groups.c.nneg), 0).label("n0")))
        n1, n0 = int(totals.n1), int(totals.n0)
        if n1 == 0 or n0 == 0:
            return AucPlacements(float("nan"), float("nan"), float("nan"), n1, n0)
        order = groups.c.s
        neg_below = sa.func.coalesce(sa.func.sum(groups.c.nneg).over(
            order_by=order, rows=(None, -1)), 0)
        pos_above = sa.func.coalesce(sa.func.sum(groups.c.npos).over(
            order_by=order, rows=(1, None)), 0)
        placed = sa.select(
            sa.cast(groups.c.npos, sa.Double).label("npos"),
            sa.cast(groups.c.nneg, sa.Double).label("nneg"),
            ((sa.cast(neg_below, sa.Double) + 0.5 * groups.c.nneg) / float(n0)).label("v10"),
            ((sa.cast(pos_above, sa.Double) + 0.5 * groups.c.npos) / float(n1)).label("v01"),
        ).subquery("placed")
        first = self._one(sa.select(sa.func.sum(placed.c.npos * placed.c.v10).label("s")))
        auc = float(first.s) / n1
        a = sa.literal(auc, sa.Double)
        second = self._one(sa.select(
            sa.func.sum(placed.c.npos * (placed.c.v10 - a) * (placed.c.v10 - a)).label("q10"),
            sa.func.sum(placed.c.nneg * (placed.c.v01 - a) * (placed.c.v01 - a)).label("q01")))
        s10 = float(second.q10) / (n1 - 1) if n1 > 1 else float("nan")
        s01 = float(second.q01) / (n0 - 1) if n0 > 1 else float("nan")
        return AucPlacements(auc, s10, s01, n1, n0)

    def event_time_sums(self, columns: Sequence[str], categorical: Categorical, time: str,
                        event: str, terms: Terms) -> dict[str, np.ndarray]:
        """Sums per event-time bucket: per distinct time first, then per bucket.

        The terms are sums, so they are summed per distinct ``time`` (a hash aggregate:
        the database holds one row per distinct time, not the table), and a window over
        those rows in time order gives each time its bucket,
        ``max(CASE WHEN events > 0 THEN time END) OVER (ORDER BY time)``: the last event
        time at or before it (ties included: a time's own censored rows are at risk).
        Times before the first event time get NULL and are left out. A window over the
        rows themselves would sort the whole table (in memory, growing with the rows: a
        DuckDB site's peak went from 0.5 GB at 1 million rows to 1.9 GB at 10 million).
        """
        inner, cols = self._complete(columns, categorical)
        summed = terms(self.ops, cols)
        names = list(summed)
        per_time = (sa.select(cols[time].label("t_"), sa.func.max(cols[event]).label("e_"),
                              *[sa.func.sum(_value(summed[k])).label(f"s{i}")
                                for i, k in enumerate(names)])
                    .select_from(inner).group_by(cols[time]).subquery("per_time"))
        bucket = sa.func.max(sa.case((per_time.c.e_ == 1, per_time.c.t_))).over(
            order_by=per_time.c.t_)
        staged = sa.select(bucket.label("bucket_"),
                           *[per_time.c[f"s{i}"] for i in range(len(names))]
                           ).subquery("staged")
        statement = (sa.select(staged.c.bucket_, *[sa.func.sum(staged.c[f"s{i}"])
                                                   .label(f"s{i}")
                                                   for i in range(len(names))])
                     .where(staged.c.bucket_.is_not(None))
                     .group_by(staged.c.bucket_).order_by(staged.c.bucket_))
        rows = self._all(statement)
        return {k: np.array([float(r._mapping[f"s{i}"] or 0.0) for r in rows])
                for i, k in enumerate(names)}


def _refusal(problem: DataProblem) -> Refuse:
    """The refusal of a data problem: its sentence, with the message kept as local detail."""
    if problem.column:
        return Refuse(problem.key, detail=str(problem), column=problem.column)
    return Refuse(problem.key, detail=str(problem))


def _sqlite_number(raw: Any) -> Any:
    """SQLite: the value is a number, stored as one or as text spelling one.

    An integer or real passes. Text passes when it is a well-formed number by SQLite's own
    rule: comparing it with ``CAST(raw AS NUMERIC)`` (an expression of NUMERIC affinity)
    applies numeric affinity to the text, which converts ``'12'``, ``' 0.5 '`` or
    ``'1e-3'`` to the number and leaves ``'12 mg'``, ``'n/a'`` or ``'0x10'`` text, unequal
    to any number. (``CAST`` alone reads the longest numeric prefix: ``'12 mg'`` is 12.)
    A blob is not a number.
    """
    kind = sa.func.typeof(raw)
    return kind.in_(["integer", "real"]) | ((kind == "text") &
                                             (raw == sa.cast(raw, sa.Numeric)))


def _ensure_sqlite_math(engine: sa.Engine) -> None:
    """Give SQLite ``exp``/``ln`` where it was built without its math functions."""
    with engine.connect() as conn:
        try:
            conn.exec_driver_sql("SELECT exp(0), ln(1)").all()
            return
        except sa.exc.OperationalError:
            pass

    @sa.event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("exp", 1, math.exp, deterministic=True)
        dbapi_connection.create_function("ln", 1, math.log, deterministic=True)

    engine.dispose()
