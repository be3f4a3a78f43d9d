"""Issue 10, item 5: text from the other side is printed with its control characters
visible, never raw.

``fedsynth site pending`` printed the coordinator's spec raw: an escape sequence could
erase or rewrite the line of a risky analysis, so the operator approved the whole spec
without seeing it. The same held for refusal reasons in ``round show``, agent versions in
``sites`` and log lines. One helper (:func:`fedsynth.terminal.printable`) now renders
every non-printable character as its escape (``\\x1b``) wherever such text is printed
(the helper itself: ``tests/unit/test_terminal_helper.py``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from fedsynth.logs import configure_logging
from fedsynth.spec import parse_spec
from site_agent.policy import ApprovalStore

ESC = "\x1b"
#: erase the line, move up and overwrite: what a hostile peer would send
HIDE = "\x1b[2K\x1b[1A\r"
BIDI = "\u202e"


def _fedsynth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsynth", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _assert_safe(text: str) -> None:
    assert ESC not in text and BIDI not in text and "\r" not in text, repr(text)


# --- the printers ------------------------------------------------------------------------
def test_site_pending_shows_a_hostile_spec_escaped(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text("[policy]\nrequire_approval = true\n",
                                          encoding="utf-8")
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\ninsecure = true\n'
        'policy = "policy.toml"\n[data]\npath = "x.csv"\n', encoding="utf-8")
    store = ApprovalStore(tmp_path / "approvals")
    # A valid spec whose description tries to forge a harmless-looking analysis line...
    store.record_pending("r-1", parse_spec({
        "description": "monthly\n  - harmless: auc outcome=outcome score=risk_score",
        "analysis": [{"name": "ok", "estimator": "auc", "outcome": "outcome",
                      "score": "risk_score"}]}))
    # ...and a pending file (an older agent, or a spec that bypassed validation) whose
    # column hides itself and the next analysis with escape sequences.
    (tmp_path / "approvals" / "pending" / "r-2.json").write_text(json.dumps({
        "round": "r-2", "fingerprint": "f" * 64, "received_at": "2026-11-27T10:00:00+00:00",
        "spec": {"name": f"q{BIDI}", "analyses": [
            {"name": "risky", "estimator": "logistic", "outcome": f"hiv_status{HIDE}",
             "exposure": "treated", "covariates": [f"age{ESC}]0;title\x07"]}]},
        "refusals": {"risky": f"none{ESC}[8m"}}), encoding="utf-8")
    out = _fedsynth("site", "pending", "--config", "site.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _assert_safe(out.stdout)
    assert "\x07" not in out.stdout
    assert "outcome=hiv_status\\x1b[2K\\x1b[1A\\r" in out.stdout
    assert "covariates=age\\x1b]0;title\\x07" in out.stdout
    assert "[refused: none\\x1b[8m]" in out.stdout
    # The forged line is shown as part of the description, on the description's line.
    assert "description: monthly\\n  - harmless" in out.stdout
    assert all(not line.startswith("  - harmless") for line in out.stdout.splitlines())


def _coordinator(tmp_path: Path):
    from coordinator.rounds import open_round
    from coordinator.store import Store

    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\ninsecure = true\n'
        '[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n', encoding="utf-8")
    now = dt.datetime.now(dt.UTC)
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    record = open_round(store, spec_source=(
        '[[analysis]]\nname = "a"\nestimator = "auc"\noutcome = "y"\nscore = "s"\n'),
        deadline=dt.timedelta(hours=1), quorum=1, allowed=("mtf-alpha", "mtf-bravo"),
        pooling={"method": "DL", "test": "z", "level": 95.0, "i2_threshold": 50.0},
        now=now)
    return store, record, now


def test_round_show_shows_a_hostile_refusal_reason_escaped(tmp_path: Path) -> None:
    store, record, now = _coordinator(tmp_path)
    with store:
        # What a hostile site can get stored: any reason up to the validator's length cap.
        store.add_submission(round_id=record.id, site="mtf-alpha", nonce=b"n" * 16,
                             signed_at=now, payload=b"p", signature=b"s",
                             results={"a": {"refused": f"fine{HIDE}all good",
                                            "code": "x"}},
                             agent_version=f"9{ESC}[31m", now=now)
    out = _fedsynth("round", "show", record.id, "--config", "coordinator.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _assert_safe(out.stdout)
    assert "refused a: fine\\x1b[2K\\x1b[1A\\rall good" in out.stdout
    # JSON output was and stays ASCII-escaped by json.dumps
    out = _fedsynth("round", "show", record.id, "--config", "coordinator.toml", "--format",
                    "json", cwd=tmp_path)
    _assert_safe(out.stdout)
    assert json.loads(out.stdout)["sites"][0]["refusals"]["a"] == f"fine{HIDE}all good"


def test_sites_shows_a_hostile_agent_version_escaped(tmp_path: Path) -> None:
    store, _record, now = _coordinator(tmp_path)
    with store:
        store.record_contact("mtf-bravo", agent_version=f"0.1{HIDE}{BIDI}",
                             protocol_version="fedsynth.v1", now=now)
    out = _fedsynth("sites", "--config", "coordinator.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _assert_safe(out.stdout)
    assert "0.1\\x1b[2K\\x1b[1A\\r\\u202e" in out.stdout


def test_text_and_json_logs_escape_remote_text() -> None:
    stream = io.StringIO()
    log = logging.getLogger("fedsynth.test.terminal")
    try:
        configure_logging("text", stream=stream)
        log.warning("the coordinator refused: %s", f"bad{HIDE}\nFAKE INFO site: all sent")
        try:
            raise ValueError(f"boom{ESC}[2J")
        except ValueError:
            log.exception("failure %s", BIDI)
        text = stream.getvalue()
        _assert_safe(text)
        # one line per record: the embedded newline cannot forge a log line
        assert not any(line.startswith("FAKE") for line in text.splitlines())
        assert "bad\\x1b[2K\\x1b[1A\\r\\nFAKE INFO" in text
        assert "ValueError: boom\\x1b[2J" in text        # the traceback keeps its lines
        stream.seek(0)
        stream.truncate()
        configure_logging("json", stream=stream)
        log.warning("agent %s", f"v{BIDI}{ESC}\x85")
        line = stream.getvalue().strip()
        _assert_safe(line)
        assert "\x85" not in line
        assert json.loads(line)["message"] == f"agent v{BIDI}{ESC}\x85"
    finally:
        configure_logging("text")
