"""Fixtures of the ledger tier: a migrated, open ledger on each database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from allotment.ledger.storage.engine import Ledger, open_ledger


@pytest.fixture
def ledger(migrated_ledger_url: str) -> Iterator[Ledger]:
    """Yield a fresh ledger at the schema head (migrated by ``allotment migrate``'s code)."""
    opened = open_ledger(migrated_ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()
