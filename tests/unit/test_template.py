"""template.yaml is valid SAM and valid CloudFormation once translated (cfn-lint alone misses
errors inside SAM resources, so the translated template is linted too)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint

from sdpipe_local.template import translate
from tests.helpers import PSEUDO, ROOT

REQUIRED_OUTPUTS = {
    "AssetsBucketName", "RequestsTopicArn", "EventsTopicArn", "ModelsTableName", "DatasetsTableName",
    "JobsTableName", "EndpointsTableName", "GenerationsTableName", "UploadsFunctionName", "FetchModelStateMachineArn",
}  # fmt: skip


def test_sam_validate_lint_is_clean():
    sam = shutil.which("sam", path=str(Path(sys.executable).parent)) or shutil.which("sam")
    assert sam, "aws-sam-cli is a dev dependency"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [sam, "validate", "--lint", "--region", "us-east-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_translated_template_passes_cfn_lint():
    translated = translate(ROOT / "template.yaml", {}, PSEUDO)
    document = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {k: {"Type": "String", "Default": str(v)} for k, v in translated.parameters.items()},
        "Conditions": translated.conditions,
        "Resources": translated.resources,
        "Outputs": translated.outputs,
    }
    matches = lint(json.dumps(document), config=ManualArgs(regions=["us-east-1"]))
    assert [str(m) for m in matches] == []


def test_outputs_name_everything_a_client_needs():
    translated = translate(ROOT / "template.yaml", {}, PSEUDO)
    assert set(translated.outputs) >= REQUIRED_OUTPUTS


def test_fetching_from_private_networks_is_off_unless_configured():
    """The local stack (samconfig's local parameters included) protects like AWS by default."""
    from sdpipe_local.template import samconfig_parameters

    translated = translate(ROOT / "template.yaml", samconfig_parameters(ROOT), PSEUDO)
    for function in ("FetchRequestsFunction", "FetchStepsFunction"):
        variables = translated.resources[function]["Properties"]["Environment"]["Variables"]
        assert variables["FETCH_ALLOWED_NETWORKS"] == {"Ref": "FetchAllowedNetworks"}, function
    assert translated.parameters["FetchAllowedNetworks"] == ""


def test_no_wildcard_iam_actions_or_admin_policies():
    translated = translate(ROOT / "template.yaml", {}, PSEUDO)
    for name, resource in translated.resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        assert not any(
            "AdministratorAccess" in str(arn) for arn in resource["Properties"].get("ManagedPolicyArns", [])
        ), name
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert "*" not in actions and not any(a.endswith(":*") for a in actions), (name, actions)


@pytest.mark.parametrize("queue", ["RegisterModelQueue", "RequestFilesQueue", "DatasetObjectsQueue"])
def test_every_queue_has_a_dead_letter_queue_with_an_alarm(queue):
    translated = translate(ROOT / "template.yaml", {}, PSEUDO)
    redrive = translated.resources[queue]["Properties"]["RedrivePolicy"]
    dlq = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
    alarms = [r for r in translated.resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert any(a["Properties"]["Dimensions"][0]["Value"] == {"Fn::GetAtt": [dlq, "QueueName"]} for a in alarms)
