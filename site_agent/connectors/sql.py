"""Site data in a SQL database: aggregates computed *inside* the database.

Why
---
A hospital's data usually lives in a clinical data warehouse, not in a CSV file. Copying a
million-row table into the agent's memory to compute a 2×2 table is slow, needs memory in
proportion to the table, and moves patient rows out of the database for no reason. The
estimators fedsynth sends for count- and moment-based analyses depend on the data only
through a handful of sums (their *sufficient statistics*), so those sums are computed by
the database (SQL "pushdown") and only the sums reach Python:

* ``two_by_two``: the four cell counts of exposure × outcome;
* ``two_group``: group sizes, means and sums of squared deviations (two-pass: means first,
  then deviations, so the variance does not suffer the cancellation of ``Σx² − n·x̄²``,
  cf. Chan, Golub & LeVeque, *Am Stat* 37(3), 1983);
* ``oe_ratio``: observed events, expected events (sum of predicted risks), n;
* ``brier``: mean and variance of the squared prediction error (two-pass as above);
* ``auc``: DeLong's placement values from counts per distinct score (rank sums with
  mid-ranks for ties; DeLong, DeLong & Clarke-Pearson, *Biometrics* 44(3), 1988): window
  sums over the score-ordered groups give, for every score, how many negatives lie below
  and how many positives lie above it, so AUC and its variance need only ``O(#distinct
  scores)`` work inside the database and three scalars leave it.

Every estimator, regression and Cox included, runs inside the database through
:class:`site_agent.connectors.engine.SqlEngine` (which builds on this source's relation and
error handling); the agent's estimates come from there. The per-estimator methods below
are a small public API of their own, not the agent's path (they read the columns as the
database stores them: the engine's SQLite rules for numeric text and missing-value texts
do not apply to them). :meth:`SqlSource.fetch_columns` streams named columns for the only
three uses that need rows: an analysis scored by a signed model artifact, a released
likelihood (:mod:`site_agent.likelihood`) and a model step (:mod:`site_agent.steps`).

The source is built with SQLAlchemy Core, so the same code runs on PostgreSQL (the tested
production target) and on SQLite. A ``table`` name is quoted by SQLAlchemy (never pasted
into SQL); a ``query`` is the site operator's own SQL from site.toml and is used as a
sub-select.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from fedsynth.effects.aggregates import AucPlacements
from fedsynth.effects.results import REFUSAL_VOCABULARY
from fedsynth.errors import InputError

#: rows per fetch when streaming columns (model-scored analyses, likelihoods, model steps)
STREAM_CHUNK_ROWS = 50_000

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class TwoByTwoCounts:
    """Cell counts of a binary exposure × binary outcome table (metafor's ai, bi, ci, di)."""

    exposed_events: int        # ai
    exposed_non_events: int    # bi
    unexposed_events: int      # ci
    unexposed_non_events: int  # di

    @property
    def n(self) -> int:
        """Number of rows counted in the table."""
        return (self.exposed_events + self.exposed_non_events + self.unexposed_events
                + self.unexposed_non_events)


@dataclass(frozen=True)
class GroupMoments:
    """Size, mean and sum of squared deviations of a continuous outcome in one group."""

    n: int
    mean: float
    ss: float  # Σ (x - mean)²

    @property
    def sd(self) -> float:
        """Sample standard deviation (n - 1 denominator, as R's ``sd``)."""
        return math.sqrt(self.ss / (self.n - 1)) if self.n > 1 else float("nan")


@dataclass(frozen=True)
class TwoGroupMoments:
    """Moments of the outcome in the exposed (1) and unexposed (0) groups."""

    exposed: GroupMoments
    unexposed: GroupMoments

    @property
    def n(self) -> int:
        """Number of rows in both groups."""
        return self.exposed.n + self.unexposed.n


@dataclass(frozen=True)
class ObservedExpected:
    """Observed events, expected events (Σ predicted risk) and n of a risk model."""

    observed: float
    expected: float
    n: int


@dataclass(frozen=True)
class BrierMoments:
    """Mean and sum of squared deviations of ``(score - outcome)²``, with event counts."""

    n: int
    mean: float
    ss: float
    events: int


class DataProblem(InputError):
    """The data cannot answer one analysis (a missing column, a non-0/1 outcome, ...).

    :mod:`site_agent.connectors.pushdown` turns it into a
    :class:`~fedsynth.effects.Refusal` saying the vocabulary's sentence :attr:`key` (with
    :attr:`column`, a column the spec names), as the CSV path does, so one bad analysis
    does not stop the others of a round. The message itself (which may quote the
    database's error, the operator's query or the table's columns) is kept as the
    refusal's local detail: it is logged at the site, never sent.
    """

    def __init__(self, message: str, key: str, column: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.column = column
        self.code = REFUSAL_VOCABULARY[key][0] if key in REFUSAL_VOCABULARY else "refused"


def _validate_identifier(field: str, value: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise InputError(f"{field} = {value!r} is not a plain SQL identifier "
                         "(letters, digits, '_' or '$', not starting with a digit)")
    return value


class SqlSource:
    """One site's data set in a SQL database: a table or the result of a query.

    Parameters
    ----------
    url
        SQLAlchemy URL, e.g. ``postgresql://user@host/db`` (psycopg 3 is used for
        ``postgresql://``) or ``sqlite:///path``.
    table
        Table name, optionally schema-qualified (``schema.table``). Exactly one of
        ``table`` and ``query`` is given.
    query
        A SELECT whose result is the data set (the operator's own SQL).
    engine
        An existing engine (tests, connection pools); ``url`` is then only reported.
    """

    def __init__(self, url: str, *, table: str | None = None, query: str | None = None,
                 engine: sa.Engine | None = None) -> None:
        if (table is None) == (query is None):
            raise InputError(f"[data] needs exactly one of 'table' and 'query' with url "
                             f"{_redact(url)!r} (got table={table!r}, query={query!r})")
        self.url = url
        self.table = table
        self.query = query
        if engine is None:
            try:
                parsed = sa.engine.make_url(url)
            except sa.exc.ArgumentError as error:
                raise InputError(f"[data] url = {_redact(url)!r} is not a database URL: "
                                 f"{error}") from None
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            engine = sa.create_engine(parsed, pool_pre_ping=True)
        self.engine = engine
        self._columns: tuple[str, ...] | None = None
        self._booleans: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ relation
    def _relation(self, columns: Sequence[str]) -> sa.Subquery:
        relation = self._plain_relation(columns)
        if not self._booleans.intersection(columns):
            return relation
        return sa.select(*[sa.cast(relation.c[c], sa.Integer).label(c)
                           if c in self._booleans else relation.c[c]
                           for c in columns]).subquery("src_b")

    def _plain_relation(self, columns: Sequence[str]) -> sa.Subquery:
        cols: list[sa.ColumnClause[Any]] = [sa.column(_validate_identifier("column", c))
                                            for c in columns]
        if self.table is not None:
            parts = self.table.split(".")
            if len(parts) > 2:
                raise InputError(f"[data] table = {self.table!r}: use 'table' or "
                                 "'schema.table'")
            for part in parts:
                _validate_identifier("[data] table", part)
            schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
            table = sa.table(name, *cols, schema=schema)
            return sa.select(*table.c).subquery("src")
        return sa.text(self._query_text()).columns(*cols).subquery("src")

    def _query_text(self) -> str:
        """The SQL of a ``query`` source without its trailing ``;`` (to nest it)."""
        if self.query is None:
            raise InputError(f"[data] {self._describe()}: not a query source")
        return self.query.strip().rstrip(";")

    def columns(self) -> tuple[str, ...]:
        """Column names of the data set (one cheap query returning no rows)."""
        if self._columns is None:
            if self.table is not None:
                # schema-qualified names are validated by _relation
                self._relation([])
                sql = sa.text(f"SELECT * FROM {self._quoted_table()} WHERE 1 = 0")
            else:
                sql = sa.text(f"SELECT * FROM ({self._query_text()}) AS src WHERE 1 = 0")
            try:
                with self.engine.connect() as conn:
                    result = conn.execute(sql)
                    self._columns = tuple(result.keys())
                    description = result.cursor.description if result.cursor else None
            except sa.exc.SQLAlchemyError as error:
                raise InputError(f"[data] {self._describe()}: the database refused it: "
                                 f"{_first_line(error)}") from None
            # PostgreSQL boolean columns (type OID 16) are read as 0/1, as the CSV path
            # reads a boolean column: comparisons with 0 and 1 and sums then work.
            if self.engine.dialect.name == "postgresql" and description:
                self._booleans = frozenset(
                    name for name, column in zip(self._columns, description)
                    if getattr(column, "type_code", None) == 16)
        return self._columns

    def declared_type(self, column: str) -> str | None:
        """The declared type of a column of a ``table`` source, as the database reports it.

        None for a ``query`` source, a column declared without a type, or a database that
        cannot say; only used to explain a refusal at the site.
        """
        if self.table is None:
            return None
        schema, _, name = self.table.rpartition(".")
        try:
            found = sa.inspect(self.engine).get_columns(name, schema=schema or None)
        except sa.exc.SQLAlchemyError:
            return None
        for info in found:
            if info["name"] == column:
                kind = info.get("type")
                return None if kind is None or isinstance(kind, sa.types.NullType) \
                    else str(kind)
        return None

    def _quoted_table(self) -> str:
        if self.table is None:
            raise InputError(f"[data] {self._describe()}: not a table source")
        preparer = self.engine.dialect.identifier_preparer
        return ".".join(preparer.quote(p) for p in self.table.split("."))

    def _query_error(self, error: sa.exc.SQLAlchemyError) -> InputError:
        """A database error of one analysis's query, as the exception to raise.

        A column of the wrong type (text where a number is needed: the database raises a
        programming or data error) concerns that analysis only and becomes a
        :class:`DataProblem` (a refusal, as the CSV path refuses non-numeric values); a
        lost connection or a refused login concerns the whole source (InputError).
        """
        if isinstance(error, (sa.exc.ProgrammingError, sa.exc.DataError)):
            return DataProblem(f"[data] {self._describe()}: a column of this analysis does "
                               f"not hold the values it needs (the database said: "
                               f"{_first_line(error)})", "database_values")
        return InputError(f"[data] {self._describe()}: the database refused the query: "
                          f"{_first_line(error)}")

    def _describe(self) -> str:
        return f"table = {self.table!r}" if self.table else f"query = {self.query!r}"

    def require(self, analysis: str, columns: Sequence[str]) -> None:
        """Raise InputError naming the analysis and column when a column is missing."""
        present = set(self.columns())
        for column in columns:
            if column not in present:
                raise DataProblem(f"analysis {analysis!r}: column {column!r} is not in "
                                  f"[data] {self._describe()} (columns: "
                                  f"{', '.join(sorted(present))})", "missing_column",
                                  column=column)

    def _scalar_row(self, statement: sa.Executable) -> sa.Row:
        try:
            with self.engine.connect() as conn:
                return conn.execute(statement).one()
        except sa.exc.SQLAlchemyError as error:
            raise self._query_error(error) from None

    def count_rows(self, columns: Sequence[str] = ()) -> tuple[int, int]:
        """``(all rows, rows with no NULL in columns)``, counted by the database."""
        rel = self._relation(columns)
        complete = sa.and_(sa.true(), *[rel.c[c].is_not(None) for c in columns])
        row = self._scalar_row(sa.select(sa.func.count().label("total"),
                                         sa.func.count().filter(complete).label("complete")))
        return int(row.total), int(row.complete)

    def _complete(self, columns: Sequence[str]) -> sa.Subquery:
        """Rows with no NULL in ``columns`` (complete cases, as the CSV path drops NaN)."""
        src = self._relation(columns)
        return sa.select(*[src.c[c] for c in columns]).where(
            sa.and_(*[src.c[c].is_not(None) for c in columns])).subquery("cc")

    def _check_binary(self, analysis: str, rel: sa.Subquery, column: str) -> None:
        col = rel.c[column]
        row = self._scalar_row(sa.select(
            sa.func.count().filter(sa.not_(col.in_([0, 1]))).label("bad")))
        if row.bad:
            raise DataProblem(f"analysis {analysis!r}: column {column!r} must be 0/1; "
                              "some rows are not", "non_binary", column=column)

    def _check_probability(self, analysis: str, rel: sa.Subquery, column: str,
                           *, open_interval: bool = False) -> None:
        col = rel.c[column]
        bad = (col <= 0) | (col >= 1) if open_interval else (col < 0) | (col > 1)
        row = self._scalar_row(sa.select(
            sa.func.count().filter(bad).label("bad")))
        if row.bad:
            interval = "(0, 1)" if open_interval else "[0, 1]"
            raise DataProblem(f"analysis {analysis!r}: column {column!r} must be a "
                              f"probability in {interval}; some rows are not",
                              "probability_open" if open_interval else "probability_closed",
                              column=column)

    # ------------------------------------------------------------------ aggregates
    def two_by_two(self, analysis: str, outcome: str, exposure: str) -> TwoByTwoCounts:
        """Cell counts of exposure × outcome, counted by the database."""
        self.require(analysis, [outcome, exposure])
        rel = self._complete([outcome, exposure])
        self._check_binary(analysis, rel, outcome)
        self._check_binary(analysis, rel, exposure)
        y, x = rel.c[outcome], rel.c[exposure]
        count = sa.func.count
        row = self._scalar_row(sa.select(
            count().filter((x == 1) & (y == 1)).label("a"),
            count().filter((x == 1) & (y == 0)).label("b"),
            count().filter((x == 0) & (y == 1)).label("c"),
            count().filter((x == 0) & (y == 0)).label("d")))
        return TwoByTwoCounts(int(row.a), int(row.b), int(row.c), int(row.d))

    def binary_outcome_table(self, analysis: str, outcome: str, exposure: str
                             ) -> TwoByTwoCounts | None:
        """Exposure × outcome cell counts when the outcome is 0/1 on the complete rows.

        ``None`` when some complete row's outcome is not 0 or 1 (a continuous outcome).
        One aggregate query; only the four counts (and whether the outcome is 0/1) leave
        the database. Disclosure control needs them: a mean difference or linear model of a
        0/1 outcome is a risk difference, from which ``yi``, ``vi`` and ``n`` identify this
        table (:mod:`site_agent.privacy`, rule 4), so its cells are checked although the
        estimate is not count-based.
        """
        self.require(analysis, [outcome, exposure])
        rel = self._complete([outcome, exposure])
        y, x = rel.c[outcome], rel.c[exposure]
        count = sa.func.count
        row = self._scalar_row(sa.select(
            count().filter(sa.not_(y.in_([0, 1]))).label("other"),
            count().filter((x == 1) & (y == 1)).label("a"),
            count().filter((x == 1) & (y == 0)).label("b"),
            count().filter((x == 0) & (y == 1)).label("c"),
            count().filter((x == 0) & (y == 0)).label("d")))
        if row.other:
            return None
        return TwoByTwoCounts(int(row.a), int(row.b), int(row.c), int(row.d))

    def level_counts(self, analysis: str, levels_of: str, by: str, max_levels: int
                     ) -> np.ndarray | None:
        """Counts of each distinct value of ``levels_of`` by the 0/1 column ``by``.

        Returns a ``(levels, 2)`` array (column 0: ``by == 0``, column 1: ``by == 1``), or
        None when ``levels_of`` has more than ``max_levels`` distinct values on the
        complete rows. One aggregate query whose result holds only counts (the values
        themselves are not selected), at most ``max_levels + 1`` rows of them. Disclosure
        control needs it: the estimates of a score or outcome with few distinct values are
        functions of this table (:data:`fedsynth.effects.patient_level.CATEGORICAL_LEVELS`).
        """
        self.require(analysis, [levels_of, by])
        rel = self._complete([levels_of, by])
        level, group = rel.c[levels_of], rel.c[by]
        count = sa.func.count
        statement = (sa.select(count().filter(group == 0).label("n0"),
                               count().filter(group == 1).label("n1"))
                     .group_by(level).limit(max_levels + 1))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(statement).all()
        except sa.exc.SQLAlchemyError as error:
            raise self._query_error(error) from None
        if len(rows) > max_levels:
            return None
        return np.array([(int(r.n0), int(r.n1)) for r in rows], dtype=np.int64
                        ).reshape(-1, 2)

    def two_group(self, analysis: str, outcome: str, exposure: str) -> TwoGroupMoments:
        """Group sizes, means and sums of squared deviations, by a two-pass query."""
        self.require(analysis, [outcome, exposure])
        rel = self._complete([outcome, exposure])
        self._check_binary(analysis, rel, exposure)
        y, x = rel.c[outcome], rel.c[exposure]
        yf = sa.cast(y, sa.Float)
        # Two passes with the means bound as parameters. (Computing them in a CTE and
        # joining is wrong on PostgreSQL: parallel workers may each recompute the CTE,
        # summing floats in another order, so "the" mean differs between workers.)
        try:
            with self.engine.connect() as conn:
                first = {int(r.g): (int(r.n), float(r.m)) for r in conn.execute(
                    sa.select(x.label("g"), sa.func.count().label("n"),
                              sa.func.avg(yf).label("m")).group_by(x))}
                m1 = first.get(1, (0, 0.0))[1]
                m0 = first.get(0, (0, 0.0))[1]
                centred = yf - sa.case((x == 1, sa.bindparam("m1", m1, type_=sa.Float)),
                                       else_=sa.bindparam("m0", m0, type_=sa.Float))
                rows = {int(r.g): float(r.ss or 0.0) for r in conn.execute(
                    sa.select(x.label("g"), sa.func.sum(centred * centred).label("ss"))
                    .group_by(x))}
        except sa.exc.SQLAlchemyError as error:
            raise self._query_error(error) from None
        moments = {g: GroupMoments(n, m, rows.get(g, 0.0)) for g, (n, m) in first.items()}
        empty = GroupMoments(0, float("nan"), float("nan"))
        return TwoGroupMoments(moments.get(1, empty), moments.get(0, empty))

    def observed_expected(self, analysis: str, outcome: str, score: str) -> ObservedExpected:
        """Observed events, expected events and n for the O/E ratio."""
        self.require(analysis, [outcome, score])
        rel = self._complete([outcome, score])
        self._check_binary(analysis, rel, outcome)
        # log(O/E) needs predictions strictly inside (0, 1), as the CSV path
        self._check_probability(analysis, rel, score, open_interval=True)
        row = self._scalar_row(sa.select(
            sa.func.coalesce(sa.func.sum(rel.c[outcome]), 0).label("o"),
            sa.func.coalesce(sa.func.sum(sa.cast(rel.c[score], sa.Float)), 0.0).label("e"),
            sa.func.count().label("n")))
        return ObservedExpected(float(row.o), float(row.e), int(row.n))

    def brier(self, analysis: str, outcome: str, score: str) -> BrierMoments:
        """Mean and squared deviations of the squared error ``(score - outcome)²``."""
        self.require(analysis, [outcome, score])
        rel = self._complete([outcome, score])
        self._check_binary(analysis, rel, outcome)
        self._check_probability(analysis, rel, score)
        err = sa.cast(rel.c[score], sa.Float) - sa.cast(rel.c[outcome], sa.Float)
        sq = err * err
        first = self._scalar_row(sa.select(sa.func.count().label("n"),
                                           sa.func.avg(sq).label("m"),
                                           sa.func.coalesce(sa.func.sum(rel.c[outcome]), 0)
                                           .label("events")))
        if not first.n:
            return BrierMoments(0, float("nan"), float("nan"), 0)
        mean = float(first.m)
        dev = sq - sa.bindparam("m", mean, type_=sa.Float)
        second = self._scalar_row(sa.select(sa.func.sum(dev * dev).label("ss")))
        return BrierMoments(int(first.n), mean, float(second.ss), int(first.events))

    def auc(self, analysis: str, outcome: str, score: str) -> AucPlacements:
        """AUC and DeLong's variance components from per-score counts (window sums)."""
        self.require(analysis, [outcome, score])
        rel = self._complete([outcome, score])
        self._check_binary(analysis, rel, outcome)
        y = rel.c[outcome]
        s = sa.cast(rel.c[score], sa.Float)
        # counts of positives and negatives per distinct score
        groups = (sa.select(s.label("s"),
                            sa.func.count().filter(y == 1).label("npos"),
                            sa.func.count().filter(y == 0).label("nneg"))
                  .group_by(s).cte("groups"))
        totals = self._scalar_row(sa.select(
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
        # DeLong placement values; a tie between a positive and a negative counts 1/2
        placed = sa.select(
            groups.c.npos, groups.c.nneg,
            ((sa.cast(neg_below, sa.Float) + 0.5 * groups.c.nneg) / float(n0)).label("v10"),
            ((sa.cast(pos_above, sa.Float) + 0.5 * groups.c.npos) / float(n1)).label("v01"),
        ).subquery("placed")
        first = self._scalar_row(sa.select(
            sa.func.sum(placed.c.npos * placed.c.v10).label("sum10")))
        auc = float(first.sum10) / n1
        a = sa.bindparam("auc", auc, type_=sa.Float)
        # two-pass variances around the AUC (the mean of both sets of placements)
        second = self._scalar_row(sa.select(
            sa.func.sum(placed.c.npos * (placed.c.v10 - a) * (placed.c.v10 - a)).label("q10"),
            sa.func.sum(placed.c.nneg * (placed.c.v01 - a) * (placed.c.v01 - a)).label("q01")))
        s10 = float(second.q10) / (n1 - 1) if n1 > 1 else float("nan")
        s01 = float(second.q01) / (n0 - 1) if n0 > 1 else float("nan")
        return AucPlacements(auc, s10, s01, n1, n0)

    # ------------------------------------------------------------------ streaming
    def fetch_columns(self, columns: Sequence[str], *, analysis: str = "?",
                      chunk_rows: int = STREAM_CHUNK_ROWS) -> dict[str, np.ndarray]:
        """Stream only ``columns`` (all rows) into arrays, chunk by chunk.

        A server-side cursor (``stream_results``) keeps the driver from buffering the
        whole result; each chunk is converted to NumPy at once, so the peak is the final
        arrays plus one chunk of Python objects. Numeric columns become float64 with NULL
        as NaN (the estimators drop incomplete rows as they do for CSV input); a column
        holding anything else stays an object array, so the estimators refuse the
        analyses that use it ("invalid_values") exactly as for a CSV file.
        """
        self.require(analysis, columns)
        rel = self._relation(columns)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True,
                                                max_row_buffer=chunk_rows).execute(
                    sa.select(*[rel.c[c] for c in columns]))
                for chunk in result.partitions(chunk_rows):
                    for i, c in enumerate(columns):
                        values = [row[i] for row in chunk]
                        try:
                            parts[c].append(np.array(
                                [np.nan if v is None else v for v in values], dtype=float))
                        except (TypeError, ValueError):
                            parts[c].append(np.array(values, dtype=object))
        except sa.exc.SQLAlchemyError as error:
            raise self._query_error(error) from None
        return {c: (np.concatenate(p) if p else np.empty(0)) for c, p in parts.items()}

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: show nothing secret
        return "<unparsable url>"
