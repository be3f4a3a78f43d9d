"""The coordinator's state store: sites, rounds, submissions.

(Schedule state lives in :class:`coordinator.scheduler.SqlScheduleState`, in the same
database.)

Why
---
A coordinator may be killed at any moment (OOM killer, reboot, SIGKILL); an accepted
submission is a promise to a hospital, so it is committed before it is acknowledged, and a
round's close is one conditional transaction so that a restarted or a second coordinator
never pools a round twice. SQLAlchemy Core (no ORM) keeps the SQL explicit and lets the
same code run on SQLite (one file, WAL journal, ``synchronous=FULL``) and on PostgreSQL
(``postgresql://`` URL, psycopg 3).

Concurrency control is optimistic and portable (no ``SELECT ... FOR UPDATE``, which SQLite
lacks): every accepted submission increments ``rounds.n_submissions`` in the same
transaction with ``WHERE status = 'open'``; the close is
``UPDATE rounds SET status = ... WHERE id = :id AND status = 'open' AND n_submissions =
:seen``, so a close computed from a stale set of submissions, or a second close, changes no
row and is retried or dropped.

The schema is versioned (``schema_version`` table); :data:`MIGRATIONS` upgrades an older
store in order, each step in its own transaction, and a store written by a newer fedsynth is
refused rather than misread. Times are stored as ISO-8601 UTC strings (portable, sortable,
what the round document shows).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import PRIVATE_FILE_MODE, create_private_file
from fedsynth.timeutil import iso, parse_iso, utcnow

__all__ = ["Store", "SiteRecord", "RoundRecord", "SubmissionRecord", "SubmissionConflict",
           "OutboxEntry", "StoreError", "SCHEMA_VERSION", "iso", "parse_iso", "utcnow"]

log = logging.getLogger(__name__)

#: Schema version this code writes.
SCHEMA_VERSION = 3


class StoreError(FedsynthError):
    """The state store cannot be used (newer schema, unreachable database)."""


class SubmissionConflict(FedsynthError):
    """A submission the store refuses, with a machine ``kind`` and a plain reason.

    Kinds: ``unknown_round``, ``round_closed``, ``late``, ``site_not_in_round``,
    ``different_content``, ``replay``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


metadata = sa.MetaData()

#: One row; updating it serialises concurrent migrators (see :meth:`Store.migrate`).
schema_lock = sa.Table(
    "schema_lock", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, nullable=False),
)

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("migrated_at", sa.String(32), nullable=False),
)

sites = sa.Table(
    "sites", metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("registered_at", sa.String(32), nullable=False),
    sa.Column("last_heartbeat", sa.String(32), nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=True),
    sa.Column("protocol_version", sa.String(64), nullable=True),
)

