"""RegisterModel: S3 ObjectCreated/ObjectRemoved events under models/, delivered through SQS."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.lambda_support import come_back_soon
from sdpipe.logic.registration import Registrar
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    registrar = Registrar.from_settings()

    @tracer.capture_method
    def record_handler(record: SQSRecord) -> None:
        come_back_soon(record, lambda r: registrar.handle_notification(S3EventNotification.model_validate_json(r.body)))

    metrics.add_metric(name="ModelEventsReceived", unit=MetricUnit.Count, value=len(event.get("Records", [])))
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
