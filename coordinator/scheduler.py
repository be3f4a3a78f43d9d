"""Scheduled federated evaluation rounds (``[[schedule]]`` entries of coordinator.toml).

Why
---
The central team re-validates a deployed model at every site on a calendar (e.g. "06:00 on
the first of each month"). Calendar arithmetic is easy to get wrong (month lengths, day-of-week
OR day-of-month semantics of cron, leap years), so slots come from :mod:`croniter`, the
reference Python implementation of Vixie cron expressions, never from hand-written
arithmetic. Five fields are standard cron (minute resolution); croniter's optional sixth
field gives seconds, used by tests and short demos. All schedules are evaluated in UTC.

Semantics (recorded in ``docs/decisions/reports.md``):

* **At most one catch-up run.** After downtime, :func:`due_runs` returns only the *latest*
  missed slot, so a coordinator that was down for three months opens one round, not three
  identical ones (the data of the missed months is in the current data anyway).
* **First sight is not a missed run.** A schedule the store has never seen is anchored at
  "now"; its first round opens at its next slot, not immediately.
* **Claim before start, at most once.** The slot is claimed in the database with a
  compare-and-set *before* the round is opened, so two coordinator processes sharing one
  database cannot both open it, and a crash between claim and start skips that slot rather
  than duplicating a round. A failed start is recorded (``error``) and logged; the next slot
  runs normally.

The last handled slot of each entry is kept in a small table of this module,
``fedsynth_schedule_runs``, in the coordinator's own database (SQLite or PostgreSQL) via
SQLAlchemy Core, so the core store needs no schema change for it. Its times are written
in fedsynth's one timestamp form (:func:`fedsynth.timeutil.iso`).

The running coordinator drives a :class:`Scheduler` from
:meth:`coordinator.server.Coordinator.start` (its start callback also audits the round and
counts it in the metrics); :func:`round_starter` is the same callback without them, for a
scheduler run against a store outside the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from croniter import croniter

from coordinator.rounds import open_round
from fedsynth.errors import ConfigError, InputError
from fedsynth.spec import embed_model_files
from fedsynth.timeutil import iso, parse_duration, parse_iso, utcnow

__all__ = [
    "ScheduleEntry",
    "ScheduleState",
    "ScheduledRun",
    "Scheduler",
    "SqlScheduleState",
    "due_runs",
    "latest_slot",
    "next_slot",
    "round_starter",
    "schedule_entries",
]

log = logging.getLogger("fedsynth.scheduler")

def _aware(when: _dt.datetime, field: str) -> _dt.datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InputError(f"{field} = {when!r}: must be timezone-aware (UTC)")
    return when.astimezone(_dt.UTC)


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``[[schedule]]`` entry: which spec to run, when, and the round's terms.

    Attributes
    ----------
    spec
        Path of the analysis spec (TOML) the round runs.
    cron
        Cron expression, 5 fields (minute resolution) or 6 (croniter's trailing seconds
        field), evaluated in UTC.
    deadline
        How long the round stays open for submissions.
    quorum
        Minimum number of submitting sites for the round to be pooled.
    """

    spec: Path
    cron: str
    deadline: _dt.timedelta
    quorum: int

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise ConfigError(f"schedule cron = {self.cron!r}: not a valid cron expression "
                              "(5 fields 'min hour day month weekday', or 6 with seconds last)")
        if not isinstance(self.deadline, _dt.timedelta) or self.deadline <= _dt.timedelta(0):
            raise ConfigError(f"schedule deadline = {self.deadline!r}: must be a positive "
                              "duration")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise ConfigError(f"schedule quorum = {self.quorum!r}: must be an integer >= 1")

    @classmethod
    def from_config(cls, entry: Any) -> ScheduleEntry:
        """From :class:`fedsynth.config.ScheduleConfig` (same fields, already validated)."""
        return cls(spec=Path(entry.spec), cron=entry.cron, deadline=entry.deadline,
                   quorum=entry.quorum)

    @property
    def key(self) -> str:
        """Stable identity in the store: the spec path and the cron expression.

        Changing either makes a new schedule (anchored afresh), which is what an operator
        editing the calendar expects.
        """
        return f"{self.spec}|{' '.join(self.cron.split())}"


