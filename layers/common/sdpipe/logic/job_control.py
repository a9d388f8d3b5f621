"""Reading, cancelling and timing out jobs (the CLI's ``jobs`` commands, ``cancel_job``, the sweeper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import ValidationError

from sdpipe.adapters.multipart import MultipartUploads
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.sagemaker import SageMakerTraining
from sdpipe.contracts.events import utc_now
from sdpipe.contracts.inference import StopRequest, stop_request_key
from sdpipe.contracts.jobs import REGISTERING, Action, CancelJobParams, JobStatus
from sdpipe.contracts.workflows import JobRecord
from sdpipe.errors import JobAlreadyFinished, JobNotCancellable, SdpipeError, ValidationFailed
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.requests import parse_request, record_failure, validation_message
from sdpipe.settings import JobSettings, settings_of

logger = Logger(child=True)

# Fields that stay on the item for the system's own bookkeeping; readers do not need them.
_INTERNAL = ("pending_events", "claim_token", "claim_expires_at", "open_shard", "fetch_url", "progress_announced_at")
_MAX_RACES = 5
_INFERENCE = frozenset({Action.TXT2IMG, Action.IMG2IMG})
_WORKFLOW_ACTIONS = frozenset({Action.DEPLOY_ENDPOINT, Action.UPDATE_ENDPOINT, Action.DELETE_ENDPOINT})


def public_view(job: JobRecord) -> dict[str, Any]:
    return {k: v for k, v in job.item().items() if k not in _INTERNAL}


@dataclass
class JobControl:
    ledger: JobLedger
    # Upload and fetch jobs hold a multipart upload; ending such a job early aborts it.
    uploads: MultipartUploads | None = None
    # A train_lora job runs a SageMaker training job; ending the job early stops it.
    training: SageMakerTraining | None = None
    # An inference job ending early asks its endpoint to stop (``jobs/<id>/stop.json``).
    stops: ObjectStore | None = None

    @classmethod
    def from_settings(cls) -> JobControl:
        settings = settings_of(JobSettings)
        return cls(
            JobLedger.from_settings(settings),
            MultipartUploads(settings.assets_bucket_name),
            SageMakerTraining(),
            ObjectStore(settings.assets_bucket_name),
        )

    def get(self, job_id: str) -> JobRecord:
        return self.ledger.require(job_id)

    def recent(self, action: str | None = None, limit: int = 20) -> list[JobRecord]:
        return self.ledger.recent(action, limit)

    def cancel(self, job_id: str, reason: str) -> JobRecord:
        """Cancel a job that has not finished; the cancelled job (a finished one is an error)."""
        job = self.get(job_id)
        if job.action in _WORKFLOW_ACTIONS and not job.is_finished:
            # Stopping a workflow half-way would leave SageMaker resources nobody tracks.
            raise JobNotCancellable(
                f"job {job_id} is an {job.action} workflow; it cannot be cancelled half-way "
                "(let it finish, then update or delete the endpoint)"
            )
        finished = self._finish(job_id, JobStatus.CANCELLED, {"code": "CANCELLED", "message": reason})
        self._abort_upload(finished)
        self._stop_training(finished)
        return finished

    def handle_cancel_request(self, body: str, attribute_action: str | None, message_id: str) -> None:
        """A ``cancel_job`` request: itself a job, SUCCEEDED once the target is cancelled."""
        parsed = parse_request(body, attribute_action, message_id)
        existing = self.ledger.get(parsed.job_id)
        if existing is not None:
            self.ledger.flush(existing)
            return
        try:
            if parsed.error is not None:
                raise parsed.error
            assert parsed.envelope is not None
            try:
                params = CancelJobParams.model_validate(parsed.envelope.params)
            except ValidationError as exc:
                raise ValidationFailed(validation_message(exc, "params")) from None
            cancelled = self.cancel(params.job_id, params.reason)
        except SdpipeError as exc:
            record_failure(self.ledger, parsed, exc, {})
            return
        self.ledger.create(
            job_id=parsed.job_id,
            request_id=parsed.request_id,
            action=parsed.action,
            status=JobStatus.SUCCEEDED,
            deadline_seconds=0,
            fields={
                "context": parsed.context,
                "params": params.model_dump(),
                "outputs": {"cancelled_job_id": cancelled.job_id},
            },
        )

    def sweep(self) -> list[str]:
        """Time out every open job past its deadline; the ids of those timed out."""
        now = utc_now().isoformat()
        timed_out = []
        for job in self.ledger.open_past_deadline(now):
            self.ledger.flush(job)
            message = f"the job did not finish by its deadline {job.deadline} (status was {job.status.value})"
            if job.upload and job.phase != REGISTERING:
                message += "; its abandoned multipart upload was aborted"
            try:
                finished = self._finish(job.job_id, JobStatus.TIMED_OUT, {"code": "TIMED_OUT", "message": message})
            except JobAlreadyFinished:
                continue
            self._abort_upload(finished)
            self._stop_training(finished)
            timed_out.append(job.job_id)
        return timed_out

    def _abort_upload(self, job: JobRecord) -> None:
        """Abort the multipart upload a finished job held (none once it was completed)."""
        upload = job.upload
        if upload is None or job.phase == REGISTERING or self.uploads is None:
            return
        if self.uploads.abort(upload.key, upload.upload_id):
            logger.info("multipart upload aborted", extra={"job_id": job.job_id, "key": upload.key})

    def _stop_training(self, job: JobRecord) -> None:
        """Stop the training job of a train_lora job that ended early (its workflow then sees it
        Stopped and ends; the job keeps the status it was given here)."""
        name = job.training.name if job.training else None
        if name and self.training is not None and self.training.stop(name):
            logger.info("training job stopped", extra={"job_id": job.job_id, "training_job": name})

    def _ask_endpoint_to_stop(self, job: JobRecord, status: JobStatus, reason: str) -> None:
        """Tell the endpoint, before the job ends, to stop generating it between two steps.

        Written first so that a crash between the two leaves a container that stops (and reports
        the stop, which finishes the job) rather than a finished job the endpoint works on; a
        request that then loses the race to the job's own end leaves a file nobody reads."""
        if self.stops is None:
            return
        request = StopRequest.model_validate({"status": status.value, "reason": reason})
        self.stops.put_bytes(stop_request_key(job.job_id), request.model_dump_json().encode(), "application/json")

    def _finish(self, job_id: str, status: JobStatus, error: dict[str, str]) -> JobRecord:
        for _ in range(_MAX_RACES):
            job = self.get(job_id)
            current = job.status
            if current.is_terminal:
                raise JobAlreadyFinished(f"job {job_id} already finished as {current.value}")
            if job.action in _INFERENCE:
                self._ask_endpoint_to_stop(job, status, error["message"])
            # Only inference jobs hold a slot on their endpoint (endpoint workflows name one too).
            holds_slot = current in (JobStatus.QUEUED, JobStatus.RUNNING) and job.action in _INFERENCE
            moved = self.ledger.move(
                job,
                status,
                allowed_from=[current],
                fields={"error": error},
                endpoint=job.endpoint if holds_slot else None,
                in_flight_delta=-1 if holds_slot else 0,
            )
            if moved is not None:
                logger.info("job finished", extra={"job_id": job_id, "status": status.value})
                return moved
        raise RuntimeError(f"job {job_id} kept changing; try again")
