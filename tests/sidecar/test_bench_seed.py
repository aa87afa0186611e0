"""The benchmark's bulk seed writes what the ledger holds: its rows load and answer a value.

``bench.seed`` renders documents from templates and writes rows below the reconciliation; if the
codec or the tables change, the benchmark would silently measure something else. These tests
read a seeded ledger back the way the operator and the sidecar do.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from allotment.ledger.storage import catalogue
from allotment.ledger.storage.engine import open_ledger
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.view import View
from bench.seed import FEATURE, NS, T0, customer_records, expected_balance, seed, seeded_count

SEEDED = 30
BUCKETS = 4


def test_seeded_records_read_back_as_the_records_seeded(ledger_url: str) -> None:
    seed(ledger_url, SEEDED, BUCKETS)
    ledger = open_ledger(ledger_url, reader_pool_size=1)
    try:
        with ledger.read() as conn:
            found = catalogue.current_records(conn, NS, ["customer", "entitlement", "grant"])
    finally:
        ledger.dispose()
    wanted = [record for i in range(SEEDED) for record in customer_records(i)]
    assert sorted(found, key=lambda r: r.id) == sorted(wanted, key=lambda r: r.id)
    assert seeded_count(ledger_url) == SEEDED


def test_a_seeded_ledger_loads_and_answers_the_seeded_balance(ledger_url: str) -> None:
    seed(ledger_url, SEEDED, BUCKETS)
    now = T0 + timedelta(days=10)
    source = StorageSource(open_ledger(ledger_url, reader_pool_size=1))
    try:
        view = View(NS, CoreValueEngine(), freeze_gc=False)
        view.load(source.load(NS), now)
    finally:
        source.close()
    assert view.counts().entitlements == SEEDED
    customer = view.customer_by_subject(f"sub-{SEEDED - 1}")
    assert customer is not None
    entitlement = view.active_entitlement(customer.customer.key, FEATURE, now)
    assert entitlement is not None
    body = json.loads(view.body(entitlement, now, v2=False))
    assert body["hasAccess"] is True
    assert str(body["balance"]) == str(expected_balance(BUCKETS))  # 1,000,000 - (1+2+3+4)
    assert body["usage"] == 10


def test_an_empty_database_has_no_seed(tmp_path: Path) -> None:
    assert seeded_count(f"sqlite:///{tmp_path}/empty.db") == 0
