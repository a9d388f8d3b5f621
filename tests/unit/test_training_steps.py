"""train_lora from the request through prepare, create, poll and fail, each step called as the
TrainLora workflow calls it, with SageMaker training and its logs faked."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from sdpipe.contracts.jobs import JobStatus
from sdpipe.errors import (
    DatasetNotFound,
    DatasetNotUsable,
    JobAlreadyFinished,
    ModelExists,
    ModelNotFound,
    NoLoraOutput,
)
from sdpipe.logic.inspection import InspectionLimits
from sdpipe.logic.registration import Registrar
from sdpipe.logic.training import LoraTraining
from sdpipe.settings import TrainingSettings
from tests.helpers import kohya_lora, safetensors_bytes
from tests.unit.world import (
    FakeImages,
    FakeLogs,
    FakeTraining,
    FakeWorkflows,
    World,
    add_dataset,
    add_model,
    envelope,
    machine_arn,
)

IMAGE = f"{'1' * 12}.dkr.ecr.us-east-1.amazonaws.com/sdpipe-training:latest"
SD15 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


@pytest.fixture
def training(world: World) -> LoraTraining:
    settings = TrainingSettings.model_validate(
        world.settings_values(
            train_lora_state_machine_arn=machine_arn("train"),
            training_image_uri=IMAGE,
            training_role_arn="arn:aws:iam::123456789012:role/training",
            training_poll_seconds=5,
        )
    )
    add_model(world, "v1-5-pruned-emaonly", SD15)
    add_dataset(world, "cats")
    return LoraTraining(
        settings=settings,
        ledger=world.ledger(),
        store=world.store,
        models=world.models,
        datasets=world.datasets,
        workflows=FakeWorkflows(),
        sagemaker=FakeTraining(),
        logs=FakeLogs(),
        images=FakeImages(),
    )


def request(training: LoraTraining, params: dict[str, object], request_id: str = "train-1") -> str:
    return training.handle_message(envelope("train_lora", params, request_id), "train_lora", "m-1")


def step(training: LoraTraining, name: str, **state: object) -> dict[str, object]:
    return training.step({"step": name, "state": state})


PARAMS = {"base_model": "v1-5-pruned-emaonly", "dataset": "cats", "family": "sd1", "config": {"max_train_steps": 8}}


def test_a_request_is_queued_prepared_created_and_followed_to_its_end(training, world):
    job_id = request(training, PARAMS)
    job = training.ledger.require(job_id)
    assert job.status is JobStatus.QUEUED and job.params["engine"] == "kohya"  # the stack's default engine
    assert training.workflows.started[job_id]["poll_seconds"] == 5  # type: ignore[attr-defined]

    assert step(training, "prepare", job_id=job_id) == {"training_job_name": f"sdpipe-{job_id}"}
    assert world.keys(f"jobs/{job_id}/") == [
        f"jobs/{job_id}/config/config.toml", f"jobs/{job_id}/config/dataset.toml", f"jobs/{job_id}/model.manifest",
    ]  # fmt: skip
    manifest = json.loads(world.get(f"jobs/{job_id}/model.manifest"))
    assert manifest == [{"prefix": "s3://assets/models/Stable-diffusion/"}, "v1-5-pruned-emaonly.safetensors"]

    step(training, "create", job_id=job_id)
    created = training.sagemaker.jobs[f"sdpipe-{job_id}"]["request"]  # type: ignore[attr-defined]
    assert created["HyperParameters"]["base_model_sha256"] == SD15
    assert created["AlgorithmSpecification"]["TrainingImage"].endswith("@sha256:" + "a" * 64)

    assert step(training, "poll", job_id=job_id)["job_status"] == "QUEUED"
    training.sagemaker.jobs[f"sdpipe-{job_id}"] |= {"SecondaryStatus": "Training"}  # type: ignore[attr-defined]
    training.logs.lines = ["step=3/8 epoch=1/2 loss=0.250000 lr=1.000e-04"]  # type: ignore[attr-defined]
    assert step(training, "poll", job_id=job_id) == {"status": "InProgress", "secondary": "Training",
                                                      "job_status": "RUNNING"}  # fmt: skip
    assert training.ledger.require(job_id).progress == {"step": 3, "total_steps": 8, "loss": 0.25, "epoch": 1,
                                                         "epochs": 2}  # fmt: skip
    assert "job.progress" in world.event_types(job_id)

    # The training job fails: SageMaker's reason and the log's last lines end the job.
    training.sagemaker.jobs[f"sdpipe-{job_id}"] |= {"TrainingJobStatus": "Failed", "FailureReason": "CUDA OOM"}  # type: ignore[attr-defined]
    answer = step(training, "fail", job_id=job_id, outcome={"status": "Failed", "secondary": "Failed"})
    assert answer["recorded"] is True
    job = training.ledger.require(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None and job.error["code"] == "TRAINING_FAILED"
    assert "CUDA OOM" in job.error["message"] and "step=3/8" in job.error["message"]
    with pytest.raises(JobAlreadyFinished):
        step(training, "prepare", job_id=job_id)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (PARAMS | {"base_model": "nothing-like-it"}, ModelNotFound),
        (PARAMS | {"dataset": "dogs"}, DatasetNotFound),
        (PARAMS | {"dataset": "broken"}, DatasetNotUsable),
    ],
)
def test_prepare_names_what_it_cannot_use(training, world, params, error):
    add_dataset(world, "broken", status="REJECTED")
    job_id = request(training, params, f"bad-{error.__name__}")
    with pytest.raises(error):
        step(training, "prepare", job_id=job_id)


def test_bad_params_fail_the_request_before_any_workflow(training):
    job = training.ledger.require(request(training, PARAMS | {"family": "sd3"}, "bad-family"))
    assert job.status is JobStatus.FAILED and job.error is not None and "params.family" in job.error["message"]
    assert training.workflows.started == {}  # type: ignore[attr-defined]


def test_how_a_training_job_ended_decides_how_the_job_ends(training):
    runtime = request(training, PARAMS, "runtime")
    step(training, "fail", job_id=runtime, outcome={"status": "Stopped", "secondary": "MaxRuntimeExceeded"})
    assert training.ledger.require(runtime).error["code"] == "TRAINING_TIMED_OUT"  # type: ignore[index]

    stopped = request(training, PARAMS, "stopped")
    step(training, "fail", job_id=stopped, outcome={"status": "Stopped", "secondary": "Stopped"})
    assert training.ledger.require(stopped).status is JobStatus.CANCELLED

    broken = request(training, PARAMS, "broken-step")
    step(training, "prepare", job_id=broken)
    cause = json.dumps({"errorType": "NoLoraOutput", "errorMessage": "no LoRA in model.tar.gz"})
    step(training, "fail", job_id=broken, failure={"Error": "NoLoraOutput", "Cause": cause},
         outcome={"status": "InProgress"})  # fmt: skip
    job = training.ledger.require(broken)
    assert job.error == {"code": NoLoraOutput.code, "message": "no LoRA in model.tar.gz"}
    assert training.sagemaker.stopped == [f"sdpipe-{broken}"]  # type: ignore[attr-defined]  # not left running


def model_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def registrar_for(world: World) -> Registrar:
    limits = InspectionLimits(header_cap=1 << 20, pickle_cap=1 << 20, chunk_size=64 * 1024)
    return Registrar(world.store, world.models, world.publisher, limits, ledger=world.ledger())


def finished_training(training: LoraTraining, world: World, files: dict[str, bytes], request_id: str) -> str:
    job_id = request(training, PARAMS, request_id)
    step(training, "prepare", job_id=job_id)
    step(training, "create", job_id=job_id)
    world.put(f"jobs/{job_id}/output/model.tar.gz", model_tar(files))
    training.sagemaker.jobs[f"sdpipe-{job_id}"] |= {  # type: ignore[attr-defined]
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://assets/jobs/{job_id}/output/model.tar.gz"},
        "BillableTimeInSeconds": 42,
    }
    return job_id


def test_every_lora_saved_is_registered_and_the_job_succeeds_with_them(training, world):
    training.registrar = lambda: registrar_for(world)
    lora = safetensors_bytes(kohya_lora())
    files = {"cats-j.safetensors": lora, "logs/events.out": b"tensorboard", "cats-j-000001.safetensors": lora}
    job_id = finished_training(training, world, files, "trained")
    assert step(training, "register", job_id=job_id) == {
        "models": ["models/Lora/cats-j.safetensors", "models/Lora/cats-j-000001.safetensors"]
    }
    job = training.ledger.require(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.outputs["billable_seconds"] == 42
    assert [m["status"] for m in job.outputs["models"]] == ["ACTIVE", "ACTIVE"]
    head = world.aws.get("s3").head_object(Bucket="assets", Key="models/Lora/cats-j.safetensors")
    assert head["Metadata"]["sdpipe-training-job"] == job_id and head["Metadata"]["sdpipe-base-model-sha256"] == SD15
    assert step(training, "register", job_id=job_id)["models"] == job.outputs["models"]  # a retry changes nothing


def test_an_artefact_without_a_lora_fails_the_step_and_a_foreign_file_is_left_alone(training, world):
    training.registrar = lambda: registrar_for(world)
    empty = finished_training(training, world, {"notes.txt": b"nothing"}, "no-lora")
    with pytest.raises(NoLoraOutput):
        step(training, "register", job_id=empty)
    world.put("models/Lora/mine.safetensors", b"someone else's")
    clash = finished_training(training, world, {"mine.safetensors": safetensors_bytes(kohya_lora())}, "clash")
    with pytest.raises(ModelExists):
        step(training, "register", job_id=clash)
    assert world.get("models/Lora/mine.safetensors") == b"someone else's"


def test_an_a1111_yaml_beside_the_base_goes_into_the_model_channel(training, world):
    """The trainer chooses its config from it, as inference does (a v-prediction SD 2.x fine-tune
    that registration took for epsilon)."""
    add_model(world, "v2-finetune", "cd" * 32, family="sd2")
    world.put("models/Stable-diffusion/v2-finetune.yaml", b"model:\n  params:\n    parameterization: v\n")
    job_id = request(training, PARAMS | {"base_model": "v2-finetune", "family": "sd2"}, "train-yaml")
    step(training, "prepare", job_id=job_id)
    manifest = json.loads(world.get(f"jobs/{job_id}/model.manifest"))
    assert manifest[1:] == ["v2-finetune.safetensors", "v2-finetune.yaml"]
    step(training, "create", job_id=job_id)
    created = training.sagemaker.jobs[f"sdpipe-{job_id}"]["request"]  # type: ignore[attr-defined]
    assert created["HyperParameters"]["original_config"] == "v2-finetune.yaml"
