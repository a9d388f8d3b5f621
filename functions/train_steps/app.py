"""TrainSteps: the TrainLora workflow's steps (prepare, create, poll, register, fail)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.logic.training import LoraTraining
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(job_id=(event.get("state") or {}).get("job_id"), step=event.get("step"))
    return LoraTraining.from_settings().step(event)
