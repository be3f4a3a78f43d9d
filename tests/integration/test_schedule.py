"""A real coordinator process opens scheduled rounds by itself, and after downtime opens one
round for the missed slots, not one per slot."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
[[analysis]]
name = "crude_or"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"
"""

pytestmark = pytest.mark.integration


@pytest.fixture()
def workdir(tmp_path):
    from fedsynth.pki import init_ca, issue_coordinator

    init_ca(tmp_path / "pki")
    issue_coordinator(tmp_path / "pki", "localhost")
    (tmp_path / "eval.toml").write_text(SPEC)
    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\nkey = "pki/coordinator.key"\n'
        '[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n'
        # croniter's sixth field is seconds: a slot every 2 seconds
        '[[schedule]]\nspec = "eval.toml"\ncron = "* * * * * */2"\ndeadline = "1h"\n'
        'quorum = 1\n')
    return tmp_path


def _start(workdir: Path) -> subprocess.Popen:
    addr = workdir / "coordinator.addr"
    if addr.exists():
        addr.unlink()
    log = open(workdir / "coordinator.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                             "--config", str(workdir / "coordinator.toml")], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (addr.exists() and addr.read_text().strip()):
        assert proc.poll() is None, (workdir / "coordinator.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "coordinator did not start"
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rounds(workdir: Path):
    from coordinator.store import Store
    from fedsynth.config import state_url

    with Store(state_url("state.db", workdir)) as store:
        return store.list_rounds()


def _slot(record) -> dt.datetime:
    """The cron slot a scheduled round was opened for (last word of its source)."""
    return dt.datetime.fromisoformat(record.source.split()[-1].replace("Z", "+00:00"))


def _wait_rounds(workdir: Path, count: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rounds = _rounds(workdir)
        if len(rounds) >= count:
            return rounds
        time.sleep(0.2)
    raise AssertionError(f"expected {count} scheduled rounds, found {len(_rounds(workdir))}:\n"
                         + (workdir / "coordinator.log").read_text()[-3000:])


def test_coordinator_opens_scheduled_rounds_and_catches_up_once(workdir):
    proc = _start(workdir)
    try:
        rounds = _wait_rounds(workdir, 2)
    finally:
        _stop(proc)
    first = rounds[0]
    assert first.source and "schedule" in first.source
    assert first.quorum == 1 and first.deadline - first.opened_at == dt.timedelta(hours=1)
    assert [a["name"] for a in first.spec["analyses"]] == ["crude_or"]
    assert set(first.allowed) == {"mtf-alpha", "mtf-bravo"}
    before = {r.id for r in _rounds(workdir)}

    time.sleep(5.0)                                 # down for two or three slots
    proc = _start(workdir)
    try:
        rounds = _wait_rounds(workdir, len(before) + 2)
    finally:
        _stop(proc)
    after = sorted((r for r in rounds if r.id not in before), key=_slot)
    slots = [_slot(r) for r in rounds]
    assert len(slots) == len(set(slots)), "a slot was opened twice"
    last_before = max(_slot(r) for r in rounds if r.id in before)
    catch_up = after[0]
    # one run for the missed slots: the latest of them (>= 2 slots after the last run), and
    # every later round is a regular slot that came due after the catch-up was opened
    assert _slot(catch_up) - last_before >= dt.timedelta(seconds=4), \
        [(r.id, r.source) for r in rounds]
    assert all(_slot(r) > catch_up.opened_at for r in after[1:]), \
        [(r.id, r.source, r.opened_at) for r in after]
