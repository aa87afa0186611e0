"""Read Kubernetes manifests and the allotment CRDs the way kubectl and the apiserver do.

This module is the CLI's YAML boundary: it turns files into ``Document`` objects (plain JSON-like
values plus the line of every field) and loads the CRDs shipped in ``allotment.crds``. YAML is
resolved as kubectl resolves it (sigs.k8s.io/yaml over go-yaml v2): an unquoted timestamp stays a
string, ``1e6`` and ``0x1F`` are numbers, ``yes``/``on`` are booleans, ``1:20`` is a string,
duplicate keys are refused. It validates nothing and never talks to a cluster.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

GROUP = "allotment.dev"

JSONPath = tuple[str | int, ...]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_NUMBER_TAG = "tag:allotment.dev,2026:kubectl-number"
_SPECIAL_FLOAT_TAG = "tag:allotment.dev,2026:kubectl-special-float"

_TRUE = frozenset({"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"})
_FALSE = frozenset({"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"})
_SPECIAL_FLOATS = {
    ".nan": math.nan,
    ".NaN": math.nan,
    ".NAN": math.nan,
    ".inf": math.inf,
    ".Inf": math.inf,
    ".INF": math.inf,
    "+.inf": math.inf,
    "+.Inf": math.inf,
    "+.INF": math.inf,
    "-.inf": -math.inf,
    "-.Inf": -math.inf,
    "-.INF": -math.inf,
}
_GO_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _parse_go_int(text: str) -> int | None:
    """Parse an integer as Go's ``strconv.ParseInt(s, 0, 64)`` (then ParseUint) would, or None."""
    sign, body = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    lowered = body.lower()
    base, digits = 10, body
    if lowered.startswith("0x"):
        base, digits = 16, body[2:]
    elif lowered.startswith("0o"):
        base, digits = 8, body[2:]
    elif lowered.startswith("0b"):
        base, digits = 2, body[2:]
    elif len(body) > 1 and body.startswith("0"):
        base, digits = 8, body[1:]
    if not digits or not all(c in "0123456789abcdef"[:base] for c in digits.lower()):
        return None
    value = int(digits, base) * (-1 if sign == "-" else 1)
    if _INT64_MIN <= value <= _UINT64_MAX:
        return value
    return None


def _construct_number(loader: yaml.SafeLoader, node: Node) -> int | float | str:
    """Resolve a plain scalar starting with a digit, sign or dot as go-yaml v2 does."""
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    plain = text.replace("_", "")
    if not plain.startswith("."):
        parsed = _parse_go_int(plain)
        if parsed is not None:
            return parsed
        if _GO_YAML_FLOAT.match(plain):
            return float(plain)
        return text
    if _GO_YAML_FLOAT.match(text):
        return float(text)
    return text


def _construct_special_float(loader: yaml.SafeLoader, node: Node) -> float:
    """Resolve .inf, -.inf and .nan."""
    return _SPECIAL_FLOATS[str(loader.construct_scalar(node))]  # type: ignore[arg-type]


def _construct_bool(loader: yaml.SafeLoader, node: Node) -> bool:
    """Resolve YAML 1.1 booleans (yes/no/on/off/y/n included), as go-yaml v2 does."""
    return str(loader.construct_scalar(node)) in _TRUE  # type: ignore[arg-type]


def _json_key(key: Any) -> str:
    """Turn a mapping key into the JSON object key sigs.k8s.io/yaml would produce."""
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


class KubectlLoader(yaml.SafeLoader):
    """A PyYAML loader that resolves plain scalars as kubectl does (see the module docstring)."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build a mapping with JSON string keys, refusing duplicate keys."""
        self.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _json_key(self.construct_object(key_node, deep=deep))
            if key in mapping:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f'duplicate field "{key}"',
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


