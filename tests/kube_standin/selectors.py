"""Label and field selectors with the syntax and matching rules of k8s.io/apimachinery (`labels`, `fields`)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_TERM = re.compile(rf"^(?P<key>{_KEY})\s+(?P<operator>in|notin)\s*\((?P<values>[^()]*)\)$")
_NOT_EXISTS_TERM = re.compile(rf"^!\s*(?P<key>{_KEY})$")
_COMPARE_TERM = re.compile(rf"^(?P<key>{_KEY})\s*(?P<operator>==|!=|=|>|<)\s*(?P<value>{_VALUE})$")
_EXISTS_TERM = re.compile(rf"^(?P<key>{_KEY})$")
_FIELD_TERM = re.compile(r"^(?P<key>[A-Za-z0-9_.]+)\s*(?P<operator>==|!=|=)\s*(?P<value>[^,]*)$")


class SelectorError(ValueError):
    """A selector that does not parse, or that names a field the resource cannot be selected by."""


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector, such as `app in (a,b)` or `!tier`."""

    key: str
    # One of "=", "!=", "in", "notin", "exists", "!exists", ">", "<"; "==" is stored as "=".
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            # As in Kubernetes, an object without the label matches `!=` and `notin`.
            return not present or value not in self.values
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.operator == ">" else number < bound


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of label requirements; the empty selector matches every object."""

    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(requirement.matches(labels or {}) for requirement in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses, so `a in (x,y),b` gives two terms."""
    terms: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return [term.strip() for term in terms]


def _parse_label_term(term: str) -> LabelRequirement:
    if match := _SET_TERM.match(term):
        values = tuple(value.strip() for value in match["values"].split(","))
        if any(not re.fullmatch(_VALUE, value) for value in values):
            raise SelectorError(f"invalid value in label selector term {term!r}")
        return LabelRequirement(key=match["key"], operator=match["operator"], values=values)
    if match := _NOT_EXISTS_TERM.match(term):
        return LabelRequirement(key=match["key"], operator="!exists")
    if match := _COMPARE_TERM.match(term):
        operator = "=" if match["operator"] == "==" else match["operator"]
        if operator in (">", "<") and not re.fullmatch(r"-?[0-9]+", match["value"]):
            raise SelectorError(f"label selector term {term!r} compares with a value that is not an integer")
        return LabelRequirement(key=match["key"], operator=operator, values=(match["value"],))
    if match := _EXISTS_TERM.match(term):
        return LabelRequirement(key=match["key"], operator="exists")
    raise SelectorError(f"unable to parse requirement {term!r} of the label selector")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a `labelSelector` query value; raise SelectorError when it is malformed."""
    if text is None or not text.strip():
        return LabelSelector()
    return LabelSelector(tuple(_parse_label_term(term) for term in _split_top_level(text)))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """Return the value at a dotted path as a string, or "" when a part is missing, as Kubernetes field sets do."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return ""
        current = current[part]
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    # "=" or "!="; "==" is stored as "=".
    operator: str
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        equal = field_value(obj, self.path) == self.value
        return equal if self.operator == "=" else not equal


@dataclass(frozen=True)
class FieldSelector:
    """A conjunction of field requirements; the empty selector matches every object."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(requirement.matches(obj) for requirement in self.requirements)


def parse_field_selector(text: str | None, supported_fields: Collection[str]) -> FieldSelector:
    """Parse a `fieldSelector` query value against the fields the resource supports.

    Raises SelectorError for a malformed term or a field outside `supported_fields`, as the real
    server rejects them with `field label not supported`. Backslash escapes in values are not supported.
    """
    if text is None or not text.strip():
        return FieldSelector()
    requirements = []
    for term in text.split(","):
        match = _FIELD_TERM.match(term.strip())
        if match is None:
            raise SelectorError(f"invalid field selector term {term!r}: expected key=value, key==value or key!=value")
        if match["key"] not in supported_fields:
            raise SelectorError(f"field label not supported: {match['key']}")
        operator = "=" if match["operator"] == "==" else match["operator"]
        requirements.append(FieldRequirement(path=match["key"], operator=operator, value=match["value"].strip()))
    return FieldSelector(tuple(requirements))
