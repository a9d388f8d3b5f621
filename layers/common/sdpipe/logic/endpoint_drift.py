"""SageMaker's own endpoint state-change events (EventBridge), keeping the records true when an
endpoint changes outside sdpipe (deleted in the console, failed on its own). Changes a running
workflow makes are recorded by the workflow itself (``endpoint_steps``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from sdpipe.adapters.sagemaker import SageMakerEndpoints
from sdpipe.contracts.endpoints import EndpointStatus
from sdpipe.contracts.sagemaker_events import EndpointStateChange
from sdpipe.logic.endpoint_records import EndpointRecords
from sdpipe.settings import EndpointSettings, settings_of

logger = Logger(child=True)

# SageMaker's event spelling (upper snake case) of DescribeEndpoint's statuses.
_SAGEMAKER_STATUS = {
    "CREATING": EndpointStatus.CREATING,
    "IN_SERVICE": EndpointStatus.IN_SERVICE,
    "UPDATING": EndpointStatus.UPDATING,
    "SYSTEM_UPDATING": EndpointStatus.UPDATING,
    "ROLLING_BACK": EndpointStatus.UPDATING,
    "UPDATE_ROLLBACK_FAILED": EndpointStatus.FAILED,
    "DELETING": EndpointStatus.DELETING,
    "FAILED": EndpointStatus.FAILED,
}


@dataclass
class EndpointDrift:
    records: EndpointRecords
    sagemaker: SageMakerEndpoints
    stack_name: str

    @classmethod
    def from_settings(cls) -> EndpointDrift:
        settings = settings_of(EndpointSettings)
        return cls(EndpointRecords.from_settings(settings), SageMakerEndpoints(), settings.stack_name)

    def track(self, detail: dict[str, Any]) -> str | None:
        """An EventBridge "SageMaker Endpoint State Change" for one of this stack's endpoints: the
        status recorded, or None when nothing changed."""
        change = EndpointStateChange.model_validate(detail)
        prefix = f"{self.stack_name}-"
        if not change.endpoint_name.startswith(prefix):
            return None
        name = change.endpoint_name.removeprefix(prefix)
        record = self.records.get(name)
        if record is None or record.sagemaker_name != change.endpoint_name or record.pending_job:
            return None
        # EventBridge does not keep order: an event older than the last one applied changes nothing,
        # and a deleted endpoint leaves DELETED only through a new deployment.
        if record.is_gone or change.last_modified < record.changed_at:
            return None
        status = _SAGEMAKER_STATUS.get(change.status)
        if status is EndpointStatus.DELETING and self.sagemaker.is_gone(change.endpoint_name):
            status = EndpointStatus.DELETED
        fields: dict[str, Any] = {"changed_at": change.last_modified}
        if status is EndpointStatus.FAILED:
            fields |= {"failure_reason": change.failure_reason or "SageMaker reported the endpoint failed"}
        if status is None or record.status is status:
            return None
        if not self.records.endpoints.set_status(
            name, status.value, fields, announcement=self.records.announcer.mark()
        ):
            return None  # a workflow took it meanwhile
        logger.info("endpoint changed outside sdpipe", extra={"endpoint": name, "status": status.value})
        if status is EndpointStatus.DELETED:
            self.records.fail_jobs_on(name)
        self.records.announce(name)
        return status.value
