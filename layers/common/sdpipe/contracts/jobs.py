"""Request envelopes and the jobs they become (architecture §2)."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class JobStatus(StrEnum):
    ACCEPTED = "ACCEPTED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT})
OPEN_STATUSES = frozenset(JobStatus) - TERMINAL_STATUSES
# An upload or fetch job's phase once S3 holds the whole file (registration finishes the job).
REGISTERING = "registering"


class Action(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    FETCH_MODEL = "fetch_model"
    DELETE_MODEL = "delete_model"
    TRAIN_LORA = "train_lora"
    CANCEL_JOB = "cancel_job"
    DEPLOY_ENDPOINT = "deploy_endpoint"
    UPDATE_ENDPOINT = "update_endpoint"
    DELETE_ENDPOINT = "delete_endpoint"


# Actions this deployment has a consumer for; the catch-all subscription answers the others.
SUPPORTED_ACTIONS = frozenset(
    {
        Action.TXT2IMG,
        Action.IMG2IMG,
        Action.CANCEL_JOB,
        Action.FETCH_MODEL,
        Action.TRAIN_LORA,
        Action.DEPLOY_ENDPOINT,
        Action.UPDATE_ENDPOINT,
        Action.DELETE_ENDPOINT,
    }
)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$"


def job_id_for(request_id: str) -> str:
    """The job id a request becomes: derived from its id, so a client knows it before any event."""
    return "j-" + hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:24]


class EnvelopeHead(BaseModel):
    """What is read of a request before it is validated: enough to name its job and to say
    what was wrong (each field as sent, whatever its type)."""

    model_config = ConfigDict(extra="ignore")

    request_id: Any = None
    action: Any = None
    context: Any = None


class RequestEnvelope(BaseModel):
    """What is published on the requests topic or dropped under ``requests/``."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    action: str = Field(min_length=1, max_length=64)
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    context: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return job_id_for(self.request_id)


class CancelJobParams(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    job_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="cancelled on request", max_length=500)


# ---------------------------------------------------------------------- the JobsApi function
class GetJob(BaseModel):
    operation: Literal["get"]
    job_id: str = Field(min_length=1, max_length=64)


class ListJobs(BaseModel):
    operation: Literal["list"]
    action: str | None = None
    limit: int = Field(default=20, ge=1, le=200)


class CancelJob(BaseModel):
    operation: Literal["cancel"]
    job_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="cancelled on request", max_length=500)


JobsApiRequest = TypeAdapter(Annotated[GetJob | ListJobs | CancelJob, Field(discriminator="operation")])
