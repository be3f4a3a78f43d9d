"""Scheduled rounds against the coordinator's real store, and the report CLI reading it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from coordinator.scheduler import ScheduleEntry, Scheduler, SqlScheduleState, round_starter
from fedsynth.cli import main

UTC = dt.UTC
SPEC = """
[[analysis]]
name = "crude_or"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"
"""


@pytest.fixture()
def coordinator_config(tmp_path):
    from fedsynth.config import load_coordinator_config

    (tmp_path / "monthly.toml").write_text(SPEC)
    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\ninsecure = true\n'
        '[sites]\nallow = ["mtf-alpha", "mtf-bravo", "mtf-charlie"]\n'
        '[[schedule]]\nspec = "monthly.toml"\ncron = "0 6 1 * *"\ndeadline = "2h"\n'
        'quorum = 2\n'
        '[[schedule]]\nspec = "missing.toml"\ncron = "0 7 1 * *"\ndeadline = "1h"\n')
    return load_coordinator_config(tmp_path / "coordinator.toml", insecure=True)


def test_scheduled_slot_opens_a_round_in_the_store(coordinator_config):
    from coordinator.store import Store

    clock_now = [dt.datetime(2026, 11, 25, 14, 0, tzinfo=UTC)]
    entries = [ScheduleEntry.from_config(e) for e in coordinator_config.schedule]
    with Store(coordinator_config.state) as store:
        state = SqlScheduleState(store)
        scheduler = Scheduler(entries, clock=lambda: clock_now[0])
        start = round_starter(coordinator_config, store, clock=lambda: clock_now[0])
        assert asyncio.run(scheduler.run_once(start, state)) == []
        assert store.list_rounds() == []
        clock_now[0] = dt.datetime(2026, 12, 3, 9, 0, tzinfo=UTC)      # after both slots
        runs = asyncio.run(scheduler.run_once(start, state))
        by_spec = {r.entry.spec.name: r for r in runs}
        ok, bad = by_spec["monthly.toml"], by_spec["missing.toml"]
        assert ok.error is None and ok.slot == dt.datetime(2026, 12, 1, 6, tzinfo=UTC)
        assert bad.round_id is None and "missing.toml" in bad.error
        [record] = store.list_rounds()
        assert record.id == ok.round_id and record.status == "open"
        assert record.quorum == 2 and record.deadline - record.opened_at == dt.timedelta(hours=2)
        assert [a["name"] for a in record.spec["analyses"]] == ["crude_or"]
        assert "schedule" in (record.source or "")
        assert asyncio.run(scheduler.run_once(start, state)) == []     # once per slot


def test_report_cli_reads_rounds_from_the_store(coordinator_config, tmp_path, capsys):
    from coordinator.store import Store
    from tests.unit.test_reports import make_round

    now = dt.datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    with Store(coordinator_config.state) as store:
        ids = []
        for day in (1, 2):
            record = store.create_round(spec_toml=SPEC, spec={"analyses": []},
                                        deadline=now + dt.timedelta(hours=1), quorum=1,
                                        allowed=["mtf-alpha"], pooling={}, now=now)
            doc = make_round(record.id, f"2026-11-2{day}T06:00:00Z")
            assert store.close_round(record.id, status="pooled", document=doc,
                                     failure_reason=None, seen_submissions=0, now=now)
            ids.append(record.id)
    config = str(tmp_path / "coordinator.toml")
    assert main(["report", "trend", "--config", config]) == 0
    trend = json.loads((tmp_path / "reports" / "trend.json").read_text())
    assert [r["round"] for r in trend["analyses"][0]["rounds"]] == ids
    assert main(["report", "round", ids[1], "--config", config]) == 0
    assert (tmp_path / "reports" / f"{ids[1]}.html").exists()
    capsys.readouterr()
