"""Create the translated template's resources on the local AWS endpoint.

moto's own CloudFormation skips SNS subscriptions, bucket notifications and state machine
substitutions, and cannot run Lambda code, so each resource type is created here through the
service APIs, in dependency order. Lambda functions, SQS event source mappings and schedules become
specs that the local runtime executes.
"""

from __future__ import annotations

import graphlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpipe_local.images import RepositoryImage
from sdpipe_local.intrinsics import Resolver, references
from sdpipe_local.lambda_runtime import FunctionSpec
from sdpipe_local.schedules import ScheduleSpec
from sdpipe_local.sqs_event_source import SqsMappingSpec
from sdpipe_local.template import TranslatedTemplate

logger = logging.getLogger(__name__)

# Types that only matter to IAM, CloudWatch Logs or deployment; the local stack records them.
_RECORDED_ONLY = {
    "AWS::S3::BucketPolicy",
    "AWS::Lambda::Permission",
    "AWS::Logs::LogGroup",
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
}


# Resource type -> the Provisioner method that creates it.
_CREATORS = {
    "AWS::S3::Bucket": "_bucket",
    "AWS::DynamoDB::Table": "_table",
    "AWS::SNS::Topic": "_topic",
    "AWS::SNS::Subscription": "_subscription",
    "AWS::SQS::Queue": "_queue",
    "AWS::SQS::QueuePolicy": "_queue_policy",
    "AWS::CloudWatch::Alarm": "_alarm",
    "AWS::IAM::Role": "_role",
    "AWS::Lambda::LayerVersion": "_layer",
    "AWS::Lambda::Function": "_function",
    "AWS::Lambda::EventSourceMapping": "_event_source_mapping",
    "AWS::StepFunctions::StateMachine": "_state_machine",
    "AWS::Events::Rule": "_rule",
    "AWS::ECR::Repository": "_repository",
}


@dataclass
class Created:
    ref: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class StateMachineSpec:
    logical_id: str
    name: str
    arn: str
    definition: dict[str, Any]


@dataclass
class ProvisionedStack:
    resources: dict[str, Created]
    functions: list[FunctionSpec]
    sqs_mappings: list[SqsMappingSpec]
    state_machines: list[StateMachineSpec]
    schedules: list[ScheduleSpec]
    outputs: dict[str, str]
    output_descriptions: dict[str, str]
    # ECR repositories whose resource Metadata names a Dockerfile (the image they hold).
    repository_images: list[RepositoryImage] = field(default_factory=list)


