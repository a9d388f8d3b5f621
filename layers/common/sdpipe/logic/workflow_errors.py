"""Workflow steps as Lambda tasks: running one, and the job error for a caught failure."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from sdpipe import errors
from sdpipe.adapters.clients import THROTTLING_CODES, denial_message, error_code, is_access_denied
from sdpipe.errors import AccessDenied, SdpipeError, Throttled


def run_step(workflow: str, step: str, steps: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """Run ``steps[step]``; AWS throttling is raised as ``Throttled``, which the ASL retries with
    backoff, and an IAM refusal as ``AccessDenied`` (the job's error names the missing permission);
    other errors go to the workflow's ``Catch`` as they are."""
    if step not in steps:
        raise ValueError(f"unknown {workflow} step {step!r}")
    try:
        return steps[step]()
    except ClientError as exc:
        if error_code(exc) in THROTTLING_CODES:
            raise Throttled(str(exc)) from exc
        if is_access_denied(exc):
            raise AccessDenied(denial_message(exc)) from exc
        raise


def error_of_failure(
    failure: dict[str, Any], *, fallback_code: str, timeout: dict[str, str] | None = None
) -> dict[str, str]:
    """Our exception's code and message when a Lambda step raised one (its ``Cause`` is the
    Lambda error JSON), ``timeout`` for ``States.Timeout``, else ``fallback_code`` with the state's
    own error and cause."""
    name, cause = str(failure.get("Error") or "States.Runtime"), failure.get("Cause") or ""
    message = str(cause)
    try:
        detail = json.loads(cause) if isinstance(cause, str) and cause.startswith("{") else {}
    except ValueError:
        detail = {}
    if detail.get("errorMessage"):
        name, message = str(detail.get("errorType") or name), str(detail["errorMessage"])
    known = getattr(errors, name, None)
    if isinstance(known, type) and issubclass(known, SdpipeError):
        return {"code": known.code, "message": message}
    if name == "States.Timeout" and timeout is not None:
        return dict(timeout)
    return {"code": fallback_code, "message": f"{name}: {message}"[:2000]}
