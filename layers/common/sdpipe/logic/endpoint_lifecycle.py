"""deploy_endpoint / update_endpoint / delete_endpoint: one request, one job, one workflow.

1. EndpointRequests validates the request (name rules, instance types, ``min <= max``), creates
   the job keyed on the request id, marks the Endpoints record as held by that job
   (CREATING / UPDATING / DELETING, conditionally: a second deploy of a name, or a change while
   another workflow runs, fails the job with the reason) and starts the Step Functions execution
   named after the job id, so a duplicate delivery starts nothing new.
2. The workflows (``statemachines/*.asl.json``) call SageMaker and, through ``step``, this
   module: autoscaling on and off, tearing an endpoint down, and recording where the workflow
   left the endpoint (IN_SERVICE, DELETED, FAILED with SageMaker's reason). Each transition is
   announced as ``endpoint.status``; the job ends SUCCEEDED or FAILED with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ValidationError

from sdpipe.adapters.autoscaling import EndpointScaling, ScalingPlan
from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.images import ContainerImages
from sdpipe.adapters.jobs_table import JobsTable
from sdpipe.adapters.sagemaker import SageMakerEndpoints
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.endpoints import (
    VARIANT,
    DeleteEndpointParams,
    DeployEndpointParams,
    EndpointStatus,
    UpdateEndpointParams,
)
from sdpipe.contracts.jobs import Action, JobStatus, RequestEnvelope
from sdpipe.errors import (
    ConfigurationError,
    EndpointBusy,
    EndpointDeleted,
    EndpointExists,
    EndpointNotFound,
    EndpointWorkflowFailed,
    SdpipeError,
    ValidationFailed,
)
from sdpipe.logic.endpoint_announcements import EndpointAnnouncer
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.requests import ParsedRequest, parse_request, record_failure, validation_message
from sdpipe.logic.workflow_errors import error_of_failure, run_step
from sdpipe.settings import EndpointSettings, endpoint_settings

logger = Logger(child=True)

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
# The settings an Endpoints record carries (and an update starts from).
_SETTINGS = (
    "instance_type",
    "min_instances",
    "max_instances",
    "max_concurrent_invocations",
    "image_uri",
    "environment",
    "scaling",
)
_OPEN = [JobStatus.ACCEPTED, JobStatus.QUEUED, JobStatus.RUNNING]
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


def sagemaker_name(stack_name: str, name: str) -> str:
    """The SageMaker endpoint behind sdpipe endpoint ``name`` (the functions may invoke only these)."""
    return f"{stack_name}-{name}"


def _resource_name(endpoint: str, job_id: str) -> str:
    """A model or endpoint config made by one job: unique per job, within SageMaker's 63 characters."""
    return f"{endpoint[:50]}-{job_id.removeprefix('j-')[:12]}"


