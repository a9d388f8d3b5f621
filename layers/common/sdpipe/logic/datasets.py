"""Register training datasets dropped under ``datasets/<name>/`` in Kohya's layout.

Nothing happens while images and captions arrive; the marker object (``_READY``), dropped last,
makes the folder be read: concept folders ``<repeats>_<concept>/``, images with same-stem ``.txt``
captions, each image's size from its header (ranged reads, no image library). The result is one
Datasets item per marker drop and a ``dataset.registered`` or ``dataset.rejected`` event, stored
on the item until published, so duplicate S3 events change nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aws_lambda_powertools import Logger

from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.object_store import ObjectInfo, ObjectStore
from sdpipe.adapters.outbox import PENDING_EVENTS
from sdpipe.contracts.datasets import (
    CAPTION_EXTENSION,
    CONCEPT_FOLDER,
    DATASET_MARKER,
    DATASET_NAME_PATTERN,
    IMAGE_EXTENSIONS,
    Concept,
    DatasetProblem,
    DatasetRecord,
    DatasetStatus,
    Severity,
    dataset_of_marker,
    dataset_prefix,
)
from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.errors import DatasetNotFound, ObjectChanged
from sdpipe.inspect.images import ImageUnreadable, image_size
from sdpipe.logic.outbox import DEFAULT_LEASE_SECONDS, Outbox
from sdpipe.logic.parallel import io_pool
from sdpipe.settings import DatasetSettings, settings_of

logger = Logger(child=True)

# Kohya skips these (its own metadata and caches) without a word; so do we.
_IGNORED_SUFFIXES = (".npz", ".json", ".toml", ".caption", ".cache")
_SUMMARY_FIELDS = ("name", "prefix", "status", "images", "captions", "steps_per_epoch_at_batch_1", "error")


@dataclass
class _Scan:
    concepts: list[Concept] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)
    total_bytes: int = 0

    def problem(self, code: str, severity: Severity, path: str, message: str) -> None:
        self.problems.append(DatasetProblem(code=code, severity=severity, path=path, message=message))


@dataclass
class DatasetCatalog:
    store: ObjectStore
    table: DatasetsTable
    publisher: EventPublisher
    max_images: int = 20_000
    event_lease_seconds: int = DEFAULT_LEASE_SECONDS

    @property
    def outbox(self) -> Outbox:
        return Outbox.on(self.table, "name", self.publisher, self.event_lease_seconds)

    @classmethod
    def from_settings(cls) -> DatasetCatalog:
        settings = settings_of(DatasetSettings)
        return cls(
            ObjectStore(settings.assets_bucket_name),
            DatasetsTable(settings.datasets_table_name),
            EventPublisher(settings.events_topic_arn),
            max_images=settings.dataset_max_images,
            event_lease_seconds=settings.event_lease_seconds,
        )

    # ------------------------------------------------------------------ registration
    def handle_notification(self, notification: S3EventNotification) -> None:
        if notification.is_test_event:
            return
        for record in notification.records:
            name = dataset_of_marker(record.s3.object.decoded_key)
            if record.s3.bucket.name != self.store.bucket or name is None or not record.is_created:
                continue  # images and captions arriving: the marker says when they are all there
            self.register(name)

    def register(self, name: str) -> DatasetRecord | None:
        """Read the folder the marker marks ready; the stored record (None if the marker is gone)."""
        marker = self.store.head(dataset_prefix(name) + DATASET_MARKER)
        if marker is None:
            logger.info("marker deleted since the event was sent", extra={"dataset": name})
            return None
        version = f"{marker.last_modified}#{marker.etag}"
        existing = self.table.stored(name)
        if existing is not None and str(existing.get("marker_version", "")) >= version:
            self.outbox.flush(existing)  # a duplicate event: publish what an earlier attempt left
            return None if "deleted_at" in existing else DatasetRecord.model_validate(existing)
        record = self._inspect(name, version)
        event = _event_for(record)
        carried = (existing or {}).get(PENDING_EVENTS) or {}  # an older version's, not yet out
        if not self.table.put_version(record.model_dump(mode="json"), self.outbox.item_fields(event), carried):
            current = self.table.get(name)
            if current is not None:
                self.outbox.flush(current)
                return DatasetRecord.model_validate(current)
            return None
        self.outbox.publish(name, event)
        logger.info("dataset inspected", extra={"dataset": name, "status": record.status.value})
        return record

    def _inspect(self, name: str, version: str) -> DatasetRecord:
        now = utc_now()
        base: dict[str, Any] = {
            "name": name,
            "prefix": dataset_prefix(name),
            "marker_version": version,
            "registered_at": now,
            "updated_at": now,
        }
        if not re.match(DATASET_NAME_PATTERN, name):
            message = f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
            return DatasetRecord(
                **base, status=DatasetStatus.REJECTED, error={"code": "INVALID_DATASET_NAME", "message": message}
            )
        scan = self._scan(dataset_prefix(name))
        images = sum(c.images for c in scan.concepts)
        resolutions: Counter[str] = Counter()
        for concept in scan.concepts:
            resolutions.update(concept.resolutions)
        errors = [p for p in scan.problems if p.severity is Severity.ERROR]
        error = None
        if images == 0:
            error = {
                "code": "EMPTY_DATASET",
                "message": f"no usable images: put them in <repeats>_<concept>/ folders under {dataset_prefix(name)}",
            }
        elif errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
            error = {"code": "INVALID_DATASET", "message": f"{first.path}: {first.message}{more}"}
        return DatasetRecord(
            **base,
            status=DatasetStatus.REJECTED if error else DatasetStatus.REGISTERED,
            concepts=scan.concepts,
            images=images,
            captions=sum(c.captions for c in scan.concepts),
            steps_per_epoch_at_batch_1=sum(c.images * c.repeats for c in scan.concepts),
            bytes=scan.total_bytes,
            resolutions=dict(sorted(resolutions.items())),
            problems=scan.problems,
            error=error,
        )

    def _scan(self, prefix: str) -> _Scan:
        scan = _Scan()
        folders: dict[str, dict[str, ObjectInfo]] = {}
        for info in self.store.list_prefix(prefix):
            relative = info.key[len(prefix) :]
            scan.total_bytes += info.size
            if relative == DATASET_MARKER or relative.endswith("/") or relative.endswith(_IGNORED_SUFFIXES):
                continue
            parts = relative.split("/")
            if len(parts) == 1:
                scan.problem(
                    "FILE_OUTSIDE_CONCEPT",
                    Severity.WARNING,
                    relative,
                    "not in a <repeats>_<concept>/ folder, so not trained on",
                )
                continue
            folders.setdefault(parts[0], {})["/".join(parts[1:])] = info
        images_left = self.max_images
        for folder, files in sorted(folders.items()):
            match = CONCEPT_FOLDER.match(folder)
            if match is None:
                scan.problem(
                    "NO_REPEAT_COUNT",
                    Severity.WARNING,
                    folder + "/",
                    "folder name without a repeat count (name it <repeats>_<concept>, e.g. 10_"
                    f"{folder}); Kohya skips it, so its images are not trained on",
                )
                continue
            concept_name, repeats = match.group("concept"), int(match.group("repeats"))
            if repeats < 1:
                scan.problem("NO_REPEAT_COUNT", Severity.ERROR, folder + "/", "a repeat count of 0 trains nothing")
                continue
            concept, images_left = self._concept(
                folder, concept_name, repeats, files=files, scan=scan, images_left=images_left
            )
            scan.concepts.append(concept)
        return scan

    def _concept(
        self, folder: str, name: str, repeats: int, *, files: dict[str, ObjectInfo], scan: _Scan, images_left: int
    ) -> tuple[Concept, int]:
        images = {p: i for p, i in files.items() if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS}
        captions = {str(PurePosixPath(p).with_suffix("")) for p in files if p.endswith(CAPTION_EXTENSION)}
        for path in sorted(files):
            suffix = PurePosixPath(path).suffix.lower()
            if suffix not in IMAGE_EXTENSIONS and suffix != CAPTION_EXTENSION:
                scan.problem(
                    "NOT_AN_IMAGE",
                    Severity.WARNING,
                    f"{folder}/{path}",
                    f"not an image or caption ({', '.join(sorted(IMAGE_EXTENSIONS))} with .txt captions); ignored",
                )
        stems = {str(PurePosixPath(p).with_suffix("")) for p in images}
        for stem in sorted(captions - stems):
            scan.problem(
                "CAPTION_WITHOUT_IMAGE", Severity.WARNING, f"{folder}/{stem}.txt", "a caption without an image"
            )
        if len(images) > images_left:
            scan.problem(
                "TOO_MANY_IMAGES",
                Severity.ERROR,
                folder + "/",
                f"the dataset has more than {self.max_images} images (the registration limit)",
            )
            images = dict(list(sorted(images.items()))[:images_left])
        ordered = sorted(images.items())
        sizes = list(io_pool.map(self._size, [info for _, info in ordered]))
        resolutions: Counter[str] = Counter()
        with_caption = 0
        for (path, _), found in zip(ordered, sizes, strict=True):
            if isinstance(found, str):
                scan.problem("UNREADABLE_IMAGE", Severity.ERROR, f"{folder}/{path}", found)
                continue
            resolutions[f"{found[0]}x{found[1]}"] += 1
            if str(PurePosixPath(path).with_suffix("")) in captions:
                with_caption += 1
            else:
                scan.problem(
                    "MISSING_CAPTION",
                    Severity.WARNING,
                    f"{folder}/{path}",
                    f"no {PurePosixPath(path).with_suffix(CAPTION_EXTENSION).name} caption; trained with the "
                    f"caption {name!r} (the concept name)",
                )
        concept = Concept(
            folder=folder,
            concept=name,
            repeats=repeats,
            images=sum(resolutions.values()),
            captions=with_caption,
            resolutions=dict(sorted(resolutions.items())),
        )
        return concept, images_left - len(images)

    def _size(self, info: ObjectInfo) -> tuple[int, int] | str:
        """The image's width and height, or why it cannot be read."""
        if info.size == 0:
            return "an empty file"
        try:
            _, width, height = image_size(lambda offset, length: self.store.read_range(info, offset, length))
        except ImageUnreadable as exc:
            return str(exc)
        except ObjectChanged:
            return "changed while it was being read; drop the marker again once the upload is done"
        if width == 0 or height == 0:
            return f"an image of {width}x{height} pixels"
        return width, height

    # ------------------------------------------------------------------ reading and deleting
    def get(self, name: str) -> DatasetRecord:
        item = self.table.get(name)
        if item is None:
            raise DatasetNotFound(f"dataset {name!r} is not registered (drop {dataset_prefix(name)}{DATASET_MARKER})")
        return DatasetRecord.model_validate(item)

    def all(self) -> list[DatasetRecord]:
        return sorted((DatasetRecord.model_validate(i) for i in self.table.all()), key=lambda r: r.name)

    def delete(self, name: str) -> int:
        """Delete the dataset's files (the marker first, so nothing re-registers a half-deleted
        folder) and its record; how many files were deleted."""
        prefix = dataset_prefix(name)
        existed = self.table.get(name)
        keys = [info.key for info in self.store.list_prefix(prefix)]
        if existed is None and not keys:
            raise DatasetNotFound(f"dataset {name!r} does not exist")
        marker = prefix + DATASET_MARKER
        deleted = self.store.delete_keys([marker]) if marker in keys else 0
        deleted += self.store.delete_keys([k for k in keys if k != marker])
        summary = {"name": name, "prefix": prefix, "status": "DELETED"}
        event = Event(type=EventType.DATASET_DELETED, status="DELETED", dataset=summary)
        if self.table.mark_deleted(name, event.occurred_at.isoformat(), event.event_id, self.outbox.stored(event)):
            self.outbox.publish(name, event)
        elif (tombstone := self.table.stored(name)) is not None:
            self.outbox.flush(tombstone)  # an earlier deletion stopped before announcing itself
        self.table.purge(name)
        return deleted


def _event_for(record: DatasetRecord) -> Event:
    summary = record.model_dump(mode="json", include=set(_SUMMARY_FIELDS)) | {"problems": len(record.problems)}
    if record.status is DatasetStatus.REGISTERED:
        return Event(type=EventType.DATASET_REGISTERED, status=record.status.value, dataset=summary)
    return Event(type=EventType.DATASET_REJECTED, status=record.status.value, dataset=summary, error=record.error)
