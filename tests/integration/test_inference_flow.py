"""txt2img/img2img end to end on the local stack: requests topic → SubmitInference → endpoint
process → async notification → CompleteInference → S3, DynamoDB and events."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import uuid
from collections import Counter
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.stack import StackOutputs
from sdpipe_inference.infotext import read_parameters
from sdpipe_local.assets import drop_checkpoint
from sdpipe_local.events_listener import EventsListener
from sdpipe_local.tiny_models import create_tiny_controlnet, create_tiny_lora
from tests.helpers import wait_until
from tests.integration.helpers import FOX_PARAMS, frozen, pointed_at, wait_active


@pytest.fixture(scope="module")
def pipeline(sdpipe_stack, tiny_checkpoints, tmp_path_factory):
    stack = sdpipe_stack
    with pointed_at(stack):
        s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
        drop_checkpoint(s3, bucket, tiny_checkpoints["sd1"], "models/Stable-diffusion/flow/fox-sd1.safetensors")
        drop_checkpoint(s3, bucket, tiny_checkpoints["sdxl"], "models/Stable-diffusion/flow/fox-sdxl.safetensors")
        lora_dir = tmp_path_factory.mktemp("loras")
        for family in ("sd1", "sdxl"):
            path = create_tiny_lora(family, lora_dir / f"flow-style-{family}.safetensors", seed=3)
            stack.client("s3").upload_file(str(path), stack.outputs["AssetsBucketName"], f"models/Lora/{path.name}")
        for family in ("sd1", "sdxl"):
            path = create_tiny_controlnet(family, lora_dir / f"flow-canny-{family}.safetensors", seed=4)
            stack.client("s3").upload_file(
                str(path), stack.outputs["AssetsBucketName"], f"models/ControlNet/{path.name}"
            )
        for key in (
            "models/Stable-diffusion/flow/fox-sd1.safetensors",
            "models/Stable-diffusion/flow/fox-sdxl.safetensors",
            "models/Lora/flow-style-sd1.safetensors",
            "models/Lora/flow-style-sdxl.safetensors",
            "models/ControlNet/flow-canny-sd1.safetensors",
            "models/ControlNet/flow-canny-sdxl.safetensors",
        ):
            wait_active(stack, key)
        client = Sdpipe(StackOutputs(stack.outputs))
        client.wait(client.deploy_endpoint("flow", instance_type="ml.g6.xlarge", min_instances=1), timeout_s=300)
        yield stack, client


FOX = FOX_PARAMS | {"model": "fox-sd1"}


def pixels(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def read_s3(stack, uri: str) -> bytes:
    bucket, key = uri[5:].split("/", 1)
    return stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def wait_in_flight(client: Sdpipe, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> None:
    """Wait until the job is handed to the endpoint (one of ``statuses``)."""
    wait_until(lambda: (client.find_job(job_id) or {}).get("status") in statuses, timeout, every=0.05,
               what=f"{job_id} reaching {statuses}")  # fmt: skip


def job_events(listener: EventsListener, job_id: str, until: str, timeout: float = 60) -> list[dict]:
    events = listener.wait_for(
        lambda got: any(e.get("job_id") == job_id and e["type"] == until for e in got), timeout_s=timeout
    )
    return [e for e in events if e.get("job_id") == job_id]


def test_txt2img_end_to_end(pipeline):
    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    job_id = client.submit("txt2img", FOX, context={"user": "ana"})
    job = client.wait(job_id, timeout_s=300)
    assert job["status"] == "SUCCEEDED"
    outputs = job["outputs"]
    assert outputs["all_seeds"] == [42, 43]
    assert [uri.rsplit("/", 2)[-2:] for uri in outputs["images"]] == [["images", "0.png"], ["images", "1.png"]]
    text = read_parameters(read_s3(stack, outputs["images"][1]))
    assert text.startswith("a red fox in snow\n")
    for fragment in ("Steps: 4", "Sampler: Euler a", "CFG scale: 7", "Seed: 43", "Size: 64x64", "Model: flow/fox-sd1"):
        assert fragment in text
    model_hash = job["model"]["short_hash"]
    assert f"Model hash: {model_hash}" in text
    result = json.loads(read_s3(stack, outputs["result"]))
    assert result["all_seeds"] == [42, 43]

    events = job_events(listener, job_id, "job.succeeded")
    assert [e["type"] for e in events if e["type"] != "job.progress"] == [
        "job.accepted",
        "job.running",
        "job.succeeded",
    ]
    assert all(e["context"] == {"user": "ana"} for e in events)
    assert events[-1]["outputs"]["images"] == outputs["images"]
    # The endpoint's own progress: before the end, at most one a second, with a preview.
    progress = sorted((e for e in events if e["type"] == "job.progress"), key=lambda e: e["occurred_at"])
    finished = next(e for e in events if e["type"] == "job.succeeded")
    assert progress and all(e["occurred_at"] < finished["occurred_at"] for e in progress)
    times = [datetime.fromisoformat(e["occurred_at"]) for e in progress]
    assert all((later - earlier).total_seconds() >= 0.99 for earlier, later in itertools.pairwise(times))
    first = progress[0]["outputs"]
    assert (first["step"], first["total_steps"], first["image"], first["images"]) == (1, 4, 1, 2)
    assert first["preview"] == f"s3://{stack.outputs['AssetsBucketName']}/jobs/{job_id}/preview.png"
    assert Image.open(io.BytesIO(read_s3(stack, first["preview"]))).size == (256, 256)

    rows = (
        stack.resource("dynamodb")
        .Table(stack.outputs["GenerationsTableName"])
        .query(KeyConditionExpression="job_id = :j", ExpressionAttributeValues={":j": job_id})["Items"]
    )
    assert sorted((int(r["image_index"]), int(r["seed"])) for r in rows) == [(0, 42), (1, 43)]
    assert {r["model_hash"] for r in rows} == {model_hash}
    assert rows[0]["prompt"] == "a red fox in snow" and int(rows[0]["steps"]) == 4

    # The same request again (a new request id) gives pixel-identical images.
    again = client.wait(client.submit("txt2img", FOX), timeout_s=300)
    for first, second in zip(outputs["images"], again["outputs"]["images"], strict=True):
        assert np.array_equal(pixels(read_s3(stack, first)), pixels(read_s3(stack, second)))
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "flow"})
    assert int(endpoint["Item"]["in_flight"]) == 0


def test_lora_changes_the_picture_and_is_recorded(pipeline):
    stack, client = pipeline
    plain = client.wait(client.submit("txt2img", FOX | {"batch_size": 1}), timeout_s=300)
    styled = client.wait(
        client.submit("txt2img", FOX | {"batch_size": 1, "prompt": "a red fox in snow <lora:flow-style-sd1:0.8>"}),
        timeout_s=300,
    )
    a = pixels(read_s3(stack, plain["outputs"]["images"][0]))
    b = pixels(read_s3(stack, styled["outputs"]["images"][0]))
    assert not np.array_equal(a, b)
    text = read_parameters(read_s3(stack, styled["outputs"]["images"][0]))
    assert "<lora:flow-style-sd1:0.8>" in text and "Lora hashes: " in text
    assert styled["loras"] == [{"name": "flow-style-sd1", "weight": 0.8}]


def test_img2img_from_an_s3_image(pipeline, tmp_path):
    stack, client = pipeline
    source = client.wait(client.submit("txt2img", FOX | {"batch_size": 1}), timeout_s=300)
    init = source["outputs"]["images"][0]
    job = client.wait(
        client.submit("img2img", FOX | {"batch_size": 1, "init_images": [init], "denoising_strength": 0.5}),
        timeout_s=300,
    )
    text = read_parameters(read_s3(stack, job["outputs"]["images"][0]))
    assert "Denoising strength: 0.5" in text


def canny_unit(image: str, model: str = "flow-canny-sd1", **fields) -> dict:
    unit = {"module": "canny", "model": model, "image": image} | fields
    return {"alwayson_scripts": {"controlnet": {"args": [unit]}}}


def test_a_controlnet_unit_steers_the_picture(pipeline):
    stack, client = pipeline
    source = client.wait(client.submit("txt2img", FOX | {"batch_size": 1}), timeout_s=300)
    control = source["outputs"]["images"][0]  # an s3:// image from the bucket as the control image
    plain = pixels(read_s3(stack, control))
    steered = client.wait(client.submit("txt2img", FOX | {"batch_size": 1} | canny_unit(control)), timeout_s=300)
    image = read_s3(stack, steered["outputs"]["images"][0])
    assert not np.array_equal(pixels(image), plain)
    assert 'ControlNet 0: "Module: canny, Model: flow-canny-sd1 [' in read_parameters(image)


@pytest.mark.parametrize(
    ("action", "params", "code", "names"),
    [
        ("txt2img", FOX | {"width": 60}, "VALIDATION_ERROR", "params.width"),
        ("txt2img", FOX | {"steps": 500}, "VALIDATION_ERROR", "params.steps"),
        ("txt2img", FOX | {"batch_size": 64}, "VALIDATION_ERROR", "params.batch_size"),
        ("txt2img", FOX | {"sampler_name": "Turbo Magic"}, "VALIDATION_ERROR", "Turbo Magic"),
        ("txt2img", FOX | {"prompt": ""}, "VALIDATION_ERROR", "prompt is required"),
        ("txt2img", FOX | {"model": "no-such-model"}, "MODEL_NOT_FOUND", "no-such-model"),
        ("txt2img", FOX | {"model": "fox"}, "MODEL_NOT_FOUND", "fox"),
        ("txt2img", FOX | {"prompt": "fox <lora:flow-style-sdxl:1>"}, "MODEL_NOT_USABLE", "sdxl"),
        ("txt2img", FOX | {"endpoint": "gone"}, "ENDPOINT_NOT_FOUND", "gone"),
        ("img2img", FOX | {"init_images": [base64.b64encode(b"no image").decode()]}, "VALIDATION_ERROR", "init_images"),
        ("img2img", FOX | {"init_images": ["s3://someone-elses-bucket/a.png"]}, "VALIDATION_ERROR", "outside"),
        ("img2img", FOX | {"init_images": []}, "VALIDATION_ERROR", "init_images"),
        ("txt2img", FOX | canny_unit("aGk=", model="no-such-cn"), "MODEL_NOT_FOUND", "args[0].model"),
        ("txt2img", FOX | canny_unit("aGk=", model="flow-canny-sdxl"), "MODEL_NOT_USABLE", "args[0].model"),
        ("txt2img", FOX | canny_unit("s3://elsewhere/a.png"), "VALIDATION_ERROR", "args[0].image"),
        ("txt2img", FOX | canny_unit("aGk=", module="openpose"), "VALIDATION_ERROR", "openpose"),
    ],
)
def test_bad_requests_fail_with_a_named_cause(pipeline, action, params, code, names):
    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    job_id = client.submit(action, params)
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=60)
    assert failure.value.code == code
    job = client.get_job(job_id)
    assert job["status"] == "FAILED" and names in job["error"]["message"]
    events = job_events(listener, job_id, "job.failed")
    assert [e["type"] for e in events] == ["job.failed"]
    assert events[0]["error"]["code"] == code


def test_unknown_and_missing_actions_fail_visibly(pipeline):
    stack, client = pipeline
    sns, topic = stack.client("sns"), stack.outputs["RequestsTopicArn"]
    request_ids = {"unknown": f"u-{uuid.uuid4().hex}", "missing": f"m-{uuid.uuid4().hex}"}
    sns.publish(
        TopicArn=topic,
        Message=json.dumps({"action": "paint_my_house", "request_id": request_ids["unknown"]}),
        MessageAttributes={"action": {"DataType": "String", "StringValue": "paint_my_house"}},
    )
    sns.publish(TopicArn=topic, Message=json.dumps({"action": "txt2img", "request_id": request_ids["missing"]}))
    from sdpipe.contracts.jobs import job_id_for

    for kind, request_id in request_ids.items():
        with pytest.raises(JobFailed) as failure:
            client.wait(job_id_for(request_id), timeout_s=60)
        assert failure.value.code == "UNKNOWN_ACTION", kind
    assert "paint_my_house" in client.get_job(job_id_for(request_ids["unknown"]))["error"]["message"]


def test_duplicate_deliveries_make_one_job_one_invocation_one_event_each(pipeline):
    """Many requests, each delivered 1-3 times at once, from concurrent publishers."""
    from concurrent.futures import ThreadPoolExecutor

    from sdpipe.contracts.jobs import job_id_for

    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    sns, topic = stack.client("sns"), stack.outputs["RequestsTopicArn"]
    requests = [(f"dup-{uuid.uuid4().hex}", 1 + i % 3) for i in range(12)]

    def publish(request_id: str) -> None:
        envelope = {"action": "txt2img", "request_id": request_id, "params": FOX | {"batch_size": 1, "steps": 2}}
        sns.publish(
            TopicArn=topic,
            Message=json.dumps(envelope),
            MessageAttributes={"action": {"DataType": "String", "StringValue": "txt2img"}},
        )

    deliveries = [rid for rid, copies in requests for _ in range(copies)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(publish, deliveries))
    job_ids = {job_id_for(rid) for rid, _ in requests}
    for job_id in job_ids:
        assert client.wait(job_id, timeout_s=240)["status"] == "SUCCEEDED"
    events = listener.wait_for(
        lambda got: sum(e["type"] == "job.succeeded" and e.get("job_id") in job_ids for e in got) >= len(job_ids),
        timeout_s=30,
    )
    stack.wait_idle()  # anything duplicated would have arrived by now
    events = [e for e in listener.drain() if e.get("job_id") in job_ids]
    counts = Counter((e["job_id"], e["type"]) for e in events)
    for job_id in job_ids:
        for kind in ("job.accepted", "job.running", "job.succeeded"):
            assert counts[(job_id, kind)] == 1, (job_id, kind, counts)
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    outputs = s3.list_objects_v2(Bucket=bucket, Prefix="jobs/async-output/flow/")["Contents"]
    invoked = Counter(o["Key"].rsplit("/", 1)[-1].removesuffix(".out") for o in outputs)
    assert all(invoked[job_id] == 1 for job_id in job_ids)
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "flow"})
    assert int(endpoint["Item"]["in_flight"]) == 0


def test_a_request_file_dropped_in_the_bucket_becomes_a_job(pipeline):
    from sdpipe.contracts.jobs import job_id_for

    stack, client = pipeline
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    request_id = f"named-{uuid.uuid4().hex}"
    envelope = {"action": "txt2img", "request_id": request_id, "params": FOX | {"batch_size": 1}}
    s3.put_object(Bucket=bucket, Key=f"requests/{request_id}.json", Body=json.dumps(envelope).encode())
    assert client.wait(job_id_for(request_id), timeout_s=300)["status"] == "SUCCEEDED"

    # Without a request id, the file's key and ETag make one: the job is found by listing.
    unnamed = {"action": "txt2img", "params": FOX | {"batch_size": 1, "seed": 7}}
    s3.put_object(Bucket=bucket, Key="requests/unnamed.json", Body=json.dumps(unnamed).encode())
    found = wait_until(lambda: [j for j in client.list_jobs("txt2img", 50) if j["request_id"].startswith("file-")],
                       60, every=0.3, what="the job of the unnamed request file")  # fmt: skip
    assert client.wait(found[0]["job_id"], timeout_s=300)["outputs"]["all_seeds"] == [7]


def generation_rows(stack, job_id: str) -> list[dict]:
    table = stack.resource("dynamodb").Table(stack.outputs["GenerationsTableName"])
    return table.query(KeyConditionExpression="job_id = :j", ExpressionAttributeValues={":j": job_id})["Items"]


def image_keys(stack, job_id: str) -> list[str]:
    listing = stack.client("s3").list_objects_v2(Bucket=stack.outputs["AssetsBucketName"], Prefix=f"jobs/{job_id}/")
    return [o["Key"] for o in listing.get("Contents", []) if "/images/" in o["Key"] or o["Key"].endswith("result.json")]


def test_cancel_stops_a_running_generation_between_steps(pipeline):
    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    total = 150 * 16
    job_id = client.submit("txt2img", FOX | {"batch_size": 1, "n_iter": 16, "steps": 150})
    listener.wait_for(lambda got: any(e.get("job_id") == job_id and e["type"] == "job.progress" for e in got),
                      timeout_s=120)  # fmt: skip
    cancelled = client.cancel_job(job_id, "enough")
    assert cancelled["status"] == "CANCELLED"
    # The container's own answer: it stopped between two steps, long before the end.
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    failure = f"jobs/async-failures/flow/{job_id}-error.out"
    wait_until(lambda: "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=failure), 60,
               what="the endpoint's answer to the cancelled job")  # fmt: skip
    error = json.loads(s3.get_object(Bucket=bucket, Key=failure)["Body"].read())["error"]
    assert error["code"] == "CANCELLED" and "was cancelled: enough" in error["message"], error
    step, image = (
        int(word) for word in re.findall(r"after step (\d+) of 150 \(image (\d+) of 16\)", error["message"])[0]
    )
    assert (image - 1) * 150 + step < total
    stack.wait_idle()
    job = client.get_job(job_id)
    assert job["status"] == "CANCELLED" and job["error"] == {"code": "CANCELLED", "message": "enough"}
    assert image_keys(stack, job_id) == [] and generation_rows(stack, job_id) == []
    types = [e["type"] for e in listener.drain() if e.get("job_id") == job_id]
    assert types.count("job.cancelled") == 1 and not {"job.succeeded", "job.failed"} & set(types)
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "flow"})
    assert int(endpoint["Item"]["in_flight"]) == 0
    # The container is free for the next request.
    assert client.wait(client.submit("txt2img", FOX | {"batch_size": 1}), timeout_s=120)["status"] == "SUCCEEDED"


def test_a_result_that_comes_after_the_cancel_is_discarded(pipeline):
    """The endpoint was past its last step when the cancel came: its success must not show."""
    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    with frozen(stack, "flow"):  # the endpoint has the work and has not answered yet
        job_id = client.submit("txt2img", FOX | {"batch_size": 1})
        wait_in_flight(client, job_id, ("RUNNING",))
        cancelled = client.cancel_job(job_id, "changed my mind")
        assert cancelled["status"] == "CANCELLED" and cancelled["error"]["message"] == "changed my mind"
        with pytest.raises(Exception, match="already finished as CANCELLED"):
            client.cancel_job(job_id)
        s3.delete_object(Bucket=bucket, Key=f"jobs/{job_id}/stop.json")  # as if it came too late to be seen
    wait_until(lambda: "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/async-output/flow/{job_id}"),
               120, what="the endpoint's late output")  # fmt: skip
    stack.wait_idle()  # the late notification has been handled
    assert client.get_job(job_id)["status"] == "CANCELLED"
    assert image_keys(stack, job_id) == [] and generation_rows(stack, job_id) == []
    types = [e["type"] for e in listener.drain() if e.get("job_id") == job_id]
    assert types.count("job.cancelled") == 1 and "job.succeeded" not in types
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "flow"})
    assert int(endpoint["Item"]["in_flight"]) == 0


def test_cancel_job_request_on_the_topic(pipeline):
    stack, client = pipeline
    with frozen(stack, "flow"):
        job_id = client.submit("txt2img", FOX | {"batch_size": 1})
        cancel_id = client.submit("cancel_job", {"job_id": job_id})
        assert client.wait(cancel_id, timeout_s=60)["outputs"] == {"cancelled_job_id": job_id}
        assert client.get_job(job_id)["status"] == "CANCELLED"
    missing = client.submit("cancel_job", {"job_id": "j-nope"})
    with pytest.raises(JobFailed) as failure:
        client.wait(missing, timeout_s=60)
    assert failure.value.code == "JOB_NOT_FOUND"


def test_sweeper_times_out_jobs_past_their_deadline(pipeline):
    """A job whose endpoint never answers (here: the deadline is simply in the past)."""
    stack, client = pipeline
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    with frozen(stack, "flow"):
        job_id = client.submit("txt2img", FOX | {"batch_size": 1})
        wait_in_flight(client, job_id, ("RUNNING",))
        jobs = stack.resource("dynamodb").Table(stack.outputs["JobsTableName"])
        jobs.update_item(
            Key={"job_id": job_id}, UpdateExpression="SET deadline = :d", ExpressionAttributeValues={":d": "2000-01-01"}
        )
        # The stack's own scheduled sweep (once a minute) may get there between the update and these
        # calls: whoever sweeps first times the job out, and nobody does it a second time.
        sweeps = [stack.client("lambda").invoke(FunctionName="SweepJobsFunction", Payload=b"{}") for _ in range(2)]
        timed_out = [json.loads(sweep["Payload"].read())["timed_out"] for sweep in sweeps]
        assert job_id not in timed_out[1]
    stack.wait_idle()  # the endpoint's late answer has been handled: the job stays timed out
    job = client.get_job(job_id)
    assert job["status"] == "TIMED_OUT" and job["error"]["code"] == "TIMED_OUT"
    events = job_events(listener, job_id, "job.timed_out")
    assert [e["type"] for e in events].count("job.timed_out") == 1
    # Nothing after the end but the endpoint's own progress on the late work (it cannot know).
    assert [e["type"] for e in events if e["type"] != "job.progress"][-1] == "job.timed_out"


def test_an_endpoint_error_fails_the_job_with_the_containers_reason(pipeline):
    """A LoRA registered for SD1.x whose tensors do not fit the checkpoint: the endpoint refuses it."""
    from tests.helpers import kohya_lora, safetensors_bytes

    stack, client = pipeline
    key = "models/Lora/misfit-sd1.safetensors"
    stack.client("s3").put_object(
        Bucket=stack.outputs["AssetsBucketName"],
        Key=key,
        Body=safetensors_bytes(kohya_lora("sd1"), metadata={"ss_base_model_version": "sd_v1"}),
    )
    wait_active(stack, key)
    job_id = client.submit("txt2img", FOX | {"batch_size": 1, "prompt": "a fox <lora:misfit-sd1:1>"})
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=300)
    error = client.get_job(job_id)["error"]
    assert error["code"] == "VALIDATION_ERROR" and "misfit-sd1" in error["message"], error


def test_a_permission_missing_from_the_template_fails_the_job_with_access_denied(pipeline, revoke):
    """IAM is enforced locally: without InvokeEndpointAsync the job fails at once, naming the action
    and the role, and gives its endpoint slot back (no retries: the template must be fixed)."""
    stack, client = pipeline
    revoke("SubmitInferenceFunctionRole", "sagemaker:InvokeEndpointAsync")
    job_id = client.submit("txt2img", FOX | {"batch_size": 1})
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=60)
    error = client.get_job(job_id)["error"]
    assert error["code"] == "ACCESS_DENIED", error
    assert "sagemaker:InvokeEndpointAsync" in error["message"] and "SubmitInferenceFunctionRole" in error["message"]
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "flow"})
    assert int(endpoint["Item"]["in_flight"]) == 0


def test_an_endpoint_that_dies_mid_job_fails_the_job_and_is_restarted(pipeline):
    stack, client = pipeline
    with frozen(stack, "flow") as endpoint:  # the work reaches the container, which then dies
        job_id = client.submit("txt2img", FOX | {"batch_size": 1})
        wait_in_flight(client, job_id, ("RUNNING",))
        crashed, restarts = endpoint.process, endpoint.restarts
        crashed.kill()  # a CUDA OOM or a segfault: the process is gone without answering
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=300)
    assert failure.value.code == "ENDPOINT_CRASHED"
    assert "sdpipe-flow" in str(failure.value) and "without answering" in str(failure.value)
    table = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"])
    assert int(table.get_item(Key={"name": "flow"})["Item"]["in_flight"]) == 0  # its slot is back
    # The stand-in replaced the container, as SageMaker does: the next job runs.
    assert endpoint.restarts == restarts + 1 and endpoint.process is not crashed
    assert client.wait(client.submit("txt2img", FOX | {"batch_size": 1}), timeout_s=300)["status"] == "SUCCEEDED"


def test_the_cli_generates_waits_and_saves(pipeline, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sdpipe_client.cli import main

    runner = CliRunner()
    args = ["txt2img", "a red fox in snow", "--model", "fox-sd1", "--steps", "4", "--width", "64", "--height", "64"]
    result = runner.invoke(main, [*args, "--seed", "42", "--batch-size", "2", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout[result.stdout.index("{") :])
    saved = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in saved] == [f"{job['job_id']}-0.png", f"{job['job_id']}-1.png"]
    assert "Seed: 43" in read_parameters(saved[1].read_bytes())

    listed = runner.invoke(main, ["jobs", "list", "--action", "txt2img", "--limit", "5", "--json"])
    assert job["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)]
    got = runner.invoke(main, ["jobs", "get", job["job_id"]])
    assert json.loads(got.stdout)["status"] == "SUCCEEDED"

    # --wait draws the endpoint's steps; --preview keeps its preview in the out folder, opened once.
    opened: list[str] = []
    monkeypatch.setattr("click.launch", lambda target, **_: opened.append(target) or 0)
    followed = runner.invoke(main, [*args[:4], "--steps", "25", "--n-iter", "4", "--width", "64", "--height", "64",
                                    "--out", str(tmp_path / "followed"), "--preview"])  # fmt: skip
    assert followed.exit_code == 0, followed.output
    assert "100/100 steps" in followed.output and "it/s" in followed.output
    previews = list((tmp_path / "followed").glob("*-preview.png"))
    assert len(previews) == 1 and opened == [str(previews[0])]
    assert Image.open(previews[0]).size == (256, 256)

    bad = runner.invoke(main, [*args[:4], "--width", "60", "--wait"])
    assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.output and "width" in bad.output
    missing = runner.invoke(main, ["jobs", "cancel", "j-nope"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
