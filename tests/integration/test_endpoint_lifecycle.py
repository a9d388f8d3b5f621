"""deploy/update/delete_endpoint on the local stack: the Step Functions workflows really execute,
SageMaker is the local stand-in, autoscaling lives in Application Auto Scaling and CloudWatch."""

from __future__ import annotations

import json

import pytest

from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.stack import StackOutputs
from sdpipe_local.events_listener import EventsListener
from tests.integration.helpers import pointed_at


@pytest.fixture(scope="module")
def lifecycle(sdpipe_stack):
    with pointed_at(sdpipe_stack):
        yield sdpipe_stack, Sdpipe(StackOutputs(sdpipe_stack.outputs))


def endpoint_events(listener: EventsListener, name: str, expected: list[str], timeout: float = 60) -> list[str]:
    """The endpoint.status statuses announced for ``name`` so far, once they reach ``expected``."""

    def statuses(events: list[dict]) -> list[str]:
        return [e["status"] for e in events if e["type"] == "endpoint.status" and e["endpoint"]["name"] == name]

    return statuses(listener.wait_for(lambda got: len(statuses(got)) >= len(expected), timeout_s=timeout))


def scaling_of(stack, sagemaker_name: str) -> tuple[list[dict], list[dict], list[str]]:
    autoscaling = stack.client("application-autoscaling")
    resource = f"endpoint/{sagemaker_name}/variant/AllTraffic"
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])
    policies = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
    alarms = stack.client("cloudwatch").describe_alarms(AlarmNamePrefix=sagemaker_name)["MetricAlarms"]
    return targets["ScalableTargets"], policies["ScalingPolicies"], [a["AlarmName"] for a in alarms]


