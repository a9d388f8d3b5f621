"""``endpoint.status``: the Endpoints record as it is, announced after every change, never lost.

Each write that changes an endpoint stores a mark (``mark``) in the same update: which job made
the change (for the event's job fields), the event id and the writer's lease. The writer then
``announce``s: it publishes the record as it is now and clears the mark. A writer that dies in
between leaves the mark; the sweeper (``sweep``) announces the record once the lease has run out.
An announcement is a snapshot, so two changes close together may be announced once, with the
newer state; a subscriber de-duplicates on ``event_id`` as for every event.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field

from sdpipe.adapters.endpoints_table import ANNOUNCEMENT, EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.outbox import OutboxTable
from sdpipe.contracts.endpoints import EndpointRecord
from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe.contracts.workflows import JobRecord
from sdpipe.logic.outbox import DEFAULT_LEASE_SECONDS

logger = Logger(child=True)

_PUBLIC_FIELDS = (
    "name", "sagemaker_name", "status", "instance_type", "min_instances", "max_instances",
    "max_concurrent_invocations", "in_flight", "failure_reason", "pending_job", "last_job",
    "created_at", "updated_at",
)  # fmt: skip


def public_endpoint(record: EndpointRecord) -> dict[str, Any]:
    """The record as users see it (CLI, events)."""
    return record.model_dump(mode="json", include=set(_PUBLIC_FIELDS), exclude_none=True)


class MadeBy(BaseModel):
    """The job whose change an announcement is about (the event's job fields)."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    job_id: str | None = None
    action: str | None = None
    request_id: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class Mark(BaseModel):
    """What a write stores on the record to be announced: the event id, the writer's lease, the job."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    event_id: str | None = None
    lease_until: int = 0
    job: MadeBy | None = None


@dataclass
class EndpointAnnouncer:
    endpoints: EndpointsTable
    publisher: EventPublisher
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    def mark(self, job: JobRecord | None = None) -> dict[str, Any]:
        """What a write stores to be announced (``job``: the job making the change, if any)."""
        made_by = _made_by(job)
        mark = Mark(event_id=uuid.uuid4().hex, lease_until=int(time.time()) + self.lease_seconds, job=made_by)
        return mark.model_dump(mode="json")

    def announce(self, name: str, job: JobRecord | None = None) -> None:
        """Publish the record as it is now (with the job that changed it) and clear its mark."""
        record = self.endpoints.get(name)
        if record is None:
            return
        self._publish(record, Mark.model_validate(record.pending_announcement or {}), _made_by(job))

    def sweep(self, limit: int = 100) -> int:
        """Announce the records whose writer died before announcing them; how many."""
        now = int(time.time())
        announced = 0
        outbox = OutboxTable(self.endpoints.table_name, "name", self.endpoints.aws)
        for item in outbox.due(now, limit):
            name = str(item[outbox.key_name])
            if not item.get(ANNOUNCEMENT):
                outbox.drop_marker(name)
                continue
            mark = Mark.model_validate(item[ANNOUNCEMENT])
            if mark.lease_until >= now or mark.event_id is None:
                continue
            if self.endpoints.lease_announcement(name, mark.event_id, now + self.lease_seconds, now):
                record = self.endpoints.get(name)
                if record is not None:
                    self._publish(record, mark, None)
                    announced += 1
        return announced

    def _publish(self, record: EndpointRecord, mark: Mark, job: MadeBy | None) -> None:
        made_by = job or mark.job or MadeBy()
        event = Event(
            type=EventType.ENDPOINT_STATUS,
            status=record.status.value,
            occurred_at=utc_now(),
            job_id=made_by.job_id,
            action=made_by.action,
            request_id=made_by.request_id,
            context=made_by.context,
            endpoint=public_endpoint(record),
            **({"event_id": mark.event_id} if mark.event_id else {}),
        )
        self.publisher.publish(event)
        if mark.event_id:
            self.endpoints.clear_announcement(record.name, mark.event_id)
        logger.info("endpoint announced", extra={"endpoint": record.name, "status": event.status})


def _made_by(job: JobRecord | None) -> MadeBy | None:
    if job is None:
        return None
    return MadeBy(job_id=job.job_id, action=job.action, request_id=job.request_id, context=job.context)
