"""The burn-down engine: balances, usage and overage of a metered entitlement (spec §8).

Role: replay a metered entitlement from measureUsageFrom, or from a ``BalanceSnapshot``, up to an
instant. Between instants at which something happens (a reset, a grant activating, expiring,
being voided or recurring) usage burns the active grants in burn-down order; overage is carried
within a period and absorbed first by grants that activate or refill later; at each reset grants
roll over (``min(max, max(min, b))``) and overage is forgiven or, when preserved, burnt from the
rolled balances. LATEST meters restore every active grant to its amount at each phase start and
UNIQUE_COUNT usage is ``U(periodStart, to) − U(periodStart, from)`` (§2.2).

The state after an instant has *everything* at that instant applied, so a snapshot taken at any
instant can be resumed; reading at a grant's effectiveAt shows its full amount.

Must not: read the clock, log, or do I/O. Usage comes from the ``UsageQuery`` the caller passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .grants import active_end, burn_order, grant_is_active_at
from .model import Aggregation, BalanceSnapshot, Entitlement, Grant, UsageQuery
from .periods import (
    current_period,
    next_after,
    preserve_overage_for_reset,
    reset_schedule,
)
from .timeutil import is_minute_aligned, require_utc

__all__ = [
    "GrantUsage",
    "RunResult",
    "Segment",
    "burn",
    "relevant_grants",
    "run",
    "starting_snapshot",
]

ZERO = Decimal(0)
_BEGINNING = datetime.min.replace(tzinfo=UTC)
_NEVER = datetime.max.replace(tzinfo=UTC)
_NO_REFILLS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GrantUsage:
    """How much one grant paid for within a segment."""

    grant_id: str
    usage: Decimal


@dataclass(frozen=True)
class Segment:
    """One segment of the burn-down history (spec §9 ``burndownHistory``).

    A phase ``[start, end)`` in which the active grants do not change, or a zero-length
    ``rollover`` segment ``[r, r]`` at a reset whose grant usages are the preserved-overage burn.
    ``overage`` is the overage at the segment's end; balances cover the grants active in it.
    """

    start: datetime
    end: datetime
    usage: Decimal
    overage: Decimal
    balance_at_start: Decimal
    grant_balances_at_start: Mapping[str, Decimal]
    balance_at_end: Decimal
    grant_balances_at_end: Mapping[str, Decimal]
    grant_usages: tuple[GrantUsage, ...]
    terminated_by_reset: bool = False
    rollover: bool = False


@dataclass(frozen=True)
class RunResult:
    """The engine state at the end instant and, when requested, the segments walked."""

    snapshot: BalanceSnapshot
    segments: tuple[Segment, ...] = ()
    next_reset: datetime | None = None  # the first period start after the end instant


def burn(
    balances: dict[str, Decimal], ordered: Sequence[Grant], amount: Decimal
) -> tuple[Decimal, dict[str, Decimal]]:
    """Burn ``amount`` from ``balances`` in order; return (uncovered amount, usage per grant).

    Mutates ``balances``. Spec §8.4 ``Burn``: exhausted grants drop to 0, the first grant that
    covers the rest keeps the difference. A negative amount adds to the first grant with a
    non-zero balance, as OpenMeter does.
    """
    used: dict[str, Decimal] = {}
    remaining = amount
    for grant in ordered:
        if remaining == 0:
            break
        current = balances.get(grant.id, ZERO)
        if current == 0:
            continue
        if current <= remaining:
            balances[grant.id] = ZERO
            used[grant.id] = used.get(grant.id, ZERO) + current
            remaining -= current
        else:
            balances[grant.id] = current - remaining
            used[grant.id] = used.get(grant.id, ZERO) + remaining
            remaining = ZERO
    return remaining, used


def relevant_grants(grants: Iterable[Grant], start: datetime, end: datetime) -> tuple[Grant, ...]:
    """Return, in burn-down order, the grants active at some instant of ``[start, end]``."""
    chosen = []
    for grant in grants:
        finish = active_end(grant)
        if grant.effective_at > end or grant.effective_at == finish:
            continue
        if finish is not None and finish <= start:
            continue
        chosen.append(grant)
    return burn_order(chosen)


def starting_snapshot(entitlement: Entitlement, grants: Iterable[Grant]) -> BalanceSnapshot:
    """Return the state at measureUsageFrom: each grant active then holds its amount (§8.2)."""
    start = _measure_from(entitlement)
    balances = {g.id: g.amount for g in grants if grant_is_active_at(g, start)}
    return BalanceSnapshot(at=start, period_start=start, balances=balances)


def _measure_from(entitlement: Entitlement) -> datetime:
    if entitlement.measure_usage_from is None or not entitlement.usage_period:
        raise ValueError(f"entitlement {entitlement.id} is not metered: no usage period")
    return entitlement.measure_usage_from


def _recurrences(grant: Grant, after: datetime, until: datetime) -> list[datetime]:
    """Return the grant's refill instants in ``(after, until]`` at which it is active."""
    if grant.recurrence is None:
        return []
    lower = max(after, grant.effective_at - timedelta(microseconds=1))
    found = []
    instant = next_after(grant.recurrence, lower, inclusive=False)
    while instant <= until and grant_is_active_at(grant, instant):
        found.append(instant)
        instant = next_after(grant.recurrence, instant, inclusive=False)
    return found


