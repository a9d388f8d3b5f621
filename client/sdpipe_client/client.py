"""The Python client: publish requests, follow jobs, fetch their images, manage endpoints.

Everything goes through the stack's public surface (the requests topic, the JobsApi function,
the bucket), so it works the same against AWS and against the local stack.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.contracts.jobs import JobStatus, job_id_for
from sdpipe.errors import SdpipeError
from sdpipe_client.stack import StackOutputs, stack_outputs


class JobFailed(SdpipeError):
    """Raised by ``wait`` for a job that ended in anything but SUCCEEDED."""

    code = "JOB_FAILED"


class FunctionCrashed(SdpipeError):
    """The function's runtime died or timed out under the call (Lambda's own errorType is the code)."""

    code = "FUNCTION_CRASHED"


# The errorType Lambda answers when the execution environment itself failed, not the handler.
_RUNTIME_CRASHES = frozenset({"Runtime.ExitError", "Sandbox.Timedout", "Runtime.Unknown"})


@dataclass
class Sdpipe:
    outputs: StackOutputs
    aws: AwsClients = clients

    @classmethod
    def for_stack(cls, stack_name: str) -> Sdpipe:
        return cls(stack_outputs(stack_name))

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        action: str,
        params: dict[str, Any],
        *,
        request_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> str:
        """Publish a request envelope on the requests topic; returns its job id (known up front)."""
        request_id = request_id or f"cli-{uuid.uuid4().hex}"
        envelope = {"action": action, "request_id": request_id, "context": context or {}, "params": params}
        self.aws.get("sns").publish(
            TopicArn=self.outputs["RequestsTopicArn"],
            Message=json.dumps(envelope),
            MessageAttributes={"action": {"DataType": "String", "StringValue": action}},
        )
        return job_id_for(request_id)

    def upload_image(self, path: Path) -> str:
        """Put a local image under ``inputs/`` in the bucket; its ``s3://`` URI for a payload."""
        data = path.read_bytes()
        key = f"inputs/{uuid.uuid4().hex}{path.suffix.lower() or '.png'}"
        self.aws.get("s3").put_object(Bucket=self.outputs["AssetsBucketName"], Key=key, Body=data)
        return f"s3://{self.outputs['AssetsBucketName']}/{key}"

    # ------------------------------------------------------------------ jobs
    def invoke_api(self, function_output: str, request: dict[str, Any]) -> dict[str, Any]:
        """Invoke one of the stack's synchronous functions (named by its output); its answer.

        An ``{"error": ...}`` answer is raised as ``SdpipeError`` with the error's code.
        """
        # Patient: completing an upload of many GiB may keep the function busy for minutes, and a
        # timed-out invoke would be retried by botocore while the first one still runs.
        response = self.aws.get_patient("lambda").invoke(
            FunctionName=self.outputs[function_output], Payload=json.dumps(request).encode()
        )
        payload: dict[str, Any] = json.loads(response["Payload"].read() or b"{}")
        if response.get("FunctionError"):
            message = f"{function_output} failed: {payload.get('errorMessage', payload)}"
            if str(payload.get("errorType")) in _RUNTIME_CRASHES:
                raise FunctionCrashed(message, code=str(payload["errorType"]))
            raise SdpipeError(message)
        error = payload.get("error")
        if error and "code" in error and set(payload) == {"error"}:
            raise SdpipeError(error["message"], code=error["code"])
        return payload

    def _jobs_api(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._retrying_reads("JobsApiFunctionName", request, request["operation"] in ("get", "list"))

    def _retrying_reads(self, function_output: str, request: dict[str, Any], is_read: bool) -> dict[str, Any]:
        attempts = 4 if is_read else 1  # reads are safe to ask again when the runtime died under one
        for attempt in range(attempts):
            try:
                return self.invoke_api(function_output, request)
            except FunctionCrashed:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._jobs_api({"operation": "get", "job_id": job_id})["job"]
        return job

    def find_job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.get_job(job_id)
        except SdpipeError as exc:
            if exc.code == "JOB_NOT_FOUND":
                return None
            raise

    def list_jobs(self, action: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"operation": "list", "limit": limit}
        if action:
            request["action"] = action
        jobs: list[dict[str, Any]] = self._jobs_api(request)["jobs"]
        return jobs

    def cancel_job(self, job_id: str, reason: str = "cancelled from the sdpipe CLI") -> dict[str, Any]:
        job: dict[str, Any] = self._jobs_api({"operation": "cancel", "job_id": job_id, "reason": reason})["job"]
        return job

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 600,
        poll_s: float = 0.25,
        on_change: Callable[[dict[str, Any] | None], None] | None = None,
        on_poll: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is terminal; returns it, or raises ``JobFailed`` with its error.

        ``on_change`` sees the job when its status changes, ``on_poll`` at every poll (progress).
        """
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        while True:
            job = self.find_job(job_id)
            status = job.get("status") if job else None
            if status != last and on_change is not None:
                on_change(job)
            if on_poll is not None:
                on_poll(job)
            last = status
            if job is not None and JobStatus(job["status"]).is_terminal:
                if job["status"] != JobStatus.SUCCEEDED.value:
                    error = job.get("error") or {}
                    raise JobFailed(
                        f"job {job_id} {job['status']}: {error.get('code', '?')}: {error.get('message', '')}",
                        code=str(error.get("code") or job["status"]),
                    )
                return job
            if time.monotonic() > deadline:
                raise SdpipeError(f"job {job_id} is still {status or 'not created'} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The last progress the endpoint wrote for a generation (``jobs/<id>/progress.json``:
        step, total_steps, steps_per_second, eta_seconds, preview, preview_at), or None."""
        try:
            body = self.aws.get("s3").get_object(Bucket=self.outputs["AssetsBucketName"],
                                                 Key=f"jobs/{job_id}/progress.json")["Body"].read()  # fmt: skip
        except self.aws.get("s3").exceptions.NoSuchKey:
            return None
        snapshot: dict[str, Any] = json.loads(body)
        return snapshot

    def download(self, uri: str, path: Path) -> Path:
        """Save an ``s3://`` object of the stack (an image, a preview) as ``path``."""
        parsed = urlparse(uri)
        body = self.aws.get("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(body)
        partial.replace(path)  # a viewer watching the file never reads half of it
        return path

    def download_images(self, job: dict[str, Any], out_dir: Path) -> list[Path]:
        """Save a succeeded job's PNGs as ``<out>/<job_id>-<n>.png``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        images = (job.get("outputs") or {}).get("images", [])
        return [self.download(uri, out_dir / f"{job['job_id']}-{index}.png") for index, uri in enumerate(images)]

    # ------------------------------------------------------------------ endpoints
    def deploy_endpoint(self, name: str, **settings: Any) -> str:
        """Publish ``deploy_endpoint`` (instance_type, min_instances, max_instances, ...); its job id."""
        return self.submit("deploy_endpoint", {"name": name, **settings})

    def update_endpoint(self, name: str, **changes: Any) -> str:
        return self.submit("update_endpoint", {"name": name, **changes})

    def delete_endpoint(self, name: str) -> str:
        return self.submit("delete_endpoint", {"name": name})

    def list_endpoints(self) -> list[dict[str, Any]]:
        endpoints: list[dict[str, Any]] = self.catalog({"operation": "list_endpoints"})["endpoints"]
        return endpoints

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        """The record, what SageMaker says of the endpoint, and its autoscaling as the APIs report it."""
        endpoint: dict[str, Any] = self.catalog({"operation": "describe_endpoint", "name": name})["endpoint"]
        return endpoint

    # ------------------------------------------------------------------ models
    def list_models(self, model_type: str | None = None) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"operation": "list_models"} | ({"type": model_type} if model_type else {})
        models: list[dict[str, Any]] = self.catalog(request)["models"]
        return models

    def catalog(self, request: dict[str, Any]) -> dict[str, Any]:
        """Ask the CatalogApi function (reads are safe to ask again when its runtime dies)."""
        return self._retrying_reads("CatalogApiFunctionName", request, request["operation"] != "delete_dataset")


def image_reference(value: str, client: Sdpipe) -> str:
    """An image argument as a payload value: ``s3://`` as is, a local file uploaded to the bucket."""
    if value.startswith("s3://"):
        return value
    path = Path(value)
    if not path.is_file():
        raise SdpipeError(f"image {value!r} is neither an s3:// URI nor a file")
    return client.upload_image(path)
