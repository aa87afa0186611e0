"""Fixtures of the ledger tier: a migrated, open ledger on each database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import Ledger, open_ledger


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """Yield a ledger migrated to head with ``allotment migrate``'s code, then close it."""
    migrate.upgrade(ledger_url)
    opened = open_ledger(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()
