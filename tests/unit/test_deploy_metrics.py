"""Operations: Prometheus metrics endpoint, gRPC health service, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import (
    CoordinatorMetrics,
    add_health_service,
    mark_not_serving,
    normalise_reason,
    parse_listen,
)
from fedsynth.errors import InputError
from fedsynth.logs import configure_logging


def samples(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_follow_calls() -> None:
    m = CoordinatorMetrics()
    m.known_sites(["mtf-alpha", "mtf-bravo"])
    m.round_started()
    m.submission_accepted("mtf-alpha")
    m.submission_rejected("bad_signature")
    m.submission_rejected("replay")
    m.submission_rejected("something an attacker made up")
    with m.time_pooling():
        pass
    m.round_closed("pooled")
    s = samples(m)
    assert s[("fedsynth_rounds_started_total", ())] == 1
    assert s[("fedsynth_rounds_closed_total", (("status", "pooled"),))] == 1
    assert s[("fedsynth_rounds_open", ())] == 0
    assert s[("fedsynth_submissions_total", (("site", "mtf-alpha"),))] == 1
    assert s[("fedsynth_submissions_total", (("site", "mtf-bravo"),))] == 0
    assert s[("fedsynth_rejections_total", (("reason", "bad_signature"),))] == 1
    assert s[("fedsynth_rejections_total", (("reason", "other"),))] == 1
    assert s[("fedsynth_pooling_seconds_count", ())] == 1
    assert s[("fedsynth_site_last_seen_timestamp_seconds", (("site", "mtf-alpha"),))] > 1e9
    assert s[("fedsynth_site_last_seen_timestamp_seconds", (("site", "mtf-bravo"),))] == 0
    # the reason label set stays bounded whatever clients send
    reasons = {dict(k[1]).get("reason") for k in s if k[0] == "fedsynth_rejections_total"}
    assert "something an attacker made up" not in reasons


def test_instances_do_not_share_a_registry() -> None:
    a, b = CoordinatorMetrics(), CoordinatorMetrics()
    a.round_started()
    assert samples(b)[("fedsynth_rounds_started_total", ())] == 0


def test_bad_values_name_the_field() -> None:
    with pytest.raises(InputError, match="status"):
        CoordinatorMetrics().round_closed("done")
    with pytest.raises(InputError, match="metrics_listen"):
        parse_listen("localhost", "metrics_listen")
    with pytest.raises(InputError, match="metrics_listen"):
        parse_listen("127.0.0.1:99999", "metrics_listen")
    assert parse_listen("[::1]:0", "x") == ("::1", 0)
    assert normalise_reason("Bad-Signature") == "bad_signature"
    # every kind the coordinator's handlers raise has its own series
    import re
    from pathlib import Path

    import coordinator.handlers as handlers

    source = Path(handlers.__file__).read_text()
    kinds = set(re.findall(r'Rejected\("([a-z_]+)"', source))
    kinds |= set(re.findall(r'": "([a-z_]+)"', source.split("_CONFLICT_KINDS", 1)[1]
                            .split("}", 1)[0]))
    assert kinds and all(normalise_reason(k) == k for k in kinds), kinds


def test_http_endpoint_serves_metrics_on_a_free_port() -> None:
    m = CoordinatorMetrics()
    m.round_started()
    endpoint = m.serve("127.0.0.1:0")
    try:
        assert endpoint.port > 0
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            body = response.read().decode()
        assert "fedsynth_rounds_started_total 1.0" in body
        assert 'fedsynth_build_info{protocol="fedsynth.v1"' in body
    finally:
        endpoint.stop()


def test_grpc_health_service_on_aio_server() -> None:
    async def scenario() -> list[int]:
        server = grpc.aio.server()
        servicer = await add_health_service(server, ["fedsynth.v1.Coordinator"])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        statuses = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for name in ("", "fedsynth.v1.Coordinator"):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name),
                                             timeout=10)
                    statuses.append(reply.status)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Check(health_pb2.HealthCheckRequest(service="nope"),
                                     timeout=10)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
                await mark_not_serving(servicer)
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""),
                                         timeout=10)
                statuses.append(reply.status)
        finally:
            await server.stop(None)
        return statuses

    serving = health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(scenario()) == [serving, serving,
                                       health_pb2.HealthCheckResponse.NOT_SERVING]


def test_json_logs_are_one_object_per_line() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    configure_logging("json", stream=stream)  # idempotent: no duplicate handler
    logging.getLogger("fedsynth.test").info("round %s closed", "r-1",
                                            extra={"round": "r-1", "site": "mtf-alpha"})
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["message"] == "round r-1 closed" and doc["round"] == "r-1"
    assert doc["level"] == "info" and doc["ts"].endswith("Z")
    configure_logging("text")
    with pytest.raises(InputError, match="--log-format"):
        configure_logging("xml")


def test_version_command_reports_package_and_protocol(capsys) -> None:
    from fedsynth import PROTOCOL_VERSION, __version__
    from fedsynth.cli import main

    assert main(["version"]) == 0
    expected = f"fedsynth {__version__} (protocol {PROTOCOL_VERSION})"
    assert capsys.readouterr().out.strip() == expected
    assert main(["--log-format", "json", "version", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["package"] == __version__ and doc["protocol"] == PROTOCOL_VERSION
    assert doc["libraries"]["grpcio"]
    configure_logging("text")


def test_coordinator_logs_json_lines(tmp_path) -> None:
    """`fedsynth --log-format json coordinator serve` (as compose and Helm run it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "coordinator.toml"
    config.write_text('listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
                      'addr_file = "coord.addr"\nmetrics_listen = "127.0.0.1:0"\n'
                      '[sites]\nallow = ["mtf-alpha"]\n')
    log = tmp_path / "coordinator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "--log-format", "json",
                                 "coordinator", "serve", "--config", str(config),
                                 "--insecure"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ,
                                                                   PYTHONUNBUFFERED="1"))
    try:
        end = time.monotonic() + 60
        while not (tmp_path / "coord.addr").exists() and time.monotonic() < end:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any("listening" in r["message"] for r in records), lines
    assert any("metrics on http://127.0.0.1:" in r["message"] for r in records), lines
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    text_format = [line for line in lines if " INFO " in line and not line.startswith("{")]
    assert not text_format, text_format