def test_deploy_update_and_delete_an_endpoint(lifecycle):
    stack, client = lifecycle
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"], {"type": ["endpoint.status"]})
    job_id = client.deploy_endpoint("life", instance_type="ml.g5.2xlarge", min_instances=0, max_instances=4)
    job = client.wait(job_id, timeout_s=300)
    assert job["status"] == "SUCCEEDED"
    assert endpoint_events(listener, "life", ["CREATING", "IN_SERVICE"]) == ["CREATING", "IN_SERVICE"]
    [record] = [e for e in client.list_endpoints() if e["name"] == "life"]
    assert (record["status"], record["instance_type"], record["min_instances"], record["max_instances"]) == (
        "IN_SERVICE", "ml.g5.2xlarge", 0, 4,
    )  # fmt: skip
    assert record["in_flight"] == 0 and record["sagemaker_name"] == "sdpipe-life"
    # The execution is named after the job: a second start of the same job is a no-op.
    machine = job["execution_arn"].rsplit(":", 1)[0].replace(":execution:", ":stateMachine:")
    executions = stack.client("stepfunctions").list_executions(stateMachineArn=machine)["executions"]
    assert job_id in [e["name"] for e in executions]

    sagemaker = stack.client("sagemaker").describe_endpoint(EndpointName="sdpipe-life")
    assert sagemaker["EndpointStatus"] == "InService"
    config = stack.client("sagemaker").describe_endpoint_config(EndpointConfigName=sagemaker["EndpointConfigName"])
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"].endswith("/jobs/async-output/life")
    assert output["NotificationConfig"]["SuccessTopic"] == stack.outputs["InferenceSuccessTopicArn"]
    targets, policies, alarms = scaling_of(stack, "sdpipe-life")
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(0, 4)]
    kinds = {p["PolicyName"]: p["PolicyType"] for p in policies}
    assert kinds == {"sdpipe-life-backlog": "TargetTrackingScaling", "sdpipe-life-scale-from-zero": "StepScaling"}
    backlog = next(p for p in policies if p["PolicyType"] == "TargetTrackingScaling")
    metric = backlog["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert alarms == ["sdpipe-life-has-backlog-without-capacity"]

    # Update: a new config, scaling re-registered, the old config and model deleted.
    old_config = sagemaker["EndpointConfigName"]
    assert client.wait(client.update_endpoint("life", max_instances=8), timeout_s=300)["status"] == "SUCCEEDED"
    after_update = ["CREATING", "IN_SERVICE", "UPDATING", "IN_SERVICE"]
    assert endpoint_events(listener, "life", after_update) == after_update
    described = client.describe_endpoint("life")
    assert described["status"] == "IN_SERVICE" and described["max_instances"] == 8
    assert described["sagemaker"]["EndpointConfigName"] != old_config
    assert described["autoscaling"]["targets"] == [{"min": 0, "max": 8}]
    with pytest.raises(Exception, match="Could not find endpoint configuration"):
        stack.client("sagemaker").describe_endpoint_config(EndpointConfigName=old_config)

    # Delete: scaling and alarm off, endpoint, config and model gone, record DELETED.
    assert client.wait(client.delete_endpoint("life"), timeout_s=300)["status"] == "SUCCEEDED"
    after_delete = [*after_update, "DELETING", "DELETED"]
    assert endpoint_events(listener, "life", after_delete) == after_delete
    assert [e["status"] for e in client.list_endpoints() if e["name"] == "life"] == ["DELETED"]
    assert scaling_of(stack, "sdpipe-life") == ([], [], [])
    with pytest.raises(Exception, match="Could not find endpoint"):
        stack.client("sagemaker").describe_endpoint(EndpointName="sdpipe-life")
    # A deleted name can be deployed again.
    again = client.wait(client.deploy_endpoint("life", instance_type="ml.g5.xlarge"), timeout_s=300)
    assert again["status"] == "SUCCEEDED"
    assert client.wait(client.delete_endpoint("life"), timeout_s=300)["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("action", "params", "code", "names"),
    [
        ("deploy_endpoint", {"name": "bad_name"}, "VALIDATION_ERROR", "params.name"),
        ("deploy_endpoint", {"name": "x", "instance_type": "ml.m5.large"}, "VALIDATION_ERROR", "ml.m5.large"),
        ("deploy_endpoint", {"name": "x", "min_instances": 3, "max_instances": 2}, "VALIDATION_ERROR", "min_instances"),
        ("delete_endpoint", {"name": "never-deployed"}, "ENDPOINT_NOT_FOUND", "never-deployed"),
        ("update_endpoint", {"name": "never-deployed", "max_instances": 2}, "ENDPOINT_NOT_FOUND", "never-deployed"),
    ],
)
def test_bad_endpoint_requests_fail_with_the_reason(lifecycle, action, params, code, names):
    _, client = lifecycle
    with pytest.raises(JobFailed) as failure:
        client.wait(client.submit(action, params), timeout_s=60)
    assert failure.value.code == code and names in failure.value.message
    assert all(e["name"] != params["name"] for e in client.list_endpoints())


def test_a_second_deploy_of_a_name_fails_and_changes_nothing(lifecycle):
    _, client = lifecycle
    assert client.wait(client.deploy_endpoint("twice"), timeout_s=300)["status"] == "SUCCEEDED"
    with pytest.raises(JobFailed) as failure:
        client.wait(client.deploy_endpoint("twice", instance_type="ml.g6.xlarge"), timeout_s=60)
    assert failure.value.code == "ENDPOINT_EXISTS"
    [record] = [e for e in client.list_endpoints() if e["name"] == "twice"]
    assert (record["status"], record["instance_type"]) == ("IN_SERVICE", "ml.g5.xlarge")
    assert client.wait(client.delete_endpoint("twice"), timeout_s=300)["status"] == "SUCCEEDED"


def test_duplicate_deliveries_start_one_workflow(lifecycle):
    stack, client = lifecycle
    job_ids = set()
    for _ in range(3):
        job_ids.add(client.submit("deploy_endpoint", {"name": "dup"}, request_id="deploy-dup-1"))
    [job_id] = job_ids
    job = client.wait(job_id, timeout_s=300)
    assert job["status"] == "SUCCEEDED"
    machine = job["execution_arn"].rsplit(":", 1)[0].replace(":execution:", ":stateMachine:")
    names = [e["name"] for e in stack.client("stepfunctions").list_executions(stateMachineArn=machine)["executions"]]
    assert names.count(job_id) == 1
    assert client.wait(client.delete_endpoint("dup"), timeout_s=300)["status"] == "SUCCEEDED"


def test_a_container_that_cannot_start_fails_the_deployment_visibly(lifecycle):
    stack, client = lifecycle
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"], {"type": ["endpoint.status"]})
    # The server refuses to start with a pipeline count that is not a number.
    job_id = client.deploy_endpoint("broken", environment={"SDPIPE_MAX_PIPELINES": "many"})
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=300)
    assert failure.value.code == "ENDPOINT_WORKFLOW_FAILED" and "exited during start-up" in failure.value.message
    assert endpoint_events(listener, "broken", ["CREATING", "FAILED"]) == ["CREATING", "FAILED"]
    [record] = [e for e in client.list_endpoints() if e["name"] == "broken"]
    assert record["status"] == "FAILED" and "exited during start-up" in record["failure_reason"]
    # A failed endpoint is still tracked, and deleting it cleans up what SageMaker made.
    assert client.wait(client.delete_endpoint("broken"), timeout_s=300)["status"] == "SUCCEEDED"
    with pytest.raises(Exception, match="Could not find endpoint"):
        stack.client("sagemaker").describe_endpoint(EndpointName="sdpipe-broken")


def test_every_workflow_task_retries_throttling_with_jitter_and_records_failures():
    from pathlib import Path

    for path in sorted(Path("statemachines").glob("*.asl.json")):
        states = json.loads(path.read_text())["States"]
        for name, state in states.items():
            if state["Type"] != "Task":
                continue
            retry = state.get("Retry") or []
            assert retry and all(r.get("JitterStrategy") == "FULL" for r in retry), f"{path.name}:{name}"
            if not name.startswith("Record"):
                assert state.get("Catch", [{}])[0].get("Next") == "RecordFailure", f"{path.name}:{name}"


