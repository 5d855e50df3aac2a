"""Human durations: what ``parse_duration`` accepts and refuses; what ``format_duration`` writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrt.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250us", timedelta(microseconds=250)),
        ("250µs", timedelta(microseconds=250)),
        ("100ms", timedelta(milliseconds=100)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("5min", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("1w", timedelta(weeks=1)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("0.5h", timedelta(minutes=30)),
        ("0s", timedelta(0)),
        (" 30s ", timedelta(seconds=30)),
        ("5 m", timedelta(minutes=5)),
    ],
)
def test_parses_a_number_with_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", timedelta(seconds=30)),
        ("2.5", timedelta(milliseconds=2500)),
        (30, timedelta(seconds=30)),
        (0.1, timedelta(milliseconds=100)),
        (0, timedelta(0)),
    ],
)
def test_a_plain_number_means_seconds(value: str | float, expected: timedelta) -> None:
    assert parse_duration(value) == expected


def test_a_timedelta_passes_through() -> None:
    assert parse_duration(timedelta(minutes=3)) == timedelta(minutes=3)


@pytest.mark.parametrize(
    "value",
    [
        "30x",
        "",
        "s",
        "ms",
        "thirty seconds",
        "30S",
        "1e3",
        "5m30s",
        "-5s",
        -1,
        -0.5,
        timedelta(seconds=-1),
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [30],
        {"seconds": 30},
    ],
)
def test_refuses_what_is_not_a_non_negative_duration(value: object) -> None:
    with pytest.raises(ValueError, match=r"must be a duration such as 100ms, 30s, 5m, 2h or 30d"):
        parse_duration(value)


def test_a_negative_number_is_refused_as_negative() -> None:
    with pytest.raises(ValueError, match="not negative"):
        parse_duration(-30)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(microseconds=250), "250us"),
        (timedelta(microseconds=1500), "1500us"),
        (timedelta(milliseconds=100), "100ms"),
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=2), "2h"),
        (timedelta(hours=36), "36h"),
        (timedelta(days=30), "30d"),
        (timedelta(weeks=1), "1w"),
        (timedelta(days=14), "2w"),
    ],
)
def test_formats_in_the_largest_exact_unit(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


# Whole microseconds up to about 70 years: far beyond any interval a configuration sets.
@given(st.integers(min_value=0, max_value=2**51))
def test_format_then_parse_round_trips(micros: int) -> None:
    value = timedelta(microseconds=micros)
    assert parse_duration(format_duration(value)) == value


@given(st.integers(min_value=0, max_value=10**5), st.sampled_from(["us", "ms", "s", "m", "h", "d"]))
def test_parse_then_format_then_parse_is_stable(amount: int, unit: str) -> None:
    value = parse_duration(f"{amount}{unit}")
    assert parse_duration(format_duration(value)) == value


def test_a_duration_too_large_for_timedelta_is_refused_with_value_error() -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration("99999999999w")


def test_formats_very_long_durations_exactly() -> None:
    assert format_duration(timedelta(microseconds=10**16 + 1)) == "10000000000000001us"
