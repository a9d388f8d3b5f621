"""A static check of the IAM policies of a translated template, against IAM's own reference data.

For every Allow statement of every role and policy (SAM's policy templates expanded):
- each action exists (``iam_data``; a wildcard must name at least one);
- ``Resource: "*"`` only for actions that have no required resource type (AWS would use a
  narrower ARN, so ``*`` grants more than needed);
- a scoped statement names, for each action, a resource of a type that action applies to (a grant
  whose ARNs no action can use is a typo or a misunderstanding: Application Auto Scaling's
  Describe* scoped to scalable targets never allows anything), and each resource is of a type
  one of its actions applies to;
- each condition key is a global key or one the statement's actions or resource types define.

ARNs are compared as patterns: the template's intrinsics are resolved to typed placeholders (a
table's ``Arn`` is ``arn:aws:dynamodb:<region>:<account>:table/<name>``), and an ARN pattern
matches a resource type when some ARN fits both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from sdpipe_local import iam_data
from sdpipe_local.intrinsics import Resolver
from sdpipe_local.template import TranslatedTemplate

REGION, ACCOUNT = "us-east-1", "123456789012"
_GLOBAL_CONDITION_PREFIXES = ("aws:",)


@dataclass(frozen=True)
class Finding:
    where: str  # Role/PolicyName/Sid
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# ---------------------------------------------------------------------- glob overlap
def patterns_overlap(first: str, second: str) -> bool:
    """True when some string matches both glob patterns (``*`` any run, ``?`` one character)."""

    @cache
    def overlap(i: int, j: int) -> bool:
        if i == len(first) and j == len(second):
            return True
        if i < len(first) and first[i] == "*":
            return overlap(i + 1, j) or (j < len(second) and overlap(i, j + 1))
        if j < len(second) and second[j] == "*":
            return overlap(i, j + 1) or (i < len(first) and overlap(i + 1, j))
        if i == len(first) or j == len(second):
            return False
        if first[i] == "?" or second[j] == "?" or first[i] == second[j]:
            return overlap(i + 1, j + 1)
        return False

    return overlap(0, 0)


# ---------------------------------------------------------------------- placeholders
def _name(logical_id: str) -> str:
    return f"sdpipe-{logical_id}"


def _arn(service: str, resource: str, *, regional: bool = True, sep: str = ":") -> str:
    return f"arn:aws:{service}:{REGION if regional else ''}:{ACCOUNT}{sep}{resource}"


def _placeholders(resource_type: str, name: str, properties: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """What ``Ref`` and ``Fn::GetAtt`` give for a resource of this type (CloudFormation's return values)."""
    if resource_type == "AWS::DynamoDB::Table":
        arn = _arn("dynamodb", f"table/{name}")
        return name, {"Arn": arn, "StreamArn": f"{arn}/stream/2026-01-01T00:00:00.000"}
    if resource_type == "AWS::SQS::Queue":
        return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}", {"Arn": _arn("sqs", name), "QueueName": name}
    if resource_type == "AWS::SNS::Topic":
        return _arn("sns", name), {"TopicArn": _arn("sns", name), "TopicName": name}
    if resource_type == "AWS::S3::Bucket":
        return name, {"Arn": f"arn:aws:s3:::{name}"}
    if resource_type == "AWS::IAM::Role":
        return name, {"Arn": f"arn:aws:iam::{ACCOUNT}:role/{name}", "RoleId": "AROAPLACEHOLDER"}
    if resource_type == "AWS::Lambda::Function":
        return name, {"Arn": _arn("lambda", f"function:{name}")}
    if resource_type == "AWS::Lambda::LayerVersion":
        return _arn("lambda", f"layer:{name}:1"), {}
    if resource_type == "AWS::StepFunctions::StateMachine":
        arn = _arn("states", f"stateMachine:{name}")
        return arn, {"Arn": arn, "Name": name}
    if resource_type == "AWS::ECR::Repository":
        uri = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"
        return name, {"Arn": _arn("ecr", f"repository/{name}"), "RepositoryUri": uri}
    if resource_type == "AWS::Events::Rule":
        return name, {"Arn": _arn("events", f"rule/{name}")}
    if resource_type == "AWS::CloudWatch::Alarm":
        return name, {"Arn": _arn("cloudwatch", f"alarm:{name}")}
    return name, {}


_EXPLICIT_NAME = {
    "AWS::S3::Bucket": "BucketName", "AWS::ECR::Repository": "RepositoryName", "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName", "AWS::DynamoDB::Table": "TableName", "AWS::IAM::Role": "RoleName",
    "AWS::Lambda::Function": "FunctionName", "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::Events::Rule": "Name",
}  # fmt: skip


