"""The sidecar's in-memory view of one namespace: indexes, usage and cached values.

Role: hold what a ``LedgerSource`` loaded (customers, features, meters, entitlements with their
reset timelines, grants, usage buckets), keep it current by applying feed batches in commit
order (a new ``ledger_epoch`` means: reload), and answer lookups with dict accesses. Each
entitlement's ``EntitlementValue`` is cached with its ``valid_until``; it is recomputed by the
core lazily, when a query instant passes ``valid_until`` or after a change touched it (a usage
bucket of one of its subjects, a grant, the entitlement itself, its customer, feature or meter).
Usage increments from local ingestion enter through ``apply_usage`` as absolute bucket states,
so they are idempotent with the same states arriving later through the feed.

After a load the state is frozen from the cyclic garbage collector (``gc.freeze``), so a full
collection does not walk 10^5 entitlements.

It must not do I/O (the follower in ``sync`` fetches; this only applies), read the clock (every
method takes ``now``), or compute balances (``compute.ValueEngine`` does).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from allotment.ledger.core.history import BalanceHistory
from allotment.ledger.core.model import (
    Aggregation,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Grant,
)

from .compute import HistoryWindow, ValueEngine
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
)
from .usage import Series, UsageStore

__all__ = ["Counts", "View", "looks_like_ulid"]

MINUTE = timedelta(minutes=1)
_TICK = timedelta(microseconds=1)
ZERO = Decimal(0)
_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz")

WatchKey = tuple[str, str]  # (meter slug, subject)


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


@dataclass(slots=True)
class _Cached:
    """A value valid for query instants ``now`` with ``lo < now <= hi`` (minute-rounded rule)."""

    value: EntitlementValue
    lo: datetime
    hi: datetime | None


@dataclass
class _State:
    """Every index of one load, replaced wholesale on reload."""

    epoch: str
    contract_version: int
    position: int
    customers: dict[str, CustomerRecord] = field(default_factory=dict)  # id ->
    customer_by_key: dict[str, CustomerRecord] = field(default_factory=dict)
    customer_by_subject: dict[str, CustomerRecord] = field(default_factory=dict)
    features: dict[str, FeatureRecord] = field(default_factory=dict)  # id ->
    feature_by_key: dict[str, FeatureRecord] = field(default_factory=dict)
    meters: dict[str, MeterRecord] = field(default_factory=dict)  # id ->
    meter_by_slug: dict[str, MeterRecord] = field(default_factory=dict)
    entitlements: dict[str, Entitlement] = field(default_factory=dict)  # id ->
    by_customer_feature: dict[tuple[str, str], list[Entitlement]] = field(default_factory=dict)
    by_customer: dict[str, tuple[Entitlement, ...]] = field(default_factory=dict)
    grants: dict[str, tuple[Grant, ...]] = field(default_factory=dict)  # by entitlement id
    grant_owner: dict[str, str] = field(default_factory=dict)  # grant id -> entitlement id
    usage: UsageStore = field(default_factory=UsageStore)
    watchers: dict[WatchKey, tuple[str, ...]] = field(default_factory=dict)
    watching: dict[str, tuple[WatchKey, ...]] = field(default_factory=dict)
    cache: dict[str, _Cached] = field(default_factory=dict)


class View:
    """One namespace's ledger state in memory, with cached values."""

    def __init__(self, namespace: str, engine: ValueEngine, *, freeze_gc: bool = True) -> None:
        self.namespace = namespace
        self.engine = engine
        self.freeze_gc = freeze_gc
        self._state: _State | None = None
        self.loaded_at: datetime | None = None
        #: The wall-clock instant at which the view last knew it had every committed change.
        self.synced_at: datetime | None = None
        self.reloads = 0
        self.details: dict[str, str] = {}
        self.degraded: str | None = None

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
        if loaded.namespace != self.namespace:
            raise ValueError(f"loaded namespace {loaded.namespace!r}, serving {self.namespace!r}")
        self._check_contract(loaded.contract_version)
        if self.freeze_gc:
            gc.unfreeze()
        state = _State(loaded.epoch, loaded.contract_version, loaded.position)
        for meter in loaded.meters:
            _put_meter(state, meter)
        for feature in loaded.features:
            _put_feature(state, feature)
        for customer in loaded.customers:
            _put_customer(state, customer)
        for entitlement in loaded.entitlements:
            _put_entitlement(state, entitlement)
        for grant in loaded.grants:
            _put_grant(state, grant)
        for bucket in loaded.usage:
            state.usage.put(bucket)
        for entitlement in state.entitlements.values():
            _rewatch(state, entitlement.id)
        if self._state is not None:
            self.reloads += 1
        self._state = state
        self.details = dict(loaded.details)
        self.loaded_at = self.synced_at = now
        if self.freeze_gc:
            gc.collect()
            gc.freeze()

    def apply(self, batch: FeedBatch, now: datetime) -> bool:
        """Apply a feed batch; return False (applying nothing) when its epoch needs a reload."""
        state = self._require()
        if batch.epoch != state.epoch:
            return False
        self._check_contract(batch.contract_version)
        for change in batch.changes:
            self._apply_change(state, change)
        state.position = max(state.position, batch.position)
        state.contract_version = batch.contract_version
        self.synced_at = now
        return True

    def apply_usage(self, buckets: Iterable[UsageBucketState]) -> None:
        """Take bucket states committed by local ingestion (idempotent with the feed's)."""
        state = self._require()
        for bucket in buckets:
            self._apply_change(state, bucket)

    def mark_synced(self, now: datetime) -> None:
        """Record that a poll found nothing new: the view is current as of ``now``."""
        self.synced_at = now

    def age(self, now: datetime) -> timedelta | None:
        """Return how long ago the view was last known to be current (None before loading)."""
        return None if self.synced_at is None else max(now - self.synced_at, timedelta(0))

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

    def _apply_change(self, state: _State, change: Change) -> None:
        if isinstance(change, UsageBucketState):
            if state.usage.put(change):
                for entitlement_id in state.watchers.get((change.meter_slug, change.subject), ()):
                    state.cache.pop(entitlement_id, None)
        elif isinstance(change, Grant):
            _put_grant(state, change)
            state.cache.pop(change.entitlement_id, None)
        elif isinstance(change, Entitlement):
            _put_entitlement(state, change)
            _rewatch(state, change.id)
            state.cache.pop(change.id, None)
        elif isinstance(change, CustomerRecord):
            old = state.customers.get(change.id)
            _put_customer(state, change)
            self._touch(state, (e.id for e in state.by_customer.get(change.customer.key, ())))
            if old is not None and old.customer.key != change.customer.key:
                self._touch(state, (e.id for e in state.by_customer.get(old.customer.key, ())))
        elif isinstance(change, FeatureRecord):
            _put_feature(state, change)
            key = change.feature.key
            self._touch(state, (e.id for e in state.entitlements.values() if e.feature_key == key))
        elif isinstance(change, MeterRecord):
            _put_meter(state, change)
            slug = change.meter.slug
            self._touch(
                state,
                (
                    e.id
                    for e in state.entitlements.values()
                    if (f := state.feature_by_key.get(e.feature_key))
                    and f.feature.meter_slug == slug
                ),
            )
        elif isinstance(change, RecordRemoved):
            _remove(state, change)

    @staticmethod
    def _touch(state: _State, entitlement_ids: Iterable[str]) -> None:
        for entitlement_id in list(entitlement_ids):
            _rewatch(state, entitlement_id)
            state.cache.pop(entitlement_id, None)

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
            grants=len(state.grant_owner),
            usage_buckets=state.usage.bucket_count,
        )

    def customer_by_subject(self, subject: str) -> CustomerRecord | None:
        """Return the customer whose key or subject keys contain ``subject`` (DESIGN D5)."""
        return self._require().customer_by_subject.get(subject)

    def customer(self, id_or_key: str) -> CustomerRecord | None:
        """Return the customer with this key, or this ledger id."""
        state = self._require()
        found = state.customer_by_key.get(id_or_key)
        if found is None and looks_like_ulid(id_or_key):
            found = state.customers.get(id_or_key)
        return found

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
        return self._require().customer_by_key.get(entitlement.customer_key)

    def grants_of(self, entitlement_id: str) -> list[Grant]:
        """Return the recorded grants of an entitlement."""
        return list(self._require().grants.get(entitlement_id, ()))

    def entitlements_of(self, customer_key: str) -> list[Entitlement]:
        """Return every entitlement of a customer, oldest first."""
        found = self._require().by_customer.get(customer_key, ())
        return sorted(found, key=lambda e: (e.start, e.id))

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        """Return the entitlement with this ledger id."""
        return self._require().entitlements.get(entitlement_id)

    def active_entitlement(
        self, customer_key: str, feature_key: str, at: datetime
    ) -> Entitlement | None:
        """Return the customer's entitlement to ``feature_key`` active at ``at``, if any."""
        for entitlement in self._require().by_customer_feature.get((customer_key, feature_key), ()):
            if entitlement.is_active_at(at):
                return entitlement
        return None

    def resolve(
        self, customer_key: str, id_or_feature_key: str, at: datetime
    ) -> Entitlement | None:
        """Resolve ``{entitlementIdOrFeatureKey}`` for a customer (spec §4.6): id, then key."""
        if looks_like_ulid(id_or_feature_key):
            found = self._require().entitlements.get(id_or_feature_key)
            if found is not None and found.customer_key == customer_key:
                return found
        return self.active_entitlement(customer_key, id_or_feature_key, at)

    # --- values -------------------------------------------------------------------------------

    def value(self, entitlement: Entitlement, now: datetime) -> EntitlementValue:
        """Return the current value: cached while ``now`` stays inside its validity."""
        state = self._require()
        cached = state.cache.get(entitlement.id)
        if cached is not None and cached.lo < now and (cached.hi is None or now <= cached.hi):
            return cached.value
        value = self.value_at(entitlement, now)
        # A metered value read at minute m answers every ``now`` in (m - 1min, m]; an activity
        # value read at ``now`` answers [now, valid_until).
        step = MINUTE if entitlement.type is EntitlementType.METERED else _TICK
        state.cache[entitlement.id] = _Cached(
            value,
            value.at - step,
            None if value.valid_until is None else value.valid_until - step,
        )
        return value

    def value_at(self, entitlement: Entitlement, at: datetime) -> EntitlementValue:
        """Compute the value at any instant, bypassing the cache (the core rounds metered)."""
        state = self._require()
        aggregation, series = self._usage_inputs(state, entitlement)
        store = state.usage

        def usage(start: datetime, end: datetime, /) -> Decimal:
            if aggregation is None:
                return ZERO
            return store.aggregate(aggregation, series, start, end)

        grants = state.grants.get(entitlement.id, ())
        return self.engine.value(entitlement, grants, aggregation, usage, at)

    def history(self, entitlement: Entitlement, window: HistoryWindow) -> BalanceHistory:
        """Compute a metered entitlement's balance history from memory."""
        state = self._require()
        aggregation, series = self._usage_inputs(state, entitlement)
        if aggregation is None:
            raise ValueError(f"entitlement {entitlement.id} has no recorded meter")
        store = state.usage

        def usage(start: datetime, end: datetime, /) -> Decimal:
            return store.aggregate(aggregation, series, start, end)

        grants = state.grants.get(entitlement.id, ())
        return self.engine.history(entitlement, grants, aggregation, usage, window)

    def _usage_inputs(
        self, state: _State, entitlement: Entitlement
    ) -> tuple[Aggregation | None, list[Series]]:
        feature = state.feature_by_key.get(entitlement.feature_key)
        if feature is None or feature.feature.meter_slug is None:
            return None, []
        meter = state.meter_by_slug.get(feature.feature.meter_slug)
        customer = state.customer_by_key.get(entitlement.customer_key)
        if meter is None:
            return None, []
        subjects = customer.customer.all_subject_keys if customer else (entitlement.customer_key,)
        series = state.usage.matching(
            meter.meter.slug, subjects, feature.feature.meter_group_by_filters
        )
        return meter.meter.aggregation, series

    def usage_inputs(self, entitlement: Entitlement) -> tuple[Aggregation | None, list[Series]]:
        """Return the aggregation and usage series that count for an entitlement."""
        return self._usage_inputs(self._require(), entitlement)

    def usage_store(self) -> UsageStore:
        """Return the usage store (for history windows)."""
        return self._require().usage


