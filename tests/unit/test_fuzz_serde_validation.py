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
from fedsynth.serde import (NONCE_BYTES, SubmissionContent, WireEstimate, WireRefusal,
                            decode_submission, encode_submission, pb)

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
        timestamp=dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.timezone.utc),
        results={"a": WireEstimate("a", -0.381538103131376, 0.0167655218814837,
                                   0.129481743429271, 1800),
                 "b": WireRefusal("b", "disclosure_min_cell", "suppressed")})
    back = decode_submission(encode_submission(content))
    assert back.results == content.results and back.timestamp == content.timestamp
