"""The local stack's IAM: policy evaluation as AWS does it, and which actions and ARNs a request
is authorised for (sdpipe_local.iam_policy, sdpipe_local.iam)."""

from __future__ import annotations

import json
import time

import pytest

from sdpipe_local.iam import RequestChecks, SignedRequest
from sdpipe_local.iam_policy import Decision, UnsupportedCondition, evaluate

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/jobs"


def policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action, resource, **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_a_grant_applies_to_its_resource_only():
    documents = [policy(allow(["dynamodb:GetItem", "dynamodb:Query"], [TABLE, f"{TABLE}/index/*"]))]
    assert evaluate(documents, "dynamodb:GetItem", TABLE) is Decision.ALLOWED
    assert evaluate(documents, "dynamodb:Query", f"{TABLE}/index/by_action") is Decision.ALLOWED
    assert evaluate(documents, "dynamodb:GetItem", TABLE.replace("jobs", "models")) is Decision.IMPLICIT_DENY
    assert evaluate(documents, "dynamodb:PutItem", TABLE) is Decision.IMPLICIT_DENY


def test_actions_match_case_insensitively_and_with_wildcards():
    documents = [policy(allow("s3:get*", "arn:aws:s3:::b/*"))]
    assert evaluate(documents, "s3:GetObject", "arn:aws:s3:::b/k") is Decision.ALLOWED
    assert evaluate(documents, "s3:PutObject", "arn:aws:s3:::b/k") is Decision.IMPLICIT_DENY


def test_an_explicit_deny_wins_over_any_allow():
    documents = [policy(allow("s3:*", "*")), policy({"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"})]
    assert evaluate(documents, "s3:DeleteObject", "arn:aws:s3:::b/k") is Decision.EXPLICIT_DENY
    assert evaluate(documents, "s3:GetObject", "arn:aws:s3:::b/k") is Decision.ALLOWED


def test_not_action_and_not_resource():
    documents = [policy({"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret/*"})]
    assert evaluate(documents, "s3:GetObject", "arn:aws:s3:::b/k") is Decision.ALLOWED
    assert evaluate(documents, "s3:GetObject", "arn:aws:s3:::secret/k") is Decision.IMPLICIT_DENY
    assert evaluate(documents, "iam:PassRole", "arn:aws:iam::1:role/r") is Decision.IMPLICIT_DENY


def test_conditions_need_their_key_in_the_request_context():
    passes = allow("iam:PassRole", "*", Condition={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}})
    documents = [policy(passes)]
    assert (
        evaluate(documents, "iam:PassRole", "r", {"iam:PassedToService": "sagemaker.amazonaws.com"}).name == "ALLOWED"
    )
    assert (
        evaluate(documents, "iam:PassRole", "r", {"iam:PassedToService": "ec2.amazonaws.com"}) is Decision.IMPLICIT_DENY
    )
    assert evaluate(documents, "iam:PassRole", "r", {}) is Decision.IMPLICIT_DENY  # missing key: false
    negated = allow("s3:ListBucket", "*", Condition={"StringNotLike": {"s3:prefix": "private/*"}})
    assert evaluate([policy(negated)], "s3:ListBucket", "b", {}) is Decision.ALLOWED  # missing key: true when negated
    assert evaluate([policy(negated)], "s3:ListBucket", "b", {"s3:prefix": "private/x"}) is Decision.IMPLICIT_DENY
    if_exists = allow("s3:ListBucket", "*", Condition={"StringLikeIfExists": {"s3:prefix": "models/*"}})
    assert evaluate([policy(if_exists)], "s3:ListBucket", "b", {}) is Decision.ALLOWED
    with pytest.raises(UnsupportedCondition):
        evaluate(
            [policy(allow("s3:*", "*", Condition={"IpAddress": {"aws:SourceIp": "1.2.3.4/32"}}))], "s3:GetObject", "b"
        )


