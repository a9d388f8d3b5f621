"""Chunked uploads (plan, resume, complete, abort) and the jobs' own controls (read, cancel,
cancel_job requests, the sweeper), on in-process moto."""

from __future__ import annotations

import json

import pytest

from sdpipe.adapters.multipart import MultipartUploads
from sdpipe.adapters.sagemaker import SageMakerTraining
from sdpipe.contracts.jobs import JobStatus, job_id_for
from sdpipe.contracts.uploads import PART_URL_BATCH, AbortUpload, CompleteUpload, CreateUpload, PartUrls, ResumeUpload
from sdpipe.errors import (
    JobAlreadyFinished,
    JobNotCancellable,
    JobNotFound,
    ModelExists,
    UploadFinished,
    UploadPartsInvalid,
    ValidationFailed,
)
from sdpipe.logic.job_control import JobControl, public_view
from sdpipe.logic.uploads import ModelUploads
from sdpipe.settings import UploadSettings
from tests.unit.world import FakeTraining, World, envelope

MIB = 1024 * 1024
SIZE = 9 * MIB  # two parts: 8 MiB and 1 MiB


@pytest.fixture
def uploads(world: World) -> ModelUploads:
    settings = UploadSettings.model_validate(world.settings_values())
    return ModelUploads(world.ledger(), world.store, MultipartUploads("assets", world.aws), settings)


BASE = {"name": "v1-5", "sha256": "6c" * 32, "s3_key": "models/Stable-diffusion/v1-5.safetensors"}
TRAINING = {"name": "sdpipe-j-train", "base_model": BASE, "dataset": {"name": "cats"}}


def create(uploads: ModelUploads, request_id: str = "up-1", **fields: object) -> dict:
    values = {"operation": "create_upload", "type": "lora", "filename": "style.safetensors", "size": SIZE,
              "request_id": request_id} | fields  # fmt: skip
    return uploads.create(CreateUpload.model_validate(values))


def send(world: World, plan: dict, parts: list[dict]) -> list[dict]:
    sent = []
    for part in parts:
        length = part["end"] - part["start"] + 1
        answer = world.aws.get("s3").upload_part(Bucket="assets", Key=plan["key"], UploadId=_upload_id(world, plan),
                                                 PartNumber=part["part_number"], Body=b"\1" * length)  # fmt: skip
        sent.append({"part_number": part["part_number"], "etag": answer["ETag"].strip('"')})
    return sent


def _upload_id(world: World, plan: dict) -> str:
    return str(world.ledger().require(plan["job_id"]).upload.upload_id)  # type: ignore[union-attr]


def test_an_upload_is_planned_resumed_and_completed_once(uploads, world):
    plan = create(uploads)
    assert [p["part_number"] for p in plan["parts"]] == [1, 2] and plan["parts_done"] == []
    first = send(world, plan, plan["parts"][:1])
    assert create(uploads)["parts_done"] == first  # the same request id resumes it
    resumed = uploads.resume(ResumeUpload(operation="resume_upload", job_id=plan["job_id"]))
    assert [p["part_number"] for p in resumed["parts"]] == [2]
    with pytest.raises(UploadPartsInvalid, match="parts 2 were not listed"):
        uploads.complete(CompleteUpload(operation="complete_upload", job_id=plan["job_id"], parts=first))
    done = first + send(world, plan, resumed["parts"])
    answer = uploads.complete(CompleteUpload(operation="complete_upload", job_id=plan["job_id"], parts=done))
    assert answer["phase"] == "registering" and answer["key"] == "models/Lora/style.safetensors"
    assert uploads.complete(CompleteUpload(operation="complete_upload", job_id=plan["job_id"], parts=done)) == answer
    assert world.aws.get("s3").head_object(Bucket="assets", Key=answer["key"])["ContentLength"] == SIZE
    with pytest.raises(UploadFinished):
        uploads.abort(AbortUpload(operation="abort_upload", job_id=plan["job_id"]))


def test_a_large_upload_gets_its_part_urls_a_batch_at_a_time(uploads, world):
    """Presigning every part at once took seconds for a large file, and 10,000 URLs do not fit in
    a Lambda's 6 MB answer: the plan lists every part, the first batch with URLs."""
    size = 150 * 8 * MIB
    plan = create(uploads, size=size, filename="big.safetensors")
    assert plan["part_count"] == len(plan["parts"]) == 150
    assert [p["part_number"] for p in plan["parts"] if "url" in p] == list(range(1, PART_URL_BATCH + 1))
    asked = uploads.part_urls(PartUrls(operation="part_urls", job_id=plan["job_id"], part_numbers=[150, 65, 65]))
    assert [u["part_number"] for u in asked["urls"]] == [65, 150]
    assert all(f"partNumber={u['part_number']}&" in u["url"] + "&" for u in asked["urls"])
    with pytest.raises(ValidationFailed, match=r"151.*outside this upload's 1\.\.150"):
        uploads.part_urls(PartUrls(operation="part_urls", job_id=plan["job_id"], part_numbers=[1, 151]))
    with pytest.raises(JobNotFound):
        uploads.part_urls(PartUrls(operation="part_urls", job_id="j-nope", part_numbers=[1]))


