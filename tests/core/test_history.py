"""Balance history: windowed and burn-down (spec §9)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from allotment.ledger.core.grants import default_grants
from allotment.ledger.core.history import HistoryError, WindowSize, balance_history
from allotment.ledger.core.model import Aggregation
from tests.core.factory import D, T, grant, metered, series

JAN = metered("2024-01-01T00:00")


def test_windows_cover_every_hour_with_usage_and_approximate_balance() -> None:
    grants = [grant("a", 100, "2024-01-01T00:00"), grant("b", 50, "2024-01-01T02:30")]
    usage = series({"2024-01-01T01:10": 30, "2024-01-01T03:05": 10})
    history = balance_history(
        JAN,
        grants,
        Aggregation.SUM,
        usage,
        start=T("2024-01-01T00:00"),
        end=T("2024-01-01T05:00"),
        window_size=WindowSize.HOUR,
    )
    rows = [(w.start.hour, w.usage, w.balance_at_start) for w in history.windows]
    assert rows == [
        (0, D(0), D(100)),
        (1, D(30), D(100)),
        (2, D(0), D(70)),  # b activates at 02:30: shown only from the next window
        (3, D(10), D(120)),
        (4, D(0), D(110)),
    ]


def test_windows_before_measure_usage_from_are_dropped() -> None:
    ent = metered("2024-01-01T10:30")
    history = balance_history(
        ent,
        [grant("a", 5, "2024-01-01T10:30")],
        Aggregation.SUM,
        series({}),
        start=T("2024-01-01T10:30"),
        end=T("2024-01-01T12:00"),
        window_size=WindowSize.HOUR,
    )
    assert [w.start for w in history.windows] == [T("2024-01-01T11:00")]


def test_from_before_measure_usage_from_is_refused() -> None:
    with pytest.raises(
        HistoryError, match="from 2023-12-31T00:00:00Z cannot be before 2024-01-01T00:00:00Z"
    ):
        balance_history(
            JAN,
            [],
            Aggregation.SUM,
            series({}),
            start=T("2023-12-31T00:00"),
            end=T("2024-01-02T00:00"),
            window_size=WindowSize.DAY,
        )


def test_day_windows_follow_the_time_zone() -> None:
    history = balance_history(
        JAN,
        [grant("a", 5, "2024-01-01T00:00")],
        Aggregation.SUM,
        series({"2024-01-01T23:30": 2}),
        start=T("2024-01-01T23:00"),
        end=T("2024-01-03T00:00"),
        window_size=WindowSize.DAY,
        zone=ZoneInfo("Europe/Berlin"),
    )
    assert [(w.start, w.usage, w.balance_at_start) for w in history.windows] == [
        (T("2024-01-01T23:00"), D(2), D(5)),
        (T("2024-01-02T23:00"), D(0), D(3)),
    ]


def test_first_window_counts_usage_from_the_requested_start_only() -> None:
    history = balance_history(
        JAN,
        [grant("a", 50, "2024-01-01T00:00")],
        Aggregation.SUM,
        series({"2024-01-01T10:10": 4, "2024-01-01T10:40": 6}),
        start=T("2024-01-01T10:30"),
        end=T("2024-01-01T12:00"),
        window_size=WindowSize.HOUR,
    )
    assert [(w.start, w.usage, w.balance_at_start) for w in history.windows] == [
        (T("2024-01-01T10:00"), D(6), D(50)),
        (T("2024-01-01T11:00"), D(0), D(40)),
    ]


def test_burndown_marks_resets_and_the_rollover_segment() -> None:
    ent = metered("2024-01-01T00:00", issue=50, preserve=True)
    (default,) = default_grants(ent)
    history = balance_history(
        ent,
        [],
        Aggregation.SUM,
        series({"2024-01-10T00:00": 80}),
        start=T("2024-01-01T00:00"),
        end=T("2024-02-05T00:00"),
        window_size=WindowSize.DAY,
    )
    first, rollover, second = history.segments
    assert (first.start, first.end, first.terminated_by_reset) == (
        T("2024-01-01T00:00"),
        T("2024-02-01T00:00"),
        True,
    )
    assert (first.usage, first.overage, first.balance_at_end) == (D(80), D(30), D(0))
    assert rollover.rollover and rollover.start == rollover.end == T("2024-02-01T00:00")
    assert [(u.grant_id, u.usage) for u in rollover.grant_usages] == [(default.id, D(30))]
    assert (rollover.balance_at_start, rollover.balance_at_end) == (D(50), D(20))
    assert (second.start, second.balance_at_start, second.overage) == (
        T("2024-02-01T00:00"),
        D(20),
        D(0),
    )
