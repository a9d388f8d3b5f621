"""Requests of the Uploads function (chunked multipart uploads) and the metadata intake puts on files."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpipe.contracts.jobs import REQUEST_ID_PATTERN
from sdpipe.contracts.models import ModelType

SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"

# S3 object metadata (x-amz-meta-*) an upload or fetch puts on the file for registration.
META_JOB_ID = "sdpipe-job-id"
META_SOURCE = "sdpipe-source"
META_SHA256 = "sdpipe-sha256"
META_SOURCE_URL = "sdpipe-source-url"
# A LoRA written by a training job: the job, the base model's sha256 and the dataset trained on.
META_TRAINING_JOB = "sdpipe-training-job"
META_BASE_MODEL = "sdpipe-base-model-sha256"
META_DATASET = "sdpipe-dataset"


def lower_hex(value: str | None) -> str | None:
    return value.lower() if value else value


class CreateUpload(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    operation: Literal["create_upload"]
    type: ModelType
    filename: str = Field(min_length=1, max_length=800, description="name under the type's folder; subfolders allowed")
    size: int = Field(gt=0)
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    # The same request_id (and the same file) finds the same upload again: how a client resumes.
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    overwrite: bool = False
    expires_seconds: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)
    context: dict[str, object] = Field(default_factory=dict)

    _normalise_sha = field_validator("sha256")(lower_hex)


class ResumeUpload(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    operation: Literal["resume_upload"]
    job_id: str = Field(min_length=1, max_length=64)
    expires_seconds: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)


# Presigned part URLs per answer: create and resume give the first ones, ``part_urls`` the rest as
# the client gets to them (presigning costs milliseconds each, and a Lambda answer is at most
# 6 MB: 10,000 URLs would not fit).
PART_URL_BATCH = 64


class PartUrls(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    operation: Literal["part_urls"]
    job_id: str = Field(min_length=1, max_length=64)
    part_numbers: list[int] = Field(min_length=1, max_length=PART_URL_BATCH)
    expires_seconds: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)


class UploadedPart(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    part_number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=128)

    @field_validator("etag")
    @classmethod
    def _unquote(cls, value: str) -> str:
        return value.strip('"')


class CompleteUpload(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    operation: Literal["complete_upload"]
    job_id: str = Field(min_length=1, max_length=64)
    parts: list[UploadedPart] = Field(min_length=1, max_length=10_000)
    # The file's sha256, for a client that hashed it while uploading (registration verifies it).
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)

    _normalise_sha = field_validator("sha256")(lower_hex)


class AbortUpload(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    operation: Literal["abort_upload"]
    job_id: str = Field(min_length=1, max_length=64)


UploadRequest = Annotated[
    CreateUpload | ResumeUpload | PartUrls | CompleteUpload | AbortUpload, Field(discriminator="operation")
]
