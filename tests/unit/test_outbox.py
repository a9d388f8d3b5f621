"""Stored events whose writer died are published by the sweeper, once, with a stable event id."""

from __future__ import annotations

import json
import threading

import boto3
import pytest

from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.jobs_table import JobsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.outbox import DUE_ATTRIBUTE, DUE_SHARD_ATTRIBUTE, OutboxTable
from sdpipe.contracts.jobs import JobStatus
from sdpipe.contracts.workflows import JobRecord
from sdpipe.logic import outbox as outbox_module
from sdpipe.logic.datasets import DatasetCatalog
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.outbox import Outbox, StoredEventSweep

JOBS, ENDPOINTS, DATASETS, BUCKET = "jobs", "endpoints", "datasets", "assets"


class _WriterDies(Exception):
    pass


class DyingPublisher(EventPublisher):
    """The writer stops between its write and its publish (a SIGKILL, a timeout)."""

    def publish_raw(self, body: str, attributes: dict[str, str]) -> None:
        raise _WriterDies()


@pytest.fixture
def aws(world):
    """The stack's tables, bucket and events topic (``tests/unit/world.py``): clients, topic, queue."""
    return world.aws, world.topic_arn, world.queue_url


def published(queue: str) -> list[dict]:
    sqs = boto3.client("sqs")
    found: list[dict] = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        found.extend(json.loads(m["Body"]) for m in messages)
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return found


def ledger(aws_clients, topic: str, publisher: EventPublisher | None = None, lease: int = 60) -> JobLedger:
    return JobLedger(
        JobsTable(JOBS, ENDPOINTS, aws_clients), publisher or EventPublisher(topic, aws_clients), lease_seconds=lease
    )


def sweep(aws_clients, topic: str) -> int:
    outbox = Outbox(OutboxTable(JOBS, "job_id", aws_clients), EventPublisher(topic, aws_clients))
    return StoredEventSweep([outbox]).sweep()


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the outbox's clock forward (a lease running out without waiting for it)."""
    import time

    now = time.time() + seconds
    monkeypatch.setattr(outbox_module.time, "time", lambda: now)


def create_job(jobs: JobLedger, job_id: str = "job-1") -> JobRecord:
    created = jobs.create(
        job_id=job_id, request_id=f"r-{job_id}", action="fetch_model", status=JobStatus.ACCEPTED,
        deadline_seconds=3600, fields={},
    )  # fmt: skip
    assert created is not None
    return created


def test_an_event_whose_writer_died_is_published_by_the_sweep_once_its_lease_ran_out(aws, monkeypatch):
    clients, topic, queue = aws
    job = create_job(ledger(clients, topic))
    dying = ledger(clients, topic, DyingPublisher(topic, clients))
    with pytest.raises(_WriterDies):
        dying.move(job, JobStatus.SUCCEEDED, allowed_from=[JobStatus.ACCEPTED])
    assert [e["type"] for e in published(queue)] == ["job.accepted"]

    assert sweep(clients, topic) == 0  # the writer's lease still holds: it may yet publish
    assert published(queue) == []
    later(monkeypatch, 61)
    assert sweep(clients, topic) == 1
    events = published(queue)
    assert [e["type"] for e in events] == ["job.succeeded"]
    stored_id = events[0]["event_id"]
    assert len(stored_id) == 32

    item = JobsTable(JOBS, ENDPOINTS, clients).get(job.job_id)
    assert item is not None and not item["pending_events"]
    assert DUE_SHARD_ATTRIBUTE not in item and DUE_ATTRIBUTE not in item  # off the due index
    assert sweep(clients, topic) == 0 and published(queue) == []  # nothing twice


def test_a_redelivery_during_the_writers_lease_leaves_the_event_to_the_sweep(aws, monkeypatch):
    clients, topic, queue = aws
    job = create_job(ledger(clients, topic))
    published(queue)
    with pytest.raises(_WriterDies):
        ledger(clients, topic, DyingPublisher(topic, clients)).move(
            job, JobStatus.RUNNING, allowed_from=[JobStatus.ACCEPTED]
        )
    redelivery = ledger(clients, topic)
    redelivery.flush(redelivery.require(job.job_id))
    assert published(queue) == []
    later(monkeypatch, 61)
    redelivery.flush(redelivery.require(job.job_id))
    assert [e["type"] for e in published(queue)] == ["job.running"]
    assert sweep(clients, topic) == 0 and published(queue) == []


