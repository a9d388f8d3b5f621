"""Dropping local model files into the stack's bucket the way users do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpipe_local.tiny_models import config_folder_for


def drop_checkpoint(s3: Any, bucket: str, path: Path, key: str) -> None:
    """Upload ``path`` to ``key`` and, first, its diffusers config folder to ``<key stem>.config/``.

    The config goes first so the checkpoint is loadable the moment it is registered; without
    one, the inference container uses its bundled config for the detected family.
    """
    config = config_folder_for(path)
    stem = key.rsplit(".", 1)[0]
    if config.is_dir():
        for item in sorted(config.rglob("*")):
            if item.is_file():
                s3.upload_file(str(item), bucket, f"{stem}.config/{item.relative_to(config).as_posix()}")
    s3.upload_file(str(path), bucket, key)  # multipart above 8 MiB, as large files are