class _Replay:
    """Mutable working state of one ``run`` call (never escapes it)."""

    def __init__(
        self,
        entitlement: Entitlement,
        grants: tuple[Grant, ...],
        aggregation: Aggregation,
        usage: UsageQuery,
        start: BalanceSnapshot,
        record: bool,
    ) -> None:
        self.entitlement = entitlement
        self.grants = grants
        self.aggregation = aggregation
        self.usage_query = usage
        self.record = record
        self.at = start.at
        self.period_start = start.period_start
        self.windows = {g.id: (g.effective_at, active_end(g)) for g in grants}
        self.starts = frozenset(g.effective_at for g in grants)
        self.balances: dict[str, Decimal] = dict(start.balances)
        tracked = set(self.windows)
        for gid in self.balances:
            if gid not in tracked:
                self.balances[gid] = ZERO  # never active again: nothing left to burn
        for grant in grants:
            if grant.id not in self.balances:
                active = self.is_active(grant, start.at)
                self.balances[grant.id] = grant.amount if active else ZERO
        self.overage = start.overage
        self.usage = start.usage
        self.total_grant_usage = start.total_grant_usage
        self.segments: list[Segment] = []
        self.pending_usages: dict[str, Decimal] = {}
        # the grants active in [lo, hi) (hi None: open-ended); starts empty and invalid
        self._active: tuple[datetime, datetime | None, tuple[Grant, ...]] = (_NEVER, None, ())

    # -- helpers --

    def is_active(self, grant: Grant, instant: datetime) -> bool:
        effective, end = self.windows[grant.id]
        return effective <= instant and (end is None or instant < end)

    def active_at(self, instant: datetime) -> tuple[Grant, ...]:
        """Return the grants active at ``instant``, in burn-down order.

        The set is remembered with the window ``[lo, hi)`` between the nearest grant edges
        around ``instant``, inside which no grant starts or ends: replaying resets between two
        grant edges asks for it once.
        """
        lo, hi, active = self._active
        if lo <= instant and (hi is None or instant < hi):
            return active
        lo, hi = _BEGINNING, None
        chosen = []
        for grant in self.grants:
            effective, end = self.windows[grant.id]
            if instant < effective:
                hi = effective if hi is None else min(hi, effective)
            elif end is not None and end <= instant:
                lo = max(lo, end)
            else:
                lo = max(lo, effective)
                chosen.append(grant)
                if end is not None:
                    hi = end if hi is None else min(hi, end)
        self._active = (lo, hi, tuple(chosen))
        return self._active[2]

    def _burn(self, ordered: Sequence[Grant], extra: Decimal) -> dict[str, Decimal]:
        self.overage, used = burn(self.balances, ordered, extra + self.overage)
        if used:
            self.total_grant_usage += sum(used.values(), ZERO)
        return used

    def _balances_of(self, grants: Sequence[Grant]) -> dict[str, Decimal]:
        return {g.id: self.balances.get(g.id, ZERO) for g in grants}

    def _query(self, start: datetime, end: datetime) -> Decimal:
        if self.aggregation is Aggregation.UNIQUE_COUNT:
            before = self.usage_query(self.period_start, start)
            return self.usage_query(self.period_start, end) - before
        return self.usage_query(start, end)

    # -- the steps --

    def settle(self, instant: datetime) -> None:
        """Phase start: LATEST restores amounts; carried overage burns the active grants."""
        if self.overage == 0 and self.aggregation is not Aggregation.LATEST:
            return  # nothing to restore, nothing to burn
        active = self.active_at(instant)
        if self.aggregation is Aggregation.LATEST:
            for grant in active:
                self.balances[grant.id] = grant.amount
        if self.overage != 0:
            used = self._burn(active, ZERO)
            for gid, amount in used.items():
                self.pending_usages[gid] = self.pending_usages.get(gid, ZERO) + amount

    def phase(self, start: datetime, end: datetime, reset_at_end: bool) -> None:
        """Burn the usage of ``[start, end)`` from the grants active at ``start``."""
        active = self.active_at(start)
        before = self._balances_of(active) if self.record else {}
        amount = self._query(start, end)
        self.usage += amount
        used = self._burn(active, amount) if amount != 0 or self.overage != 0 else {}
        if self.record:
            for gid, value in self.pending_usages.items():
                used[gid] = used.get(gid, ZERO) + value
            start_balances = {
                gid: before[gid] + self.pending_usages.get(gid, ZERO) for gid in before
            }
            after = self._balances_of(active)
            self.segments.append(
                Segment(
                    start=start,
                    end=end,
                    usage=amount,
                    overage=self.overage,
                    balance_at_start=sum(start_balances.values(), ZERO),
                    grant_balances_at_start=start_balances,
                    balance_at_end=sum(after.values(), ZERO),
                    grant_balances_at_end=after,
                    grant_usages=tuple(GrantUsage(g, u) for g, u in sorted(used.items())),
                    terminated_by_reset=reset_at_end,
                )
            )
        if self.pending_usages:
            self.pending_usages = {}

    def reset(self, instant: datetime) -> None:
        """Roll over the grants active at ``instant``; forgive or burn the carried overage."""
        survivors = [g for g in self.active_at(instant) if g.effective_at < instant]
        for grant in survivors:
            balance = self.balances.get(grant.id, ZERO)
            self.balances[grant.id] = min(
                grant.rollover_cap, max(grant.min_rollover_amount, balance)
            )
        carried = ZERO
        if self.overage != 0 and preserve_overage_for_reset(self.entitlement, instant):
            carried = self.overage
        before = self._balances_of(survivors) if self.record else {}
        self.usage = ZERO
        self.total_grant_usage = ZERO
        self.overage = ZERO
        self.period_start = instant
        used = self._burn(survivors, carried) if carried != 0 else {}
        if self.record:
            after = self._balances_of(survivors)
            self.segments.append(
                Segment(
                    start=instant,
                    end=instant,
                    usage=ZERO,
                    overage=self.overage,
                    balance_at_start=sum(before.values(), ZERO),
                    grant_balances_at_start=before,
                    balance_at_end=sum(after.values(), ZERO),
                    grant_balances_at_end=after,
                    grant_usages=tuple(GrantUsage(g, u) for g, u in sorted(used.items())),
                    rollover=True,
                )
            )

    def apply(self, instant: datetime, is_reset: bool, refills: AbstractSet[str]) -> None:
        """Apply everything that happens at ``instant``, then settle."""
        if len(self.active_at(instant)) < len(self.grants):  # some grant is inactive: zero it
            for grant in self.grants:
                if not self.is_active(grant, instant):
                    self.balances[grant.id] = ZERO
        if is_reset:
            self.reset(instant)
        if refills or instant in self.starts:
            for grant in self.grants:
                starts = grant.id in refills or grant.effective_at == instant
                if starts and self.is_active(grant, instant):
                    self.balances[grant.id] = grant.amount
        self.settle(instant)
        self.at = instant

    def snapshot(self) -> BalanceSnapshot:
        return BalanceSnapshot(
            at=self.at,
            period_start=self.period_start,
            balances=dict(self.balances),
            overage=self.overage,
            usage=self.usage,
            total_grant_usage=self.total_grant_usage,
        )


