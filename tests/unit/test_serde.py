"""Round trips between domain dataclasses and fedsynth.v1 messages."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.serde import (
    SubmissionContent,
    WireEstimate,
    WireRefusal,
    WorkItem,
    decode_results,
    decode_submission,
    decode_work,
    encode_results,
    encode_submission,
    encode_work,
    pb,
)

NOW = dt.datetime(2026, 11, 25, 14, 0, 0, 123000, tzinfo=dt.UTC)

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=30)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
estimates = st.builds(lambda yi, vi, n: (yi, vi, math.sqrt(vi), n), finite,
                      st.floats(min_value=1e-300, max_value=1e300), st.integers(1, 10**9))
results = st.dictionaries(names, st.one_of(estimates, st.tuples(st.sampled_from(
    ["policy", "disclosure_min_n", "missing_column"]), st.text(min_size=1, max_size=80))),
    max_size=8)


def _content(raw: dict) -> SubmissionContent:
    out = {}
    for name, value in raw.items():
        if len(value) == 4:
            out[name] = WireEstimate(name, *value)
        else:
            out[name] = WireRefusal(name, *value)
    return SubmissionContent(round_id="r-20261125-0001", site="mtf-alpha", nonce=b"n" * 16,
                             timestamp=NOW, results=out)


@settings(max_examples=60, deadline=None)
@given(results)
def test_submission_round_trip(raw: dict) -> None:
    content = _content(raw)
    assert decode_submission(encode_submission(content)) == content


def test_encoding_is_deterministic() -> None:
    content = _content({"a": (0.1, 0.04, 0.2, 10), "b": ("policy", "no")})
    assert encode_submission(content) == encode_submission(content)


def test_site_estimate_sends_only_four_numbers() -> None:
    from fedsynth.effects import Estimate

    est = Estimate(analysis="crude_OR", estimator="two_by_two", measure="OR", yi=-0.3,
                   vi=0.02, se=math.sqrt(0.02), n=1800, cells={"ai": 3, "bi": 7},
                   details={"outcome": "outcome"})
    (message,) = encode_results({"crude_OR": est})
    assert message.WhichOneof("outcome") == "estimate"
    assert [f.name for f, _ in message.estimate.ListFields()] == ["yi", "vi", "se", "n"]
    wire = message.SerializeToString()
    assert b"outcome" not in wire and b"ai" not in wire
    assert decode_results([message]) == {"crude_OR": WireEstimate("crude_OR", -0.3, 0.02,
                                                                  math.sqrt(0.02), 1800)}


def test_refusal_round_trip() -> None:
    from fedsynth.effects import Refusal

    (message,) = encode_results({"x": Refusal(analysis="x", reason="too few", code="policy")})
    assert decode_results([message]) == {"x": WireRefusal("x", "policy", "too few")}


def test_work_round_trip() -> None:
    item = WorkItem("r-20261125-0002", "name = 'x'\n", NOW, NOW + dt.timedelta(minutes=5))
    assert decode_work(encode_work(item)) == item


@pytest.mark.parametrize("mutate, word", [
    (lambda m: m.ClearField("round_id"), "round_id"),
    (lambda m: m.ClearField("site"), "site"),
    (lambda m: setattr(m, "nonce", b"short"), "nonce"),
    (lambda m: setattr(m, "timestamp_unix_ms", 0), "timestamp"),
    (lambda m: m.results.add(analysis="a"), "neither"),
    (lambda m: m.results.add(analysis="", estimate=pb.Estimate(yi=1)), "empty name"),
])
def test_decode_refuses_malformed(mutate, word) -> None:
    message = pb.Submission()
    message.ParseFromString(encode_submission(_content({"a": (0.1, 0.04, 0.2, 10)})))
    if word == "neither":
        message.ClearField("results")
        message.results.add(analysis="a")
    else:
        mutate(message)
    with pytest.raises(InputError, match=word):
        decode_submission(message.SerializeToString())


def test_duplicate_analysis_refused() -> None:
    message = pb.Submission()
    message.ParseFromString(encode_submission(_content({"a": (0.1, 0.04, 0.2, 10)})))
    message.results.add(analysis="a", estimate=pb.Estimate(yi=1, vi=1, se=1, n=1))
    with pytest.raises(InputError, match="twice"):
        decode_submission(message.SerializeToString())


def test_garbage_bytes_refused() -> None:
    with pytest.raises(InputError, match="Submission"):
        decode_submission(b"\xff\xff\xff\xff")


def test_naive_timestamp_refused() -> None:
    content = SubmissionContent("r-1", "mtf-alpha", b"n" * 16, NOW.replace(tzinfo=None))
    with pytest.raises(InputError, match="time zone"):
        encode_submission(content)
