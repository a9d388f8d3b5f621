"""Datasets registered from their marker, checked, re-registered and deleted; request files
published as requests; on in-process moto."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.errors import RequestNotJson
from sdpipe.logic.datasets import DatasetCatalog
from sdpipe.logic.request_files import RequestFiles
from tests.unit.world import World, s3_event


def image(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "green").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def catalog(world: World) -> DatasetCatalog:
    return DatasetCatalog(world.store, world.datasets, world.publisher)


def drop_marker(world: World, catalog: DatasetCatalog, name: str) -> None:
    world.put(f"datasets/{name}/_READY", b"")
    catalog.handle_notification(S3EventNotification.model_validate(s3_event(f"datasets/{name}/_READY")))


def test_a_kohya_folder_is_registered_with_its_concepts_once_per_marker(world, catalog):
    for index in range(3):
        world.put(f"datasets/cats/10_cat/{index}.png", image())
        world.put(f"datasets/cats/10_cat/{index}.txt", b"a photo of a cat")
    world.put("datasets/cats/5_kitten/a.png", image((32, 32)))
    drop_marker(world, catalog, "cats")
    record = catalog.get("cats")
    assert record.is_usable and record.images == 4 and record.steps_per_epoch_at_batch_1 == 35
    assert {c.concept: (c.repeats, c.images, c.captions) for c in record.concepts} == {
        "cat": (10, 3, 3), "kitten": (5, 1, 0),
    }  # fmt: skip
    assert any("caption" in p.message for p in record.problems)  # the kitten has none
    catalog.handle_notification(S3EventNotification.model_validate(s3_event("datasets/cats/_READY")))  # again
    assert [e["type"] for e in world.events()] == ["dataset.registered"]
    assert [d.name for d in catalog.all()] == ["cats"]


def test_images_arriving_are_not_a_registration_and_a_test_event_is_ignored(world, catalog):
    world.put("datasets/dogs/10_dog/1.png", image())
    catalog.handle_notification(S3EventNotification.model_validate(s3_event("datasets/dogs/10_dog/1.png")))
    catalog.handle_notification(S3EventNotification.model_validate({"Event": "s3:TestEvent"}))
    assert world.events() == [] and catalog.all() == []


@pytest.mark.parametrize(
    ("files", "name", "code"),
    [
        ({"datasets/empty/10_x/readme.md": b"no images"}, "empty", "EMPTY_DATASET"),
        ({"datasets/flat/a.png": image()}, "flat", None),
        ({}, "bad name!", "INVALID_DATASET_NAME"),
        ({"datasets/broken/10_x/a.png": b"not a png"}, "broken", None),
    ],
)
def test_unusable_folders_are_rejected_with_the_reason(world, catalog, files, name, code):
    for key, body in files.items():
        world.put(key, body)
    drop_marker(world, catalog, name)
    record = world.datasets.get(name)
    assert record is not None and record["status"] == "REJECTED"
    if code:
        assert record["error"]["code"] == code
    assert [e["type"] for e in world.events()] == ["dataset.rejected"]


def test_a_deleted_dataset_is_gone_with_its_files_and_announced(world, catalog):
    world.put("datasets/gone/10_x/a.png", image())
    drop_marker(world, catalog, "gone")
    world.events()
    assert catalog.delete("gone") == 2  # the image and the marker
    assert world.keys("datasets/gone/") == [] and catalog.all() == []
    assert [e["type"] for e in world.events()] == ["dataset.deleted"]


def test_a_request_file_is_published_as_a_request_with_an_id_from_the_object(world):
    requests = world.aws.get("sns").create_topic(Name="requests")["TopicArn"]
    published: list[tuple[str, dict]] = []

    class Recording(type(world.publisher)):  # type: ignore[misc]
        def publish_raw(self, body: str, attributes: dict[str, str]) -> None:
            published.append((body, attributes))

    files = RequestFiles(world.store, Recording(requests, world.aws), max_bytes=1024)
    world.put("requests/a.json", json.dumps({"action": "txt2img", "params": {"prompt": "x"}}).encode())
    files.handle_notification(S3EventNotification.model_validate(s3_event("requests/a.json")))
    files.handle_notification(S3EventNotification.model_validate(s3_event("requests/a.json")))  # duplicate
    (first, attributes), (second, _) = published
    assert attributes == {"action": "txt2img"} and json.loads(first)["request_id"].startswith("file-")
    assert json.loads(first)["request_id"] == json.loads(second)["request_id"]
    world.put("requests/b.json", b"{not json")
    with pytest.raises(RequestNotJson):
        files.publish_file("requests/b.json")
    world.put("requests/big.json", b" " * 2048)
    with pytest.raises(RequestNotJson):
        files.publish_file("requests/big.json")
    files.publish_file("requests/deleted-meanwhile.json")
    assert len(published) == 2
