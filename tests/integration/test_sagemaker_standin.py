"""The local SageMaker stand-in: endpoints are processes running the inference server, and
asynchronous invocations read S3, write S3 and notify SNS as SageMaker does."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from tests.helpers import wait_until

ECR_READ_ONLY = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"


def sagemaker_role(stack, name, statements):
    """A role SageMaker may assume, allowed ``statements`` and to pull images."""
    iam = stack.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    if statements:
        policy = {"Version": "2012-10-17", "Statement": statements}
        iam.put_role_policy(RoleName=name, PolicyName="standin", PolicyDocument=json.dumps(policy))
    iam.attach_role_policy(RoleName=name, PolicyArn=ECR_READ_ONLY)
    return arn


def inference_image(stack):
    return stack.outputs["InferenceRepositoryUri"] + ":latest"


@pytest.fixture(scope="module")
def sm(sdpipe_stack, tiny_checkpoints):
    stack = sdpipe_stack
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    path = tiny_checkpoints["sd1"]
    s3.upload_file(str(path), bucket, "jobs/standin/tiny.safetensors")
    for item in path.with_name(path.stem + ".config").rglob("*"):
        if item.is_file():
            relative = item.relative_to(path.with_name(path.stem + ".config")).as_posix()
            s3.upload_file(str(item), bucket, f"jobs/standin/tiny.config/{relative}")
    sns, sqs = stack.client("sns"), stack.client("sqs")
    queue = sqs.create_queue(QueueName=f"standin-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topics = {}
    for kind in ("success", "error"):
        topics[kind] = sns.create_topic(Name=f"standin-{kind}")["TopicArn"]
        sns.subscribe(
            TopicArn=topics[kind], Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
        )
    role = sagemaker_role(
        stack,
        "standin-endpoint",
        [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"arn:aws:s3:::{bucket}/jobs/*",
            },
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": "sns:Publish", "Resource": list(topics.values())},
        ],
    )
    sagemaker = stack.client("sagemaker")
    sagemaker.create_model(ModelName="tiny", PrimaryContainer={"Image": inference_image(stack)}, ExecutionRoleArn=role)
    sagemaker.create_endpoint_config(
        EndpointConfigName="tiny-config",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "tiny",
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        AsyncInferenceConfig={
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
            "OutputConfig": {
                "S3OutputPath": f"s3://{bucket}/jobs/standin/out",
                "S3FailurePath": f"s3://{bucket}/jobs/standin/failed",
                "NotificationConfig": {"SuccessTopic": topics["success"], "ErrorTopic": topics["error"]},
            },
        },
    )
    sagemaker.create_endpoint(EndpointName="tiny-endpoint", EndpointConfigName="tiny-config")
    assert sagemaker.describe_endpoint(EndpointName="tiny-endpoint")["EndpointStatus"] == "Creating"
    waited = wait_status(sagemaker, "tiny-endpoint", "InService")
    model = {
        "name": "tiny",
        "sha256": "f" * 64,
        "short_hash": "ffffffffff",
        "family": "sd1",
        "uri": f"s3://{bucket}/jobs/standin/tiny.safetensors",
        "config_uri": f"s3://{bucket}/jobs/standin/tiny.config",
    }
    return stack, bucket, queue, model, waited


def wait_status(sagemaker, name, wanted, timeout=120):
    return wait_until(
        lambda: (s := sagemaker.describe_endpoint(EndpointName=name))["EndpointStatus"] in (wanted, "Failed") and s,
        timeout, every=0.3, what=f"{name} {wanted}",
    )  # fmt: skip


def notifications(stack, queue, count, timeout=120):
    got, deadline = [], time.monotonic() + timeout
    sqs = stack.client("sqs")
    while len(got) < count and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            got.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return got


def invoke(stack, bucket, key, request):
    stack.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(request))
    runtime = stack.client("sagemaker-runtime")
    return runtime.invoke_endpoint_async(
        EndpointName="tiny-endpoint", InputLocation=f"s3://{bucket}/{key}", ContentType="application/json"
    )


def test_endpoint_becomes_in_service_with_a_current_instance_type(sm):
    _stack, _bucket, _queue, _model, described = sm
    assert described["EndpointStatus"] == "InService"
    assert described["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"].endswith("/jobs/standin/out")


def test_async_invocation_writes_the_output_and_notifies_success(sm):
    stack, bucket, queue, model, _ = sm
    params = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 42, "batch_size": 2}
    response = invoke(
        stack,
        bucket,
        "jobs/standin/ok/input.json",
        {"job_id": "ok", "kind": "txt2img", "params": params, "model": model},
    )
    [note] = notifications(stack, queue, 1)
    assert note["invocationStatus"] == "Completed" and note["inferenceId"] == response["InferenceId"]
    assert note["responseParameters"]["outputLocation"] == response["OutputLocation"]
    key = response["OutputLocation"].split(f"{bucket}/", 1)[1]
    output = json.loads(stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    assert len(output["images"]) == 2 and json.loads(output["info"])["all_seeds"] == [42, 43]


def test_a_failing_invocation_writes_the_failure_and_notifies_the_error_topic(sm):
    stack, bucket, queue, model, _ = sm
    params = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "sampler_name": "Nope"}
    response = invoke(
        stack, bucket, "jobs/standin/bad/input.json", {"kind": "txt2img", "params": params, "model": model}
    )
    [note] = notifications(stack, queue, 1)
    assert note["invocationStatus"] == "Failed"
    assert "sampler_name 'Nope'" in note["failureReason"] and "(400)" in note["failureReason"]
    key = response["FailureLocation"].split(f"{bucket}/", 1)[1]
    assert (
        json.loads(stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())["error"]["code"]
        == "VALIDATION_ERROR"
    )


def test_a_container_that_cannot_start_fails_the_endpoint(sdpipe_stack):
    sqs, events = sdpipe_stack.client("sqs"), sdpipe_stack.client("events")
    queue = sqs.create_queue(QueueName=f"endpoint-changes-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Endpoint State Change"],
        "detail": {"EndpointName": ["broken-endpoint"]},
    }
    events.put_rule(Name="broken-changes", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="broken-changes", Targets=[{"Id": "q", "Arn": queue_arn}])
    sagemaker = sdpipe_stack.client("sagemaker")
    sagemaker.create_model(
        ModelName="broken",
        PrimaryContainer={"Image": inference_image(sdpipe_stack), "Environment": {"SDPIPE_MAX_PIPELINES": "many"}},
        ExecutionRoleArn=sagemaker_role(sdpipe_stack, "standin-broken", []),
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="broken-config",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "broken",
                "InstanceType": "ml.g6.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="broken-endpoint", EndpointConfigName="broken-config")
    described = wait_status(sagemaker, "broken-endpoint", "InService")
    assert described["EndpointStatus"] == "Failed"
    assert "exited during start-up" in described["FailureReason"] and "'many'" in described["FailureReason"]
    with pytest.raises(ClientError, match="not in service"):
        sdpipe_stack.client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName="broken-endpoint", InputLocation="s3://b/k"
        )
    sagemaker.delete_endpoint(EndpointName="broken-endpoint")
    with pytest.raises(ClientError, match="Could not find endpoint") as missing:
        sagemaker.describe_endpoint(EndpointName="broken-endpoint")
    # Errors carry a request id as AWS's do (Step Functions' aws-sdk tasks need it to report them).
    assert missing.value.response["ResponseMetadata"]["RequestId"]
    # EventBridge delivers asynchronously (the FAILED event may land after DELETING): collect all three.
    changes: list[dict] = []
    deadline = time.monotonic() + 30
    while len(changes) < 3 and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            changes.append(json.loads(message["Body"])["detail"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert sorted(c["EndpointStatus"] for c in changes) == ["CREATING", "DELETING", "FAILED"]
    failed = next(c for c in changes if c["EndpointStatus"] == "FAILED")
    assert "exited during start-up" in failed["FailureReason"]


def test_create_model_checks_the_role_and_the_image_as_sagemaker_does(sdpipe_stack):
    sagemaker = sdpipe_stack.client("sagemaker")
    role = sagemaker_role(sdpipe_stack, "standin-checks", [])
    image = inference_image(sdpipe_stack)
    with pytest.raises(ClientError, match=r"Could not assume role .*role/nobody"):
        sagemaker.create_model(
            ModelName="no-role",
            PrimaryContainer={"Image": image},
            ExecutionRoleArn="arn:aws:iam::123456789012:role/nobody",
        )
    # A role SageMaker may not assume (it trusts Lambda):
    iam = sdpipe_stack.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}  # fmt: skip
    wrong = iam.create_role(RoleName="standin-lambda-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    with pytest.raises(ClientError, match=r"sagemaker\.amazonaws\.com"):
        sagemaker.create_model(ModelName="wrong-role", PrimaryContainer={"Image": image}, ExecutionRoleArn=wrong)
    with pytest.raises(ClientError, match="not an Amazon ECR image URI"):
        sagemaker.create_model(ModelName="bad-image", PrimaryContainer={"Image": "sdpipe-inference:latest"},
                               ExecutionRoleArn=role)  # fmt: skip
    with pytest.raises(ClientError, match="not found"):
        sagemaker.create_model(
            ModelName="missing-tag", PrimaryContainer={"Image": image.replace(":latest", ":v0-never-pushed")},
            ExecutionRoleArn=role,
        )  # fmt: skip