def run(
    entitlement: Entitlement,
    grants: Iterable[Grant],
    aggregation: Aggregation,
    usage: UsageQuery,
    until: datetime,
    *,
    start: BalanceSnapshot | None = None,
    record: bool = False,
) -> RunResult:
    """Replay the entitlement up to the minute-aligned instant ``until`` (spec §8.2-8.4).

    ``grants`` are all grants of the entitlement, default grants included (see
    ``grants.with_default_grants``). ``start`` resumes from a snapshot instead of
    measureUsageFrom (a snapshot is never valid for LATEST meters, which depend on where phases
    begin). The resulting snapshot holds the balance of every grant, including inactive ones at 0;
    its ``at`` is ``until`` with everything at ``until`` applied.
    """
    until = require_utc(until)
    if not is_minute_aligned(until):
        raise ValueError(f"until {until.isoformat()} is not on a minute boundary")
    measure_from = _measure_from(entitlement)
    all_grants = tuple(grants)
    if start is None and not record and measure_from <= until:
        single = _single_phase(entitlement, all_grants, aggregation, usage, until, measure_from)
        if single is not None:
            return single
    if start is None:
        start = starting_snapshot(entitlement, all_grants)
        fresh = True
    else:
        fresh = False
        if aggregation is Aggregation.LATEST:
            raise ValueError("snapshots cannot be used with LATEST meters")
    if until < start.at:
        raise ValueError(f"until {until.isoformat()} is before the start {start.at.isoformat()}")
    chosen = relevant_grants(all_grants, start.at, until)
    replay = _Replay(entitlement, chosen, aggregation, usage, start, record)
    timeline = entitlement.usage_period
    if fresh:
        # an entry's start always starts a period: no arithmetic for the common case
        if measure_from != timeline[0].start:
            replay.period_start = current_period(timeline, measure_from).start
        replay.settle(start.at)

    reset_list, next_reset = reset_schedule(timeline, start.at, until)
    resets = set(reset_list)
    instants: set[datetime] = set(resets)
    refills: dict[datetime, set[str]] = {}
    for grant in chosen:
        for edge in (grant.effective_at, active_end(grant)):
            if edge is not None and start.at < edge <= until:
                instants.add(edge)
        for refill in _recurrences(grant, start.at, until):
            instants.add(refill)
            refills.setdefault(refill, set()).add(grant.id)

    cursor = start.at
    for instant in sorted(instants):
        is_reset = instant in resets
        replay.phase(cursor, instant, is_reset)
        replay.apply(instant, is_reset, refills.get(instant, _NO_REFILLS))
        cursor = instant
    if cursor < until:
        replay.phase(cursor, until, False)
        replay.at = until
    return RunResult(replay.snapshot(), tuple(replay.segments), next_reset)


