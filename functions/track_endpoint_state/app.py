"""TrackEndpointState: SageMaker's endpoint state-change events (EventBridge → SQS) keep the records true."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.logic.endpoint_drift import EndpointDrift
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    drift = EndpointDrift.from_settings()

    def record_handler(record: SQSRecord) -> None:
        change = json.loads(record.body)
        recorded = drift.track(change.get("detail") or {})
        logger.info("endpoint state change", extra={"detail": change.get("detail"), "recorded": recorded})

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
