"""A Plan's rollout owes its subscribers their status: coalesced, then written once each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from allotment.ledger.core.resources import Kind, Ref
from allotment.operator import rollouts
from allotment.operator.kinds import KINDS
from allotment.operator.runtime import Runtime
from allotment.operator.settings import OperatorSettings

PLAN = next(kind for kind in KINDS if kind.name == "Plan")


@dataclass
class Kube:
    """Records what the operator writes to the apiserver."""

    patched: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    nudged: list[tuple[str, str]] = field(default_factory=list)

    async def nudge(self, plural: str, namespace: str, name: str, handler_id: str) -> None:
        self.nudged.append((namespace, name))

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        if plural != "subscriptions":
            return  # a Plan's progress
        self.patched.append((namespace, name, dict(status)))

    async def is_terminating(self, namespace: str, plural: str) -> bool:
        return False


@dataclass(frozen=True)
class Reached:
    action: str
    status: Mapping[str, Any]
    reason: str = "Recorded"
    message: str = ""
    retry_at: None = None


@dataclass(frozen=True)
class PlanOutcome:
    rolled: tuple[tuple[Ref, Reached], ...]
    action: str = "Wait"
    reason: str = "RollingOut"
    message: str = ""
    status: Mapping[str, Any] = field(default_factory=dict)
    retry_at: None = None


def chunk(generation: int, *names: str, action: str = "Amend") -> PlanOutcome:
    return PlanOutcome(
        tuple(
            (
                Ref("default", Kind.SUBSCRIPTION, name),
                Reached(action, {"plan": {"key": "pro", "generation": generation}}),
            )
            for name in names
        )
    )


async def test_each_subscriber_gets_one_patch_with_the_latest_generation() -> None:
    kube, memo = Kube(), {}
    rollouts.publish(memo, kube, chunk(2, "a", "b"))
    rollouts.publish(memo, kube, chunk(3, "b", "c"))  # a newer edit reached b again
    statuses = rollouts.statuses_of(memo, kube)
    assert statuses.drain_task is not None
    await statuses.drain_task
    assert sorted((name, s["plan"]["generation"]) for _, name, s in kube.patched) == [
        ("a", 2),
        ("b", 3),
        ("c", 3),
    ]
    assert statuses.pending == {}


async def test_a_subscriber_the_rollout_could_not_complete_is_nudged() -> None:
    kube, memo = Kube(), {}
    rollouts.publish(memo, kube, chunk(2, "collides", action="Conflict"))
    task = rollouts.statuses_of(memo, kube).drain_task
    assert task is not None
    await task
    assert (kube.patched, kube.nudged) == ([], [("default", "collides")])


@dataclass
class Ledger:
    """Answers a Plan's applies with the chunks of a rollout, then its end."""

    outcomes: list[PlanOutcome]
    applied: int = 0

    def apply(self, obj: Mapping[str, Any], now: datetime, *, orphan: bool = False) -> PlanOutcome:
        self.applied += 1
        return self.outcomes.pop(0)

    def values(self, refs: Any, now: datetime) -> Mapping[tuple[str, str], Any]:
        return {}

    def close(self) -> None:
        return None


class Events:
    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        return None

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        return None


PLAN_BODY = {
    "apiVersion": "allotment.dev/v1alpha1",
    "kind": "Plan",
    "metadata": {"name": "pro", "namespace": "default", "generation": 2, "uid": "u"},
    "spec": {"features": []},
}


async def test_drive_takes_the_rollout_to_its_end_a_chunk_per_apply() -> None:
    done = PlanOutcome((), action="Amend", reason="RolledOut")
    ledger = Ledger([chunk(2, "b"), chunk(2, "c"), done])
    kube, memo = Kube(), {}
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    runtime = Runtime(OperatorSettings("sqlite://"), ledger, kube, Events(), lambda: now)
    last = await rollouts.drive(runtime, memo, PLAN, PLAN_BODY, chunk(2, "a"))
    assert (last.action, last.reason, ledger.applied) == ("Amend", "RolledOut", 3)
    task = rollouts.statuses_of(memo, kube).drain_task
    assert task is not None
    await task
    assert sorted(name for _, name, _ in kube.patched) == ["a", "b", "c"]