def test_the_client_asks_for_part_urls_ahead_of_the_parts_and_again_when_they_expire(uploads):
    from sdpipe_client.transfer import PartUrls as ClientPartUrls

    plan = create(uploads, size=150 * 8 * MIB, filename="big.safetensors")
    asked: list[list[int]] = []

    class Functions:  # the Uploads function, called in-process
        def invoke_api(self, _name: str, request: dict) -> dict:
            asked.append(request["part_numbers"])
            return uploads.part_urls(PartUrls.model_validate(request))

    known = {p["part_number"]: p["url"] for p in plan["parts"] if "url" in p}
    with ClientPartUrls(Functions(), plan["job_id"], list(range(1, 151)), known) as urls:  # type: ignore[arg-type]
        got = [urls.get(n) for n in range(1, 151)]
        assert all(f"partNumber={n}&" in url for n, url in enumerate(got, start=1))
        assert asked[:1] == [list(range(PART_URL_BATCH + 1, 2 * PART_URL_BATCH + 1))]  # asked ahead, not at 65
        assert sorted(n for batch in asked for n in batch) == list(range(PART_URL_BATCH + 1, 151))
        asked.clear()
        assert "partNumber=140&" in urls.refresh(140) and asked == [list(range(140, 151))]


def test_a_sha256_named_at_completion_is_on_the_job_before_s3_completes(uploads, world):
    plan = create(uploads)
    done = send(world, plan, plan["parts"])
    seen_at_completion = []
    complete_in_s3 = uploads.uploads.complete

    def completing(*args: object) -> str:  # what registration, set off by S3, would read
        seen_at_completion.append(world.ledger().require(plan["job_id"]).params.get("sha256"))
        return complete_in_s3(*args)  # type: ignore[arg-type]

    uploads.uploads.complete = completing  # type: ignore[method-assign]
    request = {"operation": "complete_upload", "job_id": plan["job_id"], "parts": done, "sha256": "AB" * 32}
    uploads.complete(CompleteUpload.model_validate(request))
    assert seen_at_completion == ["ab" * 32]

    other = create(uploads, "up-2", filename="other.safetensors", sha256="cd" * 32)
    request = {"operation": "complete_upload", "job_id": other["job_id"], "parts": send(world, other, other["parts"]),
               "sha256": "ab" * 32}  # fmt: skip
    with pytest.raises(ValidationFailed, match="is not the cdcd"):
        uploads.complete(CompleteUpload.model_validate(request))


def test_an_aborted_upload_is_cancelled_and_cannot_be_resumed(uploads, world):
    plan = create(uploads, "up-abort")
    assert uploads.abort(AbortUpload(operation="abort_upload", job_id=plan["job_id"]))["status"] == "CANCELLED"
    with pytest.raises(UploadFinished, match="CANCELLED"):
        uploads.resume(ResumeUpload(operation="resume_upload", job_id=plan["job_id"]))
    assert create(uploads, "up-abort")["status"] == "CANCELLED"  # the finished job answers its request id
    with pytest.raises(JobNotFound):
        uploads.resume(ResumeUpload(operation="resume_upload", job_id="j-nothing"))


def test_uploads_refuse_what_they_must_not_do(uploads, world):
    with pytest.raises(ValidationFailed, match="filename"):
        create(uploads, "bad-name", filename="../escape.safetensors")
    world.put("models/Lora/taken.safetensors", b"x")
    with pytest.raises(ModelExists):
        create(uploads, "taken", filename="taken.safetensors")
    create(uploads, "same-id")
    with pytest.raises(ValidationFailed, match="belongs to another upload"):
        create(uploads, "same-id", size=SIZE + 1)


@pytest.fixture
def control(world: World) -> JobControl:
    return JobControl(world.ledger(), MultipartUploads("assets", world.aws), FakeTraining(), world.store)


