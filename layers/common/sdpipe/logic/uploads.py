"""Chunked multipart uploads of model files (the Uploads function).

An upload is a job (action ``upload_model``) that holds one S3 multipart upload under the right
``models/`` folder. The client PUTs parts to presigned URLs, ``complete_upload`` checks every part
against the plan and completes it, and registration (which reads the job id and the expected
sha256 from the object's metadata) finishes the job. The same ``request_id`` finds the same upload
again, which is how an interrupted client resumes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from sdpipe.adapters.multipart import HeldPart, MultipartUploads
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.contracts.events import utc_now
from sdpipe.contracts.jobs import REGISTERING, JobStatus, job_id_for
from sdpipe.contracts.models import ModelSource
from sdpipe.contracts.uploads import (
    META_JOB_ID,
    META_SHA256,
    META_SOURCE,
    PART_URL_BATCH,
    AbortUpload,
    CompleteUpload,
    CreateUpload,
    PartUrls,
    ResumeUpload,
)
from sdpipe.contracts.workflows import JobRecord, UploadState
from sdpipe.errors import (
    JobNotFound,
    ModelExists,
    UploadFinished,
    UploadPartsInvalid,
    ValidationFailed,
)
from sdpipe.layout import model_key_for
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.part_plan import PartPlan, plan_parts
from sdpipe.settings import UploadSettings, settings_of

logger = Logger(child=True)

UPLOAD_ACTION = "upload_model"


def plan_of(upload: UploadState) -> PartPlan:
    return PartPlan(size=upload.size, part_size=upload.part_size)


@dataclass
class ModelUploads:
    ledger: JobLedger
    store: ObjectStore
    uploads: MultipartUploads
    settings: UploadSettings

    @classmethod
    def from_settings(cls) -> ModelUploads:
        settings = settings_of(UploadSettings)
        return cls(
            ledger=JobLedger.from_settings(settings),
            store=ObjectStore(settings.assets_bucket_name),
            uploads=MultipartUploads(settings.assets_bucket_name),
            settings=settings,
        )

    # ------------------------------------------------------------------ operations
    def create(self, request: CreateUpload) -> dict[str, Any]:
        """Plan the parts, open the multipart upload and its job; or find the one opened before."""
        try:
            key = model_key_for(request.type, request.filename)
        except ValueError as exc:
            raise ValidationFailed(f"filename: {exc}") from None
        request_id = request.request_id or f"upload-{uuid.uuid4().hex}"
        job_id = job_id_for(request_id)
        existing = self.ledger.get(job_id)
        if existing is not None:
            return self._existing(existing, request, key.key)
        plan = plan_parts(request.size)
        if not request.overwrite and self.store.head(key.key) is not None:
            raise ModelExists(f"{key.key} exists already; pass overwrite to replace it")
        metadata = {META_JOB_ID: job_id, META_SOURCE: ModelSource.UPLOAD.value}
        if request.sha256:
            metadata[META_SHA256] = request.sha256
        upload_id = self.uploads.create(key.key, metadata)
        params = request.model_dump(mode="json", exclude={"operation", "request_id", "context", "expires_seconds"})
        job = self.ledger.create(
            job_id=job_id,
            request_id=request_id,
            action=UPLOAD_ACTION,
            status=JobStatus.RUNNING,
            deadline_seconds=self.settings.upload_deadline_seconds,
            fields={
                "context": request.context,
                "params": params,
                "upload": UploadState(upload_id=upload_id, key=key.key, size=plan.size, part_size=plan.part_size),
                "progress": {"bytes_total": plan.size},
            },
        )
        if job is None:  # a concurrent create with the same request_id won
            self.uploads.abort(key.key, upload_id)
            raced = self.ledger.get(job_id)
            assert raced is not None
            return self._existing(raced, request, key.key)
        logger.info("upload created", extra={"job_id": job_id, "key": key.key, "parts": plan.part_count})
        assert job.upload is not None
        return self._describe(job_id, job.upload, {}, request.expires_seconds)

    def resume(self, request: ResumeUpload) -> dict[str, Any]:
        job, upload = self._open_upload(request.job_id)
        if job.phase == REGISTERING:
            return self._registering(job, upload)
        held = self.uploads.list_parts(upload.key, upload.upload_id)
        return self._describe(job.job_id, upload, held, request.expires_seconds)

    def part_urls(self, request: PartUrls) -> dict[str, Any]:
        """Presigned URLs for the parts named (the ones after the first batch, or expired ones)."""
        job, upload = self._open_upload(request.job_id)
        if job.phase == REGISTERING:
            raise UploadFinished(f"upload {job.job_id} is complete; its parts can no longer be sent")
        plan = plan_of(upload)
        outside = sorted({n for n in request.part_numbers if not 1 <= n <= plan.part_count})
        if outside:
            raise ValidationFailed(f"part_numbers: {_numbers(outside)} outside this upload's 1..{plan.part_count}")
        urls, expire_at = self._presign(upload, sorted(set(request.part_numbers)), request.expires_seconds)
        return {"job_id": job.job_id, "urls": [{"part_number": n, "url": url} for n, url in urls.items()],
                "urls_expire_at": expire_at}  # fmt: skip

    def complete(self, request: CompleteUpload) -> dict[str, Any]:
        """Check the parts against the plan and what S3 holds, then complete (once)."""
        job, upload = self._open_upload(request.job_id)
        if job.phase == REGISTERING:
            return self._registering(job, upload)
        plan = plan_of(upload)
        held = self.uploads.list_parts(upload.key, upload.upload_id)
        problems = part_problems(plan, {p.part_number: p.etag for p in request.parts}, held)
        if problems:
            raise UploadPartsInvalid(
                f"upload {job.job_id} cannot complete: {'; '.join(problems)}. "
                "Upload the missing parts again (resume_upload gives their URLs), then complete."
            )
        if request.sha256:
            job = self._expect_sha256(job, request.sha256)
        self.uploads.complete(upload.key, upload.upload_id, {number: part.etag for number, part in held.items()})
        moved = self.ledger.move(
            job,
            JobStatus.RUNNING,
            allowed_from=[JobStatus.RUNNING],
            fields={"phase": REGISTERING, "progress": {"bytes_total": plan.size, "bytes_done": plan.size}},
        )
        logger.info("upload completed; registration takes over", extra={"job_id": job.job_id})
        return self._registering(moved or job, upload)

    def abort(self, request: AbortUpload) -> dict[str, Any]:
        job, upload = self._open_upload(request.job_id)
        if job.phase == REGISTERING:
            raise UploadFinished(f"upload {job.job_id} is complete; it can no longer be aborted")
        self.uploads.abort(upload.key, upload.upload_id)
        moved = self.ledger.move(
            job,
            JobStatus.CANCELLED,
            allowed_from=[JobStatus.RUNNING],
            fields={"error": {"code": "CANCELLED", "message": "upload aborted by the client"}},
        )
        return {"job_id": job.job_id, "status": (moved or job).status.value}

    # ------------------------------------------------------------------ helpers
    def _expect_sha256(self, job: JobRecord, sha256: str) -> JobRecord:
        """Note the sha256 on the job before S3 completes the object: registration, which the
        completion sets off, reads it there."""
        named = job.params.get("sha256")
        if named == sha256:
            return job
        if named:
            raise ValidationFailed(f"sha256: {sha256} is not the {named} this upload was created with")
        moved = self.ledger.move(
            job, JobStatus.RUNNING, allowed_from=[JobStatus.RUNNING], fields={"params": job.params | {"sha256": sha256}}
        )
        if moved is None:
            raise UploadFinished(f"upload {job.job_id} ended meanwhile")
        return moved

    def _open_upload(self, job_id: str) -> tuple[JobRecord, UploadState]:
        job = self.ledger.open_job(job_id, action=UPLOAD_ACTION, stops="upload again", finished=UploadFinished)
        if job.upload is None:
            raise JobNotFound(f"upload job {job_id!r} holds no upload")
        return job, job.upload

    def _existing(self, job: JobRecord, request: CreateUpload, key: str) -> dict[str, Any]:
        upload = job.upload
        if job.action != UPLOAD_ACTION or upload is None or upload.key != key or upload.size != request.size:
            raise ValidationFailed(f"request_id: {job.request_id!r} belongs to another upload or job ({job.job_id})")
        if job.is_finished:
            return {
                "job_id": job.job_id,
                "key": key,
                "status": job.status.value,
                "error": job.error,
                "outputs": job.outputs,
            }
        return self.resume(
            ResumeUpload(operation="resume_upload", job_id=job.job_id, expires_seconds=request.expires_seconds)
        )

    def _describe(
        self, job_id: str, upload: UploadState, held: dict[int, HeldPart], expires: int | None
    ) -> dict[str, Any]:
        """The plan, the parts S3 holds (right size) and the others, the first ``PART_URL_BATCH``
        of them with presigned URLs (``part_urls`` gives the rest)."""
        plan = plan_of(upload)
        done: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        for part in plan.parts():
            found = held.get(part.part)
            if found is not None and found.size == plan.part_length(part.part):
                done.append({"part_number": part.part, "etag": found.etag})
                continue
            missing.append({"part_number": part.part, "start": part.start, "end": part.end})
        urls, expire_at = self._presign(upload, [p["part_number"] for p in missing[:PART_URL_BATCH]], expires)
        for part_info in missing[:PART_URL_BATCH]:
            part_info["url"] = urls[part_info["part_number"]]
        return {
            "job_id": job_id,
            "status": JobStatus.RUNNING.value,
            "key": upload.key,
            "size": plan.size,
            "part_size": plan.part_size,
            "part_count": plan.part_count,
            "parts_done": done,
            "parts": missing,
            "urls_expire_at": expire_at,
        }

    def _presign(self, upload: UploadState, numbers: list[int], expires: int | None) -> tuple[dict[int, str], int]:
        """Presigned URLs of the parts ``numbers``, and when they expire (epoch seconds)."""
        expiry = expires or self.settings.part_url_expiry_seconds
        urls = {n: self.uploads.presign_part(upload.key, upload.upload_id, n, expiry) for n in numbers}
        return urls, int(utc_now().timestamp()) + expiry

    @staticmethod
    def _registering(job: JobRecord, upload: UploadState) -> dict[str, Any]:
        return {"job_id": job.job_id, "status": JobStatus.RUNNING.value, "phase": REGISTERING, "key": upload.key}


def part_problems(plan: PartPlan, given: dict[int, str], held: dict[int, HeldPart]) -> list[str]:
    problems = []
    expected = set(range(1, plan.part_count + 1))
    extra = sorted(set(given) - expected)
    if extra:
        problems.append(f"parts {_numbers(extra)} are not in the plan of {plan.part_count} parts")
    missing = sorted(expected - set(given))
    if missing:
        problems.append(f"parts {_numbers(missing)} were not listed")
    not_held = sorted(n for n in expected & set(given) if n not in held)
    if not_held:
        problems.append(f"S3 does not hold parts {_numbers(not_held)}")
    for number in sorted(expected & set(given) & set(held)):
        part = held[number]
        if part.size != plan.part_length(number):
            problems.append(f"part {number} is {part.size} bytes, expected {plan.part_length(number)}")
        elif part.etag != given[number]:
            problems.append(f"part {number}'s ETag {given[number]} is not the one S3 holds")
    return problems


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
