"""Faults of a real federation: crashes, a lost site, and peers that must be refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time

import grpc
import pytest

from fedsynth import PROTOCOL_VERSION
from fedsynth.serde import SubmissionContent, WireEstimate, WireRefusal, encode_submission, pb
from fedsynth.signing import load_private_key, sign
from fedsynth.v1 import federation_pb2_grpc as pb_grpc
from tests.integration.conftest import DEMO_SPEC, SITE_NAMES

pytestmark = pytest.mark.integration

SMALL_SPEC = """
name = "small"
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"
[[analysis]]
name = "los_MD"
estimator = "two_group"
outcome = "los_days"
exposure = "treated"
measure = "MD"
"""


def _submitted(federation, round_id):
    doc = federation.show_round(round_id)
    return {s["site"]: s for s in doc["sites"] if s["status"] == "submitted"}


def _audit_events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_coordinator_sigkill_mid_round_loses_nothing(federation, site_data, tmp_path):
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL_SPEC)
    federation.start_coordinator(allow=SITE_NAMES)
    round_id = federation.start_round(spec, deadline="5m")
    for name in ("mtf-alpha", "mtf-bravo"):
        federation.start_site(name, site_data / f"{name}.csv", once=True)
    # delta keeps running across the crash: it must reconnect to the restarted coordinator.
    federation.start_site("mtf-delta", site_data / "mtf-delta.csv")
    federation.wait_for(lambda: len(_submitted(federation, round_id)) == 3, 180,
                        "three submissions before the crash")
    before = _submitted(federation, round_id)

    federation.kill(federation.coordinator_process(), 9)          # SIGKILL mid-round
    # Sites started while the coordinator is down must back off and reconnect.
    for name in ("mtf-charlie", "mtf-echo", "mtf-foxtrot"):
        federation.start_site(name, site_data / f"{name}.csv")
    time.sleep(1.0)
    federation.start_coordinator()                               # same config and store

    doc = federation.wait_round(round_id, timeout=240)
    assert doc["status"] == "pooled"
    after = {s["site"]: s for s in doc["sites"]}
    assert all(s["status"] == "submitted" for s in after.values())
    for name, site in before.items():                             # kept, not re-sent
        assert after[name]["submitted_at"] == site["submitted_at"]
    assert all(a["k"] >= 5 for a in doc["analyses"])
    closes = [e for e in _audit_events(federation.root / "coordinator-audit.jsonl")
              if e.get("event") == "round.closed"]
    assert len(closes) == 1                                       # pooled exactly once
    federation.wait_for((federation.root / "reports" / f"{round_id}.html").exists, 60,
                        "the round's report")
    # A second round after the restart reaches the agent that was connected before it.
    second = federation.start_round(spec, deadline="5m", quorum=1)
    federation.wait_for(lambda: "mtf-delta" in _submitted(federation, second), 120,
                        "mtf-delta to answer a round after the coordinator restart")


def _online(federation, names):
    sites = json.loads(federation.cli("sites", "--config",
                                      str(federation.coordinator_config_path),
                                      "--format", "json").stdout)
    return {s["site"] for s in sites if s["status"] == "online"} >= set(names)


def test_killed_site_round_closes_at_deadline_with_quorum(federation, site_data, tmp_path):
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL_SPEC)
    federation.start_coordinator(allow=SITE_NAMES)
    # foxtrot connects but cannot compute (its data is missing); it is killed mid-round.
    fox = federation.start_site("mtf-foxtrot", tmp_path / "no-such-file.csv")
    for name in SITE_NAMES[:5]:
        federation.start_site(name, site_data / f"{name}.csv", once=True)
    federation.wait_for(lambda: _online(federation, SITE_NAMES), 180,
                        "all six sites to register")
    round_id = federation.start_round(spec, deadline="20s", quorum=5)
    federation.wait_for(lambda: "cannot compute" in federation.log("mtf-foxtrot"), 60,
                        "mtf-foxtrot to pull the round")
    federation.kill(fox, 9)
    doc = federation.wait_round(round_id, timeout=200)
    assert doc["status"] == "pooled", doc["failure_reason"]
    assert doc["missing_sites"] == ["mtf-foxtrot"]
    status = {s["site"]: s["status"] for s in doc["sites"]}
    assert status["mtf-foxtrot"] == "missing"
    assert sum(v == "submitted" for v in status.values()) == 5
    assert [a["k"] for a in doc["analyses"]] == [5, 5]
    assert doc["closed_at"] >= doc["deadline"]


def test_round_without_quorum_fails_with_reason(federation):
    federation.start_coordinator(allow=["mtf-alpha", "mtf-bravo"])
    round_id = federation.start_round(DEMO_SPEC, deadline="1s", quorum=1)
    doc = federation.wait_round(round_id, timeout=60)
    assert doc["status"] == "failed"
    assert "quorum" in doc["failure_reason"] and "mtf-alpha" in doc["failure_reason"]


# --- peers that must be refused ------------------------------------------------------------

def _channel(addr, ca, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)
    return grpc.aio.secure_channel(addr, creds)


async def _register(addr, ca, cert=None, key=None, version=PROTOCOL_VERSION):
    async with _channel(addr, ca, cert, key) as channel:
        stub = pb_grpc.FederationStub(channel)
        try:
            await stub.Register(pb.RegisterRequest(protocol_version=version,
                                                   agent_version="test"), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details()
        return grpc.StatusCode.OK, ""


def test_refused_peers(federation, pki):
    addr = federation.start_coordinator(allow=SITE_NAMES)
    other = pki.other_ca_dir
    cases = {
        # a certificate from another CA (named like an allowed site)
        "other CA": _register(addr, pki.ca, other / "mtf-alpha.crt", other / "mtf-alpha.key"),
        # no client certificate at all
        "no client cert": _register(addr, pki.ca),
        # a valid certificate of our CA for a site not on the allow-list
        "not allowed": _register(addr, pki.ca, pki.cert("mtf-zulu"), pki.key("mtf-zulu")),
        # an allowed site speaking another protocol version
        "old protocol": _register(addr, pki.ca, pki.cert("mtf-alpha"), pki.key("mtf-alpha"),
                                  version="fedsynth.v0"),
        "ok": _register(addr, pki.ca, pki.cert("mtf-alpha"), pki.key("mtf-alpha")),
    }

    async def run_all():
        return {name: await coro for name, coro in cases.items()}

    results = asyncio.run(run_all())
    assert results["other CA"][0] == grpc.StatusCode.UNAVAILABLE       # TLS handshake fails
    assert results["no client cert"][0] == grpc.StatusCode.UNAVAILABLE
    assert results["not allowed"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "mtf-zulu" in results["not allowed"][1]
    assert "allow-list" in results["not allowed"][1]
    code, detail = results["old protocol"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "fedsynth.v0" in detail and PROTOCOL_VERSION in detail
    assert results["ok"][0] == grpc.StatusCode.OK
    sites = json.loads(federation.cli("sites", "--config",
                                      str(federation.coordinator_config_path),
                                      "--format", "json").stdout)
    seen = {s["site"] for s in sites if s["status"] != "never seen"}
    assert seen == {"mtf-alpha"}                                   # nothing else recorded
    # The coordinator does not accept a plain-text client either.
    async def plain():
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.FederationStub(channel)
            try:
                await stub.Register(pb.RegisterRequest(protocol_version=PROTOCOL_VERSION),
                                    timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
    assert asyncio.run(plain()) == grpc.StatusCode.UNAVAILABLE


# --- submissions that must be refused --------------------------------------------------------

def _content(round_id, site="mtf-alpha", *, nonce=None, when=None, yi=0.1, vi=0.04,
             names=("crude_OR", "los_MD")):
    results = {}
    for name in names:
        results[name] = WireEstimate(name, yi, vi, abs(vi) ** 0.5, 100)
    return SubmissionContent(round_id=round_id, site=site, nonce=nonce or os.urandom(16),
                             timestamp=when or dt.datetime.now(dt.UTC),
                             results=results)


async def _submit(addr, pki, payload, signature, site="mtf-alpha"):
    async with _channel(addr, pki.ca, pki.cert(site), pki.key(site)) as channel:
        stub = pb_grpc.FederationStub(channel)
        try:
            reply = await stub.Submit(pb.SubmitRequest(protocol_version=PROTOCOL_VERSION,
                                                       submission=payload,
                                                       signature=signature), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details()
        return grpc.StatusCode.OK, reply.status


def test_submission_checks(federation, pki, tmp_path):
    addr = federation.start_coordinator(allow=SITE_NAMES)
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL_SPEC)
    round_1 = federation.start_round(spec, deadline="5m")
    round_2 = federation.start_round(spec, deadline="5m")
    round_closed = federation.start_round(spec, deadline="1s", quorum=1)
    federation.wait_round(round_closed, timeout=60)
    alpha = load_private_key(pki.key("mtf-alpha"))
    bravo = load_private_key(pki.key("mtf-bravo"))

    def signed(content, key=alpha):
        payload = encode_submission(content)
        return payload, sign(key, payload)

    good = _content(round_1)
    good_payload, good_sig = signed(good)
    refusal = _content(round_1, names=("crude_OR",))
    refusal = SubmissionContent(round_id=round_1, site="mtf-alpha", nonce=os.urandom(16),
                                timestamp=refusal.timestamp,
                                results={**refusal.results, "los_MD": WireRefusal(
                                    "los_MD", "policy", "not permitted")})
    cases = [
        ("bad signature", signed(good, bravo), grpc.StatusCode.UNAUTHENTICATED, "signature"),
        ("signed for another site", signed(_content(round_1, site="mtf-bravo")),
         grpc.StatusCode.PERMISSION_DENIED, "mtf-bravo"),
        ("unknown round", signed(_content("r-19990101-0001")), grpc.StatusCode.NOT_FOUND,
         "r-19990101-0001"),
        ("closed round", signed(_content(round_closed)), grpc.StatusCode.FAILED_PRECONDITION,
         "closed"),
        ("old timestamp", signed(_content(round_1, when=dt.datetime.now(dt.UTC)
                                          - dt.timedelta(hours=2))),
         grpc.StatusCode.INVALID_ARGUMENT, "timestamp"),
        ("negative variance", signed(_content(round_1, vi=-0.04)),
         grpc.StatusCode.INVALID_ARGUMENT, "vi"),
        ("unknown analysis", signed(_content(round_1, names=("crude_OR", "los_MD", "x"))),
         grpc.StatusCode.INVALID_ARGUMENT, "'x'"),
        ("garbage", (b"\xff\x00garbage", sign(alpha, b"\xff\x00garbage")),
         grpc.StatusCode.INVALID_ARGUMENT, "Submission"),
        ("valid", (good_payload, good_sig), grpc.StatusCode.OK, "accepted"),
        ("identical resend", (good_payload, good_sig), grpc.StatusCode.OK, "duplicate"),
        ("different content", signed(refusal), grpc.StatusCode.ALREADY_EXISTS, "different"),
        ("replayed nonce", signed(_content(round_2, nonce=good.nonce)),
         grpc.StatusCode.ALREADY_EXISTS, "nonce"),
    ]

    async def run_all():
        return [await _submit(addr, pki, *payload_sig) for _, payload_sig, _, _ in cases]

    results = asyncio.run(run_all())
    waited = federation.cli("round", "wait", round_2, "--config",
                            str(federation.coordinator_config_path), "--timeout", "0.5",
                            check=False)
    assert waited.returncode == 1 and "still open" in waited.stderr
    for (name, _, code, word), (got_code, detail) in zip(cases, results):
        assert got_code == code, f"{name}: {got_code} {detail}"
        assert word in detail, f"{name}: {detail!r} lacks {word!r}"
    doc_1 = federation.show_round(round_1)
    assert [s["site"] for s in doc_1["sites"] if s["status"] == "submitted"] == ["mtf-alpha"]
    doc_2 = federation.show_round(round_2)
    assert all(s["status"] == "missing" for s in doc_2["sites"])
    # The stored submission is the accepted one, not the refused "different content".
    assert doc_1["sites"][0]["refusals"] == {}
    rejected = [e for e in _audit_events(federation.root / "coordinator-audit.jsonl")
                if e.get("event") == "submission.rejected"]
    assert len(rejected) == 10


def test_restarted_agent_resends_identical_bytes(federation, site_data, tmp_path):
    """An agent that signed but never saw the acknowledgement resends the same bytes."""
    import hashlib
    import sqlite3

    spec = tmp_path / "small.toml"
    spec.write_text(SMALL_SPEC)
    federation.start_coordinator(allow=("mtf-alpha", "mtf-bravo"))
    round_id = federation.start_round(spec, deadline="5m", quorum=1)
    first = federation.start_site("mtf-alpha", site_data / "mtf-alpha.csv", once=True)
    assert first.wait(timeout=180) == 0, federation.log("mtf-alpha")
    state_path = federation.root / "sites" / "mtf-alpha.state.json"
    state = json.loads(state_path.read_text())
    entry = state["rounds"][round_id]
    assert entry["status"] == "acknowledged" and entry["detail"].startswith("accepted")
    # Pretend the agent died after sending, before the acknowledgement was recorded.
    entry["status"] = "signed"
    state_path.write_text(json.dumps(state))
    second = federation.start_site("mtf-alpha", site_data / "mtf-alpha.csv", once=True)
    assert second.wait(timeout=180) == 0, federation.log("mtf-alpha")
    state = json.loads(state_path.read_text())
    assert state["rounds"][round_id]["status"] == "acknowledged"
    assert state["rounds"][round_id]["detail"].startswith("duplicate")
    assert "resending" in federation.log("mtf-alpha")
    # One stored submission, whose bytes are exactly the ones in the agent's state file.
    import base64

    payload = base64.b64decode(state["rounds"][round_id]["payload"])
    doc = federation.show_round(round_id)
    assert [s["site"] for s in doc["sites"] if s["status"] == "submitted"] == ["mtf-alpha"]
    if federation.state_backend == "sqlite":
        db = federation.root / "coordinator-state.db"
        with sqlite3.connect(db) as conn:
            digests = conn.execute("SELECT digest FROM submissions").fetchall()
        assert digests == [(hashlib.sha256(payload).hexdigest(),)]
    # The site's log says in plain words what it sent.
    log = federation.log("mtf-alpha")
    assert "crude_OR: estimate yi =" in log and "computed on n = 1800 patients" in log
    # Graceful shutdown on SIGTERM: exit code 0, address file removed.
    coordinator = federation.coordinator_process()
    federation.kill(coordinator, 15)
    assert coordinator.returncode == 0
    assert not federation.addr_file().exists()
