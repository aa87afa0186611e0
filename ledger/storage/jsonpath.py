"""The JSONPath subset meters use: ``$``, ``.name``, ``['name']`` and ``[index]``.

Role: compile a meter's ``valueProperty`` or ``groupBy`` path once and evaluate it against an
event's ``data``. Paths outside the subset are refused when compiled, so a meter that records
can always be evaluated. It must not evaluate filters, wildcards or recursive descent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_STEP = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)"
    r"|\[\s*'(?P<single>(?:[^'\\]|\\.)*)'\s*\]"
    r'|\[\s*"(?P<double>(?:[^"\\]|\\.)*)"\s*\]'
    r"|\[\s*(?P<index>\d+)\s*\]"
)


class JsonPathError(ValueError):
    """A path outside the supported subset."""


class Missing:
    """The result of a path that leads nowhere in the document."""


MISSING = Missing()


@dataclass(frozen=True)
class JsonPath:
    """A compiled path: a tuple of member names and list indexes."""

    text: str
    steps: tuple[str | int, ...]

    def find(self, document: object) -> object:
        """Return the value at this path in ``document``, or ``MISSING``."""
        current = document
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(current, Sequence) or isinstance(current, str | bytes):
                    return MISSING
                if step >= len(current):
                    return MISSING
                current = current[step]
            else:
                if not isinstance(current, Mapping) or step not in current:
                    return MISSING
                current = current[step]
        return current


def compile_path(text: str) -> JsonPath:
    """Compile ``text`` (e.g. ``$.tokens`` or ``$['model'].name``) or raise ``JsonPathError``."""
    if not text.startswith("$"):
        raise JsonPathError(f"JSONPath {text!r} must start with $")
    steps: list[str | int] = []
    position = 1
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise JsonPathError(
                f"JSONPath {text!r} is not supported at character {position + 1}: use "
                "$.name, $['name'] and [index] steps"
            )
        if match.group("name") is not None:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            quoted = (
                match.group("single")
                if match.group("single") is not None
                else match.group("double")
            )
            steps.append(re.sub(r"\\(.)", r"\1", quoted))
        position = match.end()
    return JsonPath(text=text, steps=tuple(steps))
