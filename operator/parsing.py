"""The Kopf boundary: from a Kopf body to the plain Kubernetes object the ledger parses.

Role: copy the parts of an object the ledger reads (apiVersion, kind, metadata identity and
instants, spec) into plain dicts, and read the two things the operator itself decides on: the
deletion policy (DESIGN D3) and which kinds a resource may wait for. The ledger's own parser
(``allotment.ledger.core.resources``) turns the result into a typed Resource.

Must not: interpret spec fields beyond ``deletionPolicy`` and the reference kinds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from allotment.operator.kinds import API_VERSION, Kind

ORPHAN = "Orphan"
APPLY = "Apply"
METADATA_FIELDS = (
    "name",
    "namespace",
    "uid",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
)
# The kinds a resource of each kind can wait for (DESIGN D6: references resolve level-based).
REFERENCED_KINDS: Mapping[str, tuple[str, ...]] = {
    "Meter": (),
    "Customer": (),
    "Feature": ("Meter",),
    "Entitlement": ("Feature", "Customer"),
    "Grant": ("Entitlement", "Feature", "Customer"),
    "EntitlementReset": ("Entitlement", "Feature", "Customer"),
    "Plan": ("Feature",),
    "Subscription": ("Plan", "Customer", "Feature"),
}


@dataclass(frozen=True)
class ObjectRef:
    """Which object: kind, namespace, name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def plain(value: Any) -> Any:
    """Return ``value`` as plain dicts and lists (Kopf hands out mapping views)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return copy.copy(value)


def object_of(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the object the ledger reconciles: identity, instants and spec as written."""
    metadata = body.get("metadata") or {}
    spec = plain(body.get("spec") or {})
    return {
        "apiVersion": str(body.get("apiVersion") or API_VERSION),
        "kind": kind.name,
        "metadata": {key: plain(metadata[key]) for key in METADATA_FIELDS if key in metadata},
        "spec": spec,
    }


def ref_of(kind: Kind, body: Mapping[str, Any]) -> ObjectRef:
    """Return the reference of a Kopf body."""
    metadata = body.get("metadata") or {}
    return ObjectRef(kind.name, str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def generation_of(body: Mapping[str, Any]) -> int:
    """Return ``metadata.generation`` (1 when the apiserver has not set one)."""
    value = (body.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else 1


def deletion_policy(spec: Mapping[str, Any]) -> str:
    """Return the effective ``spec.deletionPolicy``: ``Apply`` only when written so (D3)."""
    return APPLY if spec.get("deletionPolicy") == APPLY else ORPHAN


def previous_conditions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the conditions currently in ``status`` (to keep their transition times)."""
    status = body.get("status") or {}
    found = status.get("conditions") if isinstance(status, Mapping) else None
    return [c for c in found if isinstance(c, Mapping)] if isinstance(found, list) else []