def request(
    service: str,
    *,
    target: str | None = None,
    body: dict | None = None,
    method: str = "POST",
    path: str = "/",
    query: dict | None = None,
    headers: dict | None = None,
    raw: bytes | None = None,
) -> SignedRequest:
    all_headers = {**({"x-amz-target": target} if target else {}), **(headers or {})}
    return SignedRequest(
        sigv2=False,
        access_key="AKIA",
        session_token=None,
        service=service,
        region="us-east-1",
        method=method,
        path=path,
        query={k: [v] for k, v in (query or {}).items()},
        headers=all_headers,
        body=raw if raw is not None else json.dumps(body or {}).encode(),
    )


def checks_of(req: SignedRequest, **kwargs) -> list[tuple[str, tuple[str, ...], dict]]:
    return [(c.action, c.resources, c.context) for c in RequestChecks("123456789012", **kwargs).checks(req)]


def test_a_dynamodb_transaction_needs_each_items_own_action():
    body = {"TransactItems": [{"Put": {"TableName": "jobs"}}, {"Update": {"TableName": "endpoints"}}]}
    assert checks_of(request("dynamodb", target="DynamoDB_20120810.TransactWriteItems", body=body)) == [
        ("dynamodb:PutItem", (TABLE,), {}),
        ("dynamodb:UpdateItem", ("arn:aws:dynamodb:us-east-1:123456789012:table/endpoints",), {}),
    ]
    query = request("dynamodb", target="DynamoDB_20120810.Query", body={"TableName": "jobs", "IndexName": "by_action"})
    assert checks_of(query) == [("dynamodb:Query", (f"{TABLE}/index/by_action",), {})]


def test_batch_apis_are_authorised_as_their_single_action():
    body = {"QueueUrl": "http://127.0.0.1:4599/123456789012/q", "Entries": []}
    assert checks_of(request("sqs", target="AmazonSQS.DeleteMessageBatch", body=body)) == [
        ("sqs:DeleteMessage", ("arn:aws:sqs:us-east-1:123456789012:q",), {})
    ]


def test_passing_a_role_to_sagemaker_needs_pass_role_and_tags_on_create_need_add_tags():
    body = {
        "TrainingJobName": "Stack-Job",
        "RoleArn": "arn:aws:iam::123456789012:role/t",
        "Tags": [{"Key": "k", "Value": "v"}],
    }
    job = "arn:aws:sagemaker:us-east-1:123456789012:training-job/stack-job"
    assert checks_of(request("sagemaker", target="SageMaker.CreateTrainingJob", body=body)) == [
        ("sagemaker:CreateTrainingJob", (job,), {}),
        ("iam:PassRole", ("arn:aws:iam::123456789012:role/t",), {"iam:PassedToService": "sagemaker.amazonaws.com"}),
        ("sagemaker:AddTags", (job,), {}),
    ]


