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

from sdpipe.adapters.endpoints_table import ANNOUNCEMENT, EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.outbox import OutboxTable
from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe.contracts.workflows import JobRecord
from sdpipe.logic.outbox import DEFAULT_LEASE_SECONDS

logger = Logger(child=True)

_PUBLIC_FIELDS = (
    "name", "sagemaker_name", "status", "instance_type", "min_instances", "max_instances",
    "max_concurrent_invocations", "in_flight", "failure_reason", "pending_job", "last_job",
    "created_at", "updated_at",
)  # fmt: skip


def public_endpoint(record: dict[str, Any]) -> dict[str, Any]:
    """The record as users see it (CLI, events)."""
    return {key: record[key] for key in _PUBLIC_FIELDS if record.get(key) is not None}


@dataclass
class EndpointAnnouncer:
    endpoints: EndpointsTable
    publisher: EventPublisher
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    def mark(self, job: JobRecord | None = None) -> dict[str, Any]:
        """What a write stores to be announced (``job``: the job making the change, if any)."""
        made_by = None
        if job is not None:
            made_by = {"job_id": job.job_id, "action": job.action, "request_id": job.request_id, "context": job.context}
        return {"event_id": uuid.uuid4().hex, "lease_until": int(time.time()) + self.lease_seconds, "job": made_by}

    def announce(self, name: str, job: JobRecord | None = None) -> None:
        """Publish the record as it is now (with the job that changed it) and clear its mark."""
        record = self.endpoints.get(name)
        if record is None:
            return
        mark = record.get(ANNOUNCEMENT) or {}
        self._publish(record, mark, self.mark(job)["job"] if job is not None else None)

    def sweep(self, limit: int = 100) -> int:
        """Announce the records whose writer died before announcing them; how many."""
        now = int(time.time())
        announced = 0
        outbox = OutboxTable(self.endpoints.table_name, "name", self.endpoints.aws)
        for item in outbox.due(now, limit):
            mark = item.get(ANNOUNCEMENT)
            if not mark:
                outbox.drop_marker(str(item["name"]))
                continue
            if int(mark.get("lease_until", 0)) >= now:
                continue
            if self.endpoints.lease_announcement(item["name"], mark["event_id"], now + self.lease_seconds, now):
                record = self.endpoints.get(item["name"])
                if record is not None:
                    self._publish(record, mark, None)
                    announced += 1
        return announced

    def _publish(self, record: dict[str, Any], mark: dict[str, Any], job: dict[str, Any] | None) -> None:
        made_by = job or mark.get("job") or {}
        event = Event(
            type=EventType.ENDPOINT_STATUS,
            status=str(record.get("status")),
            occurred_at=utc_now(),
            job_id=made_by.get("job_id"),
            action=made_by.get("action"),
            request_id=made_by.get("request_id"),
            context=made_by.get("context") or {},
            endpoint=public_endpoint(record),
            **({"event_id": mark["event_id"]} if mark.get("event_id") else {}),
        )
        self.publisher.publish(event)
        if mark.get("event_id"):
            self.endpoints.clear_announcement(record["name"], mark["event_id"])
        logger.info("endpoint announced", extra={"endpoint": record["name"], "status": event.status})