rounds = sa.Table(
    "rounds", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("spec_toml", sa.Text, nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("opened_at", sa.String(32), nullable=False),
    sa.Column("deadline", sa.String(32), nullable=False),
    sa.Column("closed_at", sa.String(32), nullable=True),
    sa.Column("quorum", sa.Integer, nullable=False),
    sa.Column("allowed_json", sa.Text, nullable=False),
    sa.Column("pooling_json", sa.Text, nullable=False),
    sa.Column("failure_reason", sa.Text, nullable=True),
    sa.Column("n_submissions", sa.Integer, nullable=False, default=0),
    sa.Column("document_json", sa.Text, nullable=True),
    sa.Column("report_json", sa.Text, nullable=True),
    sa.Column("source", sa.String(200), nullable=True),
)

submissions = sa.Table(
    "submissions", metadata,
    sa.Column("round_id", sa.String(40), sa.ForeignKey("rounds.id"), primary_key=True),
    sa.Column("site", sa.String(63), primary_key=True),
    sa.Column("nonce", sa.String(64), nullable=False, unique=True),
    sa.Column("signed_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("results_json", sa.Text, nullable=False),
    sa.Column("agent_version", sa.String(64), nullable=True),
)

#: Audit entries committed in the same transaction as the state change they record
#: (an accepted submission), appended to the audit log right after the commit and deleted
#: once appended; what a crash leaves here is appended at the next start (transactional
#: outbox), so no accepted submission lacks its ``submission.accepted`` entry.
audit_outbox = sa.Table(
    "audit_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

#: The last certificate revocation list the coordinator accepted (one row): a missing or
#: older CRL file is refused against it, across restarts too.
trusted_crl = sa.Table(
    "trusted_crl", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("der", sa.LargeBinary, nullable=False),
    sa.Column("accepted_at", sa.String(32), nullable=False),
)


#: Every accepted answer to a model step (issue 13): the signed bytes and the signature, as
#: for submissions, so a model's fit can be audited step by step; the unique nonce refuses a
#: replayed answer and the primary key a second, different answer to the same step.
step_answers = sa.Table(
    "step_answers", metadata,
    sa.Column("round_id", sa.String(40), sa.ForeignKey("rounds.id"), primary_key=True),
    sa.Column("site", sa.String(63), primary_key=True),
    sa.Column("step_id", sa.String(128), primary_key=True),
    sa.Column("nonce", sa.String(64), nullable=False, unique=True),
    sa.Column("signed_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
)

#: The model fits of a round (one row per round): ``running`` while the coordinator fits,
#: ``done`` with the ``models`` entries of the round document once every model is fitted.
round_models = sa.Table(
    "round_models", metadata,
    sa.Column("round_id", sa.String(40), sa.ForeignKey("rounds.id"), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("results_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema."""
    metadata.create_all(conn, tables=[sites, rounds, submissions])


def _migration_2(conn: Connection) -> None:
    """The audit outbox and the last good revocation list (issue 10)."""
    metadata.create_all(conn, tables=[audit_outbox, trusted_crl])


def _migration_3(conn: Connection) -> None:
    """Model steps and model results (issue 13, phase 2)."""
    metadata.create_all(conn, tables=[step_answers, round_models])


#: Ordered migrations: MIGRATIONS[i] upgrades version i to i + 1.
MIGRATIONS: Sequence[Callable[[Connection], None]] = (_migration_1, _migration_2,
                                                      _migration_3)


@dataclass(frozen=True)
class SiteRecord:
    """One site of the registry (``fedsynth sites``)."""

    name: str
    registered_at: str | None
    last_heartbeat: str | None
    agent_version: str | None
    protocol_version: str | None

    def status(self, now: _dt.datetime, online_within: _dt.timedelta) -> str:
        """The site's connection status: ``online``, ``offline`` or ``never seen``.

        ``online`` if a heartbeat arrived within ``online_within``, else ``offline``;
        ``never seen`` for an allowed site that never connected.
        """
        if self.last_heartbeat is None:
            return "never seen"
        last = parse_iso(self.last_heartbeat)
        return "online" if last is not None and now - last <= online_within else "offline"


@dataclass(frozen=True)
class RoundRecord:
    """One round as stored."""

    id: str
    status: str
    spec_toml: str
    spec: dict[str, Any]
    opened_at: _dt.datetime
    deadline: _dt.datetime
    closed_at: _dt.datetime | None
    quorum: int
    allowed: tuple[str, ...]
    pooling: dict[str, Any]
    failure_reason: str | None
    n_submissions: int
    document: dict[str, Any] | None
    report: dict[str, Any] | None
    source: str | None

    @property
    def is_open(self) -> bool:
        """Whether the round still accepts submissions."""
        return self.status == "open"


@dataclass(frozen=True)
class OutboxEntry:
    """An audit entry committed with the change it records, not yet appended to the log."""

    id: int
    event: str
    data: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class SubmissionRecord:
    """One accepted submission: the signed bytes, the signature and the decoded results."""

    round_id: str
    site: str
    nonce: str
    signed_at: str
    received_at: str
    payload: bytes
    signature: bytes
    digest: str
    results: dict[str, dict[str, Any]]
    agent_version: str | None


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite store owner-only (0600) before SQLite creates it with the umask.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode, so the three
    files are private. A store created by an older fedsynth with group or other access is
    made owner-only, and the log says so: it holds every submission and round.
    """
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        if create_private_file(database):
            return
    except OSError as error:
        raise StoreError(f"state store file {database!r} cannot be created: "
                         f"{error.strerror or error}") from None
    for path in (database, database + "-wal", database + "-shm"):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(path, PRIVATE_FILE_MODE)
            log.warning("state store file %s was readable by others (mode %04o); made "
                        "owner-only (0600)", path, mode)


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL: readers (the round CLI) never block the coordinator's writes;
            # synchronous=FULL: a committed submission survives a power cut, not only a
            # process kill; busy_timeout: the CLI and the server share the file.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class _Answer:
    """What :meth:`Store._admit` checks for one kind of signed answer.

    Its table, its key within a round and site, and the wording of its conflicts.
    """

    table: sa.Table
    key: Callable[[str, str], tuple[Any, ...]]
    different: Callable[[str, str], str]
    replay: str


_SUBMISSION = _Answer(
    table=submissions,
    key=lambda round_id, site: (submissions.c.round_id == round_id,
                                submissions.c.site == site),
    different=lambda round_id, site: (f"site {site!r} already submitted a different answer "
                                      f"to round {round_id!r}; a round takes one submission "
                                      "per site"),
    replay="this submission's nonce was already used (replayed submission)")


def _step_answer(step_id: str) -> _Answer:
    """The :class:`_Answer` of one model step (its key includes the step)."""
    return _Answer(
        table=step_answers,
        key=lambda round_id, site: (step_answers.c.round_id == round_id,
                                    step_answers.c.site == site,
                                    step_answers.c.step_id == step_id),
        different=lambda round_id, site: (f"site {site!r} already answered step "
                                          f"{step_id!r} differently"),
        replay="this answer's nonce was already used (replayed answer)")


class Store:
    """The coordinator's state (SQLite or PostgreSQL through SQLAlchemy Core).

    Parameters
    ----------
    url
        SQLAlchemy URL (``sqlite:////abs/state.db`` or ``postgresql+psycopg://...``);
        :func:`fedsynth.config.state_url` builds it from coordinator.toml's ``state``.
    migrate
        Create or upgrade the schema (default). The read-only CLI passes True too: the
        schema must exist for it to show anything.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        # round id -> its allowed sites, parsed once: a round's allow-list never changes
        # after it is opened, and parsing it per submission or per PullWork cost O(sites)
        # per call (O(sites²) per round)
        self._allowed: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        try:
            self.engine = _engine(url)
            if migrate:
                self.migrate()
        except sa.exc.OperationalError as error:
            raise StoreError(f"state store {self._safe_url()} cannot be opened: "
                             f"{error.orig}") from None

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the database connections of this store."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version of the database (0 before the first migration)."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            value = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            return int(value or 0)

    def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION`; return the version.

        Safe when several processes start together (the coordinator and a ``round`` CLI, or
        two coordinator replicas): every migrator first updates the single row of
        ``schema_lock``, which serialises them (a row lock on PostgreSQL, the write lock on
        SQLite), and only then reads the version, so each migration runs exactly once.
        """
        for attempt in range(10):
            try:
                with self.engine.begin() as conn:
                    schema_lock.create(conn, checkfirst=True)
                    schema_version.create(conn, checkfirst=True)
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(sa.func.count()).select_from(schema_lock)
                                    ).scalar() == 0:
                        conn.execute(schema_lock.insert().values(id=1, n=0))
                break
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
                # Another process created the table or the row between our check and our
                # statement: look again.
                time.sleep(0.05 * (attempt + 1))
        with self.engine.begin() as conn:
            conn.execute(schema_lock.update().where(schema_lock.c.id == 1).values(
                n=schema_lock.c.n + 1))
            current = int(conn.execute(
                sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)
            if current > SCHEMA_VERSION:
                raise StoreError(f"state store {self._safe_url()} has schema version "
                                 f"{current}, newer than this fedsynth's {SCHEMA_VERSION}: "
                                 "upgrade fedsynth")
            for version in range(current, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
                conn.execute(schema_version.insert().values(version=version + 1,
                                                            migrated_at=iso(utcnow())))
        return SCHEMA_VERSION

    # --- sites -----------------------------------------------------------------------------
    def record_contact(self, name: str, *, agent_version: str | None,
                       protocol_version: str | None, now: _dt.datetime) -> None:
        """Register a site or record its heartbeat (upsert)."""
        stamp = iso(now)
        with self.engine.begin() as conn:
            updated = conn.execute(
                sites.update().where(sites.c.name == name).values(
                    last_heartbeat=stamp, agent_version=agent_version,
                    protocol_version=protocol_version)).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(sites.insert().values(
                            name=name, registered_at=stamp, last_heartbeat=stamp,
                            agent_version=agent_version, protocol_version=protocol_version))
                except sa.exc.IntegrityError:
                    conn.execute(sites.update().where(sites.c.name == name).values(
                        last_heartbeat=stamp, agent_version=agent_version,
                        protocol_version=protocol_version))

    def list_sites(self) -> list[SiteRecord]:
        """Every site that ever connected, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sites).order_by(sites.c.name)).mappings().all()
        return [SiteRecord(r["name"], r["registered_at"], r["last_heartbeat"],
                           r["agent_version"], r["protocol_version"]) for r in rows]

    # --- rounds ----------------------------------------------------------------------------
    def create_round(self, *, spec_toml: str, spec: dict[str, Any], deadline: _dt.datetime,
                     quorum: int, allowed: Sequence[str], pooling: dict[str, Any],
                     now: _dt.datetime, source: str | None = None) -> RoundRecord:
        """Open a round; its id is ``r-YYYYMMDD-NNNN`` (per-day sequence)."""
        if quorum < 1:
            raise InputError(f"quorum = {quorum} must be at least 1")
        if deadline <= now:
            raise InputError(f"deadline {iso(deadline)} is not in the future")
        prefix = f"r-{now.astimezone(_dt.UTC):%Y%m%d}-"
        for _attempt in range(50):
            with self.engine.begin() as conn:
                last = conn.execute(sa.select(sa.func.max(rounds.c.id)).where(
                    rounds.c.id.like(prefix + "%"))).scalar()
                number = int(last.rsplit("-", 1)[1]) + 1 if last else 1
                round_id = f"{prefix}{number:04d}"
                try:
                    with conn.begin_nested():
                        conn.execute(rounds.insert().values(
                            id=round_id, status="open", spec_toml=spec_toml,
                            spec_json=json.dumps(spec, sort_keys=True), opened_at=iso(now),
                            deadline=iso(deadline), closed_at=None, quorum=int(quorum),
                            allowed_json=json.dumps(sorted(allowed)),
                            pooling_json=json.dumps(pooling, sort_keys=True),
                            failure_reason=None, n_submissions=0, document_json=None,
                            report_json=None, source=source))
                except sa.exc.IntegrityError:
                    continue
            return self.get_round(round_id)
        raise StoreError("could not allocate a round id (too many concurrent round starts)")

    def _allowed_of(self, round_id: str, allowed_json: str) -> tuple[tuple[str, ...],
                                                                      frozenset[str]]:
        """The allow-list of ``round_id`` as a tuple and a set (parsed once per round)."""
        found = self._allowed.get(round_id)
        if found is None:
            names = tuple(json.loads(allowed_json))
            found = (names, frozenset(names))
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            self._allowed[round_id] = found
        return found

    def _round(self, row: Any) -> RoundRecord:
        return RoundRecord(
            id=row["id"], status=row["status"], spec_toml=row["spec_toml"],
            spec=json.loads(row["spec_json"]), opened_at=parse_iso(row["opened_at"]),
            deadline=parse_iso(row["deadline"]), closed_at=parse_iso(row["closed_at"]),
            quorum=row["quorum"], allowed=self._allowed_of(row["id"], row["allowed_json"])[0],
            pooling=json.loads(row["pooling_json"]), failure_reason=row["failure_reason"],
            n_submissions=row["n_submissions"],
            document=json.loads(row["document_json"]) if row["document_json"] else None,
            report=json.loads(row["report_json"]) if row["report_json"] else None,
            source=row["source"])

    def get_round(self, round_id: str) -> RoundRecord:
        """The round ``round_id``; :class:`InputError` naming it when unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rounds).where(rounds.c.id == round_id)
                               ).mappings().first()
        if row is None:
            raise InputError(f"round {round_id!r} does not exist")
        return self._round(row)

    def find_round(self, round_id: str) -> RoundRecord | None:
        """The round ``round_id``, or None if there is none (where absence is not an error)."""
        try:
            return self.get_round(round_id)
        except InputError:
            return None

    def list_rounds(self, status: str | None = None) -> list[RoundRecord]:
        """The rounds (optionally only those with ``status``) in the order they were opened."""
        query = sa.select(rounds).order_by(rounds.c.opened_at, rounds.c.id)
        if status is not None:
            query = query.where(rounds.c.status == status)
        with self.engine.connect() as conn:
            return [self._round(r) for r in conn.execute(query).mappings().all()]

    def open_rounds_for(self, site: str, now: _dt.datetime) -> list[RoundRecord]:
        """Open rounds, before their deadline, that allow ``site`` and it has not answered."""
        # NOT EXISTS on the primary key (round_id, site): one index probe per open round,
        # where NOT IN (submissions of this site) scanned every submission ever stored
        answered = sa.exists().where(submissions.c.round_id == rounds.c.id,
                                     submissions.c.site == site)
        query = (sa.select(rounds).where(rounds.c.status == "open")
                 .where(rounds.c.deadline > iso(now))
                 .where(~answered).order_by(rounds.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            return [self._round(r) for r in rows
                    if site in self._allowed_of(r["id"], r["allowed_json"])[1]]

    # --- submissions and step answers: one admission rule ----------------------------------
    def _admit(self, conn: Connection, answer: _Answer, *, round_id: str, site: str,
               nonce: bytes, digest: str, now: _dt.datetime) -> bool:
        """The round's checks shared by submissions and step answers; True: a resend.

        In this order: the round exists; an answer already stored under ``answer``'s key
        is an identical resend (True, whatever the round's state, so a restarted agent can
        finish) or a different answer (``different_content``); the round is open, before
        its deadline and allows ``site``; the nonce was never used. Raises
        :class:`SubmissionConflict`; returns False when the answer may be stored.

        Only reads, and it must run before the caller's first write in ``conn``'s
        transaction. On SQLite the transaction takes the database's write lock at its first
        write (pysqlite defers ``BEGIN``): had the caller bumped ``rounds.n_submissions``
        before these checks, a transaction that had written would hold the lock while a
        racing identical resend still had to make its check, and the two would wait on
        each other (tests/unit/test_resends.py forces exactly that interleaving). Reading
        first keeps every racer's check lock-free; the loser's insert then fails on the
        unique keys and :meth:`_resolve_race` answers ``duplicate``.
        """
        row = conn.execute(sa.select(rounds.c.status, rounds.c.deadline,
                                     rounds.c.allowed_json)
                           .where(rounds.c.id == round_id)).mappings().first()
        if row is None:
            raise SubmissionConflict("unknown_round", f"round {round_id!r} does not exist")
        existing = conn.execute(sa.select(answer.table.c.digest).where(
            *answer.key(round_id, site))).scalar()
        if existing is not None:
            if existing == digest:
                return True
            raise SubmissionConflict("different_content", answer.different(round_id, site))
        if row["status"] != "open":
            raise SubmissionConflict("round_closed", f"round {round_id!r} is closed "
                                     f"({row['status']})")
        if iso(now) > row["deadline"]:
            raise SubmissionConflict("late", f"round {round_id!r} passed its deadline "
                                     f"{row['deadline']}")
        if site not in self._allowed_of(round_id, row["allowed_json"])[1]:
            raise SubmissionConflict("site_not_in_round", f"site {site!r} is not one of "
                                     f"round {round_id!r}'s sites")
        seen = conn.execute(sa.select(answer.table.c.round_id).where(
            answer.table.c.nonce == nonce.hex())).first()
        if seen is not None:
            raise SubmissionConflict("replay", answer.replay)
        return False

    def _resolve_race(self, answer: _Answer, *, round_id: str, site: str,
                      digest: str) -> str:
        """After a unique key refused the insert: ``"duplicate"`` or the conflict.

        A concurrent transaction stored an answer under the same key, or used the same
        nonce, between our checks and our insert (which rolled back whole): look again,
        in a new transaction that sees its commit.
        """
        with self.engine.connect() as conn:
            existing = conn.execute(sa.select(answer.table.c.digest).where(
                *answer.key(round_id, site))).scalar()
        if existing == digest:
            return "duplicate"
        if existing is not None:
            raise SubmissionConflict("different_content", answer.different(round_id, site))
        raise SubmissionConflict("replay", answer.replay)

    def add_submission(self, *, round_id: str, site: str, nonce: bytes,
                       signed_at: _dt.datetime, payload: bytes, signature: bytes,
                       results: dict[str, dict[str, Any]], agent_version: str | None,
                       now: _dt.datetime, audit: dict[str, Any] | None = None) -> str:
        """Store a verified submission; return ``"accepted"`` or ``"duplicate"``.

        Committed before returning (the caller acknowledges only after). An identical
        resend (same signed bytes) is ``"duplicate"`` and changes nothing, under any
        interleaving: when a concurrent transaction stored the same bytes first (the unique
        keys then refuse this insert), the store is read again and the answer is
        ``"duplicate"``, not a conflict. Raises :class:`SubmissionConflict` otherwise,
        changing nothing (the checks: :meth:`_admit`).

        The work is the same however many submissions the round holds: the checks read the
        round's row and look up this site's submission and the nonce by their keys; no
        earlier submission is read.

        ``audit``, when given, is the content of the ``submission.accepted`` audit entry: it
        is committed to the audit outbox in the same transaction as the submission
        (:meth:`pending_audit`), so that the entry cannot be lost between the commit and the
        append to the audit log.
        """
        digest = hashlib.sha256(payload).hexdigest()
        try:
            with self.engine.begin() as conn:
                if self._admit(conn, _SUBMISSION, round_id=round_id, site=site, nonce=nonce,
                               digest=digest, now=now):
                    return "duplicate"
                bumped = conn.execute(rounds.update().where(
                    rounds.c.id == round_id, rounds.c.status == "open").values(
                    n_submissions=rounds.c.n_submissions + 1)).rowcount
                if bumped != 1:
                    raise SubmissionConflict("round_closed", f"round {round_id!r} is closed")
                conn.execute(submissions.insert().values(
                    round_id=round_id, site=site, nonce=nonce.hex(),
                    signed_at=iso(signed_at), received_at=iso(now), payload=payload,
                    signature=signature, digest=digest,
                    results_json=json.dumps(results, sort_keys=True),
                    agent_version=agent_version))
                if audit is not None:
                    conn.execute(audit_outbox.insert().values(
                        event="submission.accepted",
                        data_json=json.dumps(audit, sort_keys=True), created_at=iso(now)))
            return "accepted"
        except sa.exc.IntegrityError:
            pass
        return self._resolve_race(_SUBMISSION, round_id=round_id, site=site, digest=digest)

    # --- model steps -----------------------------------------------------------------------
    def add_step_answer(self, *, round_id: str, site: str, step_id: str, kind: str,
                        nonce: bytes, signed_at: _dt.datetime, payload: bytes,
                        signature: bytes, now: _dt.datetime,
                        audit: dict[str, Any] | None = None) -> str:
        """Store a verified answer to a model step; ``"accepted"`` or ``"duplicate"``.

        The rules of :meth:`add_submission` (the same :meth:`_admit`): committed before the
        site is answered, an identical resend is ``"duplicate"``, and
        :class:`SubmissionConflict` (kinds ``unknown_round``, ``round_closed``, ``late``,
        ``site_not_in_round``, ``different_content``, ``replay``) changes nothing.
        ``audit`` is the ``model_step.accepted`` entry, committed to the outbox in the same
        transaction.
        """
        digest = hashlib.sha256(payload).hexdigest()
        answer = _step_answer(step_id)
        try:
            with self.engine.begin() as conn:
                if self._admit(conn, answer, round_id=round_id, site=site, nonce=nonce,
                               digest=digest, now=now):
                    return "duplicate"
                conn.execute(step_answers.insert().values(
                    round_id=round_id, site=site, step_id=step_id, nonce=nonce.hex(),
                    signed_at=iso(signed_at), received_at=iso(now), kind=kind,
                    payload=payload, signature=signature, digest=digest))
                if audit is not None:
                    conn.execute(audit_outbox.insert().values(
                        event="model_step.accepted",
                        data_json=json.dumps(audit, sort_keys=True), created_at=iso(now)))
            return "accepted"
        except sa.exc.IntegrityError:
            pass
        return self._resolve_race(answer, round_id=round_id, site=site, digest=digest)

    def step_answer_digest(self, round_id: str, site: str, step_id: str) -> str | None:
        """SHA-256 of the answer ``site`` stored for ``step_id`` of ``round_id``, or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(step_answers.c.digest).where(
                step_answers.c.round_id == round_id, step_answers.c.site == site,
                step_answers.c.step_id == step_id)).scalar()

    def count_step_answers(self, round_id: str) -> dict[str, int]:
        """``{site: answers stored}`` for ``round_id`` (diagnostics and tests)."""
        query = (sa.select(step_answers.c.site, sa.func.count())
                 .where(step_answers.c.round_id == round_id).group_by(step_answers.c.site))
        with self.engine.connect() as conn:
            return {str(site): int(n) for site, n in conn.execute(query).all()}

    def put_model_results(self, round_id: str, *, status: str,
                          results: list[dict[str, Any]], now: _dt.datetime) -> None:
        """Record the model fits of ``round_id`` (``running`` or ``done``)."""
        if status not in ("running", "done"):
            raise InputError(f"model results status {status!r} must be 'running' or 'done'")
        text = json.dumps(results, sort_keys=True, allow_nan=False)
        with self.engine.begin() as conn:
            updated = conn.execute(round_models.update().where(
                round_models.c.round_id == round_id).values(
                status=status, results_json=text, updated_at=iso(now))).rowcount
            if not updated:
                conn.execute(round_models.insert().values(
                    round_id=round_id, status=status, results_json=text,
                    updated_at=iso(now)))

    def model_results(self, round_id: str) -> tuple[str, list[dict[str, Any]]] | None:
        """``(status, models entries)`` of ``round_id``, or None before its fits started."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(round_models.c.status, round_models.c.results_json)
                               .where(round_models.c.round_id == round_id)).first()
        if row is None:
            return None
        return str(row[0]), list(json.loads(row[1]))

    # --- audit outbox ----------------------------------------------------------------------
    def pending_audit(self, after: int | None = None) -> list[OutboxEntry]:
        """Audit entries committed but not yet appended to the audit log, oldest first.

        ``after``: only the entries with a larger id (those committed since the caller's
        last look), so that the call after each accepted submission reads the new entries,
        not every entry waiting for the closer to clear them.
        """
        query = sa.select(audit_outbox).order_by(audit_outbox.c.id)
        if after is not None:
            query = query.where(audit_outbox.c.id > int(after))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [OutboxEntry(int(r["id"]), r["event"], json.loads(r["data_json"]),
                            r["created_at"]) for r in rows]

    def clear_audit(self, ids: Sequence[int]) -> None:
        """Forget outbox entries that are in the audit log now."""
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(audit_outbox.delete().where(audit_outbox.c.id.in_(list(ids))))

    # --- revocation ------------------------------------------------------------------------
    def trusted_crl(self) -> bytes | None:
        """The last revocation list the coordinator accepted (DER), or None."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(trusted_crl.c.der).where(trusted_crl.c.id == 1)
                                 ).scalar()
        return bytes(value) if value is not None else None

    def keep_trusted_crl(self, der: bytes, now: _dt.datetime) -> None:
        """Record ``der`` as the revocation list in force."""
        with self.engine.begin() as conn:
            updated = conn.execute(trusted_crl.update().where(trusted_crl.c.id == 1).values(
                der=der, accepted_at=iso(now))).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(trusted_crl.insert().values(id=1, der=der,
                                                                 accepted_at=iso(now)))
                except sa.exc.IntegrityError:
                    conn.execute(trusted_crl.update().where(trusted_crl.c.id == 1).values(
                        der=der, accepted_at=iso(now)))

    def submission_digest(self, round_id: str, site: str) -> str | None:
        """SHA-256 of the submission ``site`` stored for ``round_id``, or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(submissions.c.digest).where(
                submissions.c.round_id == round_id, submissions.c.site == site)).scalar()

    def submissions(self, round_id: str) -> list[SubmissionRecord]:
        """The submissions received for ``round_id``, by site."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(submissions).where(
                submissions.c.round_id == round_id).order_by(submissions.c.site)
            ).mappings().all()
        return [SubmissionRecord(r["round_id"], r["site"], r["nonce"], r["signed_at"],
                                 r["received_at"], bytes(r["payload"]), bytes(r["signature"]),
                                 r["digest"], json.loads(r["results_json"]),
                                 r["agent_version"]) for r in rows]

    def close_round(self, round_id: str, *, status: str, document: dict[str, Any],
                    failure_reason: str | None, seen_submissions: int,
                    now: _dt.datetime) -> bool:
        """Close ``round_id`` if it is still open and has exactly ``seen_submissions``.

        Returns False (and changes nothing) when another process closed it or a
        submission arrived after the caller read them: the caller then re-reads or stops.
        """
        if status not in ("pooled", "failed"):
            raise InputError(f"status {status!r} must be 'pooled' or 'failed'")
        with self.engine.begin() as conn:
            changed = conn.execute(rounds.update().where(
                rounds.c.id == round_id, rounds.c.status == "open",
                rounds.c.n_submissions == seen_submissions).values(
                status=status, closed_at=iso(now), failure_reason=failure_reason,
                document_json=json.dumps(document, sort_keys=True, allow_nan=False))).rowcount
        return changed == 1

    def set_report(self, round_id: str, report: dict[str, Any]) -> None:
        """Store the pooled report of a round (its JSON, for ``coordinator report``)."""
        with self.engine.begin() as conn:
            conn.execute(rounds.update().where(rounds.c.id == round_id).values(
                report_json=json.dumps(report, sort_keys=True)))

    def closed_without_report(self) -> list[RoundRecord]:
        """The closed rounds whose report was not written yet (to write at start-up)."""
        query = sa.select(rounds).where(rounds.c.status != "open",
                                        rounds.c.report_json.is_(None))
        with self.engine.connect() as conn:
            return [self._round(r) for r in conn.execute(query).mappings().all()]
