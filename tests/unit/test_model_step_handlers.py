"""Answers to model steps at the coordinator: serde, signature, replay, late, duplicate.

Each rule of :meth:`coordinator.handlers.Handlers.answer_step` is exercised against a real
store and a real :class:`coordinator.models.StepHub`, without a network: the answer the
hub is waiting for is accepted, stored with its signature, audited and delivered; anything
else is refused with the reason and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from coordinator.handlers import Handlers, Rejected
from coordinator.models import StepHub
from coordinator.rounds import open_round
from coordinator.store import Store
from fedsynth.config import CoordinatorConfig, PoolingConfig
from fedsynth.errors import InputError
from fedsynth.pki import init_ca, issue_site
from fedsynth.serde import (
    ModelStepOrder,
    StepAnswerContent,
    WireAggregates,
    WireRefusal,
    WireSiteFit,
    decode_model_step,
    decode_step_answer,
    encode_model_step,
    encode_step_answer,
    model_step_digest,
    pb,
)
from fedsynth.signing import load_private_key, sign

SPEC = """
[[analysis]]
name = "a"
estimator = "two_group"
outcome = "y"
exposure = "t"
measure = "MD"

[[model]]
name = "m"
family = "gaussian"
outcome = "y"
covariates = ["t"]
"""
NAMES = ("intercept", "t")
T0 = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    for name in ("mtf-alpha", "mtf-bravo"):
        issue_site(root, name)
    return root


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict]] = []

    def append(self, event: str, data: dict) -> None:
        self.entries.append((event, data))


@pytest.fixture
def setup(tmp_path: Path):
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path, tls=None,
                               allow=("mtf-alpha", "mtf-bravo"), pooling=PoolingConfig())
    store = Store(config.state)
    clock = Clock()
    record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(hours=1), quorum=1,
                        allowed=config.allow, pooling={"method": "REML"}, now=clock.now)
    hub = StepHub()
    audit = Audit()
    handlers = Handlers(store, config, clock=clock, audit=audit, steps=hub)
    yield handlers, store, clock, record, hub, audit
    store.close()


def _order(record, step_id: str = "00001.one_stage.1.m", coefficients=None) -> ModelStepOrder:
    return ModelStepOrder(round_id=record.id, step_id=step_id, model="m", kind="irls",
                          fit="one_stage", sequence=1, spec_toml=record.spec_toml,
                          deadline=record.deadline,
                          coefficients=coefficients or {"intercept": 0.5, "t": -1.0})


def _aggregates(n: int = 40) -> WireAggregates:
    return WireAggregates(names=NAMES, n=n, xtwx=(40.0, 20.0, 20.0, 20.0),
                          score=(1.5, -0.25), deviance=12.5, minus_twice_loglik=30.0)


def _answer(pki: Path, order: ModelStepOrder, *, site: str = "mtf-alpha",
            when: dt.datetime = T0, result=None, digest: bytes | None = None,
            nonce: bytes | None = None) -> tuple[bytes, bytes]:
    content = StepAnswerContent(
        round_id=order.round_id, site=site, nonce=nonce or os.urandom(16), timestamp=when,
        step_id=order.step_id,
        request_digest=digest or model_step_digest(encode_model_step(order)),
        result=result or _aggregates())
    payload = encode_step_answer(content)
    return payload, sign(load_private_key(pki / f"{site}.key"), payload)


def _call(handlers: Handlers, pki: Path, payload: bytes, signature: bytes,
          site: str = "mtf-alpha"):
    return handlers.answer_step(site, (pki / f"{site}.crt").read_bytes(),
                                protocol_version="fedsynth.v1", payload=payload,
                                signature=signature)


# ------------------------------------------------------------------------------------ serde

def test_model_step_round_trips_and_its_digest_is_deterministic() -> None:
    deadline = T0 + dt.timedelta(hours=1)
    for order in (
            ModelStepOrder("r-1", "s1", "m", "irls", "one_stage", 0, "spec", deadline),
            ModelStepOrder("r-1", "s2", "m", "irls", "stratified", 3, "spec", deadline,
                           coefficients={"intercept": 0.25, "age": float("nan")}),
            ModelStepOrder("r-1", "s3", "m", "site_fit", "site", 0, "spec", deadline,
                           epsilon=1e-9, maxit=40)):
        message = encode_model_step(order)
        back = decode_model_step(message)
        assert back.kind == order.kind and back.fit == order.fit
        assert back.sequence == order.sequence and back.deadline == deadline
        assert (back.epsilon, back.maxit) == (order.epsilon, order.maxit)
        if order.coefficients is None:
            assert back.coefficients is None
        else:
            assert list(back.coefficients) == list(order.coefficients)
        again = pb.ModelStep()
        again.ParseFromString(message.SerializeToString())
        assert model_step_digest(again) == model_step_digest(message)


def test_step_answer_round_trips_every_outcome() -> None:
    fit = WireSiteFit(status="ok", reason="", n=50, names=NAMES, coefficients=(1.0, 2.0),
                      covariance=(0.1, 0.01, 0.01, 0.2), iterations=4)
    for result in (_aggregates(), fit, WireRefusal("x", "disclosure_min_n", "suppressed")):
        content = StepAnswerContent("r-1", "mtf-alpha", b"n" * 16, T0, "s1", b"d" * 32,
                                    result)
        back = decode_step_answer(encode_step_answer(content))
        assert back.kind == content.kind
        if isinstance(result, WireRefusal):
            assert (back.result.code, back.result.reason) == (result.code, result.reason)
        else:
            assert back.result == result


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda m: setattr(m, "nonce", b"short"), "nonce"),
    (lambda m: setattr(m, "request_digest", b"x"), "request_digest"),
    (lambda m: m.ClearField("outcome"), "neither"),
    (lambda m: m.irls.score.append(1.0), "score"),
    (lambda m: m.irls.xtwx.append(1.0), "xtwx"),
    (lambda m: setattr(m, "step_id", ""), "step_id"),
])
def test_malformed_answers_are_refused_naming_the_field(mutate, field: str) -> None:
    content = StepAnswerContent("r-1", "mtf-alpha", b"n" * 16, T0, "s1", b"d" * 32,
                                _aggregates())
    message = pb.StepAnswer()
    message.ParseFromString(encode_step_answer(content))
    mutate(message)
    with pytest.raises(InputError, match=field):
        decode_step_answer(message.SerializeToString())


def test_a_step_whose_kind_and_payload_disagree_is_refused() -> None:
    message = encode_model_step(ModelStepOrder("r-1", "s1", "m", "irls", "one_stage", 0,
                                               "spec", T0))
    message.kind = "site_fit"
    with pytest.raises(InputError, match="kind"):
        decode_model_step(message)


# ---------------------------------------------------------------------------------- handlers

def test_the_awaited_answer_is_accepted_stored_audited_and_delivered(setup, pki) -> None:
    handlers, store, _clock, record, hub, audit = setup
    order = _order(record)
    future = hub.ask("mtf-alpha", encode_model_step(order))
    payload, signature = _answer(pki, order)
    result = _call(handlers, pki, payload, signature)
    assert (result.status, result.step_id) == ("accepted", order.step_id)
    assert future.result(timeout=1).result == _aggregates()
    assert store.count_step_answers(record.id) == {"mtf-alpha": 1}
    assert audit.entries == []                 # durable in the outbox, appended by the closer
    assert [e.event for e in store.pending_audit()] == ["model_step.accepted"]
    handlers.settle_audit()
    assert [e for e, _ in audit.entries] == ["model_step.accepted"]
    assert store.pending_audit() == []
    # an identical resend (a reconnect) is a duplicate, whatever the hub's state
    hub.forget([order.step_id])
    assert _call(handlers, pki, payload, signature).status == "duplicate"
    assert store.count_step_answers(record.id) == {"mtf-alpha": 1}


def _refused(handlers, pki, payload, signature, kind: str, text: str, site="mtf-alpha"):
    with pytest.raises(Rejected) as info:
        _call(handlers, pki, payload, signature, site)
    assert info.value.kind == kind and text in info.value.message, info.value.message


def test_answers_that_break_a_rule_are_refused_and_change_nothing(setup, pki) -> None:
    handlers, store, clock, record, hub, audit = setup
    order = _order(record)
    hub.ask("mtf-alpha", encode_model_step(order))
    # a signature by another key
    payload, _ = _answer(pki, order)
    other = sign(load_private_key(pki / "mtf-bravo.key"), payload)
    _refused(handlers, pki, payload, other, "unauthenticated", "signature")
    # signed for another site than the certificate's
    payload, signature = _answer(pki, order, site="mtf-bravo")
    with pytest.raises(Rejected) as info:
        handlers.answer_step("mtf-alpha", (pki / "mtf-bravo.crt").read_bytes(),
                             protocol_version="fedsynth.v1", payload=payload,
                             signature=signature)
    assert info.value.kind == "permission"
    # a step the coordinator never sent (or sent to someone else)
    stranger = _order(record, step_id="99999.one_stage.1.m")
    _refused(handlers, pki, *_answer(pki, stranger), "not_found", "no step")
    _refused(handlers, pki, *_answer(pki, order, site="mtf-bravo"), "invalid",
             "not sent to site", site="mtf-bravo")
    # an answer bound to other coefficients than those sent
    _refused(handlers, pki, *_answer(pki, order, digest=b"\x00" * 32), "invalid",
             "different request")
    # a timestamp outside the window
    _refused(handlers, pki, *_answer(pki, order, when=T0 - dt.timedelta(hours=2)),
             "invalid", "window")
    assert store.count_step_answers(record.id) == {}
    assert {e for e, _ in audit.entries} == {"model_step.rejected"}
    # the right answer still goes through; a replay of its nonce for another step does not
    nonce = os.urandom(16)
    assert _call(handlers, pki, *_answer(pki, order, nonce=nonce)).status == "accepted"
    second = _order(record, step_id="00002.one_stage.2.m")
    hub.ask("mtf-alpha", encode_model_step(second))
    _refused(handlers, pki, *_answer(pki, second, nonce=nonce), "conflict", "nonce")
    # a different second answer to an answered step
    hub.ask("mtf-alpha", encode_model_step(order))
    _refused(handlers, pki, *_answer(pki, order, result=_aggregates(n=41)), "conflict",
             "differently")
    # late: after the round's deadline
    clock.now = record.deadline + dt.timedelta(seconds=1)
    late = _answer(pki, second, when=clock.now)
    _refused(handlers, pki, *late, "precondition", "deadline")
    assert store.count_step_answers(record.id) == {"mtf-alpha": 1}


def test_a_coordinator_without_a_hub_refuses_streams_and_answers(setup, pki) -> None:
    handlers, store, _clock, record, _hub, _audit = setup
    bare = Handlers(store, handlers.config, clock=handlers.clock)
    with pytest.raises(Rejected) as info:
        bare.open_steps("mtf-alpha", protocol_version="fedsynth.v1")
    assert info.value.kind == "precondition"
    _refused(bare, pki, *_answer(pki, _order(record)), "invalid", "fits no models")
    with pytest.raises(Rejected) as info:
        handlers.open_steps("mtf-alpha", protocol_version="fedsynth.v0")
    assert info.value.kind == "version"