def _single_phase(
    entitlement: Entitlement,
    grants: tuple[Grant, ...],
    aggregation: Aggregation,
    usage: UsageQuery,
    until: datetime,
    measure_from: datetime,
) -> RunResult | None:
    """Return what a fresh ``run`` returns when nothing happens in ``(measureFrom, until]``.

    That is: every grant is active from measureUsageFrom through ``until`` and never refills,
    and no period starts in between, so the replay is one phase from measureUsageFrom: the
    grants start full, the phase's usage burns them in burn-down order. The arithmetic is the
    replay's own, step for step (``_Replay.phase``); None when the case is not this one.
    """
    for grant in grants:
        if grant.recurrence is not None or grant.effective_at > measure_from:
            return None
        if grant.expiration is not None or grant.void_at is not None:
            end = active_end(grant)
            if end is not None and end <= until:
                return None
    timeline = entitlement.usage_period
    resets, next_reset = reset_schedule(timeline, measure_from, until)
    if resets:
        return None
    period_start = measure_from
    if measure_from != timeline[0].start:
        period_start = current_period(timeline, measure_from).start
    balances = {g.id: g.amount for g in grants}
    ordered = burn_order(grants)
    if aggregation is Aggregation.LATEST:  # ``settle``: the phase starts from full amounts
        for grant in ordered:
            balances[grant.id] = grant.amount
    overage = total_grant_usage = spent = ZERO
    if measure_from < until:
        if aggregation is Aggregation.UNIQUE_COUNT:
            amount = usage(period_start, until) - usage(period_start, measure_from)
        else:
            amount = usage(measure_from, until)
        spent += amount
        if amount != 0:
            overage, used = burn(balances, ordered, amount + overage)
            if used:
                total_grant_usage += sum(used.values(), ZERO)
    snapshot = BalanceSnapshot(
        at=until,
        period_start=period_start,
        balances=dict(balances),
        overage=overage,
        usage=spent,
        total_grant_usage=total_grant_usage,
    )
    return RunResult(snapshot, (), next_reset)