def schedule_entries(raw: Sequence[Mapping[str, Any]] | None,
                     base_dir: Path | str = ".") -> list[ScheduleEntry]:
    """Build entries from the ``[[schedule]]`` tables of a parsed coordinator.toml.

    Relative ``spec`` paths are resolved against ``base_dir`` (the config file's folder).
    Errors name the entry index, the key and the value.
    """
    entries: list[ScheduleEntry] = []
    for index, item in enumerate(raw or []):
        where = f"schedule[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a table, got {item!r}")
        unknown = sorted(set(item) - {"spec", "cron", "deadline", "quorum"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]} = {item[unknown[0]]!r}: unknown key "
                              "(allowed: spec, cron, deadline, quorum)")
        for key in ("spec", "cron"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}.{key} = {item.get(key)!r}: required, a string")
        spec = Path(item["spec"])
        if not spec.is_absolute():
            spec = Path(base_dir) / spec
        deadline = parse_duration(item.get("deadline", "1h"), f"{where}.deadline")
        quorum = item.get("quorum", 1)
        try:
            entries.append(ScheduleEntry(spec=spec, cron=item["cron"], deadline=deadline,
                                         quorum=quorum))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    return entries


# --------------------------------------------------------------------------------------------
# Pure slot arithmetic (croniter)
# --------------------------------------------------------------------------------------------

def latest_slot(cron: str, now: _dt.datetime) -> _dt.datetime:
    """The latest slot of ``cron`` at or before ``now`` (UTC)."""
    now = _aware(now, "now")
    previous = croniter(cron, now).get_prev(_dt.datetime)   # strictly before now
    candidate = croniter(cron, previous).get_next(_dt.datetime)
    return candidate if candidate <= now else previous


def next_slot(cron: str, after: _dt.datetime) -> _dt.datetime:
    """The first slot of ``cron`` strictly after ``after`` (UTC)."""
    return croniter(cron, _aware(after, "after")).get_next(_dt.datetime)


def due_runs(entry: ScheduleEntry, last_run: _dt.datetime | None,
             now: _dt.datetime) -> _dt.datetime | None:
    """The slot to run now, or None: at most ONE run however many slots were missed.

    Parameters
    ----------
    entry
        The schedule entry.
    last_run
        The last slot already handled (or the anchor set when the entry was first seen);
        None for an entry never seen, which is not due (it is anchored at ``now``).
    now
        Current time, timezone-aware.

    Returns
    -------
    datetime or None
        The latest slot in ``(last_run, now]`` (so after downtime the most recent missed
        slot, once), or None when no slot fell in that window.
    """
    now = _aware(now, "now")
    if last_run is None:
        return None
    last_run = _aware(last_run, "last_run")
    slot = latest_slot(entry.cron, now)
    return slot if slot > last_run else None


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------

class ScheduleState(Protocol):
    """Where the last handled slot of each schedule entry is kept."""

    def last_run(self, key: str) -> _dt.datetime | None:
        """The last handled slot of entry ``key`` (None when never seen)."""

    def anchor(self, key: str, when: _dt.datetime) -> None:
        """Record a newly seen entry as handled up to ``when``."""

    def claim(self, key: str, previous: _dt.datetime, slot: _dt.datetime) -> bool:
        """Move the entry from ``previous`` to ``slot``; True for the one caller that won."""

    def record(self, key: str, slot: _dt.datetime, *, round_id: str | None,
               error: str | None) -> None:
        """Attach the outcome of a claimed slot."""


