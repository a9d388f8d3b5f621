"""What the endpoint requests, the endpoint workflow steps and drift tracking share: the Endpoints
records read as ``EndpointRecord``, their announcements, and failing the inference jobs left on an
endpoint that is gone."""

from __future__ import annotations

from dataclasses import dataclass

from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.contracts.endpoints import EndpointRecord
from sdpipe.contracts.jobs import Action, JobStatus
from sdpipe.contracts.workflows import JobRecord
from sdpipe.errors import EndpointDeleted
from sdpipe.logic.endpoint_announcements import EndpointAnnouncer
from sdpipe.logic.jobs import JobLedger
from sdpipe.settings import EndpointSettings

OPEN = [JobStatus.ACCEPTED, JobStatus.QUEUED, JobStatus.RUNNING]


def sagemaker_name(stack_name: str, name: str) -> str:
    """The SageMaker endpoint behind sdpipe endpoint ``name`` (the functions may invoke only these)."""
    return f"{stack_name}-{name}"


@dataclass
class EndpointRecords:
    ledger: JobLedger
    endpoints: EndpointsTable
    publisher: EventPublisher
    lease_seconds: int

    @classmethod
    def from_settings(cls, settings: EndpointSettings) -> EndpointRecords:
        """The records and the jobs ledger of one stack (the requests, the steps and drift share them)."""
        ledger = JobLedger.from_settings(settings)
        return cls(
            ledger, EndpointsTable(settings.endpoints_table_name), ledger.publisher, settings.event_lease_seconds
        )

    @property
    def announcer(self) -> EndpointAnnouncer:
        return EndpointAnnouncer(self.endpoints, self.publisher, self.lease_seconds)

    def get(self, name: str) -> EndpointRecord | None:
        return self.endpoints.get(name)

    def announce(self, name: str, job: JobRecord | None = None) -> None:
        """``endpoint.status`` with the record as it is now (and clear its announcement mark)."""
        self.announcer.announce(name, job)

    def recorded_by(self, name: str, job_id: str) -> bool:
        record = self.get(name)
        return record is not None and record.last_job == job_id

    def fail_jobs_on(self, name: str) -> None:
        """Inference jobs still open on a deleted endpoint fail now instead of waiting for the sweeper."""
        error = EndpointDeleted(f"endpoint {name!r} was deleted before the job finished").to_error()
        for job in self.ledger.open_jobs():
            if job.endpoint == name and job.action in (Action.TXT2IMG, Action.IMG2IMG):
                self.ledger.move(job, JobStatus.FAILED, allowed_from=OPEN, fields={"error": error})
