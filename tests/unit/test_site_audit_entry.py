"""Issue 10, item 4: nothing leaves a site unless its audit entry was written first.

* The largest spec :func:`fedsynth.spec.parse_spec` accepts, every analysis refused with
  the longest sentence and a long local detail, still gives audit entries (the
  submission's, the policy decision's, the approval's) far below the log's 1 MiB cap.
* When the append of the submission's entry fails (a full disk here), the agent does not
  send, does not record the round as signed, and says so in its log; once the log is
  writable again the next poll submits, and the entry is in the log before the bytes are
  handed to the network. The end-to-end version (a real agent process, a corrupt log, a
  real coordinator) is ``tests/integration/test_site_audit_before_send.py``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import hashlib
import json
import logging
from pathlib import Path

import pytest

from fedsynth.audit import MAX_ENTRY_BYTES, AuditLog
from fedsynth.config import load_site_config
from fedsynth.effects.results import Refusal
from fedsynth.serde import WorkItem
from fedsynth.spec import MAX_COLUMN_CHARS, MAX_NAME_CHARS, MAX_SPEC_BYTES, AnalysisSpec, parse_spec
from site_agent.agent import SiteAgent, submission_audit
from site_agent.client import SubmitAck
from site_agent.policy import Policy
from tests.reconstruction import attack_site


def _largest_spec():
    """As many analyses with names and columns at their maximum length as fit in
    MAX_SPEC_BYTES (the spec's JSON form is what the cap measures)."""
    analyses, size, i = [], 64, 0
    while True:
        candidate = {"name": f"a{i:05d}" + "n" * (MAX_NAME_CHARS - 6),
                     "estimator": "logistic",
                     "outcome": f"o{i:05d}" + "o" * (MAX_COLUMN_CHARS - 6),
                     "exposure": "x" * MAX_COLUMN_CHARS}
        size += len(json.dumps(AnalysisSpec.from_dict(candidate).to_dict(),
                               separators=(",", ":"))) + 1
        if size > MAX_SPEC_BYTES:
            break
        analyses.append(candidate)
        i += 1
    return parse_spec({"analysis": analyses})


def test_the_largest_accepted_spec_keeps_every_audit_entry_under_the_cap(tmp_path) -> None:
    spec = _largest_spec()
    assert len(spec.analyses) > 500 and len(spec.to_json()) <= MAX_SPEC_BYTES
    # The policy refuses every analysis, naming its (longest) outcome column.
    policy = Policy(outcomes=("none",), approvals=tmp_path / "approvals")
    decision = policy.review(spec)
    assert len(decision.refusals) == len(spec.analyses)
    results = {a.name: Refusal(**{**vars(decision.refusal(a.name)),
                                  "detail": "database said: " + "q" * 5000})
               for a in spec.analyses}
    entries = {
        "submission.signed": submission_audit("r1", b"payload" * 1000, results),
        "policy.decision": {"round": "r1", **decision.to_dict()},
        "policy.approved": {"round": "r1", "fingerprint": decision.fingerprint,
                            "by": "operator", "spec": spec.to_dict()},
    }
    log = AuditLog(tmp_path / "site-audit.jsonl")
    for event, data in entries.items():
        log.append(event, data)                  # raises above the cap
    for line in (tmp_path / "site-audit.jsonl").read_bytes().splitlines():
        assert len(line) < MAX_ENTRY_BYTES * 0.8, len(line)
    assert log.verify().ok


class RecordingClient:
    """The network side of one submission: records what would leave the process."""

    def __init__(self, audit_path: Path) -> None:
        self.sent: list[bytes] = []
        self.audit_path = audit_path

    async def submit(self, payload: bytes, signature: bytes) -> SubmitAck:
        # At the moment the bytes leave, their audit entry must already be in the log.
        last = AuditLog(self.audit_path).entries()[-1]
        assert last.event == "submission.signed"
        assert last.data["digest"] == hashlib.sha256(payload).hexdigest()
        self.sent.append(payload)
        return SubmitAck("accepted", "r1", "stored")


def test_failed_audit_append_stops_the_submission(tmp_path, monkeypatch, caplog) -> None:
    attack_site().to_csv(tmp_path / "site.csv", index=False)
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\ninsecure = true\n'
        'state_file = "state.json"\naudit_log = "site-audit.jsonl"\n'
        '[data]\npath = "site.csv"\n', encoding="utf-8")
    agent = SiteAgent(load_site_config(tmp_path / "site.toml", insecure=True))
    spec = parse_spec({"analysis": [{"name": "auc", "estimator": "auc", "outcome": "outcome",
                                     "score": "risk_score"}]})
    now = _dt.datetime.now(_dt.UTC)
    work = WorkItem("r1", spec.to_toml(), now, now + _dt.timedelta(hours=1))
    client = RecordingClient(tmp_path / "site-audit.jsonl")

    real_append = AuditLog.append

    def disk_full(self, event, data):
        if event == "submission.signed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, event, data)

    monkeypatch.setattr(AuditLog, "append", disk_full)
    with caplog.at_level(logging.ERROR, logger="fedsynth.site"):
        asyncio.run(agent.handle(client, work))
    assert client.sent == []                                # nothing left the site
    assert agent.state.get("r1") is None                    # nor is it queued for a resend
    assert "the submission was NOT sent" in caplog.text
    assert "No space left on device" in caplog.text

    monkeypatch.setattr(AuditLog, "append", real_append)    # the disk has room again
    asyncio.run(agent.handle(client, work))
    assert len(client.sent) == 1
    assert agent.state.get("r1").status == "acknowledged"
    events = [e.event for e in AuditLog(tmp_path / "site-audit.jsonl").entries()]
    assert events.index("submission.signed") < events.index("submission.acknowledged")


def test_failed_policy_audit_stops_the_round_too(tmp_path, monkeypatch) -> None:
    attack_site().to_csv(tmp_path / "site.csv", index=False)
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\ninsecure = true\n'
        'state_file = "state.json"\naudit_log = "site-audit.jsonl"\n'
        '[data]\npath = "site.csv"\n', encoding="utf-8")
    # A corrupt last line: the log refuses to continue the chain (fail closed).
    (tmp_path / "site-audit.jsonl").write_text('{"seq": 1, "broken\n', encoding="utf-8")
    agent = SiteAgent(load_site_config(tmp_path / "site.toml", insecure=True))
    spec = parse_spec({"analysis": [{"name": "auc", "estimator": "auc", "outcome": "outcome",
                                     "score": "risk_score"}]})
    now = _dt.datetime.now(_dt.UTC)
    client = RecordingClient(tmp_path / "site-audit.jsonl")
    asyncio.run(agent.handle(client, WorkItem("r1", spec.to_toml(), now, now)))
    assert client.sent == [] and agent.state.get("r1") is None


@pytest.mark.parametrize("detail_chars", [10, 50_000])
def test_local_details_in_the_entry_are_bounded(detail_chars: int) -> None:
    results = {f"a{i}": Refusal.of("database_values", f"a{i}", detail="x" * detail_chars)
               for i in range(400)}
    kept = submission_audit("r", b"p", results)["kept"]
    assert len(kept) == 400
    assert sum(len(v["detail"]) for v in kept.values()) <= 128 * 1024 + 400 * 60
