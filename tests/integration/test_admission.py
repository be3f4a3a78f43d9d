"""Calls in flight per site, and the share kept for health checks and well-behaved sites
(issue 10, item 6), on a real grpc.aio server over mutual TLS on loopback.

A slow method holds calls open so the bounds can be seen exactly: a site gets at most
``in_flight`` calls served at once and its extra calls are refused at once
(``RESOURCE_EXHAUSTED``, naming the site and the limit) while other sites are served; a site
refused recently is held to the unreserved share, the reserved share stays open to the
others and to health checks; every admitted call gives its slot back however it ends.
The whole-coordinator flood is ``test_load_starvation.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from coordinator.ratelimit import AdmissionInterceptor, ConcurrencyLimiter, RateLimit, RateLimiter
from fedsynth.config import LimitsConfig, load_coordinator_config
from fedsynth.errors import ConfigError
from tests.integration.test_revocation_interceptors import make_pki

pytestmark = pytest.mark.integration

SLOW = "/test.Slow/Call"
HEALTH = "/grpc.health.v1.Health/Check"


def _server(pki: Path, interceptors, release: asyncio.Event) -> tuple[grpc.aio.Server, int]:
    async def slow(request: bytes, context) -> bytes:
        await release.wait()
        return b"done"

    async def quick(request: bytes, context) -> bytes:
        return b"ok"

    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(
            "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)}),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(quick)})))
    creds = grpc.ssl_server_credentials(
        [((pki / "coordinator.key").read_bytes(), (pki / "coordinator.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(), require_client_auth=True)
    return server, server.add_secure_port("127.0.0.1:0", creds)


def _channel(pki: Path, site: str, port: int) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{site}.key").read_bytes(),
        certificate_chain=(pki / f"{site}.crt").read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def _until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


def test_a_site_beyond_its_calls_in_flight_only_slows_itself(tmp_path):
    pki = make_pki(tmp_path / "pki", sites=("mtf-alpha", "mtf-bravo"))
    limiter = ConcurrencyLimiter(per_identity=3, total=100, reserved=10)
    refused: list[tuple[str, str, str]] = []

    async def scenario():
        release = asyncio.Event()
        server, port = _server(pki, [AdmissionInterceptor(
            RateLimiter(RateLimit(rate=1000.0, burst=1000)), limiter,
            on_reject=lambda *a: refused.append(a))], release)
        await server.start()
        alpha, bravo = _channel(pki, "mtf-alpha", port), _channel(pki, "mtf-bravo", port)
        try:
            held = [asyncio.ensure_future(_code(alpha.unary_unary(SLOW)(b"x", timeout=20)))
                    for _ in range(3)]
            await _until(lambda: limiter.in_flight("site:mtf-alpha") == 3)
            extra = await asyncio.gather(*(_code(alpha.unary_unary(SLOW)(b"x", timeout=20))
                                           for _ in range(5)))
            assert {code for code, _ in extra} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "too many calls in flight for 'mtf-alpha'" in extra[0][1]
            assert "at most 3 at once" in extra[0][1]
            # bravo is not affected: its calls are admitted while alpha's wait
            bravo_call = asyncio.ensure_future(_code(bravo.unary_unary(SLOW)(b"x",
                                                                              timeout=20)))
            await _until(lambda: limiter.in_flight("site:mtf-bravo") == 1)
            release.set()
            assert [c for c, _ in await asyncio.gather(*held)] == [grpc.StatusCode.OK] * 3
            assert (await bravo_call)[0] == grpc.StatusCode.OK
            await _until(lambda: limiter.in_flight() == 0)       # every slot given back
            assert (await _code(alpha.unary_unary(SLOW)(b"x", timeout=20)))[0] == \
                grpc.StatusCode.OK
            # a call cancelled by its deadline gives its slot back too
            release.clear()
            late = await _code(alpha.unary_unary(SLOW)(b"x", timeout=0.3))
            assert late[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            await _until(lambda: limiter.in_flight() == 0)
            release.set()
        finally:
            await alpha.close()
            await bravo.close()
            await server.stop(None)

    asyncio.run(scenario())
    assert refused == [("site:mtf-alpha", SLOW, "identity")]       # reported once, not x5


def test_reserved_share_for_sites_in_good_standing_and_health(tmp_path):
    sites = ("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta")
    pki = make_pki(tmp_path / "pki", sites=sites)
    # 6 slots in all, 2 of them only for identities in good standing and health checks
    limiter = ConcurrencyLimiter(per_identity=2, total=6, reserved=2, penalty=600)

    async def scenario():
        release = asyncio.Event()
        server, port = _server(pki, [AdmissionInterceptor(
            RateLimiter(RateLimit(rate=1000.0, burst=1000)), limiter)], release)
        await server.start()
        channels = {s: _channel(pki, s, port) for s in sites}
        try:
            def slow(site: str):
                return asyncio.ensure_future(_code(channels[site].unary_unary(SLOW)(
                    b"x", timeout=20)))

            # alpha and bravo flood: two calls each admitted, the third refused, which
            # takes them out of good standing
            held = [slow("mtf-alpha"), slow("mtf-alpha"), slow("mtf-bravo"),
                    slow("mtf-bravo")]
            await _until(lambda: limiter.in_flight() == 4)
            for site in ("mtf-alpha", "mtf-bravo"):
                code, _ = await _code(channels[site].unary_unary(SLOW)(b"x", timeout=20))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not limiter.in_good_standing("site:mtf-alpha")
            # charlie (good standing) may use the unreserved slots and the reserved ones
            held += [slow("mtf-charlie"), slow("mtf-charlie")]
            await _until(lambda: limiter.in_flight() == 6)
            # all 6 taken: a health check is still refused (the reserve is spent) ...
            code, detail = await _code(channels["mtf-delta"].unary_unary(HEALTH)(
                b"", timeout=20))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in detail
            # ... but once one slot frees, delta (good standing) gets it while the
            # flooders, held to the unreserved 4 slots, do not
            release.set()
            await asyncio.gather(*held)
            release.clear()
            held = [slow("mtf-alpha"), slow("mtf-alpha"), slow("mtf-bravo"),
                    slow("mtf-bravo")]
            await _until(lambda: limiter.in_flight() == 4)
            held.append(slow("mtf-charlie"))
            await _until(lambda: limiter.in_flight() == 5)
            code, detail = await _code(channels["mtf-alpha"].unary_unary(SLOW)(
                b"x", timeout=20))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED   # its own bound (2) anyway
            # 5 in flight: a misbehaving identity would be refused (4 unreserved taken) ...
            assert limiter.try_enter("site:mtf-bravo-2") is None   # fresh one: good
            limiter.leave("site:mtf-bravo-2")
            limiter.mark("site:mtf-echo")
            refusal = limiter.try_enter("site:mtf-echo")
            assert refusal is not None and refusal.kind == "shared"
            # ... while the health check of a good identity is admitted from the reserve
            code, _ = await _code(channels["mtf-delta"].unary_unary(HEALTH)(b"", timeout=20))
            assert code == grpc.StatusCode.OK
            release.set()
            await asyncio.gather(*held)
        finally:
            for channel in channels.values():
                await channel.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_limits_are_defined_once_and_checked(tmp_path):
    defaults = LimitsConfig()
    assert (RateLimit().rate, RateLimit().burst) == (defaults.rate, defaults.burst)
    limiter = ConcurrencyLimiter()
    assert (limiter.per_identity, limiter.total, limiter.reserved) == (
        defaults.in_flight, defaults.in_flight_total, defaults.in_flight_reserved)
    config = tmp_path / "coordinator.toml"
    base = 'state = "s.db"\ninsecure = true\n[sites]\nallow = ["mtf-alpha"]\n'
    config.write_text(base, encoding="utf-8")
    assert load_coordinator_config(config).limits == defaults
    config.write_text(base + "[limits]\nrate = 2\nin_flight = 2\n", encoding="utf-8")
    loaded = load_coordinator_config(config).limits
    assert (loaded.rate, loaded.in_flight, loaded.burst) == (2.0, 2, defaults.burst)
    assert isinstance(loaded.rate, float)
    for bad, key in (("rate = 0", "limits.rate"), ("burst = 1.5", "limits.burst"),
                     ("in_flight = 0", "limits.in_flight"),
                     ("in_flight_total = 2\nin_flight = 4", "limits.in_flight_total"),
                     ("in_flight_reserved = 600", "limits.in_flight_reserved"),
                     ("inflight = 3", "unknown key 'inflight'")):
        config.write_text(base + "[limits]\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=key):
            load_coordinator_config(config)
