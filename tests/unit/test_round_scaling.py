"""The coordinator's work per submission does not grow with the submissions a round holds.

Issue 17: a round's coordinator CPU grew with sites² because every submission re-read
earlier state of the round. These tests watch the SQL a real SQLite store is sent: a
submission's statements are the same whether the round holds 2 or 14 earlier submissions,
none of them reads an earlier submission's results or signed bytes, the audit flush after a
submission reads only the new outbox entry, the closer reads no submission while a round is
not due, and PullWork looks the site's answer up by the primary key.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from coordinator.handlers import Handlers
from coordinator.rounds import close_if_due, open_round
from coordinator.store import Store
from fedsynth import PROTOCOL_VERSION
from fedsynth.audit import AuditLog
from fedsynth.config import CoordinatorConfig
from fedsynth.pki import init_ca, issue_site
from fedsynth.serde import SubmissionContent, WireEstimate, encode_submission
from fedsynth.signing import load_private_key, sign

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
SPEC = "".join(f'[[analysis]]\nname = "a{i}"\nestimator = "two_group"\noutcome = "y"\n'
               f'exposure = "t"\nmeasure = "MD"\n\n' for i in range(3))
SITES = tuple(f"site-{i:02d}" for i in range(16))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    for site in SITES:
        issue_site(root, site)
    return root


@contextmanager
def _statements(engine: sa.engine.Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends inside the block, in order."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _signed(pki: Path, round_id: str, site: str) -> tuple[bytes, bytes, bytes]:
    content = SubmissionContent(
        round_id=round_id, site=site, nonce=os.urandom(16), timestamp=NOW,
        results={f"a{i}": WireEstimate(f"a{i}", 0.1 * i, 0.04, 0.2, 50) for i in range(3)})
    payload = encode_submission(content)
    return payload, sign(load_private_key(pki / f"{site}.key"), payload), \
        (pki / f"{site}.crt").read_bytes()


@pytest.fixture
def coordinator(tmp_path: Path):
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path, tls=None, allow=SITES)
    store = Store(config.state)
    handlers = Handlers(store, config, clock=lambda: NOW,
                        audit=AuditLog(tmp_path / "audit.jsonl"))
    record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(hours=1),
                        quorum=len(SITES), allowed=SITES, pooling={"method": "REML"}, now=NOW)
    yield handlers, store, record.id
    store.close()


def _shape(statement: str) -> str:
    """A statement without its literal values (ids, limits) for comparison."""
    return re.sub(r"\b\d+\b", "N", statement)


def test_a_submission_reads_no_earlier_submission(coordinator, pki):
    handlers, store, round_id = coordinator
    outbox_sizes: list[int] = []
    per_submission: list[list[str]] = []
    read_back = store.pending_audit

    def pending_audit(after: int | None = None):
        entries = read_back(after)
        outbox_sizes.append(len(entries))
        return entries

    store.pending_audit = pending_audit                    # type: ignore[method-assign]
    for site in SITES:
        payload, signature, pem = _signed(pki, round_id, site)
        outbox_sizes.clear()
        with _statements(store.engine) as seen:
            result = handlers.submit(site, pem, protocol_version=PROTOCOL_VERSION,
                                     payload=payload, signature=signature)
        assert result.status == "accepted"
        per_submission.append(seen)
        # the audit flush read the one new entry, not the outbox (never settled here)
        assert outbox_sizes == [1], (site, outbox_sizes)
    assert len(store.pending_audit()) == len(SITES)        # the closer would clear them
    for seen in per_submission:
        for statement in seen:
            # no earlier submission's results or signed bytes are read back
            if statement.startswith("SELECT"):
                assert "submissions.results_json" not in statement, statement
                assert "submissions.payload" not in statement, statement
            # every read of submissions is by its key (round and site) or by the nonce
            if statement.startswith("SELECT") and "FROM submissions" in statement:
                assert ("submissions.round_id = ? AND submissions.site = ?" in statement
                        or "submissions.nonce = ?" in statement), statement
    # the same statements for the 3rd and the 15th submission of the round
    assert [_shape(s) for s in per_submission[2]] == [_shape(s) for s in per_submission[14]]


def test_a_resend_is_found_by_key(coordinator, pki):
    handlers, store, round_id = coordinator
    for site in SITES[:5]:
        payload, signature, pem = _signed(pki, round_id, site)
        handlers.submit(site, pem, protocol_version=PROTOCOL_VERSION, payload=payload,
                        signature=signature)
    with _statements(store.engine) as seen:
        again = handlers.submit(SITES[4], pem, protocol_version=PROTOCOL_VERSION,
                                payload=payload, signature=signature)
    assert again.status == "duplicate"
    digest_reads = [s for s in seen if "submissions.digest" in s]
    assert len(digest_reads) == 1 and "submissions.site = ?" in digest_reads[0]
    assert not any("results_json" in s for s in seen)


def test_the_closer_reads_no_submission_until_the_round_is_due(coordinator, pki):
    handlers, store, round_id = coordinator
    for site in SITES[:-1]:
        payload, signature, pem = _signed(pki, round_id, site)
        handlers.submit(site, pem, protocol_version=PROTOCOL_VERSION, payload=payload,
                        signature=signature)
    with _statements(store.engine) as seen:
        assert close_if_due(store, round_id, NOW) is None
    assert not any("FROM submissions" in s for s in seen), seen
    payload, signature, pem = _signed(pki, round_id, SITES[-1])
    handlers.submit(SITES[-1], pem, protocol_version=PROTOCOL_VERSION, payload=payload,
                    signature=signature)
    with _statements(store.engine) as seen:
        outcome = close_if_due(store, round_id, NOW)
    assert outcome is not None and outcome.status == "pooled"
    assert outcome.n_submissions == len(SITES)
    assert sum("FROM submissions" in s for s in seen) == 1     # read once, to pool


def test_pull_work_looks_the_site_up_by_key(coordinator, pki):
    handlers, store, round_id = coordinator
    payload, signature, pem = _signed(pki, round_id, SITES[0])
    handlers.submit(SITES[0], pem, protocol_version=PROTOCOL_VERSION, payload=payload,
                    signature=signature)
    with _statements(store.engine) as seen:
        answered = handlers.pull_work(SITES[0], protocol_version=PROTOCOL_VERSION)
        waiting = handlers.pull_work(SITES[1], protocol_version=PROTOCOL_VERSION)
    assert answered == [] and [w.round_id for w in waiting] == [round_id]
    for statement in seen:
        assert "NOT IN" not in statement, statement
        if "FROM submissions" in statement:
            assert "submissions.round_id = rounds.id" in statement, statement


def test_a_stored_allow_list_is_parsed_once_per_round(coordinator, monkeypatch):
    _, store, round_id = coordinator
    calls = []
    real = store._allowed_of.__func__                      # type: ignore[attr-defined]
    store._allowed.clear()
    parsed = []
    monkeypatch.setattr("coordinator.store.json.loads",
                        _counting(parsed, __import__("json").loads))
    for _ in range(5):
        calls.append(real(store, round_id, '["x"]' if not calls else "not json"))
    # the first call parsed; the other four reused it (they never look at their text)
    assert calls == [(("x",), frozenset({"x"}))] * 5
    assert len(parsed) == 1


def _counting(calls: list, function):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return wrapper