class SqlScheduleState:
    """Schedule state in table ``fedsynth_schedule_runs`` of the coordinator's database.

    Parameters
    ----------
    database
        An SQLAlchemy ``Engine``, a database URL (``sqlite:///state.db``,
        ``postgresql://...``), a plain SQLite file path, or an object with an ``engine``
        attribute (the core store).
    """

    TABLE = "fedsynth_schedule_runs"

    def __init__(self, database: Any):
        if hasattr(database, "engine") and not isinstance(database, (str, Path)):
            engine = database.engine
        elif isinstance(database, sa.engine.Engine):
            engine = database
        elif isinstance(database, (str, Path)):
            url = str(database)
            if "://" not in url:
                url = f"sqlite:///{Path(url)}"
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            engine = sa.create_engine(url)
        else:
            raise InputError(f"schedule state database = {database!r}: expected an engine, "
                             "a URL or a path")
        self.engine = engine
        metadata = sa.MetaData()
        self.table = sa.Table(
            self.TABLE, metadata,
            sa.Column("key", sa.String(1024), primary_key=True),
            sa.Column("last_slot", sa.String(32), nullable=False),
            sa.Column("round_id", sa.String(128), nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("updated_at", sa.String(32), nullable=False),
        )
        metadata.create_all(engine, checkfirst=True)

    def last_run(self, key: str) -> _dt.datetime | None:
        """The last handled slot of entry ``key`` (None when never seen)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table.c.last_slot)
                               .where(self.table.c.key == key)).first()
        return None if row is None else parse_iso(row[0])

    def anchor(self, key: str, when: _dt.datetime) -> None:
        """Record a newly seen entry (no-op when another process anchored it first)."""
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(self.table.c.key)
                                  .where(self.table.c.key == key)).first()
            if exists is None:
                try:
                    conn.execute(self.table.insert().values(
                        key=key, last_slot=iso(when), round_id=None, error=None,
                        updated_at=iso(utcnow())))
                except sa.exc.IntegrityError:   # pragma: no cover - lost a race, fine
                    pass

    def claim(self, key: str, previous: _dt.datetime, slot: _dt.datetime) -> bool:
        """Compare-and-set ``last_slot`` from ``previous`` to ``slot``; True when we won.

        The stored text is compared as a time (a row written by an older release in another
        timestamp form, e.g. with microseconds, still matches), and the update is
        conditional on that exact text, so two coordinators cannot both win.
        """
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.table.c.last_slot)
                               .where(self.table.c.key == key)).first()
            if row is None or iso(parse_iso(row[0])) != iso(previous):
                return False
            result = conn.execute(
                sa.update(self.table)
                .where(self.table.c.key == key, self.table.c.last_slot == row[0])
                .values(last_slot=iso(slot), round_id=None, error=None,
                        updated_at=iso(utcnow())))
            return result.rowcount == 1

    def record(self, key: str, slot: _dt.datetime, *, round_id: str | None,
               error: str | None) -> None:
        """Attach the outcome (the round opened, or why it could not be) to a claimed slot."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(self.table)
                         .where(self.table.c.key == key,
                                self.table.c.last_slot == iso(slot))
                         .values(round_id=round_id, error=error, updated_at=iso(utcnow())))

    def history(self) -> list[dict[str, Any]]:
        """Every entry's state, for ``fedsynth``'s operators and tests."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).order_by(self.table.c.key)).mappings()
            return [dict(row) for row in rows]


# --------------------------------------------------------------------------------------------
# The scheduler loop
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduledRun:
    """What one scheduler pass did for one entry.

    Attributes
    ----------
    entry
        The schedule entry.
    slot
        The cron slot that was run.
    round_id
        The id returned by the start callback (None if it returned nothing or failed).
    error
        Why the round could not be started, or None.
    """

    entry: ScheduleEntry
    slot: _dt.datetime
    round_id: str | None
    error: str | None


StartRound = Callable[[ScheduleEntry, _dt.datetime], Awaitable[Any]]


class Scheduler:
    """Open rounds for schedule entries when their cron slots come due.

    Parameters
    ----------
    entries
        The ``[[schedule]]`` entries.
    clock
        Returns the current UTC time (tests pass a fake clock).
    sleep
        Awaitable sleep (tests pass one that advances the fake clock).
    max_sleep
        Longest single sleep in seconds, so that a wall-clock jump (NTP, suspended VM) is
        noticed within this time.
    """

    def __init__(self, entries: Sequence[ScheduleEntry], *,
                 clock: Callable[[], _dt.datetime] = utcnow,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_sleep: float = 30.0):
        keys = [e.key for e in entries]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ConfigError(f"schedule: entry {duplicates[0]!r} appears twice (same spec and "
                              "cron)")
        self.entries = tuple(entries)
        self.clock = clock
        self.sleep = sleep
        self.max_sleep = float(max_sleep)
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current pass."""
        self._stopped.set()

    async def run_once(self, start_round: StartRound, store: Any) -> list[ScheduledRun]:
        """One pass: anchor new entries, claim and start every due slot.

        Returns the runs started in this pass (empty when nothing was due).
        """
        state = _as_state(store)
        now = _aware(self.clock(), "clock()")
        runs: list[ScheduledRun] = []
        for entry in self.entries:
            # Store calls run in a thread: the scheduler shares the event loop with the
            # gRPC server, and a busy database (SQLite busy_timeout) must not stall it.
            last = await asyncio.to_thread(state.last_run, entry.key)
            if last is None:
                await asyncio.to_thread(state.anchor, entry.key, now)
                log.info("schedule %s: first seen, next round at %s", entry.key,
                         next_slot(entry.cron, now).isoformat())
                continue
            slot = due_runs(entry, last, now)
            if slot is None:
                continue
            if not await asyncio.to_thread(state.claim, entry.key, last, slot):
                continue        # another coordinator process took this slot
            round_id: str | None = None
            error: str | None = None
            try:
                result = await start_round(entry, slot)
                round_id = None if result is None else str(result)
                log.info("schedule %s: slot %s opened round %s", entry.key, slot.isoformat(),
                         round_id)
            except asyncio.CancelledError:
                state.record(entry.key, slot, round_id=None,     # no await: cancelled
                             error="cancelled while opening the round")
                raise
            except Exception as exc:    # the loop must survive one bad entry
                error = f"{type(exc).__name__}: {exc}"
                log.error("schedule %s: slot %s could not open a round: %s", entry.key,
                          slot.isoformat(), error)
            await asyncio.to_thread(state.record, entry.key, slot, round_id=round_id,
                                    error=error)
            runs.append(ScheduledRun(entry, slot, round_id, error))
        return runs

    def seconds_to_next(self, store: Any) -> float:
        """Seconds until the earliest next slot of any entry (capped at ``max_sleep``)."""
        state = _as_state(store)
        now = _aware(self.clock(), "clock()")
        wait = self.max_sleep
        for entry in self.entries:
            last = state.last_run(entry.key)
            base = max(now, last) if last is not None else now
            wait = min(wait, (next_slot(entry.cron, base) - now).total_seconds())
        return max(wait, 0.0)

    async def run(self, start_round: StartRound, store: Any) -> None:
        """Run passes until :meth:`stop` is called or the task is cancelled."""
        state = _as_state(store)
        if not self.entries:
            return
        while not self._stopped.is_set():
            await self.run_once(start_round, state)
            if self._stopped.is_set():
                break
            # Wake a hair after the next slot so that it is "at or before now".
            wait = await asyncio.to_thread(self.seconds_to_next, state)
            await self.sleep(min(self.max_sleep, wait + 0.01))


