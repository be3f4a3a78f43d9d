"""Tamper tests of the hash-chained audit log: edit, delete, reorder, truncate are detected."""

from __future__ import annotations

import json
import math
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from fedsynth.audit import GENESIS, AuditError, AuditLog, digest, verify_log
from fedsynth.errors import InputError


def _log(tmp_path: Path, n: int = 6) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("submission.sent", {"round": f"r-{i}", "i": i, "yi": 0.1 * i})
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text(encoding="utf-8").splitlines(keepends=True)


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines), encoding="utf-8")


def test_chain_links_and_fields(tmp_path):
    log = _log(tmp_path, 3)
    entries = log.entries()
    assert [e.seq for e in entries] == [0, 1, 2]
    assert entries[0].prev == GENESIS
    assert entries[1].prev == entries[0].hash and entries[2].prev == entries[1].hash
    for entry in entries:
        assert entry.hash == digest(entry.body())
    result = verify_log(log.path)
    assert result.ok and result.entries == 3 and result.problems == ()
    assert result.head == entries[-1].hash


def test_nonfinite_and_odd_values_are_recorded(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    entry = log.append("submission.rejected", {"vi": math.nan, "yi": -math.inf,
                                               "raw": b"\x00\xff", "tags": {"b", "a"}})
    assert entry.data == {"vi": "NaN", "yi": "-Infinity", "raw": "00ff", "tags": ["a", "b"]}
    assert verify_log(log.path).ok


def test_edit_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    obj = json.loads(lines[2])
    obj["data"]["yi"] = 99.0
    lines[2] = json.dumps(obj) + "\n"
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok
    assert any("line 3 (seq 2)" in p and "edited" in p for p in result.problems)


def test_edit_with_recomputed_hash_breaks_next_link(tmp_path):
    # An attacker who recomputes the edited entry's hash still breaks the next entry's link.
    log = _log(tmp_path)
    lines = _lines(log)
    obj = json.loads(lines[2])
    obj["data"]["yi"] = 99.0
    obj["hash"] = digest({k: obj[k] for k in ("seq", "ts", "event", "data", "prev")})
    lines[2] = json.dumps(obj) + "\n"
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok
    assert any("line 4 (seq 3)" in p and "link" in p for p in result.problems)


def test_delete_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok
    assert any("line 4 (seq 4)" in p and "removed" in p for p in result.problems)


def test_reorder_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok
    assert any(p.startswith("line 2 (seq 2)") for p in result.problems)
    assert any(p.startswith("line 3 (seq 1)") and "reordered" in p for p in result.problems)


def test_truncated_tail_detected_by_head_file(tmp_path):
    log = _log(tmp_path)
    _write(log, _lines(log)[:-2])
    result = verify_log(log.path)
    assert not result.ok
    assert any("ends at line 4 (seq 3)" in p and "seq 5" in p for p in result.problems)


def test_last_entry_replaced_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    obj = json.loads(lines[-1])
    obj["event"] = "nothing.happened"
    obj["hash"] = digest({k: obj[k] for k in ("seq", "ts", "event", "data", "prev")})
    lines[-1] = json.dumps(obj) + "\n"
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok and any("head file" in p for p in result.problems)


def test_garbage_line_and_missing_newline(tmp_path):
    log = _log(tmp_path, 3)
    lines = _lines(log)
    lines.insert(1, "not json\n")
    _write(log, lines)
    result = verify_log(log.path)
    assert not result.ok and any(p.startswith("line 2: not a valid JSON") for p in result.problems)
    _write(log, _lines(log)[:1] + ['{"seq": 1'])
    result = verify_log(log.path)
    assert not result.ok and any("newline" in p for p in result.problems)


def test_append_refuses_to_continue_corrupt_tail(tmp_path):
    log = _log(tmp_path, 2)
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"seq": 2, "half')
    size = log.path.stat().st_size
    with pytest.raises(AuditError, match="incomplete line"):
        log.append("x", {})
    assert log.path.stat().st_size == size


def test_bad_arguments(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(InputError, match="event name"):
        log.append("", {})
    with pytest.raises(InputError, match="mapping"):
        log.append("x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="above the limit"):
        log.append("x", {"blob": "a" * (2 << 20)})
    assert not log.path.exists() or log.path.stat().st_size == 0
    with pytest.raises(InputError, match="does not exist"):
        verify_log(tmp_path / "missing.jsonl")


def _append_many(path: str, tag: str, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("concurrent", {"tag": tag, "i": i})


def test_concurrent_appenders_keep_one_chain(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, t, 25)) for t in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify_log(path)
    assert result.ok, result.problems
    assert result.entries == 75


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsynth", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_verify_exit_codes(tmp_path):
    log = _log(tmp_path, 4)
    ok = _cli("audit", "verify", str(log.path))
    assert ok.returncode == 0, ok.stderr
    assert "OK, 4 entries" in ok.stdout
    lines = _lines(log)
    del lines[1]
    _write(log, lines)
    broken = _cli("audit", "verify", str(log.path), "--format", "json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False and any("seq 2" in p for p in report["problems"])
    missing = _cli("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_cli_show_filters_and_refuses_broken_logs(tmp_path):
    log = AuditLog(tmp_path / "site.jsonl")
    log.append("policy.decision", {"round": "r-1", "refusals": {}})
    log.append("submission.signed", {"round": "r-1", "digest": "ab",
                                     "sent": {"crude_OR": {"yi": -0.38, "vi": 0.0168,
                                                           "se": 0.13, "n": 1800},
                                              "auc": {"refused": "refused by site policy"}}})
    log.append("submission.signed", {"round": "r-2", "digest": "cd", "sent": {}})
    out = _cli("audit", "show", str(log.path), "--event", "submission", "--round", "r-1")
    assert out.returncode == 0, out.stderr
    assert "crude_OR: yi=-0.38 vi=0.0168 n=1800" in out.stdout
    assert "auc: refused (refused by site policy)" in out.stdout
    assert "r-2" not in out.stdout and "policy.decision" not in out.stdout
    assert "(1 of 3 entries; chain intact" in out.stdout
    as_json = json.loads(_cli("audit", "show", str(log.path), "--format", "json").stdout)
    assert [e["seq"] for e in as_json] == [0, 1, 2]
    lines = _lines(log)
    del lines[0]
    _write(log, lines)
    broken = _cli("audit", "show", str(log.path))
    assert broken.returncode == 1 and "chain is broken" in broken.stderr and not broken.stdout
