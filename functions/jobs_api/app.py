"""JobsApi: read, list and cancel jobs (invoked directly: the CLI and other clients call it).

Request: ``{"operation": "get", "job_id": "..."}``, ``{"operation": "list", "action": "txt2img",
"limit": 20}`` or ``{"operation": "cancel", "job_id": "...", "reason": "..."}``. Response:
``{"job": {...}}`` / ``{"jobs": [...]}``, or ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, TypeAdapter

from sdpipe.lambda_support import answer_direct
from sdpipe.logic.job_control import JobControl, public_view
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


class GetJob(BaseModel):
    operation: Literal["get"]
    job_id: str = Field(min_length=1, max_length=64)


class ListJobs(BaseModel):
    operation: Literal["list"]
    action: str | None = None
    limit: int = Field(default=20, ge=1, le=200)


class CancelJob(BaseModel):
    operation: Literal["cancel"]
    job_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="cancelled on request", max_length=500)


_Request = TypeAdapter(Annotated[GetJob | ListJobs | CancelJob, Field(discriminator="operation")])


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return answer_direct(event, _Request, _answer)


def _answer(request: GetJob | ListJobs | CancelJob) -> dict[str, Any]:
    control = JobControl.from_settings()
    if isinstance(request, GetJob):
        return {"job": public_view(control.get(request.job_id))}
    if isinstance(request, ListJobs):
        return {"jobs": [public_view(job) for job in control.recent(request.action, request.limit)]}
    return {"job": public_view(control.cancel(request.job_id, request.reason))}