def open_job_on(stack, endpoint: str, action: str = "txt2img") -> str:
    """A job still open on ``endpoint``: an inference job queued there (as SubmitInference leaves
    one), or a workflow's job part-way."""
    from sdpipe.adapters.events import EventPublisher
    from sdpipe.adapters.jobs_table import JobsTable
    from sdpipe.contracts.jobs import JobStatus, job_id_for
    from sdpipe.logic.jobs import JobLedger

    ledger = JobLedger(
        JobsTable(stack.outputs["JobsTableName"], stack.outputs["EndpointsTableName"]),
        EventPublisher(stack.outputs["EventsTopicArn"]),
    )
    request_id = f"{action}-open-on-{endpoint}"
    inference = action == "txt2img"
    ledger.create(
        job_id=job_id_for(request_id), request_id=request_id, action=action,
        status=JobStatus.QUEUED if inference else JobStatus.ACCEPTED,
        deadline_seconds=3600, fields={"endpoint": endpoint}, endpoint=endpoint if inference else None,
    )  # fmt: skip
    return job_id_for(request_id)


def test_deleting_an_endpoint_fails_the_jobs_still_queued_on_it(lifecycle):
    stack, client = lifecycle
    assert client.wait(client.deploy_endpoint("doomed"), timeout_s=300)["status"] == "SUCCEEDED"
    job_id = open_job_on(stack, "doomed")
    assert client.wait(client.delete_endpoint("doomed"), timeout_s=300)["status"] == "SUCCEEDED"
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=30)
    assert failure.value.code == "ENDPOINT_DELETED" and "doomed" in failure.value.message


def test_an_endpoint_deleted_outside_sdpipe_is_tracked_from_sagemakers_events(lifecycle):
    stack, client = lifecycle
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"], {"type": ["endpoint.status"]})
    assert client.wait(client.deploy_endpoint("console"), timeout_s=300)["status"] == "SUCCEEDED"
    job_id = open_job_on(stack, "console")
    stack.client("sagemaker").delete_endpoint(EndpointName="sdpipe-console")  # as in the AWS console
    expected = ["CREATING", "IN_SERVICE", "DELETED"]
    assert endpoint_events(listener, "console", expected) == expected
    assert [e["status"] for e in client.list_endpoints() if e["name"] == "console"] == ["DELETED"]
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=30)
    assert failure.value.code == "ENDPOINT_DELETED"


def test_a_workflow_job_cannot_be_cancelled_half_way(lifecycle):
    from sdpipe.errors import SdpipeError

    stack, client = lifecycle
    job_id = open_job_on(stack, "half-way", action="update_endpoint")
    with pytest.raises(SdpipeError) as refused:
        client.cancel_job(job_id)
    assert refused.value.code == "JOB_NOT_CANCELLABLE" and "delete the endpoint" in refused.value.message
    assert client.get_job(job_id)["status"] == "ACCEPTED"


def test_throttling_is_retried_and_the_deployment_still_succeeds(lifecycle):
    stack, client = lifecycle
    # More refusals than boto3's own retries absorb: the workflow's Retry (with jitter) has to act.
    stack.sagemaker.throttle("CreateModel", 6)
    stack.sagemaker.throttle("DescribeEndpoint", 6)
    job = client.wait(client.deploy_endpoint("throttled"), timeout_s=300)
    assert job["status"] == "SUCCEEDED"
    history = stack.client("stepfunctions").get_execution_history(executionArn=job["execution_arn"])["events"]
    retried = [e["taskFailedEventDetails"]["error"] for e in history if e["type"] == "TaskFailed"]
    assert retried and set(retried) == {"Throttled"}
    assert client.wait(client.delete_endpoint("throttled"), timeout_s=300)["status"] == "SUCCEEDED"


def test_a_failed_update_keeps_the_endpoint_serving_its_old_config(lifecycle):
    _, client = lifecycle
    assert client.wait(client.deploy_endpoint("steady", max_instances=2), timeout_s=300)["status"] == "SUCCEEDED"
    before = client.describe_endpoint("steady")["sagemaker"]["EndpointConfigName"]
    with pytest.raises(JobFailed) as failure:
        broken = {"environment": {"SDPIPE_MAX_PIPELINES": "many"}, "instance_type": "ml.g6.xlarge"}
        client.wait(client.update_endpoint("steady", **broken), timeout_s=300)
    assert failure.value.code == "ENDPOINT_WORKFLOW_FAILED" and "exited during start-up" in failure.value.message
    described = client.describe_endpoint("steady")
    assert described["status"] == "IN_SERVICE" and "exited during start-up" in described["failure_reason"]
    assert described["sagemaker"]["EndpointConfigName"] == before
    assert (described["instance_type"], described["max_instances"]) == ("ml.g5.xlarge", 2)  # what still runs
    assert client.wait(client.delete_endpoint("steady"), timeout_s=300)["status"] == "SUCCEEDED"