def _as_state(store: Any) -> ScheduleState:
    if all(hasattr(store, name) for name in ("last_run", "anchor", "claim", "record")):
        return store
    return SqlScheduleState(store)


# --------------------------------------------------------------------------------------------
# Wiring into the coordinator
# --------------------------------------------------------------------------------------------

def round_starter(config: Any, store: Any, *,
                  clock: Callable[[], _dt.datetime] = utcnow) -> StartRound:
    """A start callback that opens a round in the coordinator's store, as ``round start`` does.

    The spec file is read when the slot comes due (so an operator can edit it between runs);
    a missing or invalid spec is an error recorded for that slot. Deadline and quorum come
    from the schedule entry, the allowed sites and pooling defaults from ``config``.
    """
    async def start(entry: ScheduleEntry, slot: _dt.datetime) -> str:
        try:
            source = Path(entry.spec).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"schedule spec = {str(entry.spec)!r}: cannot be read "
                             f"({error.strerror or error})") from None
        # A model artifact named by a path travels embedded in the spec.
        source = embed_model_files(source, Path(entry.spec).parent)
        pooling = (dataclasses.asdict(config.pooling)
                   if dataclasses.is_dataclass(config.pooling)
                   and not isinstance(config.pooling, type) else dict(config.pooling))
        record = open_round(store, spec_source=source, deadline=entry.deadline,
                            quorum=entry.quorum, allowed=tuple(config.allow), pooling=pooling,
                            now=_aware(clock(), "clock()"),
                            source=f"schedule {entry.cron} {entry.spec.name} slot "
                                   f"{iso(slot)}")
        return record.id

    return start
