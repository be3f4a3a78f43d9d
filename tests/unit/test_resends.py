"""Identical resends are idempotent under any interleaving (issue 10, item 8).

Two copies of one signed submission (an agent that resent after a timeout while the first
copy was still being stored) used to race: both passed the "already stored?" check, the
second insert hit the unique key, and the site got ``ALREADY_EXISTS`` ("a concurrent
submission ... was stored first"), which the agent recorded as a permanent refusal. The
interleaving is forced here, deterministically, by holding each thread right after its
check until the other one has made it too; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import threading
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from coordinator.handlers import Handlers
from coordinator.rounds import open_round
from coordinator.store import Store, SubmissionConflict
from fedsynth import PROTOCOL_VERSION
from fedsynth.audit import AuditLog
from fedsynth.config import CoordinatorConfig
from fedsynth.pki import init_ca, issue_site
from fedsynth.serde import SubmissionContent, WireEstimate, encode_submission, pb
from fedsynth.signing import load_private_key, sign
from fedsynth.v1 import federation_pb2_grpc as pb_grpc
from site_agent.client import CoordinatorRefused, FederationClient

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
SPEC = ('[[analysis]]\nname = "a"\nestimator = "two_group"\noutcome = "y"\nexposure = "t"\n'
        'measure = "MD"\n')
SITE = "mtf-alpha"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    from tests.integration.pg_server import fresh_database

    return fresh_database("resend")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    issue_site(root, SITE)
    return root


def _signed(pki: Path, round_id: str) -> tuple[bytes, bytes, bytes]:
    nonce = os.urandom(16)
    content = SubmissionContent(round_id=round_id, site=SITE, nonce=nonce, timestamp=NOW,
                                results={"a": WireEstimate("a", 0.1, 0.04, 0.2, 50)})
    payload = encode_submission(content)
    return payload, sign(load_private_key(pki / f"{SITE}.key"), payload), nonce


class _BothChecked:
    """Hold each thread after its first "is it stored already?" query until every thread
    has run its own: then no thread can see the others' submission in that check."""

    def __init__(self, engine: sa.engine.Engine, threads: int) -> None:
        self.engine = engine
        self.barrier = threading.Barrier(threads, timeout=20)
        self.local = threading.local()

    def __enter__(self) -> _BothChecked:
        sa.event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "after_cursor_execute", self._after)

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if "submissions.digest" in statement and not getattr(self.local, "held", False):
            self.local.held = True
            self.barrier.wait()


def _race(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as error:  # noqa: BLE001 - asserted by the caller
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_racing_identical_resends_in_the_store_are_duplicates(url, pki):
    store = Store(url)
    try:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(hours=1),
                            quorum=1, allowed=(SITE,), pooling={"method": "REML"}, now=NOW)
        payload, signature, nonce = _signed(pki, record.id)

        def add() -> str:
            return store.add_submission(
                round_id=record.id, site=SITE, nonce=nonce, signed_at=NOW, payload=payload,
                signature=signature, results={"a": {"yi": 0.1, "vi": 0.04, "se": 0.2,
                                                    "n": 50}},
                agent_version="t", now=NOW)

        with _BothChecked(store.engine, 2):
            results = _race([add, add])
        # before the fix: one "accepted", one SubmissionConflict("replay") -> ALREADY_EXISTS
        assert sorted(map(str, results)) == ["accepted", "duplicate"], results
        assert store.get_round(record.id).n_submissions == 1       # counted once
        assert len(store.submissions(record.id)) == 1
        # A *different* answer racing the stored one is still refused, as a conflict.
        other_payload, other_sig, other_nonce = _signed(pki, record.id)
        with pytest.raises(SubmissionConflict) as info:
            store.add_submission(round_id=record.id, site=SITE, nonce=other_nonce,
                                 signed_at=NOW, payload=other_payload, signature=other_sig,
                                 results={}, agent_version="t", now=NOW)
        assert info.value.kind == "different_content"
    finally:
        store.close()


def test_racing_identical_submits_through_the_handlers(tmp_path, pki):
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path, tls=None, allow=(SITE,))
    store = Store(config.state)
    audit = AuditLog(tmp_path / "audit.jsonl")
    handlers = Handlers(store, config, clock=lambda: NOW, audit=audit)
    try:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(hours=1),
                            quorum=1, allowed=(SITE,), pooling={"method": "REML"}, now=NOW)
        payload, signature, _ = _signed(pki, record.id)
        pem = (pki / f"{SITE}.crt").read_bytes()

        def submit():
            return handlers.submit(SITE, pem, protocol_version=PROTOCOL_VERSION,
                                   payload=payload, signature=signature).status

        with _BothChecked(store.engine, 3):
            results = _race([submit, submit, submit])
        assert sorted(map(str, results)) == ["accepted", "duplicate", "duplicate"], results
        accepted = [e for e in audit.entries() if e.event == "submission.accepted"]
        assert len(accepted) == 1
        assert accepted[0].data["digest"] == hashlib.sha256(payload).hexdigest()
        assert not any(e.event == "submission.rejected" for e in audit.entries())
    finally:
        store.close()


# --- the agent's side -----------------------------------------------------------------------

class _Scripted(pb_grpc.FederationServicer):
    """A real grpc.aio Federation server answering Submit from a script of outcomes."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.received: list[bytes] = []

    async def Submit(self, request, context):
        self.received.append(bytes(request.submission))
        outcome = self.script.pop(0)
        if outcome == "already_exists":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a concurrent submission "
                                "with this nonce or for this site and round was stored first")
        if outcome == "different":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "site 'mtf-alpha' already "
                                "submitted a different answer")
        return pb.SubmitReply(protocol_version=PROTOCOL_VERSION, status=outcome,
                              round_id="r-1", message="identical submission already stored")


async def _submit_through(script: list[str]) -> tuple[object, list[bytes]]:
    servicer = _Scripted(script)
    server = grpc.aio.server()
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = FederationClient(f"127.0.0.1:{port}", None, insecure=True, site=SITE,
                                  timeout=10)
        try:
            outcome: object = await client.submit(b"signed bytes", b"signature")
        except CoordinatorRefused as refused:
            outcome = refused
        finally:
            await client.close()
    finally:
        await server.stop(None)
    return outcome, servicer.received


def test_agent_resends_once_after_already_exists_and_takes_duplicate():
    outcome, received = asyncio.run(_submit_through(["already_exists", "duplicate"]))
    # before the fix: CoordinatorRefused(ALREADY_EXISTS), recorded as a permanent refusal
    assert getattr(outcome, "status", None) == "duplicate", outcome
    assert received == [b"signed bytes", b"signed bytes"]            # the same bytes again


def test_agent_keeps_a_real_conflict_a_refusal():
    outcome, received = asyncio.run(_submit_through(["different", "different"]))
    assert isinstance(outcome, CoordinatorRefused) and outcome.code == "ALREADY_EXISTS"
    assert "different answer" in outcome.reason
    assert len(received) == 2                                         # resent once only