def test_revoked_peer_is_counted_in_metrics(tmp_path) -> None:
    """A revoked site's call is refused and shows in fedsynth_rejections_total."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from fedsynth.pki import init_ca, issue_coordinator, issue_site

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_coordinator(pki, "localhost")
    for name in ("mtf-alpha", "mtf-bravo"):
        issue_site(pki, name)
    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        'addr_file = "coord.addr"\nmetrics_listen = "127.0.0.1:0"\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\nkey = "pki/coordinator.key"\n'
        '[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n')

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedsynth", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    def health(site: str, address: str) -> subprocess.CompletedProcess:
        return cli("health", "--target", address, "--ca", "pki/ca.crt", "--cert",
                   f"pki/{site}.crt", "--key", f"pki/{site}.key", "--server-name",
                   "localhost")

    log = tmp_path / "coordinator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                                 "--config", "coordinator.toml"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        end = time.monotonic() + 60
        while not (tmp_path / "coord.addr").exists() and time.monotonic() < end:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        address = (tmp_path / "coord.addr").read_text().strip()
        assert health("mtf-bravo", address).returncode == 0
        revoke = cli("ca", "revoke", "--dir", "pki", "--site", "mtf-bravo")
        assert revoke.returncode == 0, revoke.stderr
        # the health service stays open to any CA-signed peer; federation calls are not
        from fedsynth import PROTOCOL_VERSION
        from fedsynth.v1 import federation_pb2 as pb
        from fedsynth.v1 import federation_pb2_grpc as pb_grpc

        credentials = grpc.ssl_channel_credentials(
            (pki / "ca.crt").read_bytes(), (pki / "mtf-bravo.key").read_bytes(),
            (pki / "mtf-bravo.crt").read_bytes())
        with grpc.secure_channel(address, credentials, options=[
                ("grpc.ssl_target_name_override", "localhost")]) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.FederationStub(channel).Heartbeat(pb.HeartbeatRequest(
                    protocol_version=PROTOCOL_VERSION, agent_version="t"), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert health("mtf-alpha", address).returncode == 0   # others still served
        url = re.search(r"metrics on (http://\S+)", log.read_text()).group(1)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        match = re.search(r'fedsynth_rejections_total\{reason="revoked"\} ([0-9.]+)', body)
        assert match and float(match.group(1)) >= 1, body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
