"""The endpoint workflows' own steps (``statemachines/{deploy,update,delete}_endpoint.asl.json``).

The workflows call SageMaker and, through ``step``, this module: create the model and the async
endpoint config, create or update the endpoint, describe it while it settles, turn autoscaling on
or off, tear it down, and record where the workflow left it (IN_SERVICE, DELETED, FAILED with
SageMaker's reason). Each transition is announced as ``endpoint.status``; the job ends SUCCEEDED
or FAILED with it. Every step is safe to repeat (the ASL retries them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdpipe.adapters.autoscaling import EndpointScaling, ScalingPlan
from sdpipe.adapters.sagemaker import SageMakerEndpoints
from sdpipe.contracts.endpoints import VARIANT, DeployEndpointParams, EndpointStatus
from sdpipe.contracts.jobs import Action, JobStatus
from sdpipe.contracts.workflows import DescribedEndpoint, EndpointState
from sdpipe.errors import ConfigurationError, EndpointWorkflowFailed
from sdpipe.logic.endpoint_records import OPEN, EndpointRecords
from sdpipe.logic.endpoint_requests import settings_fields
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.workflows import error_of_failure, failure_reason, run_step
from sdpipe.settings import EndpointSettings, settings_of


@dataclass
class EndpointSteps:
    ledger: JobLedger
    records: EndpointRecords
    sagemaker: SageMakerEndpoints
    scaling: EndpointScaling
    settings: EndpointSettings

    @classmethod
    def from_settings(cls) -> EndpointSteps:
        settings = settings_of(EndpointSettings)
        records = EndpointRecords.from_settings(settings)
        return cls(records.ledger, records, SageMakerEndpoints(), EndpointScaling(), settings)

    def step(self, event: dict[str, Any]) -> dict[str, Any]:
        """One step of a workflow: ``{"step": ..., "state": <execution state>}``."""
        steps: dict[str, Callable[[EndpointState], dict[str, Any]]] = {
            "create_model": self._create_model,
            "create_config": self._create_config,
            "create_endpoint": lambda s: self._sagemaker_call(self.sagemaker.create_endpoint, s),
            "update_endpoint": lambda s: self._sagemaker_call(self.sagemaker.update_endpoint, s),
            "scale": self._scale,
            "teardown": self._teardown,
            "describe": lambda s: self._describe(s).model_dump(),
            "gone": lambda s: {"gone": self.sagemaker.is_gone(s.sagemaker_name)},
            "finish": self._finish,
            "fail": self._fail,
        }
        return run_step("endpoint", event, EndpointState, steps)

    def _create_model(self, state: EndpointState) -> dict[str, Any]:
        role = _required(self.settings.inference_execution_role_arn, "INFERENCE_EXECUTION_ROLE_ARN")
        model_name = _required(state.model_name, "a model name in the workflow's state")
        # The container announces its jobs' progress itself (its role may publish there).
        region = self.settings.events_topic_arn.split(":")[3]
        environment = {
            "SDPIPE_EVENTS_TOPIC_ARN": self.settings.events_topic_arn,
            "SDPIPE_ASSETS_BUCKET": self.settings.assets_bucket_name,
            "AWS_DEFAULT_REGION": region,
        }
        self.sagemaker.create_model(model_name, str(state.image_uri), environment | state.environment, role)
        return {"model_name": model_name}

    def _create_config(self, state: EndpointState) -> dict[str, Any]:
        success = _required(self.settings.inference_success_topic_arn, "INFERENCE_SUCCESS_TOPIC_ARN")
        error = _required(self.settings.inference_error_topic_arn, "INFERENCE_ERROR_TOPIC_ARN")
        self.sagemaker.create_async_config(
            str(state.config_name),
            str(state.model_name),
            {
                "VariantName": VARIANT,
                "InstanceType": state.instance_type,
                "InitialInstanceCount": state.initial_instances,
            },
            {
                "OutputConfig": {
                    "S3OutputPath": state.output_path,
                    "S3FailurePath": state.failure_path,
                    "NotificationConfig": {"SuccessTopic": success, "ErrorTopic": error},
                },
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": state.max_concurrent_invocations},
            },
        )
        return {"config_name": state.config_name}

    @staticmethod
    def _sagemaker_call(call: Callable[[str, str], Any], state: EndpointState) -> dict[str, Any]:
        config = _required(state.config_name, "an endpoint config name in the workflow's state")
        call(state.sagemaker_name, config)
        return {"endpoint": state.sagemaker_name, "config_name": config}

    def _describe(self, state: EndpointState) -> DescribedEndpoint:
        """DescribeEndpoint reduced to what the wait loops decide on (every key always present)."""
        described = self.sagemaker.describe(state.sagemaker_name)
        if described is None:
            return DescribedEndpoint(status="Missing", failure_reason="the endpoint no longer exists")
        return described

    def _scale(self, state: EndpointState) -> dict[str, Any]:
        settings = DeployEndpointParams.model_validate({"name": state.name, **state.settings})
        return self.scaling.configure(
            ScalingPlan(
                sagemaker_name=state.sagemaker_name,
                min_instances=settings.min_instances,
                max_instances=settings.max_instances,
                target_backlog_per_instance=settings.scaling.target_backlog_per_instance,
                scale_in_cooldown_seconds=settings.scaling.scale_in_cooldown_seconds,
                scale_out_cooldown_seconds=settings.scaling.scale_out_cooldown_seconds,
            )
        )

    def _teardown(self, state: EndpointState) -> dict[str, Any]:
        """Scaling off, then the endpoint (its config and model go once it is gone). Safe to repeat."""
        self.scaling.remove(state.sagemaker_name)
        self.sagemaker.delete_endpoint(state.sagemaker_name)
        return {"deleting": state.sagemaker_name}

    def _finish(self, state: EndpointState) -> dict[str, Any]:
        name, job_id = state.name, state.job_id
        job = self.ledger.get(job_id)
        announcement = self.records.announcer.mark(job)
        if state.action == Action.DELETE_ENDPOINT:
            record = self.records.get(name)
            if record is not None:
                self.sagemaker.delete_leftovers(record.config_name, record.model_name)
            recorded = self.records.endpoints.finish_workflow(
                name, job_id, EndpointStatus.DELETED.value, {"in_flight": 0}, announcement=announcement
            )
            if recorded:
                self.records.fail_jobs_on(name)
        else:
            if state.action == Action.UPDATE_ENDPOINT:
                self.sagemaker.delete_leftovers(state.old_config_name, state.old_model_name)
            fields = settings_fields(state) | {
                "config_name": state.config_name,
                "model_name": state.model_name,
                "scaling_resources": state.scaling,
            }
            if state.described is not None and state.described.last_modified_ms:
                # The state-change events of this workflow's own transitions (CREATING, UPDATING)
                # may arrive after it (EventBridge keeps no order, a killed delivery comes back
                # late): older than what it saw, they must not undo IN_SERVICE.
                fields["changed_at"] = state.described.last_modified_ms
            recorded = self.records.endpoints.finish_workflow(
                name, job_id, EndpointStatus.IN_SERVICE.value, fields, announcement=announcement
            )
        if job is not None:
            self.ledger.move(job, JobStatus.SUCCEEDED, allowed_from=OPEN, fields={"outputs": {"endpoint": name}})
        if recorded or self.records.recorded_by(name, job_id):  # a retried step announces again rather than never
            self.records.announce(name, job)
        return {"recorded": recorded}

    def _fail(self, state: EndpointState) -> dict[str, Any]:
        """Where a workflow stopped: the record says so (with SageMaker's reason), and the job fails."""
        name, job_id = state.name, state.job_id
        reason = failure_reason(state.failure)
        status = EndpointStatus.FAILED
        if state.action == Action.UPDATE_ENDPOINT:
            # SageMaker keeps serving the old config when an update fails: say what it is doing.
            described = self.sagemaker.describe(state.sagemaker_name)
            if described is not None and described.status == "InService":
                status = EndpointStatus.IN_SERVICE
        job = self.ledger.get(job_id)
        recorded = self.records.endpoints.finish_workflow(
            name, job_id, status.value, {"failure_reason": reason}, announcement=self.records.announcer.mark(job)
        )
        # A cause of our own (ACCESS_DENIED, IMAGE_NOT_FOUND...) keeps its code; SageMaker's is wrapped.
        cause = error_of_failure(state.failure, fallback_code=EndpointWorkflowFailed.code)
        error = cause | {"message": f"{state.action} {name!r} failed: {reason}"}
        if job is not None:
            self.ledger.move(job, JobStatus.FAILED, allowed_from=OPEN, fields={"error": error})
        if recorded or self.records.recorded_by(name, job_id):
            self.records.announce(name, job)
        return {"recorded": recorded, "status": status.value}


def _required(value: str | None, what: str) -> str:
    if not value:
        raise ConfigurationError(f"the endpoint workflow steps need {what}")
    return value
