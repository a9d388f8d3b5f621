"""txt2img / img2img from the request to the finished job: the intake plans, takes a slot and
invokes (faked); the completion reads the endpoint's A1111 answer and writes images, result,
generation rows and the job's end, once, whatever is delivered twice."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from sdpipe.contracts.jobs import JobStatus
from sdpipe.contracts.sagemaker_events import AsyncInferenceNotification
from sdpipe.errors import Throttled, WorkInProgress
from sdpipe.logic.inference_complete import InferenceCompletion
from sdpipe.logic.inference_plan import InferencePlanner
from sdpipe.logic.inference_submit import InferenceIntake
from sdpipe.logic.job_control import JobControl
from tests.unit.world import FakeRuntime, World, add_model, envelope

SD15 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
LORA = "ab" * 32


def png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


class Inference:
    def __init__(self, world: World) -> None:
        self.world = world
        add_model(world, "v1-5-pruned-emaonly", SD15)
        add_model(world, "style", LORA, kind="lora", folder="Lora")
        world.endpoints.put({"name": "fast", "status": "IN_SERVICE", "sagemaker_name": "sdpipe-fast", "in_flight": 0})
        self.runtime = FakeRuntime()
        self.intake = InferenceIntake(
            ledger=world.ledger(),
            planner=InferencePlanner(world.models, world.endpoints, world.store),
            store=world.store,
            runtime=self.runtime,
            deadline_seconds=600,
            claim_seconds=60,
        )
        self.completion = InferenceCompletion(ledger=world.ledger(), store=world.store, generations=world.generations)

    def submit(self, params: dict[str, object], request_id: str = "gen-1", action: str = "txt2img") -> str:
        return self.intake.handle_message(envelope(action, params, request_id), action, "m-1")

    def finish(self, job_id: str, *, images: int = 1, failed: bool = False, error: dict | None = None) -> None:
        """The endpoint's answer and SageMaker's notification, as the container would leave them."""
        failed = failed or error is not None
        if failed:
            error = error or {"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"}
            self.world.put(f"jobs/async-failures/{job_id}.out", json.dumps({"error": error}).encode())
            response = {"failureLocation": f"s3://assets/jobs/async-failures/{job_id}.out"}
        else:
            info = {"all_seeds": [7 + i for i in range(images)], "all_prompts": ["a cat"] * images, "steps": 2,
                    "sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": SD15[:10]}  # fmt: skip
            body = {"images": [base64.b64encode(png()).decode()] * images, "info": json.dumps(info)}
            self.world.put(f"jobs/async-output/{job_id}.out", json.dumps(body).encode())
            response = {"outputLocation": f"s3://assets/jobs/async-output/{job_id}.out"}
        notification = {
            "inferenceId": job_id,
            "invocationStatus": "Failed" if failed else "Completed",
            "requestParameters": {"endpointName": "sdpipe-fast"},
            "responseParameters": response,
            "eventTime": "2026-12-01T10:00:00Z",
        }
        self.completion.handle(AsyncInferenceNotification.model_validate(notification))

    def in_flight(self) -> int:
        record = self.world.endpoints.get("fast")
        return record.in_flight if record is not None else 0


@pytest.fixture
def inference(world: World) -> Inference:
    return Inference(world)


def test_a_request_becomes_one_invocation_and_its_answer_one_finished_job(inference, world):
    job_id = inference.submit({"prompt": "a cat <lora:style:0.8>", "steps": 2, "width": 64, "height": 64})
    job = inference.intake.ledger.require(job_id)
    assert job.status is JobStatus.RUNNING and job.endpoint == "fast" and inference.in_flight() == 1
    assert job.loras == [{"name": "style", "weight": 0.8}]
    (endpoint, input_uri, inference_id) = inference.runtime.invoked[0]
    assert (endpoint, inference_id) == ("sdpipe-fast", job_id)
    invocation = json.loads(world.get(input_uri.removeprefix("s3://assets/")))
    assert invocation["model"]["sha256"] == SD15 and invocation["loras"][0]["weight"] == 0.8

    inference.finish(job_id, images=2)
    inference.finish(job_id, images=2)  # SageMaker's notification delivered twice
    job = inference.intake.ledger.require(job_id)
    assert job.status is JobStatus.SUCCEEDED and inference.in_flight() == 0
    assert job.outputs["images"] == [
        f"s3://assets/jobs/{job_id}/images/0.png",
        f"s3://assets/jobs/{job_id}/images/1.png",
    ]
    assert job.outputs["all_seeds"] == [7, 8]
    assert world.keys(f"jobs/{job_id}/") == [f"jobs/{job_id}/images/0.png", f"jobs/{job_id}/images/1.png",
                                             f"jobs/{job_id}/input.json", f"jobs/{job_id}/result.json"]  # fmt: skip
    rows = world.aws.get_resource("dynamodb").Table("generations").scan()["Items"]
    assert sorted(int(r["seed"]) for r in rows) == [7, 8] and rows[0]["model_hash"] == SD15[:10]
    assert world.event_types(job_id) == ["job.accepted", "job.running", "job.succeeded"]


def test_a_duplicate_delivery_makes_no_second_job_or_invocation(inference, world):
    first = inference.submit({"prompt": "a cat"}, "dup")
    assert inference.submit({"prompt": "a cat"}, "dup") == first
    assert len(inference.runtime.invoked) == 1
    assert world.event_types(first) == ["job.accepted", "job.running"]


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"prompt": ""}, "VALIDATION_ERROR", "prompt"),
        ({"prompt": "x", "width": 70}, "VALIDATION_ERROR", "params.width"),
        ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}, "MODEL_NOT_FOUND", "nope"),
        ({"prompt": "x <lora:missing:1>"}, "MODEL_NOT_FOUND", "missing"),
        ({"prompt": "x", "endpoint": "elsewhere"}, "ENDPOINT_NOT_FOUND", "elsewhere"),
    ],
)
def test_bad_requests_fail_before_any_invocation(inference, world, params, code, named):
    job = inference.intake.ledger.require(inference.submit(params, f"bad-{code}-{named}"))
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == code and named in job.error["message"]
    assert inference.runtime.invoked == [] and inference.in_flight() == 0


def test_img2img_checks_its_image_and_stores_it_small(inference):
    inline = base64.b64encode(png("blue") * 50).decode()
    job = inference.intake.ledger.require(inference.submit({"prompt": "x", "init_images": ["not an image"]}, "bad-img",
                                                           "img2img"))  # fmt: skip
    assert job.status is JobStatus.FAILED and "init_images[0]" in (job.error or {})["message"]
    good = inference.intake.ledger.require(inference.submit({"prompt": "x", "init_images": [inline]}, "img", "img2img"))
    assert good.status is JobStatus.RUNNING and good.params["init_images"][0].startswith("<inline data")


def test_an_endpoint_error_fails_the_job_with_the_containers_words_and_gives_the_slot_back(inference):
    job_id = inference.submit({"prompt": "a cat"}, "oom")
    inference.finish(job_id, failed=True)
    job = inference.intake.ledger.require(job_id)
    assert job.error == {"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"} and inference.in_flight() == 0


def test_a_throttled_invocation_is_left_for_the_redelivery(inference):
    inference.runtime.error = Throttled("slow down")
    with pytest.raises(Throttled):
        inference.submit({"prompt": "a cat"}, "throttled")
    inference.runtime.error = None
    job_id = inference.submit({"prompt": "a cat"}, "throttled")  # the message comes back
    assert inference.intake.ledger.require(job_id).status is JobStatus.RUNNING
    assert len(inference.runtime.invoked) == 1


def test_a_notification_before_the_job_is_recorded_comes_back_later(inference, world):
    ledger = inference.intake.ledger
    ledger.create(job_id="j-early", request_id="early", action="txt2img", status=JobStatus.ACCEPTED,
                  deadline_seconds=60, fields={})  # fmt: skip
    with pytest.raises(WorkInProgress):
        inference.finish("j-early")


def test_the_invocation_carries_what_chooses_the_checkpoints_config(inference, world):
    """Registration's findings (an SD2 v-prediction) and an A1111 <name>.yaml beside the file."""
    sd21 = "cd" * 32
    item = add_model(world, "v2-1_768-ema-pruned", sd21, family="sd2")
    world.aws.get_resource("dynamodb").Table("models").update_item(
        Key={"model_id": item["model_id"]}, UpdateExpression="SET details = :d",
        ExpressionAttributeValues={":d": {"prediction": "v_prediction", "in_channels": "4"}},
    )  # fmt: skip
    plain = inference.submit({"prompt": "a cat", "model": "v2-1_768-ema-pruned"}, request_id="g-1")
    model = json.loads(world.get(f"jobs/{plain}/input.json"))["model"]
    assert (model["family"], model["prediction"], model["original_config_uri"]) == ("sd2", "v_prediction", None)

    world.put("models/Stable-diffusion/v2-1_768-ema-pruned.yaml", b"model:\n  params:\n    parameterization: v\n")
    with_yaml = inference.submit({"prompt": "a cat", "model": "v2-1_768-ema-pruned"}, request_id="g-2")
    model = json.loads(world.get(f"jobs/{with_yaml}/input.json"))["model"]
    assert model["original_config_uri"] == "s3://assets/models/Stable-diffusion/v2-1_768-ema-pruned.yaml"


