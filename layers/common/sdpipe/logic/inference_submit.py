"""SubmitInference: a txt2img/img2img request becomes one job on one endpoint, exactly once.

1. The envelope and the A1111 payload are validated and every model the request names (checkpoint,
   LoRAs and embeddings in the prompt, VAE) is resolved; the endpoint is chosen
   (``inference_plan``). Anything wrong ends here as a FAILED job whose error names the field.
2. ``jobs/<job_id>/input.json`` is written (a deterministic key: duplicates write the same bytes),
   then the job is created ACCEPTED with a conditional put keyed on the request id. Only the
   delivery that creates it goes on; later ones find it and stop (or take over a dead worker's
   expired claim).
3. ACCEPTED → QUEUED takes a slot on the endpoint (``in_flight`` + 1 in the same transaction),
   InvokeEndpointAsync queues the work with the job id as its inference id, QUEUED → RUNNING.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.inference_runtime import AsyncInference
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.contracts.jobs import JobStatus, RequestEnvelope
from sdpipe.contracts.workflows import JobRecord
from sdpipe.errors import (
    AccessDenied,
    EndpointFailed,
    EndpointNotFound,
    SdpipeError,
    WorkInProgress,
)
from sdpipe.logic.inference_plan import InferencePlanner, Plan, sanitised
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.parallel import io_pool
from sdpipe.logic.requests import ParsedRequest, parse_request, record_failure
from sdpipe.settings import JobSettings, settings_of

logger = Logger(child=True)

# A job no delivery has invoked the endpoint for yet.
_UNDISPATCHED = (JobStatus.ACCEPTED, JobStatus.QUEUED)


@dataclass
class InferenceIntake:
    ledger: JobLedger
    planner: InferencePlanner
    store: ObjectStore
    runtime: AsyncInference
    deadline_seconds: int
    claim_seconds: int

    @classmethod
    def from_settings(cls, claim_seconds: int) -> InferenceIntake:
        settings = settings_of(JobSettings)
        return cls(
            ledger=JobLedger.from_settings(settings),
            planner=InferencePlanner(
                ModelsTable(settings.models_table_name),
                EndpointsTable(settings.endpoints_table_name),
                ObjectStore(settings.assets_bucket_name),
            ),
            store=ObjectStore(settings.assets_bucket_name),
            runtime=AsyncInference(),
            deadline_seconds=settings.inference_deadline_seconds,
            claim_seconds=claim_seconds,
        )

    # ------------------------------------------------------------------ intake
    def handle_message(self, body: str, attribute_action: str | None, message_id: str) -> str:
        """Take one request message; returns its job id."""
        parsed = parse_request(body, attribute_action, message_id)
        # The reads are round trips: look for the job while the request is being planned.
        existing_job = io_pool.submit(self.ledger.get, parsed.job_id)
        plan: Plan | None = None
        error = parsed.error
        if error is None and parsed.envelope is not None:
            try:
                plan = self.planner.plan(parsed.envelope)
            except SdpipeError as exc:
                error = exc
        existing = existing_job.result()
        if existing is not None:
            self.resume(existing)
            return parsed.job_id
        if plan is None or parsed.envelope is None:
            assert error is not None
            logger.info("request refused", extra={"job_id": parsed.job_id, "code": error.code, "reason": error.message})
            params = sanitised(parsed.envelope.params) if parsed.envelope else {}
            record_failure(self.ledger, parsed, error, {"params": params} if params else {})
            return parsed.job_id
        self._accept(parsed, parsed.envelope, plan)
        return parsed.job_id

    def _accept(self, parsed: ParsedRequest, envelope: RequestEnvelope, plan: Plan) -> None:
        """Create the job QUEUED on its endpoint (one transaction with the slot) and dispatch it."""
        input_key = f"jobs/{parsed.job_id}/input.json"
        written = io_pool.submit(
            self.store.put_bytes, input_key, plan.invocation.model_dump_json().encode(), "application/json"
        )
        model = plan.invocation.model
        params = sanitised(envelope.params)
        fields = {
            "context": envelope.context,
            "params": params,
            "warnings": plan.warnings,
            "endpoint": plan.endpoint,
            "sagemaker_endpoint": plan.sagemaker_endpoint,
            "input_uri": self.store.uri(input_key),
            "model": {"name": model.name, "short_hash": model.short_hash, "sha256": model.sha256},
            "loras": [{"name": lora.name, "weight": lora.weight} for lora in plan.invocation.loras],
            "claim_token": uuid.uuid4().hex,
            "claim_expires_at": int(time.time()) + self.claim_seconds,
        }
        try:
            job = self.ledger.create(
                job_id=parsed.job_id,
                request_id=parsed.request_id,
                action=parsed.action,
                status=JobStatus.QUEUED,
                deadline_seconds=self.deadline_seconds,
                fields=fields,
                endpoint=plan.endpoint,
                publish_in_background=True,
            )
        except EndpointNotFound as exc:  # deleted between the choice and the write
            record_failure(self.ledger, parsed, exc, {"params": params})
            return
        written.result()  # the input must exist before anything invokes the endpoint with it
        if job is None:  # a duplicate delivery created it first
            existing = self.ledger.get(parsed.job_id)
            if existing is not None:
                self.resume(existing)
            return
        try:
            self.dispatch(job)
        finally:
            self.ledger.drain()

    def resume(self, job: JobRecord) -> None:
        """A duplicate delivery: publish what a dead worker left, continue work it did not finish."""
        self.ledger.flush(job)
        if job.status not in _UNDISPATCHED:
            return
        claimed = self.ledger.claim(job, self.claim_seconds)
        if claimed is None:
            current = self.ledger.get(job.job_id)
            if current is None or current.status not in _UNDISPATCHED:
                return  # it moved on meanwhile
            # Another delivery holds the claim. Were this acknowledged and that worker dead, the
            # job would never be invoked: come back when the claim runs out.
            remaining = int(current.claim_expires_at or 0) - int(time.time())
            raise WorkInProgress(f"job {job.job_id} is being dispatched by another delivery",
                                 retry_after_seconds=remaining + 1)  # fmt: skip
        logger.info("taking over a job whose worker stopped", extra={"job_id": job.job_id})
        self.dispatch(claimed)

    def dispatch(self, job: JobRecord) -> None:
        """ACCEPTED → QUEUED (slot on the endpoint) → InvokeEndpointAsync → RUNNING, under our claim."""
        token, endpoint = job.claim_token, job.endpoint
        if job.status is JobStatus.ACCEPTED:
            try:
                queued = self.ledger.move(
                    job,
                    JobStatus.QUEUED,
                    allowed_from=[JobStatus.ACCEPTED],
                    claim_token=token,
                    endpoint=endpoint,
                    in_flight_delta=1,
                )
            except EndpointNotFound as exc:
                self.ledger.move(
                    job, JobStatus.FAILED, allowed_from=[JobStatus.ACCEPTED], fields={"error": exc.to_error()}
                )
                return
            if queued is None:
                return
            job = queued
        try:
            invoked = self.runtime.invoke(
                str(job.sagemaker_endpoint), str(job.input_uri), job.job_id, ttl_seconds=self.deadline_seconds
            )
        except (EndpointFailed, AccessDenied) as exc:
            self.ledger.move(
                job,
                JobStatus.FAILED,
                allowed_from=[JobStatus.QUEUED],
                fields={"error": exc.to_error()},
                endpoint=endpoint,
                in_flight_delta=-1,
            )
            return
        except BaseException:
            self.ledger.release(job)  # throttled, timed out...: the redelivery tries again
            raise
        self.ledger.move(
            job,
            JobStatus.RUNNING,
            allowed_from=[JobStatus.QUEUED],
            claim_token=token,
            drop_claim=True,
            fields={"inference_id": invoked.inference_id, "output_location": invoked.output_location},
        )
