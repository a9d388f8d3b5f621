"""EndpointRequests: deploy/update/delete_endpoint requests from the requests topic, through SQS."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.lambda_support import action_attribute
from sdpipe.logic.endpoint_requests import EndpointRequests
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    requests = EndpointRequests.from_settings()

    def record_handler(record: SQSRecord) -> None:
        job_id = requests.handle_message(record.body, action_attribute(record), record.message_id)
        logger.info("endpoint request handled", extra={"job_id": job_id})

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
