"""The assets bucket layout (README "Model registration"): A1111 model folders under ``models/``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import overload

from sdpipe.contracts.models import ModelType

MODELS_PREFIX = "models/"
# Named exactly like the AUTOMATIC1111 models/ folders so a WebUI folder syncs as is.
MODEL_FOLDERS: dict[str, ModelType] = {
    "Stable-diffusion": ModelType.CHECKPOINT,
    "Lora": ModelType.LORA,
    "embeddings": ModelType.EMBEDDING,
    "ControlNet": ModelType.CONTROLNET,
    "hypernetworks": ModelType.HYPERNETWORK,
    "VAE": ModelType.VAE,
}
FOLDER_OF_TYPE: dict[ModelType, str] = {kind: folder for folder, kind in MODEL_FOLDERS.items()}

SAFETENSORS_EXTENSIONS = frozenset([".safetensors"])
PICKLE_EXTENSIONS = frozenset([".ckpt", ".pt", ".pth", ".bin"])
MODEL_EXTENSIONS = SAFETENSORS_EXTENSIONS | PICKLE_EXTENSIONS
# Files that live next to models in a WebUI folder (previews, configs, notes): not models, and
# not an error either.
COMPANION_EXTENSIONS = frozenset(
    [".yaml", ".yml", ".json", ".png", ".jpg", ".jpeg", ".webp", ".txt", ".md", ".info", ".html"]
)


@dataclass(frozen=True)
class ModelKey:
    """What an S3 key under ``models/`` says about the file."""

    key: str
    type: ModelType
    folder: str
    name: str
    filename: str
    extension: str

    @property
    def model_id(self) -> str:
        return model_id_for_key(self.key)


def model_id_for_key(key: str) -> str:
    """A stable id per S3 key, so every event about one key lands on one item."""
    return "m-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def parse_model_key(key: str) -> ModelKey | None:
    """Split ``models/<Folder>/<sub/dirs/>name.ext``; None when it is not under a model folder."""
    if not key.startswith(MODELS_PREFIX) or key.endswith("/"):
        return None
    parts = key[len(MODELS_PREFIX) :].split("/")
    if len(parts) < 2 or parts[0] not in MODEL_FOLDERS:
        return None
    relative = PurePosixPath(*parts[1:])
    extension = relative.suffix.lower()
    name = str(relative.with_suffix("")) if extension else str(relative)
    return ModelKey(
        key=key,
        type=MODEL_FOLDERS[parts[0]],
        folder=parts[0],
        name=name,
        filename=relative.name,
        extension=extension,
    )


# A name's last dotted part read as a file extension (``x.exe``, ``notes.json``) rather than part
# of the name (``v1.5-pruned``, ``style.v2``, ``epic.realism``): one the user most likely mistyped.
_LOOKS_LIKE_AN_EXTENSION = re.compile(r"\.[a-z]{1,4}")
_ALLOWED_EXTENSIONS = ", ".join(sorted(MODEL_EXTENSIONS))  # as the errors list them


@overload
def named_like_source(name: str, source: str | None, *, strict: bool = True) -> str: ...
@overload
def named_like_source(name: None, source: str | None, *, strict: bool = True) -> str | None: ...
def named_like_source(name: str | None, source: str | None, *, strict: bool = True) -> str | None:
    """The file name a model is stored under when asked for ``name``, the source being the file,
    URL path or ``Content-Disposition`` name ``source``: ``name`` as given when it ends in a model
    extension (the source's, if the source has one), ``name`` plus the source's extension when it
    has none (``--name sdxl/style`` for ``style_v2.safetensors``: ``sdxl/style.safetensors``, listed
    as ``sdxl/style``), the source's name when no name is asked for. ``ValueError`` names what does
    not match: a name whose model extension differs from the source's, or a bare name for a source
    without a model extension (not strict: any model extension of ``name`` is accepted)."""
    if name is None:
        return source
    asked = PurePosixPath(name).suffix.lower()
    has = PurePosixPath(source or "").suffix.lower()
    has = has if has in MODEL_EXTENSIONS else ""
    if asked not in MODEL_EXTENSIONS and _LOOKS_LIKE_AN_EXTENSION.fullmatch(asked):
        raise ValueError(f"{name!r} has extension {asked!r}, which is not a model's; "
                         f"name it without an extension or with one of {_ALLOWED_EXTENSIONS}")  # fmt: skip
    if asked in MODEL_EXTENSIONS:
        if strict and has and asked != has:
            raise ValueError(f"{name!r} ends in {asked} but the source {source!r} is a {has} file; "
                             f"name it without an extension (or with {has})")  # fmt: skip
        return name
    if not has:
        raise ValueError(f"{name!r} has no model extension and the source ({source or 'unnamed'!r}) gives none; "
                         f"add one of {_ALLOWED_EXTENSIONS}")  # fmt: skip
    return name + has


MAX_KEY_BYTES = 900  # S3 allows 1024; leave room for the prefix and stay readable


def model_key_for(model_type: ModelType, relative_name: str) -> ModelKey:
    """The key an uploaded or fetched file goes to: ``models/<Folder>/<relative_name>``.

    ``relative_name`` may hold subfolders (``sdxl/style.safetensors``); ``ValueError`` names
    what is wrong with it (absolute, ``..``, empty segments, control characters, extension).
    """
    name = relative_name.strip()
    if not name:
        raise ValueError("the file name is empty")
    if "\\" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"{relative_name!r} contains a backslash or control characters")
    segments = name.split("/")
    if name.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{relative_name!r} must be a relative path without empty, '.' or '..' segments")
    extension = PurePosixPath(name).suffix.lower()
    if extension not in MODEL_EXTENSIONS:
        raise ValueError(f"{relative_name!r} has extension {extension or '(none)'!r}; allowed: {_ALLOWED_EXTENSIONS}")
    key = f"{MODELS_PREFIX}{FOLDER_OF_TYPE[model_type]}/{name}"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"{relative_name!r} is too long for an S3 key")
    parsed = parse_model_key(key)
    assert parsed is not None
    return parsed
