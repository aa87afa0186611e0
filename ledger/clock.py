"""Clocks: the one place a process reads the time.

The pure core never reads a clock; the operator, the sidecar and ``allotment dev`` take a
``Clock`` and pass ``now`` down. ``SystemClock`` is wall time; ``StartedClock`` starts at a
chosen instant and then advances with the monotonic clock, which makes examples and simulations
reproducible (``allotment dev --now 2026-01-01T00:00:00Z``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current instant as an aware UTC datetime."""

    def now(self) -> datetime:
        """Return the current instant."""
        ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        """Return the current wall-clock instant."""
        return datetime.now(UTC)


@dataclass
class StartedClock:
    """A clock that reads ``start`` when created and then advances in real time."""

    start: datetime
    _origin: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("StartedClock needs an aware datetime")

    def now(self) -> datetime:
        """Return ``start`` plus the time elapsed since the clock was created."""
        elapsed = timedelta(seconds=time.monotonic() - self._origin)
        return self.start.astimezone(UTC) + elapsed
