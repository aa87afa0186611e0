"""The sidecar's in-memory view of one namespace: compact indexes, usage and cached answers.

Role: hold what a ``LedgerSource`` loaded (customers, features, meters, entitlements with their
reset timelines, grants, usage buckets), keep it current by applying feed batches in commit
order (a new ``ledger_epoch`` means: reload), and answer lookups with dict accesses. Usage
increments from local ingestion enter through ``apply_usage`` as absolute bucket states, so
they are idempotent with the same states arriving later through the feed.

Layout (one load's ``_State``, replaced wholesale on reload):

- customers, entitlements and grants are kept as packed read-contract documents
  (``compact.Shapes``: a few dozen bytes each, the fields that differ from a template), without
  the ids and keys their holder already keeps; the records (``Entitlement``, ``Grant``,
  ``CustomerRecord``) are rebuilt by the codec only when a value must be computed or a route
  asks, through a small bounded cache. Features and meters (a handful) stay decoded.
- ledger ids are held as ``_ident`` makes them: an upper-case ULID (the ledger's form) as its
  128-bit number (48 bytes instead of the text's 80), any other id as its text; lookups take
  the text, rebuilt records get the text back.
- ``_Customer`` (id, key, packed) is indexed by id (``customers``) and by its key and every
  subject key (``by_subject``, DESIGN D5). ``_Slot`` holds one entitlement: id, the index fields
  a feature-key lookup needs (feature key, start, end, metered: one tuple shared by equal
  slots), its packed document with its one grant's packed document after it in the same bytes
  (several grants, or none: a tuple), and its cached answer: the JSON body of the current value
  (OpenMeter's v2 shape, kept as the v1 body, shared between slots where equal) with the query
  instants it holds for (``lo``, ``hi``), and the v2 tail (the grants' balances: unique per slot)
  only for slots read through v2. A customer holds the slots of the entitlements with its key
  (a tuple when several); ``orphans`` holds those of keys no loaded customer has.
- usage lives in ``usage.UsageStore``: a SUM or COUNT series is one ``bytes`` of running totals
  and minute indexes, keyed by meter and subject.
- At 10^6 entitlements of ``bench.seed``'s shape this is about 1 KB each (``bench.view_memory``);
  the load ends by returning the C heap's free pages (``heap.release_free_heap``).

An answer is recomputed by the core when a query instant leaves its range or after a change
touched it (a usage bucket of one of its subjects, a grant, the entitlement itself, its
customer, feature or meter): on the next read, except that answers a usage bucket dropped are
recomputed by the follower soon after (``refresh_dropped``); a change touches only the slots it
may change. A metered answer is not cached past its instant while usage stamped after that
instant is held (it counts once the clock passes it). ``hot_body`` is the
access check's whole lookup: two dict accesses, a short scan, two instant comparisons. The
instants it compares (the query instant, a slot's range, start and end) are whole microseconds
since the Unix epoch (``micros``): integers, exact, and compared without building a datetime.

A load is read and indexed off the event loop (``prepare``, in a worker thread: documents go
from JSON to packed form without building records; keys read there are held once) and then
swapped in (``install``) and frozen from the cyclic garbage collector (``gc.freeze``), so a full
collection does not walk 10^6 entitlements.

It must not do I/O (the follower in ``sync`` fetches; this only applies), read the clock (every
method takes ``now``), or compute balances (``compute.ValueEngine`` does).
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from allotment.ledger.core.history import BalanceHistory
from allotment.ledger.core.model import (
    Aggregation,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Grant,
)
from allotment.ledger.storage.codec import Record, decode_record, encode_record

from .compact import Shapes, parse_instant
from .compute import HistoryWindow, ValueEngine
from .heap import release_free_heap
from .records import Records
from .serialize import value_json
from .source import (
    CONTRACT_VERSIONS,
    Change,
    CustomerRecord,
    FeatureRecord,
    FeedBatch,
    LoadedNamespace,
    MeterRecord,
    RecordRemoved,
    UsageBucketState,
    decoded,
)
from .usage import AnySeries, UsageStore

__all__ = ["MICROSECOND", "Counts", "PreparedLoad", "View", "instant", "looks_like_ulid", "micros"]

MICROSECOND = timedelta(microseconds=1)
ZERO = Decimal(0)
_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz")
_ULID_DIGITS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32, in ASCII order
_CANONICAL = frozenset(_ULID_DIGITS)
_TO_BASE32 = str.maketrans(_ULID_DIGITS, "0123456789abcdefghijklmnopqrstuv")  # int(_, 32)
_ULID_SHIFTS = tuple(range(125, -1, -5))
_GRANTS_SPLIT = b',"grantBalances":'
_NEVER = datetime.max.replace(tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
_NO_TIME = timedelta(0)
T = TypeVar("T")
#: A slot's feature key, start, end (None: open; both ``micros``) and whether it is metered.
_Index = tuple[str, int, int | None, bool]


def micros(at: datetime) -> int:
    """Return an aware instant as whole microseconds since the Unix epoch (exact)."""
    return (at - _EPOCH) // MICROSECOND


def instant(at_micros: int) -> datetime:
    """Return the aware UTC instant ``at_micros`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=at_micros)


_NEVER_MICROS = micros(_NEVER)
_MINUTE_MICROS = 60_000_000


def looks_like_ulid(text: str) -> bool:
    """Tell whether ``text`` has the shape of a ULID (OpenMeter tries ids before keys)."""
    return len(text) == 26 and text[0] in "01234567" and all(c in _CROCKFORD for c in text)


@dataclass(frozen=True)
class Counts:
    """How many records the view holds (for /status and metrics)."""

    customers: int = 0
    features: int = 0
    meters: int = 0
    entitlements: int = 0
    grants: int = 0
    usage_buckets: int = 0


def _ident(record_id: str) -> int | str:
    """Return how the indexes hold a ledger id: a canonical ULID as its 128-bit number, else as is.

    The number costs 48 bytes, the text 80. Only an upper-case ULID (the ledger's form) becomes
    a number, so ``_id_text`` gives back exactly the text it came from and an id of another
    form still matches only itself.
    """
    if len(record_id) == 26 and record_id[0] in "01234567" and _CANONICAL.issuperset(record_id):
        return int(record_id.translate(_TO_BASE32), 32)
    return record_id


def _id_text(ident: int | str) -> str:
    """Return the ledger id an index holds as ``ident`` (``_ident``'s inverse)."""
    if isinstance(ident, str):
        return ident
    return "".join([_ULID_DIGITS[ident >> shift & 31] for shift in _ULID_SHIFTS])


class _ById(dict[int | str, T]):
    """Records by ledger id, keyed as ``_ident`` holds ids, looked up by the id's text."""

    __slots__ = ()

    def get(self, record_id: str, default: None = None) -> T | None:  # type: ignore[override]
        """Return the record with this ledger id, if held."""
        return dict.get(self, _ident(record_id))

    def pop(self, record_id: str, default: None = None) -> T | None:  # type: ignore[override]
        """Remove and return the record with this ledger id, if held."""
        return dict.pop(self, _ident(record_id), None)


class _Customer:
    """One customer: its ledger id (as ``_ident`` holds it), key and packed document."""

    __slots__ = ("ident", "key", "packed", "slots")

    def __init__(self, record_id: str, key: str, packed: bytes) -> None:
        self.ident = _ident(record_id)
        self.key = key
        self.packed = packed
        #: The entitlements whose customer key is this customer's key, while ``by_subject``
        #: resolves that key to this customer (a tuple when several or none).
        self.slots: _Slot | tuple[_Slot, ...] = ()

    @property
    def id(self) -> str:
        """Return the customer's ledger id."""
        return _id_text(self.ident)


class _Slot:
    """One entitlement: index fields, packed document and grants, and its cached answer.

    ``index`` holds the document's feature key, start, end and whether it is metered, kept to
    resolve a feature key without rebuilding the record (one tuple shared by equal slots);
    ``ident`` its ledger id (``_ident``). The cached body answers every query instant ``now``
    with ``lo < now`` and (``hi`` None or ``now <= hi``): ``body`` is the v1 body (equal ones
    shared between slots), ``tail`` what the v2 body has instead of its closing brace (from
    ``grantBalances`` on; empty when v2 adds nothing; None while no v2 read asked for it).
    """

    __slots__ = (
        "body",
        "hi",
        "ident",
        "index",
        "lo",
        "packed",
        "packed_grants",
        "tail",
    )
    #: Where the one grant starts in ``packed``, else the packed grants (none, or several).
    packed_grants: int | tuple[bytes, ...]

    def __init__(self, entitlement_id: str, grants: tuple[bytes, ...]) -> None:
        self.ident = _ident(entitlement_id)
        self.packed = b""
        self.packed_grants = ()
        self.grants = grants
        self.index: _Index = ("", _NEVER_MICROS, None, False)
        self.body: bytes | None = None
        self.lo = _NEVER_MICROS
        self.hi: int | None = None
        self.tail: bytes | None = None

    @property
    def grants(self) -> tuple[bytes, ...]:
        """Return the packed grants, in the order recorded."""
        held = self.packed_grants
        return (self.packed[held:],) if isinstance(held, int) else held

    @grants.setter
    def grants(self, grants: tuple[bytes, ...]) -> None:
        # One grant (the common case) is held after the entitlement's own packed document, in
        # the same bytes (which unpacking ignores: ``marshal.loads`` reads one value): a bytes
        # object of its own and a 1-tuple would cost 90 bytes more.
        document = self.document
        if len(grants) == 1:
            self.packed, self.packed_grants = document + grants[0], len(document)
        else:
            self.packed, self.packed_grants = document, grants

    @property
    def document(self) -> bytes:
        """Return the entitlement's own packed document (``packed`` without a grant after it)."""
        held = self.packed_grants
        return self.packed[:held] if isinstance(held, int) else self.packed

    @document.setter
    def document(self, document: bytes) -> None:
        held = self.packed_grants
        if isinstance(held, int):
            self.packed, self.packed_grants = document + self.packed[held:], len(document)
        else:
            self.packed = document

    def answers(self, now: int) -> bool:
        """Tell whether the cached answer holds at the query instant ``now`` (``micros``)."""
        hi = self.hi
        return self.lo < now and (hi is None or now <= hi)

    @property
    def id(self) -> str:
        """Return the entitlement's ledger id."""
        return _id_text(self.ident)

    @property
    def feature_key(self) -> str:
        """Return the entitlement's feature key."""
        return self.index[0]

    @property
    def metered(self) -> bool:
        """Tell whether the entitlement is metered."""
        return self.index[3]

    @property
    def step(self) -> int:
        """Return the microseconds an answer's instant is rounded by: a minute when metered."""
        return _MINUTE_MICROS if self.index[3] else 1


class _Pool:
    """Shares equal immutable values (instants, keys) between slots, indexes and usage.

    Bounded while serving (``LIMIT``); unbounded during a load, so that every customer key and
    subject key read there is held once (emptied when the load is prepared).
    """

    LIMIT = 65536

    def __init__(self) -> None:
        self.held: dict[Any, Any] = {}
        self.limit = self.LIMIT

    def __call__(self, value: T) -> T:
        held = self.held
        if len(held) >= self.limit:
            held.clear()
        return held.setdefault(value, value)  # type: ignore[no-any-return]


@dataclass
class _State:
    """Every index of one load, replaced wholesale on reload."""

    epoch: str
    contract_version: int
    position: int
    shapes: Shapes = field(default_factory=Shapes)
    pool: _Pool = field(default_factory=_Pool)
    customers: _ById[_Customer] = field(default_factory=_ById)
    #: Every customer key and subject key -> its customer (DESIGN D5: one customer per string).
    by_subject: dict[str, _Customer] = field(default_factory=dict)
    features: dict[str, FeatureRecord] = field(default_factory=dict)  # id ->
    feature_by_key: dict[str, FeatureRecord] = field(default_factory=dict)
    meters: dict[str, MeterRecord] = field(default_factory=dict)  # id ->
    meter_by_slug: dict[str, MeterRecord] = field(default_factory=dict)
    entitlements: _ById[_Slot] = field(default_factory=_ById)
    #: Customer key -> its entitlement (a tuple when several), for keys that resolve to no
    #: customer with that key (not loaded yet, or removed); the others' are held by the
    #: ``_Customer`` (``slots``): one index fewer (see ``slots_of``).
    orphans: dict[str, _Slot | tuple[_Slot, ...]] = field(default_factory=dict)
    #: Packed grants whose entitlement is not loaded (yet), by entitlement id.
    pending_grants: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    usage: UsageStore = field(default_factory=UsageStore)
    grant_count: int = 0
    #: Rebuilds records from packed documents; keeps the last few (bounded).
    decoded: Records = field(default_factory=Records)
    #: Slots whose cached answer a usage change dropped, for ``View.refresh_dropped`` (the
    #: follower recomputes them after a batch, so the next check finds its answer cached).
    dropped: list[_Slot] = field(default_factory=list)

    def slots_of(self, customer_key: str) -> tuple[_Slot, ...]:
        """Return the entitlements held under a customer key."""
        customer = self.by_subject.get(customer_key)
        held = (
            customer.slots
            if customer is not None and customer.key == customer_key
            else self.orphans.get(customer_key, ())
        )
        return (held,) if isinstance(held, _Slot) else held

    def record(self, packed: bytes, *fills: tuple[str, str]) -> Any:
        """Return the record a packed document holds, its ``fills`` (field, value) put back."""
        return self.decoded.record(self.shapes, packed, fills)

    def entitlement(self, slot: _Slot, *, keep: bool = True) -> Entitlement:
        """Return a slot's entitlement (``keep``: as ``Records.record``)."""
        return self.decoded.entitlement(self.shapes, slot.packed, slot.id, keep=keep)

    def grants(self, slot: _Slot) -> tuple[Grant, ...]:
        """Return a slot's grants, in the order recorded."""
        return tuple(self.grant(g, slot.id) for g in slot.grants)

    def grant(self, packed: bytes, entitlement_id: str, *, keep: bool = True) -> Grant:
        """Return a grant of the entitlement ``entitlement_id`` (``keep``: as ``Records.record``)."""
        return self.decoded.grant(self.shapes, packed, entitlement_id, keep=keep)

    def customer(self, customer: _Customer) -> CustomerRecord:
        """Return a customer's record."""
        return self.decoded.customer(self.shapes, customer.packed, customer.id, customer.key)

    def pack(self, document: Mapping[str, Any], *held: str, always: tuple[str, ...] = ()) -> bytes:
        """Pack a document without the fields named in ``held`` (their holder keeps them).

        The fields named in ``always`` are in the packed bytes whatever the template holds.
        """
        blanked = dict(document)
        for name in held:
            blanked[name] = None
        return self.shapes.pack(blanked, always)


@dataclass(frozen=True)
class PreparedLoad:
    """A load's indexes, built off the event loop, ready to be installed."""

    state: _State
    details: dict[str, str]


class View:
    """One namespace's ledger state in memory, with cached answers."""

    def __init__(self, namespace: str, engine: ValueEngine, *, freeze_gc: bool = True) -> None:
        self.namespace = namespace
        self.engine = engine
        self.freeze_gc = freeze_gc
        self._state: _State | None = None
        self.loaded_at: datetime | None = None
        #: The wall-clock instant at which the view last knew it had every committed change.
        self.synced_at: datetime | None = None
        self._synced_micros: int | None = None  # the same instant, as ``micros``
        self.reloads = 0
        self.details: dict[str, str] = {}
        self.degraded: str | None = None
        #: The last freshness texts (``freshness``) with the position and age they are for.
        self._freshness: tuple[int, int, tuple[str, str]] = (-1, -1, ("", ""))

    # --- loading and following ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Tell whether the first load is done."""
        return self._state is not None

    @property
    def epoch(self) -> str | None:
        """Return the ledger epoch of the loaded state."""
        return self._state.epoch if self._state else None

    @property
    def position(self) -> int | None:
        """Return the feed position the view has applied up to (the ledger version)."""
        return self._state.position if self._state else None

    @property
    def contract_version(self) -> int | None:
        """Return the read-contract version of the last load or batch."""
        return self._state.contract_version if self._state else None

    def load(self, loaded: LoadedNamespace, now: datetime) -> None:
        """Replace everything with ``loaded`` and freeze it from the cyclic GC."""
        self.install(self.prepare(loaded), now)

    def prepare(self, loaded: LoadedNamespace) -> PreparedLoad:
        """Build the indexes of ``loaded`` without touching the served state.

        Safe in a worker thread while the event loop answers from the current state; the
        cyclic collector is paused meanwhile so it does not walk the growing new state, which
        is frozen from it before it resumes.
        """
        if loaded.namespace != self.namespace:
            raise ValueError(f"loaded namespace {loaded.namespace!r}, serving {self.namespace!r}")
        state = _State(loaded.epoch, loaded.contract_version, loaded.position)
        state.pool.limit = sys.maxsize
        collecting = gc.isenabled()
        gc.disable()
        try:
            for meter in loaded.meters:
                _put_meter(state, meter)
            for feature in loaded.features:
                _put_feature(state, feature)
            records: Iterable[Record] = (*loaded.customers, *loaded.entitlements, *loaded.grants)
            for record in records:
                _put_document(state, encode_record(record))
            for document in loaded.documents:
                _put_document(state, document)
            state.usage.load(loaded.usage, state.pool)
            # Entitlements read before their customer waited here: keep a table their size.
            state.orphans = dict(state.orphans)
        finally:
            state.pool.held.clear()
            state.pool.limit = _Pool.LIMIT
            release_free_heap()  # the load's temporaries: else they stay resident
            if self.freeze_gc:
                # Freeze before collecting again: else the first automatic collection after
                # this would walk every new record as a young object (seconds at 10^5).
                gc.freeze()
            if collecting:
                gc.enable()
        return PreparedLoad(state, dict(loaded.details))

    def install(self, prepared: PreparedLoad, now: datetime) -> None:
        """Serve a prepared load from now on (on the event loop: one swap) and freeze it."""
        state = prepared.state
        self._check_contract(state.contract_version)
        if self._state is not None:
            self.reloads += 1
        self._state = state
        self.details = dict(prepared.details)
        self.loaded_at = now
        self._synced(now)
        if self.freeze_gc:
            # No full collection first: it would stop the loop for a walk of every record. The
            # state holds no reference cycles, so the replaced one is freed by reference counts
            # even where an earlier freeze left it.
            gc.freeze()

    def apply(self, batch: FeedBatch, now: datetime, *, whole: bool = True) -> bool:
        """Apply a feed batch; return False (applying nothing) when its epoch needs a reload.

        ``whole=False``: a part of a batch, not its end; the view is current as of ``now`` only
        once the part carrying the batch's position is applied (a batch that fails half way,
        an entry that cannot be decoded, leaves the view's age growing).
        """
        state = self._require()
        if batch.epoch != state.epoch:
            return False
        self._check_contract(batch.contract_version)
        for change in decoded(batch.changes):
            _apply_change(state, change)
        state.position = max(state.position, batch.position)
        state.contract_version = batch.contract_version
        if whole:
            self._synced(now)
        return True

    def apply_usage(self, buckets: Iterable[UsageBucketState]) -> None:
        """Take bucket states committed by local ingestion (idempotent with the feed's)."""
        state = self._require()
        for bucket in buckets:
            _apply_change(state, bucket)

    def refresh_dropped(self, now: datetime, limit: int) -> int:
        """Recompute up to ``limit`` answers usage changes dropped; return how many are left.

        Only answers that were cached are recomputed (an entitlement nobody reads stays
        uncomputed), each as a check would at ``now``; the follower calls this between turns of
        the loop, so usage flowing in does not make the next checks compute on the request path.
        """
        state = self._state
        if state is None:
            return 0
        dropped, done, at = state.dropped, 0, micros(now)
        while dropped and done < limit:
            slot = dropped.pop()
            if slot.body is None and dict.get(state.entitlements, slot.ident) is slot:
                done += 1
                try:
                    self._refresh(slot, at, False)
                except Exception:  # left to the check, which computes it again and reports it
                    continue
        return len(dropped)

    def mark_synced(self, now: datetime) -> None:
        """Record that a poll found nothing new: the view is current as of ``now``."""
        self._synced(now)

    def _synced(self, now: datetime) -> None:
        self.synced_at = now
        self._synced_micros = micros(now)

    def age(self, now: datetime) -> timedelta | None:
        """Return how long ago the view was last known to be current (None before loading)."""
        if self.synced_at is None:
            return None
        age = now - self.synced_at
        return age if age > _NO_TIME else _NO_TIME

    def stale(self, now: int, budget: int) -> bool:
        """Tell whether the view is older than ``budget`` at ``now`` (or has never loaded).

        Both in microseconds (``now`` as ``micros``), as the access check reads its clock.
        """
        synced = self._synced_micros
        return synced is None or now - synced > budget

    def freshness_headers(self, now: int) -> dict[str, str]:
        """Return the ``Allotment-Ledger-Version`` and ``-Age`` headers (none before loading).

        ``now`` is the query instant as ``micros``; the age is in seconds with three decimals
        (rounded to the millisecond).
        """
        texts = self.freshness(now)
        if texts is None:
            return {}
        version, age = texts
        return {"Allotment-Ledger-Version": version, "Allotment-Ledger-Age": age}

    def freshness(self, now: int) -> tuple[str, str] | None:
        """Return the ledger version and age texts at ``now`` (``micros``); None before loading.

        The same tuple while the version and the age in milliseconds stay the same (callers may
        compare it with ``is`` to reuse what they made from it).
        """
        state = self._state
        synced = self._synced_micros
        if state is None or synced is None:
            return None
        milliseconds = (now - synced + 500) // 1000 if now > synced else 0
        position, held_milliseconds, texts = self._freshness
        if state.position != position or milliseconds != held_milliseconds:
            version = texts[0] if state.position == position else str(state.position)
            age = f"{milliseconds // 1000}.{milliseconds % 1000:03d}"
            texts = (version, age)
            self._freshness = (state.position, milliseconds, texts)
        return texts

    def _check_contract(self, version: int) -> None:
        if version not in CONTRACT_VERSIONS:
            self.degraded = (
                f"the ledger speaks read-contract version {version}; this sidecar reads "
                f"{', '.join(map(str, CONTRACT_VERSIONS))}: upgrade the sidecar"
            )
        else:
            self.degraded = None

    def _require(self) -> _State:
        if self._state is None:
            raise RuntimeError("the view has not loaded yet")
        return self._state

    # --- lookups ------------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Return how many records are loaded."""
        state = self._state
        if state is None:
            return Counts()
        return Counts(
            customers=len(state.customers),
            features=len(state.features),
            meters=len(state.meters),
            entitlements=len(state.entitlements),
            grants=state.grant_count,
            usage_buckets=state.usage.bucket_count,
        )

    def customer_by_subject(self, subject: str) -> CustomerRecord | None:
        """Return the customer whose key or subject keys contain ``subject`` (DESIGN D5)."""
        state = self._require()
        found = state.by_subject.get(subject)
        return state.customer(found) if found is not None else None

    def customer(self, id_or_key: str) -> CustomerRecord | None:
        """Return the customer with this key, or this ledger id."""
        state = self._require()
        found = _customer_by(state, id_or_key)
        return state.customer(found) if found is not None else None

    def feature(self, key: str) -> FeatureRecord | None:
        """Return the feature with this key."""
        return self._require().feature_by_key.get(key)

    def feature_by_id(self, feature_id: str) -> FeatureRecord | None:
        """Return the feature with this ledger id."""
        return self._require().features.get(feature_id)

    def features(self) -> list[FeatureRecord]:
        """Return every feature, by key."""
        return sorted(self._require().feature_by_key.values(), key=lambda f: f.feature.key)

    def customer_of(self, entitlement: Entitlement) -> CustomerRecord | None:
        """Return the entitlement's customer."""
        state = self._require()
        found = _customer_by_key(state, entitlement.customer_key)
        return state.customer(found) if found is not None else None

    def grants_of(self, entitlement_id: str) -> list[Grant]:
        """Return the recorded grants of an entitlement."""
        state = self._require()
        slot = state.entitlements.get(entitlement_id)
        return list(state.grants(slot)) if slot is not None else []

    def entitlements_of(self, customer_key: str) -> list[Entitlement]:
        """Return every entitlement of a customer, oldest first."""
        state = self._require()
        found = [state.entitlement(s) for s in state.slots_of(customer_key)]
        return sorted(found, key=lambda e: (e.start, e.id))

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        """Return the entitlement with this ledger id."""
        state = self._require()
        slot = state.entitlements.get(entitlement_id)
        return state.entitlement(slot) if slot is not None else None

    def active_entitlement(
        self, customer_key: str, feature_key: str, at: datetime
    ) -> Entitlement | None:
        """Return the customer's entitlement to ``feature_key`` active at ``at``, if any.

        Should two be active (the ledger prevents it), the newest by (start, id) answers.
        """
        state = self._require()
        slot = _resolve_slot(state, customer_key, feature_key, micros(at), by_id=False)
        return state.entitlement(slot) if slot is not None else None

    def resolve(
        self, customer_key: str, id_or_feature_key: str, at: datetime
    ) -> Entitlement | None:
        """Resolve ``{entitlementIdOrFeatureKey}`` for a customer (spec §4.6): id, then key."""
        state = self._require()
        slot = _resolve_slot(state, customer_key, id_or_feature_key, micros(at))
        return state.entitlement(slot) if slot is not None else None

    # --- values -------------------------------------------------------------------------------

    def hot_body(
        self, who: str, entitlement_ref: str, now: int, *, by_subject: bool, v2: bool
    ) -> bytes | None:
        """Return the current value's JSON body for an access check, or None when not found.

        ``who`` is a subject key (``by_subject``: the /subjects routes, resolved as
        ``customer_by_subject``) or a customer key or id (as ``customer``); ``entitlement_ref``
        an entitlement id or feature key (as ``resolve`` at ``now``, here ``micros``). None
        sends the caller to the slow path, which answers the 404 problem. The HTTP fast lane
        calls this per request.
        """
        state = self._state
        if state is None:
            return None
        customer = state.by_subject.get(who) if by_subject else _customer_by(state, who)
        if customer is None:
            return None
        found = _resolve_slot(state, customer.key, entitlement_ref, now)
        return None if found is None else self._cached_body(found, now, v2)

    def body(self, entitlement: Entitlement, now: datetime, *, v2: bool) -> bytes:
        """Return the JSON body of the current value (v1 or v2): the hot path, from the cache."""
        return self._cached_body(self._slot(entitlement), micros(now), v2)

    def _cached_body(self, slot: _Slot, now: int, v2: bool) -> bytes:
        body = slot.body
        if body is None or not slot.answers(now) or (v2 and slot.tail is None):
            body = self._refresh(slot, now, v2)
        if v2 and slot.tail:
            return body[:-1] + slot.tail
        return body

    def value(
        self, entitlement: Entitlement, now: datetime, *, v2: bool = True
    ) -> EntitlementValue:
        """Return the current value: from the cached body while ``now`` stays inside its range.

        ``v2=False`` is for callers that do not read ``grant_balances`` (it may then be None):
        a slot whose v2 tail is not held still answers from its cached v1 body.
        """
        slot = self._slot(entitlement)
        body, tail = slot.body, slot.tail
        if body is None or not slot.answers(micros(now)) or (v2 and tail is None):
            value = self._compute(slot, now)
            if tail is None:  # held only for slots read through v2 (see ``_refresh``)
                slot.tail = None
            return value
        return _decode_value(body[:-1] + tail if v2 and tail else body, slot)

    def _slot(self, entitlement: Entitlement) -> _Slot:
        slot = self._require().entitlements.get(entitlement.id)
        if slot is None:
            raise LookupError(f"entitlement {entitlement.id} is not loaded")
        return slot

    def _refresh(self, slot: _Slot, now: int, v2: bool) -> bytes:
        # The v2 tail holds the grants' ids and balances: unique per slot (~90 bytes), so it is
        # kept only by slots read through v2 once (most checks are v1); the others drop it.
        keep_tail = v2 or slot.tail is not None
        self._compute(slot, instant(now))
        if not keep_tail:
            slot.tail = None
        if slot.body is None:  # pragma: no cover - _compute always fills it
            raise RuntimeError("no cached body after computing")
        return slot.body

    def _compute(self, slot: _Slot, now: datetime) -> EntitlementValue:
        state = self._require()
        # Each answer is computed once per change: records rebuilt for it are not kept (a check
        # that looked the entitlement up first still finds its record kept).
        entitlement = state.entitlement(slot, keep=False)
        grants = tuple(state.grant(g, entitlement.id, keep=False) for g in slot.grants)
        inputs = _usage_inputs(state, entitlement)
        value = _value(self.engine, state, entitlement, grants, now, inputs)
        # A metered value read at minute m answers every ``now`` in (m - 1min, m]; an activity
        # value read at ``now`` answers [now, valid_until).
        step = slot.step
        body = value_json(value, v2=True).encode()
        split = body.find(_GRANTS_SPLIT)
        slot.tail = b"" if split < 0 else body[split:]
        slot.lo = state.pool(micros(value.at) - step)
        until = value.valid_until
        slot.hi = None if until is None else state.pool(micros(until) - step)
        if slot.metered and _usage_from(state, inputs, value.at):
            slot.hi = slot.lo  # usage stamped ahead of ``at`` counts later: answer no other instant
        slot.body = state.pool(body if split < 0 else body[:split] + b"}")  # equal ones shared
        return value

    def value_at(self, entitlement: Entitlement, at: datetime) -> EntitlementValue:
        """Compute the value at any instant, bypassing the cache (the core rounds metered)."""
        state = self._require()
        slot = state.entitlements.get(entitlement.id)
        grants = state.grants(slot) if slot is not None else ()
        return _value(
            self.engine, state, entitlement, grants, at, _usage_inputs(state, entitlement)
        )

    def history(self, entitlement: Entitlement, window: HistoryWindow) -> BalanceHistory:
        """Compute a metered entitlement's balance history from memory."""
        state = self._require()
        aggregation, series = _usage_inputs(state, entitlement)
        if aggregation is None:
            raise ValueError(f"entitlement {entitlement.id} has no recorded meter")
        store = state.usage

        def usage(start: datetime, end: datetime, /) -> Decimal:
            return store.aggregate(aggregation, series, start, end)

        slot = state.entitlements.get(entitlement.id)
        grants = state.grants(slot) if slot is not None else ()
        return self.engine.history(entitlement, grants, aggregation, usage, window)

    def usage_inputs(self, entitlement: Entitlement) -> tuple[Aggregation | None, list[AnySeries]]:
        """Return the aggregation and usage series that count for an entitlement."""
        return _usage_inputs(self._require(), entitlement)

    def usage_store(self) -> UsageStore:
        """Return the usage store (for history windows)."""
        return self._require().usage


def _decode_value(body: bytes, slot: _Slot) -> EntitlementValue:
    """Rebuild the ``EntitlementValue`` a cached body was rendered from (numbers exact)."""
    data = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    lo, hi, step = slot.lo, slot.hi, slot.step
    balances = data.get("grantBalances")
    return EntitlementValue(
        at=instant(lo + step),
        has_access=data["hasAccess"],
        valid_until=None if hi is None else instant(hi + step),
        balance=data.get("balance"),
        usage=data.get("usage"),
        overage=data.get("overage"),
        total_available_grant_amount=data.get("totalAvailableGrantAmount"),
        grant_balances=balances,
        config=data.get("config"),
    )


def _resolve_slot(
    state: _State, customer_key: str, ref: str, at: int, *, by_id: bool = True
) -> _Slot | None:
    """Find a customer's entitlement by id, else by feature key active at ``at`` (``micros``).

    Should two be active (the ledger prevents it), the newest by (start, id) answers.
    """
    held = state.slots_of(customer_key)
    if by_id and len(ref) == 26 and looks_like_ulid(ref):
        slot = state.entitlements.get(ref)
        if slot is not None and slot in held:
            return slot
    found: _Slot | None = None
    for slot in held:
        key, start, end, _ = slot.index
        if (
            key == ref
            and start <= at
            and (end is None or at < end)
            and (found is None or (start, slot.id) > (found.index[1], found.id))
        ):
            found = slot
    return found


def _customer_by_key(state: _State, key: str) -> _Customer | None:
    found = state.by_subject.get(key)
    return found if found is not None and found.key == key else None


def _customer_by(state: _State, id_or_key: str) -> _Customer | None:
    """Return the customer with this key, else (a ULID) with this ledger id."""
    found = state.by_subject.get(id_or_key)
    if found is not None and found.key == id_or_key:
        return found
    return state.customers.get(id_or_key) if looks_like_ulid(id_or_key) else None


def _value(
    engine: ValueEngine,
    state: _State,
    entitlement: Entitlement,
    grants: tuple[Grant, ...],
    at: datetime,
    inputs: tuple[Aggregation | None, list[AnySeries]],
) -> EntitlementValue:
    """Compute an entitlement's value at ``at`` from its grants and usage ``inputs``."""
    aggregation, series = inputs
    store = state.usage

    def usage(start: datetime, end: datetime, /) -> Decimal:
        if aggregation is None:
            return ZERO
        return store.aggregate(aggregation, series, start, end)

    return engine.value(entitlement, grants, aggregation, usage, at)


def _usage_from(
    state: _State, inputs: tuple[Aggregation | None, list[AnySeries]], at: datetime
) -> bool:
    """Tell whether the view holds usage of the entitlement stamped at or after ``at``.

    A value at ``at`` leaves it out; it counts once the clock passes it, so such a value must
    not be cached for later instants (events stamped ahead of the sidecar's clock).
    """
    aggregation, series = inputs  # ``_usage_inputs`` of the entitlement
    if aggregation is None or not series:
        return False
    return state.usage.aggregate(Aggregation.COUNT, series, at, _FAR_FUTURE) > 0


def _usage_inputs(
    state: _State, entitlement: Entitlement
) -> tuple[Aggregation | None, list[AnySeries]]:
    feature = state.feature_by_key.get(entitlement.feature_key)
    if feature is None or feature.feature.meter_slug is None:
        return None, []
    meter = state.meter_by_slug.get(feature.feature.meter_slug)
    if meter is None:
        return None, []
    customer = _customer_by_key(state, entitlement.customer_key)
    subjects = (
        state.decoded.subject_keys(state.shapes, customer.packed, customer.key)
        if customer is not None
        else (entitlement.customer_key,)
    )
    series = state.usage.matching(
        meter.meter.slug, subjects, feature.feature.meter_group_by_filters
    )
    return meter.meter.aggregation, series


# --- applying changes and maintaining the indexes ----------------------------------------------


def _apply_change(state: _State, change: Change) -> None:
    if isinstance(change, UsageBucketState):
        if state.usage.put(change, state.pool):
            _forget_usage_of(state, change.meter_slug, change.subject)
    elif isinstance(change, Grant | Entitlement | CustomerRecord):
        _put_document(state, encode_record(change))
    elif isinstance(change, FeatureRecord):
        old_feature = state.features.get(change.id)
        _put_feature(state, change)
        keys = {change.feature.key} | ({old_feature.feature.key} if old_feature else set())
        _forget_where(state, lambda slot: slot.feature_key in keys)
    elif isinstance(change, MeterRecord):
        _put_meter(state, change)
        _forget_where(state, lambda _slot: True)
    elif isinstance(change, RecordRemoved):
        _remove(state, change)


def _put_document(state: _State, document: Mapping[str, Any]) -> None:
    """Index one read-contract document (customer, entitlement, grant, feature or meter)."""
    kind = document.get("kind")
    if kind == "entitlement":
        _put_entitlement(state, document)
    elif kind == "grant":
        _put_grant(state, document)
    elif kind == "customer":
        _put_customer(state, document)
    elif kind == "feature":
        _apply_change(state, decode_record(document))  # type: ignore[arg-type]
    elif kind == "meter":
        _put_meter(state, decode_record(document))  # type: ignore[arg-type]
    elif kind != "removed":  # a removed record is simply not among the current ones
        raise ValueError(f"unknown record kind {kind!r} in the read contract")


def _forget_usage_of(state: _State, meter_slug: str, subject: str) -> None:
    """Drop the cached answers a bucket of (meter, subject) may change."""
    customer = state.by_subject.get(subject)
    keys = (subject,) if customer is None else (customer.key, subject)
    for key in keys:
        for slot in state.slots_of(key):
            feature = state.feature_by_key.get(slot.feature_key)
            if slot.body is not None and (
                feature is None or feature.feature.meter_slug == meter_slug
            ):
                slot.body = None
                state.dropped.append(slot)


def _forget_customer(state: _State, customer: _Customer) -> None:
    _forget_keys(state, state.customer(customer).customer.all_subject_keys)


def _forget_keys(state: _State, keys: Iterable[str]) -> None:
    for key in keys:
        for slot in state.slots_of(key):
            slot.body = None


def _forget_where(state: _State, matches: Callable[[_Slot], bool]) -> None:
    for slot in state.entitlements.values():
        if matches(slot):
            slot.body = None


def _put_meter(state: _State, record: MeterRecord) -> None:
    if record.meter.aggregation in (Aggregation.SUM, Aggregation.COUNT):
        state.usage.plain_meters.add(record.meter.slug)
    else:
        state.usage.plain_meters.discard(record.meter.slug)
    old = state.meters.get(record.id)
    if old is not None and old.meter.slug != record.meter.slug:
        state.meter_by_slug.pop(old.meter.slug, None)
    state.meters[record.id] = record
    state.meter_by_slug[record.meter.slug] = record


def _put_feature(state: _State, record: FeatureRecord) -> None:
    old = state.features.get(record.id)
    if old is not None and old.feature.key != record.feature.key:
        state.feature_by_key.pop(old.feature.key, None)
    state.features[record.id] = record
    state.feature_by_key[record.feature.key] = record


def _hold_slots(state: _State, customer_key: str, slots: tuple[_Slot, ...]) -> None:
    """Make ``slots`` the entitlements held under a customer key (see ``_State.slots_of``)."""
    held = slots[0] if len(slots) == 1 else slots
    customer = state.by_subject.get(customer_key)
    if customer is not None and customer.key == customer_key:
        customer.slots = held
    elif slots:
        state.orphans[customer_key] = held
    else:
        state.orphans.pop(customer_key, None)


def _resolve_subject(state: _State, subject: str, customer: _Customer | None) -> None:
    """Resolve ``subject`` to ``customer`` (None: to nothing), the slots under it following."""
    slots = state.slots_of(subject)
    if slots:
        _hold_slots(state, subject, ())
    if customer is None:
        state.by_subject.pop(subject, None)
    else:
        state.by_subject[subject] = customer
    if slots:
        _hold_slots(state, subject, slots)


def _unindex_customer(state: _State, customer: _Customer) -> None:
    for subject in state.customer(customer).customer.all_subject_keys:
        if state.by_subject.get(subject) is customer:
            _resolve_subject(state, subject, None)


def _put_customer(state: _State, document: Mapping[str, Any]) -> None:
    old = state.customers.get(document["id"])
    if old is not None:
        _unindex_customer(state, old)
        _forget_customer(state, old)
    pool = state.pool
    key: str = pool(document["key"])
    customer = _Customer(document["id"], key, state.pack(document, "id", "key"))
    state.customers[customer.ident] = customer
    subjects = (key, *document["subjectKeys"])  # Customer.all_subject_keys, key first
    for subject in subjects:
        _resolve_subject(state, pool(subject), customer)
    if state.entitlements:  # answers of entitlements keyed by these strings may change
        _forget_keys(state, subjects)


def _put_entitlement(state: _State, document: Mapping[str, Any]) -> None:
    entitlement_id: str = document["id"]
    slot = state.entitlements.get(entitlement_id)
    if slot is None:
        slot = _Slot(entitlement_id, state.pending_grants.pop(entitlement_id, ()))
        state.entitlements[slot.ident] = slot
    else:
        _unindex_entitlement(state, slot)
        slot.body = None
    pool = state.pool
    start = document.get("activeFrom") or document["createdAt"]
    end = document.get("activeTo")
    slot.document = state.pack(document, "id")
    slot.index = pool(
        (
            pool(document["featureKey"]),
            pool(micros(parse_instant(start))),
            None if end is None else pool(micros(parse_instant(end))),
            document["type"] == EntitlementType.METERED.value,
        )
    )
    key: str = pool(document["customerKey"])
    _hold_slots(state, key, (*state.slots_of(key), slot))


def _unindex_entitlement(state: _State, slot: _Slot) -> None:
    key = state.entitlement(slot).customer_key
    _hold_slots(state, key, tuple(s for s in state.slots_of(key) if s is not slot))


def _without(
    state: _State, held: tuple[bytes, ...], entitlement_id: str, grant_id: str
) -> tuple[bytes, ...]:
    # A packed grant holds its id's characters as they are: only one containing them is rebuilt.
    text = grant_id.encode()
    return tuple(g for g in held if text not in g or state.grant(g, entitlement_id).id != grant_id)


def _put_grant(state: _State, document: Mapping[str, Any]) -> None:
    entitlement_id: str = document["entitlementId"]
    packed = state.pack(document, "entitlementId", always=("id",))  # searched by _without
    slot = state.entitlements.get(entitlement_id)
    held = slot.grants if slot is not None else state.pending_grants.get(entitlement_id, ())
    kept = _without(state, held, entitlement_id, document["id"]) if held else held
    state.grant_count += 1 - (len(held) - len(kept))
    if slot is None:
        state.pending_grants[entitlement_id] = (*kept, packed)
    else:
        slot.grants = (*kept, packed)
        slot.body = None


def _drop_grant(state: _State, grant_id: str) -> None:
    """Remove a grant wherever it is held (a rare change: a scan is fine)."""
    for slot in state.entitlements.values():
        kept = _without(state, slot.grants, slot.id, grant_id) if slot.grants else slot.grants
        if len(kept) != len(slot.grants):
            state.grant_count -= 1
            slot.grants = kept
            slot.body = None
    for entitlement_id, grants in list(state.pending_grants.items()):
        kept = _without(state, grants, entitlement_id, grant_id)
        if len(kept) != len(grants):
            state.grant_count -= 1
            if kept:
                state.pending_grants[entitlement_id] = kept
            else:
                del state.pending_grants[entitlement_id]


def _remove(state: _State, removed: RecordRemoved) -> None:
    if removed.kind == "entitlement":
        slot = state.entitlements.pop(removed.id, None)
        if slot is not None:
            _unindex_entitlement(state, slot)
            state.grant_count -= len(slot.grants)
    elif removed.kind == "grant":
        _drop_grant(state, removed.id)
    elif removed.kind == "customer":
        customer = state.customers.pop(removed.id, None)
        if customer is not None:
            _unindex_customer(state, customer)
            _forget_customer(state, customer)
    elif removed.kind == "feature":
        feature = state.features.pop(removed.id, None)
        if feature is not None:
            state.feature_by_key.pop(feature.feature.key, None)
            key = feature.feature.key
            _forget_where(state, lambda slot: slot.feature_key == key)
    elif removed.kind == "meter":
        meter = state.meters.pop(removed.id, None)
        if meter is not None:
            state.meter_by_slug.pop(meter.meter.slug, None)
            _forget_where(state, lambda _slot: True)
