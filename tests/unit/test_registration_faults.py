"""Registration under faults, with the real adapters on in-process moto and injected failures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from sdpipe.adapters.clients import AwsClients
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectInfo, ObjectStore
from sdpipe.contracts.models import ModelFamily, ModelStatus
from sdpipe.errors import ObjectChanged, WorkInProgress
from sdpipe.layout import ModelKey, parse_model_key
from sdpipe.logic.inspection import InspectionLimits
from sdpipe.logic.registration import Registrar
from tests.helpers import create_table_from_template, kohya_lora, safetensors_bytes

BUCKET, TABLE, KEY = "assets", "models", "models/Lora/style.safetensors"
LIMITS = InspectionLimits(header_cap=1 << 20, pickle_cap=1 << 20, chunk_size=64 * 1024)


class FlakyStore(ObjectStore):
    """Fails the first ``failures`` full reads part-way, as a reset connection would."""

    def __init__(self, bucket: str, aws: AwsClients, failures: int) -> None:
        super().__init__(bucket, aws)
        self.failures = failures

    def iter_chunks(self, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        for index, chunk in enumerate(super().iter_chunks(info, chunk_size)):
            if self.failures and index == 1:
                self.failures -= 1
                raise ConnectionResetError("connection reset by peer")
            yield chunk


@pytest.fixture
def aws(moto_clients):
    aws = moto_clients
    aws.get("s3").create_bucket(Bucket=BUCKET)
    create_table_from_template(aws.get("dynamodb"), "ModelsTable", TABLE)
    topic = aws.get("sns").create_topic(Name="events")["TopicArn"]
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.get("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    return aws, topic, queue


def drop(clients: AwsClients, body: bytes) -> tuple[ModelKey, str]:
    """Put ``body`` at KEY; return the parsed key and the object's ETag (unquoted)."""
    etag = clients.get("s3").put_object(Bucket=BUCKET, Key=KEY, Body=body)["ETag"].strip('"')
    key = parse_model_key(KEY)
    assert key is not None
    return key, etag


def registrar(aws: AwsClients, topic: str, store: ObjectStore | None = None) -> Registrar:
    return Registrar(
        store=store or ObjectStore(BUCKET, aws),
        table=ModelsTable(TABLE, aws),
        publisher=EventPublisher(topic, aws),
        limits=LIMITS,
        lease_seconds=900,
    )


def published(queue: str) -> list[dict]:
    messages = boto3.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def claimed_fields(key: ModelKey) -> dict[str, object]:
    """What a registrar's claim writes beside the claim itself."""
    now = "2026-01-01T00:00:00+00:00"
    return {"type": key.type.value, "name": key.name, "filename": key.filename, "s3_key": key.key, "size": 1,
            "source": "drop", "created_at": now, "updated_at": now}  # fmt: skip


def test_a_stream_that_dies_mid_read_releases_the_claim_and_the_retry_registers(aws):
    clients, topic, queue = aws
    body = safetensors_bytes(kohya_lora("sd1", rank=64))
    assert len(body) > 2 * LIMITS.chunk_size
    key, _etag = drop(clients, body)
    flaky = registrar(clients, topic, FlakyStore(BUCKET, clients, failures=1))
    with pytest.raises(ConnectionResetError):
        flaky.on_created(key)  # the SQS message is not deleted: it will be delivered again
    item = ModelsTable(TABLE, clients).get(key.model_id)
    assert item is not None and item.status is ModelStatus.PENDING and item.claim_expires_at == 0
    flaky.on_created(key)  # the redelivery: the released claim is taken again
    item = ModelsTable(TABLE, clients).get(key.model_id)
    assert item is not None and item.status is ModelStatus.ACTIVE
    assert [e["type"] for e in published(queue)] == ["model.registered"]


def test_an_older_worker_overtaken_by_a_newer_upload_drops_its_result(aws):
    clients, topic, queue = aws
    s3 = clients.get("s3")
    key, old_etag = drop(clients, safetensors_bytes(kohya_lora("sd1")))
    table = ModelsTable(TABLE, clients)
    assert table.claim(
        model_id=key.model_id, etag=old_etag, token="old-worker", lease_seconds=900, fields=claimed_fields(key)
    )
    # While the old worker reads, the key is overwritten and the new version registered.
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=safetensors_bytes(kohya_lora("sdxl")))
    registrar(clients, topic).on_created(key)
    item = table.get(key.model_id)
    assert item is not None and item.family is ModelFamily.SDXL
    # The old worker's reads are pinned to its ETag, so they now fail...
    with pytest.raises(ObjectChanged):
        ObjectStore(BUCKET, clients).read_range(ObjectInfo(KEY, 100, old_etag), 0, 10)
    # ...and had it finished first, its write and its release would both be refused.
    stale = item.model_copy(update={"family": ModelFamily.SD1, "etag": old_etag})
    stored = {"lease_until": 0}
    assert not table.finish(model_id=key.model_id, token="old-worker", record=stale, event_id="x", stored=stored)
    table.release_claim(key.model_id, "old-worker")
    current = table.get(key.model_id)
    assert current is not None and current.family is ModelFamily.SDXL
    assert [e["model"]["family"] for e in published(queue)] == ["sdxl"]


def test_a_live_claim_by_another_worker_is_left_alone(aws):
    clients, topic, queue = aws
    key, etag = drop(clients, safetensors_bytes(kohya_lora("sd1")))
    table = ModelsTable(TABLE, clients)
    assert table.claim(model_id=key.model_id, etag=etag, token="busy", lease_seconds=900, fields=claimed_fields(key))
    with pytest.raises(WorkInProgress) as busy:  # a duplicate event while the first is working:
        registrar(clients, topic).on_created(key)  # not acknowledged, it comes back after the claim
    assert 890 <= busy.value.retry_after_seconds <= 901
    assert (table.item(key.model_id) or {}).get("claim_token") == "busy"
    assert published(queue) == []


def test_an_event_stored_but_not_published_is_sent_by_the_next_delivery_once_its_lease_ran_out(aws):
    clients, topic, queue = aws
    key, _etag = drop(clients, safetensors_bytes(kohya_lora("sd1")))

    class DownPublisher(EventPublisher):
        def publish_raw(self, body: str, attributes: dict[str, str]) -> None:
            raise ConnectionError("SNS unreachable")

    crashing = registrar(clients, topic)
    crashing.publisher = DownPublisher(topic, clients)
    crashing.event_lease_seconds = -1  # its lease has run out by the time the redelivery comes
    with pytest.raises(ConnectionError):
        crashing.on_created(key)
    item = ModelsTable(TABLE, clients).item(key.model_id)
    assert item is not None and item["status"] == "ACTIVE" and item.get("pending_events")
    registrar(clients, topic).on_created(key)  # the redelivery publishes what was stored
    assert [e["type"] for e in published(queue)] == ["model.registered"]
    assert not (ModelsTable(TABLE, clients).item(key.model_id) or {}).get("pending_events")
