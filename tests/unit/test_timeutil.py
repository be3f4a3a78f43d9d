"""fedsynth.timeutil: the clock, the one timestamp form, the one duration grammar."""

from __future__ import annotations

import datetime as dt
import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fedsynth.timeutil as timeutil
from fedsynth.errors import ConfigError, InputError
from fedsynth.timeutil import iso, parse_duration, parse_iso, utcnow

UTC = dt.UTC


def test_doctests() -> None:
    assert doctest.testmod(timeutil).failed == 0


# Every form accepted before the two grammars were merged: fedsynth.config's (one number with
# an optional unit, ms..d) and coordinator.scheduler's (compound terms, d/h/m/s, spaces, any
# case), plus numbers of seconds.
@pytest.mark.parametrize("value, seconds", [
    ("10m", 600), ("2h", 7200), ("30s", 30), ("1d", 86400), ("500ms", 0.5), (45, 45),
    (2.5, 2.5), ("1.5h", 5400), ("45", 45), (" 30 ", 30), ("0.5s", 0.5), ("2 h", 7200),
    ("1h30m", 5400), ("1h 30m", 5400), ("1d12h", 129600), ("1H30M", 5400),
    ("90s", 90), ("1m30s", 90), ("1s500ms", 1.5),
])
def test_every_accepted_duration(value, seconds) -> None:
    assert parse_duration(value).total_seconds() == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("value", ["", "m", "h", "10x", "10 minutes", "5m garbage", "-5m",
                                   "0s", "0", 0, -3, True, False, None, [], "1h-30m",
                                   "nan", "inf", float("nan"), float("inf"), "1e3s"])
def test_bad_durations_name_the_key_and_the_value(value) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "deadline")
    assert str(info.value).startswith(f"deadline = {value!r}")


@given(st.lists(st.tuples(st.integers(1, 10_000), st.sampled_from(["d", "h", "m", "s", "ms"])),
                min_size=1, max_size=4))
def test_compound_duration_is_the_sum_of_its_terms(terms) -> None:
    text = "".join(f"{n}{unit}" for n, unit in terms)
    expected = sum(n * timeutil.DURATION_UNITS[unit] for n, unit in terms)
    assert parse_duration(text).total_seconds() == pytest.approx(expected, rel=1e-9)


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)


def test_iso_is_the_one_form() -> None:
    when = dt.datetime(2026, 11, 25, 14, 0, 5, 123999, tzinfo=UTC)
    assert iso(when) == "2026-11-25T14:00:05.123Z"
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert iso(dt.datetime(2026, 11, 25, 16, 0, tzinfo=plus_two)) == "2026-11-25T14:00:00.000Z"
    assert iso(None) is None
    with pytest.raises(InputError, match="timezone-aware"):
        iso(dt.datetime(2026, 11, 25, 14, 0))


@pytest.mark.parametrize("text, expected", [
    ("2026-11-25T14:00:05.123Z", dt.datetime(2026, 11, 25, 14, 0, 5, 123000, tzinfo=UTC)),
    # forms written by earlier releases: microseconds, +00:00, whole seconds
    ("2026-11-25T14:00:05.123456Z", dt.datetime(2026, 11, 25, 14, 0, 5, 123456, tzinfo=UTC)),
    ("2026-11-25T14:00:05+00:00", dt.datetime(2026, 11, 25, 14, 0, 5, tzinfo=UTC)),
    ("2026-11-25T16:00:05+02:00", dt.datetime(2026, 11, 25, 14, 0, 5, tzinfo=UTC)),
])
def test_parse_iso_reads_every_written_form(text, expected) -> None:
    parsed = parse_iso(text)
    assert parsed == expected and parsed.tzinfo == UTC
    assert parse_iso(None) is None


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00:00Z", "2026-11-25T14:00:00",
                                  "", 1700000000])
def test_parse_iso_refuses_non_timestamps(text) -> None:
    with pytest.raises(InputError, match="opened_at"):
        parse_iso(text, "opened_at")


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 1, 1),
                    timezones=st.just(UTC)))
def test_iso_round_trips_to_the_millisecond(when) -> None:
    text = iso(when)
    assert len(text) == 24 and text.endswith("Z")
    assert parse_iso(text) == when.replace(microsecond=when.microsecond // 1000 * 1000)


@given(st.lists(st.datetimes(min_value=dt.datetime(1970, 1, 1),
                             max_value=dt.datetime(9999, 1, 1), timezones=st.just(UTC)),
                min_size=2, max_size=5))
def test_iso_text_sorts_in_time_order(times) -> None:
    # the store compares deadlines as text; that is only right with one fixed-width form
    texts = [iso(t) for t in times]
    assert sorted(texts) == [iso(t) for t in sorted(times)]
