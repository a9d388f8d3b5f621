"""The events/ samples (also used with `sam local invoke`) drive the deployed handler code."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import kohya_lora, safetensors_bytes

EVENTS = Path(__file__).resolve().parents[2] / "events" / "register_model"


def invoke(stack, event: dict) -> dict:
    response = stack.client("lambda").invoke(FunctionName="sdpipe-RegisterModelFunction", Payload=json.dumps(event))
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_every_sample_event_is_handled(stack, models):
    key = "models/Lora/example lora(v1).safetensors"  # what object_created.json names, URL-encoded
    models.put(key, safetensors_bytes(kohya_lora("sd1")))
    models.wait(key, "ACTIVE")
    for sample in sorted(EVENTS.glob("*.json")):
        result = invoke(stack, json.loads(sample.read_text()))
        assert result == {"batchItemFailures": []}, sample.name


def test_removed_sample_marks_the_model_deleted(stack, models):
    key = "models/Lora/example lora(v1).safetensors"
    models.put(key, safetensors_bytes(kohya_lora("sd1")))
    models.wait(key, "ACTIVE")
    models.s3.delete_object(Bucket=models.bucket, Key=key)
    invoke(stack, json.loads((EVENTS / "object_removed.json").read_text()))
    assert models.wait(key, "DELETED")["status"] == "DELETED"
