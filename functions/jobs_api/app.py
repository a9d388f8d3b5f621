"""JobsApi: read, list and cancel jobs (invoked directly: the CLI and other clients call it).

Request: ``{"operation": "get", "job_id": "..."}``, ``{"operation": "list", "action": "txt2img",
"limit": 20}`` or ``{"operation": "cancel", "job_id": "...", "reason": "..."}``. Response:
``{"job": {...}}`` / ``{"jobs": [...]}``, or ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.contracts.jobs import CancelJob, GetJob, JobsApiRequest, ListJobs
from sdpipe.lambda_support import answer_direct
from sdpipe.logic.job_control import JobControl, public_view
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return answer_direct(event, JobsApiRequest, _answer)


def _answer(request: GetJob | ListJobs | CancelJob) -> dict[str, Any]:
    control = JobControl.from_settings()
    if isinstance(request, GetJob):
        return {"job": public_view(control.get(request.job_id))}
    if isinstance(request, ListJobs):
        return {"jobs": [public_view(job) for job in control.recent(request.action, request.limit)]}
    return {"job": public_view(control.cancel(request.job_id, request.reason))}
