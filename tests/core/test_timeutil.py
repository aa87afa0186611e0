"""Minute resolution and RFC 3339 parsing (spec §1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from allotment.ledger.core.timeutil import (
    add_months_clamped,
    add_months_overflow,
    ceil_to_minute,
    format_rfc3339,
    parse_rfc3339,
    require_utc,
    truncate_to_minute,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2024-01-01T12:00:30Z", utc(2024, 1, 1, 12, 0, 30), id="zulu"),
        pytest.param("2024-01-01T14:00:00+02:00", utc(2024, 1, 1, 12), id="offset-to-utc"),
        pytest.param("2024-01-01t12:00:00z", utc(2024, 1, 1, 12), id="lowercase"),
        pytest.param(
            "2024-01-01T12:00:00.123456789Z", utc(2024, 1, 1, 12, 0, 0, 123456), id="nanoseconds"
        ),
    ],
)
def test_parse_rfc3339_gives_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2024-01-01T12:00:00", id="naive"),
        pytest.param("2024-01-01", id="date-only"),
        pytest.param("yesterday", id="garbage"),
    ],
)
def test_parse_rfc3339_rejects_text_without_zone(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        require_utc(datetime(2024, 1, 1))


def test_other_zones_convert_to_utc() -> None:
    tokyo = datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    assert require_utc(tokyo) == utc(2024, 1, 1)
    assert format_rfc3339(tokyo) == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("instant", "floor", "ceil"),
    [
        pytest.param(
            utc(2024, 1, 1, 12, 0, 30), utc(2024, 1, 1, 12), utc(2024, 1, 1, 12, 1), id="30s"
        ),
        pytest.param(utc(2024, 1, 1, 12), utc(2024, 1, 1, 12), utc(2024, 1, 1, 12), id="aligned"),
        pytest.param(
            utc(2024, 1, 1, 12, 0, 0, 1), utc(2024, 1, 1, 12), utc(2024, 1, 1, 12, 1), id="1us"
        ),
    ],
)
def test_stored_instants_floor_and_queries_round_up(
    instant: datetime, floor: datetime, ceil: datetime
) -> None:
    assert truncate_to_minute(instant) == floor
    assert ceil_to_minute(instant) == ceil


@pytest.mark.parametrize(
    ("start", "months", "clamped", "overflow"),
    [
        pytest.param(utc(2025, 1, 31), 1, utc(2025, 2, 28), utc(2025, 3, 3), id="jan31-plus-1"),
        pytest.param(utc(2024, 1, 31), 1, utc(2024, 2, 29), utc(2024, 3, 2), id="leap-jan31"),
        pytest.param(utc(2024, 2, 29), 12, utc(2025, 2, 28), utc(2025, 3, 1), id="feb29-year"),
        pytest.param(utc(2025, 3, 31), -1, utc(2025, 2, 28), utc(2025, 3, 3), id="backwards"),
    ],
)
def test_clamped_and_overflowing_month_arithmetic(
    start: datetime, months: int, clamped: datetime, overflow: datetime
) -> None:
    assert add_months_clamped(start, months) == clamped
    assert add_months_overflow(start, months) == overflow