# --- index maintenance (module-level so load and apply share them) ---------------------------


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


def _put_customer(state: _State, record: CustomerRecord) -> None:
    old = state.customers.get(record.id)
    if old is not None:
        state.customer_by_key.pop(old.customer.key, None)
        for subject in old.customer.all_subject_keys:
            if state.customer_by_subject.get(subject) is old:
                del state.customer_by_subject[subject]
    state.customers[record.id] = record
    state.customer_by_key[record.customer.key] = record
    for subject in record.customer.all_subject_keys:
        state.customer_by_subject[subject] = record


def _put_entitlement(state: _State, entitlement: Entitlement) -> None:
    old = state.entitlements.get(entitlement.id)
    if old is not None:
        _unindex_entitlement(state, old)
    state.entitlements[entitlement.id] = entitlement
    key = (entitlement.customer_key, entitlement.feature_key)
    siblings = [e for e in state.by_customer_feature.get(key, []) if e.id != entitlement.id]
    siblings.append(entitlement)
    siblings.sort(key=lambda e: (e.start, e.id), reverse=True)  # newest first
    state.by_customer_feature[key] = siblings
    others = state.by_customer.get(entitlement.customer_key, ())
    state.by_customer[entitlement.customer_key] = (
        *(e for e in others if e.id != entitlement.id),
        entitlement,
    )


