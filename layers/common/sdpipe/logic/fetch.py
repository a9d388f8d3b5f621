"""``fetch_model``: bring a model file from a URL into ``models/`` through the FetchModel workflow.

The request becomes a job and an execution named after it. The workflow's steps (this module's
``step``) probe the URL under the SSRF rules, open a multipart upload, copy byte ranges in
parallel (or stream the whole body from a server without range support), complete it, and on any
failure abort it and fail the job with the cause. Registration, which reads the job id and the
expected sha256 from the object's metadata, finishes the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from sdpipe import errors
from sdpipe.adapters.http_source import HttpSource
from sdpipe.adapters.multipart import MultipartUploads
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.secrets import AuthSecrets
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.fetch import FetchModelParams
from sdpipe.contracts.jobs import REGISTERING, JobStatus
from sdpipe.contracts.models import ModelSource
from sdpipe.contracts.uploads import META_JOB_ID, META_SHA256, META_SOURCE, META_SOURCE_URL
from sdpipe.contracts.workflows import (
    FetchExecution,
    FetchSource,
    FetchState,
    JobRecord,
    ProbeResult,
    StepFailure,
    UploadState,
)
from sdpipe.errors import (
    FileTooLarge,
    ModelExists,
    SourceFailed,
    SourceMisbehaved,
    UploadNotFound,
    UploadPartsInvalid,
    ValidationFailed,
)
from sdpipe.layout import model_key_for, named_like_source
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.part_plan import plan_parts
from sdpipe.logic.uploads import part_problems, plan_of
from sdpipe.logic.url_policy import UrlPolicy, check_url
from sdpipe.logic.workflows import Accepted, WorkflowRequests, error_of_failure, run_step, validated
from sdpipe.settings import FetchSettings, settings_of

logger = Logger(child=True)

_FETCH_TIMEOUT = {
    "code": "FETCH_TIMED_OUT",
    "message": "a step of the fetch ran past its time limit (a slow or stalled server)",
}
# Stop streaming this long before the function's timeout, to fail with a clear message instead.
_STREAM_MARGIN_SECONDS = 30


def parts_key(job_id: str) -> str:
    """Where the workflow's distributed Map reads the list of parts from."""
    return f"jobs/{job_id}/fetch-parts.json"


