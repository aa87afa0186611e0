"""The allotment kinds the operator reconciles: group, version, plural and what deletion means.

Role: one table naming each kind once, so handlers, webhooks and the value loop agree on plurals,
handler ids and which kinds carry ``spec.deletionPolicy`` (DESIGN D3).

Must not: hold behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "allotment.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    """One custom resource kind of the ``allotment.dev`` group."""

    name: str
    plural: str
    singular: str
    has_deletion_policy: bool = False

    @property
    def handler_id(self) -> str:
        """Return the stable id of this kind's reconcile handler (kept in progress annotations)."""
        return f"reconcile-{self.singular}"


METER = Kind("Meter", "meters", "meter")
FEATURE = Kind("Feature", "features", "feature")
CUSTOMER = Kind("Customer", "customers", "customer")
ENTITLEMENT = Kind("Entitlement", "entitlements", "entitlement", has_deletion_policy=True)
GRANT = Kind("Grant", "grants", "grant", has_deletion_policy=True)
ENTITLEMENT_RESET = Kind("EntitlementReset", "entitlementresets", "entitlementreset")
PLAN = Kind("Plan", "plans", "plan")
SUBSCRIPTION = Kind("Subscription", "subscriptions", "subscription", has_deletion_policy=True)

KINDS: tuple[Kind, ...] = (
    METER,
    FEATURE,
    CUSTOMER,
    ENTITLEMENT,
    GRANT,
    ENTITLEMENT_RESET,
    PLAN,
    SUBSCRIPTION,
)
BY_NAME = {kind.name: kind for kind in KINDS}