def _unindex_entitlement(state: _State, entitlement: Entitlement) -> None:
    key = (entitlement.customer_key, entitlement.feature_key)
    remaining = [e for e in state.by_customer_feature.get(key, []) if e.id != entitlement.id]
    if remaining:
        state.by_customer_feature[key] = remaining
    else:
        state.by_customer_feature.pop(key, None)
    others = state.by_customer.get(entitlement.customer_key, ())
    kept = tuple(e for e in others if e.id != entitlement.id)
    if kept:
        state.by_customer[entitlement.customer_key] = kept
    else:
        state.by_customer.pop(entitlement.customer_key, None)


def _put_grant(state: _State, grant: Grant) -> None:
    previous_owner = state.grant_owner.get(grant.id)
    if previous_owner is not None and previous_owner != grant.entitlement_id:
        _drop_grant(state, previous_owner, grant.id)
        state.cache.pop(previous_owner, None)
    others = state.grants.get(grant.entitlement_id, ())
    state.grants[grant.entitlement_id] = (*(g for g in others if g.id != grant.id), grant)
    state.grant_owner[grant.id] = grant.entitlement_id


def _drop_grant(state: _State, entitlement_id: str, grant_id: str) -> None:
    kept = tuple(g for g in state.grants.get(entitlement_id, ()) if g.id != grant_id)
    if kept:
        state.grants[entitlement_id] = kept
    else:
        state.grants.pop(entitlement_id, None)


