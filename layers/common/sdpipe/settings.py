"""Configuration, parsed once from environment variables (the template sets them).

Resource names have no defaults: a function deployed without one fails at once with a message
naming the variable, rather than writing somewhere unexpected. Each field is read from the
variable of the same name in upper case; values are validated (and converted) by pydantic.
(Plain pydantic models rather than pydantic-settings, whose import alone costs every cold start
about 80 ms: bench/bench_cold_import.py.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdpipe.contracts.images import ECR_IMAGE_PATTERN
from sdpipe.errors import ConfigurationError

MIB = 1024 * 1024
# The stack's name as functions use it in the names they make: SageMaker endpoints and training
# jobs are ``<stack>-<name>`` (63 characters at most), secrets ``<stack>/...``.
StackName = Annotated[str, Field(min_length=1, max_length=22)]


class BaseSettings(BaseModel):
    """Settings read from the environment: field ``queue_url`` from ``QUEUE_URL``."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="ignore")

    # How long the writer of a stored event has to publish it before the sweeper (or a
    # redelivery) may; with the sweep period this bounds how late an event can be.
    event_lease_seconds: int = Field(default=60, ge=1, le=900)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Self:
        variables = {key.upper(): value for key, value in (os.environ if environ is None else environ).items()}
        return cls.model_validate(
            {name: variables[name.upper()] for name in cls.model_fields if name.upper() in variables}
        )


_Settings = TypeVar("_Settings", bound=BaseSettings)


class RegistrationSettings(BaseSettings):
    assets_bucket_name: str = Field(min_length=3)
    models_table_name: str = Field(min_length=3)
    events_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:")
    # safetensors' own reader refuses headers over 100 MB; so do we, before reading them.
    safetensors_header_cap_bytes: int = Field(default=16 * MIB, gt=0)
    pickle_scan_cap_bytes: int = Field(default=256 * MIB, gt=0)
    hash_chunk_bytes: int = Field(default=8 * MIB, ge=64 * 1024)
    # Uploads and fetches name their job on the object; registration finishes it.
    jobs_table_name: str = Field(min_length=3)
    endpoints_table_name: str = Field(min_length=3)


class JobSettings(BaseSettings):
    """What every function that creates or moves jobs needs."""

    assets_bucket_name: str = Field(min_length=3)
    models_table_name: str = Field(min_length=3)
    events_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:")
    jobs_table_name: str = Field(min_length=3)
    endpoints_table_name: str = Field(min_length=3)
    generations_table_name: str = Field(min_length=3)
    # A job not finished this long after it was accepted is timed out by the sweeper.
    inference_deadline_seconds: int = Field(default=3600, ge=10)


class EndpointSettings(JobSettings):
    """The endpoint workflows: what requests start and what the workflow steps record."""

    stack_name: StackName
    # Only EndpointRequests starts workflows; the workflow steps have no need of these.
    deploy_endpoint_state_machine_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:states:")
    update_endpoint_state_machine_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:states:")
    delete_endpoint_state_machine_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:states:")
    inference_image_uri: str = Field(pattern=ECR_IMAGE_PATTERN)
    # What the workflow steps give SageMaker (only EndpointSteps has them).
    inference_execution_role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::")
    inference_success_topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:")
    inference_error_topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:")
    # How often the workflows poll DescribeEndpoint (short on the local stack).
    endpoint_poll_seconds: int = Field(default=30, ge=1, le=600)


class UploadSettings(JobSettings):
    """Chunked multipart uploads (the Uploads function) and the sweeper that ends abandoned ones."""

    # The bucket's lifecycle rule aborts incomplete multipart uploads after one day; the job
    # is timed out (and its upload aborted by the sweeper) a little later.
    upload_deadline_seconds: int = Field(default=25 * 3600, ge=60)
    part_url_expiry_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)


class FetchSettings(JobSettings):
    """``fetch_model``: the URL rules (logic/url_policy.py) and the FetchModel workflow's limits."""

    stack_name: StackName
    fetch_model_state_machine_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:states:")
    fetch_allowed_schemes: str = "https,http"
    # CIDRs exempt from the private-address rule (the local stack's 127.0.0.1/32); empty in AWS.
    fetch_allowed_networks: str = ""
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_max_bytes: int = Field(default=64 * 1024 * MIB, gt=0)
    fetch_part_bytes: int = Field(default=64 * MIB, ge=8 * MIB, le=1024 * MIB)
    fetch_concurrency: int = Field(default=8, ge=1, le=100)
    fetch_connect_timeout_seconds: float = Field(default=30, gt=0, le=300)
    # A body slower than this (after a 10 s grace) fails the request, which the workflow retries.
    fetch_min_bytes_per_second: int = Field(default=128 * 1024, ge=0)
    fetch_deadline_seconds: int = Field(default=6 * 3600, ge=60)


class TrainingSettings(JobSettings):
    """``train_lora``: the TrainLora workflow and the SageMaker training jobs it runs."""

    stack_name: StackName
    datasets_table_name: str = Field(min_length=3)
    train_lora_state_machine_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:states:")
    training_image_uri: str = Field(pattern=ECR_IMAGE_PATTERN)
    # Only the workflow steps create training jobs; TrainRequests has no need of the role.
    training_role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::")
    training_instance_type: str = Field(default="ml.g5.2xlarge", pattern=r"^ml\.")
    training_volume_gb: int = Field(default=100, ge=1, le=16384)
    training_max_runtime_seconds: int = Field(default=86400, ge=60)
    training_poll_seconds: int = Field(default=60, ge=1, le=3600)
    default_training_engine: str = Field(default="kohya", pattern=r"^(kohya|builtin)$")


class DatasetSettings(BaseSettings):
    """Dataset registration (RegisterDataset) and the CLI's datasets commands."""

    assets_bucket_name: str = Field(min_length=3)
    datasets_table_name: str = Field(min_length=3)
    events_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:")
    dataset_max_images: int = Field(default=20_000, ge=1)


class CatalogSettings(DatasetSettings):
    """CatalogApi: what clients read of the registry, the endpoints and the datasets."""

    models_table_name: str = Field(min_length=3)
    endpoints_table_name: str = Field(min_length=3)


class SweepSettings(JobSettings):
    """The sweeper: timeouts, and the stored events of every table whose writer died."""

    datasets_table_name: str = Field(min_length=3)


class RequestFilesSettings(BaseSettings):
    assets_bucket_name: str = Field(min_length=3)
    requests_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:")
    max_request_file_bytes: int = Field(default=256 * 1024, gt=0)


def _load(cls: type[_Settings]) -> _Settings:
    try:
        return cls.from_environment()
    except ValidationError as exc:
        missing = ", ".join(str(err["loc"][0]).upper() for err in exc.errors())
        raise ConfigurationError(f"invalid or missing environment variables: {missing}") from exc


@cache
def settings_of(cls: type[_Settings]) -> _Settings:
    """A function's settings, read from the environment once per class (per cold start)."""
    return _load(cls)
