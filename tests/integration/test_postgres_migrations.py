"""Schema migrations of the coordinator's state store, on SQLite and on PostgreSQL.

The store (coordinator/store.py) keeps a ``schema_version`` table and applies
``MIGRATIONS[i]`` (version i -> i + 1) in order, each in its own transaction. These tests
check, on both backends: a fresh store reaches the current version; reopening is a no-op;
an upgrade from the previous schema keeps every round, submission and round document
(exercised with an extra, test-only migration on top of the real ones, since the runner
is what every future upgrade relies on); a failing migration leaves the previous schema
and data intact; a store from a newer fedsynth is refused; concurrent start-ups migrate
once.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

import coordinator.store as store_module
from coordinator.store import SCHEMA_VERSION, Store, StoreError
from tests.integration.pg_server import fresh_database

pytestmark = [pytest.mark.integration]

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
SPEC_TOML = '[[analysis]]\nname = "crude_OR"\nestimator = "two_by_two"\n' \
            'outcome = "outcome"\nexposure = "treated"\nmeasure = "OR"\n'


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return fresh_database("mig")


def populate(store: Store) -> list[str]:
    """Three rounds: one pooled with two submissions, one failed, one open."""
    ids = []
    for i in range(3):
        record = store.create_round(spec_toml=SPEC_TOML, spec={"analyses": [{"name": "x"}]},
                                    deadline=NOW + dt.timedelta(hours=1), quorum=1,
                                    allowed=["mtf-alpha", "mtf-bravo"],
                                    pooling={"method": "REML"}, now=NOW, source=f"test {i}")
        ids.append(record.id)
    for site in ("mtf-alpha", "mtf-bravo"):
        store.record_contact(site, agent_version="0.1.0", protocol_version="fedsynth.v1",
                             now=NOW)
        store.add_submission(round_id=ids[0], site=site, nonce=site.encode() * 2,
                             signed_at=NOW, payload=b"payload-" + site.encode(),
                             signature=b"sig", results={"crude_OR": {"yi": 0.1, "vi": 0.01,
                                                                     "se": 0.1, "n": 100}},
                             agent_version="0.1.0", now=NOW)
    assert store.close_round(ids[0], status="pooled", document={"round": ids[0], "k": 2},
                             failure_reason=None, seen_submissions=2, now=NOW)
    assert store.close_round(ids[1], status="failed", document={"round": ids[1]},
                             failure_reason="no quorum", seen_submissions=0, now=NOW)
    return ids


def snapshot(store: Store) -> dict:
    """Every round, submission and site, as comparable plain data."""
    out = {"rounds": {}, "submissions": {}, "sites": sorted(
        (s.name, s.agent_version) for s in store.list_sites())}
    for record in store.list_rounds():
        out["rounds"][record.id] = repr(record)
        out["submissions"][record.id] = [repr(s) for s in store.submissions(record.id)]
    return out


def versions(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(
                "SELECT version FROM schema_version ORDER BY version"))]
    finally:
        engine.dispose()


def columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_fresh_store_reaches_current_version_and_reopens_unchanged(url: str) -> None:
    with Store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        before = snapshot(store) if populate(store) else None
    with Store(url) as store:  # reopening migrates nothing and loses nothing
        assert store.schema_version() == SCHEMA_VERSION
        assert snapshot(store) == before
    assert versions(url) == list(range(1, SCHEMA_VERSION + 1))


def _add_note_column(conn: sa.Connection) -> None:
    """A test-only next migration: add a nullable column and backfill it."""
    conn.execute(sa.text("ALTER TABLE rounds ADD COLUMN note TEXT"))
    conn.execute(sa.text("UPDATE rounds SET note = 'migrated'"))


def test_upgrade_from_previous_schema_keeps_every_round(url: str, monkeypatch) -> None:
    with Store(url) as store:
        ids = populate(store)
        before = snapshot(store)
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        (*store_module.MIGRATIONS, _add_note_column))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION + 1
        assert snapshot(store) == before
        assert store.get_round(ids[0]).status == "pooled"
        assert len(store.submissions(ids[0])) == 2
    assert "note" in columns(url, "rounds")
    assert versions(url) == list(range(1, SCHEMA_VERSION + 2))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        notes = {r[0] for r in conn.execute(sa.text("SELECT note FROM rounds"))}
    engine.dispose()
    assert notes == {"migrated"}


def _broken_migration(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE rounds SET status = 'broken'"))
    raise RuntimeError("migration step failed half-way")


def test_failed_migration_leaves_previous_schema_and_data(url: str, monkeypatch) -> None:
    with Store(url) as store:
        populate(store)
        before = snapshot(store)
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        (*store_module.MIGRATIONS, _broken_migration))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="half-way"):
        Store(url)
    monkeypatch.undo()
    with Store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert snapshot(store) == before  # the UPDATE was rolled back with the step


def test_store_from_newer_fedsynth_is_refused(url: str) -> None:
    with Store(url) as store:
        populate(store)
        before = snapshot(store)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, migrated_at) "
                             "VALUES (:v, '2030-01-01T00:00:00Z')"),
                     {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(url)
    with Store(url, migrate=False) as store:
        assert snapshot(store) == before


def test_concurrent_startups_migrate_once(url: str) -> None:
    """Coordinator and `round` CLI starting together on an empty store."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            Store(url).close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert versions(url) == list(range(1, SCHEMA_VERSION + 1))


def test_round_documents_survive_as_json(url: str) -> None:
    with Store(url) as store:
        ids = populate(store)
        record = store.get_round(ids[0])
    text = json.dumps(repr(record))
    assert ids[0] in text
