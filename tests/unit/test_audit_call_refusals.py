"""A wrong protocol version on Heartbeat or PullWork is refused *and* audited, throttled.

Register and Submit refusals were always audited; the frequent calls were refused silently,
so a site stuck on an old agent (or a probe trying versions) left no trace in the
coordinator's audit log. The audit entry is throttled per site and method (one a minute)
so that a polling site cannot flood the fsync'd log.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from coordinator.handlers import Handlers, Rejected
from coordinator.store import Store
from fedsynth import PROTOCOL_VERSION
from fedsynth.audit import AuditLog, verify_log
from fedsynth.config import CoordinatorConfig, PoolingConfig


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def handlers(tmp_path: Path):
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path, tls=None,
                               allow=("mtf-alpha", "mtf-bravo"), pooling=PoolingConfig())
    store = Store(config.state)
    clock = Clock()
    log = tmp_path / "audit.jsonl"
    yield Handlers(store, config, clock=clock, audit=AuditLog(log)), store, clock, log
    store.close()


def _events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _refused(call) -> Rejected:
    with pytest.raises(Rejected) as info:
        call()
    return info.value


def test_wrong_version_on_heartbeat_and_pull_work_is_audited_and_throttled(handlers):
    h, store, clock, log = handlers

    def heartbeat(site="mtf-alpha"):
        return h.heartbeat(site, agent_version="old", protocol_version="fedsynth.v0")

    def pull(site="mtf-alpha"):
        return h.pull_work(site, protocol_version="fedsynth.v9")

    for _ in range(3):                               # a polling site: 3 refusals each
        assert _refused(heartbeat).kind == "version"
        assert _refused(pull).kind == "version"
    refusals = [e["data"] for e in _events(log) if e["event"] == "call.rejected"]
    assert [(d["site"], d["method"], d["kind"]) for d in refusals] == [
        ("mtf-alpha", "Heartbeat", "version"), ("mtf-alpha", "PullWork", "version")]
    assert "'fedsynth.v0'" in refusals[0]["reason"] and PROTOCOL_VERSION in \
        refusals[0]["reason"]
    # Throttled per site: another site's refusal is audited at once.
    _refused(lambda: heartbeat("mtf-bravo"))
    # ... and the same site again once the interval has passed.
    clock.now += h.VERSION_AUDIT_EVERY - dt.timedelta(seconds=1)
    _refused(heartbeat)
    clock.now += dt.timedelta(seconds=1)
    _refused(heartbeat)
    refusals = [e["data"] for e in _events(log) if e["event"] == "call.rejected"]
    assert [(d["site"], d["method"]) for d in refusals] == [
        ("mtf-alpha", "Heartbeat"), ("mtf-alpha", "PullWork"), ("mtf-bravo", "Heartbeat"),
        ("mtf-alpha", "Heartbeat")]
    assert verify_log(log).ok
    # Refused calls changed no state: no contact recorded.
    assert all(s.last_heartbeat is None for s in store.list_sites())


def test_right_version_is_not_audited(handlers):
    h, _store, _clock, log = handlers
    h.heartbeat("mtf-alpha", agent_version="new", protocol_version=PROTOCOL_VERSION)
    assert h.pull_work("mtf-alpha", protocol_version=PROTOCOL_VERSION) == []
    assert not [e for e in _events(log) if e["event"] == "call.rejected"]
