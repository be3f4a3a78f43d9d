"""Issue 10, item 4, end to end: a site whose audit log cannot be appended sends nothing.

A real coordinator and a real site agent process (mutual TLS on 127.0.0.1). The site's
audit log ends in a corrupt line, so every append fails (the log refuses to continue a
chain it cannot read: fail closed). Before the fix the agent logged the failure and
submitted anyway. Now: the round stays unanswered by that site while it polls, its log
says why, and once the operator has archived the broken log the agent answers, with the
submission's entry (the digest of the exact bytes the coordinator stored) in the new log.
"""

from __future__ import annotations

import time

import pytest

from fedsynth.audit import AuditLog
from fedsynth.config import load_coordinator_config

pytestmark = pytest.mark.integration

SPEC_TEXT = """
[[analysis]]
name = "auc"
estimator = "auc"
outcome = "outcome"
score = "risk_score"
"""


def _submissions(federation, round_id: str) -> list:
    from coordinator.store import Store

    config = load_coordinator_config(federation.coordinator_config_path, insecure=True)
    with Store(config.state) as store:
        return store.submissions(round_id)


def test_site_with_a_broken_audit_log_sends_nothing(federation, site_data, tmp_path) -> None:
    site = "mtf-alpha"
    federation.start_coordinator(allow=[site])
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_TEXT, encoding="utf-8")
    round_id = federation.start_round(spec, deadline="5m", quorum=1)
    sites = federation.root / "sites"
    sites.mkdir(exist_ok=True)
    audit = sites / f"{site}-audit.jsonl"
    audit.write_text('{"seq": 1, "ts": "2026-01-01T00:00:00Z", "event": "x", "da\n',
                     encoding="utf-8")

    agent = federation.start_site(site, site_data / f"{site}.csv")
    # Until the agent has handled the round: it either says the log failed, or submits.
    federation.wait_for(lambda: "could not be written" in federation.log(site)
                        or _submissions(federation, round_id), timeout=120,
                        what="the agent to handle the round")
    time.sleep(2.0)                        # several more polls (poll_interval 0.3 s)
    assert _submissions(federation, round_id) == []
    assert agent.poll() is None            # still running, retrying
    log = federation.log(site)
    assert "nothing was computed or sent" in log or "was NOT sent" in log
    federation.kill(agent)
    assert _submissions(federation, round_id) == []

    # The operator archives the broken log; the agent answers on its next run.
    audit.rename(audit.with_suffix(".broken"))
    agent = federation.start_site(site, site_data / f"{site}.csv", once=True)
    assert agent.wait(timeout=180) == 0, federation.log(site)
    (stored,) = _submissions(federation, round_id)
    entries = AuditLog(audit).entries()
    signed = [e for e in entries if e.event == "submission.signed"]
    assert [e.data["digest"] for e in signed] == [stored.digest]
    assert AuditLog(audit).verify().ok
