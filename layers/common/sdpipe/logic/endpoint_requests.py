"""deploy_endpoint / update_endpoint / delete_endpoint requests: one request, one job, one workflow.

A request is validated (name rules, instance types, ``min <= max``) and planned: every name and
setting the workflow needs is decided here (``EndpointPlan``, the execution's input). The job is
keyed on the request id; starting it holds the Endpoints record for the job (CREATING / UPDATING
/ DELETING, conditionally: a second deploy of a name, or a change while another workflow runs,
fails the job with the reason) and starts the execution named after the job, so a duplicate
delivery starts nothing new. The workflows' steps are ``endpoint_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from sdpipe.adapters.images import ContainerImages
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.endpoints import (
    SETTINGS_FIELDS,
    DeleteEndpointParams,
    DeployEndpointParams,
    EndpointStatus,
    UpdateEndpointParams,
)
from sdpipe.contracts.jobs import Action, JobStatus, RequestEnvelope
from sdpipe.contracts.workflows import EndpointPlan, JobRecord
from sdpipe.errors import EndpointBusy, EndpointExists, EndpointNotFound, ValidationFailed
from sdpipe.logic.endpoint_records import EndpointRecords, sagemaker_name
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.requests import validation_message
from sdpipe.logic.workflows import Accepted, WorkflowRequests, validated
from sdpipe.settings import EndpointSettings, settings_of

_PARAMS: dict[str, type[BaseModel]] = {
    Action.DEPLOY_ENDPOINT: DeployEndpointParams,
    Action.UPDATE_ENDPOINT: UpdateEndpointParams,
    Action.DELETE_ENDPOINT: DeleteEndpointParams,
}
# What each request does to the record: the status it sets, and the statuses it may start from.
_HOLD: dict[str, tuple[EndpointStatus, tuple[EndpointStatus, ...]]] = {
    Action.DEPLOY_ENDPOINT: (EndpointStatus.CREATING, (EndpointStatus.DELETED,)),
    Action.UPDATE_ENDPOINT: (EndpointStatus.UPDATING, (EndpointStatus.IN_SERVICE,)),
    Action.DELETE_ENDPOINT: (EndpointStatus.DELETING, (EndpointStatus.IN_SERVICE, EndpointStatus.FAILED)),
}
# SageMaker gives up on an endpoint long before this.
_DEADLINE_SECONDS = 24 * 3600


def _resource_name(endpoint: str, job_id: str) -> str:
    """A model or endpoint config made by one job: unique per job, within SageMaker's 63 characters."""
    return f"{endpoint[:50]}-{job_id.removeprefix('j-')[:12]}"


