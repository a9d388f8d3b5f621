"""EndpointSteps: the endpoint workflows' own steps, invoked by Step Functions."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.logic.endpoint_steps import EndpointSteps
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    state = event.get("state") or {}
    logger.append_keys(job_id=state.get("job_id"), endpoint=state.get("name"), step=event.get("step"))
    return EndpointSteps.from_settings().step(event)
