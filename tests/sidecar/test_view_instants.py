"""The access check's instants: whole microseconds (``micros``), staleness and the age header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from allotment.sidecar.fastlane import micros_clock
from allotment.sidecar.keys import wall_clock
from allotment.sidecar.view import MICROSECOND, instant, micros

from .test_view_changes import NOW, loaded_view

AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2999, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)


@given(AWARE)
def test_micros_is_exact_and_instant_inverts_it(at: datetime) -> None:
    assert instant(micros(at)) == at
    assert micros(at + MICROSECOND) == micros(at) + 1


@given(AWARE, AWARE)
def test_micros_orders_as_the_instants_do(a: datetime, b: datetime) -> None:
    assert (micros(a) < micros(b)) == (a < b)
    assert (micros(a) == micros(b)) == (a == b)


def test_the_wall_clock_in_micros_agrees_with_the_wall_clock() -> None:
    before = micros(wall_clock())
    read = micros_clock(wall_clock)()
    assert before <= read <= micros(wall_clock())


def test_an_injected_clock_is_read_as_it_says() -> None:
    assert micros_clock(lambda: NOW)() == micros(NOW)


def test_stale_past_the_budget_only() -> None:
    view = loaded_view()  # synced at NOW
    budget = 30_000_000
    assert not view.stale(micros(NOW + timedelta(seconds=30)), budget)
    assert view.stale(micros(NOW + timedelta(seconds=30, microseconds=1)), budget)


def test_age_header_in_seconds_rounded_to_the_millisecond() -> None:
    view = loaded_view()  # synced at NOW, ledger position 1
    ages = {
        timedelta(0): "0.000",
        -timedelta(seconds=2): "0.000",  # a clock behind the last sync: no negative age
        timedelta(microseconds=499): "0.000",
        timedelta(microseconds=500): "0.001",
        timedelta(seconds=1, milliseconds=234, microseconds=567): "1.235",
        timedelta(minutes=2, milliseconds=5): "120.005",
    }
    for age, text in ages.items():
        headers = view.freshness_headers(micros(NOW + age))
        assert headers == {"Allotment-Ledger-Version": "1", "Allotment-Ledger-Age": text}
