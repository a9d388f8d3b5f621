"""FetchSteps: the FetchModel workflow's steps (probe, copy_part, stream, complete, fail)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.logic.fetch import ModelFetcher
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


@logger.inject_lambda_context(log_event=False)  # never log what could carry a signed URL
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    state = event.get("state") or {}
    logger.append_keys(job_id=state.get("job_id"), step=event.get("step"), part=state.get("part"))
    return ModelFetcher.from_settings().step(event, remaining_seconds=context.get_remaining_time_in_millis() / 1000)
