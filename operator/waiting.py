"""Who waits for what: recording an object re-triggers the resources waiting on its kind.

Role: an in-memory registry kept in Kopf's ``memo``. A resource whose reconciliation answered
``Wait`` for a missing reference registers under (namespace, referenced kind); when the operator
records an object of that kind in that namespace it takes those waiters and nudges them, so an
apply in any order converges at once instead of at the next retry (DESIGN D6). Losing the
registry (a restart) only costs latency: every waiter also retries on a delay.

Must not: decide readiness or talk to Kubernetes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from allotment.operator.parsing import ObjectRef


class WaitingRegistry:
    """Waiting resources keyed by (namespace, kind they wait for)."""

    def __init__(self) -> None:
        self._waiters: defaultdict[tuple[str, str], set[ObjectRef]] = defaultdict(set)

    def wait(self, waiter: ObjectRef, kinds: Iterable[str]) -> None:
        """Register ``waiter`` as waiting for any of ``kinds`` in its namespace."""
        for kind in kinds:
            self._waiters[(waiter.namespace, kind)].add(waiter)

    def forget(self, waiter: ObjectRef) -> None:
        """Drop ``waiter`` everywhere (it became Ready or was deleted)."""
        for key in [key for key, refs in self._waiters.items() if waiter in refs]:
            self._waiters[key].discard(waiter)
            if not self._waiters[key]:
                del self._waiters[key]

    def take(self, recorded: ObjectRef) -> list[ObjectRef]:
        """Return and unregister the resources waiting for ``recorded``'s kind in its namespace."""
        found = self._waiters.pop((recorded.namespace, recorded.kind), set())
        for waiter in found:
            self.forget(waiter)
        return sorted(found, key=lambda ref: (ref.kind, ref.name))
