"""The ledger behind ``ports.LedgerGateway``: parse, ``apply_resource``, commit, one transaction.

Role: open the ledger (refusing a schema this code does not match, DESIGN D11), and for each
object parse it with the ledger's parser and run ``allotment.ledger.apply.apply_resource`` in a
write transaction. A spec the parser rejects becomes a ``Refuse`` outcome naming the field; a
database that cannot be reached becomes ``LedgerUnavailableError``.

Must not: reconcile anything itself or hold a connection outside a call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from allotment.ledger.apply import apply_resource
from allotment.ledger.core.resources import ParseError, parse_resource
from allotment.ledger.storage.engine import Ledger, open_ledger
from allotment.ledger.values import status_values
from allotment.operator.ports import (
    REFUSE,
    LedgerConflictError,
    LedgerUnavailableError,
    Outcome,
)


@dataclass(frozen=True)
class Refusal:
    """An outcome the operator decides by itself: the ledger cannot even read the spec."""

    reason: str
    message: str
    action: str = REFUSE
    status: Mapping[str, Any] = field(default_factory=dict)
    retry_at: datetime | None = None


class ApplyFn(Protocol):
    """``allotment.ledger.apply.apply_resource``."""

    def __call__(
        self, connection: Any, resource: Any, now: datetime, *, force_orphan: bool = ...
    ) -> Outcome: ...


ValuesFn = Callable[[Any, Sequence[tuple[str, str]], datetime], Mapping[tuple[str, str], Any]]


def _is_serialization_failure(error: OperationalError) -> bool:
    """PostgreSQL's serialization failure or deadlock (SQLSTATE 40001, 40P01): a lost race."""
    return getattr(error.orig, "sqlstate", None) in ("40001", "40P01")


class SqlLedgerGateway:
    """``ports.LedgerGateway`` over an open ``Ledger``."""

    def __init__(self, ledger: Ledger, apply: ApplyFn, values: ValuesFn) -> None:
        self._ledger = ledger
        self._apply = apply
        self._values = values

    def apply(self, obj: Mapping[str, Any], now: datetime, *, orphan: bool = False) -> Outcome:
        """Parse and reconcile ``obj`` at ``now`` in one write transaction."""
        try:
            resource = parse_resource(obj)
        except ParseError as error:
            return Refusal("InvalidSpec", f"{error}: fix the field and apply again")
        try:
            with self._ledger.write() as connection:
                return self._apply(connection, resource, now, force_orphan=orphan)
        except IntegrityError as error:
            raise LedgerConflictError(f"a concurrent change won: {error.orig}") from error
        except OperationalError as error:
            if _is_serialization_failure(error):
                raise LedgerConflictError(f"a concurrent change won: {error.orig}") from error
            raise LedgerUnavailableError(f"the ledger is unreachable: {error.orig}") from error
        except PoolTimeoutError as error:
            raise LedgerUnavailableError(f"no ledger connection available: {error}") from error
        except DBAPIError as error:
            if error.connection_invalidated:
                raise LedgerUnavailableError(f"the ledger connection was lost: {error}") from error
            raise

    def values(
        self, refs: Sequence[tuple[str, str]], now: datetime
    ) -> Mapping[tuple[str, str], Mapping[str, Any]]:
        """Return the current ``status.value`` of the given Entitlements."""
        with self._ledger.read() as connection:
            return self._values(connection, refs, now)

    def close(self) -> None:
        """Dispose of the ledger's engines."""
        self._ledger.dispose()


def open_gateway(url: str) -> SqlLedgerGateway:
    """Open the ledger at ``url``; raise ``SchemaMismatchError`` on another schema revision."""
    return SqlLedgerGateway(open_ledger(url), apply_resource, status_values)
