"""Application Auto Scaling and CloudWatch for one endpoint's variant: scale on backlog, from zero.

- A scalable target (min..max instances) on the variant's ``DesiredInstanceCount``.
- Target tracking on ``ApproximateBacklogSizePerInstance`` (queued requests per instance). Its
  alarms belong to Application Auto Scaling: this code never edits or deletes them.
- Scale-out from zero: target tracking cannot leave zero instances (there is nothing to divide
  the backlog by), so a step policy adds one instance when our own alarm on
  ``HasBacklogWithoutCapacity`` fires. That alarm is created and deleted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.contracts.endpoints import VARIANT

_NAMESPACE = "sagemaker"
_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@dataclass(frozen=True)
class ScalingPlan:
    sagemaker_name: str
    min_instances: int
    max_instances: int
    target_backlog_per_instance: float
    scale_in_cooldown_seconds: int
    scale_out_cooldown_seconds: int

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.sagemaker_name}/variant/{VARIANT}"


@dataclass(frozen=True)
class ScalingDescription:
    """An endpoint's autoscaling as Application Auto Scaling and CloudWatch report it."""

    ranges: list[tuple[int | None, int | None]] = field(default_factory=list)  # (min, max) per target
    policies: list[str] = field(default_factory=list)  # "name (type)"
    alarms: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "targets": [{"min": low, "max": high} for low, high in self.ranges],
            "policies": self.policies,
            "alarms": self.alarms,
        }


def backlog_policy_name(sagemaker_name: str) -> str:
    return f"{sagemaker_name}-backlog"


def scale_from_zero_policy_name(sagemaker_name: str) -> str:
    return f"{sagemaker_name}-scale-from-zero"


def scale_from_zero_alarm_name(sagemaker_name: str) -> str:
    return f"{sagemaker_name}-has-backlog-without-capacity"


def _unless_missing(call: Any, **kwargs: Any) -> None:
    """Call; a policy or target that is not there is what we wanted (AWS says ObjectNotFound, some
    implementations a ValidationException that says "No ... found")."""
    try:
        call(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        missing = error.get("Code") == "ObjectNotFoundException" or (
            error.get("Code") == "ValidationException" and "found" in str(error.get("Message", ""))
        )
        if not missing:
            raise


class EndpointScaling:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    @property
    def _scaling(self) -> Any:
        return self._aws.get("application-autoscaling")

    @property
    def _cloudwatch(self) -> Any:
        return self._aws.get("cloudwatch")

    def configure(self, plan: ScalingPlan) -> dict[str, str]:
        """Register (or re-register) the target and put both policies and our alarm; idempotent."""
        target = {"ServiceNamespace": _NAMESPACE, "ResourceId": plan.resource_id, "ScalableDimension": _DIMENSION}
        self._scaling.register_scalable_target(**target, MinCapacity=plan.min_instances, MaxCapacity=plan.max_instances)
        backlog = self._scaling.put_scaling_policy(
            **target,
            PolicyName=backlog_policy_name(plan.sagemaker_name),
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": plan.target_backlog_per_instance,
                "CustomizedMetricSpecification": {
                    "MetricName": "ApproximateBacklogSizePerInstance",
                    "Namespace": "AWS/SageMaker",
                    "Dimensions": [{"Name": "EndpointName", "Value": plan.sagemaker_name}],
                    "Statistic": "Average",
                },
                "ScaleInCooldown": plan.scale_in_cooldown_seconds,
                "ScaleOutCooldown": plan.scale_out_cooldown_seconds,
            },
        )
        from_zero = self._scaling.put_scaling_policy(
            **target,
            PolicyName=scale_from_zero_policy_name(plan.sagemaker_name),
            PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Average",
                "Cooldown": plan.scale_out_cooldown_seconds,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            },
        )
        alarm = scale_from_zero_alarm_name(plan.sagemaker_name)
        self._cloudwatch.put_metric_alarm(
            AlarmName=alarm,
            AlarmDescription=f"Scale {plan.sagemaker_name} out from zero when requests wait without an instance.",
            Namespace="AWS/SageMaker",
            MetricName="HasBacklogWithoutCapacity",
            Dimensions=[{"Name": "EndpointName", "Value": plan.sagemaker_name}],
            Statistic="Average",
            Period=60,
            EvaluationPeriods=2,
            DatapointsToAlarm=2,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="missing",
            AlarmActions=[from_zero["PolicyARN"]],
        )
        return {
            "resource_id": plan.resource_id,
            "backlog_policy_arn": str(backlog["PolicyARN"]),
            "scale_from_zero_policy_arn": str(from_zero["PolicyARN"]),
            "scale_from_zero_alarm": alarm,
        }

    def remove(self, sagemaker_name: str) -> None:
        """Delete our alarm, both policies (target tracking takes its own alarms with it) and the
        target. Deregistering alone would drop the policies on AWS, not everywhere. Gone is fine."""
        self._cloudwatch.delete_alarms(AlarmNames=[scale_from_zero_alarm_name(sagemaker_name)])
        target = {
            "ServiceNamespace": _NAMESPACE,
            "ResourceId": f"endpoint/{sagemaker_name}/variant/{VARIANT}",
            "ScalableDimension": _DIMENSION,
        }
        for policy in (backlog_policy_name(sagemaker_name), scale_from_zero_policy_name(sagemaker_name)):
            _unless_missing(self._scaling.delete_scaling_policy, PolicyName=policy, **target)
        _unless_missing(self._scaling.deregister_scalable_target, **target)

    def describe(self, sagemaker_name: str) -> ScalingDescription:
        """The target's range, its policies and our alarm, as the APIs report them (for status views)."""
        resource_id = f"endpoint/{sagemaker_name}/variant/{VARIANT}"
        targets = self._scaling.describe_scalable_targets(ServiceNamespace=_NAMESPACE, ResourceIds=[resource_id])
        policies = self._scaling.describe_scaling_policies(ServiceNamespace=_NAMESPACE, ResourceId=resource_id)
        alarms = self._cloudwatch.describe_alarms(AlarmNames=[scale_from_zero_alarm_name(sagemaker_name)])
        return ScalingDescription(
            ranges=[(t.get("MinCapacity"), t.get("MaxCapacity")) for t in targets.get("ScalableTargets", [])],
            policies=[f"{p.get('PolicyName')} ({p.get('PolicyType')})" for p in policies.get("ScalingPolicies", [])],
            alarms=[str(a.get("AlarmName")) for a in alarms.get("MetricAlarms", [])],
        )
