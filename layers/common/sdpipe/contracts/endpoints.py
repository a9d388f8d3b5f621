"""deploy_endpoint / update_endpoint / delete_endpoint requests and the Endpoints records they keep.

An sdpipe endpoint ``<name>`` is the SageMaker endpoint ``<stack>-<name>`` (the functions may
invoke only their own stack's endpoints), with one model, one endpoint config per deployment and
Application Auto Scaling on its single variant.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdpipe.contracts.images import check_image_uri

# SageMaker's endpoint name rule, less room for the ``<stack>-`` prefix the stack adds.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,39}$")
VARIANT = "AllTraffic"

# GPU instance types SageMaker offers for real-time and asynchronous inference. CPU types are
# refused: a diffusion pipeline on them would time out every job.
_GPU_FAMILIES: dict[str, tuple[str, ...]] = {
    "g4dn": ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"),
    "g5": ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"),
    "g6": ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"),
    "g6e": ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"),
    "p3": ("2xlarge", "8xlarge", "16xlarge"),
    "p4d": ("24xlarge",),
    "p5": ("48xlarge",),
}
INSTANCE_TYPES: frozenset[str] = frozenset(
    f"ml.{family}.{size}" for family, sizes in _GPU_FAMILIES.items() for size in sizes
)
MAX_INSTANCES = 20
MAX_CONCURRENT_INVOCATIONS = 16


class EndpointStatus(StrEnum):
    CREATING = "CREATING"
    IN_SERVICE = "IN_SERVICE"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a valid endpoint name: 1-40 letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return value


def _check_instance_type(value: str) -> str:
    if value not in INSTANCE_TYPES:
        families = ", ".join(f"ml.{family}.*" for family in _GPU_FAMILIES)
        raise ValueError(f"{value!r} is not a GPU inference instance type sdpipe deploys ({families})")
    return value


class ScalingSettings(BaseModel):
    """Target tracking on backlog per instance, and its scale-in cooldown."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    target_backlog_per_instance: float = Field(default=2.0, gt=0, le=1000)
    scale_in_cooldown_seconds: int = Field(default=600, ge=0, le=86400)
    scale_out_cooldown_seconds: int = Field(default=60, ge=0, le=86400)


class DeployEndpointParams(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    instance_type: str = "ml.g5.xlarge"
    min_instances: int = Field(default=0, ge=0, le=MAX_INSTANCES)
    max_instances: int = Field(default=1, ge=1, le=MAX_INSTANCES)
    max_concurrent_invocations: int = Field(default=1, ge=1, le=MAX_CONCURRENT_INVOCATIONS)
    image_uri: str | None = Field(default=None, min_length=1, max_length=255)
    environment: dict[str, str] = Field(default_factory=dict, max_length=16)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)

    _name = field_validator("name")(staticmethod(_check_name))
    _instance_type = field_validator("instance_type")(staticmethod(_check_instance_type))
    _image_uri = field_validator("image_uri")(staticmethod(lambda v: None if v is None else check_image_uri(v)))

    @model_validator(mode="after")
    def _range(self) -> DeployEndpointParams:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances {self.min_instances} is more than max_instances {self.max_instances}")
        return self


class UpdateEndpointParams(BaseModel):
    """Only the fields given change; the rest keep the endpoint's current values."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    instance_type: str | None = None
    min_instances: int | None = Field(default=None, ge=0, le=MAX_INSTANCES)
    max_instances: int | None = Field(default=None, ge=1, le=MAX_INSTANCES)
    max_concurrent_invocations: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT_INVOCATIONS)
    image_uri: str | None = Field(default=None, min_length=1, max_length=255)
    environment: dict[str, str] | None = Field(default=None, max_length=16)
    scaling: ScalingSettings | None = None

    _name = field_validator("name")(staticmethod(_check_name))
    _image_uri = field_validator("image_uri")(staticmethod(lambda v: None if v is None else check_image_uri(v)))

    @field_validator("instance_type")
    @classmethod
    def _known_instance_type(cls, value: str | None) -> str | None:
        return None if value is None else _check_instance_type(value)

    def merged_with(self, current: dict[str, Any]) -> DeployEndpointParams:
        """The endpoint's settings after this update (validated again as a whole: ``min <= max``)."""
        settings = {k: v for k, v in current.items() if k in DeployEndpointParams.model_fields and v is not None}
        settings |= self.model_dump(exclude_none=True)
        return DeployEndpointParams.model_validate(settings)


class DeleteEndpointParams(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str

    _name = field_validator("name")(staticmethod(_check_name))


# What an Endpoints record carries of its settings (and an update starts from).
SETTINGS_FIELDS = (
    "instance_type",
    "min_instances",
    "max_instances",
    "max_concurrent_invocations",
    "image_uri",
    "environment",
    "scaling",
)


class EndpointRecord(BaseModel):
    """An Endpoints table item: the endpoint as sdpipe last recorded it."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    name: str
    status: EndpointStatus
    sagemaker_name: str = ""
    instance_type: str | None = None
    min_instances: int | None = None
    max_instances: int | None = None
    max_concurrent_invocations: int | None = None
    image_uri: str | None = None
    environment: dict[str, str] | None = None
    scaling: dict[str, Any] | None = None
    in_flight: int = 0
    config_name: str | None = None
    model_name: str | None = None
    failure_reason: str | None = None
    # The job whose workflow holds the endpoint now, and the last one that changed it.
    pending_job: str | None = None
    last_job: str | None = None
    # SageMaker's LastModifiedTime of the last state change applied from its events.
    changed_at: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    # The announcement a writer stored and has not cleared yet (``logic.endpoint_announcements``).
    pending_announcement: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def is_gone(self) -> bool:
        return self.status is EndpointStatus.DELETED

    def settings(self) -> dict[str, Any]:
        """The deployment settings recorded (an update starts from these)."""
        return {key: getattr(self, key) for key in SETTINGS_FIELDS if getattr(self, key) is not None}