def test_two_sweepers_at_once_publish_each_event_once(aws, monkeypatch):
    clients, topic, queue = aws
    dying = ledger(clients, topic, DyingPublisher(topic, clients))
    for index in range(6):
        with pytest.raises(_WriterDies):
            create_job(dying, f"job-{index}")
    later(monkeypatch, 61)
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(sweep(clients, topic))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 6
    events = published(queue)
    assert sorted(e["job_id"] for e in events) == [f"job-{i}" for i in range(6)]
    assert len({e["event_id"] for e in events}) == 6


def test_the_marker_stays_until_the_last_stored_event_is_out(aws, monkeypatch):
    clients, topic, queue = aws
    job = create_job(ledger(clients, topic))
    dying = ledger(clients, topic, DyingPublisher(topic, clients))
    with pytest.raises(_WriterDies):
        dying.move(job, JobStatus.RUNNING, allowed_from=[JobStatus.ACCEPTED])
    running = ledger(clients, topic).require(job.job_id)
    ledger(clients, topic).move(running, JobStatus.SUCCEEDED, allowed_from=[JobStatus.RUNNING])
    item = JobsTable(JOBS, ENDPOINTS, clients).get(job.job_id) or {}
    assert len(item["pending_events"]) == 1 and item[DUE_SHARD_ATTRIBUTE] == "due"
    later(monkeypatch, 61)
    assert sweep(clients, topic) == 1
    assert [e["type"] for e in published(queue)] == ["job.accepted", "job.succeeded", "job.running"]
    item = JobsTable(JOBS, ENDPOINTS, clients).get(job.job_id) or {}
    assert not item["pending_events"] and DUE_SHARD_ATTRIBUTE not in item


def test_a_dataset_deletion_is_announced_even_when_its_writer_dies(aws, monkeypatch):
    clients, topic, queue = aws
    table = DatasetsTable(DATASETS, clients)
    store = ObjectStore(BUCKET, clients)
    catalog = DatasetCatalog(store, table, EventPublisher(topic, clients))
    item = {"name": "cats", "prefix": "datasets/cats/", "status": "REGISTERED", "marker_version": "1"}
    assert table.put_version(item, catalog.outbox.item_fields(_registered()), {})
    dying = DatasetCatalog(store, table, DyingPublisher(topic, clients))
    store.put_bytes("datasets/cats/a.txt", b"a cat", "text/plain")
    with pytest.raises(_WriterDies):
        dying.delete("cats")
    assert table.get("cats") is None  # readers see it gone at once
    later(monkeypatch, 61)
    datasets_outbox = Outbox(OutboxTable(DATASETS, "name", clients), EventPublisher(topic, clients))
    assert StoredEventSweep([datasets_outbox]).sweep() == 2
    assert [e["type"] for e in published(queue)] == ["dataset.registered", "dataset.deleted"]


def _registered():
    from sdpipe.contracts.events import Event, EventType

    return Event(type=EventType.DATASET_REGISTERED, status="REGISTERED", dataset={"name": "cats"})


def test_an_endpoint_change_whose_writer_died_is_announced_by_the_sweep(aws, monkeypatch):
    from sdpipe.adapters.endpoints_table import ANNOUNCEMENT, EndpointsTable
    from sdpipe.logic.endpoint_announcements import EndpointAnnouncer

    clients, topic, queue = aws
    endpoints = EndpointsTable(ENDPOINTS, clients)
    dying = EndpointAnnouncer(endpoints, DyingPublisher(topic, clients))
    job = JobRecord(
        job_id="job-9", action="deploy_endpoint", request_id="r-9", context={"user": "ana"}, status="RUNNING"
    )
    assert endpoints.begin_workflow(
        "flow", "job-9", "CREATING", {}, from_statuses=("DELETED",), may_create=True, announcement=dying.mark(job)
    )
    with pytest.raises(_WriterDies):
        dying.announce("flow", job)
    sweeper = EndpointAnnouncer(endpoints, EventPublisher(topic, clients))
    assert sweeper.sweep() == 0  # the writer's lease still holds
    later(monkeypatch, 61)
    monkeypatch.setattr("sdpipe.logic.endpoint_announcements.time.time", outbox_module.time.time)
    assert sweeper.sweep() == 1
    (event,) = published(queue)
    assert event["type"] == "endpoint.status" and event["status"] == "CREATING"
    assert (event["job_id"], event["context"], event["endpoint"]["name"]) == ("job-9", {"user": "ana"}, "flow")
    record = endpoints.get("flow") or {}
    assert ANNOUNCEMENT not in record and DUE_SHARD_ATTRIBUTE not in record
    assert sweeper.sweep() == 0 and published(queue) == []
