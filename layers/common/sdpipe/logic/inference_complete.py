"""CompleteInference: SageMaker's success/error notification finishes the job, exactly once.

The images and ``result.json`` go to deterministic keys under ``jobs/<job_id>/`` and the
Generations items are keyed by job and index, so a replayed notification rewrites the same
bytes. The job then moves to SUCCEEDED or FAILED with a conditional write that gives the
endpoint slot back in the same transaction; a late or duplicate notification finds the job
terminal and changes nothing.

A job that was cancelled or timed out has no outputs: the container stops between two steps
when it is asked to (and says so: the job ends as it was asked to end); a success that raced
the cancel (written before the cancel moved the job, or arriving after it) is deleted again,
by the losing write or by any later delivery of the notification.
"""

from __future__ import annotations

import base64
import binascii
import json
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdpipe.adapters.generations_table import GenerationsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.contracts.events import utc_now
from sdpipe.contracts.jobs import JobStatus
from sdpipe.contracts.sagemaker_events import AsyncInferenceNotification
from sdpipe.contracts.workflows import CheckpointUsed, JobRecord
from sdpipe.errors import EndpointCrashed, EndpointFailed, WorkInProgress
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.parallel import io_pool
from sdpipe.settings import JobSettings, settings_of

logger = Logger(child=True)

_MAX_RESULT_BYTES = 512 * 1024 * 1024
_IN_FLIGHT = [JobStatus.QUEUED, JobStatus.RUNNING]
# Ends without outputs, which the container reports with these codes when it stops on request.
_STOPPED = {"CANCELLED": JobStatus.CANCELLED, "TIMED_OUT": JobStatus.TIMED_OUT}


class A1111Response(BaseModel):
    """The endpoint's answer: A1111's ``/sdapi/v1/txt2img`` response."""

    model_config = ConfigDict(defer_build=True)

    images: list[str]
    parameters: dict[str, Any] = {}
    info: str = "{}"


class GenerationInfo(BaseModel):
    """What the completion reads of the answer's ``info`` (the WebUI's, plus our own fields)."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    all_prompts: list[str] = []
    all_negative_prompts: list[str] = []
    all_seeds: list[int] = []
    steps: int | None = None
    sampler_name: str | None = None
    scheduler: str | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sd_model_name: str | None = None
    sd_model_hash: str | None = None
    sd_vae_name: str | None = None
    warnings: list[str] = []
    invocation_ms: float | None = None


class _ContainerError(BaseModel):
    """The body our container writes for an error it caught: ``{"error": {"code", "message"}}``."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    code: str = Field(min_length=1)
    message: str = Field(min_length=1)


