"""Revocation and rate limiting on a real grpc.aio server over mutual TLS on loopback.

The federation's own coordinator is exercised in test_revocation_federation.py; here the
two interceptors are checked in isolation on a minimal generic service, so that a failure
points at them and not at the rest of the coordinator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.ratelimit import RateLimit, RateLimiter, RateLimitInterceptor
from fedsynth.audit import verify_log
from fedsynth.errors import InputError
from fedsynth.revocation import (
    RevocationInterceptor,
    RevocationList,
    load_revoked_serials,
    revoke_certificate,
)

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(root: Path, sites=("mtf-alpha", "mtf-bravo")) -> Path:
    """A throw-away CA, a localhost server certificate and site client certificates."""
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(root / "ca", ca_key, ca)

    def issue(cn: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=1)))
        sans = [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress")
                                                           .ip_address("127.0.0.1"))] \
            if server else [x509.DNSName(cn)]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write(root / cn, key, builder.sign(ca_key, hashes.SHA256()))

    issue("coordinator", True)
    for site in sites:
        issue(site, False)
    return root


async def _echo(request: bytes, context) -> bytes:
    return b"ok:" + request


def _server(pki: Path, interceptors) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors)
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [((pki / "coordinator.key").read_bytes(), (pki / "coordinator.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    return server, port


def _channel(pki: Path, site: str, port: int) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{site}.key").read_bytes(),
        certificate_chain=(pki / f"{site}.crt").read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def _call(channel, payload: bytes = b"x"):
    return await channel.unary_unary("/test.Echo/Call")(payload, timeout=10)


def test_revocation_takes_effect_on_open_channel_without_restart(tmp_path):
    pki = make_pki(tmp_path / "pki")
    rejected: list[tuple[str, int, str]] = []
    revocations = RevocationList(pki / "revoked.crl", ca=pki / "ca.crt")

    async def scenario():
        server, port = _server(pki, [RevocationInterceptor(
            revocations, on_reject=lambda *a: rejected.append(a))])
        await server.start()
        try:
            alpha, bravo = _channel(pki, "mtf-alpha", port), _channel(pki, "mtf-bravo", port)
            assert await _call(alpha) == b"ok:x"
            assert await _call(bravo) == b"ok:x"
            # Revoke alpha while its channel (and TLS session) stays open.
            out = subprocess.run([sys.executable, "-m", "fedsynth", "ca", "revoke", "--dir",
                                  str(pki), "--site", "mtf-alpha"], capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(alpha)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in info.value.details()
            assert await _call(bravo) == b"ok:x"           # others keep being served
            # A fresh connection with the revoked certificate is refused too.
            again = _channel(pki, "mtf-alpha", port)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(again)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # A corrupted CRL fails closed for everybody.
            (pki / "revoked.crl").write_text("garbage")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(bravo)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            for ch in (alpha, bravo, again):
                await ch.close()
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert rejected and rejected[0][0] == "mtf-alpha"
    audit = verify_log(pki / "ca-audit.jsonl")
    assert audit.ok and audit.entries == 1


def test_rate_limit_per_site_over_tls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    now = [0.0]
    limiter = RateLimiter(RateLimit(rate=1.0, burst=3), clock=lambda: now[0])
    refused: list[tuple[str, str]] = []

    async def scenario():
        server, port = _server(pki, [RateLimitInterceptor(limiter,
                                                          lambda *a: refused.append(a))])
        await server.start()
        try:
            alpha, bravo = _channel(pki, "mtf-alpha", port), _channel(pki, "mtf-bravo", port)
            for _ in range(3):
                assert await _call(alpha) == b"ok:x"
            for _ in range(3):     # refused each time, reported (audited) once a minute
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _call(alpha)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "mtf-alpha" in info.value.details()
            assert await _call(bravo) == b"ok:x"       # separate bucket
            now[0] += 1.0                              # one token refilled
            assert await _call(alpha) == b"ok:x"
            await alpha.close()
            await bravo.close()
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert refused == [("site:mtf-alpha", "/test.Echo/Call")]


def test_token_bucket_arithmetic():
    now = [100.0]
    limiter = RateLimiter(RateLimit(rate=2.0, burst=4), clock=lambda: now[0], max_keys=2)
    assert [limiter.allow("a") for _ in range(5)] == [True] * 4 + [False]
    assert limiter.try_acquire("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] += 100
    assert [limiter.allow("a") for _ in range(5)] == [True] * 4 + [False]  # capped at burst
    limiter.allow("b")
    limiter.allow("c")          # evicts the least recently used ("a")
    assert limiter.allow("a")
    for bad in ({"rate": 0}, {"rate": float("nan")}, {"burst": 0}, {"burst": 1.5}):
        with pytest.raises(InputError, match="limits"):
            RateLimit(**bad)


def test_revoke_cli_errors_and_idempotence(tmp_path):
    pki = make_pki(tmp_path / "pki")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fedsynth", "ca", "revoke", *args],
                              capture_output=True, text=True, timeout=60)

    missing = cli("--dir", str(pki), "--site", "mtf-zulu")
    assert missing.returncode == 2 and "mtf-zulu" in missing.stderr
    assert not (pki / "revoked.crl").exists()
    bad_reason = cli("--dir", str(pki), "--site", "mtf-alpha", "--reason", "boredom")
    assert bad_reason.returncode == 2 and "boredom" in bad_reason.stderr
    assert cli("--dir", str(pki), "--site", "mtf-alpha").returncode == 0
    second = cli("--dir", str(pki), "--site", "mtf-alpha")
    assert second.returncode == 0 and "already revoked" in second.stdout
    assert cli("--dir", str(pki), "--serial", "abc123").returncode == 0
    serial = x509.load_pem_x509_certificate((pki / "mtf-alpha.crt").read_bytes()).serial_number
    assert load_revoked_serials(pki / "revoked.crl", pki / "ca.crt") == {serial, 0xabc123}
    # A CRL signed by another CA is rejected, both by the loader and by revoke.
    other = make_pki(tmp_path / "other")
    revoke_certificate(other, site="mtf-bravo")
    with pytest.raises(InputError, match="not signed by the CA"):
        load_revoked_serials(other / "revoked.crl", pki / "ca.crt")
    (pki / "revoked.crl").write_bytes((other / "revoked.crl").read_bytes())
    refused = cli("--dir", str(pki), "--site", "mtf-bravo")
    assert refused.returncode == 2 and "not signed by this CA" in refused.stderr
    assert load_revoked_serials(tmp_path / "nothing.crl") == frozenset()