KubectlLoader.add_implicit_resolver(
    _BOOL_TAG,
    re.compile(r"^(?:" + "|".join(sorted(_TRUE | _FALSE)) + r")$"),
    list("yYnNtTfFoO"),
)
KubectlLoader.add_implicit_resolver(
    _NULL_TAG, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
KubectlLoader.add_implicit_resolver(
    _SPECIAL_FLOAT_TAG,
    re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+."),
)
KubectlLoader.add_implicit_resolver(_NUMBER_TAG, re.compile(r"^[-+0-9.]"), list("-+0123456789."))
KubectlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
KubectlLoader.add_constructor(_BOOL_TAG, _construct_bool)
KubectlLoader.add_constructor(_NUMBER_TAG, _construct_number)
KubectlLoader.add_constructor(_SPECIAL_FLOAT_TAG, _construct_special_float)


def _construct_str(loader: yaml.SafeLoader, node: Node) -> str:
    """Keep an explicit !!timestamp a string: that is how it reaches the API server."""
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_str)


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastKubectlLoader(CParser, KubectlLoader):
        """KubectlLoader's resolution on libyaml's parser (same results, several times faster)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _LOADER: type[KubectlLoader] = _FastKubectlLoader
else:  # pragma: no cover - PyYAML without libyaml
    _LOADER = KubectlLoader


def load_yaml(text: str) -> Any:
    """Load one YAML document as kubectl would read it."""
    return yaml.load(text, Loader=_LOADER)  # a SafeLoader subclass: no arbitrary objects


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file, with the line of each field path."""

    path: Path
    index: int
    line: int
    body: Any
    lines: Mapping[JSONPath, int] = field(default_factory=dict)

    def line_of(self, json_path: JSONPath) -> int:
        """Return the line of the deepest existing prefix of ``json_path``."""
        for end in range(len(json_path), 0, -1):
            found = self.lines.get(json_path[:end])
            if found is not None:
                return found
        return self.line


@dataclass(frozen=True)
class SyntaxProblem:
    """A YAML document that could not be read."""

    path: Path
    index: int
    line: int
    message: str


def _record_lines(node: Node, here: JSONPath, lines: dict[JSONPath, int]) -> None:
    """Record the 1-based line where each field (its key) or item starts."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                child = (*here, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                _record_lines(value_node, child, lines)
    elif isinstance(node, SequenceNode):
        for position, item in enumerate(node.value):
            child = (*here, position)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines)


def read_documents(path: Path) -> Iterator[Document | SyntaxProblem]:
    """Yield every document of one file (empty documents are skipped, as kubectl does)."""
    text = path.read_text(encoding="utf-8")
    loader = _LOADER(text)
    index = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
                if node is None:
                    return
                body = loader.construct_document(node)
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
                line = mark.line + 1 if mark is not None else 1
                yield SyntaxProblem(path, index, line, _describe_yaml_error(error))
                return
            if body is not None:
                lines: dict[JSONPath, int] = {}
                _record_lines(node, (), lines)
                yield Document(path, index, node.start_mark.line + 1, body, lines)
            index += 1
    finally:
        loader.dispose()


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """Say what is wrong with the YAML in one line."""
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    parts = [str(part) for part in (context, problem) if part]
    return "YAML syntax error: " + (", ".join(parts) if parts else str(error).splitlines()[0])


def manifest_files(paths: list[Path]) -> Iterator[Path]:
    """Yield the files to read: given files as is, directories recursively (.yaml/.yml only)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file() and candidate.suffix in (".yaml", ".yml")
            )
        else:
            yield path


@dataclass(frozen=True)
class CRDVersion:
    """One served version of one allotment CRD."""

    group: str
    version: str
    kind: str
    plural: str
    schema: Mapping[str, Any]


@cache
def load_crds() -> Mapping[tuple[str, str], CRDVersion]:
    """Load the CRDs shipped in ``allotment.crds``, keyed by (apiVersion, kind); read once."""
    catalog: dict[tuple[str, str], CRDVersion] = {}
    for entry in sorted(resources.files("allotment.crds").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        crd = load_yaml(entry.read_text(encoding="utf-8"))
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            item = CRDVersion(
                group=spec["group"],
                version=version["name"],
                kind=spec["names"]["kind"],
                plural=spec["names"]["plural"],
                schema=version["schema"]["openAPIV3Schema"],
            )
            catalog[(f"{item.group}/{item.version}", item.kind)] = item
    return MappingProxyType(catalog)
