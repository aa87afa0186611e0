"""Column types that keep instants and amounts exact on both databases.

Role: ``Instant`` stores aware UTC datetimes (``timestamptz`` on PostgreSQL, fixed-width ISO text
on SQLite, which sorts as time does) and always returns aware UTC datetimes; ``Amount`` stores
``Decimal`` exactly (unconstrained ``NUMERIC`` on PostgreSQL, canonical decimal text on SQLite,
never a float) (DESIGN D8).

It must not accept naive datetimes or floats: both are refused with a ``TypeError``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

# SQLite stores instants as "YYYY-MM-DDTHH:MM:SS.ffffffZ": fixed width, so text order is time order.


def format_amount(value: Decimal) -> str:
    """Return the canonical text of an amount: plain notation, no exponent."""
    if not value.is_finite():
        raise ValueError(f"amount must be finite, got {value}")
    return format(value, "f")


def format_instant(value: datetime) -> str:
    """Return the fixed-width text SQLite stores for an aware instant."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise TypeError(f"naive datetime {value!r}: instants must be aware (UTC)")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class Instant(TypeDecorator[datetime]):
    """An aware UTC instant."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(27))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected an aware datetime, got {type(value).__name__}")
        if dialect.name == "sqlite":
            return format_instant(value)
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"naive datetime {value!r}: instants must be aware (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"unexpected instant from the database: {value!r}")
        return value.astimezone(UTC)


class Amount(TypeDecorator[Decimal]):
    """An exact decimal amount."""

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(80))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"amounts are Decimal, got {type(value).__name__}")
        exact = value
        if dialect.name == "sqlite":
            return format_amount(exact)
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError(f"a float amount came back from the database: {value!r}")
        return Decimal(value) if not isinstance(value, Decimal) else value
