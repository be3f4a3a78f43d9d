"""Schedule state on PostgreSQL: the same table and compare-and-set claim as on SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from coordinator.scheduler import ScheduleEntry, Scheduler, SqlScheduleState
from tests.integration.pg_server import fresh_database

UTC = dt.UTC
pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_schedule_state_on_postgres_claims_each_slot_once():
    url = fresh_database("sched")
    entry = ScheduleEntry(Path("monthly.toml"), "0 6 1 * *", dt.timedelta(hours=2), 2)
    now = [dt.datetime(2026, 10, 15, tzinfo=UTC)]
    started: list[dt.datetime] = []

    async def start(e, slot):
        started.append(slot)
        return f"r-{len(started)}"

    async def scenario():
        a = Scheduler([entry], clock=lambda: now[0])
        b = Scheduler([entry], clock=lambda: now[0])
        state_a, state_b = SqlScheduleState(url), SqlScheduleState(url)   # two coordinators
        await a.run_once(start, state_a)
        await b.run_once(start, state_b)                  # anchoring twice is harmless
        now[0] = dt.datetime(2027, 1, 20, tzinfo=UTC)      # Nov, Dec, Jan slots missed
        results = await asyncio.gather(a.run_once(start, state_a), b.run_once(start, state_b))
        return results, state_a

    results, state = asyncio.run(scenario())
    assert started == [dt.datetime(2027, 1, 1, 6, tzinfo=UTC)]
    assert sum(len(r) for r in results) == 1
    [row] = state.history()
    assert row["round_id"] == "r-1" and row["last_slot"].startswith("2027-01-01T06:00:00")
    last = state.last_run(entry.key)
    assert not state.claim(entry.key, dt.datetime(2026, 12, 1, 6, tzinfo=UTC),
                           dt.datetime(2027, 2, 1, 6, tzinfo=UTC))     # stale: refused
    assert state.claim(entry.key, last, dt.datetime(2027, 2, 1, 6, tzinfo=UTC))
