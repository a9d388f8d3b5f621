"""Client side of datasets: upload a Kohya-layout folder, then drop the marker; read and delete.

``upload`` puts every image and caption under ``datasets/<name>/`` (in parallel), then the
``_READY`` marker, last, so the stack never registers a half-uploaded folder; it then waits for
the record of that marker drop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpipe.contracts.datasets import (
    CAPTION_EXTENSION,
    CONCEPT_FOLDER,
    DATASET_MARKER,
    DATASET_NAME_PATTERN,
    IMAGE_EXTENSIONS,
    DatasetRecord,
    dataset_prefix,
)
from sdpipe.errors import SdpipeError
from sdpipe_client.client import Sdpipe

_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class DatasetExists(SdpipeError):
    code = "DATASET_EXISTS"


@dataclass(frozen=True)
class LocalDataset:
    """What will be uploaded: ``(local file, key under the dataset prefix)`` pairs."""

    name: str
    files: list[tuple[Path, str]]


def plan_dataset(folder: Path, name: str | None) -> LocalDataset:
    """The files of a dataset folder, or of one concept folder (``10_mystyle``) given on its own.

    Only images and ``.txt`` captions go; the stack reports what it finds missing.
    """
    folder = folder.resolve()
    if not folder.is_dir():
        raise SdpipeError(f"{folder} is not a folder", code="VALIDATION_ERROR")
    single_concept = CONCEPT_FOLDER.match(folder.name) is not None and any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file()
    )
    if single_concept:
        match = CONCEPT_FOLDER.match(folder.name)
        assert match is not None
        name = name or match["concept"]
        root, inside = folder.parent, folder.name + "/"
        candidates = sorted(p for p in folder.rglob("*") if p.is_file())
        files = [(p, inside + p.relative_to(folder).as_posix()) for p in candidates]
    else:
        name = name or folder.name
        root = folder
        files = [(p, p.relative_to(root).as_posix()) for p in sorted(folder.rglob("*")) if p.is_file()]
    if not re.match(DATASET_NAME_PATTERN, name):
        raise SdpipeError(
            f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (pass --name)", code="VALIDATION_ERROR"
        )
    kept = [(p, key) for p, key in files if p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix == CAPTION_EXTENSION]
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p, _ in kept):
        raise SdpipeError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})", code="EMPTY_DATASET")
    return LocalDataset(name, kept)


class Datasets:
    """Datasets through the stack's public surface: the bucket for the files, CatalogApi for the rest."""

    def __init__(self, client: Sdpipe) -> None:
        self.client = client
        self.bucket = client.outputs["AssetsBucketName"]
        self._s3 = client.aws.get("s3")

    def find(self, name: str) -> dict[str, Any] | None:
        """The dataset's record as CatalogApi answers it (``settled`` once its event is out), or None."""
        try:
            found: dict[str, Any] = self.client.catalog({"operation": "describe_dataset", "name": name})["dataset"]
        except SdpipeError as exc:
            if exc.code == "DATASET_NOT_FOUND":
                return None
            raise
        return found

    def upload(
        self,
        local: LocalDataset,
        *,
        replace: bool = False,
        concurrency: int = 8,
        on_file: Callable[[int], None] | None = None,
        timeout_s: float = 600,
    ) -> DatasetRecord:
        prefix = dataset_prefix(local.name)
        if self._s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            if not replace:
                raise DatasetExists(
                    f"{prefix} holds files already; pass --replace to delete them and upload this folder instead"
                )
            self.delete(local.name)
        previous = self.find(local.name)

        def put(item: tuple[Path, str]) -> None:
            path, key = item
            content_type = _CONTENT_TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8")
            self._s3.upload_file(str(path), self.bucket, prefix + key, ExtraArgs={"ContentType": content_type})
            if on_file:
                on_file(path.stat().st_size)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(put, local.files))  # raises the first failure; the marker is not dropped
        self._s3.put_object(Bucket=self.bucket, Key=prefix + DATASET_MARKER, Body=b"")
        return self.wait(local.name, newer_than=str((previous or {}).get("marker_version", "")), timeout_s=timeout_s)

    def wait(self, name: str, newer_than: str = "", timeout_s: float = 600) -> DatasetRecord:
        """The record of a marker drop newer than ``newer_than``, once its event is published."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find(name)
            if found and str(found.get("marker_version", "")) > newer_than and found.get("settled"):
                return DatasetRecord.model_validate(found)
            if time.monotonic() > deadline:
                raise SdpipeError(f"dataset {name!r} was not registered within {timeout_s:.0f}s", code="TIMEOUT")
            time.sleep(0.25)

    def all(self) -> list[DatasetRecord]:
        return [
            DatasetRecord.model_validate(d) for d in self.client.catalog({"operation": "list_datasets"})["datasets"]
        ]

    def describe(self, name: str) -> DatasetRecord:
        return DatasetRecord.model_validate(
            self.client.catalog({"operation": "describe_dataset", "name": name})["dataset"]
        )

    def delete(self, name: str) -> int:
        deleted: int = self.client.catalog({"operation": "delete_dataset", "name": name})["deleted"]
        return deleted
