"""Site policy: estimator and column permissions, per-round cap, operator approval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsynth.audit import verify_log
from fedsynth.errors import ConfigError, InputError
from site_agent.policy import site_audit_log, site_policy, spec_fingerprint

SPEC = {"analyses": [
    {"name": "crude_OR", "estimator": "two_by_two", "outcome": "outcome",
     "exposure": "treated", "measure": "OR"},
    {"name": "adjusted_logOR", "estimator": "logistic", "outcome": "outcome",
     "exposure": "treated", "covariates": ["age", "sex"]},
    {"name": "by_id", "estimator": "linear", "outcome": "los_days", "exposure": "treated",
     "covariates": ["patient_id"]},
    {"name": "hr", "estimator": "cox", "time": "time", "event": "event", "exposure": "treated"},
    {"name": "auc", "estimator": "auc", "outcome": "outcome", "score": "risk_score"},
]}


def _site(tmp_path: Path, policy: str, extra: str = "") -> Path:
    """A site.toml naming a policy file with ``policy`` as its text."""
    (tmp_path / "policy.toml").write_text(policy, encoding="utf-8")
    path = tmp_path / "site.toml"
    path.write_text('name = "mtf-alpha"\ncoordinator = "localhost:1"\npolicy = "policy.toml"\n'
                    + extra + '[tls]\nca = "ca.crt"\ncert = "a.crt"\nkey = "a.key"\n'
                    '[data]\npath = "a.csv"\n', encoding="utf-8")
    return path


def test_permissive_default_without_policy(tmp_path):
    config = _site(tmp_path, "")
    config.write_text(config.read_text().replace('policy = "policy.toml"\n', ""))
    policy = site_policy(config)
    assert policy.approvals == tmp_path / "approvals"
    assert site_audit_log(config).path == tmp_path / "mtf-alpha-audit.jsonl"
    decision = policy.review(SPEC)
    assert decision.refusals == {} and not decision.needs_approval
    assert decision.allowed == tuple(a["name"] for a in SPEC["analyses"])


def test_estimators_and_column_roles(tmp_path):
    policy = site_policy(_site(tmp_path, """
