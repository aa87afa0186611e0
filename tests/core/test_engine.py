"""The burn-down engine (spec §8, §12): phases, overage, resets, rollover, LATEST, UNIQUE_COUNT."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from allotment.ledger.core.engine import burn, run
from allotment.ledger.core.grants import with_default_grants
from allotment.ledger.core.model import (
    Aggregation,
    Entitlement,
    ExpirationUnit,
    Grant,
    UsageBucket,
)
from allotment.ledger.core.usage import MinuteSeries
from tests.core.factory import D, T, grant, metered, series, value

DAY = ExpirationUnit.DAY


@dataclass(frozen=True)
class Case:
    ent: Entitlement
    grants: tuple[Grant, ...]
    usage: dict[str, int]
    at: str
    balance: int | str
    usage_total: int | str
    overage: int | str
    available: int | str | None = None  # totalAvailableGrantAmount
    grant_balances: dict[str, int] = field(default_factory=dict)


JAN = metered("2024-01-01T00:00")

CASES = [
    pytest.param(
        Case(
            JAN,
            (grant("g", 100, "2024-01-01T00:00"),),
            {"2024-01-02T00:00": 30},
            "2024-01-10T00:00",
            70,
            30,
            0,
            100,
            {"g": 70},
        ),
        id="one-grant-burns-down",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("g", 100, "2024-01-10T00:00"),),
            {"2024-01-05T00:00": 30},
            "2024-01-06T00:00",
            0,
            30,
            30,
            0,
        ),
        id="usage-before-any-grant-is-overage",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("g", 100, "2024-01-10T00:00"),),
            {"2024-01-05T00:00": 30},
            "2024-01-11T00:00",
            70,
            30,
            0,
            100,
            {"g": 70},
        ),
        id="grant-activated-after-overage-absorbs-it",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("g", 20, "2024-01-10T00:00"),),
            {"2024-01-05T00:00": 30},
            "2024-01-11T00:00",
            0,
            30,
            10,
            20,
            {"g": 0},
        ),
        id="late-grant-absorbs-part-of-overage",
    ),
    pytest.param(
        Case(
            JAN,
            (
                grant("late", 50, "2024-01-01T00:00", priority=2),
                grant("first", 50, "2024-01-01T00:00", priority=1),
            ),
            {"2024-01-02T00:00": 60},
            "2024-01-03T00:00",
            40,
            60,
            0,
            100,
            {"first": 0, "late": 40},
        ),
        id="lower-priority-number-burns-first",
    ),
    pytest.param(
        Case(
            JAN,
            (
                grant("short", 50, "2024-01-01T00:00", expires=(DAY, 5)),
                grant("long", 100, "2024-01-01T00:00"),
            ),
            {"2024-01-02T00:00": 20, "2024-01-08T00:00": 10},
            "2024-01-09T00:00",
            90,
            30,
            0,
            120,
            {"long": 90},
        ),
        id="expired-grant-burn-still-counts-in-available",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("v", 50, "2024-01-01T00:00", void="2024-01-05T00:00"),),
            {"2024-01-02T00:00": 10, "2024-01-06T00:00": 5},
            "2024-01-07T00:00",
            0,
            15,
            5,
            10,
        ),
        id="voided-grant-stops-and-usage-after-is-overage",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("r", 100, "2024-01-01T00:00", recurrence=("DAY", "2024-01-01T00:00")),),
            {"2024-01-01T10:00": 80, "2024-01-01T20:00": 50},
            "2024-01-01T21:00",
            0,
            130,
            30,
            100,
        ),
        id="recurring-grant-before-refill",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("r", 100, "2024-01-01T00:00", recurrence=("DAY", "2024-01-01T00:00")),),
            {"2024-01-01T10:00": 80, "2024-01-01T20:00": 50},
            "2024-01-02T00:00",
            70,
            130,
            0,
            200,
            {"r": 70},
        ),
        id="recurrence-refill-absorbs-overage-at-its-instant",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("v1", 100, "2024-01-01T00:00", max_rollover=0),),
            {"2024-01-02T00:00": 30},
            "2024-02-02T00:00",
            0,
            0,
            0,
            0,
            {"v1": 0},
        ),
        id="v1-rollover-defaults-lose-balance-at-boundary",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("v2", 100, "2024-01-01T00:00"),),
            {"2024-01-02T00:00": 30, "2024-02-02T00:00": 10},
            "2024-02-03T00:00",
            60,
            10,
            0,
            70,
            {"v2": 60},
        ),
        id="v2-default-rolls-over-in-full",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("mm", 100, "2024-01-01T00:00", min_rollover=100, max_rollover=100),),
            {"2024-01-02T00:00": 30},
            "2024-02-01T00:00",
            100,
            0,
            0,
            100,
            {"mm": 100},
        ),
        id="rollover-min-equals-max-refills",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("cap", 100, "2024-01-01T00:00", max_rollover=50),),
            {"2024-01-02T00:00": 30},
            "2024-02-01T00:00",
            50,
            0,
            0,
            50,
        ),
        id="rollover-capped-by-max",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("floor", 100, "2024-01-01T00:00", min_rollover=80),),
            {"2024-01-02T00:00": 30},
            "2024-02-01T00:00",
            80,
            0,
            0,
            80,
        ),
        id="rollover-raised-to-min",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", issue=50),
            (),
            {"2024-01-02T00:00": 80},
            "2024-02-02T00:00",
            50,
            0,
            0,
            50,
        ),
        id="overage-forgiven-at-reset",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", issue=50, preserve=True),
            (),
            {"2024-01-02T00:00": 80},
            "2024-02-01T00:00",
            20,
            0,
            0,
            50,
        ),
        id="preserved-overage-eats-rolled-balance",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", issue=50, preserve=True),
            (),
            {"2024-01-02T00:00": 120},
            "2024-02-01T00:00",
            0,
            0,
            20,
            50,
        ),
        id="preserved-overage-remainder-stays",
    ),
    pytest.param(
        Case(
            JAN,
            (
                grant(
                    "rec",
                    100,
                    "2024-01-01T00:00",
                    max_rollover=0,
                    recurrence=("MONTH", "2024-01-01T00:00"),
                ),
            ),
            {"2024-01-02T00:00": 30},
            "2024-02-01T00:00",
            100,
            0,
            0,
            100,
            {"rec": 100},
        ),
        id="recurrence-after-rollover-starts-full",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", preserve=True),
            (
                grant(
                    "rec",
                    100,
                    "2024-01-01T00:00",
                    max_rollover=0,
                    recurrence=("MONTH", "2024-01-01T00:00"),
                ),
            ),
            {"2024-01-02T00:00": 130},
            "2024-02-01T00:00",
            70,
            0,
            0,
            100,
            {"rec": 70},
        ),
        id="recurrence-after-rollover-pays-preserved-overage",
    ),
    pytest.param(
        Case(
            JAN,
            (grant("g", 100, "2024-01-01T00:00"),),
            {"2024-01-31T23:59": 5, "2024-02-01T00:00": 10},
            "2024-02-01T00:01",
            85,
            10,
            0,
            95,
        ),
        id="event-at-reset-instant-belongs-to-new-period",
    ),
    pytest.param(
        Case(
            metered("2024-01-10T00:00"),
            (grant("g", 100, "2024-01-10T00:00"),),
            {"2024-01-05T00:00": 40, "2024-01-11T00:00": 10},
            "2024-01-12T00:00",
            90,
            10,
            0,
            100,
        ),
        id="usage-before-measure-usage-from-ignored",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", issue=100),
            (grant("topup", 50, "2024-01-01T00:00", priority=5),),
            {"2024-01-02T00:00": 120},
            "2024-01-03T00:00",
            30,
            120,
            0,
            150,
        ),
        id="default-grant-priority-one-burns-before-priority-five",
    ),
    pytest.param(
        Case(
            metered("2024-01-01T00:00", issue=100),
            (grant("topup", 50, "2024-01-01T00:00", expires=(DAY, 10)),),
            {"2024-01-02T00:00": 120, "2024-02-02T00:00": 30},
            "2024-02-03T00:00",
            70,
            30,
            0,
            100,
        ),
        id="default-grant-refills-each-period",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_engine_cases(case: Case) -> None:
    result = value(case.ent, case.at, case.grants, case.usage)
    assert result.balance == D(case.balance)
    assert result.usage == D(case.usage_total)
    assert result.overage == D(case.overage)
    if case.available is not None:
        assert result.total_available_grant_amount == D(case.available)
    for gid, expected in case.grant_balances.items():
        assert result.grant_balances is not None
        assert result.grant_balances[gid] == D(expected)


def test_latest_usage_is_sum_of_phase_latest_values() -> None:
    ent = metered("2024-01-01T00:00")
    grants = [grant("a", 20, "2024-01-01T00:00"), grant("b", 5, "2024-01-10T00:00")]
    usage = series(
        [("2024-01-02T00:00", 9), ("2024-01-05T00:00", 15), ("2024-01-12T00:00", 10)],
        Aggregation.LATEST,
    )
    result = value(ent, "2024-01-15T00:00", grants, usage, Aggregation.LATEST)
    assert result.usage == D(25)  # 15 + 10
    assert result.balance == D(15)  # amounts restored at the phase start, then 10 burnt
    assert result.overage == D(0)


def test_latest_overage_is_carried_into_the_next_phase() -> None:
    ent = metered("2024-01-01T00:00")
    grants = [grant("a", 10, "2024-01-01T00:00"), grant("b", 1, "2024-01-10T00:00")]
    usage = series([("2024-01-05T00:00", 15), ("2024-01-12T00:00", 4)], Aggregation.LATEST)
    result = value(ent, "2024-01-15T00:00", grants, usage, Aggregation.LATEST)
    # phase 2: a=10, b=1 restored; burns 4 + carried 5 = 9
    assert (result.usage, result.balance, result.overage) == (D(19), D(2), D(0))


def test_unique_count_subtracts_distinct_counts_from_period_start() -> None:
    ent = metered("2024-01-01T00:00")
    grants = [grant("a", 10, "2024-01-01T00:00"), grant("b", 10, "2024-01-04T00:00")]
    usage = MinuteSeries(
        Aggregation.UNIQUE_COUNT,
        [
            UsageBucket(T("2024-01-02T00:00"), distinct=frozenset({"x", "y"})),
            UsageBucket(T("2024-01-05T00:00"), distinct=frozenset({"y", "z"})),
        ],
    )
    result = value(ent, "2024-01-06T00:00", grants, usage, Aggregation.UNIQUE_COUNT)
    assert result.usage == D(3)  # x, y, z: y is not counted twice across phases
    assert result.balance == D(17)


@pytest.mark.parametrize(
    ("at", "usage"),
    [
        pytest.param("2024-01-01T12:00:00Z", 0, id="aligned-read-excludes-that-minute"),
        pytest.param("2024-01-01T12:00:30Z", 7, id="read-rounds-up-to-include-minute"),
        pytest.param("2024-01-01T12:01:00Z", 7, id="next-minute"),
    ],
)
def test_reads_round_up_to_the_next_minute(at: str, usage: int) -> None:
    result = value(JAN, at, [grant("g", 10, "2024-01-01T00:00")], {"2024-01-01T12:00": 7})
    assert result.usage == D(usage)


def test_resuming_from_a_snapshot_matches_a_full_replay() -> None:
    ent = metered("2024-01-01T00:00", issue=40, preserve=True)
    grants = with_default_grants(
        ent,
        [
            grant("a", 100, "2024-01-03T00:00", expires=(DAY, 40)),
            grant("r", 30, "2024-01-05T00:00", recurrence=("WEEK", "2024-01-05T00:00")),
        ],
    )
    usage = series({f"2024-0{m}-{d:02d}T10:00": 17 for m in (1, 2, 3) for d in range(1, 28, 3)})
    full = run(ent, grants, Aggregation.SUM, usage, T("2024-03-20T00:00")).snapshot
    for cut in ("2024-01-05T00:00", "2024-02-01T00:00", "2024-02-17T13:00"):
        snap = run(ent, grants, Aggregation.SUM, usage, T(cut)).snapshot
        resumed = run(ent, grants, Aggregation.SUM, usage, T("2024-03-20T00:00"), start=snap)
        assert resumed.snapshot == full, cut


def test_latest_meters_refuse_snapshots() -> None:
    start = run(JAN, (), Aggregation.LATEST, series({}), T("2024-01-02T00:00")).snapshot
    with pytest.raises(ValueError, match="LATEST"):
        run(JAN, (), Aggregation.LATEST, series({}), T("2024-01-03T00:00"), start=start)


def test_burn_exhausts_in_order_and_returns_uncovered() -> None:
    grants = [grant("a", 10, "2024-01-01T00:00"), grant("b", 10, "2024-01-01T00:00")]
    balances = {"a": D(10), "b": D(10)}
    uncovered, used = burn(balances, grants, D(25))
    assert (uncovered, balances, used) == (D(5), {"a": D(0), "b": D(0)}, {"a": D(10), "b": D(10)})


def test_negative_usage_adds_to_the_first_non_empty_grant() -> None:
    grants = [grant("a", 10, "2024-01-01T00:00"), grant("b", 10, "2024-01-01T00:00")]
    balances = {"a": D(0), "b": D(4)}
    uncovered, _ = burn(balances, grants, D(-3))
    assert (uncovered, balances["b"]) == (D(0), D(7))


def test_decimal_amounts_stay_exact() -> None:
    result = value(
        JAN,
        "2024-01-02T00:00",
        [grant("g", "0.3", "2024-01-01T00:00")],
        {"2024-01-01T01:00": "0.1", "2024-01-01T02:00": "0.1"},
    )
    assert result.balance == Decimal("0.1")
