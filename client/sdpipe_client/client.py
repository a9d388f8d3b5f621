"""The Python client: publish requests, follow jobs, fetch their images, create endpoints.

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
    def _jobs_api(self, request: dict[str, Any]) -> dict[str, Any]:
        response = self.aws.get("lambda").invoke(
            FunctionName=self.outputs["JobsApiFunctionName"], Payload=json.dumps(request).encode()
        )
        payload: dict[str, Any] = json.loads(response["Payload"].read() or b"{}")
        if response.get("FunctionError"):
            raise SdpipeError(f"JobsApi failed: {payload.get('errorMessage', payload)}")
        if "error" in payload:
            error = payload["error"]
            raise SdpipeError(error["message"], code=error["code"])
        return payload

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
    ) -> dict[str, Any]:
        """Poll until the job is terminal; returns it, or raises ``JobFailed`` with its error."""
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        while True:
            job = self.find_job(job_id)
            status = job.get("status") if job else None
            if status != last and on_change is not None:
                on_change(job)
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

    def download_images(self, job: dict[str, Any], out_dir: Path) -> list[Path]:
        """Save a succeeded job's PNGs as ``<out>/<job_id>-<n>.png``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, uri in enumerate((job.get("outputs") or {}).get("images", [])):
            parsed = urlparse(uri)
            body = self.aws.get("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            path = out_dir / f"{job['job_id']}-{index}.png"
            path.write_bytes(body)
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ endpoints
    def create_endpoint(
        self,
        name: str,
        *,
        image: str,
        role_arn: str,
        instance_type: str = "ml.g5.xlarge",
        max_concurrent_invocations: int = 1,
        environment: dict[str, str] | None = None,
        timeout_s: float = 900,
    ) -> dict[str, Any]:
        """Create an asynchronous endpoint with the SageMaker API and record it in the Endpoints table.

        The SageMaker name is ``<stack>-<name>`` (the functions may invoke only the stack's
        endpoints); results are written under ``async-results/<name>/`` and announced on the
        stack's inference topics, which is where CompleteInference listens.
        """
        from sdpipe.adapters.endpoints_table import IN_SERVICE, EndpointsTable
        from sdpipe.contracts.events import utc_now

        stack = self.outputs["AssetsBucketName"].split("-assets-", 1)[0]
        sagemaker_name = f"{stack}-{name}"
        sagemaker = self.aws.get("sagemaker")
        bucket = self.outputs["AssetsBucketName"]
        container: dict[str, Any] = {"Image": image, "Environment": environment or {}}
        sagemaker.create_model(ModelName=sagemaker_name, PrimaryContainer=container, ExecutionRoleArn=role_arn)
        sagemaker.create_endpoint_config(
            EndpointConfigName=sagemaker_name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": sagemaker_name,
                    "InstanceType": instance_type,
                    "InitialInstanceCount": 1,
                }
            ],
            AsyncInferenceConfig={
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": max_concurrent_invocations},
                "OutputConfig": {
                    "S3OutputPath": f"s3://{bucket}/async-results/{name}/output",
                    "S3FailurePath": f"s3://{bucket}/async-results/{name}/failure",
                    "NotificationConfig": {
                        "SuccessTopic": self.outputs["InferenceSuccessTopicArn"],
                        "ErrorTopic": self.outputs["InferenceErrorTopicArn"],
                    },
                },
            },
        )
        sagemaker.create_endpoint(EndpointName=sagemaker_name, EndpointConfigName=sagemaker_name)
        deadline = time.monotonic() + timeout_s
        while (status := sagemaker.describe_endpoint(EndpointName=sagemaker_name))["EndpointStatus"] != "InService":
            if status["EndpointStatus"] == "Failed" or time.monotonic() > deadline:
                raise SdpipeError(
                    f"endpoint {sagemaker_name} is {status['EndpointStatus']}: {status.get('FailureReason', '')}"
                )
            time.sleep(0.5)
        now = utc_now().isoformat()
        item = {
            "name": name,
            "sagemaker_name": sagemaker_name,
            "status": IN_SERVICE,
            "instance_type": instance_type,
            "in_flight": 0,
            "created_at": now,
            "updated_at": now,
        }
        EndpointsTable(self.outputs["EndpointsTableName"], self.aws).put(item)
        return item


def image_reference(value: str, client: Sdpipe) -> str:
    """An image argument as a payload value: ``s3://`` as is, a local file uploaded to the bucket."""
    if value.startswith("s3://"):
        return value
    path = Path(value)
    if not path.is_file():
        raise SdpipeError(f"image {value!r} is neither an s3:// URI nor a file")
    return client.upload_image(path)
