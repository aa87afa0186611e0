"""Instants and amounts come back exactly as written, on both databases (D2, D8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from allotment.ledger.storage.types import Amount, Instant

METADATA = sa.MetaData()
SCRATCH = sa.Table(
    "scratch",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", Instant()),
    sa.Column("amount", Amount()),
)


@pytest.fixture
def engine(ledger_url: str) -> sa.Engine:
    from allotment.ledger.storage.engine import normalize_url

    created = sa.create_engine(normalize_url(ledger_url))
    METADATA.create_all(created)
    return created


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(Decimal("12345678901234567890.123456789"), id="wide"),
        pytest.param(Decimal("0.1"), id="not-a-binary-fraction"),
        pytest.param(Decimal("-7.50"), id="negative-with-trailing-zero"),
        pytest.param(Decimal("1E+3"), id="exponent"),
    ],
)
def test_amounts_round_trip_exactly(engine: sa.Engine, amount: Decimal) -> None:
    with engine.begin() as conn:
        conn.execute(SCRATCH.insert().values(id=1, amount=amount))
        back = conn.execute(sa.select(SCRATCH.c.amount)).scalar_one()
    assert back == amount
    assert isinstance(back, Decimal)


@pytest.mark.parametrize(
    "instant",
    [
        pytest.param(datetime(2026, 3, 29, 1, 30, tzinfo=UTC), id="utc"),
        pytest.param(
            datetime(2026, 3, 29, 3, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
            id="offset-with-microseconds",
        ),
    ],
)
def test_instants_round_trip_as_aware_utc(engine: sa.Engine, instant: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(SCRATCH.insert().values(id=1, at=instant))
        back = conn.execute(sa.select(SCRATCH.c.at)).scalar_one()
    assert back == instant
    assert back.utcoffset() == timedelta(0)


def test_instants_sort_as_time_does(engine: sa.Engine) -> None:
    instants = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=n) for n in (10, 2, 1)]
    instants.append(datetime(2025, 12, 31, 23, tzinfo=timezone(timedelta(hours=-3))))
    with engine.begin() as conn:
        conn.execute(SCRATCH.insert(), [{"id": i, "at": at} for i, at in enumerate(instants)])
        ordered = conn.execute(sa.select(SCRATCH.c.at).order_by(SCRATCH.c.at)).scalars().all()
    assert ordered == sorted(instants)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        pytest.param("at", datetime(2026, 1, 1), "naive datetime", id="naive-instant"),
        pytest.param("amount", 1.5, "amounts are Decimal", id="float-amount"),
    ],
)
def test_naive_instants_and_float_amounts_are_refused(
    engine: sa.Engine, column: str, value: object, message: str
) -> None:
    with pytest.raises(sa.exc.StatementError, match=message), engine.begin() as conn:
        conn.execute(SCRATCH.insert().values(id=1, **{column: value}))
