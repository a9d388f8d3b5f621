"""Against a deployed stack: AWS_SAM_STACK_NAME=<stack> pytest tests/e2e (skipped otherwise)."""

from __future__ import annotations

import os
import time
import uuid

import boto3
import pytest

from tests.helpers import kohya_lora, safetensors_bytes

STACK = os.environ.get("AWS_SAM_STACK_NAME")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not STACK, reason="set AWS_SAM_STACK_NAME to a deployed stack")]


def test_dropped_lora_is_registered_then_deleted():
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in boto3.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]
    }
    s3 = boto3.client("s3")
    table = boto3.resource("dynamodb").Table(outputs["ModelsTableName"])
    key = f"models/Lora/e2e-{uuid.uuid4().hex[:8]}.safetensors"
    s3.put_object(Bucket=outputs["AssetsBucketName"], Key=key, Body=safetensors_bytes(kohya_lora("sd1")))

    def item():
        found = [i for i in table.scan(ConsistentRead=True)["Items"] if i.get("s3_key") == key]
        return found[0] if found else {}

    deadline = time.monotonic() + 120
    while item().get("status") != "ACTIVE":
        assert time.monotonic() < deadline, item()
        time.sleep(2)
    s3.delete_object(Bucket=outputs["AssetsBucketName"], Key=key)
    while item().get("status") != "DELETED":
        assert time.monotonic() < deadline, item()
        time.sleep(2)
