"""Parsing Kubernetes objects into resources: identity, instants, specs as written, defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Consistency,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    WhenStale,
)
from allotment.ledger.core.resources import (
    CustomerSpec,
    DeletionPolicy,
    EntitlementResetSpec,
    EntitlementSpec,
    FeatureSpec,
    GrantSpec,
    Interval,
    Kind,
    MeterSpec,
    ParseError,
    RecurrenceSpec,
    Ref,
    Target,
    UsagePeriodSpec,
    UsageStart,
    parse_resource,
)


def obj(
    kind: str, name: str = "x", spec: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "spec": spec if spec is not None else {},
    }


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "spec"),
    [
        pytest.param(
            obj(
                "Meter",
                spec={
                    "eventType": "prompt",
                    "aggregation": "SUM",
                    "valueProperty": "$.tokens",
                    "groupBy": {"model": "$.model"},
                },
            ),
            MeterSpec(
                event_type="prompt",
                aggregation=Aggregation.SUM,
                value_property="$.tokens",
                group_by={"model": "$.model"},
            ),
            id="meter",
        ),
        pytest.param(
            obj(
                "Feature",
                spec={
                    "meterSlug": "tokens",
                    "meterGroupByFilters": {"model": "gpt-4"},
                    "whenStale": "Deny",
                    "consistency": "Strict",
                },
            ),
            FeatureSpec(
                meter_slug="tokens",
                meter_group_by_filters={"model": "gpt-4"},
                when_stale=WhenStale.DENY,
                consistency=Consistency.STRICT,
            ),
            id="feature",
        ),
        pytest.param(
            obj("Customer", spec={"usageAttribution": {"subjectKeys": ["a", "b"]}}),
            CustomerSpec(subject_keys=("a", "b")),
            id="customer",
        ),
        pytest.param(
            obj("Customer", spec=None),
            CustomerSpec(),
            id="customer-without-spec",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={
                    "customer": "c",
                    "featureKey": "f",
                    "type": "metered",
                    "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"},
                    "issueAfterReset": 100,
                    "isSoftLimit": False,
                    "measureUsageFrom": "CURRENT_PERIOD_START",
                    "deletionPolicy": "Apply",
                },
            ),
            EntitlementSpec(
                feature_key="f",
                type=EntitlementType.METERED,
                customer="c",
                usage_period=UsagePeriodSpec(Interval("MONTH", CalendarDuration(months=1)), T0),
                issue_after_reset=Decimal(100),
                is_soft_limit=False,
                measure_usage_from=UsageStart.CURRENT_PERIOD_START,
                deletion_policy=DeletionPolicy.APPLY,
            ),
            id="entitlement-metered",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={
                    "subject": "s",
                    "featureKey": "f",
                    "type": "static",
                    "config": {"z": 1, "a": ["x"]},
                },
            ),
            EntitlementSpec(
                feature_key="f",
                type=EntitlementType.STATIC,
                subject="s",
                config='{"a":["x"],"z":1}',
            ),
            id="entitlement-static-config-is-canonical-json",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={
                    "customer": "c",
                    "featureKey": "f",
                    "type": "metered",
                    "usagePeriod": {"interval": "PT6H"},
                    "measureUsageFrom": "2026-01-01T01:00:00+01:00",
                },
            ),
            EntitlementSpec(
                feature_key="f",
                type=EntitlementType.METERED,
                customer="c",
                usage_period=UsagePeriodSpec(Interval("PT6H", CalendarDuration(hours=6))),
                measure_usage_from=T0,
            ),
            id="entitlement-measure-from-instant-in-utc",
        ),
        pytest.param(
            obj(
                "Grant",
                spec={
                    "entitlement": "e",
                    "amount": 0.1,
                    "priority": 5,
                    "effectiveAt": "2026-01-01T00:00:00Z",
                    "expiration": {"duration": "MONTH", "count": 1},
                    "recurrence": {"interval": "P1M"},
                    "maxRolloverAmount": 10,
                },
            ),
            GrantSpec(
                target=Target(entitlement="e"),
                amount=Decimal("0.1"),
                priority=5,
                effective_at=T0,
                expiration=Expiration(ExpirationUnit.MONTH, 1),
                recurrence=RecurrenceSpec(Interval("P1M", CalendarDuration(months=1))),
                max_rollover_amount=Decimal(10),
            ),
            id="grant-float-amount-is-exact",
        ),
        pytest.param(
            obj(
                "EntitlementReset", spec={"customer": "c", "featureKey": "f", "retainAnchor": True}
            ),
            EntitlementResetSpec(target=Target(customer="c", feature_key="f"), retain_anchor=True),
            id="entitlement-reset",
        ),
    ],
)
def test_parse_keeps_the_spec_as_written(body: dict[str, Any], spec: object) -> None:
    assert parse_resource(body).spec == spec


def test_parse_reads_identity_and_instants() -> None:
    resource = parse_resource(
        obj(
            "Grant",
            "bonus",
            {"entitlement": "e", "amount": 5},
            namespace="team-a",
            uid="u-1",
            generation=3,
            creationTimestamp="2026-01-01T00:00:00Z",
            deletionTimestamp="2026-01-02T00:00:00Z",
        )
    )
    assert resource.ref == Ref("team-a", Kind.GRANT, "bonus")
    assert (resource.uid, resource.generation) == ("u-1", 3)
    assert resource.created_at == T0
    assert resource.deleted_at == datetime(2026, 1, 2, tzinfo=UTC)
    assert resource.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("body", "key", "display_name"),
    [
        pytest.param(
            obj("Meter", "gpt-4-tokens", {"eventType": "e", "aggregation": "COUNT"}),
            "gpt_4_tokens",
            None,
            id="meter-slug-from-name",
        ),
        pytest.param(
            obj("Meter", "m", {"slug": "tokens", "eventType": "e", "aggregation": "COUNT"}),
            "tokens",
            None,
            id="meter-slug-written",
        ),
        pytest.param(
            obj("Feature", "gpt-4-tokens"),
            "gpt_4_tokens",
            "gpt-4-tokens",
            id="feature-key-and-name-from-name",
        ),
        pytest.param(
            obj("Feature", "f", {"key": "k", "name": "Nice"}), "k", "Nice", id="feature-key-written"
        ),
        pytest.param(
            obj("Customer", "customer-1"),
            "customer-1",
            "customer-1",
            id="customer-key-is-name-unchanged",
        ),
        pytest.param(
            obj("Customer", "c", {"key": "acme", "name": "ACME"}),
            "acme",
            "ACME",
            id="customer-key-written",
        ),
    ],
)
def test_defaults_are_read_not_written(
    body: dict[str, Any], key: str, display_name: str | None
) -> None:
    resource = parse_resource(body)
    assert resource.key == key
    assert resource.display_name == display_name


def test_omitted_default_stays_distinct_from_written_default() -> None:
    omitted = parse_resource(obj("Feature", "gpt-4"))
    written = parse_resource(obj("Feature", "gpt-4", {"key": "gpt_4"}))
    assert omitted.key == written.key
    assert omitted.spec != written.spec


@pytest.mark.parametrize(
    ("body", "namespace", "policy"),
    [
        pytest.param(
            obj("Grant", spec={"entitlement": "e", "amount": 1}),
            "default",
            DeletionPolicy.ORPHAN,
            id="missing-namespace-is-default-and-orphan",
        ),
        pytest.param(
            obj(
                "Grant",
                spec={"entitlement": "e", "amount": 1, "deletionPolicy": "Apply"},
                namespace="ns",
            ),
            "ns",
            DeletionPolicy.APPLY,
            id="apply-written",
        ),
        pytest.param(obj("Customer"), "default", DeletionPolicy.ORPHAN, id="other-kinds-orphan"),
    ],
)
def test_namespace_and_deletion_policy(
    body: dict[str, Any], namespace: str, policy: DeletionPolicy
) -> None:
    resource = parse_resource(body)
    assert resource.ref.namespace == namespace
    assert resource.deletion_policy is policy


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({**obj("Meter"), "apiVersion": "v1"}, "apiVersion", id="api-version"),
        pytest.param(obj("Invoice"), "kind", id="unknown-kind"),
        pytest.param({**obj("Customer"), "metadata": {}}, "metadata.name", id="missing-name"),
        pytest.param(obj("Meter", spec={"aggregation": "SUM"}), "spec.eventType", id="required"),
        pytest.param(
            obj("Meter", spec={"eventType": "e", "aggregation": "AVG"}),
            "spec.aggregation",
            id="aggregation-enum",
        ),
        pytest.param(obj("Customer", spec={"keys": "x"}), "spec.keys", id="unknown-field"),
        pytest.param(
            obj("Customer", spec={"usageAttribution": {"subjectKeys": "a"}}),
            "spec.usageAttribution.subjectKeys",
            id="subject-keys-not-a-list",
        ),
        pytest.param(
            obj("Grant", spec={"entitlement": "e", "amount": "5"}),
            "spec.amount",
            id="amount-as-string",
        ),
        pytest.param(
            obj("Grant", spec={"entitlement": "e", "amount": True}),
            "spec.amount",
            id="amount-as-boolean",
        ),
        pytest.param(
            obj("Grant", spec={"entitlement": "e", "amount": 1, "priority": 1.5}),
            "spec.priority",
            id="priority-not-integer",
        ),
        pytest.param(
            obj(
                "Grant",
                spec={"entitlement": "e", "amount": 1, "effectiveAt": "2026-01-01T00:00:00"},
            ),
            "spec.effectiveAt",
            id="naive-timestamp",
        ),
        pytest.param(
            obj(
                "Grant",
                spec={
                    "entitlement": "e",
                    "amount": 1,
                    "expiration": {"duration": "MINUTE", "count": 1},
                },
            ),
            "spec.expiration.duration",
            id="expiration-unit",
        ),
        pytest.param(
            obj(
                "Grant",
                spec={"entitlement": "e", "amount": 1, "recurrence": {"interval": "monthly"}},
            ),
            "spec.recurrence.interval",
            id="recurrence-interval",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={
                    "customer": "c",
                    "featureKey": "f",
                    "type": "metered",
                    "measureUsageFrom": "yesterday",
                },
            ),
            "spec.measureUsageFrom",
            id="measure-usage-from",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={"customer": "c", "featureKey": "f", "type": "static", "config": "{}"},
            ),
            "spec.config",
            id="config-as-string",
        ),
        pytest.param(
            obj(
                "Entitlement",
                spec={"customer": "c", "featureKey": "f", "type": "static", "isSoftLimit": "yes"},
            ),
            "spec.isSoftLimit",
            id="boolean",
        ),
        pytest.param(
            obj("Customer", creationTimestamp="now"),
            "metadata.creationTimestamp",
            id="creation-timestamp",
        ),
        pytest.param(obj("Customer", generation=0), "metadata.generation", id="generation"),
    ],
)
def test_parse_failure_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse_resource(body)
    assert raised.value.field == field
    assert field in str(raised.value)
