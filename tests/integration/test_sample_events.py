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


SAMPLES = Path(__file__).resolve().parents[2] / "events"
SQS_FUNCTIONS = {
    "submit_inference": "SubmitInferenceFunction",
    "complete_inference": "CompleteInferenceFunction",
    "reject_request": "RejectRequestFunction",
    "cancel_job": "CancelJobFunction",
    "request_files": "RequestFilesFunction",
    "endpoint_requests": "EndpointRequestsFunction",
    "fetch_requests": "FetchRequestsFunction",
    "train_requests": "TrainRequestsFunction",
}


def invoke_function(stack, function: str, event: dict) -> dict:
    response = stack.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event))
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_every_inference_sample_event_is_handled(stack):
    from sdpipe.contracts.jobs import job_id_for

    for folder, function in SQS_FUNCTIONS.items():
        for sample in sorted((SAMPLES / folder).glob("*.json")):
            result = invoke_function(stack, function, json.loads(sample.read_text()))
            assert result == {"batchItemFailures": []}, sample
    jobs = stack.resource("dynamodb").Table(stack.outputs["JobsTableName"])

    def job(request_id: str) -> dict:
        return jobs.get_item(Key={"job_id": job_id_for(request_id)})["Item"]

    assert job("sample-event-bad-width")["error"]["code"] == "VALIDATION_ERROR"
    assert job("sample-event-unknown")["error"]["code"] == "UNKNOWN_ACTION"
    assert job("sample-event-no-action")["error"]["code"] == "UNKNOWN_ACTION"
    assert job("sample-event-cancel")["error"]["code"] == "JOB_NOT_FOUND"
    assert job("sample-event-deploy-bad-type")["error"]["code"] == "VALIDATION_ERROR"
    assert job("sample-event-delete-unknown")["error"]["code"] == "ENDPOINT_NOT_FOUND"
    assert job("sample-event-fetch-ftp")["error"]["code"] == "URL_REJECTED"
    unknown_option = job("sample-event-train-unknown-option")["error"]
    assert unknown_option["code"] == "VALIDATION_ERROR" and "network_dimension" in unknown_option["message"]
    train_fail = json.loads((SAMPLES / "train_steps" / "fail_unknown_job.json").read_text())
    assert invoke_function(stack, "TrainStepsFunction", train_fail) == {"recorded": False}
    fail_step = json.loads((SAMPLES / "fetch_steps" / "fail_unknown_job.json").read_text())
    assert invoke_function(stack, "FetchStepsFunction", fail_step) == {"failed": False}
    created = invoke_function(
        stack, "UploadsFunction", json.loads((SAMPLES / "uploads" / "create_upload.json").read_text())
    )
    assert created["part_count"] == 3 and len(created["parts"]) == 3
    for name in ("resume_upload.json", "part_urls.json", "complete_upload_unknown.json"):
        answer = invoke_function(stack, "UploadsFunction", json.loads((SAMPLES / "uploads" / name).read_text()))
        assert answer["error"]["code"] == "JOB_NOT_FOUND", name
    describe = json.loads((SAMPLES / "endpoint_steps" / "describe.json").read_text())
    assert invoke_function(stack, "EndpointStepsFunction", describe)["status"] == "Missing"
    scheduled = json.loads((SAMPLES / "sweep_jobs" / "scheduled.json").read_text())
    assert "timed_out" in invoke_function(stack, "SweepJobsFunction", scheduled)
    for sample in sorted((SAMPLES / "jobs_api").glob("*.json")):
        result = invoke_function(stack, "JobsApiFunction", json.loads(sample.read_text()))
        assert "jobs" in result or result["error"]["code"] == "JOB_NOT_FOUND", sample
    answers = {"list_models": "models", "list_endpoints": "endpoints", "list_datasets": "datasets"}
    for sample in sorted((SAMPLES / "catalog_api").glob("*.json")):
        request = json.loads(sample.read_text())
        result = invoke_function(stack, "CatalogApiFunction", request)
        if request["operation"] == "describe_endpoint":  # the sample names an endpoint this stack lacks
            assert result["error"]["code"] == "ENDPOINT_NOT_FOUND", sample
        else:
            assert isinstance(result[answers[request["operation"]]], list), sample


def test_request_envelope_samples_are_valid_envelopes():
    from sdpipe.contracts.jobs import RequestEnvelope

    for sample in sorted((SAMPLES / "requests").glob("*.json")):
        RequestEnvelope.model_validate_json(sample.read_text())


def test_dataset_marker_sample_registers_the_folder(stack):
    """events/register_dataset: the marker of a folder holding nothing is registered as rejected."""
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    s3.put_object(Bucket=bucket, Key="datasets/sample-event-dataset/_READY", Body=b"")
    sample = json.loads((SAMPLES / "register_dataset" / "marker_dropped.json").read_text())
    assert invoke_function(stack, "RegisterDatasetFunction", sample) == {"batchItemFailures": []}
    item = (
        stack.resource("dynamodb")
        .Table(stack.outputs["DatasetsTableName"])
        .get_item(Key={"name": "sample-event-dataset"}, ConsistentRead=True)["Item"]
    )
    assert item["status"] == "REJECTED" and item["error"]["code"] == "EMPTY_DATASET"