class _ContainerFailure(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    error: _ContainerError


@dataclass
class InferenceCompletion:
    ledger: JobLedger
    store: ObjectStore
    generations: GenerationsTable

    @classmethod
    def from_settings(cls) -> InferenceCompletion:
        settings = settings_of(JobSettings)
        return cls(
            ledger=JobLedger.from_settings(settings),
            store=ObjectStore(settings.assets_bucket_name),
            generations=GenerationsTable(settings.generations_table_name),
        )

    def handle(self, notification: AsyncInferenceNotification) -> None:
        job_id = notification.inference_id
        # The job and the endpoint's output are independent reads: fetch them side by side.
        output = io_pool.submit(self._output, notification) if notification.succeeded else None
        job = self.ledger.get(job_id)
        if job is None:
            logger.warning("notification for an unknown job ignored", extra={"inference_id": job_id})
            return
        self.ledger.flush(job)
        status = job.status
        if status.is_terminal:
            logger.info("job already finished; late or duplicate notification", extra={"job_id": job_id})
            if notification.succeeded and status is not JobStatus.SUCCEEDED:
                self._discard_outputs(job)
            return
        if status is JobStatus.ACCEPTED:
            # Not invoked yet as far as the table knows: the submitting worker is between the
            # invocation and its write. Retry shortly rather than race it.
            raise WorkInProgress(f"job {job_id} is still ACCEPTED; the notification comes back", retry_after_seconds=5)
        if status is JobStatus.QUEUED:
            # The endpoint finished before the submitter recorded RUNNING: record it now (once).
            running = self.ledger.move(job, JobStatus.RUNNING, allowed_from=[JobStatus.QUEUED]) or self.ledger.get(
                job_id
            )
            if running is None or running.is_finished:
                return
            job = running
        if output is not None:
            self._succeed(job, notification, output)
        else:
            self._fail(job, self._failure(notification))

    def _fail(self, job: JobRecord, error: dict[str, str]) -> None:
        logger.info("job failed on the endpoint", extra={"job_id": job.job_id, "error": error})
        self.ledger.move(
            job,
            # The container stopped because the job was ended: the cancel (or the sweeper) is moving
            # it, or died between asking the endpoint to stop and doing so.
            _STOPPED.get(error.get("code", ""), JobStatus.FAILED),
            allowed_from=_IN_FLIGHT,
            fields={"error": error},
            endpoint=job.endpoint,
            in_flight_delta=-1,
        )

    def _failure(self, notification: AsyncInferenceNotification) -> dict[str, str]:
        """The container's own error (code and message) when it wrote one; else the container
        died without answering (our server answers every error it can catch, a CUDA OOM
        included): ENDPOINT_CRASHED with SageMaker's reason. SageMaker restarts the container;
        the job is not retried (a crash caused by the request would crash it again)."""
        key = self.store.key_of(notification.response.failure_location or "")
        if key is not None:
            try:
                return _ContainerFailure.model_validate_json(self.store.get_bytes(key, 1024 * 1024)).error.model_dump()
            except (FileNotFoundError, ValueError):  # gone, too large, or not our error body
                pass
        reason = notification.failure_reason or "no reason given"
        return EndpointCrashed(
            f"endpoint {notification.request.endpoint_name}: the model container stopped without answering "
            f"(a crash or out of memory; SageMaker restarts it): {reason}"
        ).to_error()

    def _output(self, notification: AsyncInferenceNotification) -> bytes | None:
        """The endpoint's output, or None when its location is outside the assets bucket."""
        key = self.store.key_of(notification.response.output_location or "")
        return None if key is None else self.store.get_bytes(key, _MAX_RESULT_BYTES)

    def _succeed(self, job: JobRecord, notification: AsyncInferenceNotification, output: Future[Any]) -> None:
        job_id = job.job_id
        try:
            body = output.result()
        except (FileNotFoundError, ValueError) as exc:  # gone, or over the size limit
            self._fail(job, EndpointFailed(f"the endpoint's output could not be read: {exc}").to_error())
            return
        if body is None:
            self._fail(
                job,
                EndpointFailed(
                    f"output location {notification.response.output_location!r} is not in the assets bucket"
                ).to_error(),
            )
            return
        try:
            response = A1111Response.model_validate_json(body)
            raw_info = json.loads(response.info)  # kept as the endpoint wrote it, in result.json
            info = GenerationInfo.model_validate(raw_info)
            pngs = [base64.b64decode(image, validate=True) for image in response.images]
        except (ValidationError, json.JSONDecodeError, binascii.Error, ValueError) as exc:
            self._fail(job, EndpointFailed(f"the endpoint's output is not a valid A1111 response: {exc}").to_error())
            return
        if not pngs:
            self._fail(job, EndpointFailed("the endpoint returned no images").to_error())
            return
        # Images, result and generation rows are independent writes: make them side by side.
        image_uris = [self.store.uri(f"jobs/{job_id}/images/{index}.png") for index in range(len(pngs))]
        seeds = info.all_seeds
        result = {
            "job_id": job_id,
            "images": image_uris,
            "all_seeds": seeds,
            "info": raw_info,
            "parameters": response.parameters,
        }
        result_key = f"jobs/{job_id}/result.json"
        finished = _parse_time(notification.event_time)
        rows = [
            _generation(job, info, index=i, uri=uri, seeds=seeds, created=finished) for i, uri in enumerate(image_uris)
        ]
        writes: list[Future[Any]] = [
            io_pool.submit(self.store.put_bytes, f"jobs/{job_id}/images/{index}.png", png, "image/png")
            for index, png in enumerate(pngs)
        ]
        writes.append(
            io_pool.submit(self.store.put_bytes, result_key, json.dumps(result, indent=2).encode(), "application/json")
        )
        writes.append(io_pool.submit(self.generations.put_all, rows))
        for write in writes:
            write.result()
        result_uri = self.store.uri(result_key)
        outputs = {
            "images": image_uris,
            "result": result_uri,
            "all_seeds": seeds,
            "warnings": info.warnings or job.warnings or [],
            "invocation_ms": info.invocation_ms,
        }
        moved = self.ledger.move(
            job,
            JobStatus.SUCCEEDED,
            allowed_from=_IN_FLIGHT,
            fields={"outputs": outputs},
            endpoint=job.endpoint,
            in_flight_delta=-1,
        )
        if moved is None:
            ended = self.ledger.get(job_id)
            if ended is not None and ended.status is not JobStatus.SUCCEEDED:
                logger.info("job ended meanwhile; its outputs are deleted", extra={"job_id": job_id})
                self._discard_outputs(ended)

    def _discard_outputs(self, job: JobRecord) -> None:
        """Delete what a success that lost to a cancel or a time-out wrote (idempotent)."""
        prefix = f"jobs/{job.job_id}/"
        keys = [info.key for info in self.store.list_prefix(prefix + "images/")]
        keys.append(prefix + "result.json")
        self.store.delete_keys(keys)
        rows = self.generations.delete_job(job.job_id)
        logger.info("outputs of a job that did not succeed deleted",
                    extra={"job_id": job.job_id, "images": len(keys) - 1, "generations": rows})  # fmt: skip


def _parse_time(value: str | None) -> datetime:
    if value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return utc_now()


def _generation(
    job: JobRecord, info: GenerationInfo, *, index: int, uri: str, seeds: list[int], created: datetime
) -> dict[str, Any]:
    """One row of the generations table, with the fields of a WebUI generations database."""
    model = job.model or CheckpointUsed()
    prompts, negatives = info.all_prompts, info.all_negative_prompts
    return {
        "job_id": job.job_id,
        "image_index": index,
        "prompt": prompts[index] if index < len(prompts) else info.prompt,
        "negative_prompt": negatives[index] if index < len(negatives) else info.negative_prompt,
        "steps": info.steps,
        "seed": seeds[index] if index < len(seeds) else None,
        "sampler": info.sampler_name,
        "scheduler": info.scheduler,
        "cfg_scale": info.cfg_scale,
        "width": info.width,
        "height": info.height,
        "model_name": info.sd_model_name or model.name or None,
        "model_hash": info.sd_model_hash or model.short_hash or "unknown",
        "loras": job.loras or [],
        "vae": info.sd_vae_name,
        "image_s3_uri": uri,
        "request_id": job.request_id or None,
        "created_at": created.isoformat(),
        "created_day": created.date().isoformat(),
    }
