"""Scheduled rounds: croniter slots, one catch-up run after downtime, persistence, fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.scheduler import (
    ScheduleEntry,
    Scheduler,
    SqlScheduleState,
    due_runs,
    latest_slot,
    next_slot,
    schedule_entries,
)
from fedsynth.errors import ConfigError, InputError
from fedsynth.timeutil import parse_duration

UTC = dt.UTC


def t(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


MONTHLY = ScheduleEntry(spec=Path("monthly.toml"), cron="0 6 1 * *",
                        deadline=dt.timedelta(hours=2), quorum=3)


class FakeClock:
    def __init__(self, now: dt.datetime):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


# ---- slot arithmetic ----------------------------------------------------------------------

def test_latest_slot_is_inclusive_of_now():
    assert latest_slot("0 6 1 * *", t(2026, 12, 1, 6, 0)) == t(2026, 12, 1, 6, 0)
    assert latest_slot("0 6 1 * *", t(2026, 12, 1, 5, 59)) == t(2026, 11, 1, 6, 0)
    assert next_slot("0 6 1 * *", t(2026, 12, 1, 6, 0)) == t(2027, 1, 1, 6, 0)


def test_due_exactly_at_slot_and_not_before():
    last = t(2026, 11, 1, 6, 0)
    assert due_runs(MONTHLY, last, t(2026, 12, 1, 5, 59, 59)) is None
    assert due_runs(MONTHLY, last, t(2026, 12, 1, 6, 0)) == t(2026, 12, 1, 6, 0)
    # already handled: not due again in the same month
    assert due_runs(MONTHLY, t(2026, 12, 1, 6, 0), t(2026, 12, 20)) is None


def test_downtime_gives_one_run_for_the_latest_missed_slot():
    # down from October to late February: Nov, Dec, Jan and Feb slots were missed
    slot = due_runs(MONTHLY, t(2026, 10, 1, 6, 0), t(2027, 2, 25, 12, 0))
    assert slot == t(2027, 2, 1, 6, 0)
    # once that one is recorded, nothing else is due until March
    assert due_runs(MONTHLY, slot, t(2027, 2, 28, 23, 59)) is None
    assert due_runs(MONTHLY, slot, t(2027, 3, 1, 6, 0)) == t(2027, 3, 1, 6, 0)


def test_never_seen_entry_is_not_due():
    assert due_runs(MONTHLY, None, t(2026, 12, 1, 6, 0)) is None


def test_leap_day_and_weekday_cron_from_croniter():
    leap = ScheduleEntry(Path("s.toml"), "0 0 29 2 *", dt.timedelta(hours=1), 1)
    assert due_runs(leap, t(2024, 2, 29), t(2027, 6, 1)) is None       # no Feb 29 in 2025-27
    assert due_runs(leap, t(2024, 2, 29), t(2028, 3, 1)) == t(2028, 2, 29)
    mondays = ScheduleEntry(Path("s.toml"), "30 7 * * mon", dt.timedelta(hours=1), 1)
    assert due_runs(mondays, t(2026, 11, 16, 7, 30), t(2026, 11, 25, 14, 0)) == \
        t(2026, 11, 23, 7, 30)


def test_naive_datetimes_are_rejected():
    with pytest.raises(InputError, match="timezone-aware"):
        due_runs(MONTHLY, t(2026, 1, 1), dt.datetime(2026, 2, 1))


@settings(max_examples=60, deadline=None)
@given(last=st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1)),
       gap=st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=400)),
       cron=st.sampled_from(["0 6 1 * *", "*/15 * * * *", "0 0 * * 1-5", "5 4 29 2 *"]))
def test_due_run_is_the_latest_slot_in_the_window(last, gap, cron):
    entry = ScheduleEntry(Path("s.toml"), cron, dt.timedelta(hours=1), 1)
    last = last.replace(tzinfo=UTC)
    now = last + gap
    slot = due_runs(entry, last, now)
    following = next_slot(cron, last)
    if following > now:
        assert slot is None
    else:
        assert slot is not None and last < slot <= now
        assert next_slot(cron, slot) > now          # nothing later in the window
        assert due_runs(entry, slot, now) is None  # and only one run


# ---- configuration --------------------------------------------------------------------------

def test_schedule_entries_from_toml_tables(tmp_path):
    entries = schedule_entries([{"spec": "monthly.toml", "cron": "0 6 1 * *",
                                 "deadline": "2h", "quorum": 3}], tmp_path)
    assert entries == [ScheduleEntry(tmp_path / "monthly.toml", "0 6 1 * *",
                                     dt.timedelta(hours=2), 3)]


@pytest.mark.parametrize("item, message", [
    ({"spec": "a.toml", "cron": "61 * * * *"}, "cron = '61 \\* \\* \\* \\*'"),
    ({"spec": "a.toml", "cron": "* * * * *", "deadline": "soon"}, "deadline = 'soon'"),
    ({"spec": "a.toml", "cron": "* * * * *", "deadline": "-5m"}, "deadline = '-5m'"),
    ({"spec": "a.toml", "cron": "* * * * *", "quorum": 0}, "quorum = 0"),
    ({"spec": "a.toml", "cron": "* * * * *", "quorum": "3"}, "quorum = '3'"),
    ({"cron": "* * * * *"}, "spec = None"),
    ({"spec": "a.toml", "cron": "* * * * *", "qorum": 2}, "qorum = 2: unknown key"),
])
def test_bad_schedule_entries_name_key_and_value(item, message):
    with pytest.raises(ConfigError, match=message):
        schedule_entries([item], ".")


def test_parse_duration():
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_duration("1d") == dt.timedelta(days=1)
    assert parse_duration(45) == dt.timedelta(seconds=45)
    for bad in ("", "h", "10x", "5m garbage", "0s", True):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_duplicate_entries_are_refused():
    with pytest.raises(ConfigError, match="appears twice"):
        Scheduler([MONTHLY, MONTHLY])


# ---- the loop with a fake clock and a real SQLite store -------------------------------------

def _state(tmp_path) -> SqlScheduleState:
    return SqlScheduleState(tmp_path / "state.db")


def test_scheduler_anchors_then_runs_each_slot_once(tmp_path):
    clock = FakeClock(t(2026, 11, 25, 14, 0))
    state = _state(tmp_path)
    started: list[tuple[str, dt.datetime]] = []

    async def start(entry, slot):
        started.append((entry.cron, slot))
        return f"r-{len(started)}"

    scheduler = Scheduler([MONTHLY], clock=clock, sleep=clock.sleep)

    async def scenario():
        assert await scheduler.run_once(start, state) == []        # first seen: anchored
        clock.now = t(2026, 11, 30)
        assert await scheduler.run_once(start, state) == []
        clock.now = t(2026, 12, 1, 6, 0, 5)
        runs = await scheduler.run_once(start, state)
        assert [(r.slot, r.round_id, r.error) for r in runs] == [(t(2026, 12, 1, 6), "r-1", None)]
        assert await scheduler.run_once(start, state) == []        # not twice

    asyncio.run(scenario())
    assert started == [("0 6 1 * *", t(2026, 12, 1, 6))]
    [row] = state.history()
    assert row["round_id"] == "r-1" and row["error"] is None


def test_restart_after_downtime_starts_one_round(tmp_path):
    """A new Scheduler (a restarted coordinator) on the same database catches up once."""
    clock = FakeClock(t(2026, 9, 15))
    started: list[dt.datetime] = []

    async def start(entry, slot):
        started.append(slot)

    async def scenario():
        await Scheduler([MONTHLY], clock=clock).run_once(start, _state(tmp_path))
        clock.now = t(2026, 10, 1, 6, 1)
        await Scheduler([MONTHLY], clock=clock).run_once(start, _state(tmp_path))
        # coordinator down from October to late February
        clock.now = t(2027, 2, 25)
        restarted = Scheduler([MONTHLY], clock=clock)
        await restarted.run_once(start, _state(tmp_path))
        await restarted.run_once(start, _state(tmp_path))

    asyncio.run(scenario())
    assert started == [t(2026, 10, 1, 6), t(2027, 2, 1, 6)]


def test_failed_start_is_recorded_and_does_not_stop_other_entries(tmp_path):
    clock = FakeClock(t(2026, 1, 1))
    other = ScheduleEntry(Path("daily.toml"), "0 0 * * *", dt.timedelta(hours=1), 1)
    state = _state(tmp_path)

    async def start(entry, slot):
        if entry is MONTHLY:
            raise InputError("spec monthly.toml: no such file")
        return "r-daily"

    async def scenario():
        scheduler = Scheduler([MONTHLY, other], clock=clock)
        await scheduler.run_once(start, state)
        clock.now = t(2026, 2, 1, 7)
        return await scheduler.run_once(start, state)

    runs = asyncio.run(scenario())
    assert [(r.entry.spec.name, r.round_id) for r in runs] == [("monthly.toml", None),
                                                               ("daily.toml", "r-daily")]
    assert "no such file" in runs[0].error
    rows = {r["key"]: r for r in state.history()}
    assert "no such file" in rows[MONTHLY.key]["error"]
    # the failed slot is not retried at once (at most once per slot)
    assert asyncio.run(Scheduler([MONTHLY], clock=clock).run_once(start, state)) == []


def test_two_coordinators_sharing_a_database_open_a_slot_once(tmp_path):
    clock = FakeClock(t(2026, 1, 1))
    started: list[str] = []

    def starter(name):
        async def start(entry, slot):
            started.append(name)
        return start

    async def scenario():
        a, b = Scheduler([MONTHLY], clock=clock), Scheduler([MONTHLY], clock=clock)
        await a.run_once(starter("a"), _state(tmp_path))
        clock.now = t(2026, 2, 1, 6, 0, 1)
        state_a, state_b = _state(tmp_path), _state(tmp_path)
        # both read the same last slot, then race for the claim
        assert state_a.claim(MONTHLY.key, state_a.last_run(MONTHLY.key), t(2026, 2, 1, 6))
        await b.run_once(starter("b"), state_b)

    asyncio.run(scenario())
    assert started == []


def test_run_loop_sleeps_until_the_next_slot_with_fake_clock(tmp_path):
    clock = FakeClock(t(2026, 11, 25, 14, 0, 0))
    every_minute = ScheduleEntry(Path("m.toml"), "* * * * *", dt.timedelta(minutes=5), 1)
    started: list[dt.datetime] = []
    scheduler = Scheduler([every_minute], clock=clock, sleep=clock.sleep, max_sleep=3600)

    async def start(entry, slot):
        started.append(slot)
        if len(started) == 3:
            scheduler.stop()

    asyncio.run(asyncio.wait_for(scheduler.run(start, _state(tmp_path)), 10))
    assert started == [t(2026, 11, 25, 14, 1), t(2026, 11, 25, 14, 2), t(2026, 11, 25, 14, 3)]
    # it slept until (just after) each slot rather than polling
    assert len(clock.sleeps) == 3 and all(55 < s <= 60.1 for s in clock.sleeps)


def test_state_accepts_url_and_engine(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'x.db'}"
    SqlScheduleState(url).anchor("k", t(2026, 1, 1))
    assert SqlScheduleState(sa.create_engine(url)).last_run("k") == t(2026, 1, 1)
    with pytest.raises(InputError, match="schedule state database"):
        SqlScheduleState(42)


def test_rows_of_an_earlier_release_are_claimed(tmp_path):
    """Earlier releases wrote slots with microseconds (``...00.000000Z``); after the move to
    the one timestamp form those rows must still be claimable exactly once."""
    import sqlalchemy as sa

    state = _state(tmp_path)
    with state.engine.begin() as conn:
        conn.execute(state.table.insert().values(
            key=MONTHLY.key, last_slot="2026-11-01T06:00:00.000000Z", round_id=None,
            error=None, updated_at="2026-11-01T06:00:00.000000Z"))
    last = state.last_run(MONTHLY.key)
    assert last == t(2026, 11, 1, 6)
    assert not state.claim(MONTHLY.key, t(2026, 10, 1, 6), t(2026, 12, 1, 6))   # stale
    assert state.claim(MONTHLY.key, last, t(2026, 12, 1, 6))
    assert not state.claim(MONTHLY.key, last, t(2026, 12, 1, 6))                # once
    state.record(MONTHLY.key, t(2026, 12, 1, 6), round_id="r-1", error=None)
    with state.engine.connect() as conn:
        row = conn.execute(sa.select(state.table)).mappings().one()
    assert row["last_slot"] == "2026-12-01T06:00:00.000Z" and row["round_id"] == "r-1"
    assert len(row["updated_at"]) == 24 and row["updated_at"].endswith("Z")
