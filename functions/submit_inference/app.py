"""SubmitInference: txt2img/img2img requests from the requests topic, through SQS."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.lambda_support import action_attribute, come_back_soon, lease_seconds
from sdpipe.logic.inference_submit import InferenceIntake
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    intake = InferenceIntake.from_settings(claim_seconds=lease_seconds(context))

    @tracer.capture_method
    def handle(record: SQSRecord) -> None:
        job_id = intake.handle_message(record.body, action_attribute(record), record.message_id)
        logger.info("request handled", extra={"job_id": job_id})

    def record_handler(record: SQSRecord) -> None:
        come_back_soon(record, handle)

    metrics.add_metric(name="InferenceRequests", unit=MetricUnit.Count, value=len(event.get("Records", [])))
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
