"""RegisterDataset: S3 events under datasets/, through SQS; the _READY marker registers a folder."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.logic.datasets import DatasetCatalog
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    catalog = DatasetCatalog.from_settings()

    def record_handler(record: SQSRecord) -> None:
        catalog.handle_notification(S3EventNotification.model_validate_json(record.body))

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
