"""Fakes of the operator's ports: a scripted ledger, a recording Kubernetes API, an event list."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from allotment.operator.ports import LedgerConflictError, LedgerUnavailableError
from allotment.operator.runtime import Runtime
from allotment.operator.settings import OperatorSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class FakeOutcome:
    action: str
    reason: str
    message: str = ""
    status: Mapping[str, Any] = field(default_factory=dict)
    retry_at: datetime | None = None


@dataclass
class FakeLedger:
    """Answers ``apply`` with ``answer(obj)``; records every object it was given."""

    answer: Callable[[Mapping[str, Any]], FakeOutcome]
    applied: list[Mapping[str, Any]] = field(default_factory=list)
    orphaned: list[bool] = field(default_factory=list)
    reachable: bool = True
    racing: bool = False
    current_values: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def apply(self, obj: Mapping[str, Any], now: datetime, *, orphan: bool = False) -> FakeOutcome:
        if not self.reachable:
            raise LedgerUnavailableError("connection refused")
        if self.racing:
            raise LedgerConflictError("duplicate key value violates unique constraint")
        self.applied.append(obj)
        self.orphaned.append(orphan)
        return self.answer(obj)

    def values(
        self, refs: Sequence[tuple[str, str]], now: datetime
    ) -> Mapping[tuple[str, str], Mapping[str, Any]]:
        return {ref: self.current_values[ref] for ref in refs if ref in self.current_values}

    def close(self) -> None:
        pass


@dataclass
class FakeKube:
    nudged: list[tuple[str, str, str, str]] = field(default_factory=list)
    patched: list[tuple[str, str, str, Mapping[str, Any]]] = field(default_factory=list)
    terminating: bool = False
    broken: bool = False

    async def nudge(self, plural: str, namespace: str, name: str, handler_id: str) -> None:
        self.nudged.append((plural, namespace, name, handler_id))

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.patched.append((plural, namespace, name, status))

    async def is_terminating(self, namespace: str, plural: str) -> bool:
        if self.broken:
            raise ConnectionError("apiserver unreachable")
        return self.terminating


@dataclass
class FakeEvents:
    posted: list[tuple[str, str, str]] = field(default_factory=list)

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Normal", reason, message))

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Warning", reason, message))


def make_runtime(ledger: FakeLedger, kube: FakeKube | None = None) -> Runtime:
    return Runtime(
        settings=OperatorSettings(
            database_url="sqlite://", value_patches_per_second=1000.0, nudge_again_seconds=0.01
        ),
        ledger=ledger,
        kube=kube or FakeKube(),
        events=FakeEvents(),
        clock=lambda: NOW,
    )


def body(
    kind: str,
    name: str,
    spec: Mapping[str, Any] | None = None,
    *,
    namespace: str = "default",
    generation: int = 1,
    deleting: bool = False,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "generation": generation,
        "creationTimestamp": "2026-03-01T11:00:00Z",
        "managedFields": [{"manager": "kubectl"}],
        "annotations": {"allotment.dev/last-handled-configuration": "{}"},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-03-01T11:59:00Z"
    obj: dict[str, Any] = {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": dict(spec or {}),
    }
    if status is not None:
        obj["status"] = dict(status)
    return obj
