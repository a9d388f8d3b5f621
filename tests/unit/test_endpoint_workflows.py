"""deploy / update / delete_endpoint from the request to the last step, each step called as the ASL
calls it, on in-process moto with SageMaker, autoscaling and ECR faked."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import MagicMock

import pytest

from sdpipe.contracts.jobs import JobStatus, job_id_for
from sdpipe.errors import ConfigurationError
from sdpipe.logic.endpoint_drift import EndpointDrift
from sdpipe.logic.endpoint_records import EndpointRecords
from sdpipe.logic.endpoint_requests import EndpointRequests
from sdpipe.logic.endpoint_steps import EndpointSteps
from sdpipe.settings import EndpointSettings
from tests.unit.world import FakeEndpoints, FakeImages, FakeScaling, FakeWorkflows, World, envelope, machine_arn

IMAGE = f"{'1' * 12}.dkr.ecr.us-east-1.amazonaws.com/sdpipe-inference:latest"


class Endpoints:
    """The request side and the steps side, sharing one world."""

    def __init__(self, world: World, images: FakeImages | None = None) -> None:
        self.world = world
        self.settings = EndpointSettings.model_validate(
            world.settings_values(
                inference_image_uri=IMAGE,
                deploy_endpoint_state_machine_arn=machine_arn("deploy"),
                update_endpoint_state_machine_arn=machine_arn("update"),
                delete_endpoint_state_machine_arn=machine_arn("delete"),
                inference_execution_role_arn="arn:aws:iam::123456789012:role/endpoint",
                inference_success_topic_arn="arn:aws:sns:us-east-1:123456789012:ok",
                inference_error_topic_arn="arn:aws:sns:us-east-1:123456789012:error",
            )
        )
        ledger = world.ledger()
        self.records = EndpointRecords(ledger, world.endpoints, world.publisher, 60)
        self.workflows = FakeWorkflows()
        self.sagemaker = FakeEndpoints()
        self.scaling = FakeScaling()
        self.requests = EndpointRequests(ledger, self.records, self.workflows, self.settings, images or FakeImages())
        self.steps = EndpointSteps(ledger, self.records, self.sagemaker, self.scaling, self.settings)
        self.ledger = ledger

    def request(self, action: str, params: dict[str, Any], request_id: str) -> str:
        return self.requests.handle_message(envelope(action, params, request_id), action, "m-1")

    def run(self, job_id: str, steps: list[str], **state: Any) -> dict[str, Any]:
        """Run the workflow's steps in order as the ASL does (each result kept in the state)."""
        execution = self.workflows.started[job_id] | state
        result: dict[str, Any] = {}
        for step in steps:
            result = self.steps.step({"step": step, "state": execution})
            if step == "describe":
                execution["described"] = result
            if step == "scale":
                execution["scaling_resources"] = {"result": result}
        return result


DEPLOY = ["create_model", "create_config", "create_endpoint", "describe", "scale", "finish"]
UPDATE = ["create_model", "create_config", "update_endpoint", "describe", "scale", "finish"]


@pytest.fixture
def endpoints(world: World) -> Endpoints:
    return Endpoints(world)


def test_deploy_update_delete_walk_the_record_and_the_job_through_their_states(endpoints, world):
    job_id = endpoints.request("deploy_endpoint", {"name": "fast", "max_instances": 2}, "deploy-1")
    plan = endpoints.workflows.started[job_id]
    assert plan["sagemaker_name"] == "sdpipe-fast" and plan["image_uri"].endswith("@sha256:" + "a" * 64)
    assert endpoints.records.get("fast").status == "CREATING"  # type: ignore[union-attr]
    assert endpoints.run(job_id, DEPLOY) == {"recorded": True}
    record = endpoints.records.get("fast")
    assert record is not None and record.status == "IN_SERVICE" and record.max_instances == 2
    assert endpoints.ledger.require(job_id).status == "SUCCEEDED"
    assert [p.max_instances for p in endpoints.scaling.configured] == [2]
    types = world.event_types()
    assert types.count("endpoint.status") >= 2 and "job.succeeded" in types

    update = endpoints.request("update_endpoint", {"name": "fast", "max_instances": 4}, "update-1")
    assert endpoints.workflows.started[update]["old_config_name"] == record.config_name
    endpoints.run(update, UPDATE)
    assert endpoints.records.get("fast").max_instances == 4  # type: ignore[union-attr]
    assert ("delete_leftovers", str(record.config_name), str(record.model_name)) in endpoints.sagemaker.calls

    delete = endpoints.request("delete_endpoint", {"name": "fast"}, "delete-1")
    endpoints.run(delete, ["teardown", "gone", "finish"])
    assert endpoints.records.get("fast").status == "DELETED"  # type: ignore[union-attr]
    assert endpoints.scaling.removed == ["sdpipe-fast"]
    assert endpoints.ledger.require(delete).status == "SUCCEEDED"


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        ("deploy_endpoint", {"name": "-bad-"}, "VALIDATION_ERROR"),
        ("deploy_endpoint", {"name": "a", "instance_type": "ml.m5.large"}, "VALIDATION_ERROR"),
        ("deploy_endpoint", {"name": "a", "min_instances": 3, "max_instances": 2}, "VALIDATION_ERROR"),
        ("update_endpoint", {"name": "nowhere"}, "ENDPOINT_NOT_FOUND"),
        ("delete_endpoint", {"name": "nowhere"}, "ENDPOINT_NOT_FOUND"),
    ],
)
def test_bad_requests_fail_their_job_and_start_nothing(endpoints, world, action, params, code):
    job_id = endpoints.request(action, params, f"bad-{action}")
    job = endpoints.ledger.require(job_id)
    assert job.status == "FAILED" and job.error is not None and job.error["code"] == code
    assert endpoints.workflows.started == {}
    assert world.event_types(job_id) == ["job.failed"]


