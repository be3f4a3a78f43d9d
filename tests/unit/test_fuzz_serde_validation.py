"""Fuzzing of the wire boundary: serde decoding and the coordinator's value validation.

Hostile bytes and hostile values must end in :class:`fedsynth.errors.InputError` (which the
servicer maps to INVALID_ARGUMENT) or be accepted as well-formed: never another exception,
never a crash, never a change of state. Bounded (max_examples, no deadline) for CI.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.serde import (
    NONCE_BYTES,
    SubmissionContent,
    WireEstimate,
    WireRefusal,
    decode_submission,
    encode_submission,
    pb,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-320, -1.0, math.nan, math.inf, -math.inf, 1e308])
names = st.text(max_size=40) | st.sampled_from(["", "crude_OR", "a" * 10_000, "\x00", "é/../"])


@st.composite
def analysis_results(draw):
    out = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(names)
        kind = draw(st.sampled_from(["estimate", "refusal", "empty"]))
        if kind == "estimate":
            out.append(pb.AnalysisResult(analysis=name, estimate=pb.Estimate(
                yi=draw(floats), vi=draw(floats), se=draw(floats),
                n=draw(st.integers(-2**63, 2**63 - 1)))))
        elif kind == "refusal":
            out.append(pb.AnalysisResult(analysis=name, refusal=pb.Refusal(
                code=draw(st.text(max_size=20)), reason=draw(st.text(max_size=200)))))
        else:
            out.append(pb.AnalysisResult(analysis=name))
    return out


@st.composite
def submissions(draw):
    return pb.Submission(
        protocol_version=draw(st.sampled_from(["fedsynth.v1", "fedsynth.v2", "", "x" * 300])),
        round_id=draw(names), site=draw(names),
        nonce=draw(st.binary(max_size=40) | st.binary(min_size=NONCE_BYTES,
                                                      max_size=NONCE_BYTES)),
        timestamp_unix_ms=draw(st.integers(-2**63, 2**63 - 1)),
        agent_version=draw(st.text(max_size=30)),
        results=draw(analysis_results())).SerializeToString()


def _decode_or_input_error(data: bytes):
    try:
        return decode_submission(data)
    except InputError as error:
        assert str(error)          # a message that names something
        return None


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data):
    _decode_or_input_error(data)


@SETTINGS
@given(data=submissions())
def test_structured_submissions_decode_or_fail_cleanly(data):
    content = _decode_or_input_error(data)
    if content is None:
        return
    assert isinstance(content, SubmissionContent)
    assert len(content.nonce) == NONCE_BYTES and content.round_id and content.site
    for name, result in content.results.items():
        assert name and isinstance(result, (WireEstimate, WireRefusal))


@SETTINGS
@given(data=submissions(), flips=st.lists(st.tuples(st.integers(0, 10_000),
                                                    st.integers(1, 255)), max_size=8))
def test_bit_flipped_submissions(data, flips):
    buf = bytearray(data)
    for position, mask in flips:
        if buf:
            buf[position % len(buf)] ^= mask
    _decode_or_input_error(bytes(buf))


def test_encode_decode_round_trip_keeps_exact_values():
    import datetime as dt

    content = SubmissionContent(
        round_id="r-1", site="mtf-alpha", nonce=b"\x01" * NONCE_BYTES,
        timestamp=dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC),
        results={"a": WireEstimate("a", -0.381538103131376, 0.0167655218814837,
                                   0.129481743429271, 1800),
                 "b": WireRefusal("b", "disclosure_min_cell", "suppressed")})
    back = decode_submission(encode_submission(content))
    assert back.results == content.results and back.timestamp == content.timestamp


# --- validation and the whole submit path against a real store: no crash, no state change --
import datetime as _dt  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402

from coordinator.validation import check_submission  # noqa: E402

ANALYSES = ("crude_OR", "adjusted_logOR")
VALID_RESULTS = {"crude_OR": WireEstimate("crude_OR", -0.38, 0.0169, 0.13, 1800),
                 "adjusted_logOR": WireRefusal("adjusted_logOR", "disclosure_min_cell",
                                               "suppressed by disclosure control")}


@st.composite
def wire_results(draw):
    out = {}
    pool = list(ANALYSES) + ["other", "", "x" * 300]
    for name in draw(st.lists(st.sampled_from(pool), max_size=4, unique=True)):
        if draw(st.booleans()):
            out[name] = WireEstimate(name, draw(floats), draw(floats), draw(floats),
                                     draw(st.integers(-2**63, 2**63 - 1)))
        else:
            out[name] = WireRefusal(name, draw(st.text(max_size=70)),
                                    draw(st.text(max_size=50)))
    return out


@SETTINGS
@given(results=wire_results())
def test_check_submission_accepts_only_valid_values(results):
    content = SubmissionContent(round_id="r", site="s", nonce=b"\0" * NONCE_BYTES,
                                timestamp=_dt.datetime.now(_dt.UTC), results=results)
    try:
        check_submission(content, ANALYSES)
    except InputError as error:
        assert str(error)
        return
    assert set(results) == set(ANALYSES)
    for r in results.values():
        if isinstance(r, WireEstimate):
            assert math.isfinite(r.yi) and r.vi > 0 and math.isfinite(r.vi) and r.n >= 1
            assert abs(r.se * r.se - r.vi) <= 1e-6 * r.vi
        else:
            assert r.reason.strip()


@pytest.fixture(scope="module")
def coordinator_under_fuzz(tmp_path_factory):
    from coordinator.handlers import Handlers
    from coordinator.rounds import open_round
    from coordinator.store import Store
    from fedsynth.audit import AuditLog
    from fedsynth.config import load_coordinator_config
    from fedsynth.pki import init_ca, issue_site

    root = tmp_path_factory.mktemp("fuzz-coordinator")
    pki = root / "pki"
    init_ca(pki)
    issue_site(pki, "mtf-alpha")
    issue_site(pki, "mtf-bravo")
    (root / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nsubmission_window = "60s"\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/ca.crt"\nkey = "pki/ca.key"\n'
        '[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n', encoding="utf-8")
    config = load_coordinator_config(root / "coordinator.toml")
    store = Store(config.state)
    spec = ('[[analysis]]\nname = "crude_OR"\nestimator = "two_by_two"\noutcome = "outcome"\n'
            'exposure = "treated"\nmeasure = "OR"\n\n[[analysis]]\nname = "adjusted_logOR"\n'
            'estimator = "logistic"\noutcome = "outcome"\nexposure = "treated"\n')
    now = _dt.datetime.now(_dt.UTC)
    record = open_round(store, spec_source=spec, deadline=_dt.timedelta(hours=2), quorum=1,
                        allowed=("mtf-alpha", "mtf-bravo"), pooling={}, now=now)
    handlers = Handlers(store, config, audit=AuditLog(root / "audit.jsonl"))
    yield handlers, store, record.id, pki
    store.close()


def _snapshot(store, round_id):
    return ([(s.site, s.digest) for s in store.submissions(round_id)],
            [(r.id, r.status) for r in store.list_rounds()])


@settings(max_examples=120, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_submit_path_rejects_cleanly_without_state_change(coordinator_under_fuzz, data):
    from coordinator.handlers import Rejected
    from fedsynth.signing import load_private_key, sign

    handlers, store, round_id, pki = coordinator_under_fuzz
    site = data.draw(st.sampled_from(["mtf-alpha", "mtf-bravo"]))
    now = _dt.datetime.now(_dt.UTC)
    claimed = data.draw(st.sampled_from([site, site, "mtf-alpha", "mtf-zulu"]))
    skew = data.draw(st.sampled_from([0.0, 5.0, -5.0, 3600.0, -1e7]))
    content = SubmissionContent(
        round_id=data.draw(st.sampled_from([round_id, round_id, "r-nope", "x" * 200])),
        site=claimed, nonce=os.urandom(NONCE_BYTES),
        timestamp=now + _dt.timedelta(seconds=skew), results=data.draw(st.one_of(
            wire_results(), st.just(VALID_RESULTS))))
    try:
        payload = encode_submission(content)
    except InputError:
        return
    if data.draw(st.booleans()):
        payload = data.draw(st.sampled_from([payload, payload[:-1], payload + b"\x08\x01"]))
    key = load_private_key(pki / f"{site}.key")
    signature = data.draw(st.sampled_from([sign(key, payload), b"", os.urandom(70)]))
    pem = (pki / f"{site}.crt").read_bytes()
    before = _snapshot(store, round_id)
    try:
        result = handlers.submit(site, pem, protocol_version="fedsynth.v1", payload=payload,
                                 signature=signature)
    except Rejected as rejected:
        assert rejected.kind in {"version", "unauthenticated", "permission", "invalid",
                                 "not_found", "precondition", "conflict"}
        assert rejected.message
        assert _snapshot(store, round_id) == before
        return
    after = _snapshot(store, round_id)
    if result.status == "duplicate":
        assert after == before
    else:
        assert result.status == "accepted"
        assert len(after[0]) == len(before[0]) + 1
        stored = {s.site: s for s in store.submissions(round_id)}[site]
        assert stored.digest == hashlib.sha256(payload).hexdigest()


def test_valid_submission_still_accepted_after_the_fuzz(coordinator_under_fuzz):
    # Runs after the fuzzer (file order): whatever it sent, the coordinator still accepts a
    # valid submission to a new round, and the audit chain it wrote throughout verifies.
    from coordinator.rounds import open_round
    from fedsynth.audit import verify_log
    from fedsynth.signing import load_private_key, sign

    handlers, store, round_id, pki = coordinator_under_fuzz
    now = _dt.datetime.now(_dt.UTC)
    record = open_round(store, spec_source=store.get_round(round_id).spec_toml,
                        deadline=_dt.timedelta(hours=1), quorum=1,
                        allowed=("mtf-alpha", "mtf-bravo"), pooling={}, now=now)
    payload = encode_submission(SubmissionContent(
        round_id=record.id, site="mtf-bravo", nonce=os.urandom(NONCE_BYTES), timestamp=now,
        results=VALID_RESULTS))
    result = handlers.submit("mtf-bravo", (pki / "mtf-bravo.crt").read_bytes(),
                             protocol_version="fedsynth.v1", payload=payload,
                             signature=sign(load_private_key(pki / "mtf-bravo.key"), payload))
    assert result.status == "accepted"
    assert [s.site for s in store.submissions(record.id)] == ["mtf-bravo"]
    assert verify_log(handlers.audit.path).ok
