"""One operator-wide loop keeping Entitlements' ``status.value`` current, rate-limited.

Role: every interval (at least twice the last pass's duration, so the loop is busy at most a
third of the time), read the values of every recorded Entitlement from the ledger, 200 per read
transaction, and patch ``status.value`` (hasAccess, balance, usage, overage, asOf) and
``status.currentUsagePeriod`` (the period containing asOf, by the core's period arithmetic) only
where a field a user acts on moved or the period rolled over, at most N patches a second. It also records the Orphan markers of
deletions the ledger missed. The sidecar remains the answer; this is for ``kubectl get ent``.

Must not: compute values or periods (the ledger does) or patch anything but ``status.value``
and ``status.currentUsagePeriod``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from allotment.operator import handlers, status
from allotment.operator.kinds import ENTITLEMENT
from allotment.operator.ports import LedgerUnavailableError
from allotment.operator.runtime import Runtime

logger = logging.getLogger(__name__)
Ref = tuple[str, str]


CHUNK = 200  # Entitlements per read transaction


async def _read(runtime: Runtime, refs: list[tuple[str, str]]) -> Mapping[Ref, Mapping[str, Any]]:
    try:
        async with asyncio.timeout(runtime.settings.ledger_timeout_seconds):
            return await asyncio.to_thread(runtime.ledger.values, refs, runtime.clock())
    except TimeoutError as error:
        raise LedgerUnavailableError("the ledger did not answer the value refresh") from error


async def refresh_once(runtime: Runtime) -> int:
    """Refresh every tracked Entitlement once, a chunk per transaction; return how many moved."""
    index = runtime.entitlements.values
    refs = sorted(index)
    pause = 1.0 / runtime.settings.value_patches_per_second
    patched = 0
    for start in range(0, len(refs), CHUNK):
        chunk = refs[start : start + CHUNK]
        values = await _read(runtime, chunk)
        for ref in chunk:
            new = values.get(ref)
            if new is None or ref not in index or not status.refresh_moved(index[ref], new):
                continue
            namespace, name = ref
            await runtime.kube.patch_status(ENTITLEMENT.plural, namespace, name, dict(new))
            index[ref] = new
            patched += 1
            await asyncio.sleep(pause)
    return patched


async def refresh_forever(runtime: Runtime, stop: asyncio.Event) -> None:
    """Run ``refresh_once`` every interval until ``stop`` is set; never crash the operator."""
    while not stop.is_set():
        began = time.monotonic()
        await handlers.record_pending_orphans(runtime)
        try:
            patched = await refresh_once(runtime)
            if patched:
                logger.info("Refreshed the value of %d Entitlement(s)", patched)
        except Exception as error:  # keep the loop alive across ledger or API blips
            logger.warning("Entitlement value refresh failed: %s", error)
        # Busy at most a third of the time, however many Entitlements there are.
        pause = max(runtime.settings.value_refresh_seconds, 2 * (time.monotonic() - began))
        # asyncio.timeout: on Python 3.11 wait_for can swallow the shutdown cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await stop.wait()
