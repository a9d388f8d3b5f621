"""One toolkit for requests that a Step Functions workflow carries out (fetch_model, train_lora and
the three endpoint actions): accept the request as a job, start the execution named after it,
run a step, and turn a caught failure into the job's error.

- ``WorkflowRequests.accept``: a redelivery resumes the job it made (starting it if it never
  started); a request that fails validation becomes a FAILED job; a valid one an ACCEPTED job that
  is then started. ``start`` starts the execution (named after the job, so a second start is a
  no-op) and records it on the job.
- ``run_step``: the steps' side of ``{"step", "state"}`` (``contracts.workflows.StepCall``).
- ``error_of_failure`` / ``failure_reason``: a ``Catch``'s ``$.failure`` as a job error.
- ``WorkflowRequests.open_job``: the open job a step works on, recording a start whose request
  worker died between StartExecution and the job's move (the workflow runs, so it was started).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from sdpipe import errors
from sdpipe.adapters.clients import THROTTLING_CODES, denial_message, error_code, is_access_denied
from sdpipe.adapters.workflows import Workflows, execution_arn
from sdpipe.contracts.jobs import JobStatus, RequestEnvelope
from sdpipe.contracts.workflows import JobRecord, StepCall, StepFailure
from sdpipe.errors import AccessDenied, ConfigurationError, SdpipeError, Throttled, ValidationFailed
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.requests import parse_request, record_failure, validation_message

_State = TypeVar("_State", bound=BaseModel)
_Model = TypeVar("_Model", bound=BaseModel)


@dataclass(frozen=True)
class Accepted:
    """What a valid request becomes: the params kept on the job, its deadline, any more fields."""

    params: dict[str, Any]
    deadline_seconds: int
    fields: dict[str, Any] = field(default_factory=dict)


def validated(model: type[_Model], raw: dict[str, Any], prefix: str = "params") -> _Model:
    """``raw`` as ``model``; ``ValidationFailed`` naming each field that is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(exc, prefix)) from None


@dataclass
class WorkflowRequests:
    ledger: JobLedger
    workflows: Workflows

    def accept(
        self,
        request: tuple[str, str | None, str],
        *,
        validate: Callable[[RequestEnvelope], Accepted],
        start: Callable[[JobRecord], None],
        public_params: Callable[[dict[str, Any]], dict[str, Any]] = dict,
    ) -> str:
        """The job id of a request (the message's body, ``action`` attribute and id)."""
        parsed = parse_request(*request)
        if self.ledger.resume_duplicate(parsed.job_id, start):
            return parsed.job_id
        try:
            if parsed.error is not None or parsed.envelope is None:
                raise parsed.error or ValidationFailed("unreadable request")
            accepted = validate(parsed.envelope)
        except SdpipeError as exc:
            given = parsed.envelope.params if parsed.envelope else {}
            record_failure(self.ledger, parsed, exc, {"params": public_params(given)})
            return parsed.job_id
        job = self.ledger.create(
            job_id=parsed.job_id,
            request_id=parsed.request_id,
            action=parsed.action,
            status=JobStatus.ACCEPTED,
            deadline_seconds=accepted.deadline_seconds,
            fields={"context": parsed.context, "params": accepted.params} | accepted.fields,
        )
        if job is not None:  # None: a concurrent duplicate created it and goes on with it
            start(job)
        return parsed.job_id

    def start(
        self, job: JobRecord, state_machine_arn: str | None, execution_input: BaseModel, *, status: JobStatus
    ) -> JobRecord | None:
        """Start the job's execution and move the job to ``status`` with its ARN."""
        if state_machine_arn is None:
            raise ConfigurationError(f"no state machine ARN is set for {job.action} jobs")
        arn = self.workflows.start(state_machine_arn, job.job_id, execution_input.model_dump(mode="json"))
        return self.ledger.move(job, status, allowed_from=[JobStatus.ACCEPTED], fields={"execution_arn": arn})

    def open_job(self, job_id: str, state_machine_arn: str | None, *, started_as: JobStatus, stops: str) -> JobRecord:
        """The open job a workflow step works on. Still ACCEPTED means the request's worker died
        (or is slow) between StartExecution and recording it: recorded here, once, conditionally."""
        job = self.ledger.open_job(job_id, stops=stops)
        if job.status is JobStatus.ACCEPTED and state_machine_arn:
            arn = execution_arn(state_machine_arn, job_id)
            moved = self.ledger.move(job, started_as, allowed_from=[JobStatus.ACCEPTED], fields={"execution_arn": arn})
            job = moved or self.ledger.open_job(job_id, stops=stops)  # not moved: someone else recorded it
        return job


def run_step(
    workflow: str,
    event: dict[str, Any],
    state: type[_State],
    steps: Mapping[str, Callable[[_State], BaseModel | dict[str, Any]]],
) -> dict[str, Any]:
    """Run the step ``event`` names on its state. AWS throttling is raised as ``Throttled``, which
    the ASL retries with backoff, and an IAM refusal as ``AccessDenied`` (the job's error names the
    missing permission); other errors go to the workflow's ``Catch`` as they are."""
    call = StepCall.model_validate(event)
    if call.step not in steps:
        raise ValueError(f"unknown {workflow} step {call.step!r}")
    try:
        result = steps[call.step](state.model_validate(call.state))
    except ClientError as exc:
        if error_code(exc) in THROTTLING_CODES:
            raise Throttled(str(exc)) from exc
        if is_access_denied(exc):
            raise AccessDenied(denial_message(exc)) from exc
        raise
    return result.model_dump(mode="json") if isinstance(result, BaseModel) else result


def error_of_failure(
    failure: StepFailure | None, *, fallback_code: str, timeout: dict[str, str] | None = None
) -> dict[str, str]:
    """Our exception's code and message when a Lambda step raised one, ``timeout`` for
    ``States.Timeout``, else ``fallback_code`` with the state's own error and cause."""
    failure = failure or StepFailure()
    name, message = failure.error, failure.cause
    detail = failure.lambda_error()
    if detail.error_message:
        name, message = detail.error_type or name, detail.error_message
    known = getattr(errors, name, None)
    if isinstance(known, type) and issubclass(known, SdpipeError):
        return {"code": known.code, "message": message}
    if name == "States.Timeout" and timeout is not None:
        return dict(timeout)
    return {"code": fallback_code, "message": f"{name}: {message}"[:2000]}


def failure_reason(failure: StepFailure | None) -> str:
    """A caught error as one readable reason (the service's own message when it gave one)."""
    failure = failure or StepFailure(Error="Error")
    detail = failure.lambda_error()
    cause = detail.error_message or detail.message or failure.cause
    return f"{failure.error}: {cause}" if cause else failure.error
