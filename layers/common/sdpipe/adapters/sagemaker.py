"""The SageMaker endpoint calls the workflow steps make themselves (the rest are aws-sdk tasks in ASL)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients


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

    def describe(self, endpoint: str) -> dict[str, Any] | None:
        try:
            return dict(self._sagemaker.describe_endpoint(EndpointName=endpoint))
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
