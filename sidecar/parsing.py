"""Parsing HTTP input into typed values, once, at the sidecar's boundary.

Role: query parameters (``time``, ``from``, ``to``, ``windowSize``, ``windowTimeZone``,
``includeDeleted``) and OFREP request bodies become typed values; anything malformed becomes a
400 ``ProblemError`` naming the parameter and what it accepts.

It must not look anything up in the view.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from allotment.ledger.core.history import WindowSize
from allotment.ledger.core.timeutil import UTC, parse_rfc3339

from .problems import ProblemError

__all__ = [
    "OfrepContext",
    "parse_bool",
    "parse_instant",
    "parse_ofrep_context",
    "parse_window_size",
    "parse_zone",
]


def parse_instant(query: Mapping[str, str], name: str) -> datetime | None:
    """Return the RFC 3339 instant in query parameter ``name``, or None when absent."""
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_rfc3339(text)
    except ValueError as error:
        raise ProblemError(
            400, f"query parameter {name}: {error}, e.g. 2024-01-01T00:00:00Z"
        ) from None


def parse_bool(query: Mapping[str, str], name: str) -> bool:
    """Return the boolean query parameter ``name`` (absent = false)."""
    text = query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0", ""):
        raise ProblemError(400, f"query parameter {name} must be true or false, got {text!r}")
    return text in ("true", "1")


def parse_window_size(query: Mapping[str, str]) -> WindowSize:
    """Return the required ``windowSize`` (MINUTE, HOUR, DAY or MONTH)."""
    text = query.get("windowSize")
    if not text:
        raise ProblemError(
            400, "query parameter windowSize is required: MINUTE, HOUR, DAY or MONTH"
        )
    try:
        return WindowSize(text.upper())
    except ValueError:
        raise ProblemError(
            400, f"query parameter windowSize must be MINUTE, HOUR, DAY or MONTH, got {text!r}"
        ) from None


def parse_zone(query: Mapping[str, str]) -> tzinfo:
    """Return the ``windowTimeZone`` (an IANA name, default UTC)."""
    text = query.get("windowTimeZone") or "UTC"
    if text.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ProblemError(
            400, f"invalid time zone: {text!r} is not an IANA time zone such as Europe/Berlin"
        ) from None


@dataclass(frozen=True)
class OfrepContext:
    """An OFREP evaluation context: the targeting key and the rest, as sent."""

    targeting_key: str | None
    attributes: Mapping[str, Any]


def parse_ofrep_context(raw: bytes) -> OfrepContext:
    """Parse an OFREP request body ``{"context": {...}}`` (an empty body is an empty context)."""
    if not raw.strip():
        return OfrepContext(None, {})
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"the request body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object with a context")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise ValueError("context must be a JSON object")
    key = context.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise ValueError("context.targetingKey must be a string")
    return OfrepContext(key or None, context)
