"""The state store: schema and migrations, round ids, submissions, transactional close."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from coordinator.rounds import close_if_due, open_round, pool_round, round_document
from coordinator.store import SCHEMA_VERSION, Store, StoreError, SubmissionConflict
from fedsynth.errors import InputError

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.timezone.utc)
SPEC = """
[[analysis]]
name = "a"
estimator = "two_group"
outcome = "y"
exposure = "t"
measure = "MD"
"""
POOLING = {"method": "DL", "test": "z", "level": 95.0, "i2_threshold": 50.0}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def _round(store: Store, allowed=("s1", "s2", "s3"), quorum=2, deadline=60):
    return open_round(store, spec_source=SPEC, deadline=dt.timedelta(seconds=deadline),
                      quorum=quorum, allowed=allowed, pooling=POOLING, now=NOW)


def _submit(store, round_id, site, *, nonce=None, payload=None, yi=0.1, vi=0.01, now=NOW):
    return store.add_submission(
        round_id=round_id, site=site, nonce=nonce or (site.encode() * 16)[:16],
        signed_at=now, payload=payload or f"{round_id}{site}{yi}".encode(), signature=b"sig",
        results={"a": {"yi": yi, "vi": vi, "se": vi ** 0.5, "n": 100}}, agent_version="t",
        now=now)


def test_schema_version_and_wal(store: Store, tmp_path: Path) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # Re-opening migrates nothing and keeps the data.
    record = _round(store)
    with Store(store.url) as again:
        assert again.get_round(record.id).spec == record.spec


def test_newer_schema_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (99, 'x')")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(url)


def test_round_ids_are_a_daily_sequence(store: Store) -> None:
    ids = [_round(store).id for _ in range(3)]
    assert ids == ["r-20261125-0001", "r-20261125-0002", "r-20261125-0003"]
    with pytest.raises(InputError, match="does not exist"):
        store.get_round("r-nope")


def test_open_round_checks_terms(store: Store) -> None:
    with pytest.raises(InputError, match="quorum = 4 exceeds"):
        _round(store, quorum=4)
    with pytest.raises(InputError, match="deadline"):
        _round(store, deadline=-1)
    with pytest.raises(InputError, match="analysis"):
        open_round(store, spec_source="x = 1", deadline=dt.timedelta(seconds=5), quorum=1,
                   allowed=("s1",), pooling=POOLING, now=NOW)
    assert store.list_rounds() == []


def test_submissions(store: Store) -> None:
    record = _round(store)
    assert _submit(store, record.id, "s1") == "accepted"
    assert _submit(store, record.id, "s1") == "duplicate"              # identical resend
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, record.id, "s1", yi=0.2, nonce=b"x" * 16)
    assert info.value.kind == "different_content"
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, record.id, "s2", nonce=(b"s1" * 16)[:16])       # replayed nonce
    assert info.value.kind == "replay"
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, record.id, "s9")
    assert info.value.kind == "site_not_in_round"
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, record.id, "s2", now=NOW + dt.timedelta(minutes=5))
    assert info.value.kind == "late"
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, "r-x", "s2")
    assert info.value.kind == "unknown_round"
    # Nothing but the first submission was stored.
    assert [s.site for s in store.submissions(record.id)] == ["s1"]
    assert store.get_round(record.id).n_submissions == 1
    assert [r.id for r in store.open_rounds_for("s1", NOW)] == []
    assert [r.id for r in store.open_rounds_for("s2", NOW)] == [record.id]
    assert store.open_rounds_for("s9", NOW) == []


def test_close_is_transactional(store: Store) -> None:
    record = _round(store)
    _submit(store, record.id, "s1")
    _submit(store, record.id, "s2")
    outcome = pool_round(store.get_round(record.id), store.submissions(record.id),
                         NOW + dt.timedelta(seconds=61))
    # A submission that arrived after pooling read the submissions: that close is refused.
    _submit(store, record.id, "s3")
    assert not store.close_round(record.id, status=outcome.status,
                                 document=outcome.document.to_dict(),
                                 failure_reason=None, seen_submissions=2, now=NOW)
    later = NOW + dt.timedelta(seconds=61)
    closed = close_if_due(store, record.id, later)
    assert closed is not None and closed.status == "pooled" and closed.n_submissions == 3
    assert close_if_due(store, record.id, later) is None               # never twice
    with pytest.raises(SubmissionConflict) as info:
        _submit(store, record.id, "s3", yi=0.5, nonce=b"z" * 16)
    assert info.value.kind == "different_content"
    doc = round_document(store, store.get_round(record.id)).to_dict()
    assert doc["status"] == "pooled" and doc["analyses"][0]["k"] == 3
    assert doc["analyses"][0]["method"] == "DL"


def test_not_due_before_deadline_unless_all_answered(store: Store) -> None:
    record = _round(store, allowed=("s1", "s2"), quorum=1)
    _submit(store, record.id, "s1")
    assert close_if_due(store, record.id, NOW + dt.timedelta(seconds=1)) is None
    _submit(store, record.id, "s2")
    assert close_if_due(store, record.id, NOW + dt.timedelta(seconds=1)).status == "pooled"


def test_failed_without_quorum(store: Store) -> None:
    record = _round(store, quorum=2)
    _submit(store, record.id, "s1")
    outcome = close_if_due(store, record.id, NOW + dt.timedelta(minutes=2))
    assert outcome.status == "failed"
    assert "only 1 of 3" in outcome.failure_reason and "s2, s3" in outcome.failure_reason
    doc = round_document(store, store.get_round(record.id)).to_dict()
    assert doc["analyses"] == [] and doc["missing_sites"] == ["s2", "s3"]


def test_refusals_listed(store: Store) -> None:
    record = _round(store, allowed=("s1", "s2", "s3"), quorum=1)
    _submit(store, record.id, "s1")
    _submit(store, record.id, "s2", yi=0.3)
    store.add_submission(round_id=record.id, site="s3", nonce=b"q" * 16, signed_at=NOW,
                         payload=b"p3", signature=b"s",
                         results={"a": {"refused": "too few", "code": "disclosure_min_n"}},
                         agent_version="t", now=NOW)
    outcome = close_if_due(store, record.id, NOW + dt.timedelta(seconds=1))
    analysis = outcome.document.analyses[0]
    assert analysis.k == 2 and analysis.refused == {"s3": "too few"}
    sites = {s.site: s for s in outcome.document.sites}
    assert sites["s3"].refusals == {"a": "too few"}


def test_registry(store: Store) -> None:
    store.record_contact("s1", agent_version="0.1", protocol_version="fedsynth.v1", now=NOW)
    store.record_contact("s1", agent_version="0.2", protocol_version="fedsynth.v1",
                         now=NOW + dt.timedelta(seconds=5))
    (site,) = store.list_sites()
    assert site.agent_version == "0.2" and site.registered_at < site.last_heartbeat
    assert site.status(NOW + dt.timedelta(seconds=30), dt.timedelta(seconds=60)) == "online"
    assert site.status(NOW + dt.timedelta(hours=1), dt.timedelta(seconds=60)) == "offline"


def test_concurrent_first_starts_migrate_once(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'race.db'}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            Store(url).close()
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)]             # each migration once
    engine.dispose()


def test_sqlite_store_is_owner_only(tmp_path: Path, caplog) -> None:
    """Issue 10 (smaller): state.db was created 0644 (umask) while reports were 0600."""
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    db = tmp_path / "state.db"
    with Store(f"sqlite:///{db}") as store:
        store.record_contact("mtf-alpha", agent_version="t", protocol_version="p",
                             now=dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
        files = [db, *db.parent.glob("state.db-*")]      # the -wal and -shm files too
        assert len(files) >= 2
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    # a store an older fedsynth created readable by others is made owner-only, loudly
    old = tmp_path / "old.db"
    Store(f"sqlite:///{old}").close()
    old.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="coordinator.store"):
        Store(f"sqlite:///{old}").close()
    assert mode(old) == 0o600 and "made owner-only" in caplog.text