def test_autoscaling_checks_the_caller_may_use_the_endpoint_and_its_alarms():
    body = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/s-e/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "PolicyType": "TargetTrackingScaling",
    }
    checks = checks_of(
        request("application-autoscaling", target="AnyScaleFrontendService.PutScalingPolicy", body=body),
        endpoint_config=lambda name: "s-e-config1",
    )
    actions = [c[0] for c in checks]
    assert actions == [
        "application-autoscaling:PutScalingPolicy",
        "sagemaker:DescribeEndpoint",
        "sagemaker:DescribeEndpointConfig",
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "cloudwatch:DescribeAlarms",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DeleteAlarms",
    ]
    assert checks[2][1] == ("arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/s-e-config1",)
    assert all(
        r.startswith("arn:aws:cloudwatch:us-east-1:123456789012:alarm:TargetTracking-endpoint/s-e/")
        for r in checks[-1][1]
    )
    describe = request(
        "application-autoscaling",
        target="AnyScaleFrontendService.DescribeScalableTargets",
        body={"ServiceNamespace": "sagemaker"},
    )
    assert checks_of(describe) == [("application-autoscaling:DescribeScalableTargets", ("*",), {})]


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "expected"),
    [
        ("GET", "/b/models/x", {}, {}, [("s3:GetObject", ("arn:aws:s3:::b/models/x",))]),
        ("HEAD", "/b/models/x", {}, {}, [("s3:GetObject", ("arn:aws:s3:::b/models/x",))]),
        (
            "PUT",
            "/b/models/x",
            {"partNumber": "1", "uploadId": "u"},
            {},
            [("s3:PutObject", ("arn:aws:s3:::b/models/x",))],
        ),
        ("GET", "/b/models/x", {"uploadId": "u"}, {}, [("s3:ListMultipartUploadParts", ("arn:aws:s3:::b/models/x",))]),
        ("DELETE", "/b/models/x", {"uploadId": "u"}, {}, [("s3:AbortMultipartUpload", ("arn:aws:s3:::b/models/x",))]),
        ("POST", "/b/models/x", {"uploads": ""}, {}, [("s3:PutObject", ("arn:aws:s3:::b/models/x",))]),
        ("GET", "/b", {"list-type": "2", "prefix": "jobs/1/"}, {}, [("s3:ListBucket", ("arn:aws:s3:::b",))]),
        (
            "PUT",
            "/b/models/copy",
            {},
            {"x-amz-copy-source": "/b/jobs/1/x"},
            [("s3:PutObject", ("arn:aws:s3:::b/models/copy",)), ("s3:GetObject", ("arn:aws:s3:::b/jobs/1/x",))],
        ),
    ],
)
def test_s3_requests(method, path, query, headers, expected):
    checks = checks_of(request("s3", method=method, path=path, query=query, headers=headers, raw=b""))
    assert [(a, r) for a, r, _ in checks] == expected


def test_listing_carries_the_prefix_for_conditions_and_delete_objects_checks_each_key():
    [(_, _, context)] = checks_of(request("s3", method="GET", path="/b", query={"prefix": "jobs/"}, raw=b""))
    assert context == {"s3:prefix": "jobs/"}
    body = b"<Delete><Object><Key>jobs/1/a</Key></Object><Object><Key>jobs/1/b</Key></Object></Delete>"
    assert checks_of(request("s3", method="POST", path="/b", query={"delete": ""}, raw=body)) == [
        ("s3:DeleteObject", ("arn:aws:s3:::b/jobs/1/a", "arn:aws:s3:::b/jobs/1/b"), {})
    ]


def test_invoking_a_function_or_an_endpoint():
    invoke = request("lambda", path="/2015-03-31/functions/sdpipe-Steps/invocations", raw=b"{}")
    assert checks_of(invoke) == [
        ("lambda:InvokeFunction", ("arn:aws:lambda:us-east-1:123456789012:function:sdpipe-Steps",), {})
    ]
    async_invoke = request("sagemaker", path="/endpoints/sdpipe-E/async-invocations", raw=b"")
    assert checks_of(async_invoke) == [
        ("sagemaker:InvokeEndpointAsync", ("arn:aws:sagemaker:us-east-1:123456789012:endpoint/sdpipe-e",), {})
    ]


def test_log_group_actions_use_the_groups_arn_with_its_suffix():
    describe = request(
        "logs", target="Logs_20140328.DescribeLogStreams", body={"logGroupName": "/aws/sagemaker/TrainingJobs"}
    )
    put = request("logs", target="Logs_20140328.PutLogEvents", body={"logGroupName": "/g", "logStreamName": "s"})
    assert checks_of(describe)[0][1] == ("arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs:*",)
    assert checks_of(put)[0][1] == ("arn:aws:logs:us-east-1:123456789012:log-group:/g:log-stream:s",)


def test_a_presigned_url_is_refused_once_expired_as_s3_refuses_it():
    from sdpipe_local.iam import _presigned_url_expired

    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    assert not _presigned_url_expired({"X-Amz-Date": [now], "X-Amz-Expires": ["60"]})
    assert _presigned_url_expired({"X-Amz-Date": ["20200101T000000Z"], "X-Amz-Expires": ["604800"]})
    assert _presigned_url_expired({"X-Amz-Date": ["yesterday"], "X-Amz-Expires": ["60"]})
    assert not _presigned_url_expired({})  # signed in the Authorization header: no expiry here
