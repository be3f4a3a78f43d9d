"""Everything a site sends in a real round, captured on the wire: nothing disclosive.

A TLS-terminating gRPC proxy sits between a real site-agent process and the real
coordinator process. Both legs are mutual TLS with the project CA: the agent dials the
proxy (which presents a server certificate of the CA), the proxy verifies the agent's client
certificate and forwards every call, byte for byte, to the coordinator with the site's
certificate. The proxy keeps the serialized bytes of every request. This does not rely on
any cooperation of the agent code: it is exactly what left the site process.

Then, over those bytes: no patient id, no row-level value of the site's data (as text or as
the IEEE-754 doubles protobuf would carry), no 2x2 cell or count below the limit, the
small-cell table's estimates (and their sibling adjusted estimate) refused with a reason
that carries no count, and every integer sent at least min_n.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pandas as pd
import pytest

from fedsynth.v1 import federation_pb2 as pb

pytestmark = pytest.mark.integration

SPEC = """
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"

[[analysis]]
name = "crude_RD"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "RD"

[[analysis]]
name = "adjusted_logOR"
estimator = "logistic"
outcome = "outcome"
exposure = "treated"
covariates = ["age", "sex"]

[[analysis]]
name = "mortality_MD"
estimator = "two_group"
outcome = "outcome"
exposure = "treated"
measure = "MD"

[[analysis]]
name = "los_MD"
estimator = "two_group"
outcome = "los_days"
exposure = "treated"
measure = "MD"

[[analysis]]
name = "auc"
estimator = "auc"
outcome = "outcome"
score = "risk_score"

[[analysis]]
name = "log_OE"
estimator = "oe_ratio"
outcome = "outcome"
score = "risk_score"
"""
SITES = ("mtf-foxtrot", "mtf-alpha")
REQUEST_TYPES = {"Register": pb.RegisterRequest, "Heartbeat": pb.HeartbeatRequest,
                 "PullWork": pb.PullWorkRequest, "Submit": pb.SubmitRequest,
                 "StreamSteps": pb.StreamStepsRequest, "AnswerStep": pb.AnswerStepRequest}


def _cli(*args: str, timeout: float = 120) -> str:
    out = subprocess.run([sys.executable, "-m", "fedsynth", *args], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"fedsynth {' '.join(args)}: {out.stderr}"
    return out.stdout


class CapturingProxy:
    """A TLS-terminating gRPC proxy: forwards raw request bytes and records them."""

    def __init__(self, pki: Path, site: str, upstream: str) -> None:
        self.captured: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / f"{site}.key").read_bytes(),
            certificate_chain=(pki / f"{site}.crt").read_bytes())
        self._upstream = grpc.secure_channel(upstream, creds, options=[
            ("grpc.ssl_target_name_override", "localhost")])
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self,))
        server_creds = grpc.ssl_server_credentials(
            [((pki / "coordinator.key").read_bytes(), (pki / "coordinator.crt").read_bytes())],
            root_certificates=(pki / "ca.crt").read_bytes(), require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", server_creds)
        self.server.start()

    # grpc.GenericRpcHandler
    def service(self, handler_call_details):
        method = handler_call_details.method

        def forward(request: bytes, context) -> bytes:
            with self._lock:
                self.captured.append((method, request))
            try:
                return self._upstream.unary_unary(method)(
                    request, timeout=30, metadata=[(k, v) for k, v in
                                                   context.invocation_metadata()
                                                   if not k.startswith(":")])
            except grpc.RpcError as error:
                context.abort(error.code(), error.details())

        def forward_stream(request: bytes, context):
            with self._lock:
                self.captured.append((method, request))
            try:
                yield from self._upstream.unary_stream(method)(
                    request, metadata=[(k, v) for k, v in context.invocation_metadata()
                                       if not k.startswith(":")])
            except grpc.RpcError as error:
                context.abort(error.code(), error.details())

        if method.endswith("/StreamSteps"):      # the model-step stream (server streaming)
            return grpc.unary_stream_rpc_method_handler(forward_stream)
        return grpc.unary_unary_rpc_method_handler(forward)  # raw bytes in and out

    def close(self) -> None:
        self.server.stop(None)
        self._upstream.close()


def _wait_for(path: Path, process: subprocess.Popen, log: Path, seconds: float = 30) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} not written; log:\n{log.read_text()}")


def test_everything_a_site_sends_is_non_disclosive(tmp_path, data_dir):
    pki = tmp_path / "pki"
    _cli("ca", "init", "--dir", str(pki))
    _cli("ca", "issue", "--dir", str(pki), "--coordinator", "localhost")
    for site in SITES:
        _cli("ca", "issue", "--dir", str(pki), "--site", site)
    (tmp_path / "spec.toml").write_text(SPEC, encoding="utf-8")
    config = tmp_path / "coordinator.toml"
    config.write_text(f"""