def test_an_image_that_was_never_pushed_fails_the_request(world):
    endpoints = Endpoints(world, FakeImages(missing=frozenset({IMAGE})))
    job = endpoints.ledger.require(endpoints.request("deploy_endpoint", {"name": "a"}, "no-image"))
    assert job.error is not None and job.error["code"] == "IMAGE_NOT_FOUND"


def test_a_second_deploy_of_a_name_fails_and_a_duplicate_delivery_starts_nothing(endpoints):
    first = endpoints.request("deploy_endpoint", {"name": "twice"}, "one")
    assert endpoints.request("deploy_endpoint", {"name": "twice"}, "one") == first
    assert list(endpoints.workflows.started) == [first]
    second = endpoints.ledger.require(endpoints.request("deploy_endpoint", {"name": "twice"}, "two"))
    assert second.error is not None and second.error["code"] == "ENDPOINT_EXISTS"


def test_a_change_while_another_workflow_holds_the_endpoint_is_refused(endpoints):
    deploy = endpoints.request("deploy_endpoint", {"name": "busy"}, "deploy-busy")
    endpoints.run(deploy, DEPLOY)
    endpoints.request("update_endpoint", {"name": "busy", "max_instances": 3}, "update-busy")
    delete = endpoints.ledger.require(endpoints.request("delete_endpoint", {"name": "busy"}, "delete-busy"))
    assert delete.status == "FAILED" and delete.error is not None and delete.error["code"] == "ENDPOINT_BUSY"
    assert "is changing it" in delete.error["message"]


def test_a_failed_step_records_sagemakers_reason_and_an_update_keeps_serving(endpoints):
    deploy = endpoints.request("deploy_endpoint", {"name": "flaky"}, "deploy-flaky")
    cause = json.dumps({"errorType": "ClientError", "errorMessage": "no capacity for ml.g5.xlarge"})
    answer = endpoints.run(deploy, ["fail"], failure={"Error": "ClientError", "Cause": cause})
    assert answer == {"recorded": True, "status": "FAILED"}
    record = endpoints.records.get("flaky")
    assert record is not None and record.failure_reason == "ClientError: no capacity for ml.g5.xlarge"
    job = endpoints.ledger.require(deploy)
    assert job.error is not None and job.error["code"] == "ENDPOINT_WORKFLOW_FAILED"
    assert job.error["message"] == "deploy_endpoint 'flaky' failed: ClientError: no capacity for ml.g5.xlarge"

    ok = endpoints.request("deploy_endpoint", {"name": "steady"}, "deploy-steady")
    endpoints.run(ok, DEPLOY)
    update = endpoints.request("update_endpoint", {"name": "steady", "max_instances": 5}, "update-steady")
    failure = {"Error": "SageMaker.EndpointFailed", "Cause": "endpoint is Failed: image pull"}
    assert endpoints.run(update, ["fail"], failure=failure)["status"] == "IN_SERVICE"


def test_the_steps_say_what_they_miss():
    steps = EndpointSteps(MagicMock(), MagicMock(), FakeEndpoints(), FakeScaling(), MagicMock())
    steps.settings.inference_execution_role_arn = None
    state = {"job_id": "j", "action": "deploy_endpoint", "name": "a", "sagemaker_name": "s-a", "poll_seconds": 1}
    with pytest.raises(ConfigurationError, match="INFERENCE_EXECUTION_ROLE_ARN"):
        steps.step({"step": "create_model", "state": state | {"model_name": "m"}})
    assert steps.step({"step": "describe", "state": state})["status"] == "Missing"


def test_an_endpoint_deleted_outside_sdpipe_fails_the_jobs_queued_on_it(endpoints, world):
    deploy = endpoints.request("deploy_endpoint", {"name": "gone"}, "deploy-gone")
    endpoints.run(deploy, DEPLOY)
    endpoints.ledger.create(job_id="j-inference", request_id="inference", action="txt2img", status=JobStatus.QUEUED,
                            deadline_seconds=60, fields={"endpoint": "gone"}, endpoint="gone")  # fmt: skip
    drift = EndpointDrift(endpoints.records, endpoints.sagemaker, "sdpipe")
    endpoints.sagemaker.endpoints.pop("sdpipe-gone")
    change = {"EndpointName": "sdpipe-gone", "EndpointStatus": "DELETING", "LastModifiedTime": 10**13}
    assert drift.track(change) == "DELETED"
    job = endpoints.ledger.require("j-inference")
    assert job.status == "FAILED" and job.error is not None and job.error["code"] == "ENDPOINT_DELETED"
    assert drift.track(change) is None  # a duplicate changes nothing
    assert job_id_for("deploy-gone") == deploy