class Provisioner:
    def __init__(
        self,
        template: TranslatedTemplate,
        client: Callable[[str], Any],
        stack_name: str,
        region: str,
        account_id: str,
    ) -> None:
        self._template = template
        self._client = client
        self._stack = stack_name
        self._region = region
        self._account = account_id
        self._created: dict[str, Created] = {}
        self._functions: list[FunctionSpec] = []
        self._mappings: list[SqsMappingSpec] = []
        self._state_machines: list[StateMachineSpec] = []
        self._schedules: list[ScheduleSpec] = []
        self._bucket_notifications: list[tuple[str, Any]] = []
        self._repository_images: list[RepositoryImage] = []
        pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::StackName": stack_name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
            "AWS::NotificationARNs": [],
        }
        self._resolver = Resolver(
            {**template.parameters, **pseudo},
            template.conditions,
            ref=self._ref,
            getatt=self._getatt,
            mappings=template.mappings,
        )

    # ------------------------------------------------------------------ lookups
    def _ref(self, logical_id: str) -> Any:
        if logical_id not in self._created:
            raise KeyError(f"Ref to {logical_id}, which does not exist (yet)")
        return self._created[logical_id].ref

    def _getatt(self, logical_id: str, attribute: str) -> Any:
        created = self._created.get(logical_id)
        if created is None or attribute not in created.attributes:
            raise KeyError(f"GetAtt {logical_id}.{attribute} is not available locally")
        return created.attributes[attribute]

    def _physical_name(self, logical_id: str, limit: int = 80) -> str:
        return f"{self._stack}-{logical_id}"[:limit]

    # ------------------------------------------------------------------ driver
    def run(self) -> ProvisionedStack:
        resources = self._template.resources
        graph: dict[str, set[str]] = {}
        for logical_id, resource in resources.items():
            if "Condition" in resource and not self._resolver.condition(resource["Condition"]):
                continue
            depends = resource.get("DependsOn", [])
            depends = [depends] if isinstance(depends, str) else depends
            deps = (references(resource.get("Properties", {})) | set(depends)) & set(resources)
            graph[logical_id] = deps
        for logical_id in graphlib.TopologicalSorter(graph).static_order():
            if logical_id in graph:
                self._create(logical_id, resources[logical_id])
        for bucket, configuration in self._bucket_notifications:
            self._client("s3").put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration
            )
        outputs: dict[str, str] = {}
        descriptions: dict[str, str] = {}
        for name, output in self._template.outputs.items():
            if "Condition" in output and not self._resolver.condition(output["Condition"]):
                continue
            outputs[name] = str(self._resolver.resolve(output["Value"]))
            descriptions[name] = output.get("Description", "")
        return ProvisionedStack(
            self._created,
            self._functions,
            self._mappings,
            self._state_machines,
            self._schedules,
            outputs,
            descriptions,
            self._repository_images,
        )

    def _create(self, logical_id: str, resource: dict[str, Any]) -> None:
        kind = resource["Type"]
        properties = self._resolver.resolve(resource.get("Properties", {}))
        creator = _CREATORS.get(kind)
        if creator is not None:
            self._created[logical_id] = getattr(self, creator)(logical_id, properties)
        else:
            if kind not in _RECORDED_ONLY:
                logger.info("resource %s (%s) is not emulated locally; recorded only", logical_id, kind)
            self._created[logical_id] = Created(ref=self._physical_name(logical_id))

    # ------------------------------------------------------------------ S3
    def _bucket(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("BucketName") or self._physical_name(logical_id, 63).lower()
        s3 = self._client("s3")
        s3.create_bucket(Bucket=name)
        if "BucketEncryption" in p:
            rules = [
                {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                for rule in p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        if "PublicAccessBlockConfiguration" in p:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=p["PublicAccessBlockConfiguration"])
        if "LifecycleConfiguration" in p:
            rules = []
            for rule in p["LifecycleConfiguration"]["Rules"]:
                converted: dict[str, Any] = {
                    "ID": rule.get("Id", "rule"),
                    "Status": rule["Status"],
                    "Filter": {"Prefix": rule.get("Prefix", "")},
                }
                if "AbortIncompleteMultipartUpload" in rule:
                    converted["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
                if "ExpirationInDays" in rule:
                    converted["Expiration"] = {"Days": rule["ExpirationInDays"]}
                rules.append(converted)
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
        notification = p.get("NotificationConfiguration", {})
        queue_configs = []
        for config in notification.get("QueueConfigurations", []):
            entry: dict[str, Any] = {"QueueArn": config["Queue"], "Events": [config["Event"]]}
            rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            if rules:
                entry["Filter"] = {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}}
            queue_configs.append(entry)
        if queue_configs:
            self._bucket_notifications.append((name, {"QueueConfigurations": queue_configs}))
        return Created(
            ref=name,
            attributes={
                "Arn": f"arn:aws:s3:::{name}",
                "DomainName": f"{name}.s3.amazonaws.com",
                "RegionalDomainName": f"{name}.s3.{self._region}.amazonaws.com",
            },
        )

    # ------------------------------------------------------------------ DynamoDB
    def _table(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("TableName") or self._physical_name(logical_id, 255)
        kwargs: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": p["AttributeDefinitions"],
            "KeySchema": p["KeySchema"],
            "BillingMode": p.get("BillingMode", "PROVISIONED"),
        }
        if "GlobalSecondaryIndexes" in p:
            kwargs["GlobalSecondaryIndexes"] = p["GlobalSecondaryIndexes"]
        if "LocalSecondaryIndexes" in p:
            kwargs["LocalSecondaryIndexes"] = p["LocalSecondaryIndexes"]
        if "ProvisionedThroughput" in p:
            kwargs["ProvisionedThroughput"] = p["ProvisionedThroughput"]
        if "StreamSpecification" in p:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **p["StreamSpecification"]}
        dynamodb = self._client("dynamodb")
        description = dynamodb.create_table(**kwargs)["TableDescription"]
        ttl = p.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        attributes = {"Arn": description["TableArn"]}
        if "LatestStreamArn" in description:
            attributes["StreamArn"] = description["LatestStreamArn"]
        return Created(ref=name, attributes=attributes)

    # ------------------------------------------------------------------ SNS / SQS
    def _topic(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("TopicName") or self._physical_name(logical_id, 256)
        attributes = {}
        if p.get("FifoTopic"):
            attributes["FifoTopic"] = "true"
        if "SignatureVersion" in p:
            attributes["SignatureVersion"] = str(p["SignatureVersion"])
        arn = self._client("sns").create_topic(Name=name, Attributes=attributes)["TopicArn"]
        for subscription in p.get("Subscription", []):
            self._client("sns").subscribe(
                TopicArn=arn, Protocol=subscription["Protocol"], Endpoint=subscription["Endpoint"]
            )
        return Created(ref=arn, attributes={"TopicArn": arn, "TopicName": name})

    def _subscription(self, logical_id: str, p: dict[str, Any]) -> Created:
        attributes = {}
        for prop in ("RawMessageDelivery", "FilterPolicyScope", "FilterPolicy", "RedrivePolicy"):
            if prop in p:
                value = p[prop]
                attributes[prop] = (
                    json.dumps(value)
                    if isinstance(value, dict)
                    else str(value).lower()
                    if isinstance(value, bool)
                    else str(value)
                )
        arn = self._client("sns").subscribe(
            TopicArn=p["TopicArn"],
            Protocol=p["Protocol"],
            Endpoint=p["Endpoint"],
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        return Created(ref=arn)

    def _queue(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("QueueName") or self._physical_name(logical_id, 75) + (".fifo" if p.get("FifoQueue") else "")
        attributes: dict[str, str] = {}
        for prop in (
            "VisibilityTimeout",
            "MessageRetentionPeriod",
            "DelaySeconds",
            "MaximumMessageSize",
            "ReceiveMessageWaitTimeSeconds",
            "FifoQueue",
            "ContentBasedDeduplication",
            "SqsManagedSseEnabled",
        ):
            if prop in p:
                value = p[prop]
                attributes[prop] = str(value).lower() if isinstance(value, bool) else str(value)
        if "RedrivePolicy" in p:
            attributes["RedrivePolicy"] = json.dumps(p["RedrivePolicy"])
        sqs = self._client("sqs")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{self._region}:{self._account}:{name}"
        return Created(ref=url, attributes={"Arn": arn, "QueueName": name, "QueueUrl": url})

    def _queue_policy(self, logical_id: str, p: dict[str, Any]) -> Created:
        for url in p["Queues"]:
            self._client("sqs").set_queue_attributes(
                QueueUrl=url, Attributes={"Policy": json.dumps(p["PolicyDocument"])}
            )
        return Created(ref=self._physical_name(logical_id))

    # ------------------------------------------------------------------ CloudWatch / IAM
    def _alarm(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("AlarmName") or self._physical_name(logical_id, 255)
        kwargs = {k: v for k, v in p.items() if k in {
            "AlarmDescription", "Namespace", "MetricName", "Dimensions", "Statistic", "Period",
            "EvaluationPeriods", "Threshold", "ComparisonOperator", "TreatMissingData",
            "AlarmActions", "OKActions", "DatapointsToAlarm",
        }}  # fmt: skip
        kwargs["Threshold"] = float(kwargs.get("Threshold", 0))
        for number in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
            if number in kwargs:
                kwargs[number] = int(kwargs[number])
        self._client("cloudwatch").put_metric_alarm(AlarmName=name, **kwargs)
        return Created(ref=name, attributes={"Arn": f"arn:aws:cloudwatch:{self._region}:{self._account}:alarm:{name}"})

    def _role(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("RoleName") or self._physical_name(logical_id, 64)
        iam = self._client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(p["AssumeRolePolicyDocument"]))[
            "Role"
        ]["Arn"]
        for policy in p.get("Policies", []):
            # SAM policy templates omit Version (IAM then assumes 2008-10-17); moto insists on it.
            document = {"Version": "2012-10-17", **policy["PolicyDocument"]}
            iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(document))
        for policy_arn in p.get("ManagedPolicyArns", []):
            iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
        return Created(ref=name, attributes={"Arn": arn, "RoleId": name})

    # ------------------------------------------------------------------ Lambda
    def _layer(self, logical_id: str, p: dict[str, Any]) -> Created:
        path = self._template.local_path(p["Content"]["S3Key"])
        name = p.get("LayerName") or logical_id
        arn = f"arn:aws:lambda:{self._region}:{self._account}:layer:{name}:1"
        return Created(ref=arn, attributes={"Path": str(path)})

    def _function(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("FunctionName") or self._physical_name(logical_id, 64)
        arn = f"arn:aws:lambda:{self._region}:{self._account}:function:{name}"
        code_path = self._template.local_path(p["Code"]["S3Key"])
        layer_paths = []
        for layer_arn in p.get("Layers", []):
            layer = next((c for c in self._created.values() if c.ref == layer_arn and "Path" in c.attributes), None)
            if layer is None:
                raise ValueError(f"{logical_id} uses layer {layer_arn}, which is not part of this template")
            layer_paths.append(layer.attributes["Path"])
        environment = {k: str(v) for k, v in p.get("Environment", {}).get("Variables", {}).items()}
        self._functions.append(
            FunctionSpec(
                logical_id=logical_id,
                name=name,
                arn=arn,
                handler=p["Handler"],
                code_paths=[str(code_path), *layer_paths],
                environment=environment,
                timeout_s=int(p.get("Timeout", 3)),
                memory_mb=int(p.get("MemorySize", 128)),
                role_arn=str(p["Role"]),
                max_concurrency=int(p.get("ReservedConcurrentExecutions") or 4),
            )
        )
        return Created(ref=name, attributes={"Arn": arn})

    def _event_source_mapping(self, logical_id: str, p: dict[str, Any]) -> Created:
        source = p["EventSourceArn"]
        if ":sqs:" not in source:
            logger.warning("event source %s (%s) is not emulated locally", logical_id, source)
            return Created(ref=logical_id)
        queue = next(c for c in self._created.values() if c.attributes.get("Arn") == source)
        scaling = p.get("ScalingConfig", {})
        function = next((f for f in self._functions if p["FunctionName"] in (f.name, f.arn)), None)
        if function is None:
            raise ValueError(
                f"{logical_id} maps {source} to {p['FunctionName']}, which is not a function of this template"
            )
        self._mappings.append(
            SqsMappingSpec(
                function_name=function.name,
                role_arn=function.role_arn,
                queue_arn=source,
                queue_url=queue.attributes["QueueUrl"],
                batch_size=int(p.get("BatchSize", 10)),
                batching_window_s=float(p.get("MaximumBatchingWindowInSeconds", 0)),
                report_batch_item_failures="ReportBatchItemFailures" in p.get("FunctionResponseTypes", []),
                max_concurrency=int(scaling.get("MaximumConcurrency", 2)),
                enabled=bool(p.get("Enabled", True)),
            )
        )
        return Created(ref=logical_id)

    # ------------------------------------------------------------------ Step Functions
    def _state_machine(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("StateMachineName") or self._physical_name(logical_id, 80)
        if "DefinitionS3Location" in p:
            path: Path = self._template.local_path(p["DefinitionS3Location"]["Key"])
            text = path.read_text()
        elif "DefinitionString" in p:
            text = p["DefinitionString"]
        else:
            text = json.dumps(p["Definition"])
        for key, value in p.get("DefinitionSubstitutions", {}).items():
            text = text.replace("${" + key + "}", str(value))
        definition = json.loads(text)
        # Through the Step Functions API: machines made by moto's CloudFormation never execute.
        arn = self._client("stepfunctions").create_state_machine(
            name=name,
            definition=json.dumps(definition),
            roleArn=p.get("RoleArn", f"arn:aws:iam::{self._account}:role/{name}"),
            type=p.get("StateMachineType", "STANDARD"),
        )["stateMachineArn"]
        self._state_machines.append(StateMachineSpec(logical_id, name, arn, definition))
        return Created(ref=arn, attributes={"Name": name, "Arn": arn})

    # ------------------------------------------------------------------ ECR
    def _repository(self, logical_id: str, p: dict[str, Any]) -> Created:
        name = p.get("RepositoryName") or self._physical_name(logical_id, 256).lower()
        ecr = self._client("ecr")
        repository = ecr.create_repository(
            repositoryName=name,
            imageTagMutability=p.get("ImageTagMutability", "MUTABLE"),
            imageScanningConfiguration={
                "scanOnPush": bool((p.get("ImageScanningConfiguration") or {}).get("ScanOnPush", False))
            },
            encryptionConfiguration={
                "encryptionType": (p.get("EncryptionConfiguration") or {}).get("EncryptionType", "AES256")
            },
        )["repository"]
        lifecycle = (p.get("LifecyclePolicy") or {}).get("LifecyclePolicyText")
        if lifecycle:
            ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=lifecycle)
        dockerfile = (self._template.resources[logical_id].get("Metadata") or {}).get("Dockerfile")
        if dockerfile:
            uri = repository["repositoryUri"]
            self._repository_images.append(RepositoryImage(logical_id, name, uri, self._template.root / dockerfile))
        return Created(
            ref=name, attributes={"Arn": repository["repositoryArn"], "RepositoryUri": repository["repositoryUri"]}
        )

    # ------------------------------------------------------------------ EventBridge
    def _rule(self, logical_id: str, p: dict[str, Any]) -> Created:
        """Pattern rules live on moto (which delivers matching events to SQS/SNS targets);
        schedule rules run on the local scheduler."""
        name = p.get("Name") or self._physical_name(logical_id, 64)
        bus = p.get("EventBusName", "default")
        events = self._client("events")
        kwargs: dict[str, Any] = {"Name": name, "EventBusName": bus, "State": p.get("State", "ENABLED")}
        if "EventPattern" in p:
            kwargs["EventPattern"] = json.dumps(p["EventPattern"])
        if "ScheduleExpression" in p:
            kwargs["ScheduleExpression"] = (
                "rate(1 minute)"  # moto validates AWS's units; the local scheduler runs the real one
            )
        arn = events.put_rule(**kwargs)["RuleArn"]
        targets = [
            {k: v for k, v in t.items() if k in ("Id", "Arn", "Input", "InputPath")} for t in p.get("Targets", [])
        ]
        if "ScheduleExpression" in p:
            if p.get("State", "ENABLED") == "ENABLED":
                self._schedules.append(ScheduleSpec(name, arn, p["ScheduleExpression"], targets))
        else:
            for target in targets:
                if ":lambda:" in str(target["Arn"]):
                    logger.warning(
                        "rule %s: Lambda targets of event patterns are not emulated; route through SQS", logical_id
                    )
            deliverable = [t for t in targets if ":lambda:" not in str(t["Arn"])]
            if deliverable:
                events.put_targets(Rule=name, EventBusName=bus, Targets=deliverable)
        return Created(ref=name, attributes={"Arn": arn})
