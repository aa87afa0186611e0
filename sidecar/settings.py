"""The sidecar's configuration: one frozen settings object per process, built once.

Role: hold what the sidecar process was told (ledger URL, namespace, listen addresses, staleness
budget, poll interval) as typed values, and parse the textual forms the command line accepts
(``127.0.0.1:8888``, ``5s``, ``250ms``).

It must not read the environment or argv (only ``allotment.cli.sidecar`` does), nor hold clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_STALENESS_BUDGET",
    "SidecarSettings",
    "parse_address",
    "parse_duration",
]

#: Past this age (time since the view last confirmed it had every ledger change) answers are
#: stale and each feature's ``whenStale`` decides (DESIGN D7).
DEFAULT_STALENESS_BUDGET = timedelta(seconds=5)
#: How often the view polls the change feed; NOTIFY only wakes it earlier.
DEFAULT_POLL_INTERVAL = timedelta(milliseconds=200)

_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class SidecarSettings:
    """Everything a sidecar process needs to know, as typed values."""

    database_url: str
    namespace: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8888
    probe_host: str = "0.0.0.0"
    probe_port: int | None = 8889
    staleness_budget: timedelta = DEFAULT_STALENESS_BUDGET
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL
    #: Flip ``/readyz`` to 503 past the staleness budget (opt-in, DESIGN D7).
    ready_requires_fresh: bool = False


def parse_duration(text: str) -> timedelta:
    """Parse ``5s``, ``250ms``, ``2m``, ``1h`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 5s, 250ms, 2m or 1h")
    seconds = float(match.group("number")) * _UNITS[match.group("unit") or "s"]
    return timedelta(seconds=seconds)


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:8888``) into a host and a port."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8888")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} in {text!r} is out of range")
    return host.strip("[]"), number
