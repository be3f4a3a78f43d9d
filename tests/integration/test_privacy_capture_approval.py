"""Operator approval: nothing is computed or sent before the spec is approved.

A real site agent whose policy requires approval of new specs and forbids one estimator
talks to the real coordinator through the capturing TLS proxy of test_privacy_capture.
Until ``fedsynth site approve`` runs, the wire shows no submission at all and the
coordinator stores nothing; ``fedsynth site pending`` lists the spec. After approval, the
agent submits once, the forbidden analysis as a policy refusal. The site's audit log
records the pending spec once (not once per poll), the approval, the decision and the
submission, and verifies.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fedsynth.audit import verify_log
from fedsynth.v1 import federation_pb2 as pb
from tests.integration.test_privacy_capture import CapturingProxy, _cli, _wait_for

pytestmark = pytest.mark.integration

SPEC = """
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"

[[analysis]]
name = "adjusted_logOR"
estimator = "logistic"
outcome = "outcome"
exposure = "treated"
covariates = ["age", "sex"]

[[analysis]]
name = "auc"
estimator = "auc"
outcome = "outcome"
score = "risk_score"
"""


def test_nothing_leaves_before_approval(tmp_path, data_dir):
    site = "mtf-alpha"
    pki = tmp_path / "pki"
    _cli("ca", "init", "--dir", str(pki))
    _cli("ca", "issue", "--dir", str(pki), "--coordinator", "localhost")
    _cli("ca", "issue", "--dir", str(pki), "--site", site)
    (tmp_path / "spec.toml").write_text(SPEC, encoding="utf-8")
    config = tmp_path / "coordinator.toml"
    config.write_text(f"""
listen = "127.0.0.1:0"
state = "state.db"
report_dir = "reports"
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[sites]
allow = ["{site}"]
""", encoding="utf-8")
    shutil.copy(data_dir / "sites_public" / f"{site}.csv", tmp_path / f"{site}.csv")
    (tmp_path / "policy.toml").write_text(
        'estimators = ["two_by_two", "logistic"]\nrequire_approval = true\n',
        encoding="utf-8")
    processes: list[subprocess.Popen] = []
    proxy = None
    try:
        with open(tmp_path / "coordinator.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "fedsynth", "coordinator", "serve", "--config",
                 str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        address = _wait_for(tmp_path / "coordinator.addr", processes[0],
                            tmp_path / "coordinator.log")
        round_id = _cli("round", "start", "--config", str(config), "--spec",
                        str(tmp_path / "spec.toml"), "--deadline", "5m",
                        "--quorum", "1").strip().splitlines()[-1]
        proxy = CapturingProxy(pki, site, address)
        site_toml = tmp_path / "site.toml"
        site_toml.write_text(f"""
name = "{site}"
coordinator = "127.0.0.1:{proxy.port}"
server_name = "localhost"
policy = "policy.toml"
audit_log = "site-audit.jsonl"
poll_interval = "200ms"
[tls]
ca = "pki/ca.crt"
cert = "pki/{site}.crt"
key = "pki/{site}.key"
[data]
path = "{site}.csv"
""", encoding="utf-8")
        with open(tmp_path / "site.log", "w") as log:
            agent = subprocess.Popen([sys.executable, "-m", "fedsynth", "site", "run",
                                      "--config", str(site_toml), "--once"], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=tmp_path)
        processes.append(agent)
        pending = []
        for _ in range(300):
            pending = json.loads(_cli("site", "pending", "--config", str(site_toml),
                                      "--format", "json"))
            if pending:
                break
            assert agent.poll() is None, (tmp_path / "site.log").read_text()
            time.sleep(0.1)
        assert [p["round"] for p in pending] == [round_id]
        assert "estimator 'auc' is not permitted" in pending[0]["refusals"]["auc"]
        polls_before = len(proxy.captured)
        time.sleep(1.5)                              # several more polls while pending
        assert len(proxy.captured) > polls_before    # the agent keeps polling...
        assert not [m for m, _ in proxy.captured if m.endswith("/Submit")]   # ...sends nothing
        shown = json.loads(_cli("round", "show", round_id, "--config", str(config),
                                "--format", "json"))
        assert [s["status"] for s in shown["sites"]] == ["missing"]

        _cli("site", "approve", round_id, "--config", str(site_toml), "--by", "steward")
        agent.wait(timeout=60)
        assert agent.returncode == 0, (tmp_path / "site.log").read_text()
        _cli("round", "wait", round_id, "--config", str(config), "--timeout", "60")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        if proxy is not None:
            proxy.close()

    submits = [pb.Submission.FromString(pb.SubmitRequest.FromString(raw).submission)
               for method, raw in proxy.captured if method.endswith("/Submit")]
    assert len(submits) == 1
    results = {r.analysis: r for r in submits[0].results}
    assert results["crude_OR"].WhichOneof("outcome") == "estimate"
    assert results["auc"].refusal.code == "policy"
    audit = verify_log(tmp_path / "site-audit.jsonl")
    assert audit.ok, audit.problems
    events = [json.loads(line)["event"]
              for line in (tmp_path / "site-audit.jsonl").read_text().splitlines()]
    assert events.count("policy.pending") == 1
    assert events.index("policy.pending") < events.index("policy.approved") \
        < events.index("policy.decision") < events.index("submission.signed")
    assert "submission.acknowledged" in events
    # What was released is remembered for the next round's differencing check.
    releases = json.loads((tmp_path / "mtf-alpha.state.releases.json").read_text())
    assert sorted(n for ns in releases.values() for n in ns) == [1800, 1800]
