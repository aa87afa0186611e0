"""The catalogue store: versions only appended, current state read back, keys unique (D1, D5)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from allotment.ledger.core.model import Customer, Grant
from allotment.ledger.storage import catalogue, feed, records
from allotment.ledger.storage.codec import CustomerRecord
from allotment.ledger.storage.engine import Ledger

NS = "team-a"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def recorded_grant(ledger: Ledger, name: str = "bonus") -> Grant:
    with ledger.write() as conn:
        identity = records.create_identity(conn, NS, "Grant", name, created_at=T0)
    return Grant(
        id=identity.id,
        namespace=NS,
        name=name,
        entitlement_id="01JAAAAAAAAAAAAAAAAAAAAAAA",
        amount=Decimal("100"),
        effective_at=T0,
        created_at=T0,
    )


def test_an_edit_appends_a_version_and_the_current_state_is_the_last(ledger: Ledger) -> None:
    grant = recorded_grant(ledger)
    voided = replace(grant, void_at=T0 + timedelta(days=1))
    with ledger.write() as conn:
        assert catalogue.record_versions(conn, NS, [grant], recorded_at=T0) == [1]
    with ledger.write() as conn:
        assert catalogue.record_versions(conn, NS, [voided], recorded_at=T0) == [2]
    with ledger.read() as conn:
        assert catalogue.current_records(conn, NS) == [voided]
        assert catalogue.find_record(conn, grant.id) == voided
        history = conn.execute(
            catalogue._VERSIONS.select().where(catalogue._VERSIONS.c.resource_id == grant.id)
        ).all()
    assert [row.version for row in history] == [1, 2]


def test_recording_the_same_document_again_writes_nothing(ledger: Ledger) -> None:
    grant = recorded_grant(ledger)
    with ledger.write() as conn:
        catalogue.record_versions(conn, NS, [grant], recorded_at=T0)
        head = feed.feed_head(conn)
    with ledger.write() as conn:
        assert catalogue.record_versions(conn, NS, [grant], recorded_at=T0) == [1]
        assert feed.feed_head(conn) == head


def test_each_new_version_reaches_the_feed_as_its_document(ledger: Ledger) -> None:
    grant = recorded_grant(ledger)
    with ledger.write() as conn:
        catalogue.record_versions(conn, NS, [grant], recorded_at=T0)
    with ledger.read() as conn:
        entries = feed.read_feed(conn, NS, after=0)
    assert [(e.kind, e.payload["id"], e.payload["amount"]) for e in entries] == [
        ("record", grant.id, "100")
    ]


def test_records_of_another_namespace_are_not_read(ledger: Ledger) -> None:
    grant = recorded_grant(ledger)
    with ledger.write() as conn:
        catalogue.record_versions(conn, NS, [grant], recorded_at=T0)
    with ledger.read() as conn:
        assert catalogue.current_records(conn, "team-b") == []
        assert catalogue.current_records(conn, NS, kinds=["customer"]) == []


def test_a_key_names_at_most_one_record_per_namespace(ledger: Ledger) -> None:
    with ledger.write() as conn:
        first = records.create_identity(conn, NS, "Customer", "acme", created_at=T0)
        second = records.create_identity(conn, NS, "Customer", "acme-2", created_at=T0)
        customer = CustomerRecord(first.id, Customer("acme", "Acme", ("acme-prod",)), T0)
        catalogue.record_versions(conn, NS, [customer], recorded_at=T0)
        catalogue.claim_key(conn, NS, "subject", "acme-prod", first.id)
        catalogue.claim_key(conn, NS, "subject", "acme-prod", first.id)
    with ledger.write() as conn, pytest.raises(catalogue.KeyTakenError, match="acme-prod"):
        catalogue.claim_key(conn, NS, "subject", "acme-prod", second.id)
    with ledger.write() as conn:
        catalogue.claim_key(conn, "team-b", "subject", "acme-prod", second.id)
        catalogue.release_key(conn, NS, "subject", "acme-prod", first.id)
        catalogue.claim_key(conn, NS, "subject", "acme-prod", second.id)
        assert catalogue.key_owner(conn, NS, "subject", "acme-prod") == second.id
