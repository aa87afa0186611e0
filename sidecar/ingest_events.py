"""Parsing usage events at the sidecar's boundary: CloudEvents 1.0 bodies into ``IncomingEvent``.

Role: turn the body of ``POST /api/v1/events`` into storage's ``IncomingEvent`` values, once,
with the rules of DESIGN D9 and OpenMeter's ingest endpoint (reference/openmeter-api.md §5):
``application/cloudevents+json`` carries one event, ``application/cloudevents-batch+json`` an
array, ``application/json`` either; any other content type is refused. Each event needs a
non-empty string ``id``, ``source``, ``type`` and ``subject``, ``specversion`` ``"1.0"``, an
optional RFC 3339 ``time`` (absent or null: stamped with ``now``, the app clock's instant) that
is not older than the horizon, an optional ``datacontenttype`` that must be ``application/json``,
and ``data`` that is a JSON object (absent or null: ``{}``, as a COUNT meter needs nothing
more). Numbers are read as exact ``Decimal`` (never floats); ``NaN`` and ``Infinity`` are not
JSON and are refused. The first invalid event makes the whole body invalid, naming its index
(batches are atomic).

It must not touch the ledger, the view or the clock (``now`` is a parameter).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339
from allotment.ledger.storage.usage import IncomingEvent

__all__ = [
    "BATCH",
    "CONTENT_TYPES",
    "SINGLE",
    "InvalidBodyError",
    "InvalidEventError",
    "parse_events",
]

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
CONTENT_TYPES = (SINGLE, BATCH, JSON)
#: The ledger's column width for ids, sources, types and subjects.
MAX_ATTRIBUTE_LENGTH = 253
_REQUIRED = ("id", "source", "type", "subject")


class InvalidBodyError(ValueError):
    """The body as a whole is not an event or a batch of events (wrong type, not JSON)."""


class InvalidEventError(ValueError):
    """One event of the body is not a valid usage event; ``index`` is its place in the body."""

    def __init__(self, index: int, field: str, reason: str) -> None:
        super().__init__(f"event {index}: {reason}")
        self.index = index
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class _Limits:
    now: datetime
    oldest: datetime
    horizon: timedelta


def media_type(content_type: str) -> str:
    """Return the media type of a Content-Type header, lower-cased, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def _refuse_constant(name: str) -> Any:
    raise InvalidBodyError(f"the body is not JSON: {name} is not a JSON number")


def parse_events(
    body: bytes, content_type: str, *, now: datetime, horizon: timedelta
) -> list[IncomingEvent]:
    """Parse a request body into events; raise ``InvalidBodyError`` or ``InvalidEventError``."""
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        shown = kind or "none"
        raise InvalidBodyError(
            f"content type {shown} is not accepted: send {SINGLE} (one event), {BATCH} (an "
            f"array of events) or {JSON} (either)"
        )
    try:
        document = json.loads(body, parse_float=Decimal, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise InvalidBodyError("the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise InvalidBodyError(f"the body is not JSON: {error}") from None
    if kind == BATCH and not isinstance(document, list):
        raise InvalidBodyError(f"{BATCH} must be a JSON array of CloudEvents")
    if kind == SINGLE and not isinstance(document, dict):
        raise InvalidBodyError(f"{SINGLE} must be one CloudEvent, a JSON object")
    if not isinstance(document, list | dict):
        raise InvalidBodyError("the body must be a CloudEvent object or an array of them")
    raw: Sequence[Any] = document if isinstance(document, list) else [document]
    limits = _Limits(now, now - horizon, horizon)
    return [_event(index, item, limits) for index, item in enumerate(raw)]


def _string(index: int, event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if value is None:
        raise InvalidEventError(index, name, f"{name} is required (a non-empty string)")
    if not isinstance(value, str) or not value:
        raise InvalidEventError(index, name, f"{name} must be a non-empty string")
    if len(value) > MAX_ATTRIBUTE_LENGTH:
        raise InvalidEventError(
            index, name, f"{name} is longer than {MAX_ATTRIBUTE_LENGTH} characters"
        )
    return value


def _event(index: int, item: Any, limits: _Limits) -> IncomingEvent:
    if not isinstance(item, dict):
        raise InvalidEventError(index, "", "an event must be a JSON object (a CloudEvent)")
    specversion = item.get("specversion")
    if specversion != "1.0":
        raise InvalidEventError(
            index,
            "specversion",
            f'specversion must be "1.0" (CloudEvents 1.0), got {specversion!r}',
        )
    event_id, source, event_type, subject = (_string(index, item, name) for name in _REQUIRED)
    time = _time(index, item.get("time"), limits)
    content_type = item.get("datacontenttype")
    if content_type is not None and (
        not isinstance(content_type, str) or media_type(content_type) != JSON
    ):
        raise InvalidEventError(
            index, "datacontenttype", f"datacontenttype must be {JSON}, got {content_type!r}"
        )
    if "data_base64" in item:
        raise InvalidEventError(index, "data_base64", "data must be a JSON object, not base64")
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise InvalidEventError(
            index, "data", f"data must be a JSON object, got {type(data).__name__}"
        )
    return IncomingEvent(
        id=event_id, source=source, type=event_type, subject=subject, time=time, data=data
    )


def _time(index: int, value: Any, limits: _Limits) -> datetime:
    if value is None:
        return limits.now
    if not isinstance(value, str):
        raise InvalidEventError(index, "time", "time must be an RFC 3339 string")
    try:
        time = parse_rfc3339(value)
    except ValueError:
        raise InvalidEventError(
            index, "time", f"time {value!r} is not RFC 3339, e.g. 2026-11-24T10:00:00Z"
        ) from None
    if time < limits.oldest:
        raise InvalidEventError(
            index,
            "time",
            f"time {format_rfc3339(time)} is older than the {limits.horizon.days}-day horizon "
            f"(the oldest accepted is {format_rfc3339(limits.oldest)})",
        )
    return time
