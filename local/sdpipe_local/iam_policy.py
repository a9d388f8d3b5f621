"""Identity-policy evaluation: does a set of policy documents allow an action on a resource?

AWS's logic for identity policies alone: an explicit Deny wins, then any Allow, else the request is
implicitly denied. Statements match on Action/NotAction (case-insensitive, with wildcards),
Resource/NotResource (wildcards) and Condition. Conditions use the request context the caller
knows: a key missing from it makes a condition false (true for the negated operators and for
``...IfExists``), as in AWS. Policy variables (``${aws:username}``) are not expanded.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

ContextValue = str | list[str]


class Decision(Enum):
    ALLOWED = "allowed"
    IMPLICIT_DENY = "implicit"
    EXPLICIT_DENY = "explicit"


@lru_cache(maxsize=4096)
def _glob(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    regex = fnmatch.translate(pattern.replace("[", "[[]"))  # IAM has no character classes
    return re.compile(regex, 0 if case_sensitive else re.IGNORECASE)


def glob_match(pattern: str, value: str, *, case_sensitive: bool = True) -> bool:
    return _glob(pattern, case_sensitive).match(value) is not None


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@lru_cache(maxsize=512)
def parse_document(text: str) -> tuple[dict[str, Any], ...]:
    """A policy document's statements (``Statement`` may be one object or a list)."""
    document = json.loads(text)
    statements = document.get("Statement", [])
    return tuple(statements if isinstance(statements, list) else [statements])


def _string_equals(expected: str, actual: str) -> bool:
    return expected == actual


def _string_equals_ignore_case(expected: str, actual: str) -> bool:
    return expected.lower() == actual.lower()


def _string_like(expected: str, actual: str) -> bool:
    return glob_match(expected, actual)


def _bool(expected: str, actual: str) -> bool:
    return expected.lower() == actual.lower()


_OPERATORS = {
    "StringEquals": (_string_equals, False),
    "StringNotEquals": (_string_equals, True),
    "StringEqualsIgnoreCase": (_string_equals_ignore_case, False),
    "StringNotEqualsIgnoreCase": (_string_equals_ignore_case, True),
    "StringLike": (_string_like, False),
    "StringNotLike": (_string_like, True),
    "ArnEquals": (_string_like, False),
    "ArnLike": (_string_like, False),
    "ArnNotEquals": (_string_like, True),
    "ArnNotLike": (_string_like, True),
    "Bool": (_bool, False),
}


class UnsupportedCondition(Exception):
    """A condition operator this evaluator does not know (it refuses rather than guess)."""


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, ContextValue]) -> bool:
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    if name not in _OPERATORS:
        raise UnsupportedCondition(f"condition operator {operator!r} is not evaluated by the local stack")
    compare, negated = _OPERATORS[name]
    found = next((value for k, value in context.items() if k.lower() == key.lower()), None)
    if found is None:
        return if_exists or negated
    actual_values = _listed(found)
    expected_values = _listed(expected)
    if qualifier == "ForAllValues":
        matched = all(any(compare(e, a) for e in expected_values) for a in actual_values)
    else:  # a single-valued key, or ForAnyValue
        matched = any(compare(e, a) for e in expected_values for a in actual_values)
    return not matched if negated else matched


@dataclass(frozen=True)
class Statement:
    raw: Mapping[str, Any]

    def applies(self, action: str, resource: str, context: Mapping[str, ContextValue]) -> bool:
        raw = self.raw
        if "NotAction" in raw:
            if any(glob_match(p, action, case_sensitive=False) for p in _listed(raw["NotAction"])):
                return False
        elif not any(glob_match(p, action, case_sensitive=False) for p in _listed(raw.get("Action"))):
            return False
        if "NotResource" in raw:
            if any(glob_match(p, resource) for p in _listed(raw["NotResource"])):
                return False
        elif not any(glob_match(p, resource) for p in _listed(raw.get("Resource"))):
            return False
        for operator, block in (raw.get("Condition") or {}).items():
            for key, expected in block.items():
                if not _condition_holds(operator, key, expected, context):
                    return False
        return True


def evaluate(
    documents: Iterable[str], action: str, resource: str, context: Mapping[str, ContextValue] | None = None
) -> Decision:
    """What identity policies ``documents`` decide for ``action`` on ``resource``."""
    allowed = False
    for document in documents:
        for raw in parse_document(document):
            statement = Statement(raw)
            if not statement.applies(action, resource, context or {}):
                continue
            if str(raw.get("Effect")) == "Deny":
                return Decision.EXPLICIT_DENY
            allowed = True
    return Decision.ALLOWED if allowed else Decision.IMPLICIT_DENY