def test_the_sdxl_refiner_refines_images_and_does_not_start_from_noise(inference, world):
    add_model(world, "sd_xl_refiner_1.0", "ef" * 32, family="sdxl_refiner")
    refiner = {"prompt": "a cat", "model": "sd_xl_refiner_1.0"}
    refused = inference.intake.ledger.require(inference.submit(refiner, "r-1"))
    assert refused.status is JobStatus.FAILED and refused.error is not None
    assert refused.error["code"] == "VALIDATION_ERROR" and "use it with img2img" in refused.error["message"]
    image = base64.b64encode(png()).decode()
    refined = inference.submit(refiner | {"init_images": [image]}, "r-2", "img2img")
    assert inference.intake.ledger.require(refined).status is JobStatus.RUNNING
    assert json.loads(world.get(f"jobs/{refined}/input.json"))["model"]["family"] == "sdxl_refiner"


STOPPED_BY_THE_ENDPOINT = {"code": "CANCELLED", "message": "job j was cancelled; the endpoint stopped generating it"}


def test_a_cancel_asks_the_endpoint_to_stop_and_gives_the_slot_back_at_once(inference, world):
    job_id = inference.submit({"prompt": "a cat"}, "to-stop")
    control = JobControl(world.ledger(), stops=world.store)
    assert control.cancel(job_id, "enough").status is JobStatus.CANCELLED and inference.in_flight() == 0
    assert json.loads(world.get(f"jobs/{job_id}/stop.json")) == {"status": "CANCELLED", "reason": "enough"}
    inference.finish(job_id, error=STOPPED_BY_THE_ENDPOINT)  # the container stopped between two steps
    job = inference.intake.ledger.require(job_id)
    assert job.status is JobStatus.CANCELLED and job.error == {"code": "CANCELLED", "message": "enough"}
    assert world.event_types(job_id) == ["job.accepted", "job.running", "job.cancelled"]
    assert inference.in_flight() == 0


