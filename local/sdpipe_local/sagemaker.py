"""Local stand-in for SageMaker's control plane: models, endpoint configs and endpoints, with
asynchronous invocation (``sagemaker_async``) on containers run as SageMaker runs them
(``sagemaker_containers``), and training jobs (``sagemaker_training``).

- CreateModel checks what SageMaker checks: the execution role exists and trusts SageMaker, and
  the image is in (the local) ECR.
- CreateEndpoint starts the config's container; the endpoint is ``Creating`` until its ``/ping``
  answers, then ``InService``; a container that exits first makes it ``Failed`` with the end of
  its log as the reason. UpdateEndpoint starts the new container beside the old one. Every status
  change is published to EventBridge as SageMaker publishes it. Current instance types
  (``ml.g5``, ``ml.g6``...) are accepted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from sdpipe_local.credentials import RoleSessions, sagemaker_role_problem
from sdpipe_local.images import ImageError, ImageResolver
from sdpipe_local.sagemaker_async import AsyncInvocations, InvocationRefused
from sdpipe_local.sagemaker_containers import Container, ContainerLauncher, Endpoint, now
from sdpipe_local.sagemaker_training import TRAINING_OPERATIONS, LocalTrainingJobs, TrainingError

logger = logging.getLogger(__name__)

_HANDLED = {
    "CreateModel", "DescribeModel", "DeleteModel", "CreateEndpointConfig", "DescribeEndpointConfig",
    "DeleteEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint", "ListEndpoints",
}  # fmt: skip


class SageMakerError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


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
        self._sessions = sessions
        self._images = images
        self._region, self._account = region, account
        self._models: dict[str, dict[str, Any]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._throttled: dict[str, int] = {}
        self._lock = threading.Lock()
        self._containers = ContainerLauncher(environment, state_dir, sessions, images)
        self.invocations = AsyncInvocations(
            sessions, region, relaunch=lambda e: self._launch(e.name, e.config_name), fail=self._failed
        )
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
            self._models[name] = body | {"CreationTime": now(), "ModelArn": self._arn("model", name)}
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
            self._configs[name] = body | {"CreationTime": now(), "EndpointConfigArn": arn}
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
            endpoint = Endpoint(name=name, arn=self._arn("endpoint", name), config_name=config_name)
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

    def _start_container(self, endpoint: Endpoint) -> None:
        container = self._launch(endpoint.name, endpoint.config_name)
        if container.error is not None:
            self._set_status(endpoint, "Failed", container.error)
            return
        endpoint.serve_from(container)
        endpoint.executor, endpoint.role_arn = container.executor, self._role_of(endpoint.config_name)
        self._set_status(endpoint, "InService")

    def _replace_container(self, endpoint: Endpoint, config_name: str) -> None:
        container = self._launch(endpoint.name, config_name)
        if container.error is not None:
            self._set_status(endpoint, "InService", f"the update to {config_name} failed: {container.error}")
            return
        old = Endpoint(endpoint.name, endpoint.arn, endpoint.config_name, process=endpoint.process,
                        executor=endpoint.executor)  # fmt: skip
        endpoint.serve_from(container)
        endpoint.executor, endpoint.config_name = container.executor, config_name
        endpoint.role_arn, endpoint.failure_reason = self._role_of(config_name), None
        self._set_status(endpoint, "InService")
        old.stop()

    def _launch(self, name: str, config_name: str) -> Container:
        """Start the config's container and wait for its ``/ping``."""
        config = self._configs[config_name]
        model = self._models[config["ProductionVariants"][0]["ModelName"]]
        async_client = config.get("AsyncInferenceConfig", {}).get("ClientConfig", {})
        concurrency = int(async_client.get("MaxConcurrentInvocationsPerInstance", 1))
        return self._containers.launch(name, model, concurrency)

    def _role_of(self, config_name: str) -> str:
        model = self._models.get(self._configs[config_name]["ProductionVariants"][0]["ModelName"], {})
        return str(model.get("ExecutionRoleArn", ""))

    def _failed(self, endpoint: Endpoint, reason: str) -> None:
        self._set_status(endpoint, "Failed", reason)

    def _set_status(self, endpoint: Endpoint, status: str, reason: str | None = None) -> None:
        endpoint.status, endpoint.failure_reason, endpoint.modified = status, reason, now()
        logger.info("endpoint %s is %s%s", endpoint.name, status, f": {reason}" if reason else "")
        self._publish_state_change(endpoint)

    def _publish_state_change(self, endpoint: Endpoint) -> None:
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

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise SageMakerError("ValidationException", f'Could not find endpoint "{self._arn("endpoint", name)}".')
        return endpoint

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint ``name`` as it runs here (its container's process, its restarts): what a test
        acts on to stand in for a fault of the instance."""
        return self._endpoint(name)

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
        try:
            return self.invocations.invoke(endpoint, config, headers)
        except InvocationRefused as exc:
            raise SageMakerError("ValidationError", str(exc)) from None

    @property
    def invocations_in_progress(self) -> int:
        return self.invocations.in_progress

    def close(self) -> None:
        self.training.close()
        endpoints = list(self._endpoints.values())
        for endpoint in endpoints:  # all told first: each container may take seconds to exit
            endpoint.signal_stop()
        for endpoint in endpoints:
            endpoint.stop()
        self._endpoints.clear()


def _variant_summary(variant: dict[str, Any]) -> dict[str, Any]:
    count = variant.get("InitialInstanceCount", 1)
    return {
        "VariantName": variant.get("VariantName", "AllTraffic"),
        "CurrentInstanceCount": count,
        "DesiredInstanceCount": count,
        "CurrentWeight": 1.0,
        "DesiredWeight": 1.0,
    }