@dataclass
class ModelFetcher:
    settings: FetchSettings
    ledger: JobLedger
    store: ObjectStore
    uploads: MultipartUploads
    workflows: Workflows
    secrets: AuthSecrets
    policy: UrlPolicy
    source_options: dict[str, Any] = field(default_factory=dict)  # tests inject resolver/connector

    @classmethod
    def from_settings(cls) -> ModelFetcher:
        settings = settings_of(FetchSettings)
        return cls(
            settings=settings,
            ledger=JobLedger.from_settings(settings),
            store=ObjectStore(settings.assets_bucket_name),
            uploads=MultipartUploads(settings.assets_bucket_name),
            workflows=Workflows(),
            secrets=AuthSecrets(),
            policy=UrlPolicy.from_strings(
                settings.fetch_allowed_schemes, settings.fetch_allowed_networks, settings.fetch_max_redirects
            ),
        )

    @property
    def requests(self) -> WorkflowRequests:
        return WorkflowRequests(self.ledger, self.workflows)

    # ------------------------------------------------------------------ requests
    def handle_message(self, body: str, attribute_action: str | None, message_id: str) -> str:
        return self.requests.accept(
            (body, attribute_action, message_id),
            validate=lambda envelope: Accepted(
                self.validate(envelope.params).model_dump(mode="json", exclude_none=True),
                deadline_seconds=self.settings.fetch_deadline_seconds,
            ),
            start=self._start,
            public_params=_public_params,  # a URL's query may hold a signature
        )

    def validate(self, raw: dict[str, Any]) -> FetchModelParams:
        params = validated(FetchModelParams, raw)
        try:
            check_url(params.url, self.policy)
        except errors.UrlRejected as exc:
            raise type(exc)(f"params.url: {exc.message}") from None
        if params.name is not None:
            try:
                # The path checked now; a name without an extension takes the source's at the probe.
                model_key_for(params.type, named_like_source(params.name, "source.safetensors", strict=False))
            except ValueError as exc:
                raise ValidationFailed(f"params.name: {exc}") from None
        secret = params.auth_secret
        if secret is not None and f"{self.settings.stack_name}/" not in secret:
            raise ValidationFailed(
                f"params.auth_secret: {secret!r} is not one of this stack's secrets; "
                f"name it {self.settings.stack_name}/<anything> (the functions may read only those)"
            )
        return params

    def _start(self, job: JobRecord) -> None:
        execution = FetchExecution(job_id=job.job_id, max_concurrency=self.settings.fetch_concurrency)
        self.requests.start(job, self.settings.fetch_model_state_machine_arn, execution, status=JobStatus.RUNNING)

    # ------------------------------------------------------------------ workflow steps
    def step(self, event: dict[str, Any], remaining_seconds: float = 900) -> dict[str, Any]:
        def copy_part(state: FetchState) -> dict[str, Any]:
            if state.part is None or state.start is None or state.end is None:
                raise ValidationFailed("copy_part needs part, start and end")
            return self.copy_part(state.job_id, state.part, state.start, state.end, remaining_seconds)

        steps: dict[str, Any] = {
            "probe": lambda state: self.probe(state.job_id),
            "copy_part": copy_part,
            "stream": lambda state: self.stream(state.job_id, remaining_seconds),
            "complete": lambda state: self.complete(state.job_id),
            "fail": lambda state: self.fail(state.job_id, state.failure),
        }
        return run_step("fetch", event, FetchState, steps)

    def probe(self, job_id: str) -> ProbeResult:
        """Check the URL, learn size, name and range support, and open the multipart upload."""
        job = self._running(job_id)
        params = FetchModelParams.model_validate(job.params)
        if job.upload:  # a retried probe: the upload is open already
            self._write_parts(job)
            return self._probe_result(job)
        source = self._source(job)
        found = source.probe(params.url)
        if found.size is not None and found.size > self.settings.fetch_max_bytes:
            raise FileTooLarge(f"the file is {found.size} bytes, over the {self.settings.fetch_max_bytes}-byte limit")
        if found.size == 0:
            raise SourceMisbehaved("the server announces an empty file")
        try:
            filename = named_like_source(params.name, found.filename)
        except ValueError as exc:
            raise ValidationFailed(f"params.name: {exc}") from None
        if not filename:
            raise ValidationFailed("params.name: the server gives no file name; name the file in params.name")
        try:
            key = model_key_for(params.type, filename)
        except ValueError as exc:
            raise ValidationFailed(f"params.name: {exc}" if params.name else f"the server's file name: {exc}") from None
        if not params.overwrite and self.store.head(key.key) is not None:
            raise ModelExists(f"{key.key} exists already; pass overwrite to replace it")
        ranges = found.ranges and found.size is not None
        # Without ranges the size may be unknown until the end: plan parts for the largest allowed.
        plan = plan_parts(
            found.size if ranges and found.size else self.settings.fetch_max_bytes, self.settings.fetch_part_bytes
        )
        metadata = {META_JOB_ID: job_id, META_SOURCE: ModelSource.URL.value, META_SOURCE_URL: _display(params.url)}
        if params.sha256:
            metadata[META_SHA256] = params.sha256
        upload_id = self.uploads.create(key.key, metadata)
        upload = UploadState(upload_id=upload_id, key=key.key, size=found.size or 0, part_size=plan.part_size)
        moved = self.ledger.move(
            job,
            JobStatus.RUNNING,
            allowed_from=[JobStatus.RUNNING],
            fields={
                "upload": upload,
                "fetch_url": found.url,  # after redirects; may carry a signature, so not public
                "source": FetchSource(filename=found.filename, size=found.size, ranges=bool(ranges)),
                "progress": {"bytes_total": found.size or 0, "bytes_done": 0},
            },
        )
        if moved is None:  # cancelled meanwhile (or a concurrent probe won): undo ours
            self.uploads.abort(key.key, upload_id)
            return self._probe_result(self._running(job_id))
        self._write_parts(moved)
        logger.info("probed", extra={"job_id": job_id, "key": key.key, "size": found.size, "ranges": ranges})
        return self._probe_result(moved)

    def copy_part(self, job_id: str, part: int, start: int, end: int, remaining_seconds: float = 900) -> dict[str, Any]:
        """One ranged GET into one UploadPart; memory is one part; done before the function's time is."""
        job = self._running(job_id)
        upload = self._upload(job)
        length = end - start + 1
        opened = self._source(job).open(
            str(job.fetch_url), byte_range=(start, end), deadline_seconds=_request_deadline(remaining_seconds)
        )
        try:
            content_range = opened.content_range()
            if opened.status != 206 or content_range is None or content_range[:2] != (start, end):
                sent = opened.headers.get("Content-Range") or "the whole file"
                raise SourceMisbehaved(f"part {part}: asked for bytes {start}-{end}, the server sent {sent}")
            if content_range[2] != upload.size:
                raise SourceMisbehaved(
                    f"part {part}: the server now says the file is {content_range[2]} bytes, not {upload.size}"
                )
            body = bytearray()
            for chunk in opened.iter_chunks(limit=length):
                body += chunk
        finally:
            opened.close()
        if len(body) != length:
            raise SourceFailed(f"part {part}: the connection ended after {len(body)} of {length} bytes")
        etag = self.uploads.upload_part(upload.key, upload.upload_id, part, body)
        self.ledger.progress(job, length)
        return {"part": part, "etag": etag}

    def stream(self, job_id: str, remaining_seconds: float) -> dict[str, Any]:
        """A server without range support: the whole body, one part at a time, in one invocation."""
        job = self._running(job_id)
        upload = self._upload(job)
        deadline = time.monotonic() + remaining_seconds - _STREAM_MARGIN_SECONDS
        part_size = upload.part_size
        announced = job.source.size if job.source else None
        limit = int(announced) if announced else self.settings.fetch_max_bytes
        # The request's own deadline comes just after the loop's, which says more when bytes flow.
        opened = self._source(job).open(
            str(job.fetch_url), deadline_seconds=_request_deadline(remaining_seconds) + _STREAM_MARGIN_SECONDS / 2
        )
        part, total, buffer = 1, 0, bytearray()
        try:
            for chunk in opened.iter_chunks(limit=limit):
                buffer += chunk
                total += len(chunk)
                if len(buffer) >= part_size:
                    self._stream_part(job, part, buffer[:part_size])
                    del buffer[:part_size]
                    part += 1
                if time.monotonic() > deadline:
                    raise errors.FetchTimedOut(
                        f"the server does not support range requests and sent only {total} bytes before the "
                        "function's time ran out; fetch from a server that supports ranges"
                    )
        except SourceMisbehaved:
            if announced:
                raise
            raise FileTooLarge(f"the file is over the {self.settings.fetch_max_bytes}-byte limit") from None
        finally:
            opened.close()
        if buffer or part == 1:
            self._stream_part(job, part, buffer)
        if announced and total != int(announced):
            raise SourceFailed(f"the connection ended after {total} of {announced} bytes")
        self.ledger.move(
            job,
            JobStatus.RUNNING,
            allowed_from=[JobStatus.RUNNING],
            fields={"upload": upload.model_copy(update={"size": total})},
        )
        return {"bytes": total}

    def _stream_part(self, job: JobRecord, part: int, body: bytearray) -> None:
        upload = self._upload(job)
        self.uploads.upload_part(upload.key, upload.upload_id, part, body)
        self.ledger.progress(job, len(body))

    def complete(self, job_id: str) -> dict[str, Any]:
        job = self._running(job_id)
        upload = self._upload(job)
        if job.phase == REGISTERING:
            return {"key": upload.key}
        plan = plan_of(upload)
        try:
            held = self.uploads.list_parts(upload.key, upload.upload_id)
        except UploadNotFound:
            found = self.store.head(upload.key)
            if found is None or found.metadata.get(META_JOB_ID) != job_id:
                raise
            held = {}  # completed by an attempt whose answer was lost
        if held:
            etags = {number: part.etag for number, part in held.items()}
            problems = part_problems(plan, etags, held)
            if problems:
                raise UploadPartsInvalid("; ".join(problems))
            self.uploads.complete(upload.key, upload.upload_id, etags)
        self.ledger.move(
            job,
            JobStatus.RUNNING,
            allowed_from=[JobStatus.RUNNING],
            fields={"phase": REGISTERING, "progress": {"bytes_total": plan.size, "bytes_done": plan.size}},
        )
        return {"key": upload.key}

    def fail(self, job_id: str, failure: StepFailure | None) -> dict[str, Any]:
        """Abort the upload, delete anything written under ``models/``, fail the job with the cause."""
        job = self.ledger.get(job_id)
        if job is None:
            return {"failed": False}
        upload = job.upload
        if upload:
            self.uploads.abort(upload.key, upload.upload_id)
            written = self.store.head(upload.key)
            if written is not None and written.metadata.get(META_JOB_ID) == job_id and job.phase != REGISTERING:
                self.store.delete_if_unchanged(written)
        error = error_of_failure(failure, fallback_code="FETCH_FAILED", timeout=_FETCH_TIMEOUT)
        moved = self.ledger.move(
            job, JobStatus.FAILED, allowed_from=[JobStatus.ACCEPTED, JobStatus.RUNNING], fields={"error": error}
        )
        logger.info("fetch failed", extra={"job_id": job_id, "recorded": moved is not None, "error": error})
        return {"failed": moved is not None, "error": error}

    # ------------------------------------------------------------------ helpers
    def _running(self, job_id: str) -> JobRecord:
        return self.requests.open_job(
            job_id, self.settings.fetch_model_state_machine_arn, started_as=JobStatus.RUNNING, stops="the fetch stops"
        )

    @staticmethod
    def _upload(job: JobRecord) -> UploadState:
        if job.upload is None:
            raise errors.UploadNotFound(f"job {job.job_id} has no multipart upload open (probe it first)")
        return job.upload

    def _source(self, job: JobRecord) -> HttpSource:
        params = FetchModelParams.model_validate(job.params)
        auth = self.secrets.auth_header(params.auth_secret) if params.auth_secret else None
        return HttpSource(
            self.policy,
            timeout=self.settings.fetch_connect_timeout_seconds,
            auth_header=auth,
            min_bytes_per_second=self.settings.fetch_min_bytes_per_second,
            **self.source_options,
        )

    def _write_parts(self, job: JobRecord) -> None:
        """The part list the distributed Map reads (too long for the state payload)."""
        if job.source is not None and job.source.ranges:
            items = json.dumps(plan_of(self._upload(job)).items()).encode()
            self.store.put_bytes(parts_key(job.job_id), items, "application/json")

    def _probe_result(self, job: JobRecord) -> ProbeResult:
        return ProbeResult(
            job_id=job.job_id,
            ranges=bool(job.source and job.source.ranges),
            bucket=self.store.bucket,
            parts_key=parts_key(job.job_id),
        )


def _request_deadline(remaining_seconds: float) -> float:
    """Seconds a request may take so that its step still ends, with a clear error, in time."""
    return max(1.0, remaining_seconds - _STREAM_MARGIN_SECONDS)


def _display(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0][:1024]


def _public_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (_display(v) if k == "url" and isinstance(v, str) else v) for k, v in params.items()}