def test_cancel_ends_an_open_job_once_and_aborts_what_it_held(control, uploads, world):
    plan = create(uploads, "to-cancel")
    cancelled = control.cancel(plan["job_id"], "changed my mind")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error == {"code": "CANCELLED",
                                                                           "message": "changed my mind"}  # fmt: skip
    assert world.aws.get("s3").list_multipart_uploads(Bucket="assets").get("Uploads", []) == []
    with pytest.raises(JobAlreadyFinished):
        control.cancel(plan["job_id"], "again")
    view = public_view(control.get(plan["job_id"]))
    assert "claim_token" not in view and "pending_events" not in view and view["status"] == "CANCELLED"
    with pytest.raises(JobNotFound):
        control.get("j-missing")
    assert [job.job_id for job in control.recent("upload_model")] == [plan["job_id"]]


def test_a_training_job_is_stopped_and_an_endpoint_workflow_cannot_be_cancelled(control, world):
    ledger = control.ledger
    ledger.create(job_id="j-train", request_id="t", action="train_lora", status=JobStatus.RUNNING, deadline_seconds=60,
                  fields={"training": TRAINING})  # fmt: skip
    assert isinstance(control.training, SageMakerTraining)
    control.training.jobs["sdpipe-j-train"] = {"TrainingJobStatus": "InProgress"}  # type: ignore[attr-defined]
    control.cancel("j-train", "stop it")
    assert control.training.stopped == ["sdpipe-j-train"]  # type: ignore[attr-defined]
    ledger.create(job_id="j-deploy", request_id="d", action="deploy_endpoint", status=JobStatus.RUNNING,
                  deadline_seconds=60, fields={})  # fmt: skip
    with pytest.raises(JobNotCancellable):
        control.cancel("j-deploy", "no")


def test_a_cancel_job_request_is_a_job_of_its_own(control, world):
    control.ledger.create(job_id="j-target", request_id="target", action="txt2img", status=JobStatus.ACCEPTED,
                          deadline_seconds=60, fields={})  # fmt: skip
    body = envelope("cancel_job", {"job_id": "j-target"}, "cancel-1")
    control.handle_cancel_request(body, "cancel_job", "m-1")
    control.handle_cancel_request(body, "cancel_job", "m-1")  # delivered twice
    assert control.get("j-target").status is JobStatus.CANCELLED
    cancel_job = control.ledger.require(job_id_for("cancel-1"))
    assert cancel_job.status is JobStatus.SUCCEEDED and cancel_job.outputs == {"cancelled_job_id": "j-target"}
    unknown = envelope("cancel_job", {"job_id": "j-unknown"}, "cancel-2")
    control.handle_cancel_request(unknown, "cancel_job", "m-2")
    types = world.event_types()
    assert types.count("job.cancelled") == 1 and types.count("job.succeeded") == 1 and "job.failed" in types


def test_the_sweeper_times_out_jobs_past_their_deadline_and_nothing_else(control, uploads, world):
    plan = create(uploads, "late")
    control.ledger.create(job_id="j-fresh", request_id="fresh", action="txt2img", status=JobStatus.ACCEPTED,
                          deadline_seconds=3600, fields={})  # fmt: skip
    world.aws.get_resource("dynamodb").Table("jobs").update_item(
        Key={"job_id": plan["job_id"]}, UpdateExpression="SET deadline = :d", ExpressionAttributeValues={":d": "2000"}
    )
    assert control.sweep() == [plan["job_id"]]
    late = control.get(plan["job_id"])
    assert late.status is JobStatus.TIMED_OUT and "multipart upload was aborted" in (late.error or {})["message"]
    assert control.get("j-fresh").status is JobStatus.ACCEPTED
    assert control.sweep() == []


def test_a_timed_out_generation_asks_its_endpoint_to_stop_and_an_upload_asks_nobody(control, uploads, world):
    plan = create(uploads, "late-upload")
    control.ledger.create(job_id="j-slow", request_id="slow", action="txt2img", status=JobStatus.RUNNING,
                          deadline_seconds=3600, fields={"endpoint": "fast"})  # fmt: skip
    jobs = world.aws.get_resource("dynamodb").Table("jobs")
    for job_id in ("j-slow", plan["job_id"]):
        jobs.update_item(Key={"job_id": job_id}, UpdateExpression="SET deadline = :d",
                         ExpressionAttributeValues={":d": "2000"})  # fmt: skip
    assert sorted(control.sweep()) == sorted(["j-slow", plan["job_id"]])
    stop = json.loads(world.get("jobs/j-slow/stop.json"))
    assert stop["status"] == "TIMED_OUT" and "did not finish by its deadline" in stop["reason"]
    assert world.keys(f"jobs/{plan['job_id']}/") == []
