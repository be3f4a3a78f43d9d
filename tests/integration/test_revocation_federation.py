"""Revocation and rate limits against the real coordinator process over mutual TLS.

A site holds one open channel to a running coordinator; ``fedsynth ca revoke`` is run; the
very next call on that same channel is refused (PERMISSION_DENIED) without restarting the
coordinator, a new connection is refused too, other sites keep being served, and the
coordinator's audit log records the refusals. Rate limits: a site that bursts beyond its
bucket gets RESOURCE_EXHAUSTED while another site is still served.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from fedsynth import PROTOCOL_VERSION
from fedsynth.audit import verify_log
from fedsynth.v1 import federation_pb2 as pb
from fedsynth.v1 import federation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsynth", *args], capture_output=True,
                          text=True, timeout=60)


def _start(tmp_path: Path, limits: str = "", *,
           restart: bool = False) -> tuple[subprocess.Popen, str]:
    pki = tmp_path / "pki"
    config = tmp_path / "coordinator.toml"
    if restart:
        return _serve(tmp_path, config)
    for args in (("ca", "init", "--dir", str(pki)),
                 ("ca", "issue", "--dir", str(pki), "--coordinator", "localhost"),
                 *(("ca", "issue", "--dir", str(pki), "--site", s) for s in SITES)):
        out = _cli(*args)
        assert out.returncode == 0, out.stderr
    config.write_text(f"""
listen = "127.0.0.1:0"
state = "state.db"
report_dir = "reports"
audit_log = "coordinator-audit.jsonl"
{limits}
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[sites]
allow = {json.dumps(list(SITES))}
""", encoding="utf-8")
    return _serve(tmp_path, config)


def _serve(tmp_path: Path, config: Path) -> tuple[subprocess.Popen, str]:
    (tmp_path / "coordinator.addr").unlink(missing_ok=True)
    log = open(tmp_path / "coordinator.log", "a")
    process = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                                "--config", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=tmp_path)
    log.close()
    addr = tmp_path / "coordinator.addr"
    for _ in range(300):
        if addr.exists() and addr.read_text().strip():
            return process, addr.read_text().strip()
        assert process.poll() is None, (tmp_path / "coordinator.log").read_text()
        time.sleep(0.1)
    raise AssertionError("coordinator did not start")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def _channel(tmp_path: Path, address: str, site: str) -> grpc.Channel:
    pki = tmp_path / "pki"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{site}.key").read_bytes(),
        certificate_chain=(pki / f"{site}.crt").read_bytes())
    return grpc.secure_channel(address, creds,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def _heartbeat(channel: grpc.Channel) -> pb.HeartbeatReply:
    return pb_grpc.FederationStub(channel).Heartbeat(
        pb.HeartbeatRequest(protocol_version=PROTOCOL_VERSION, agent_version="t"), timeout=10)


def _health(channel: grpc.Channel, service: str = "") -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_revoked_site_is_shut_out_on_its_open_channel(tmp_path):
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse.SERVING
    process, address = _start(tmp_path)
    try:
        alpha = _channel(tmp_path, address, "mtf-alpha")
        bravo = _channel(tmp_path, address, "mtf-bravo")
        _heartbeat(alpha)
        _heartbeat(bravo)
        assert _health(alpha, "fedsynth.v1.Federation") == serving
        out = _cli("ca", "revoke", "--dir", str(tmp_path / "pki"), "--site", "mtf-alpha")
        assert out.returncode == 0, out.stderr
        with pytest.raises(grpc.RpcError) as info:
            _heartbeat(alpha)                          # same channel, same TLS session
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            _heartbeat(_channel(tmp_path, address, "mtf-alpha"))   # fresh connection
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The standard health service too: every service on the server is behind the
        # revocation check, so a revoked key learns nothing, not even "SERVING".
        for service in ("", "fedsynth.v1.Federation"):
            with pytest.raises(grpc.RpcError) as info:
                _health(alpha, service)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, service
            assert "revoked" in info.value.details()
        assert _health(bravo, "fedsynth.v1.Federation") == serving
        _heartbeat(bravo)                              # others unaffected
        assert process.poll() is None                  # no restart happened
        alpha.close()
        bravo.close()
    finally:
        _stop(process)
    audit = tmp_path / "coordinator-audit.jsonl"
    assert verify_log(audit).ok
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    revoked = [e for e in events if e["event"] == "peer.revoked"]
    # Two refused calls, one audit entry: reports are throttled per serial (a revoked peer
    # hammering the coordinator must not flood the audit log).
    assert len(revoked) == 1 and revoked[0]["data"]["site"] == "mtf-alpha"


def test_rate_limit_per_site_on_the_real_coordinator(tmp_path):
    process, address = _start(tmp_path, "[limits]\nrate = 0.5\nburst = 5\n")
    try:
        alpha = _channel(tmp_path, address, "mtf-alpha")
        codes = []
        for _ in range(8):
            try:
                _heartbeat(alpha)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                assert "rate limit" in error.details()
        assert codes.count(grpc.StatusCode.OK) <= 6       # burst 5, plus refill while running
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        bravo = _channel(tmp_path, address, "mtf-bravo")
        _heartbeat(bravo)                                 # its own bucket
        alpha.close()
        bravo.close()
    finally:
        _stop(process)


def test_deleted_or_rolled_back_crl_keeps_the_key_revoked_across_restarts(tmp_path):
    """Issue 10, item 7: deleting revoked.crl, or copying back an older CRL the CA really
    signed, re-enabled a revoked key; now the last good CRL stays in force, loudly, and the
    coordinator keeps it in its store so a restart does not forget it."""
    process, address = _start(tmp_path)
    pki = tmp_path / "pki"
    crl = pki / "revoked.crl"
    try:
        assert _cli("ca", "revoke", "--dir", str(pki), "--site", "mtf-charlie").returncode == 0
        older = crl.read_bytes()                       # CRL 1: charlie only
        bravo = _channel(tmp_path, address, "mtf-bravo")
        _heartbeat(bravo)
        assert _cli("ca", "revoke", "--dir", str(pki), "--site", "mtf-bravo").returncode == 0
        with pytest.raises(grpc.RpcError) as info:
            _heartbeat(bravo)                          # CRL 2 is in force
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        crl.write_bytes(older)                         # rolled back: validly signed, older
        with pytest.raises(grpc.RpcError) as info:
            _heartbeat(bravo)                          # before the fix: OK
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        crl.unlink()                                   # deleted
        with pytest.raises(grpc.RpcError) as info:
            _heartbeat(bravo)                          # before the fix: OK
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _heartbeat(_channel(tmp_path, address, "mtf-alpha"))   # others still served
        bravo.close()
    finally:
        _stop(process)
    log = (tmp_path / "coordinator.log").read_text()
    assert "REFUSED" in log and "older (CRL number 1)" in log and "missing" in log
    # Restarted while the file is missing, then with the older CRL back in place.
    for state in ("missing", "older"):
        if state == "older":
            crl.write_bytes(older)
        process, address = _start(tmp_path, restart=True)
        try:
            channel = _channel(tmp_path, address, "mtf-bravo")
            with pytest.raises(grpc.RpcError) as info:
                _heartbeat(channel)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, state
            channel.close()
        finally:
            _stop(process)
    audit = tmp_path / "coordinator-audit.jsonl"
    assert verify_log(audit).ok
    refused = [json.loads(line) for line in audit.read_text().splitlines()
               if '"revocation.refused"' in line]
    assert len(refused) >= 3                # rolled back, deleted, and again at each restart
    assert all(e["data"]["crl"].endswith("revoked.crl") for e in refused)