class _PlaceholderStack:
    def __init__(self, template: TranslatedTemplate, stack_name: str) -> None:
        self._template = template
        pseudo = {
            "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com", "AWS::NotificationARNs": [],
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack_name}/placeholder",
        }  # fmt: skip
        self.resolver = Resolver(
            {**template.parameters, **pseudo}, template.conditions, ref=self._ref, getatt=self._getatt,
            mappings=template.mappings,
        )  # fmt: skip
        self._cache: dict[str, tuple[str, dict[str, str]]] = {}

    def _values(self, logical_id: str) -> tuple[str, dict[str, str]]:
        if logical_id not in self._cache:
            resource = self._template.resources[logical_id]
            kind = resource["Type"]
            properties = resource.get("Properties", {})
            explicit = properties.get(_EXPLICIT_NAME.get(kind, ""))
            name = str(self.resolver.resolve(explicit)) if explicit is not None else _name(logical_id)
            self._cache[logical_id] = _placeholders(kind, name, properties)
        return self._cache[logical_id]

    def _ref(self, logical_id: str) -> Any:
        return self._values(logical_id)[0]

    def _getatt(self, logical_id: str, attribute: str) -> Any:
        attributes = self._values(logical_id)[1]
        if attribute not in attributes:
            raise KeyError(f"no placeholder for {logical_id}.{attribute}")
        return attributes[attribute]


# ---------------------------------------------------------------------- the check
def policy_documents(template: TranslatedTemplate, stack_name: str = "sdpipe") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, document)`` for every identity policy the template defines, intrinsics resolved."""
    stack = _PlaceholderStack(template, stack_name)
    for logical_id, resource in template.resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield f"{logical_id}/{policy['PolicyName']}", stack.resolver.resolve(policy["PolicyDocument"])
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, stack.resolver.resolve(properties["PolicyDocument"])


def managed_policy_arns(template: TranslatedTemplate) -> dict[str, list[str]]:
    """The AWS managed policies each role attaches."""
    stack = _PlaceholderStack(template, "sdpipe")
    return {
        logical_id: [str(arn) for arn in stack.resolver.resolve(resource["Properties"].get("ManagedPolicyArns", []))]
        for logical_id, resource in template.resources.items()
        if resource["Type"] == "AWS::IAM::Role"
    }


def lint(template: TranslatedTemplate, stack_name: str = "sdpipe") -> list[Finding]:
    findings: list[Finding] = []
    for where, document in policy_documents(template, stack_name):
        for index, statement in enumerate(_listed(document.get("Statement"))):
            label = f"{where}/{statement.get('Sid') or index}"
            findings += [Finding(label, message) for message in check_statement(statement)]
    return findings


def check_statement(statement: dict[str, Any]) -> list[str]:
    if statement.get("Effect") != "Allow":
        return []
    if "NotAction" in statement or "NotResource" in statement:
        return ["NotAction/NotResource grant everything else: name what is allowed instead"]
    problems: list[str] = []
    actions: list[iam_data.ActionInfo] = []
    for pattern in (str(a) for a in _listed(statement.get("Action"))):
        if pattern == "*" or pattern.endswith(":*"):
            problems.append(f"{pattern}: a wildcard action grants every action of the service")
            continue
        found = iam_data.actions_matching(pattern)
        if not found:
            problems.append(f"{pattern}: IAM has no such action")
        actions += found
    resources = [str(r) for r in _listed(statement.get("Resource"))]
    if "*" in resources:
        narrow = sorted(a.qualified for a in actions if a.needs_resource)
        if narrow:
            problems.append(f'Resource "*" for actions that take a resource ARN: {", ".join(narrow)}')
    else:
        for info in actions:
            if not info.resource_types:
                problems.append(f'{info.qualified} supports no resource-level permissions: it needs Resource "*"')
            elif not any(patterns_overlap(t.pattern, r) for t in info.resource_types for r in resources):
                kinds = ", ".join(t.name for t in info.resource_types)
                problems.append(f"{info.qualified}: none of the resources is a {kinds}")
        for resource in resources:
            if not any(patterns_overlap(t.pattern, resource) for info in actions for t in info.resource_types):
                problems.append(f"{resource}: no action of the statement applies to it")
    problems += _condition_problems(statement, actions)
    return problems


def _condition_problems(statement: dict[str, Any], actions: list[iam_data.ActionInfo]) -> list[str]:
    known = {key.lower() for info in actions for key in iam_data.condition_keys(info)}
    problems = []
    for block in (statement.get("Condition") or {}).values():
        for key in block:
            if str(key).lower().startswith(_GLOBAL_CONDITION_PREFIXES):
                continue
            if str(key).lower() not in known:
                problems.append(f"condition key {key} is not defined for {', '.join(a.qualified for a in actions)}")
    return problems
