"""Register model files dropped (or uploaded, fetched, trained) under ``models/``.

Idempotent under duplicate and out-of-order S3 events: the item for a key is claimed per object
version (ETag), the outcome is written only while the claim holds, and the event to announce it
is stored on the item until published.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectInfo, ObjectStore
from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe.contracts.jobs import JobStatus
from sdpipe.contracts.models import ModelError, ModelRecord, ModelSource, ModelStatus
from sdpipe.contracts.s3_events import S3EventNotification, S3EventRecord
from sdpipe.contracts.uploads import (
    META_BASE_MODEL,
    META_DATASET,
    META_JOB_ID,
    META_SHA256,
    META_SOURCE,
    META_TRAINING_JOB,
)
from sdpipe.errors import ModelRejected, Sha256Mismatch, WorkInProgress
from sdpipe.layout import COMPANION_EXTENSIONS, ModelKey, parse_model_key
from sdpipe.logic.inspection import InspectionLimits, inspect_model
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.outbox import DEFAULT_LEASE_SECONDS, Outbox
from sdpipe.settings import RegistrationSettings, settings_of

logger = Logger(child=True)

_SUMMARY_FIELDS = (
    "model_id", "type", "name", "filename", "s3_key", "size", "status", "family", "format",
    "sha256", "short_hash", "source", "error",
)  # fmt: skip


@dataclass
class Registrar:
    store: ObjectStore
    table: ModelsTable
    publisher: EventPublisher
    limits: InspectionLimits
    # Uploads and fetches name their job in the object's metadata; registration finishes it.
    ledger: JobLedger | None = None
    # The claim on one object version; renewed every third of it while the worker inspects, so a
    # worker that dies lets another take over within this (not the invocation's 15 minutes).
    lease_seconds: int = 60
    event_lease_seconds: int = DEFAULT_LEASE_SECONDS

    @property
    def outbox(self) -> Outbox:
        return Outbox.on(self.table, "model_id", self.publisher, self.event_lease_seconds)

    @classmethod
    def from_settings(cls) -> Registrar:
        """Wire the adapters from the environment."""
        settings = settings_of(RegistrationSettings)
        return cls(
            store=ObjectStore(settings.assets_bucket_name),
            table=ModelsTable(settings.models_table_name),
            publisher=EventPublisher(settings.events_topic_arn),
            limits=InspectionLimits(
                header_cap=settings.safetensors_header_cap_bytes,
                pickle_cap=settings.pickle_scan_cap_bytes,
                chunk_size=settings.hash_chunk_bytes,
            ),
            ledger=JobLedger.from_settings(settings),
            event_lease_seconds=settings.event_lease_seconds,
        )

    def handle_notification(self, notification: S3EventNotification) -> None:
        if notification.is_test_event:
            logger.info("ignoring s3:TestEvent sent when the notification was configured")
            return
        for record in notification.records:
            self.handle_record(record)

    def handle_record(self, record: S3EventRecord) -> None:
        if record.s3.bucket.name != self.store.bucket:
            logger.warning("event for another bucket ignored", extra={"bucket": record.s3.bucket.name})
            return
        key = parse_model_key(record.s3.object.decoded_key)
        if key is None:
            logger.info("not under a model folder, ignored", extra={"key": record.s3.object.decoded_key})
            return
        if key.extension in COMPANION_EXTENSIONS:
            logger.info("companion file (preview, config, notes) ignored", extra={"key": key.key})
            return
        if record.is_removed:
            self.on_removed(key)
        elif record.is_created:
            self.on_created(key)

    def on_created(self, key: ModelKey) -> None:
        info = self.store.head(key.key)
        if info is None:
            # Deleted since the event was sent; the removal event settles the item.
            logger.info("object no longer exists, nothing to register", extra={"key": key.key})
            return
        token = uuid.uuid4().hex
        now = utc_now()
        claimed = self.table.claim(
            model_id=key.model_id,
            etag=info.etag,
            token=token,
            lease_seconds=self.lease_seconds,
            fields={
                "type": key.type.value,
                "name": key.name,
                "filename": key.filename,
                "s3_key": key.key,
                "size": info.size,
                "source": _source(info).value,
                "created_at": now.isoformat(),
                "updated_at": now.isoformat(),
            },
        )
        if not claimed:
            logger.info("this version is registered or being registered", extra={"key": key.key, "etag": info.etag})
            # One read serves both: publish what an earlier attempt left, then decide on the item.
            item = self.table.item(key.model_id)
            if item is not None:
                self.outbox.flush(item)
            current = ModelRecord.model_validate(item) if item is not None else None
            if current is None or current.etag != info.etag:
                return
            if current.status is ModelStatus.PENDING:
                # Another worker is registering it; should it have died, this event must come
                # back when its claim runs out, or the model would stay PENDING.
                remaining = current.claim_expires_at - int(time.time())
                raise WorkInProgress(f"{key.key} is being registered by another delivery",
                                     retry_after_seconds=remaining + 1)  # fmt: skip
            if current.is_settled:
                self._settle_job(info, current)  # a previous attempt may have stopped short
            return
        try:
            with _Heartbeat(lambda: self.table.renew_claim(key.model_id, token, self.lease_seconds),
                            every=self.lease_seconds / 3):  # fmt: skip
                record = self._inspect(key, info, now)
            event = _event_for(record)
            finished = self.table.finish(
                model_id=key.model_id,
                token=token,
                record=record,
                event_id=event.event_id,
                stored=self.outbox.stored(event),
            )
        except BaseException:
            # Unexpected (S3 throttling, the object changing mid-read): let the retry reclaim it.
            self.table.release_claim(key.model_id, token)
            raise
        if finished:
            self.outbox.publish(key.model_id, event)
            self._settle_job(info, record)
        else:
            logger.info("a newer version of the object took over; result dropped", extra={"key": key.key})

    def on_removed(self, key: ModelKey) -> None:
        if self.store.head(key.key) is not None:
            logger.info("object exists again, removal event is stale", extra={"key": key.key})
            return
        current = self.table.get(key.model_id)
        if current is None:
            return
        model = current.model_dump(mode="json", include=set(_SUMMARY_FIELDS)) | {"status": ModelStatus.DELETED.value}
        event = Event(type=EventType.MODEL_DELETED, status=ModelStatus.DELETED.value, model=model)
        if self.table.mark_deleted(
            model_id=key.model_id,
            updated_at=event.occurred_at.isoformat(),
            event_id=event.event_id,
            stored=self.outbox.stored(event),
        ):
            self.outbox.publish(key.model_id, event)
        else:
            self.flush_pending_event(key.model_id)

    def flush_pending_event(self, model_id: str) -> None:
        """Publish events a previous attempt stored and whose lease has run out."""
        item = self.table.item(model_id)
        if item is not None:
            self.outbox.flush(item)

    def _inspect(self, key: ModelKey, info: ObjectInfo, now: object) -> ModelRecord:
        base = {
            "model_id": key.model_id,
            "type": key.type,
            "name": key.name,
            "filename": key.filename,
            "s3_key": key.key,
            "size": info.size,
            "etag": info.etag,
            "source": _source(info),
            "training": _training(info),
            "created_at": now,
            "updated_at": utc_now(),
        }
        try:
            found = inspect_model(self.store, info, key, self.limits)
            expected = self._expected_sha256(info)
            if expected and expected.lower() != found.hashes.sha256:
                raise Sha256Mismatch(
                    f"the file's sha256 is {found.hashes.sha256}, not the expected {expected.lower()}; "
                    "the file was deleted"
                )
        except ModelRejected as exc:
            logger.info("rejected", extra={"key": key.key, "code": exc.code, "reason": exc.message})
            return ModelRecord.model_validate(
                base | {"status": ModelStatus.REJECTED, "error": ModelError(code=exc.code, message=exc.message)}
            )
        return ModelRecord.model_validate(
            base
            | {
                "status": ModelStatus.ACTIVE,
                "family": found.family,
                "format": found.format,
                "sha256": found.hashes.sha256,
                "short_hash": found.hashes.short_hash,
                "legacy_hash": found.hashes.legacy_hash,
                "tensor_hash": found.hashes.tensor_hash,
                "tensor_count": found.tensor_count,
                "metadata": found.metadata,
                "details": found.details,
            }
        )

    def _expected_sha256(self, info: ObjectInfo) -> str | None:
        """The sha256 the writer announced: in the object's metadata (known when the upload was
        created), or on the upload job that holds this key (a client that hashed while uploading
        names it when it completes, before S3 does)."""
        announced = info.metadata.get(META_SHA256)
        if announced or self.ledger is None or not info.metadata.get(META_JOB_ID):
            return announced
        job = self.ledger.get(info.metadata[META_JOB_ID])
        if job is None or job.upload is None or job.upload.key != info.key:
            return None
        expected = job.params.get("sha256")
        return str(expected) if expected else None

    def _settle_job(self, info: ObjectInfo, record: ModelRecord) -> None:
        """Finish the upload or fetch job that wrote this file; a rejected file it wrote goes.

        Idempotent: the job moves only from RUNNING, and the file is deleted only while it is
        still this version (a retry after a crash in between does what is left).
        """
        job_id = info.metadata.get(META_JOB_ID)
        if not job_id or self.ledger is None:
            return
        job = self.ledger.get(job_id)
        if job is None or job.upload is None or job.upload.key != info.key:
            # Metadata anyone could set: only the upload or fetch that holds this key is finished.
            logger.warning("object names a job that did not write it", extra={"key": info.key, "job_id": job_id})
            return
        if job.status is JobStatus.RUNNING:
            model = record.model_dump(mode="json", include=set(_SUMMARY_FIELDS)) | {"title": record.title}
            if record.status is ModelStatus.ACTIVE:
                self.ledger.move(
                    job, JobStatus.SUCCEEDED, allowed_from=[JobStatus.RUNNING], fields={"outputs": {"model": model}}
                )
            else:
                error = record.error.model_dump() if record.error else {"code": "MODEL_REJECTED", "message": "rejected"}
                self.ledger.move(
                    job,
                    JobStatus.FAILED,
                    allowed_from=[JobStatus.RUNNING],
                    fields={"error": error, "outputs": {"model": model}},
                )
        if record.status is ModelStatus.REJECTED and self.store.delete_if_unchanged(info):
            logger.info("rejected upload deleted", extra={"key": info.key, "job_id": job_id})


class _Heartbeat:
    """Call ``beat`` every ``every`` seconds in the background while the block runs."""

    def __init__(self, beat: Callable[[], object], every: float) -> None:
        self._beat, self._every = beat, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except Exception:  # a missed beat (throttled): the next one, or the claim's slack, covers it
                logger.warning("claim heartbeat failed", exc_info=True)


def _source(info: ObjectInfo) -> ModelSource:
    try:
        return ModelSource(info.metadata.get(META_SOURCE, ModelSource.DROP.value))
    except ValueError:
        return ModelSource.DROP


def _training(info: ObjectInfo) -> dict[str, str] | None:
    """What a LoRA trained by sdpipe was trained from (its object metadata)."""
    if _source(info) is not ModelSource.TRAINING:
        return None
    fields = {"job_id": META_TRAINING_JOB, "base_model_sha256": META_BASE_MODEL, "dataset": META_DATASET}
    return {name: info.metadata[key] for name, key in fields.items() if info.metadata.get(key)}


def _event_for(record: ModelRecord) -> Event:
    summary = record.model_dump(mode="json", include=set(_SUMMARY_FIELDS))
    if record.status is ModelStatus.ACTIVE:
        return Event(type=EventType.MODEL_REGISTERED, status=record.status.value, model=summary)
    return Event(
        type=EventType.MODEL_REJECTED,
        status=record.status.value,
        model=summary,
        error=record.error.model_dump() if record.error else None,
    )
