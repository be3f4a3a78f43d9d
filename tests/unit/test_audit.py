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


# --- crashes during an append (issue 10, item 10) -------------------------------------------

_KILLED_APPEND = r"""
import os, signal, sys
from fedsynth.audit import AuditLog
import fedsynth.audit as audit
point = sys.argv[2]
log = AuditLog(sys.argv[1])
if point == "before_head_rename":
    # the line is written and fsync'd, the head's temporary file too; killed before rename
    os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
elif point.startswith("after_fsync_"):
    real, calls = os.fsync, []
    def fsync(fd):
        real(fd)
        calls.append(fd)
        if len(calls) == int(point.rsplit("_", 1)[1]):
            os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = fsync
log.append("submission.accepted", {"round": "r-9", "site": "mtf-alpha"})
"""


def _killed_append(path: Path, point: str) -> None:
    out = subprocess.run([sys.executable, "-c", _KILLED_APPEND, str(path), point],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_kill_between_line_and_head_is_a_torn_write_not_tampering(tmp_path):
    log = _log(tmp_path, 3)
    _killed_append(log.path, "before_head_rename")
    assert any(n.startswith(".audit.jsonl.head.") for n in _files(tmp_path))  # temporary left
    result = verify_log(log.path)
    # before the fix: "entries were appended outside fedsynth" until the next append
    assert result.ok, result.problems
    assert result.entries == 4
    assert any("head update was interrupted" in n for n in result.notes)
    assert any("temporary file" in n for n in result.notes)
    recovery = log.recover()
    assert recovery.head_forward_seq == 3 and len(recovery.temporaries) == 1
    assert _files(tmp_path) == ["audit.jsonl", "audit.jsonl.head"]      # no temporary left
    after = verify_log(log.path)
    assert after.ok and after.entries == 5
    assert [e.event for e in log.entries()][-2:] == ["submission.accepted", "audit.recovered"]
    assert log.entries()[-1].data["head_forward_seq"] == 3
    assert not any("interrupted (" in n or "brought forward at the next" in n
                   for n in after.notes)
    assert log.recover().changed is False                              # nothing left to do


@pytest.mark.parametrize("fsyncs, entries, final", [(1, 0, 2), (2, 0, 1), (3, 1, 3), (4, 1, 3)])
def test_kill_during_the_first_append_is_recovered(tmp_path, fsyncs, entries, final):
    # fsyncs 1-2: the initial head (seq -1) is being written; 3: the first line is on disk,
    # its head is not; 4: the head's temporary file is written, not yet renamed
    path = tmp_path / "audit.jsonl"
    _killed_append(path, f"after_fsync_{fsyncs}")
    result = verify_log(path)
    assert result.ok and result.entries == entries, result.problems
    if entries:
        assert any("head update was interrupted" in n for n in result.notes)
    AuditLog(path).append("next", {})
    after = verify_log(path)
    # + "next", and "audit.recovered" when there was something to repair
    assert after.ok and after.entries == final, after.problems
    assert _files(tmp_path) == ["audit.jsonl", "audit.jsonl.head"]


def _real_line(tmp_path: Path, seq_entries: int) -> tuple[AuditLog, bytes]:
    """A log of ``seq_entries`` entries and the exact line its next append would write."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    log = _log(tmp_path / "a", seq_entries)
    twin = AuditLog(tmp_path / "b" / "audit.jsonl")
    twin.path.write_bytes(log.path.read_bytes())
    (twin.path.parent / "audit.jsonl.head").write_bytes(
        (log.path.parent / "audit.jsonl.head").read_bytes())
    size = twin.path.stat().st_size
    twin.append("submission.sent", {"round": "r-next", "yi": 0.5, "note": "x" * 300})
    return log, twin.path.read_bytes()[size:]


def test_torn_partial_line_is_removed_and_recorded(tmp_path):
    import hashlib

    log, line = _real_line(tmp_path, 4)
    torn = line[: len(line) // 2]                        # killed mid-write
    with open(log.path, "ab") as handle:
        handle.write(torn)
    result = verify_log(log.path)
    assert result.ok, result.problems                    # a torn write, not tampering
    assert result.entries == 4
    assert any("interrupted mid-write" in n and f"{len(torn)} bytes" in n for n in result.notes)
    entry = log.append("after", {"k": 1})                # the next append repairs first
    assert entry.seq == 5
    entries = log.entries()
    assert [e.event for e in entries][-2:] == ["audit.recovered", "after"]
    recovered = entries[-2].data
    assert recovered["torn_bytes"] == len(torn)
    assert recovered["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    assert verify_log(log.path).ok


def test_whole_entry_lacking_its_newline_is_kept(tmp_path):
    log, line = _real_line(tmp_path, 2)
    with open(log.path, "ab") as handle:
        handle.write(line[:-1])
    result = verify_log(log.path)
    assert result.ok and any("final newline" in n for n in result.notes)
    recovery = log.recover()
    assert recovery.completed_seq == 2 and recovery.torn_bytes == 0
    events = [e.event for e in log.entries()]
    assert events[2:] == ["submission.sent", "audit.recovered"]
    assert verify_log(log.path).ok


@pytest.mark.parametrize("damage", ["two_behind", "garbage_fragment", "head_ahead",
                                    "fragment_after_head_behind"])
def test_tampering_is_not_mistaken_for_a_torn_write(tmp_path, damage):
    log = _log(tmp_path, 5)
    head = log.path.parent / "audit.jsonl.head"
    if damage == "two_behind":
        head.write_text(json.dumps({"seq": 2, "hash": log.entries()[2].hash}))
    elif damage == "garbage_fragment":
        with open(log.path, "ab") as handle:
            handle.write(b"rm -rf evidence")
    elif damage == "head_ahead":
        _write(log, _lines(log)[:-1])
    else:
        head.write_text(json.dumps({"seq": 3, "hash": log.entries()[3].hash}))
        with open(log.path, "ab") as handle:
            handle.write(b'{"data":{"x"')
    before = (log.path.read_bytes(), head.read_bytes())
    result = verify_log(log.path)
    assert not result.ok and result.problems
    with pytest.raises(AuditError):
        log.append("x", {})
    with pytest.raises(AuditError):
        log.recover()
    assert (log.path.read_bytes(), head.read_bytes()) == before          # nothing changed


_APPEND_FOREVER = r"""
import sys
from fedsynth.audit import AuditLog
log = AuditLog(sys.argv[1])
i = 0
while True:
    log.append("submission.accepted", {"i": i, "pad": "p" * 20000})
    i += 1
"""


@pytest.mark.slow
def test_random_sigkills_during_appends_never_look_like_tampering(tmp_path):
    """SIGKILL at random moments of a process that appends without pause; after every kill
    ``verify`` passes (torn writes are notes), and the next writer repairs and continues.
    Before the fix about one kill in four left "appended outside fedsynth"."""
    import random
    import signal
    import time

    path = tmp_path / "audit.jsonl"
    rng = random.Random(10)
    torn = 0
    for _ in range(24):
        before = path.stat().st_size if path.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", _APPEND_FOREVER, str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not path.exists() or path.stat().st_size <= before:   # appending now
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        result = verify_log(path)
        assert result.ok, result.problems
        torn += any("interrupted" in n or "temporary" in n for n in result.notes
                    if not n.startswith("line") or "recovery after" not in n)
    AuditLog(path).recover()
    final = verify_log(path)
    assert final.ok and final.entries > 24
    assert _files(tmp_path) == ["audit.jsonl", "audit.jsonl.head"]
    print(f"{torn} of 24 kills interrupted an append; all recovered")


# --- a missing head file (issue 10, item 11) ------------------------------------------------

def test_missing_head_file_fails_verify_unless_allowed(tmp_path):
    log = _log(tmp_path, 6)
    _write(log, _lines(log)[:-2])                       # tail cut off ...
    (tmp_path / "audit.jsonl.head").unlink()            # ... and the evidence removed
    result = verify_log(log.path)
    # before the fix: OK
    assert not result.ok and result.head_missing
    assert any("cut-off tail cannot be detected" in p for p in result.problems)
    allowed = verify_log(log.path, allow_missing_head=True)
    assert allowed.ok and any("allowed" in n for n in allowed.notes)
    plain = _cli("audit", "verify", str(log.path))
    assert plain.returncode == 1 and "cannot be detected" in plain.stdout
    assert "--allow-missing-head" in plain.stdout
    flagged = _cli("audit", "verify", str(log.path), "--allow-missing-head")
    assert flagged.returncode == 0, flagged.stdout
    shown = _cli("audit", "show", str(log.path))
    assert shown.returncode == 1 and "head file" in shown.stderr
    assert _cli("audit", "show", str(log.path), "--allow-missing-head").returncode == 0
    # An append records that the head was missing before it, in the chain itself.
    log.append("next", {})
    after = verify_log(log.path)
    assert after.ok
    assert any("head file was missing" in n for n in after.notes)
    assert log.entries()[-2].event == "audit.recovered"


def test_state_files_of_the_log_are_owner_only(tmp_path):
    import stat

    log = AuditLog(tmp_path / "private" / "audit.jsonl")
    log.append("x", {})
    for path in (log.path, tmp_path / "private" / "audit.jsonl.head"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
