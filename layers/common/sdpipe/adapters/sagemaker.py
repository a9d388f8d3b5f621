"""SageMaker's endpoint control plane, as the workflow steps use it.

Every create is idempotent (a retried step finds what its first attempt made), so the workflows
can retry any step after throttling or a lost response.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.contracts.workflows import DescribedEndpoint, DescribedTrainingJob


def _exists(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "already existing" in str(error.get("Message", ""))


def _missing(exc: ClientError) -> bool:
    """SageMaker answers a missing endpoint, config or model with a ValidationException 'Could not find'."""
    error = exc.response.get("Error", {})
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and "Could not find" in str(
        error.get("Message", "")
    )


class SageMakerEndpoints:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    @property
    def _sagemaker(self) -> Any:
        return self._aws.get("sagemaker")

    def create_model(self, name: str, image: str, environment: dict[str, str], role_arn: str) -> None:
        self._create(
            self._sagemaker.create_model,
            ModelName=name,
            ExecutionRoleArn=role_arn,
            PrimaryContainer={"Image": image, "Environment": environment},
        )

    def create_async_config(self, name: str, model: str, variant: dict[str, Any], async_config: dict[str, Any]) -> None:
        self._create(
            self._sagemaker.create_endpoint_config,
            EndpointConfigName=name,
            ProductionVariants=[{"ModelName": model, **variant}],
            AsyncInferenceConfig=async_config,
        )

    def create_endpoint(self, name: str, config: str) -> None:
        self._create(self._sagemaker.create_endpoint, EndpointName=name, EndpointConfigName=config)

    def update_endpoint(self, name: str, config: str) -> None:
        """Move the endpoint to ``config``; already moving there (a retried step) is fine."""
        try:
            self._sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=config)
        except ClientError:
            described = self.describe(name)
            if described is None or not (described.status == "Updating" or described.config_name == config):
                raise

    def _create(self, call: Any, **kwargs: Any) -> None:
        try:
            call(**kwargs)
        except ClientError as exc:
            if not _exists(exc):
                raise

    def describe(self, endpoint: str) -> DescribedEndpoint | None:
        try:
            return DescribedEndpoint.model_validate(self._sagemaker.describe_endpoint(EndpointName=endpoint))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def is_gone(self, endpoint: str) -> bool:
        return self.describe(endpoint) is None

    def delete_endpoint(self, endpoint: str) -> None:
        try:
            self._sagemaker.delete_endpoint(EndpointName=endpoint)
        except ClientError as exc:
            if not _missing(exc):
                raise

    def delete_leftovers(self, config_name: str | None, model_name: str | None) -> None:
        """An endpoint config and a model no endpoint uses any more; already gone is fine."""
        for call, key, value in (
            (self._sagemaker.delete_endpoint_config, "EndpointConfigName", config_name),
            (self._sagemaker.delete_model, "ModelName", model_name),
        ):
            if not value:
                continue
            try:
                call(**{key: value})
            except ClientError as exc:
                if not _missing(exc):
                    raise


class SageMakerTraining:
    """Training jobs: create (idempotent), describe, stop."""

    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    @property
    def _sagemaker(self) -> Any:
        return self._aws.get("sagemaker")

    def create(self, request: dict[str, Any]) -> None:
        """CreateTrainingJob; a job of that name existing already (a retried step) is fine."""
        try:
            self._sagemaker.create_training_job(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUse":
                raise

    def describe(self, name: str) -> DescribedTrainingJob | None:
        try:
            described = self._sagemaker.describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            if "not found" in str(exc.response.get("Error", {}).get("Message", "")).lower():
                return None
            raise
        return DescribedTrainingJob.model_validate(described)

    def stop(self, name: str) -> bool:
        """StopTrainingJob; False when the job is not running (finished, or never created)."""
        try:
            self._sagemaker.stop_training_job(TrainingJobName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
                return False
            raise
        return True
