"""A Plan's rollout owes its subscribers their status: coalesced, then written once each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from allotment.ledger.core.resources import Kind, Ref
from allotment.operator import rollouts


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
        assert plural == "subscriptions"
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
