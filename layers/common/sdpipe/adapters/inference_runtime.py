"""SageMaker asynchronous invocation (the only SageMaker call the request path makes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients, denial_message, is_access_denied
from sdpipe.errors import AccessDenied, EndpointFailed

# Errors that retrying the same call will not fix: the endpoint is gone or not in service.
_PERMANENT = {"ValidationError", "ValidationException", "ModelError", "ModelNotReadyException"}


@dataclass(frozen=True)
class Invocation:
    """A queued asynchronous inference: where SageMaker will write its output or its failure."""

    inference_id: str
    output_location: str
    failure_location: str = ""


class AsyncInference:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    def invoke(self, endpoint_name: str, input_location: str, inference_id: str, ttl_seconds: int) -> Invocation:
        """Queue one inference; returns SageMaker's output and failure locations.

        Permanent refusals raise ``EndpointFailed`` (``AccessDenied`` when IAM refuses the call);
        throttling and server errors propagate as ``ClientError`` so the delivery is retried.
        """
        runtime: Any = self._aws.get("sagemaker-runtime")
        try:
            response = runtime.invoke_endpoint_async(
                EndpointName=endpoint_name,
                InputLocation=input_location,
                ContentType="application/json",
                Accept="application/json",
                InferenceId=inference_id,
                RequestTTLSeconds=max(60, min(ttl_seconds, 21600)),
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if is_access_denied(exc):
                raise AccessDenied(denial_message(exc)) from exc
            if error.get("Code") in _PERMANENT:
                raise EndpointFailed(
                    f"endpoint {endpoint_name!r} refused the invocation: {error.get('Message') or error.get('Code')}"
                ) from exc
            raise
        return Invocation(
            inference_id=str(response.get("InferenceId") or inference_id),
            output_location=str(response.get("OutputLocation", "")),
            failure_location=str(response.get("FailureLocation", "")),
        )
