"""InvokeEndpointAsync on a local endpoint, as SageMaker runs it.

The call answers at once with the inference id and the output location; then, in the
background (``MaxConcurrentInvocationsPerInstance`` at a time), the input is read from S3,
posted to the container's ``/invocations``, the response written to ``S3OutputPath/<id>.out``
(or the error to ``S3FailurePath``) and SageMaker's notification published to the success or
error topic, all with the execution role's credentials. A container that dies mid-invocation
fails that invocation (``ModelError``) and is replaced, as SageMaker replaces an unhealthy
instance's container.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sdpipe_local.credentials import SAGEMAKER, RoleSessions
from sdpipe_local.sagemaker_containers import Container, Endpoint, exit_status, now

if TYPE_CHECKING:
    from sdpipe_local.chaos import Chaos

logger = logging.getLogger(__name__)

_INVOCATION_TIMEOUT_S = 3600


class InvocationRefused(Exception):
    """InvokeEndpointAsync's ValidationError."""


@dataclass(frozen=True)
class _Invocation:
    endpoint_name: str
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str
    content_type: str
    received: float


class AsyncInvocations:
    def __init__(
        self,
        sessions: RoleSessions,
        region: str,
        *,
        relaunch: Callable[[Endpoint], Container],
        fail: Callable[[Endpoint, str], None],
    ) -> None:
        self._sessions = sessions
        self._region = region
        self._relaunch = relaunch  # a new container for the endpoint's current config
        self._fail = fail  # the endpoint is Failed, for this reason
        self._lock = threading.Lock()
        self._in_progress = 0  # accepted and not yet notified
        self.chaos: Chaos | None = None  # the fault injector, when the stack runs with one

    @property
    def in_progress(self) -> int:
        with self._lock:
            return self._in_progress

    def invoke(
        self, endpoint: Endpoint, config: dict[str, Any], headers: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """Queue one invocation on an InService endpoint with ``config`` (its AsyncInferenceConfig)."""
        input_location = headers.get("x-amzn-sagemaker-inputlocation")
        if not input_location or not input_location.startswith("s3://"):
            raise InvocationRefused("InputLocation must be an s3:// URI")
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        output = config["OutputConfig"]
        output_location = f"{output['S3OutputPath'].rstrip('/')}/{inference_id}.out"
        failure_path = output.get("S3FailurePath", output["S3OutputPath"]).rstrip("/")
        failure_location = f"{failure_path}/{inference_id}-error.out"
        content_type = headers.get("x-amzn-sagemaker-content-type", "application/octet-stream")
        job = _Invocation(
            endpoint.name, inference_id, input_location, output_location, failure_location, content_type, now()
        )
        assert endpoint.executor is not None
        with self._lock:
            self._in_progress += 1
        endpoint.executor.submit(self._run, endpoint, job, output.get("NotificationConfig", {}))
        response_headers = {
            "X-Amzn-SageMaker-OutputLocation": output_location,
            "X-Amzn-SageMaker-FailureLocation": failure_location,
        }
        return response_headers, {"InferenceId": inference_id}

    def _run(self, endpoint: Endpoint, job: _Invocation, notification: dict[str, str]) -> None:
        failure: str | None = None
        with endpoint.restarting:  # a container being replaced: wait for the new one
            process, port = endpoint.process, endpoint.port
        try:
            failure = self._answer(endpoint, job, process, port)
        except Exception as exc:  # the container died, the input is gone...: SageMaker reports it
            status = exit_status(process)
            if status is not None:
                failure = f"ModelError: the model container exited (status {status}) while processing the request"
                self._restart_crashed(endpoint, process)
            else:
                failure = f"{type(exc).__name__}: {exc}"
            logger.warning("async invocation %s on %s failed: %s", job.inference_id, endpoint.name, failure)
        try:
            self._notify(job, notification, failure, endpoint.role_arn)
        except Exception:  # a role that may not publish: SageMaker's notification is lost as in AWS
            logger.exception(
                "async invocation %s on %s: the notification could not be sent", job.inference_id, endpoint.name
            )
        finally:
            with self._lock:
                self._in_progress -= 1

    def _answer(
        self, endpoint: Endpoint, job: _Invocation, process: subprocess.Popen[bytes] | None, port: int
    ) -> str | None:
        """Post the input to the container and write its answer; the failure reason, if any."""
        # SageMaker reads the input, writes the result and notifies with the execution role.
        s3 = self._sessions.client("s3", endpoint.role_arn, SAGEMAKER)
        bucket, key = _split(job.input_location)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": job.content_type}
        )
        if self.chaos is not None and process is not None:
            self.chaos.crash_during(process.kill)
        try:
            with urllib.request.urlopen(request, timeout=_INVOCATION_TIMEOUT_S) as response:
                result, result_type = response.read(), response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as error:
            detail = error.read()
            message = detail[:2000].decode(errors="replace")
            bucket, key = _split(job.failure_location)
            content_type = error.headers.get("Content-Type", "application/json")
            s3.put_object(Bucket=bucket, Key=key, Body=detail, ContentType=content_type)
            return f'ClientError: Received server error ({error.code}) from model with message "{message}".'
        bucket, key = _split(job.output_location)
        s3.put_object(Bucket=bucket, Key=key, Body=result, ContentType=result_type)
        return None

    def _restart_crashed(self, endpoint: Endpoint, crashed: subprocess.Popen[bytes] | None) -> None:
        """Replace a container that died (once, however many invocations saw it die); the
        endpoint stays InService."""
        with endpoint.restarting:
            if endpoint.process is not crashed or endpoint.status != "InService":
                return  # replaced already (or the endpoint is going away)
            container = self._relaunch(endpoint)
            container.executor.shutdown(wait=False)  # the endpoint keeps its own invocation queue
            if container.error is not None:
                self._fail(endpoint, f"the container crashed and could not be restarted: {container.error}")
                return
            endpoint.serve_from(container)
            endpoint.restarts += 1
            logger.info("endpoint %s: crashed container replaced (restart %d)", endpoint.name, endpoint.restarts)

    def _notify(self, job: _Invocation, notification: dict[str, str], failure: str | None, role_arn: str) -> None:
        message: dict[str, Any] = {
            "awsRegion": self._region,
            "eventTime": _iso(now()),
            "receivedTime": _iso(job.received),
            "invocationStatus": "Failed" if failure else "Completed",
            "requestParameters": {
                "contentType": job.content_type,
                "endpointName": job.endpoint_name,
                "inputLocation": job.input_location,
            },
            "responseParameters": {"contentType": "application/json"},
            "inferenceId": job.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if failure:
            message["failureReason"] = failure
            message["responseParameters"]["failureLocation"] = job.failure_location
            topic = notification.get("ErrorTopic")
        else:
            message["responseParameters"]["outputLocation"] = job.output_location
            topic = notification.get("SuccessTopic")
        if topic:
            self._sessions.client("sns", role_arn, SAGEMAKER).publish(TopicArn=topic, Message=json.dumps(message))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")
