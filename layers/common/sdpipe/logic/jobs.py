"""Creating jobs and moving them forward, each transition announced exactly once.

Every action's job goes through here: a job is created once per request id (a conditional put),
then moved by conditional updates that name the statuses it may leave. The event of a transition
is stored on the item in the same write and published right after (``logic.outbox``): a
duplicate delivery or the sweeper publishes only events whose writer's lease has run out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from pydantic import BaseModel

from sdpipe.adapters.dynamo import UpdateBuilder
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.jobs_table import OPEN_SHARD, JobsTable
from sdpipe.adapters.outbox import PENDING_EVENTS
from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe.contracts.jobs import OPEN_STATUSES, JobStatus
from sdpipe.contracts.workflows import JobRecord
from sdpipe.errors import JobAlreadyFinished, JobNotFound, SdpipeError
from sdpipe.logic.outbox import DEFAULT_LEASE_SECONDS, Outbox
from sdpipe.logic.parallel import io_pool

logger = Logger(child=True)


class JobTablesSettings(Protocol):
    """What a ledger is built from (JobSettings, RegistrationSettings, ...)."""

    @property
    def jobs_table_name(self) -> str: ...
    @property
    def endpoints_table_name(self) -> str: ...
    @property
    def events_topic_arn(self) -> str: ...
    @property
    def event_lease_seconds(self) -> int: ...


EVENT_FOR_STATUS: dict[JobStatus, EventType] = {
    JobStatus.ACCEPTED: EventType.JOB_ACCEPTED,
    JobStatus.RUNNING: EventType.JOB_RUNNING,
    JobStatus.SUCCEEDED: EventType.JOB_SUCCEEDED,
    JobStatus.FAILED: EventType.JOB_FAILED,
    JobStatus.CANCELLED: EventType.JOB_CANCELLED,
    JobStatus.TIMED_OUT: EventType.JOB_TIMED_OUT,
}


def job_event(job: JobRecord, status: JobStatus, occurred_at: datetime) -> Event | None:
    event_type = EVENT_FOR_STATUS.get(status)
    if event_type is None:
        return None
    return Event(
        type=event_type,
        status=status.value,
        occurred_at=occurred_at,
        job_id=job.job_id,
        action=job.action or None,
        request_id=job.request_id or None,
        outputs=job.outputs,
        error=job.error,
        context=job.context,
    )


@dataclass
class JobLedger:
    table: JobsTable
    publisher: EventPublisher
    # How long the writer of an event has to publish it before another delivery may.
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    _background: list[Future[None]] = field(default_factory=list)

    @property
    def outbox(self) -> Outbox:
        return Outbox.on(self.table, "job_id", self.publisher, self.lease_seconds)

    @classmethod
    def from_settings(cls, settings: JobTablesSettings) -> JobLedger:
        return cls(
            JobsTable(settings.jobs_table_name, settings.endpoints_table_name),
            EventPublisher(settings.events_topic_arn),
            lease_seconds=settings.event_lease_seconds,
        )

    def get(self, job_id: str) -> JobRecord | None:
        item = self.table.get(job_id)
        return None if item is None else JobRecord.model_validate(item)

    def require(self, job_id: str) -> JobRecord:
        """The job; ``JobNotFound`` when there is none."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id!r} does not exist")
        return job

    def open_job(
        self,
        job_id: str,
        *,
        action: str | None = None,
        stops: str = "the work stops",
        finished: type[SdpipeError] = JobAlreadyFinished,
    ) -> JobRecord:
        """The job, still open (and of ``action`` when given): what every step and request on an
        existing job starts from. ``JobNotFound``, or ``finished`` for a job that has ended."""
        job = self.get(job_id)
        if job is None or (action is not None and job.action != action):
            what = f"{action} job" if action else "job"
            raise JobNotFound(f"{what} {job_id!r} does not exist")
        if job.is_finished:
            why = f" ({job.error_message})" if job.error_message else ""
            raise finished(f"job {job_id} is {job.status.value}{why}; {stops}")
        return job

    def open_jobs(self) -> list[JobRecord]:
        return [JobRecord.model_validate(item) for item in self.table.open_jobs()]

    def open_past_deadline(self, now_iso: str) -> list[JobRecord]:
        return [JobRecord.model_validate(item) for item in self.table.open_past_deadline(now_iso)]

    def recent(self, action: str | None = None, limit: int = 20) -> list[JobRecord]:
        return [JobRecord.model_validate(item) for item in self.table.recent(action, limit)]

    def create(
        self,
        *,
        job_id: str,
        request_id: str,
        action: str,
        status: JobStatus,
        deadline_seconds: int,
        fields: dict[str, Any],
        endpoint: str | None = None,
        publish_in_background: bool = False,
    ) -> JobRecord | None:
        """Create the job in ``status`` and announce it; None when the job exists already.

        A job created QUEUED (taking a slot on ``endpoint`` in the same write) was accepted on
        the way: it is announced with ``job.accepted``. ``publish_in_background`` lets the caller
        go on while the event is published; ``drain`` waits for it.
        """
        now = utc_now()
        history = [{"status": status.value, "at": now.isoformat()}]
        if status is JobStatus.QUEUED:
            history.insert(0, {"status": JobStatus.ACCEPTED.value, "at": now.isoformat()})
        item: dict[str, Any] = {
            "job_id": job_id,
            "request_id": request_id,
            "action": action,
            "status": status.value,
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
            "history": history,
            "attempts": 1,
        }
        if status.is_terminal:
            item |= {"finished_at": now.isoformat()}
        else:
            item |= {"open_shard": OPEN_SHARD, "deadline": (now + timedelta(seconds=deadline_seconds)).isoformat()}
        item |= _plain(fields)
        announced = JobStatus.ACCEPTED if status is JobStatus.QUEUED else status
        event = job_event(JobRecord.model_validate(item | {"status": announced.value}), announced, now)
        item[PENDING_EVENTS] = {}  # later moves store their events in it
        if event is not None:
            item |= self.outbox.item_fields(event)
        if not self.table.create(item, endpoint=endpoint):
            return None
        if event is not None:
            if publish_in_background:
                self._background.append(io_pool.submit(self.outbox.publish, job_id, event))
            else:
                self.outbox.publish(job_id, event)
        return JobRecord.model_validate(item)

    def resume_duplicate(self, job_id: str, start: Callable[[JobRecord], None]) -> bool:
        """A request delivered again: publish what a stopped worker left and, if its job was
        accepted but never started, ``start`` it. False when there is no such job yet."""
        existing = self.get(job_id)
        if existing is None:
            return False
        self.flush(existing)
        if existing.status is JobStatus.ACCEPTED:
            start(existing)
        return True

    def drain(self) -> None:
        """Wait for events being published in the background (before the invocation ends)."""
        while self._background:
            self._background.pop(0).result()

    def move(
        self,
        job: JobRecord,
        to: JobStatus,
        *,
        allowed_from: Iterable[JobStatus],
        fields: dict[str, Any] | None = None,
        claim_token: str | None = None,
        drop_claim: bool = False,
        endpoint: str | None = None,
        in_flight_delta: int = 0,
    ) -> JobRecord | None:
        """Move ``job`` to ``to`` if it is still in ``allowed_from`` (and, given ``claim_token``,
        still claimed by us); the moved job, or None when another writer got there first.

        ``fields`` set to None are removed. A terminal move drops the claim and leaves the
        open-jobs index.
        """
        now = utc_now()
        fields = _plain(fields or {})
        update = UpdateBuilder()
        for name, value in fields.items():
            if value is None:
                update.remove(name)
            else:
                update.set(name, value)
        update.set("status", to.value).set("updated_at", now.isoformat())
        changes: dict[str, Any] = fields | {"status": to.value, "updated_at": now.isoformat()}
        if to is not job.status:
            update.append("history", [{"status": to.value, "at": now.isoformat()}])
        removed: tuple[str, ...] = ()
        if to.is_terminal:
            update.set("finished_at", now.isoformat())
            removed = ("open_shard", "claim_token", "claim_expires_at")
        elif drop_claim:
            removed = ("claim_token", "claim_expires_at")
        if to.is_terminal:
            changes |= {"finished_at": now.isoformat()}
        for name in removed:
            update.remove(name)
            changes[name] = None
        moved = job.changed(changes)
        event = job_event(moved, to, now) if to is not job.status else None
        if event is not None:
            self.outbox.stage(update, event)
        if not self.table.update(
            job.job_id,
            update,
            statuses=list(allowed_from),
            claim_token=claim_token,
            endpoint=endpoint,
            in_flight_delta=in_flight_delta,
        ):
            return None
        if event is not None:
            self.drain()  # events of one job go out in the order of its transitions
            self.outbox.publish(job.job_id, event)
        return moved

    def claim(self, job: JobRecord, seconds: int) -> JobRecord | None:
        """Take the work claim of an open job nobody holds (or whose holder's claim ran out)."""
        now = int(time.time())
        token = uuid.uuid4().hex
        update = UpdateBuilder().set("claim_token", token).set("claim_expires_at", now + seconds).add("attempts", 1)
        unclaimed = (
            f"(attribute_not_exists({update.name('claim_token')}) "
            f"OR {update.name('claim_expires_at')} < {update.value(now)})"
        )
        statuses = ", ".join(update.value(s.value) for s in OPEN_STATUSES)
        update.names["#status"] = "status"
        if not self.table.conditional_update(job.job_id, update, f"#status IN ({statuses}) AND {unclaimed}"):
            return None
        return job.changed({"claim_token": token, "claim_expires_at": now + seconds})

    def release(self, job: JobRecord) -> None:
        """Give the claim back at once (the work failed transiently; the next delivery retries)."""
        if job.claim_token:
            update = UpdateBuilder().set("claim_expires_at", 0)
            self.table.conditional_update(job.job_id, update, f"claim_token = {update.value(job.claim_token)}")

    def flush(self, job: JobRecord) -> None:
        """Publish the events a writer stored but did not get to publish (its lease ran out).

        One still under its writer's lease is left alone: the writer may be publishing it, and
        if it died the sweeper publishes it once the lease runs out.
        """
        self.outbox.flush(job.item())

    def progress(self, job: JobRecord, done_delta: int, interval: float = 1.0) -> dict[str, Any]:
        """Count ``done_delta`` more bytes done; announce ``job.progress`` at most once per ``interval``.

        Progress events are a courtesy (a lost one is superseded by the next), so they are
        published directly rather than through the job's stored events.
        """
        progress = self.table.add_progress(job.job_id, done_delta)
        self._announce_progress(job, progress, interval)
        return progress

    def report(self, job: JobRecord, progress: dict[str, Any], interval: float = 1.0) -> None:
        """Replace the job's ``progress`` (a training step and loss); announce it as ``progress``
        does, at most once per ``interval``."""
        self.table.set_progress(job.job_id, progress)
        self._announce_progress(job, progress, interval)

    def _announce_progress(self, job: JobRecord, progress: dict[str, Any], interval: float) -> None:
        if self.table.take_progress_slot(job.job_id, time.time(), interval):
            self.publisher.publish(
                Event(
                    type=EventType.JOB_PROGRESS,
                    status=job.status.value,
                    job_id=job.job_id,
                    action=job.action or None,
                    request_id=job.request_id or None,
                    outputs={"progress": progress},
                    context=job.context,
                )
            )


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as the table stores them: models (an ``UploadState``, a plan) as their JSON."""
    return {
        k: v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v for k, v in fields.items()
    }
