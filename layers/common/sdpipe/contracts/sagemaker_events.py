"""SageMaker's own messages: the asynchronous inference notification and endpoint state changes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _RequestParameters(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    endpoint_name: str = Field(alias="endpointName")
    input_location: str = Field(default="", alias="inputLocation")


class _ResponseParameters(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    output_location: str | None = Field(default=None, alias="outputLocation")
    failure_location: str | None = Field(default=None, alias="failureLocation")


class AsyncInferenceNotification(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    inference_id: str = Field(alias="inferenceId")
    invocation_status: str = Field(alias="invocationStatus")
    failure_reason: str | None = Field(default=None, alias="failureReason")
    event_time: str | None = Field(default=None, alias="eventTime")
    request: _RequestParameters = Field(alias="requestParameters")
    response: _ResponseParameters = Field(default_factory=_ResponseParameters, alias="responseParameters")

    @property
    def succeeded(self) -> bool:
        return self.invocation_status == "Completed"


class EndpointStateChange(BaseModel):
    """The ``detail`` of EventBridge's "SageMaker Endpoint State Change"."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    endpoint_name: str = Field(default="", alias="EndpointName")
    status: str = Field(default="", alias="EndpointStatus")
    failure_reason: str | None = Field(default=None, alias="FailureReason")
    # Milliseconds since the epoch (0 when the event carries none: older than anything applied).
    last_modified: int = Field(default=0, alias="LastModifiedTime")