def _rewatch(state: _State, entitlement_id: str) -> None:
    """Recompute which (meter, subject) usage keys invalidate an entitlement's value."""
    for key in state.watching.pop(entitlement_id, ()):
        kept = tuple(e for e in state.watchers.get(key, ()) if e != entitlement_id)
        if kept:
            state.watchers[key] = kept
        else:
            state.watchers.pop(key, None)
    entitlement = state.entitlements.get(entitlement_id)
    if entitlement is None:
        return
    feature = state.feature_by_key.get(entitlement.feature_key)
    if feature is None or feature.feature.meter_slug is None:
        return
    customer = state.customer_by_key.get(entitlement.customer_key)
    subjects: Sequence[str] = (
        customer.customer.all_subject_keys if customer else (entitlement.customer_key,)
    )
    keys = tuple((feature.feature.meter_slug, s) for s in subjects)
    for key in keys:
        state.watchers[key] = (*state.watchers.get(key, ()), entitlement_id)
    state.watching[entitlement_id] = keys


def _remove(state: _State, removed: RecordRemoved) -> None:
    if removed.kind == "entitlement":
        entitlement = state.entitlements.pop(removed.id, None)
        if entitlement is not None:
            _unindex_entitlement(state, entitlement)
            _rewatch(state, removed.id)
            state.cache.pop(removed.id, None)
    elif removed.kind == "grant":
        owner = state.grant_owner.pop(removed.id, None)
        if owner is not None:
            _drop_grant(state, owner, removed.id)
            state.cache.pop(owner, None)
    elif removed.kind == "customer":
        record = state.customers.pop(removed.id, None)
        if record is not None:
            state.customer_by_key.pop(record.customer.key, None)
            for subject in record.customer.all_subject_keys:
                if state.customer_by_subject.get(subject) is record:
                    del state.customer_by_subject[subject]
    elif removed.kind == "feature":
        feature = state.features.pop(removed.id, None)
        if feature is not None:
            state.feature_by_key.pop(feature.feature.key, None)
    elif removed.kind == "meter":
        meter = state.meters.pop(removed.id, None)
        if meter is not None:
            state.meter_by_slug.pop(meter.meter.slug, None)
