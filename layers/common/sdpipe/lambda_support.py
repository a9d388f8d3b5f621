"""Small things every SQS-triggered handler needs from its Lambda event and context."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import TypeAdapter, ValidationError

from sdpipe.errors import SdpipeError, WorkInProgress

logger = Logger(child=True)

# A claim must outlast the invocation that holds it by a little, never less.
_LEASE_MARGIN_SECONDS = 5


def lease_seconds(context: LambdaContext) -> int:
    """How long a claim taken now must last: until this invocation cannot be running any more."""
    return math.ceil(context.get_remaining_time_in_millis() / 1000) + _LEASE_MARGIN_SECONDS


def action_attribute(record: SQSRecord) -> str | None:
    """The ``action`` message attribute SNS raw delivery copied onto the SQS message."""
    # The raw event: Powertools' attribute container wraps values only on item access, not on get().
    attribute = (record.raw_event.get("messageAttributes") or {}).get("action") or {}
    value = attribute.get("stringValue")
    return str(value) if value is not None else None


_Request = TypeVar("_Request")


def answer_direct(
    event: dict[str, Any], request_type: TypeAdapter[_Request], handle: Callable[[_Request], dict[str, Any]]
) -> dict[str, Any]:
    """A directly invoked function's answer: ``handle``'s, or ``{"error": {"code", "message"}}``
    for a request that does not validate or a domain error (never a Lambda function error)."""
    from sdpipe.logic.requests import validation_message

    try:
        request = request_type.validate_python(event)
    except ValidationError as exc:
        return {"error": {"code": "VALIDATION_ERROR", "message": validation_message(exc)}}
    try:
        return handle(request)
    except SdpipeError as exc:
        return {"error": exc.to_error()}


# A delivery that finds the work claimed looks again after this, then twice as long each time,
# never later than the claim's end: most claims are let go within seconds (a duplicate S3 event
# racing the first), and a dead worker's claim still runs out and is taken over.
_FIRST_RECHECK_SECONDS = 5
# A delivery that failed unexpectedly (throttling that outlasted the SDK's retries, a dropped
# connection) is tried again as soon, then backing off to this: the queue's visibility timeout,
# at least the function's (15 min), would leave the work waiting for nothing.
_LONGEST_RETRY_SECONDS = 300


def recheck_after(receive_count: int, claim_ends_in: int) -> int:
    """Seconds until a message whose work is claimed by another delivery comes back."""
    return min(claim_ends_in, _FIRST_RECHECK_SECONDS * (1 << min(max(0, receive_count - 1), 16)))


def come_back_soon(record: SQSRecord, handle: Callable[[SQSRecord], None]) -> None:
    """Run ``handle``; when it raises, the message is not acknowledged and comes back soon, then
    less often: when the work is claimed by another delivery (``WorkInProgress``), at the latest
    when that claim runs out (so the work is taken over if its worker died); after any other
    error, within ``_LONGEST_RETRY_SECONDS``. Either way sooner than the queue's visibility
    timeout; the queue's redrive policy still counts each return as a receive."""
    try:
        handle(record)
    except Exception as failure:
        from sdpipe.adapters.queues import Redelivery

        receives = int((record.raw_event.get("attributes") or {}).get("ApproximateReceiveCount") or 1)
        claim_ends_in = failure.retry_after_seconds if isinstance(failure, WorkInProgress) else _LONGEST_RETRY_SECONDS
        try:
            Redelivery().after(record.event_source_arn, record.receipt_handle, recheck_after(receives, claim_ends_in))
        except Exception:  # the visibility timeout brings it back instead
            logger.warning("could not bring the message back sooner", exc_info=True)
        raise
