"""Evaluate CloudFormation intrinsic functions against the resources the local stack created."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class NoValue:
    """``AWS::NoValue``: the property is removed."""


NO_VALUE = NoValue()


class Resolver:
    """Resolve ``Ref``, ``Fn::GetAtt``, ``Fn::Sub``, ``Fn::Join`` and friends.

    ``ref`` and ``getatt`` look up resources already created; pseudo parameters and template
    parameters are given up front.
    """

    def __init__(
        self,
        parameters: Mapping[str, Any],
        conditions: Mapping[str, Any],
        ref: Callable[[str], Any],
        getatt: Callable[[str, str], Any],
        mappings: Mapping[str, Any] | None = None,
    ) -> None:
        self._parameters = parameters
        self._conditions_source = conditions
        self._condition_values: dict[str, bool] = {}
        self._ref = ref
        self._getatt = getatt
        self._mappings = mappings or {}

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            self._condition_values[name] = bool(self.resolve(self._conditions_source[name]))
        return self._condition_values[name]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((name, argument),) = value.items()
            handler = _FUNCTIONS.get(name)
            if handler is not None:
                return handler(self, argument)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not NO_VALUE}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._parameters:
            return self._parameters[name]
        return self._ref(name)

    def sub(self, template: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self._getatt(logical, attribute))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(replace, template).replace("${!", "${")


def _sub(resolver: Resolver, argument: Any) -> str:
    if isinstance(argument, str):
        return resolver.sub(argument, {})
    template, variables = argument
    return resolver.sub(template, {k: resolver.resolve(v) for k, v in variables.items()})


def _getatt(resolver: Resolver, argument: Any) -> Any:
    if isinstance(argument, str):
        logical, attribute = argument.split(".", 1)
    else:
        logical, attribute = argument[0], resolver.resolve(argument[1])
    return resolver._getatt(logical, attribute)


def _if(resolver: Resolver, argument: Any) -> Any:
    name, when_true, when_false = argument
    return resolver.resolve(when_true if resolver.condition(name) else when_false)


def _find_in_map(resolver: Resolver, argument: Any) -> Any:
    name, top, second = (resolver.resolve(a) for a in argument)
    return resolver._mappings[name][top][second]


_FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": lambda r, a: r.ref(a),
    "Fn::GetAtt": _getatt,
    "Fn::Sub": _sub,
    "Fn::Join": lambda r, a: str(a[0]).join(str(x) for x in r.resolve(a[1])),
    "Fn::Select": lambda r, a: r.resolve(a[1])[int(r.resolve(a[0]))],
    "Fn::Split": lambda r, a: str(r.resolve(a[1])).split(a[0]),
    "Fn::If": _if,
    "Fn::Equals": lambda r, a: r.resolve(a[0]) == r.resolve(a[1]),
    "Fn::Not": lambda r, a: not r.resolve(a[0]),
    "Fn::And": lambda r, a: all(r.resolve(x) for x in a),
    "Fn::Or": lambda r, a: any(r.resolve(x) for x in a),
    "Condition": lambda r, a: r.condition(a),
    "Fn::FindInMap": _find_in_map,
    "Fn::GetAZs": lambda r, a: ["us-east-1a", "us-east-1b", "us-east-1c"],
    "Fn::ToJsonString": lambda r, a: __import__("json").dumps(r.resolve(a)),
}


def references(value: Any) -> set[str]:
    """Logical ids a value depends on (for ordering resource creation)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for name, argument in value.items():
            if name == "Ref" and isinstance(argument, str):
                found.add(argument)
            elif name == "Fn::GetAtt":
                found.add(argument.split(".", 1)[0] if isinstance(argument, str) else argument[0])
            elif name == "Fn::Sub":
                template = argument if isinstance(argument, str) else argument[0]
                for match in _SUB_VARIABLE.finditer(template):
                    found.add(match.group(1).split(".", 1)[0].strip())
                if not isinstance(argument, str):
                    found |= references(argument[1])
            else:
                found |= references(argument)
    return found
