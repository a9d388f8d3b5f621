"""train_lora on the local stack: the TrainLora workflow, the SageMaker training stand-in running the
builtin engine as a process, every saved LoRA registered; and each way a training ends badly."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.training_logs import TrainingLogs
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.jobs import JobStatus
from sdpipe.contracts.workflows import DescribedTrainingJob
from sdpipe.errors import NoLoraOutput
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.training import LoraTraining
from sdpipe.settings import TrainingSettings
from sdpipe_client.cli import main
from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.datasets import Datasets, plan_dataset
from sdpipe_client.stack import StackOutputs
from sdpipe_local.assets import create_tiny_dataset, drop_checkpoint
from sdpipe_local.events_listener import EventsListener
from tests.helpers import wait_until
from tests.integration.helpers import pointed_at, wait_active

QUICK = {"resolution": 64, "network_dim": 4, "network_alpha": 4, "learning_rate": 1e-3, "train_batch_size": 2}


@pytest.fixture(scope="module")
def training(sdpipe_stack, tiny_checkpoints, tmp_path_factory):
    stack = sdpipe_stack
    with pointed_at(stack):
        s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
        for family in ("sd1", "sd2", "sdxl"):
            drop_checkpoint(
                s3, bucket, tiny_checkpoints[family], f"models/Stable-diffusion/train/base-{family}.safetensors"
            )
        client = Sdpipe(StackOutputs(stack.outputs))
        folder = tmp_path_factory.mktemp("dataset")
        Datasets(client).upload(
            plan_dataset(create_tiny_dataset(folder, concept="mystyle", repeats=2, count=4), "trainset")
        )
        for family in ("sd1", "sd2", "sdxl"):
            wait_active(stack, f"models/Stable-diffusion/train/base-{family}.safetensors")
        yield stack, client


# A base model as a training job records it (the checkpoint itself is not read by this test).
UNUSED_BASE = {"name": "base", "sha256": "0" * 64, "s3_key": "models/Stable-diffusion/base.safetensors"}


def train(client: Sdpipe, **params) -> str:
    request = {"base_model": "base-sd1", "dataset": "trainset", "family": "sd1", "config": dict(QUICK)}
    for key, value in params.items():
        if key == "config":
            request["config"] |= value
        else:
            request[key] = value
    return client.submit("train_lora", request)


@pytest.fixture
def job_listener(training) -> EventsListener:
    stack, _ = training
    return EventsListener(stack, stack.outputs["EventsTopicArn"], {"type": [{"prefix": "job."}]})


def job_events(listener: EventsListener, job_id: str, until: set[str], timeout: float = 30) -> list[dict]:
    listener.wait_for(lambda events: any(e["job_id"] == job_id and e["type"] in until for e in events), timeout)
    return [e for e in listener.events if e["job_id"] == job_id]


def test_cli_trains_registers_every_saved_lora_and_the_lora_works(training, job_listener, tmp_path):
    stack, _ = training
    output_name = f"mystyle-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "lora.toml"
    config.write_text(
        "[network]\nnetwork_dim = 4\nnetwork_alpha = 4\n\n[training]\nresolution = 64\nmax_train_epochs = 2\n"
        f'save_every_n_epochs = 1\nlearning_rate = 1e-3\noutput_name = "{output_name}"\n'
    )
    result = CliRunner().invoke(
        main,
        ["--stack", stack.stack_name, "train", "--base-model", "base-sd1", "--dataset", "trainset", "--family", "sd1",
         "--config", str(config), "--set", "train_batch_size=2", "--wait", "--timeout", "300"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "RUNNING" in result.stderr and "loss" in result.stderr  # status and loss shown while it trains
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "SUCCEEDED"
    models = summary["outputs"]["models"]
    assert sorted(m["s3_key"] for m in models) == [
        f"models/Lora/{output_name}-000001.safetensors",
        f"models/Lora/{output_name}.safetensors",
    ]
    assert all(m["status"] == "ACTIVE" and m["family"] == "sd1" for m in models)
    record = wait_active(stack, f"models/Lora/{output_name}.safetensors")
    assert record["source"] == "training"
    assert record["training"]["dataset"] == "trainset" and record["training"]["job_id"] == summary["job_id"]
    base = wait_active(stack, "models/Stable-diffusion/train/base-sd1.safetensors")
    assert record["training"]["base_model_sha256"] == base["sha256"]
    local = tmp_path / "trained.safetensors"
    stack.client("s3").download_file(stack.outputs["AssetsBucketName"], record["s3_key"], str(local))
    with safe_open(str(local), "pt") as trained:
        metadata, keys = trained.metadata(), list(trained.keys())
    assert metadata["ss_network_dim"] == "4" and metadata["ss_new_sd_model_hash"] == base["sha256"]
    assert metadata["ss_num_epochs"] == "2" and json.loads(metadata["ss_dataset_dirs"])["2_mystyle"]["n_repeats"] == 2
    assert metadata["sshs_model_hash"].startswith(record["tensor_hash"])
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_text_model_") for k in keys)
    events = job_events(job_listener, summary["job_id"], {"job.succeeded"})
    assert [e["type"] for e in events if e["type"] != "job.progress"] == [
        "job.accepted",
        "job.running",
        "job.succeeded",
    ]


@pytest.mark.parametrize(
    ("family", "metadata"),
    [
        ("sdxl", {"ss_base_model_version": "sdxl_base_v1-0"}),
        # SD 2.x 768: the v-prediction loss, said as sd-scripts says it ("v").
        ("sd2", {"ss_base_model_version": "sd_v2_v", "ss_v2": "True", "modelspec.prediction_type": "v"}),
    ],
)
def test_other_families_train_and_their_loras_say_which_base(training, family, metadata):
    stack, client = training
    name = f"{family}-{uuid.uuid4().hex[:6]}"
    job = client.wait(
        train(client, base_model=f"base-{family}", family=family,
              config={"max_train_steps": 2, "output_name": name}),
        timeout_s=300,
    )  # fmt: skip
    [model] = job["outputs"]["models"]
    assert model["family"] == family
    recorded = wait_active(stack, model["s3_key"])["metadata"]
    assert {key: recorded.get(key) for key in metadata} == metadata


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"config": {"network_dimension": 8}}, "VALIDATION_ERROR", "network_dimension"),
        ({"config": {"output_dir": "/tmp"}}, "VALIDATION_ERROR", "output_dir"),
        ({"config": {"network_dim": 0}}, "VALIDATION_ERROR", "params.config.network_dim"),
        ({"config": {"optimizer_type": "AdamW8bit"}}, "VALIDATION_ERROR", "optimizer_type"),
        ({"family": "sdxl"}, "MODEL_NOT_USABLE", "sd1"),
        ({"base_model": "no-such-model"}, "MODEL_NOT_FOUND", "no-such-model"),
        ({"dataset": "never-uploaded"}, "DATASET_NOT_FOUND", "never-uploaded"),
    ],
)
def test_bad_requests_fail_with_the_reason(training, job_listener, params, code, named):
    _, client = training
    job_id = train(client, **params)
    with pytest.raises(JobFailed) as failure:
        client.wait(job_id, timeout_s=60)
    job = client.get_job(job_id)
    assert job["error"]["code"] == code and named in job["error"]["message"]
    assert failure.value.code == code
    assert job_events(job_listener, job_id, {"job.failed"})[-1]["type"] == "job.failed"


def test_a_rejected_dataset_cannot_be_trained_on(training):
    stack, client = training
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    s3.put_object(Bucket=bucket, Key="datasets/broken-set/3_x/a.png", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="datasets/broken-set/_READY", Body=b"")
    Datasets(client).wait("broken-set")
    with pytest.raises(JobFailed):
        client.wait(train(client, dataset="broken-set"), timeout_s=60)


def test_a_crashing_training_fails_with_sagemakers_reason_and_the_log(training):
    _, client = training
    # clip_skip past the tiny text encoder's two layers makes the process crash mid-training.
    job_id = train(client, config={"clip_skip": 9, "max_train_steps": 2})
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=300)
    error = client.get_job(job_id)["error"]
    assert error["code"] == "TRAINING_FAILED"
    assert "AlgorithmError" in error["message"] and "last log lines" in error["message"]


def test_max_runtime_stops_the_training_and_fails_the_job(training):
    stack, client = training
    job_id = train(client, max_runtime_seconds=8, config={"max_train_steps": 100_000})
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=240)
    job = client.get_job(job_id)
    assert job["error"]["code"] == "TRAINING_TIMED_OUT"
    described = stack.client("sagemaker").describe_training_job(TrainingJobName=job["training"]["name"])
    assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


def test_cancel_stops_a_running_training(training):
    stack, client = training
    job_id = train(client, config={"max_train_steps": 100_000})
    wait_until(lambda: (client.find_job(job_id) or {}).get("status") == "RUNNING", 120, every=0.5,
               what="the training starting")  # fmt: skip
    result = CliRunner().invoke(main, ["--stack", stack.stack_name, "jobs", "cancel", job_id], catch_exceptions=False)
    assert result.exit_code == 0 and "CANCELLED" in result.stdout
    name = client.get_job(job_id)["training"]["name"]
    sagemaker = stack.client("sagemaker")
    wait_until(lambda: sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped", 60,
               every=0.5, what="the training job stopping")  # fmt: skip
    stack.wait_idle(timeout_s=120)  # the workflow sees Stopped and ends without touching the job
    job = client.get_job(job_id)
    assert job["status"] == "CANCELLED" and not (job.get("outputs") or {}).get("models")


def test_a_duplicate_request_trains_once(training):
    stack, client = training
    request_id = f"dup-{uuid.uuid4().hex}"
    params = {
        "base_model": "base-sd1",
        "dataset": "trainset",
        "family": "sd1",
        "config": QUICK | {"max_train_steps": 2},
    }
    for _ in range(2):
        client.submit("train_lora", params, request_id=request_id)
    job = client.wait(client.submit("train_lora", params, request_id=request_id), timeout_s=300)
    summaries = stack.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert [s["TrainingJobName"] for s in summaries].count(job["training"]["name"]) == 1
    assert len(job["outputs"]["models"]) == 1


def test_a_training_job_without_a_lora_in_its_output_fails_the_job(training, job_listener):
    """The register step and the workflow's failure step, in-process against the stack, with a
    SageMaker whose Completed job left a model.tar.gz holding no LoRA."""
    stack, _ = training
    bucket = stack.outputs["AssetsBucketName"]
    job_id = f"j-nolora{uuid.uuid4().hex[:8]}"
    key = f"jobs/{job_id}/output/model.tar.gz"
    artefact = io.BytesIO()
    with tarfile.open(fileobj=artefact, mode="w:gz") as archive:
        notes = b"only a log"
        member = tarfile.TarInfo("notes.txt")
        member.size = len(notes)
        archive.addfile(member, io.BytesIO(notes))
    stack.client("s3").put_object(Bucket=bucket, Key=key, Body=artefact.getvalue())

    class CompletedWithoutLora:
        def describe(self, name: str) -> DescribedTrainingJob:
            return DescribedTrainingJob(status="Completed", artefact_uri=f"s3://{bucket}/{key}")

        def stop(self, name: str) -> bool:
            return False

    outputs = stack.outputs
    settings = TrainingSettings(
        assets_bucket_name=bucket,
        models_table_name=outputs["ModelsTableName"],
        events_topic_arn=outputs["EventsTopicArn"],
        jobs_table_name=outputs["JobsTableName"],
        endpoints_table_name=outputs["EndpointsTableName"],
        generations_table_name=outputs["GenerationsTableName"],
        datasets_table_name=outputs["DatasetsTableName"],
        stack_name=stack.stack_name,
        training_image_uri=stack.outputs["TrainingRepositoryUri"] + ":latest",
    )
    steps = LoraTraining(
        settings=settings,
        ledger=JobLedger.from_settings(settings),
        store=ObjectStore(bucket),
        models=ModelsTable(outputs["ModelsTableName"]),
        datasets=DatasetsTable(outputs["DatasetsTableName"]),
        workflows=Workflows(),
        sagemaker=CompletedWithoutLora(),  # type: ignore[arg-type]
        logs=TrainingLogs(),
    )
    steps.ledger.create(
        job_id=job_id,
        request_id=job_id,
        action="train_lora",
        status=JobStatus.RUNNING,
        deadline_seconds=600,
        fields={
            "params": {"base_model": "base-sd1", "dataset": "trainset", "family": "sd1"},
            "training": {"name": f"sdpipe-{job_id}", "base_model": UNUSED_BASE, "dataset": {"name": "d"}},
        },
    )
    with pytest.raises(NoLoraOutput) as raised:
        steps.register(job_id)
    cause = json.dumps({"errorType": "NoLoraOutput", "errorMessage": str(raised.value)})
    steps.step({"step": "fail", "state": {"job_id": job_id, "failure": {"Error": "NoLoraOutput", "Cause": cause},
                                         "outcome": {"status": "Completed"}}})  # fmt: skip
    job = steps.ledger.require(job_id)
    assert job.status == "FAILED" and job.error is not None and job.error["code"] == "NO_LORA_OUTPUT"
    assert "holds no .safetensors LoRA" in job.error["message"]
    assert job_events(job_listener, job_id, {"job.failed"})[-1]["error"]["code"] == "NO_LORA_OUTPUT"