@dataclass
class EndpointRequests:
    ledger: JobLedger
    records: EndpointRecords
    workflows: Workflows
    settings: EndpointSettings
    images: ContainerImages = field(default_factory=ContainerImages)

    @classmethod
    def from_settings(cls) -> EndpointRequests:
        settings = settings_of(EndpointSettings)
        records = EndpointRecords.from_settings(settings)
        return cls(records.ledger, records, Workflows(), settings, ContainerImages())

    @property
    def requests(self) -> WorkflowRequests:
        return WorkflowRequests(self.ledger, self.workflows)

    def handle_message(self, body: str, attribute_action: str | None, message_id: str) -> str:
        return self.requests.accept((body, attribute_action, message_id), validate=self._accept, start=self._start)

    def _accept(self, envelope: RequestEnvelope) -> Accepted:
        plan = self.plan(envelope)
        return Accepted(
            envelope.params,
            deadline_seconds=_DEADLINE_SECONDS,
            fields={"endpoint": plan.name, "sagemaker_endpoint": plan.sagemaker_name, "workflow_input": plan},
        )

    def plan(self, envelope: RequestEnvelope) -> EndpointPlan:
        """The execution input: every name and setting the workflow needs, decided here."""
        if envelope.action not in _PARAMS:
            raise ValidationFailed(f"action {envelope.action!r} is not an endpoint action ({sorted(_PARAMS)})")
        params = validated(_PARAMS[envelope.action], envelope.params)
        name = str(params.name)  # type: ignore[attr-defined]
        base = EndpointPlan(
            job_id=envelope.job_id,
            action=Action(envelope.action),
            name=name,
            sagemaker_name=sagemaker_name(self.settings.stack_name, name),
            poll_seconds=self.settings.endpoint_poll_seconds,
        )
        current = self.records.get(name)
        if isinstance(params, DeleteEndpointParams):
            if current is None or current.is_gone:
                raise EndpointNotFound(f"params.name: endpoint {name!r} does not exist")
            return base
        if isinstance(params, UpdateEndpointParams):
            if current is None or current.is_gone:
                raise EndpointNotFound(f"params.name: endpoint {name!r} does not exist; deploy it first")
            try:
                merged = params.merged_with(current.settings() | {"name": name})
            except ValidationError as exc:
                raise ValidationFailed(validation_message(exc, "params")) from None
            return self._deployment(base, merged).model_copy(
                update={"old_config_name": current.config_name, "old_model_name": current.model_name}
            )
        if current is not None and not current.is_gone:
            raise EndpointExists(
                f"params.name: endpoint {name!r} already exists ({current.status.value}); update it, or delete it first"
            )
        assert isinstance(params, DeployEndpointParams)
        return self._deployment(base, params)

    def _deployment(self, base: EndpointPlan, params: DeployEndpointParams) -> EndpointPlan:
        bucket = self.settings.assets_bucket_name
        image = params.image_uri or self.settings.inference_image_uri
        resource = _resource_name(base.sagemaker_name, base.job_id)
        return base.model_copy(
            update={
                "model_name": resource,
                "config_name": resource,
                # Checked before anything is created, and pinned: the endpoint runs the image its
                # tag names now, whatever is pushed to the tag later (an update picks that up).
                "image_uri": self.images.pinned(image),
                "environment": params.environment,
                "instance_type": params.instance_type,
                # An asynchronous endpoint starts with at least one instance; autoscaling may then
                # take it to zero when min_instances is 0.
                "initial_instances": max(1, params.min_instances),
                "max_concurrent_invocations": params.max_concurrent_invocations,
                "output_path": f"s3://{bucket}/jobs/async-output/{params.name}",
                "failure_path": f"s3://{bucket}/jobs/async-failures/{params.name}",
                "settings": params.model_dump(mode="json", exclude={"name"}) | {"image_uri": image},
            }
        )

    def _start(self, job: JobRecord) -> None:
        """Hold the endpoint for this job, announce it, start the execution, job RUNNING."""
        plan = job.workflow_input
        assert plan is not None, "an endpoint job is created with its plan"
        status, from_statuses = _HOLD[plan.action]
        fields: dict[str, object] = {"sagemaker_name": plan.sagemaker_name}
        if plan.action == Action.DEPLOY_ENDPOINT:  # an update's settings are recorded once it succeeds
            fields |= settings_fields(plan)
        held = self.records.endpoints.begin_workflow(
            plan.name,
            job.job_id,
            status.value,
            fields,
            from_statuses=tuple(s.value for s in from_statuses),
            may_create=plan.action == Action.DEPLOY_ENDPOINT,
            announcement=self.records.announcer.mark(job),
        )
        if not held:
            error = self._refusal(plan.action, plan.name)
            self.ledger.move(job, JobStatus.FAILED, allowed_from=[JobStatus.ACCEPTED], fields={"error": error})
            return
        self.records.announce(plan.name, job)
        self.requests.start(job, self._state_machine(plan.action), plan, status=JobStatus.RUNNING)

    def _refusal(self, action: str, name: str) -> dict[str, str]:
        current = self.records.get(name)
        if current is None or (current.is_gone and action != Action.DEPLOY_ENDPOINT):
            return EndpointNotFound(f"params.name: endpoint {name!r} does not exist").to_error()
        busy = f"; job {current.pending_job} is changing it" if current.pending_job else ""
        if action == Action.DEPLOY_ENDPOINT:
            return EndpointExists(
                f"params.name: endpoint {name!r} already exists ({current.status.value}{busy})"
            ).to_error()
        return EndpointBusy(
            f"params.name: endpoint {name!r} is {current.status.value}{busy}; try again when it settles"
        ).to_error()

    def _state_machine(self, action: Action) -> str | None:
        machines: dict[str, str | None] = {
            Action.DEPLOY_ENDPOINT: self.settings.deploy_endpoint_state_machine_arn,
            Action.UPDATE_ENDPOINT: self.settings.update_endpoint_state_machine_arn,
            Action.DELETE_ENDPOINT: self.settings.delete_endpoint_state_machine_arn,
        }
        return machines[action]


def settings_fields(plan: EndpointPlan) -> dict[str, object]:
    """The deployment settings an Endpoints record carries, from a plan."""
    return {key: plan.settings.get(key) for key in SETTINGS_FIELDS}
