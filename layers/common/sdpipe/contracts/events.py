"""Envelopes published on the events topic (architecture §2)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    JOB_ACCEPTED = "job.accepted"
    JOB_RUNNING = "job.running"
    JOB_PROGRESS = "job.progress"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_TIMED_OUT = "job.timed_out"
    MODEL_REGISTERED = "model.registered"
    MODEL_REJECTED = "model.rejected"
    MODEL_DELETED = "model.deleted"
    DATASET_REGISTERED = "dataset.registered"
    DATASET_REJECTED = "dataset.rejected"
    DATASET_DELETED = "dataset.deleted"
    ENDPOINT_STATUS = "endpoint.status"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """An event envelope. Job events fill the job fields; model events fill ``model``."""

    model_config = ConfigDict(defer_build=True)

    type: EventType
    status: str
    # The same for every publication of one event: subscribers de-duplicate on it.
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    occurred_at: datetime = Field(default_factory=utc_now)
    job_id: str | None = None
    action: str | None = None
    request_id: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, str] | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] | None = None
    endpoint: dict[str, Any] | None = None  # endpoint.status: the Endpoints record as announced
    dataset: dict[str, Any] | None = None  # dataset.*: the Datasets record's summary

    def attributes(self) -> dict[str, str]:
        """SNS message attributes for filtered subscriptions."""
        attrs = {"type": self.type.value, "status": self.status}
        if self.action:
            attrs["action"] = self.action
        if self.model and self.model.get("type"):
            attrs["model_type"] = str(self.model["type"])
        if self.dataset and self.dataset.get("name"):
            attrs["dataset"] = str(self.dataset["name"])
        if self.endpoint and self.endpoint.get("name"):
            attrs["endpoint"] = str(self.endpoint["name"])
        return attrs