[policy]
estimators = ["two_by_two", "logistic", "linear", "auc"]
outcomes = ["outcome", "los_days"]
exposures = ["treated"]
covariates = ["age", "sex"]
"""))
    decision = policy.review(SPEC)
    assert decision.allowed == ("crude_OR", "adjusted_logOR")
    assert "'patient_id' may not be used as a covariate" in decision.refusals["by_id"]
    assert "estimator 'cox' is not permitted" in decision.refusals["hr"]
    assert "'risk_score' may not be used as a covariate" in decision.refusals["auc"]


def test_max_analyses_per_round(tmp_path):
    policy = site_policy(_site(tmp_path, "[policy]\nmax_analyses = 2\n"))
    decision = policy.review(SPEC)
    assert decision.allowed == ("crude_OR", "adjusted_logOR")
    assert set(decision.refusals) == {"by_id", "hr", "auc"}
    assert all("more than 2 analyses" in r for r in decision.refusals.values())


def test_top_level_policy_keys(tmp_path):
    policy = site_policy(_site(tmp_path, 'estimators = ["auc"]\n'))
    assert policy.review(SPEC).allowed == ("auc",)


@pytest.mark.parametrize("text, key", [
    ('[policy]\nestimators = ["magic"]\n', "magic"),
    ("[policy]\nestimators = \"auc\"\n", "policy.estimators"),
    ("[policy]\nmax_analyses = 0\n", "policy.max_analyses"),
    ("[policy]\nrequire_approval = \"yes\"\n", "policy.require_approval"),
    ("[policy]\noutcome = [\"x\"]\n", "policy.outcome"),
    ("[policy]\ncovariates = [1]\n", "policy.covariates"),
    ("[policy\n", "not valid TOML"),
])
def test_bad_policy_names_key_and_value(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        site_policy(_site(tmp_path, text))


def test_fingerprint_is_content_based():
    other = json.loads(json.dumps(SPEC))
    assert spec_fingerprint(other) == spec_fingerprint(SPEC)
    other["analyses"][1]["covariates"].append("bmi")
    assert spec_fingerprint(other) != spec_fingerprint(SPEC)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fedsynth", "site", *args],
                          capture_output=True, text=True, timeout=60)


def test_approval_flow_with_cli_and_audit(tmp_path):
    config = _site(tmp_path, '[policy]\nrequire_approval = true\napprovals = "appr"\n',
                   'audit_log = "audit/site.jsonl"\n')
    policy = site_policy(config)
    decision = policy.review(SPEC)
    assert decision.needs_approval
    policy.store().record_pending("r-0001", SPEC, decision.refusals)
    listed = _cli("pending", "--config", str(config))
    assert listed.returncode == 0 and "round r-0001" in listed.stdout
    assert "adjusted_logOR: logistic" in listed.stdout
    # Unknown round: clear error, exit 2, nothing approved.
    wrong = _cli("approve", "r-9999", "--config", str(config))
    assert wrong.returncode == 2 and "r-9999" in wrong.stderr and "r-0001" in wrong.stderr
    assert policy.review(SPEC).needs_approval
    bad_id = _cli("approve", "../../etc", "--config", str(config))
    assert bad_id.returncode == 2 and "invalid round id" in bad_id.stderr
    ok = _cli("approve", "r-0001", "--config", str(config), "--by", "steward")
    assert ok.returncode == 0, ok.stderr
    assert not policy.review(SPEC).needs_approval
    assert json.loads(_cli("pending", "--config", str(config), "--format",
                           "json").stdout) == []
    # The same spec in a later round needs no new approval; a changed one does.
    changed = json.loads(json.dumps(SPEC))
    changed["analyses"].pop()
    assert policy.review(changed).needs_approval
    audit = verify_log(tmp_path / "audit" / "site.jsonl")
    assert audit.ok and audit.entries == 1


def test_tampered_pending_file_cannot_approve_other_content(tmp_path):
    config = _site(tmp_path, "[policy]\nrequire_approval = true\n")
    policy = site_policy(config)
    policy.store().record_pending("r-1", SPEC)
    pending = tmp_path / "approvals" / "pending" / "r-1.json"
    obj = json.loads(pending.read_text())
    obj["spec"]["analyses"] = obj["spec"]["analyses"][:1]   # the operator reviews this...
    pending.write_text(json.dumps(obj))
    policy.store().approve("r-1")
    assert policy.review(SPEC).needs_approval          # ...so the original stays unapproved
    assert not policy.review(obj["spec"]).needs_approval


def test_record_pending_rejects_bad_round(tmp_path):
    store = site_policy(_site(tmp_path, "")).store()
    with pytest.raises(InputError, match="invalid round id"):
        store.record_pending("a/b", SPEC)


def test_review_round_and_apply_decision(tmp_path):
    from fedsynth.audit import AuditLog
    from fedsynth.effects import Estimate
    from site_agent.policy import apply_decision, review_round

    config = _site(tmp_path, "[policy]\nrequire_approval = true\nestimators = [\"logistic\"]\n")
    policy = site_policy(config)
    audit = AuditLog(tmp_path / "a.jsonl")
    for _ in range(3):                         # the agent polls; pending is audited once
        decision = review_round(policy, "r-7", SPEC, audit)
        assert decision.needs_approval
    assert [e.event for e in audit.entries()] == ["policy.pending"]
    policy.store().approve("r-7")
    decision = review_round(policy, "r-7", SPEC, audit)
    assert not decision.needs_approval and decision.allowed == ("adjusted_logOR",)
    assert audit.entries()[-1].event == "policy.decision"
    results = {a["name"]: Estimate(analysis=a["name"], estimator=a["estimator"], measure="",
                                   yi=0.0, vi=1.0, se=1.0, n=50) for a in SPEC["analyses"]}
    out = apply_decision(results, decision)
    assert out["adjusted_logOR"] is results["adjusted_logOR"]
    assert out["crude_OR"].refused and out["crude_OR"].code == "policy"
    assert verify_log(audit.path).ok
