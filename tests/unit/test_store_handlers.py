"""Coordinator handlers over a real store, without a network: identity, check order."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest

from coordinator.handlers import Handlers, Rejected
from coordinator.rounds import open_round
from coordinator.store import Store
from fedsynth import PROTOCOL_VERSION
from fedsynth.config import CoordinatorConfig, PoolingConfig
from fedsynth.pki import init_ca, issue_site
from fedsynth.serde import SubmissionContent, WireEstimate, encode_submission
from fedsynth.signing import load_private_key, sign

SPEC = """
[[analysis]]
name = "a"
estimator = "two_group"
outcome = "y"
exposure = "t"
measure = "MD"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    for name in ("mtf-alpha", "mtf-zulu"):
        issue_site(root, name)
    return root


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path, tls=None, allow=("mtf-alpha",),
                               pooling=PoolingConfig())
    store = Store(config.state)
    clock = Clock()
    record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(hours=3), quorum=1,
                        allowed=config.allow, pooling={"method": "REML"}, now=clock.now)
    yield Handlers(store, config, clock=clock), store, clock, record.id
    store.close()


def _signed(pki: Path, round_id: str, when: dt.datetime, site: str = "mtf-alpha",
            vi: float = 0.04) -> tuple[bytes, bytes]:
    content = SubmissionContent(round_id=round_id, site=site, nonce=os.urandom(16),
                                timestamp=when,
                                results={"a": WireEstimate("a", 0.1, vi, abs(vi) ** 0.5, 50)})
    payload = encode_submission(content)
    return payload, sign(load_private_key(pki / f"{site}.key"), payload)


def test_identity_comes_from_the_certificate(setup, pki: Path) -> None:
    handlers, *_ = setup
    assert handlers.identify((pki / "mtf-alpha.crt").read_bytes(), "mtf-zulu") == "mtf-alpha"
    with pytest.raises(Rejected) as info:
        handlers.identify((pki / "mtf-zulu.crt").read_bytes(), "mtf-alpha")
    assert info.value.kind == "permission" and "mtf-zulu" in info.value.message
    # Without TLS, a claimed name is accepted only on an --insecure coordinator.
    with pytest.raises(Rejected) as info:
        handlers.identify(None, "mtf-alpha")
    assert info.value.kind == "unauthenticated"
    insecure = Handlers(handlers.store, dataclasses.replace(handlers.config, insecure=True))
    assert insecure.identify(None, "mtf-alpha") == "mtf-alpha"


def test_identical_resend_is_acknowledged_even_when_old(setup, pki: Path) -> None:
    handlers, store, clock, round_id = setup
    pem = (pki / "mtf-alpha.crt").read_bytes()
    payload, signature = _signed(pki, round_id, clock.now)
    first = handlers.submit("mtf-alpha", pem, protocol_version=PROTOCOL_VERSION,
                            payload=payload, signature=signature)
    assert first.status == "accepted"
    clock.now += dt.timedelta(hours=2)          # far outside the 10-minute window
    again = handlers.submit("mtf-alpha", pem, protocol_version=PROTOCOL_VERSION,
                            payload=payload, signature=signature)
    assert again.status == "duplicate"
    assert len(store.submissions(round_id)) == 1


def test_checks_and_no_state_change(setup, pki: Path) -> None:
    handlers, store, clock, round_id = setup
    pem = (pki / "mtf-alpha.crt").read_bytes()

    def submit(payload: bytes, signature: bytes, version: str = PROTOCOL_VERSION):
        with pytest.raises(Rejected) as info:
            handlers.submit("mtf-alpha", pem, protocol_version=version, payload=payload,
                            signature=signature)
        return info.value

    payload, signature = _signed(pki, round_id, clock.now)
    error = submit(payload, signature, version="fedsynth.v9")
    assert error.kind == "version" and "fedsynth.v9" in error.message
    error = submit(payload + b"\x00", signature)
    assert error.kind == "unauthenticated"
    error = submit(*_signed(pki, round_id, clock.now + dt.timedelta(minutes=11)))
    assert error.kind == "invalid" and "timestamp" in error.message
    error = submit(*_signed(pki, round_id, clock.now, vi=0.0))
    assert error.kind == "invalid" and "vi = 0.0" in error.message
    error = submit(*_signed(pki, round_id, clock.now, site="mtf-zulu"))
    assert error.kind == "unauthenticated"   # signed with zulu's key, alpha's certificate
    assert store.submissions(round_id) == []
    assert store.get_round(round_id).n_submissions == 0


def test_pull_work(setup, pki: Path) -> None:
    handlers, _store, clock, round_id = setup
    (item,) = handlers.pull_work("mtf-alpha", protocol_version=PROTOCOL_VERSION)
    assert item.round_id == round_id and "[[analysis]]" in item.spec_toml
    clock.now += dt.timedelta(hours=4)          # past the deadline: no longer offered
    assert handlers.pull_work("mtf-alpha", protocol_version=PROTOCOL_VERSION) == []