@dataclass
class EndpointLifecycle:
    ledger: JobLedger
    jobs: JobsTable
    endpoints: EndpointsTable
    workflows: Workflows
    sagemaker: SageMakerEndpoints
    scaling: EndpointScaling
    publisher: EventPublisher
    settings: EndpointSettings
    images: ContainerImages = field(default_factory=ContainerImages)

    @classmethod
    def from_settings(cls) -> EndpointLifecycle:
        settings = endpoint_settings()
        jobs = JobsTable(settings.jobs_table_name, settings.endpoints_table_name)
        publisher = EventPublisher(settings.events_topic_arn)
        return cls(
            ledger=JobLedger(jobs, publisher, lease_seconds=settings.event_lease_seconds),
            jobs=jobs,
            endpoints=EndpointsTable(settings.endpoints_table_name),
            workflows=Workflows(),
            sagemaker=SageMakerEndpoints(),
            scaling=EndpointScaling(),
            publisher=publisher,
            settings=settings,
            images=ContainerImages(),
        )

    # ------------------------------------------------------------------ requests
    def handle_message(self, body: str, attribute_action: str | None, message_id: str) -> str:
        parsed = parse_request(body, attribute_action, message_id)
        if self.ledger.resume_duplicate(parsed.job_id, self._start):
            return parsed.job_id
        if parsed.error is not None or parsed.envelope is None:
            record_failure(self.ledger, parsed, parsed.error or ValidationFailed("unreadable request"), {})
            return parsed.job_id
        try:
            workflow = self.plan(parsed.envelope)
        except SdpipeError as exc:
            record_failure(self.ledger, parsed, exc, {"params": parsed.envelope.params})
            return parsed.job_id
        job = self._create_job(parsed, parsed.envelope, workflow)
        if job is None:
            return parsed.job_id
        self._start(job)
        return parsed.job_id

    def plan(self, envelope: RequestEnvelope) -> dict[str, Any]:
        """The execution input: every name and setting the workflow needs, decided here."""
        if envelope.action not in _PARAMS:
            raise ValidationFailed(f"action {envelope.action!r} is not an endpoint action ({sorted(_PARAMS)})")
        try:
            params = _PARAMS[envelope.action].model_validate(envelope.params)
        except ValidationError as exc:
            raise ValidationFailed(validation_message(exc, "params")) from None
        name = str(params.name)  # type: ignore[attr-defined]
        endpoint = sagemaker_name(self.settings.stack_name, name)
        job_id = envelope.job_id
        base = {
            "job_id": job_id,
            "action": envelope.action,
            "name": name,
            "sagemaker_name": endpoint,
            "poll_seconds": self.settings.endpoint_poll_seconds,
        }
        current = self.endpoints.get(name)
        gone = current is None or current.get("status") == EndpointStatus.DELETED.value
        if isinstance(params, DeleteEndpointParams):
            if gone:
                raise EndpointNotFound(f"params.name: endpoint {name!r} does not exist")
            return base
        if isinstance(params, UpdateEndpointParams):
            if gone or current is None:
                raise EndpointNotFound(f"params.name: endpoint {name!r} does not exist; deploy it first")
            try:
                settings = params.merged_with(current)
            except ValidationError as exc:
                raise ValidationFailed(validation_message(exc, "params")) from None
            old = {"old_config_name": current.get("config_name"), "old_model_name": current.get("model_name")}
            return base | self._deployment(settings, endpoint, job_id) | old
        if not gone and current is not None:
            raise EndpointExists(
                f"params.name: endpoint {name!r} already exists ({current.get('status')}); "
                "update it, or delete it first"
            )
        assert isinstance(params, DeployEndpointParams)
        return base | self._deployment(params, endpoint, job_id)

    def _deployment(self, params: DeployEndpointParams, endpoint: str, job_id: str) -> dict[str, Any]:
        bucket = self.settings.assets_bucket_name
        image = params.image_uri or self.settings.inference_image_uri
        return {
            "model_name": _resource_name(endpoint, job_id),
            "config_name": _resource_name(endpoint, job_id),
            # Checked before anything is created, and pinned: the endpoint runs the image its tag
            # names now, whatever is pushed to the tag later (an update picks that up).
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

    def _create_job(
        self, parsed: ParsedRequest, envelope: RequestEnvelope, workflow: dict[str, Any]
    ) -> dict[str, Any] | None:
        job = self.ledger.create(
            job_id=parsed.job_id,
            request_id=parsed.request_id,
            action=parsed.action,
            status=JobStatus.ACCEPTED,
            deadline_seconds=24 * 3600,  # SageMaker gives up on an endpoint long before this
            fields={
                "context": envelope.context,
                "params": envelope.params,
                "endpoint": workflow["name"],
                "sagemaker_endpoint": workflow["sagemaker_name"],
                "workflow_input": workflow,
            },
        )
        return job  # None: a concurrent duplicate created it and goes on with it

    def _start(self, job: dict[str, Any]) -> None:
        """Hold the endpoint for this job, announce it, start the execution, job RUNNING."""
        workflow: dict[str, Any] = job["workflow_input"]
        action, name = job["action"], workflow["name"]
        status, from_statuses = _HOLD[action]
        fields = {"sagemaker_name": workflow["sagemaker_name"]}
        if action == Action.DEPLOY_ENDPOINT:  # an update's settings are recorded once it succeeds
            fields |= _settings_fields(workflow)
        held = self.endpoints.begin_workflow(
            name,
            job["job_id"],
            status.value,
            fields,
            from_statuses=tuple(s.value for s in from_statuses),
            may_create=action == Action.DEPLOY_ENDPOINT,
            announcement=self.announcer.mark(job),
        )
        if not held:
            error = self._refusal(action, name)
            self.ledger.move(job, JobStatus.FAILED, allowed_from=[JobStatus.ACCEPTED], fields={"error": error})
            return
        self.announce(name, job)
        arn = self.workflows.start(self._state_machine(action), job["job_id"], workflow)
        self.ledger.move(job, JobStatus.RUNNING, allowed_from=[JobStatus.ACCEPTED], fields={"execution_arn": arn})

    def _refusal(self, action: str, name: str) -> dict[str, str]:
        current = self.endpoints.get(name)
        if current is None or (current.get("status") == EndpointStatus.DELETED.value and action != "deploy_endpoint"):
            return EndpointNotFound(f"params.name: endpoint {name!r} does not exist").to_error()
        status, pending = current.get("status"), current.get("pending_job")
        busy = f"; job {pending} is changing it" if pending else ""
        if action == Action.DEPLOY_ENDPOINT:
            return EndpointExists(f"params.name: endpoint {name!r} already exists ({status}{busy})").to_error()
        return EndpointBusy(f"params.name: endpoint {name!r} is {status}{busy}; try again when it settles").to_error()

    def _state_machine(self, action: str) -> str:
        machines: dict[str, str | None] = {
            Action.DEPLOY_ENDPOINT: self.settings.deploy_endpoint_state_machine_arn,
            Action.UPDATE_ENDPOINT: self.settings.update_endpoint_state_machine_arn,
            Action.DELETE_ENDPOINT: self.settings.delete_endpoint_state_machine_arn,
        }
        arn = machines[action]
        if arn is None:
            raise ConfigurationError(f"no state machine ARN for {action} ({action.upper()}_STATE_MACHINE_ARN)")
        return arn

    @property
    def announcer(self) -> EndpointAnnouncer:
        return EndpointAnnouncer(self.endpoints, self.publisher, self.settings.event_lease_seconds)

    def announce(self, name: str, job: dict[str, Any] | None = None) -> None:
        """``endpoint.status`` with the record as it is now (and clear its announcement mark)."""
        self.announcer.announce(name, job)

    # ------------------------------------------------------------------ workflow steps
    def step(self, event: dict[str, Any]) -> dict[str, Any]:
        """One step of a workflow: ``{"step": ..., "workflow": <execution state>}`` (``run_step``:
        throttling becomes ``Throttled``, which the workflows retry with jitter)."""
        step, payload = event.get("step"), event.get("workflow") or {}
        steps: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "create_model": self._create_model,
            "create_config": self._create_config,
            "create_endpoint": lambda p: self._sagemaker_call(
                self.sagemaker.create_endpoint, p["sagemaker_name"], p["config_name"]
            ),
            "update_endpoint": lambda p: self._sagemaker_call(
                self.sagemaker.update_endpoint, p["sagemaker_name"], p["config_name"]
            ),
            "scale": self._scale,
            "teardown": self._teardown,
            "describe": self._describe,
            "gone": lambda p: {"gone": self.sagemaker.is_gone(p["sagemaker_name"])},
            "finish": self._finish,
            "fail": self._fail,
        }
        return run_step("endpoint", str(step), {name: partial(call, payload) for name, call in steps.items()})

    def _create_model(self, payload: dict[str, Any]) -> dict[str, Any]:
        role = self._required(self.settings.inference_execution_role_arn, "INFERENCE_EXECUTION_ROLE_ARN")
        self.sagemaker.create_model(payload["model_name"], payload["image_uri"], payload["environment"], role)
        return {"model_name": payload["model_name"]}

    def _create_config(self, payload: dict[str, Any]) -> dict[str, Any]:
        success = self._required(self.settings.inference_success_topic_arn, "INFERENCE_SUCCESS_TOPIC_ARN")
        error = self._required(self.settings.inference_error_topic_arn, "INFERENCE_ERROR_TOPIC_ARN")
        self.sagemaker.create_async_config(
            payload["config_name"],
            payload["model_name"],
            {
                "VariantName": VARIANT,
                "InstanceType": payload["instance_type"],
                "InitialInstanceCount": payload["initial_instances"],
            },
            {
                "OutputConfig": {
                    "S3OutputPath": payload["output_path"],
                    "S3FailurePath": payload["failure_path"],
                    "NotificationConfig": {"SuccessTopic": success, "ErrorTopic": error},
                },
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": payload["max_concurrent_invocations"]},
            },
        )
        return {"config_name": payload["config_name"]}

    @staticmethod
    def _sagemaker_call(call: Any, endpoint: str, config: str) -> dict[str, Any]:
        call(endpoint, config)
        return {"endpoint": endpoint, "config_name": config}

    @staticmethod
    def _required(value: str | None, variable: str) -> str:
        if not value:
            raise ConfigurationError(f"the endpoint workflow steps need {variable}")
        return value

    def _describe(self, payload: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpoint reduced to what the wait loops decide on (every key always present)."""
        described = self.sagemaker.describe(payload["sagemaker_name"])
        if described is None:
            return {"status": "Missing", "config_name": "", "failure_reason": "the endpoint no longer exists"}
        return {
            "status": str(described.get("EndpointStatus")),
            "config_name": str(described.get("EndpointConfigName") or ""),
            "failure_reason": str(described.get("FailureReason") or ""),
        }

    def _scale(self, payload: dict[str, Any]) -> dict[str, Any]:
        settings = DeployEndpointParams.model_validate({"name": payload["name"], **payload["settings"]})
        return self.scaling.configure(
            ScalingPlan(
                sagemaker_name=payload["sagemaker_name"],
                min_instances=settings.min_instances,
                max_instances=settings.max_instances,
                target_backlog_per_instance=settings.scaling.target_backlog_per_instance,
                scale_in_cooldown_seconds=settings.scaling.scale_in_cooldown_seconds,
                scale_out_cooldown_seconds=settings.scaling.scale_out_cooldown_seconds,
            )
        )

    def _teardown(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Scaling off, then the endpoint (its config and model go once it is gone). Safe to repeat."""
        endpoint = payload["sagemaker_name"]
        self.scaling.remove(endpoint)
        self.sagemaker.delete_endpoint(endpoint)
        return {"deleting": endpoint}

    def _finish(self, payload: dict[str, Any]) -> dict[str, Any]:
        name, job_id, action = payload["name"], payload["job_id"], payload["action"]
        job = self.ledger.get(job_id)
        if action == Action.DELETE_ENDPOINT:
            record = self.endpoints.get(name) or {}
            self.sagemaker.delete_leftovers(record.get("config_name"), record.get("model_name"))
            recorded = self.endpoints.finish_workflow(
                name, job_id, EndpointStatus.DELETED.value, {"in_flight": 0}, announcement=self.announcer.mark(job)
            )
            if recorded:
                self._fail_jobs_on(name)
        else:
            if action == Action.UPDATE_ENDPOINT:
                self.sagemaker.delete_leftovers(payload.get("old_config_name"), payload.get("old_model_name"))
            fields = _settings_fields(payload) | {
                "config_name": payload["config_name"],
                "model_name": payload["model_name"],
                "scaling_resources": (payload.get("scaling_resources") or {}).get("result") or {},
            }
            recorded = self.endpoints.finish_workflow(
                name, job_id, EndpointStatus.IN_SERVICE.value, fields, announcement=self.announcer.mark(job)
            )
        if job is not None:
            self.ledger.move(job, JobStatus.SUCCEEDED, allowed_from=_OPEN, fields={"outputs": {"endpoint": name}})
        if recorded or self._recorded_by(name, job_id):  # a retried step announces again rather than never
            self.announce(name, job)
        return {"recorded": recorded}

    def _fail(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Where a workflow stopped: the record says so (with SageMaker's reason), and the job fails."""
        name, job_id, action = payload["name"], payload["job_id"], payload["action"]
        failure = payload.get("failure") or {}
        reason = _reason(failure)
        status = EndpointStatus.FAILED
        if action == Action.UPDATE_ENDPOINT:
            # SageMaker keeps serving the old config when an update fails: say what it is doing.
            described = self.sagemaker.describe(payload["sagemaker_name"])
            if described is not None and described.get("EndpointStatus") == "InService":
                status = EndpointStatus.IN_SERVICE
        job = self.ledger.get(job_id)
        recorded = self.endpoints.finish_workflow(
            name, job_id, status.value, {"failure_reason": reason}, announcement=self.announcer.mark(job)
        )
        # A cause of our own (ACCESS_DENIED, IMAGE_NOT_FOUND...) keeps its code; SageMaker's is wrapped.
        cause = error_of_failure(failure, fallback_code=EndpointWorkflowFailed.code)
        error = {"code": cause["code"], "message": f"{action} {name!r} failed: {reason}"}
        if job is not None:
            self.ledger.move(job, JobStatus.FAILED, allowed_from=_OPEN, fields={"error": error})
        if recorded or self._recorded_by(name, job_id):
            self.announce(name, job)
        return {"recorded": recorded, "status": status.value}

    def _recorded_by(self, name: str, job_id: str) -> bool:
        record = self.endpoints.get(name)
        return record is not None and record.get("last_job") == job_id

    # ------------------------------------------------------------------ SageMaker's own events
    def track(self, detail: dict[str, Any]) -> str | None:
        """An EventBridge "SageMaker Endpoint State Change" for one of this stack's endpoints.

        Keeps the record true when the endpoint changes outside sdpipe (deleted in the console,
        failed on its own); changes a running workflow makes are recorded by the workflow itself.
        Returns the status recorded, or None when nothing changed.
        """
        sagemaker_name = str(detail.get("EndpointName") or "")
        prefix = f"{self.settings.stack_name}-"
        if not sagemaker_name.startswith(prefix):
            return None
        name = sagemaker_name.removeprefix(prefix)
        record = self.endpoints.get(name)
        if record is None or record.get("sagemaker_name") != sagemaker_name or record.get("pending_job"):
            return None
        # EventBridge does not keep order: an event older than the last one applied changes nothing,
        # and a deleted endpoint leaves DELETED only through a new deployment.
        changed_at = int(detail.get("LastModifiedTime") or 0)
        if record.get("status") == EndpointStatus.DELETED.value or changed_at < int(record.get("changed_at") or 0):
            return None
        seen = str(detail.get("EndpointStatus") or "")
        status = _SAGEMAKER_STATUS.get(seen)
        fields: dict[str, Any] = {"changed_at": changed_at}
        if status is EndpointStatus.DELETING and self.sagemaker.is_gone(sagemaker_name):
            status = EndpointStatus.DELETED
        if status is EndpointStatus.FAILED:
            fields["failure_reason"] = str(detail.get("FailureReason") or "SageMaker reported the endpoint failed")
        if status is None or record.get("status") == status.value:
            return None
        if not self.endpoints.set_status(name, status.value, fields, announcement=self.announcer.mark()):
            return None  # a workflow took it meanwhile
        logger.info("endpoint changed outside sdpipe", extra={"endpoint": name, "status": status.value})
        if status is EndpointStatus.DELETED:
            self._fail_jobs_on(name)
        self.announce(name)
        return status.value

    def _fail_jobs_on(self, name: str) -> None:
        """Inference jobs still open on a deleted endpoint fail now instead of waiting for the sweeper."""
        error = EndpointDeleted(f"endpoint {name!r} was deleted before the job finished").to_error()
        for job in self.jobs.open_jobs():
            if job.get("endpoint") == name and job.get("action") in (Action.TXT2IMG, Action.IMG2IMG):
                self.ledger.move(job, JobStatus.FAILED, allowed_from=_OPEN, fields={"error": error})


def _settings_fields(workflow: dict[str, Any]) -> dict[str, Any]:
    settings = workflow.get("settings") or {}
    return {key: settings.get(key) for key in _SETTINGS}


def _reason(failure: dict[str, Any]) -> str:
    """A Step Functions error and cause as one readable reason (SageMaker's message when it gave one)."""
    error, cause = str(failure.get("Error") or "Error"), failure.get("Cause") or ""
    try:
        parsed = json.loads(cause) if isinstance(cause, str) and cause.startswith("{") else None
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        cause = parsed.get("errorMessage") or parsed.get("message") or parsed.get("Message") or cause
    return f"{error}: {cause}" if cause else error
