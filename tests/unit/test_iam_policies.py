"""The template's IAM, checked statically against IAM's reference data (sdpipe_local.iam_lint)."""

from __future__ import annotations

import pytest

from sdpipe_local.iam_lint import check_statement, lint, managed_policy_arns, patterns_overlap, policy_documents
from sdpipe_local.template import translate
from tests.helpers import PSEUDO, ROOT

# AWS's baseline policies SAM and SageMaker roles use: logs and X-Ray for every function (their
# actions take no resource, or a log group named only at deploy time), image pulls for SageMaker.
ACCEPTED_MANAGED = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}


@pytest.fixture(scope="module")
def translated():
    return translate(ROOT / "template.yaml", {}, PSEUDO)


def test_every_grant_of_the_template_names_real_actions_on_resources_they_apply_to(translated):
    assert [str(f) for f in lint(translated)] == []


def test_roles_attach_only_the_baseline_managed_policies(translated):
    attached = {arn for arns in managed_policy_arns(translated).values() for arn in arns}
    assert attached <= ACCEPTED_MANAGED, attached - ACCEPTED_MANAGED


def test_each_queue_consumer_may_poll_its_own_queue_and_no_other(translated):
    """Lambda polls with the function's role: it needs receive/delete on its queue (no account-wide
    AWSLambdaSQSQueueExecutionRole, which SAM attaches to SQS-event functions)."""
    mappings = {
        r["Properties"]["FunctionName"]["Ref"]: r["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        for r in translated.resources.values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
    }
    assert len(mappings) >= 10
    documents = dict(policy_documents(translated))
    for function, queue in mappings.items():
        role = translated.resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
        granted = set()
        for where, document in documents.items():
            if not where.startswith(f"{role}/"):
                continue
            for statement in document["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if any(a.startswith("sqs:Receive") for a in actions):
                    resources = (
                        statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                    )
                    granted.update(resources)
        assert granted == {f"arn:aws:sqs:us-east-1:123456789012:sdpipe-{queue}"}, function


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ({"Action": "sqs:DeleteMessageBatch", "Resource": "arn:aws:sqs:us-east-1:1:q"}, "IAM has no such action"),
        ({"Action": "dynamodb:GetItem", "Resource": "*"}, 'Resource "*" for actions that take a resource ARN'),
        (
            {
                "Action": "application-autoscaling:DescribeScalableTargets",
                "Resource": "arn:aws:application-autoscaling:us-east-1:1:scalable-target/*",
            },
            "supports no resource-level permissions",
        ),
        ({"Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket"}, "none of the resources is a"),
        (
            {"Action": "s3:GetObject", "Resource": ["arn:aws:s3:::bucket/*", "arn:aws:sqs:us-east-1:1:q"]},
            "no action of the statement applies to it",
        ),
        (
            {
                "Action": "iam:PassRole",
                "Resource": "arn:aws:iam::1:role/r",
                "Condition": {"StringEquals": {"iam:PassedToServices": "sagemaker.amazonaws.com"}},
            },
            "condition key iam:PassedToServices is not defined",
        ),
        ({"Action": "s3:*", "Resource": "arn:aws:s3:::bucket/*"}, "a wildcard action"),
    ],
)
def test_the_lint_names_each_kind_of_mistake(statement, problem):
    problems = check_statement({"Effect": "Allow", **statement})
    assert any(problem in p for p in problems), problems


def test_well_formed_statements_pass():
    assert (
        check_statement(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/models/*"],
            }
        )
        == []
    )
    assert (
        check_statement(
            {
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": "x"}},
            }
        )
        == []
    )
    assert check_statement({"Effect": "Deny", "Action": "*", "Resource": "*"}) == []


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("arn:aws:s3:::*/*", "arn:aws:s3:::b/models/*", True),
        ("arn:aws:s3:::*", "arn:aws:s3:::b/models/*", True),  # a bucket ARN pattern is just "anything"
        ("arn:aws:sqs:*:*:*", "arn:aws:sns:us-east-1:1:t", False),
        ("arn:aws:logs:*:*:log-group:*:log-stream:*", "arn:aws:logs:r:1:log-group:/aws/x:*", True),
        ("a?c", "abc", True),
        ("a*b", "ac", False),
    ],
)
def test_pattern_overlap(first, second, overlap):
    assert patterns_overlap(first, second) is overlap
