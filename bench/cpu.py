"""CPU accounting for the benchmarks: process and core time over an interval, from ``/proc``.

Role: say where the CPU went during an attack, independently of the load generator: the
server's CPU seconds per request (``/proc/PID/stat`` utime + stime, every thread of the
process), the background writer's and the generator's share of their core, and how busy each
core was (``/proc/stat``, everyone's processes included: the box is shared). Parsing is kept
in pure functions (``process_ticks``, ``core_ticks``) so a test can feed them real lines.

It must not signal, renice or otherwise touch the processes it watches; it only reads ``/proc``.
Linux only: elsewhere every reading is ``None`` and the benchmarks print ``null``.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLOCK_TICKS",
    "CoreTicks",
    "Interval",
    "Reading",
    "Snapshot",
    "core_ticks",
    "process_seconds",
    "process_ticks",
    "rusage_seconds",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_ticks(stat_line: str) -> int:
    """Return utime + stime (clock ticks) from one ``/proc/PID/stat`` line.

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself,
    so fields are counted from the last ``)``: utime and stime are fields 14 and 15.
    """
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field k is rest[k - 3]
    return int(rest[11]) + int(rest[12])


@dataclass(frozen=True)
class CoreTicks:
    """One core's busy and total clock ticks since boot (``/proc/stat``)."""

    busy: int
    total: int


def core_ticks(proc_stat: str) -> dict[int, CoreTicks]:
    """Return each core's ticks from ``/proc/stat``: busy is everything but idle and iowait.

    guest and guest_nice are already counted in user and nice, so they are left out of the
    total.
    """
    cores: dict[int, CoreTicks] = {}
    for line in proc_stat.splitlines():
        name, _, values = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal
        fields = [int(v) for v in values.split()[:8]]
        total = sum(fields)
        cores[int(name[3:])] = CoreTicks(busy=total - fields[3] - fields[4], total=total)
    return cores


def process_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) ``pid`` has used, or None if it is gone."""
    try:
        return process_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def rusage_seconds(usage: resource.struct_rusage) -> float:
    """User + system CPU seconds of a reaped child (``os.wait4``)."""
    return usage.ru_utime + usage.ru_stime


def _cores() -> dict[int, CoreTicks]:
    try:
        return core_ticks(Path("/proc/stat").read_text())
    except OSError:
        return {}


@dataclass(frozen=True)
class Reading:
    """CPU seconds each named process used (None: gone or unnamed) and each core's busy share."""

    cpu_seconds: dict[str, float | None]
    core_busy: dict[str, float]


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds of named processes and every core's ticks at one wall-clock instant."""

    at_ns: int
    seconds: dict[str, float | None]
    cores: dict[int, CoreTicks]

    @classmethod
    def take(cls, pids: Mapping[str, int | None]) -> Snapshot:
        """Read ``/proc`` now (a None pid, or a process gone, reads as None)."""
        seconds = {name: process_seconds(pid) if pid else None for name, pid in pids.items()}
        return cls(time.time_ns(), seconds, _cores())

    def until(self, later: Snapshot) -> Reading:
        """CPU seconds per process and busy share per core from this snapshot to ``later``."""
        used: dict[str, float | None] = {}
        for name, before in self.seconds.items():
            after = later.seconds.get(name)
            used[name] = None if before is None or after is None else round(after - before, 3)
        busy: dict[str, float] = {}
        for core, start in self.cores.items():
            end = later.cores.get(core)
            if end is not None and end.total > start.total:
                busy[f"core{core}"] = round((end.busy - start.busy) / (end.total - start.total), 3)
        return Reading(used, busy)


class Interval:
    """CPU used by named processes, and each core's busy share, between ``__init__`` and ``end``."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        """Take the first readings of ``pids`` (a None pid is reported as None)."""
        self._pids = dict(pids)
        self._start = Snapshot.take(pids)

    def end(self) -> Reading:
        """Take the second readings; return CPU seconds per process and busy share per core."""
        return self._start.until(Snapshot.take(self._pids))
