"""Resolve what a user writes for a model to one registered model.

Accepted: the registered name (``v1-5-pruned-emaonly``, with or without its extension, with or
without its subfolder when that is unique), AUTOMATIC1111's title ``name [0123456789]`` (the hash
in brackets may be the short, legacy or full hash), or a sha256 prefix of at least 10 hex digits.
Only ACTIVE models of the requested type are candidates; the errors say why nothing matched and
list what would have.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from sdpipe.contracts.models import ModelFamily, ModelRecord, ModelType
from sdpipe.errors import ModelAmbiguous, ModelNotFound, ModelNotUsable

_TITLE = re.compile(r"^(?P<name>.+?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]$")
_HASH_PREFIX = re.compile(r"^[0-9a-fA-F]{10,64}$")
_MAX_LISTED = 8


class ModelCatalog(Protocol):
    def list(self, model_type: ModelType | None = None) -> Iterable[ModelRecord]: ...

    def find_by_hash_prefix(self, prefix: str) -> Sequence[ModelRecord]: ...


def _describe(items: Iterable[ModelRecord]) -> str:
    names = sorted(f"{i.name} [{i.short_hash or '?'}]" for i in items)
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _name_forms(item: ModelRecord) -> tuple[str, str]:
    """The registered name (path under the type folder) with and without its extension."""
    name, filename = item.name, item.filename
    extension = "." + filename.rsplit(".", 1)[1] if "." in filename else ""
    return name, name + extension


def _name_matches(item: ModelRecord, wanted: str) -> bool:
    return wanted in _name_forms(item)


def _basename_matches(item: ModelRecord, wanted: str) -> bool:
    return wanted in tuple(form.rsplit("/", 1)[-1] for form in _name_forms(item))


def _hash_matches(item: ModelRecord, wanted: str) -> bool:
    wanted = wanted.lower()
    return (item.sha256 or "").startswith(wanted) or wanted in (item.short_hash, item.legacy_hash)


def resolve_model(
    reference: str,
    model_type: ModelType,
    catalog: ModelCatalog,
    family: ModelFamily | None = None,
    field: str = "model",
) -> ModelRecord:
    """The one ACTIVE model ``reference`` names, or a domain error naming ``field``."""
    wanted = reference.strip()
    if not wanted:
        raise ModelNotFound(f"{field} is empty")
    title = _TITLE.match(wanted)
    if _HASH_PREFIX.match(wanted) and not title:
        by_hash = [i for i in catalog.find_by_hash_prefix(wanted) if i.type is model_type]
        by_name = [i for i in catalog.list(model_type) if _name_matches(i, wanted)]
        candidates = by_name or by_hash  # a model literally named in hex wins over a hash prefix
    else:
        everything = list(catalog.list(model_type))
        if title:
            name, digest = title.group("name", "hash")
            candidates = [i for i in everything if _name_matches(i, name) and _hash_matches(i, digest)]
        else:
            candidates = [i for i in everything if _name_matches(i, wanted)]
            if not candidates:  # "model" for "sd15/model", when only one folder has it
                candidates = [i for i in everything if _basename_matches(i, wanted)]
    active = [i for i in candidates if i.is_active]
    if not active:
        if candidates:
            states = ", ".join(sorted({f"{i.name} is {i.status.value}" for i in candidates}))
            raise ModelNotUsable(f"{field} {reference!r} names a {model_type.value} that cannot be used: {states}")
        everything = [i for i in catalog.list(model_type) if i.is_active]
        close = difflib.get_close_matches(wanted, [i.name for i in everything], n=_MAX_LISTED, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {_describe(everything) or 'none'}"
        raise ModelNotFound(f"{field} {reference!r} matches no ACTIVE {model_type.value}{hint}")
    if len(active) > 1:
        matches = f"{len(active)} {model_type.value}s: {_describe(active)}"
        raise ModelAmbiguous(f"{field} {reference!r} matches {matches}; use a title with its hash")
    found = active[0]
    if family is not None and not found.is_for(family):
        raise ModelNotUsable(
            f"{field} {reference!r} is a {found.family} {model_type.value}, but this needs {family.value}"
        )
    return found
