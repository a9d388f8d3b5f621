"""The local stack's emulation contract, on a fixture template: Lambda environment and timeout,
SQS polling with partial batch failures and redrive, Step Functions with substitutions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe_local.stack import LocalStack
from tests.helpers import wait_until

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stack" / "template.yaml"


@pytest.fixture(scope="module")
def fixture_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        FIXTURE,
        stack_name="fixture",
        parameter_overrides={"Greeting": "bonjour", "TickSchedule": "rate(1 second)"},
        state_dir=tmp_path_factory.mktemp("fx"),
    ) as stack:
        yield stack


def invoke(stack: LocalStack, name: str, payload: dict) -> tuple[dict, str | None]:
    response = stack.client("lambda").invoke(FunctionName=name, Payload=json.dumps(payload))
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def test_function_gets_exactly_the_template_environment(fixture_stack):
    result, error = invoke(fixture_stack, "fixture-ProbeFunction", {"ping": 1})
    assert error is None
    env = result["environment"]
    assert env["STACK_GREETING"] == "bonjour-from-fixture"  # Globals, !Sub and a parameter override
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fixture-ProbeFunction"
    assert env["AWS_ENDPOINT_URL"] == fixture_stack.endpoint_url
    assert "HOME" not in env and "PYTEST_CURRENT_TEST" not in env  # nothing leaks from the parent
    assert result["event"] == {"ping": 1}
    assert 4000 < result["remaining_ms"] <= 5000


def test_timeout_is_enforced_and_the_function_recovers(fixture_stack):
    started = time.monotonic()
    result, error = invoke(fixture_stack, "fixture-SleepyFunction", {"seconds": 30})
    assert error == "Unhandled"
    assert "Task timed out after 1.00 seconds" in result["errorMessage"]
    assert time.monotonic() - started < 10
    result, error = invoke(fixture_stack, "fixture-SleepyFunction", {"seconds": 0})
    assert (result, error) == ({"slept": True}, None)


def test_state_machine_runs_the_asl_file_with_substitutions(fixture_stack):
    sfn = fixture_stack.client("stepfunctions")
    arn = fixture_stack.outputs["GreeterArn"]
    execution = sfn.start_execution(stateMachineArn=arn, name="greet-1", input=json.dumps({"who": "you"}))[
        "executionArn"
    ]
    described = wait_until(
        lambda: (d := sfn.describe_execution(executionArn=execution))["status"] != "RUNNING" and d,
        30,
        what="the execution ending",
    )
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])["result"]
    assert output["event"] == {"greeting": "bonjour", "input": {"who": "you"}}
    assert output["function_name"] == "fixture-ProbeFunction"
    # Executions are named; the same name again is refused, so a duplicate start is a no-op.
    with pytest.raises(sfn.exceptions.ExecutionAlreadyExists):
        sfn.start_execution(stateMachineArn=arn, name="greet-1", input=json.dumps({"who": "else"}))


def test_partial_batch_failures_are_retried_then_redriven(fixture_stack):
    sqs, s3 = fixture_stack.client("sqs"), fixture_stack.client("s3")
    queue, dlq = fixture_stack.outputs["WorkQueueUrl"], fixture_stack.outputs["WorkDLQUrl"]
    bucket = fixture_stack.outputs["ResultsBucketName"]
    bodies = ["ok one", "please fail", "ok two"]
    sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)])
    moved = wait_until(
        lambda: sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []),
        30, every=0, what="the failing message in the dead-letter queue",
    )  # fmt: skip
    assert [m["Body"] for m in moved] == ["please fail"]
    done = sorted(
        s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode()
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="done/")["Contents"]
    )
    assert done == ["ok one", "ok two"]  # processed once each: successes were deleted, not retried


def test_schedule_rules_invoke_their_function(fixture_stack):
    s3, bucket = fixture_stack.client("s3"), fixture_stack.outputs["ResultsBucketName"]
    ticks = wait_until(lambda: (t := s3.list_objects_v2(Bucket=bucket, Prefix="ticks/").get("Contents", []))[1:] and t,
                       15, every=0.3, what="two schedule ticks")  # fmt: skip
    assert s3.get_object(Bucket=bucket, Key=ticks[0]["Key"])["Body"].read() == b"Scheduled Event"


def test_pattern_rules_deliver_matching_events_to_their_queue(fixture_stack):
    events, sqs = fixture_stack.client("events"), fixture_stack.client("sqs")
    detail = {"EndpointName": "e1", "EndpointStatus": "IN_SERVICE"}
    events.put_events(Entries=[
        {"Source": "aws.sagemaker", "DetailType": "SageMaker Endpoint State Change", "Detail": json.dumps(detail)},
        {"Source": "aws.sagemaker", "DetailType": "SageMaker Training Job State Change", "Detail": "{}"},
    ])  # fmt: skip
    queue = fixture_stack.outputs["StateChangesQueueUrl"]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
    assert [json.loads(m["Body"])["detail"] for m in messages] == [detail]


def test_each_function_runs_as_its_own_role_and_iam_is_enforced(fixture_stack):
    """The worker's credentials are its role's temporary ones; what the role does not grant is
    refused the way AWS refuses it (the probe's role has no S3 grant, the worker's has)."""
    import boto3
    from botocore.exceptions import ClientError

    env = invoke(fixture_stack, "fixture-ProbeFunction", {})[0]["environment"]
    assert env["AWS_SESSION_TOKEN"] and env["AWS_ACCESS_KEY_ID"] != "testing"
    s3 = boto3.client(
        "s3", endpoint_url=fixture_stack.endpoint_url, region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
    )  # fmt: skip
    bucket = fixture_stack.outputs["ResultsBucketName"]
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="from-probe", Body=b"x")
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert "assumed-role/fixture-ProbeFunctionRole/" in error["Message"] and "s3:PutObject" in error["Message"]
    assert f"arn:aws:s3:::{bucket}/from-probe" in error["Message"]
    assert "s3:PutObject" in (fixture_stack.state_dir / "logs" / "iam-denied.log").read_text()


def test_a_template_whose_function_cannot_poll_its_queue_does_not_start(tmp_path):
    """CreateEventSourceMapping refuses a role without receive/delete on the queue; so does the
    local stack, before any of it runs."""
    import shutil

    from sdpipe_local.stack import StackStartError

    copy = tmp_path / "stack"
    shutil.copytree(FIXTURE.parent, copy)
    template = (copy / "template.yaml").read_text()
    template = template.replace(
        "  ResultsBucket:\n",
        "  ProbeMapping:\n    Type: AWS::Lambda::EventSourceMapping\n    Properties:\n"
        "      FunctionName: !Ref ProbeFunction\n      EventSourceArn: !GetAtt WorkDLQ.Arn\n\n  ResultsBucket:\n",
    )
    (copy / "template.yaml").write_text(template)
    with pytest.raises(StackStartError, match=r"unpollable-ProbeFunctionRole is not allowed sqs:ReceiveMessage"):
        LocalStack(copy / "template.yaml", stack_name="unpollable", state_dir=tmp_path / "state").start()