def test_the_endpoints_stop_ends_the_job_when_the_cancel_died_before_it_could(inference, world):
    """The cancel wrote the stop request and died before moving the job."""
    job_id = inference.submit({"prompt": "a cat"}, "half-cancelled")
    world.put(f"jobs/{job_id}/stop.json", b'{"status": "CANCELLED", "reason": "enough"}')
    inference.finish(job_id, error=STOPPED_BY_THE_ENDPOINT)
    job = inference.intake.ledger.require(job_id)
    assert job.status is JobStatus.CANCELLED and job.error == STOPPED_BY_THE_ENDPOINT and inference.in_flight() == 0


def generation_rows(world: World, job_id: str) -> list[dict]:
    table = world.aws.get_resource("dynamodb").Table("generations")
    return table.query(KeyConditionExpression="job_id = :j", ExpressionAttributeValues={":j": job_id})["Items"]


def test_a_success_arriving_after_the_cancel_leaves_no_images(inference, world):
    job_id = inference.submit({"prompt": "a cat"}, "late")
    JobControl(world.ledger(), stops=world.store).cancel(job_id, "enough")
    inference.finish(job_id, images=2)  # the endpoint was past its last step
    assert world.keys(f"jobs/{job_id}/images/") == [] and generation_rows(world, job_id) == []
    assert inference.intake.ledger.require(job_id).status is JobStatus.CANCELLED


def test_a_cancel_that_wins_while_the_images_are_written_leaves_neither_images_nor_rows(inference, world):
    job_id = inference.submit({"prompt": "a cat"}, "racing")
    ledger = inference.completion.ledger
    move = ledger.move

    def cancelled_first(*args, **kwargs):  # the cancel lands between the writes and the move
        JobControl(world.ledger(), stops=world.store).cancel(job_id, "enough")
        return move(*args, **kwargs)

    ledger.move = cancelled_first  # type: ignore[method-assign]
    inference.finish(job_id, images=2)
    assert world.keys(f"jobs/{job_id}/images/") == [] and generation_rows(world, job_id) == []
    assert world.keys(f"jobs/{job_id}/result.json") == []
    job = inference.intake.ledger.require(job_id)
    assert job.status is JobStatus.CANCELLED and job.outputs in (None, {})
    assert "job.succeeded" not in world.event_types(job_id) and inference.in_flight() == 0

    ledger.move = move  # type: ignore[method-assign]
    inference.finish(job_id, images=2)  # SageMaker's notification again: still nothing is kept
    assert world.keys(f"jobs/{job_id}/images/") == [] and generation_rows(world, job_id) == []
