"""CompleteInference: SageMaker's async success/error notifications, through SQS."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.contracts.sagemaker_events import AsyncInferenceNotification
from sdpipe.lambda_support import come_back_soon
from sdpipe.logic.inference_complete import InferenceCompletion
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    completion = InferenceCompletion.from_settings()

    @tracer.capture_method
    def handle(record: SQSRecord) -> None:
        notification = AsyncInferenceNotification.model_validate_json(record.body)
        logger.append_keys(job_id=notification.inference_id)
        completion.handle(notification)

    def record_handler(record: SQSRecord) -> None:
        come_back_soon(record, handle)

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