listen = "127.0.0.1:0"
state = "state.db"
report_dir = "reports"
audit_log = "coordinator-audit.jsonl"
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[sites]
allow = {json.dumps(list(SITES))}
""", encoding="utf-8")
    coordinator_log = tmp_path / "coordinator.log"
    processes: list[subprocess.Popen] = []
    proxies: dict[str, CapturingProxy] = {}
    try:
        with open(coordinator_log, "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "fedsynth", "coordinator", "serve", "--config",
                 str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        address = _wait_for(tmp_path / "coordinator.addr", processes[0], coordinator_log)
        round_id = _cli("round", "start", "--config", str(config), "--spec",
                        str(tmp_path / "spec.toml"), "--deadline", "5m", "--quorum",
                        "2").strip().splitlines()[-1]
        for site in SITES:
            proxies[site] = proxy = CapturingProxy(pki, site, address)
            shutil.copy(data_dir / "sites_public" / f"{site}.csv", tmp_path / f"{site}.csv")
            (tmp_path / f"{site}.toml").write_text(f"""
name = "{site}"
coordinator = "127.0.0.1:{proxy.port}"
server_name = "localhost"
audit_log = "{site}-audit.jsonl"
poll_interval = "200ms"
[tls]
ca = "pki/ca.crt"
cert = "pki/{site}.crt"
key = "pki/{site}.key"
[data]
path = "{site}.csv"
[privacy]
min_cell_count = 5
min_n = 20
""", encoding="utf-8")
            site_log = tmp_path / f"{site}.log"
            with open(site_log, "w") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "fedsynth", "site", "run", "--config",
                     str(tmp_path / f"{site}.toml"), "--once"], stdout=log,
                    stderr=subprocess.STDOUT, cwd=tmp_path))
        for process in processes[1:]:
            process.wait(timeout=120)
        _cli("round", "wait", round_id, "--config", str(config), "--timeout", "60")
        document = json.loads(_cli("round", "show", round_id, "--config", str(config),
                                   "--format", "json"))
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        for proxy in proxies.values():
            proxy.close()

    assert document["status"] == "pooled"
    foxtrot = pd.read_csv(data_dir / "sites_public" / "mtf-foxtrot.csv")
    captured = proxies["mtf-foxtrot"].captured
    methods = {m.rsplit("/", 1)[-1] for m, _ in captured}
    assert "Submit" in methods, methods
    wire = b"".join(raw for _, raw in captured)

    # 1. No patient id, as text, anywhere in what was sent.
    assert b"patient" not in wire.lower()
    for pid in foxtrot["patient_id"]:
        assert pid.encode() not in wire
    # 2. No row-level value, neither as text nor as a protobuf double.
    for column in ("age", "los_days", "time", "risk_score"):
        for value in set(foxtrot[column].astype(float)):
            if float(value).is_integer() and abs(value) < 1000:
                continue      # small integers (ages) are checked as doubles below only
            assert struct.pack("<d", value) not in wire, (column, value)
    for value in set(foxtrot["age"].astype(float)):
        assert struct.pack("<d", value) not in wire, ("age", value)

    # 3. Decode every request and look at each number and string it carries.
    submissions = []
    for method, raw in captured:
        request = REQUEST_TYPES[method.rsplit("/", 1)[-1]].FromString(raw)
        if isinstance(request, pb.SubmitRequest):
            submissions.append(pb.Submission.FromString(request.submission))
    assert len(submissions) >= 1
    counts = {4, 5, 22, 29, 9, 51}            # foxtrot's cells and margins (see expected.json)
    for sub in submissions:
        results = {r.analysis: r for r in sub.results}
        assert set(results) == {"crude_OR", "crude_RD", "adjusted_logOR", "mortality_MD",
                                "los_MD", "auc", "log_OE"}
        # The small-cell table and its siblings are refused (the mean difference of the 0/1
        # outcome is the same table's risk difference), with no count in the reason.
        for name in ("crude_OR", "crude_RD", "adjusted_logOR", "mortality_MD"):
            assert results[name].WhichOneof("outcome") == "refusal", name
            reason = results[name].refusal.reason
            assert set(re.findall(r"\d+", reason)) <= {"5", "20"}, reason
        for name, result in results.items():
            if result.WhichOneof("outcome") == "estimate":
                e = result.estimate
                assert e.n >= 20 and e.n not in counts
                for x in (e.yi, e.vi, e.se):
                    assert x not in counts
            else:
                text = result.refusal.reason + result.refusal.code
                assert set(re.findall(r"\d+", text)) <= {"5", "20"}, text
        assert sub.site == "mtf-foxtrot"
    # The coordinator's view agrees: foxtrot's refusals are recorded, its other answers used.
    refused = {a["analysis"]: a.get("refused", {}) for a in document["analyses"]}
    assert "mtf-foxtrot" in refused["crude_OR"]
    by_name = {a["analysis"]: a for a in document["analyses"]}
    assert "mtf-foxtrot" in {s["site"] for s in by_name["los_MD"]["site_estimates"]}
    # And the site's own audit log holds the same submission digest, chain intact.
    from fedsynth.audit import verify_log

    assert verify_log(tmp_path / "mtf-foxtrot-audit.jsonl").ok
