"""Datasets on the local stack: the _READY marker registers a Kohya-layout folder, with its problems."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
from click.testing import CliRunner
from PIL import Image

from sdpipe_client.cli import main
from sdpipe_client.client import Sdpipe
from sdpipe_client.datasets import DatasetExists, Datasets, plan_dataset
from sdpipe_local.assets import create_tiny_dataset


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def client(aws_env, stack) -> Datasets:
    return Datasets(Sdpipe.for_stack(stack.stack_name))


def dataset_events(listener, name: str, count: int = 1) -> list[dict]:
    def mine(events):
        return [e for e in events if (e.get("dataset") or {}).get("name") == name]

    listener.wait_for(lambda events: len(mine(events)) >= count)
    time.sleep(0.5)  # a duplicate would arrive now
    return mine(listener.drain())


def test_uploading_a_concept_folder_registers_the_dataset(client, listener, tmp_path):
    name = f"style-{uuid.uuid4().hex[:6]}"
    folder = create_tiny_dataset(tmp_path, concept="mystyle", repeats=10, count=3, size=64)
    record = client.upload(plan_dataset(folder, name))
    assert record.status.value == "REGISTERED" and record.error is None
    assert [(c.folder, c.concept, c.repeats, c.images, c.captions) for c in record.concepts] == [
        ("10_mystyle", "mystyle", 10, 3, 3)
    ]
    assert record.resolutions == {"64x64": 3} and record.steps_per_epoch_at_batch_1 == 30
    assert record.problems == []
    [event] = dataset_events(listener, name)
    assert event["type"] == "dataset.registered" and event["dataset"]["images"] == 3


def test_problems_are_named_and_an_unreadable_image_rejects_the_dataset(stack, client, listener):
    name = f"mixed-{uuid.uuid4().hex[:6]}"
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    files = {
        "5_cat/a.png": image_bytes(96, 64),
        "5_cat/a.txt": b"a cat",
        "5_cat/b.jpg": image_bytes(80, 120, "JPEG"),  # no caption
        "5_cat/c.webp": image_bytes(48, 48, "WEBP"),
        "5_cat/c.txt": b"another cat",
        "5_cat/broken.png": b"this is not a png at all",
        "5_cat/broken.txt": b"caption of a broken image",
        "dogs/d.png": image_bytes(64, 64),  # no repeat count
        "notes.md": b"readme",
    }
    for key, body in files.items():  # what `aws s3 sync` does
        s3.put_object(Bucket=bucket, Key=f"datasets/{name}/{key}", Body=body)
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/_READY", Body=b"")
    record = client.wait(name)
    assert record.status.value == "REJECTED"
    assert record.error["code"] == "INVALID_DATASET" and "5_cat/broken.png" in record.error["message"]
    problems = {(p.code, p.path, p.severity.value) for p in record.problems}
    assert ("UNREADABLE_IMAGE", "5_cat/broken.png", "error") in problems
    assert ("MISSING_CAPTION", "5_cat/b.jpg", "warning") in problems
    assert ("NO_REPEAT_COUNT", "dogs/", "warning") in problems
    assert ("FILE_OUTSIDE_CONCEPT", "notes.md", "warning") in problems
    [concept] = record.concepts
    assert (concept.images, concept.captions, concept.repeats) == (3, 2, 5)
    assert concept.resolutions == {"48x48": 1, "80x120": 1, "96x64": 1}
    [event] = dataset_events(listener, name)
    assert event["type"] == "dataset.rejected" and event["error"]["code"] == "INVALID_DATASET"


def test_a_half_uploaded_folder_is_not_registered_until_the_marker(stack, client):
    name = f"half-{uuid.uuid4().hex[:6]}"
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/3_x/a.png", Body=image_bytes(32, 32))
    stack.wait_idle()  # the image's event has been handled
    assert client.find(name) is None
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/_READY", Body=b"")
    assert client.wait(name).images == 1


def test_an_empty_dataset_is_rejected(stack, client, listener):
    name = f"empty-{uuid.uuid4().hex[:6]}"
    stack.client("s3").put_object(Bucket=stack.outputs["AssetsBucketName"], Key=f"datasets/{name}/_READY", Body=b"")
    record = client.wait(name)
    assert record.status.value == "REJECTED" and record.error["code"] == "EMPTY_DATASET"
    assert dataset_events(listener, name)[0]["type"] == "dataset.rejected"


def test_a_duplicate_marker_event_changes_nothing(stack, client, listener, tmp_path):
    name = f"dup-{uuid.uuid4().hex[:6]}"
    record = client.upload(plan_dataset(create_tiny_dataset(tmp_path, count=2), name))
    assert len(dataset_events(listener, name)) == 1
    sqs = stack.client("sqs")
    key = f"datasets/{name}/_READY"
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": stack.outputs["AssetsBucketName"]}, "object": {"key": key, "size": 0}},
            }
        ]
    }
    for _ in range(2):
        sqs.send_message(QueueUrl=stack.outputs["DatasetObjectsQueueUrl"], MessageBody=json.dumps(event))
    stack.wait_idle()
    assert len(dataset_events(listener, name)) == 1
    assert client.describe(name).marker_version == record.marker_version


def test_uploading_over_an_existing_dataset_needs_replace_and_delete_removes_it(client, listener, stack, tmp_path):
    name = f"again-{uuid.uuid4().hex[:6]}"
    client.upload(plan_dataset(create_tiny_dataset(tmp_path / "one", count=2), name))
    with pytest.raises(DatasetExists):
        client.upload(plan_dataset(create_tiny_dataset(tmp_path / "two", count=3), name))
    assert client.upload(plan_dataset(create_tiny_dataset(tmp_path / "two", count=3), name), replace=True).images == 3
    assert client.delete(name) == 7  # 3 images, 3 captions, the marker
    listed = stack.client("s3").list_objects_v2(Bucket=stack.outputs["AssetsBucketName"], Prefix=f"datasets/{name}/")
    assert listed.get("KeyCount", 0) == 0
    assert name not in {r.name for r in client.all()}
    assert [e["type"] for e in dataset_events(listener, name, 4)] == [
        "dataset.registered",
        "dataset.deleted",  # --replace deletes the old files and record first
        "dataset.registered",
        "dataset.deleted",
    ]


def test_datasets_commands(aws_env, stack, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps cells to the terminal's width
    name = f"cli-{uuid.uuid4().hex[:6]}"
    folder = create_tiny_dataset(tmp_path, concept="ink", repeats=4, count=2)

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["--stack", stack.stack_name, "datasets", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    uploaded = json.loads(run("upload", str(folder), "--name", name, "--json"))
    assert uploaded["status"] == "REGISTERED" and uploaded["concepts"][0]["repeats"] == 4
    assert name in run("list") and "ink x4" in run("list")
    described = run("describe", name)
    assert "4_ink" in described and "64x64 (2)" in described
    assert f"deleted dataset {name} (5 files)" in run("delete", name, "--yes")
