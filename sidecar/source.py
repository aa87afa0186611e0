"""What the sidecar reads from the ledger: the loaded records, feed changes, and the source port.

Role: the narrow interface between the in-memory view and the ledger's read contract (DESIGN
D10, D11). A ``LedgerSource`` loads one namespace in bulk (``load``: one query per table) and
returns the changes committed after a feed position (``changes_since``). Records are the read
contract's (``allotment.ledger.storage.codec``: the core's domain objects with the ledger ids the
OpenMeter shapes need). Usage arrives as ``UsageBucketState`` (storage's ``BucketState``): the
*absolute* contents of one per-minute bucket, whose event count only grows, so applying it
twice, or once from local ingestion and once from the feed, never counts twice. A feed batch
carries each usage entry undecoded (``UsageEntry``): its states are decoded where they are
applied, a state at a time (``decoded``).

It must not compute balances (the core does) nor hold a database connection itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, MeterRecord
from allotment.ledger.storage.usage import BucketState as UsageBucketState
from allotment.ledger.storage.usage import UsageDecoder

__all__ = [
    "CONTRACT_VERSIONS",
    "Change",
    "CustomerRecord",
    "FeatureRecord",
    "FeedBatch",
    "FeedItem",
    "LedgerSource",
    "LoadedNamespace",
    "MeterRecord",
    "RecordRemoved",
    "UsageBucketState",
    "UsageEntry",
    "decoded",
]

#: Read-contract versions this sidecar understands: the current and the previous (DESIGN D11).
CONTRACT_VERSIONS = (1,)

RecordKind = Literal["customer", "feature", "meter", "entitlement", "grant"]


@dataclass(frozen=True)
class RecordRemoved:
    """A record that left the namespace's scope (it does not happen for ledger history)."""

    kind: RecordKind
    id: str


Change: TypeAlias = (
    CustomerRecord
    | FeatureRecord
    | MeterRecord
    | Entitlement
    | Grant
    | UsageBucketState
    | RecordRemoved
)


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One usage feed entry whose bucket states are decoded only where they are applied.

    A batch read after a backlog holds up to 5,000 entries (250,000 states at 50 per commit):
    decoded at once, they were young objects that a cyclic collection walked while the batch
    was applied (13 to 18 ms at 10^5 entitlements, 71 ms at 10^6, the loop stopped); decoded
    as they are applied, a batch holds a state or two at a time, and an entry of thousands of
    states (a group commit) is decoded across turns of the loop.
    """

    text: str
    #: Shared by a batch's entries: instants, amounts and groups they repeat parse once.
    decoder: UsageDecoder

    def states(self) -> Iterator[UsageBucketState]:
        """Yield the entry's bucket states, each decoded when asked (a turn may end between)."""
        return self.decoder.states(self.text)


FeedItem: TypeAlias = Change | UsageEntry


def decoded(items: Iterable[FeedItem]) -> Iterator[Change]:
    """Yield ``items``' changes in order, each usage entry's states decoded as it is reached."""
    for item in items:
        if isinstance(item, UsageEntry):
            yield from item.states()
        else:
            yield item


@dataclass(frozen=True)
class LoadedNamespace:
    """Everything the sidecar serves for one namespace, read in one consistent snapshot."""

    namespace: str
    epoch: str
    position: int
    contract_version: int
    customers: Sequence[CustomerRecord] = ()
    features: Sequence[FeatureRecord] = ()
    meters: Sequence[MeterRecord] = ()
    entitlements: Sequence[Entitlement] = ()
    grants: Sequence[Grant] = ()
    #: Records as the read contract's JSON documents (``codec.encode_record``'s shape), any
    #: kind but meters; iterated once, before ``usage`` (a database source reads them page by
    #: page then, and the view keeps them packed without building the records).
    documents: Iterable[Mapping[str, Any]] = ()
    #: Iterated once, by the view's load (a database source may read it page by page then).
    usage: Iterable[UsageBucketState] = ()
    #: Extra read-only facts for /status (e.g. the schema revision).
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedBatch:
    """The changes after a position, up to ``position``, in commit order.

    Usage entries come undecoded (``UsageEntry``): read the changes through ``decoded``.

    A different ``epoch`` than the one loaded means the ledger was restored: reload.
    """

    epoch: str
    position: int
    contract_version: int
    changes: Sequence[FeedItem] = ()


class LedgerSource(Protocol):
    """The ledger's read contract as the sidecar uses it (blocking; run it in a thread)."""

    def load(self, namespace: str) -> LoadedNamespace:
        """Read the namespace's catalogue and usage in bulk, with the feed position they match."""
        ...

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        """Return the changes of at most ``limit`` feed entries after ``position``."""
        ...

    def listen(self, namespace: str, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from any thread) when the feed may have news; return a stop function.

        Only a hint: None means the backend has no notifications and polling alone serves.
        """
        ...

    def close(self) -> None:
        """Release the connections."""
        ...
