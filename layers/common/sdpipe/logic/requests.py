"""Reading request envelopes (architecture §2) and answering the ones that cannot become work.

A body that is JSON but wrong still becomes a job: FAILED, with an error naming the field, and a
``job.failed`` event. Only a body that is not JSON at all is refused (``RequestNotJson``), which
sends the message to the dead-letter queue: there is no request id to answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sdpipe.contracts.jobs import (
    REQUEST_ID_PATTERN,
    SUPPORTED_ACTIONS,
    EnvelopeHead,
    JobStatus,
    RequestEnvelope,
    job_id_for,
)
from sdpipe.errors import RequestNotJson, SdpipeError, UnknownAction, ValidationFailed
from sdpipe.logic.jobs import JobLedger


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as one line per field: ``params.width: width must be a multiple of 8``."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


@dataclass
class ParsedRequest:
    """What could be read of a request; ``error`` set when it cannot be accepted as it is."""

    request_id: str
    action: str
    context: dict[str, Any] = field(default_factory=dict)
    envelope: RequestEnvelope | None = None
    error: SdpipeError | None = None

    @property
    def job_id(self) -> str:
        return job_id_for(self.request_id)


def parse_request(body: str, attribute_action: str | None, default_request_id: str) -> ParsedRequest:
    """Read an envelope from a message body; raises ``RequestNotJson`` only for non-JSON bodies."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestNotJson(f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        return ParsedRequest(
            default_request_id,
            attribute_action or "unknown",
            error=ValidationFailed(f"the request body must be a JSON object, got {type(data).__name__}"),
        )
    head = EnvelopeHead.model_validate(data)
    request_id = head.request_id or default_request_id
    if not isinstance(request_id, str) or not re.match(REQUEST_ID_PATTERN, request_id):
        bad = request_id
        request_id = default_request_id
        return ParsedRequest(
            request_id,
            str(head.action or attribute_action or "unknown"),
            error=ValidationFailed(
                f"request_id {bad!r} is invalid: 1-128 characters of letters, digits and ._:@/+=- "
                "starting with a letter or digit"
            ),
        )
    context: dict[str, Any] = head.context if isinstance(head.context, dict) else {}
    action = head.action
    parsed = ParsedRequest(request_id, str(action or attribute_action or "unknown"), context)
    if action is None:
        parsed.error = UnknownAction('the request has no action; set "action" in the body and the message attribute')
        return parsed
    if attribute_action is not None and attribute_action != action:
        parsed.error = ValidationFailed(
            f"the message attribute action={attribute_action!r} disagrees with the body's action={action!r}"
        )
        return parsed
    try:
        parsed.envelope = RequestEnvelope.model_validate(data | {"request_id": request_id})
    except ValidationError as exc:
        parsed.error = ValidationFailed(validation_message(exc))
    return parsed


def unknown_action_error(action: str) -> UnknownAction:
    supported = ", ".join(sorted(SUPPORTED_ACTIONS))
    return UnknownAction(f"action {action!r} is not handled by this deployment; supported actions: {supported}")


def record_failure(ledger: JobLedger, parsed: ParsedRequest, error: SdpipeError, fields: dict[str, Any]) -> None:
    """The request becomes a FAILED job (once), announced with ``job.failed``."""
    created = ledger.create(
        job_id=parsed.job_id,
        request_id=parsed.request_id,
        action=parsed.action,
        status=JobStatus.FAILED,
        deadline_seconds=0,
        fields={"context": parsed.context, "error": error.to_error()} | fields,
    )
    if created is None:
        existing = ledger.get(parsed.job_id)
        if existing is not None:
            ledger.flush(existing)


def reject_unknown_action(ledger: JobLedger, body: str, attribute_action: str | None, message_id: str) -> None:
    """The catch-all subscription's consumer: requests whose action nobody else takes."""
    parsed = parse_request(body, attribute_action, message_id)
    if parsed.error is None and parsed.action in SUPPORTED_ACTIONS:
        # e.g. a txt2img body published without the attribute: say how to fix it.
        parsed.error = UnknownAction(
            f'the body\'s action is {parsed.action!r} but the message attribute "action" is '
            f"{attribute_action!r}; set the attribute to the same value so the request is routed"
        )
    elif parsed.error is None:
        parsed.error = unknown_action_error(parsed.action)
    record_failure(ledger, parsed, parsed.error, {})
