"""Local stand-in for SageMaker real-time models, endpoint configs, endpoints, asynchronous
invocation and (in ``sagemaker_training``) training jobs, honouring SageMaker's contracts with
real processes.

- CreateModel checks what SageMaker checks: the execution role exists and trusts SageMaker, and
  the image is in (the local) ECR.
- CreateEndpoint starts the container as SageMaker does: the image's ENTRYPOINT (read from its
  Dockerfile, ``sdpipe_local.images``) with ``serve`` appended, on a free port
  (``SAGEMAKER_BIND_TO_PORT``), with the Dockerfile's ENV, the model's container environment and
  the execution role's credentials. The endpoint is ``Creating`` until ``/ping`` answers, then
  ``InService``; a process that exits first makes it ``Failed`` with the end of its log as the
  reason. Stopping a container is SIGTERM, then SIGKILL. Current instance types (``ml.g5``,
  ``ml.g6``...) are accepted.
- InvokeEndpointAsync answers at once with the inference id and output location, then, in the
  background (``MaxConcurrentInvocationsPerInstance`` at a time): reads the input from S3, posts
  it to ``/invocations``, writes the response to ``S3OutputPath/<id>.out`` (or the error to
  ``S3FailurePath``) and publishes SageMaker's notification to the success or error topic, all
  with the execution role's credentials, as SageMaker does.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sdpipe_local.credentials import SAGEMAKER, RoleNotAssumable, RoleSessions, sagemaker_role_problem
from sdpipe_local.images import ImageError, ImageResolver
from sdpipe_local.sagemaker_training import TRAINING_OPERATIONS, LocalTrainingJobs, TrainingError

if TYPE_CHECKING:
    from sdpipe_local.chaos import Chaos

logger = logging.getLogger(__name__)

_HANDLED = {
    "CreateModel", "DescribeModel", "DeleteModel", "CreateEndpointConfig", "DescribeEndpointConfig",
    "DeleteEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint", "ListEndpoints",
}  # fmt: skip
_STARTUP_TIMEOUT_S = 600
_INVOCATION_TIMEOUT_S = 3600


class SageMakerError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Endpoint:
    name: str
    arn: str
    config_name: str
    role_arn: str = ""
    status: str = "Creating"
    failure_reason: str | None = None
    created: float = field(default_factory=_now)
    modified: float = field(default_factory=_now)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None
    executor: ThreadPoolExecutor | None = None
    # Held while a crashed container is replaced; invocations read the port under it.
    restarting: threading.Lock = field(default_factory=threading.Lock)
    restarts: int = 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Container:
    process: subprocess.Popen[bytes] | None
    port: int
    log_path: Path
    executor: ThreadPoolExecutor
    error: str | None = None

    def failed(self, reason: str) -> _Container:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.error = reason
        return self


class LocalSageMaker:
    def __init__(
        self,
        client: Any,
        environment: dict[str, str],
        state_dir: Path,
        region: str,
        account: str,
        *,
        sessions: RoleSessions,
        images: ImageResolver,
    ) -> None:
        self._client = client  # service name -> boto3 client on the local endpoint (as SageMaker itself)
        self._environment = environment  # without credentials: containers get their role's
        self._sessions = sessions
        self._images = images
        self._state_dir = state_dir
        self._region, self._account = region, account
        self._models: dict[str, dict[str, Any]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._throttled: dict[str, int] = {}
        self._lock = threading.Lock()
        self._invocations = 0  # asynchronous invocations accepted and not yet notified
        self.chaos: Chaos | None = None  # the fault injector, when the stack runs with one
        self.training = LocalTrainingJobs(client, environment, state_dir, self._arn, sessions=sessions, images=images)

    # ------------------------------------------------------------------ control plane
    def handles(self, operation: str) -> bool:
        return operation in _HANDLED or operation in TRAINING_OPERATIONS

    def throttle(self, operation: str, times: int) -> None:
        """Answer the next ``times`` calls of ``operation`` with ThrottlingException (fault tests)."""
        with self._lock:
            self._throttled[operation] = times

    def call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._throttled.get(operation, 0) > 0:
                self._throttled[operation] -= 1
                raise SageMakerError("ThrottlingException", "Rate exceeded")
        method = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        if operation in TRAINING_OPERATIONS:
            try:
                answer: dict[str, Any] = getattr(self.training, method)(body)
            except TrainingError as exc:
                raise SageMakerError(exc.code, exc.message) from None
            return answer
        result: dict[str, Any] = getattr(self, "_" + method)(body)
        return result

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self._region}:{self._account}:{kind}/{name.lower()}"

    def _create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["ModelName"]
        role = str(body.get("ExecutionRoleArn") or "")
        if (problem := sagemaker_role_problem(self._sessions, role)) is not None:
            raise SageMakerError("ValidationException", problem)
        container = body.get("PrimaryContainer") or (body.get("Containers") or [{}])[0]
        try:
            self._images.resolve(str(container.get("Image", "")), role)
        except ImageError as exc:
            raise SageMakerError("ValidationException", str(exc)) from None
        with self._lock:
            if name in self._models:
                raise SageMakerError(
                    "ValidationException", f'Cannot create already existing model "{self._arn("model", name)}".'
                )
            self._models[name] = body | {"CreationTime": _now(), "ModelArn": self._arn("model", name)}
        return {"ModelArn": self._arn("model", name)}

    def _describe_model(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._models.get(body["ModelName"])
        if model is None:
            raise SageMakerError(
                "ValidationException", f'Could not find model "{self._arn("model", body["ModelName"])}".'
            )
        return model

    def _delete_model(self, body: dict[str, Any]) -> dict[str, Any]:
        self._describe_model(body)
        self._models.pop(body["ModelName"], None)
        return {}

    def _create_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["EndpointConfigName"]
        for variant in body.get("ProductionVariants", []):
            if not str(variant.get("InstanceType", "ml.")).startswith("ml."):
                raise SageMakerError("ValidationException", f"{variant.get('InstanceType')!r} is not an instance type")
            if variant.get("ModelName") not in self._models:
                raise SageMakerError("ValidationException", f'Could not find model "{variant.get("ModelName")}".')
        with self._lock:
            if name in self._configs:
                raise SageMakerError(
                    "ValidationException", f'Cannot create already existing endpoint configuration "{name}".'
                )
            arn = self._arn("endpoint-config", name)
            self._configs[name] = body | {"CreationTime": _now(), "EndpointConfigArn": arn}
        return {"EndpointConfigArn": arn}

    def _describe_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        config = self._configs.get(body["EndpointConfigName"])
        if config is None:
            raise SageMakerError(
                "ValidationException", f'Could not find endpoint configuration "{body["EndpointConfigName"]}".'
            )
        return config

    def _delete_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        self._describe_endpoint_config(body)
        self._configs.pop(body["EndpointConfigName"], None)
        return {}

    def _create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name, config_name = body["EndpointName"], body["EndpointConfigName"]
        self._describe_endpoint_config({"EndpointConfigName": config_name})
        with self._lock:
            if name in self._endpoints:
                raise SageMakerError(
                    "ValidationException", f'Cannot create already existing endpoint "{self._arn("endpoint", name)}".'
                )
            endpoint = _Endpoint(name=name, arn=self._arn("endpoint", name), config_name=config_name)
            self._endpoints[name] = endpoint
        self._publish_state_change(endpoint)
        threading.Thread(target=self._start_container, args=(endpoint,), daemon=True).start()
        return {"EndpointArn": endpoint.arn}

    def _update_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new config: its container starts beside the old one, which keeps serving until the
        new one answers ``/ping``; if it never does, the endpoint stays on the old config with a
        FailureReason (SageMaker rolls a failed update back the same way)."""
        endpoint = self._endpoint(body["EndpointName"])
        config_name = body["EndpointConfigName"]
        self._describe_endpoint_config({"EndpointConfigName": config_name})
        with self._lock:
            if endpoint.status != "InService":
                raise SageMakerError(
                    "ValidationException",
                    f'Cannot update in-progress endpoint "{endpoint.arn}" (status {endpoint.status}).',
                )
            endpoint.status = "Updating"
        self._set_status(endpoint, "Updating")
        threading.Thread(target=self._replace_container, args=(endpoint, config_name), daemon=True).start()
        return {"EndpointArn": endpoint.arn}

    def endpoint_config_name(self, name: str) -> str | None:
        """The config an endpoint runs (Application Auto Scaling's permission check names it)."""
        endpoint = self._endpoints.get(name)
        return endpoint.config_name if endpoint is not None else None

    def _start_container(self, endpoint: _Endpoint) -> None:
        container = self._launch(endpoint.name, endpoint.config_name)
        if container.error is not None:
            self._set_status(endpoint, "Failed", container.error)
            return
        endpoint.process, endpoint.port, endpoint.log_path = container.process, container.port, container.log_path
        endpoint.executor, endpoint.role_arn = container.executor, self._role_of(endpoint.config_name)
        self._set_status(endpoint, "InService")

    def _replace_container(self, endpoint: _Endpoint, config_name: str) -> None:
        container = self._launch(endpoint.name, config_name)
        if container.error is not None:
            self._set_status(endpoint, "InService", f"the update to {config_name} failed: {container.error}")
            return
        old = _Endpoint(endpoint.name, endpoint.arn, endpoint.config_name, process=endpoint.process,
                        executor=endpoint.executor)  # fmt: skip
        endpoint.process, endpoint.port, endpoint.log_path = container.process, container.port, container.log_path
        endpoint.executor, endpoint.config_name = container.executor, config_name
        endpoint.role_arn, endpoint.failure_reason = self._role_of(config_name), None
        self._set_status(endpoint, "InService")
        old.stop()

    def _launch(self, name: str, config_name: str) -> _Container:
        """Start the config's container as a local process and wait for its ``/ping``."""
        config = self._configs[config_name]
        variant = config["ProductionVariants"][0]
        model = self._models[variant["ModelName"]]
        async_client = config.get("AsyncInferenceConfig", {}).get("ClientConfig", {})
        executor = ThreadPoolExecutor(
            max_workers=int(async_client.get("MaxConcurrentInvocationsPerInstance", 1)), thread_name_prefix=f"ep-{name}"
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        role = str(model.get("ExecutionRoleArn", ""))
        folder = self._state_dir / "endpoints" / name
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "container.log"
        try:
            image = self._images.resolve(str(container.get("Image", "")), role)
            command = image.command("serve")
            credentials = self._sessions.credentials(role, SAGEMAKER, name)
        except (ImageError, RoleNotAssumable) as exc:
            return _Container(None, port, log_path, executor).failed(f"the container could not be started: {exc}")
        env = dict(self._environment) | image.container_environment(folder / "root")
        env |= {k: str(v) for k, v in container.get("Environment", {}).items()}
        # SageMaker tells a container its port this way; locally each endpoint needs its own.
        env |= {"SAGEMAKER_BIND_TO_PORT": str(port), "SDPIPE_BIND_HOST": "127.0.0.1"}
        env |= credentials.environment()
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = _Container(process, port, log_path, executor)
        deadline = _now() + _STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                return started.failed("the container exited during start-up: " + " | ".join(tail))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        return started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if _now() > deadline:
                return started.failed("the container did not pass its /ping health check in time")
            time.sleep(0.2)

    def _role_of(self, config_name: str) -> str:
        model = self._models.get(self._configs[config_name]["ProductionVariants"][0]["ModelName"], {})
        return str(model.get("ExecutionRoleArn", ""))

    def _set_status(self, endpoint: _Endpoint, status: str, reason: str | None = None) -> None:
        endpoint.status, endpoint.failure_reason, endpoint.modified = status, reason, _now()
        logger.info("endpoint %s is %s%s", endpoint.name, status, f": {reason}" if reason else "")
        self._publish_state_change(endpoint)

    def _publish_state_change(self, endpoint: _Endpoint) -> None:
        """EventBridge's "SageMaker Endpoint State Change", as SageMaker publishes it."""
        detail: dict[str, Any] = {
            "EndpointName": endpoint.name,
            "EndpointArn": endpoint.arn,
            "EndpointConfigName": endpoint.config_name,
            # The event spells statuses in upper snake case, unlike DescribeEndpoint.
            "EndpointStatus": re.sub(r"(?<!^)(?=[A-Z])", "_", endpoint.status).upper(),
            "CreationTime": int(endpoint.created * 1000),
            "LastModifiedTime": int(endpoint.modified * 1000),
            "Tags": {},
        }
        if endpoint.failure_reason:
            detail["FailureReason"] = endpoint.failure_reason
        entry = {
            "Source": "aws.sagemaker",
            "DetailType": "SageMaker Endpoint State Change",
            "Resources": [endpoint.arn],
            "Detail": json.dumps(detail),
        }
        try:
            self._client("events").put_events(Entries=[entry])
        except Exception:  # state changes are informative; never break the endpoint for them
            logger.exception("could not publish the state change of %s", endpoint.name)

    def _endpoint(self, name: str) -> _Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise SageMakerError("ValidationException", f'Could not find endpoint "{self._arn("endpoint", name)}".')
        return endpoint

    def _describe_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self._endpoint(body["EndpointName"])
        config = self._configs.get(endpoint.config_name, {})
        described: dict[str, Any] = {
            "EndpointName": endpoint.name,
            "EndpointArn": endpoint.arn,
            "EndpointConfigName": endpoint.config_name,
            "EndpointStatus": endpoint.status,
            "CreationTime": endpoint.created,
            "LastModifiedTime": endpoint.modified,
            "ProductionVariants": [_variant_summary(v) for v in config.get("ProductionVariants", [])],
        }
        if "AsyncInferenceConfig" in config:
            described["AsyncInferenceConfig"] = config["AsyncInferenceConfig"]
        if endpoint.failure_reason:
            described["FailureReason"] = endpoint.failure_reason
        return described

    def _delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self._endpoint(body["EndpointName"])
        with self._lock:
            self._endpoints.pop(endpoint.name, None)
        endpoint.stop()
        self._set_status(endpoint, "Deleting")
        return {}

    def _list_endpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "Endpoints": [
                {"EndpointName": e.name, "EndpointArn": e.arn, "EndpointStatus": e.status, "CreationTime": e.created,
                 "LastModifiedTime": e.modified}
                for e in self._endpoints.values()
            ]
        }  # fmt: skip

    # ------------------------------------------------------------------ asynchronous invocation
    def invoke_async(self, endpoint_name: str, headers: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        endpoint = self._endpoint(endpoint_name)
        if endpoint.status != "InService":
            raise SageMakerError(
                "ValidationError", f"Endpoint {endpoint_name} is not in service (status {endpoint.status})."
            )
        config = self._configs[endpoint.config_name].get("AsyncInferenceConfig")
        if not config:
            raise SageMakerError(
                "ValidationError", f"Endpoint {endpoint_name} is not configured for asynchronous inference."
            )
        input_location = headers.get("x-amzn-sagemaker-inputlocation")
        if not input_location or not input_location.startswith("s3://"):
            raise SageMakerError("ValidationError", "InputLocation must be an s3:// URI")
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        output = config["OutputConfig"]
        output_location = f"{output['S3OutputPath'].rstrip('/')}/{inference_id}.out"
        failure_path = output.get("S3FailurePath", output["S3OutputPath"]).rstrip("/")
        failure_location = f"{failure_path}/{inference_id}-error.out"
        content_type = headers.get("x-amzn-sagemaker-content-type", "application/octet-stream")
        job = _Invocation(
            endpoint_name, inference_id, input_location, output_location, failure_location, content_type, _now()
        )
        assert endpoint.executor is not None
        with self._lock:
            self._invocations += 1
        endpoint.executor.submit(self._run_invocation, endpoint, job, output.get("NotificationConfig", {}))
        response_headers = {
            "X-Amzn-SageMaker-OutputLocation": output_location,
            "X-Amzn-SageMaker-FailureLocation": failure_location,
        }
        return response_headers, {"InferenceId": inference_id}

    def _run_invocation(self, endpoint: _Endpoint, job: _Invocation, notification: dict[str, str]) -> None:
        failure: str | None = None
        with endpoint.restarting:  # a container being replaced: wait for the new one
            process, port = endpoint.process, endpoint.port
        try:
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
                failure = f'ClientError: Received server error ({error.code}) from model with message "{message}".'
                bucket, key = _split(job.failure_location)
                s3.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=detail,
                    ContentType=error.headers.get("Content-Type", "application/json"),
                )
            else:
                bucket, key = _split(job.output_location)
                s3.put_object(Bucket=bucket, Key=key, Body=result, ContentType=result_type)
        except Exception as exc:  # the container died, the input is gone...: SageMaker reports it
            exit_status = _exit_status(process)
            if exit_status is not None:
                failure = f"ModelError: the model container exited (status {exit_status}) while processing the request"
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
                self._invocations -= 1

    @property
    def invocations_in_progress(self) -> int:
        with self._lock:
            return self._invocations

    def _restart_crashed(self, endpoint: _Endpoint, crashed: subprocess.Popen[bytes] | None) -> None:
        """Replace a container that died, as SageMaker replaces an unhealthy instance's container
        (once, however many invocations saw it die); the endpoint stays InService."""
        with endpoint.restarting:
            if endpoint.process is not crashed or endpoint.status != "InService":
                return  # replaced already (or the endpoint is going away)
            container = self._launch(endpoint.name, endpoint.config_name)
            container.executor.shutdown(wait=False)  # the endpoint keeps its own invocation queue
            if container.error is not None:
                reason = f"the container crashed and could not be restarted: {container.error}"
                self._set_status(endpoint, "Failed", reason)
                return
            endpoint.process, endpoint.port, endpoint.log_path = container.process, container.port, container.log_path
            endpoint.restarts += 1
            logger.info("endpoint %s: crashed container replaced (restart %d)", endpoint.name, endpoint.restarts)

    def _notify(self, job: _Invocation, notification: dict[str, str], failure: str | None, role_arn: str) -> None:
        message: dict[str, Any] = {
            "awsRegion": self._region,
            "eventTime": _iso(_now()),
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

    def close(self) -> None:
        self.training.close()
        for endpoint in list(self._endpoints.values()):
            endpoint.stop()
        self._endpoints.clear()


@dataclass(frozen=True)
class _Invocation:
    endpoint_name: str
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str
    content_type: str
    received: float


def _variant_summary(variant: dict[str, Any]) -> dict[str, Any]:
    count = variant.get("InitialInstanceCount", 1)
    return {
        "VariantName": variant.get("VariantName", "AllTraffic"),
        "CurrentInstanceCount": count,
        "DesiredInstanceCount": count,
        "CurrentWeight": 1.0,
        "DesiredWeight": 1.0,
    }


def _exit_status(process: subprocess.Popen[bytes] | None) -> int | None:
    """The container's exit status if it has died (given a moment to be reaped), else None."""
    if process is None:
        return None
    try:
        return process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return None


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")
