"""A mixed batch of work run under the fault injector, and what it shows about loss.

``run_batch`` needs a stack started with ``LocalStack(chaos=...)`` and the client environment
pointing at it. It submits inference requests (some delivered twice), an upload, a fetch and a
tiny training, waits for every job to end, then measures what a subscriber and an operator see:
terminal events (de-duplicated by ``event_id``) and how late they came, stored events left,
orphaned multipart uploads, dead-letter queues, the endpoint's in-flight count.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sdpipe.contracts.jobs import job_id_for
from sdpipe.contracts.models import ModelType
from sdpipe_client.client import Sdpipe
from sdpipe_client.datasets import Datasets, plan_dataset
from sdpipe_client.stack import StackOutputs
from sdpipe_client.transfer import Uploader
from sdpipe_local.assets import create_tiny_dataset, drop_checkpoint
from sdpipe_local.events_listener import EventsListener
from sdpipe_local.file_server import FileServer
from sdpipe_local.stack import LocalStack
from sdpipe_local.tiny_models import create_tiny_checkpoint, create_tiny_lora

TERMINAL_EVENTS = {"job.succeeded", "job.failed", "job.cancelled", "job.timed_out"}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
PROMPT = {"prompt": "a fox", "model": "chaos-base", "steps": 2, "width": 64, "height": 64, "batch_size": 1}


@dataclass
class BatchReport:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> final record
    kinds: dict[str, str] = field(default_factory=dict)  # job id -> what it was
    jobs_per_request: Counter[str] = field(default_factory=Counter)
    terminal_events: Counter[str] = field(default_factory=Counter)  # job id -> distinct terminal events
    duplicate_publications: int = 0  # the same event_id received more than once
    # event id -> first arrival minus the event's occurred_at (the writer's write), for every
    # event of the batch's jobs
    lateness_s: dict[str, float] = field(default_factory=dict)
    stored_events_left: int = 0
    open_multipart_uploads: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    endpoint_in_flight: int = -1
    images_missing: list[str] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)  # function -> workers killed
    seconds: float = 0.0

    def deaths_of(self, function: str) -> int:
        """Workers of ``function`` (a logical id, or part of the function's name) killed."""
        return sum(count for name, count in self.deaths.items() if function in name)

    def summary(self) -> str:
        """One line for a log or bench/RESULTS.md."""
        outcomes = Counter(f"{self.kinds[i]} {j.get('status', 'NOT CREATED')}" for i, j in self.jobs.items())
        late = sorted(self.lateness_s.values()) or [0.0]
        return (
            f"injected {self.injected}; jobs {dict(sorted(outcomes.items()))}; "
            f"terminal events per job {sorted(set(self.terminal_events.values()))}; "
            f"duplicate publications {self.duplicate_publications}; events {len(late)}, late p50 "
            f"{statistics.median(late):.1f} s, p95 {late[int(0.95 * (len(late) - 1))]:.1f} s, max {late[-1]:.1f} s; "
            f"left: {self.stored_events_left} stored events, {len(self.open_multipart_uploads)} uploads, "
            f"{sum(self.dead_letters.values())} dead letters; {self.seconds:.0f} s"
        )


def prepare(stack: LocalStack, client: Sdpipe, workdir: Path) -> None:
    """A base checkpoint, a dataset and an endpoint on it (under chaos already)."""
    s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
    checkpoint = workdir / "chaos-base.safetensors"
    create_tiny_checkpoint("sd1", checkpoint, seed=1)
    drop_checkpoint(s3, bucket, checkpoint, "models/Stable-diffusion/chaos-base.safetensors")
    dataset = create_tiny_dataset(workdir / "dataset", concept="chaos", repeats=1, count=2)
    _retrying(lambda: Datasets(client).upload(plan_dataset(dataset, "chaosset")))
    _wait(lambda: _model_status(stack, "models/Stable-diffusion/chaos-base.safetensors") == "ACTIVE", 240)
    deploy = client.deploy_endpoint("chaos", instance_type="ml.g6.xlarge", min_instances=1)
    _wait(lambda: _job(stack, deploy).get("status") in TERMINAL, 300)
    if _job(stack, deploy)["status"] != "SUCCEEDED":
        raise RuntimeError(f"the endpoint was not deployed: {_job(stack, deploy)}")


def run_batch(
    stack: LocalStack, client: Sdpipe, workdir: Path, inferences: int = 6, timeout_s: float = 420
) -> BatchReport:
    started = time.monotonic()
    report = BatchReport()
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    arrivals: dict[str, float] = {}  # event id -> first arrival (wall clock)
    seen: Counter[str] = Counter()

    run = uuid.uuid4().hex[:6]
    for index in range(inferences):
        request_id = f"chaos-{run}-txt2img-{index}"
        for _ in range(2 if index % 3 == 0 else 1):  # a third delivered twice
            client.submit("txt2img", PROMPT | {"seed": index}, request_id=request_id)
        report.kinds[job_id_for(request_id)] = "txt2img"

    lora = create_tiny_lora("sd1", workdir / f"chaos-up-{run}.safetensors", seed=2)
    upload = _retrying(lambda: Uploader(client).upload(lora, ModelType.LORA))
    report.kinds[upload.job_id] = "upload_model"

    site = workdir / "site"
    site.mkdir(exist_ok=True)
    fetched = create_tiny_lora("sd1", site / f"chaos-fetch-{run}.safetensors", seed=3)
    with FileServer(site) as server:
        fetch_id = client.submit("fetch_model", {"url": server.url(f"/files/{fetched.name}"), "type": "lora"},
                                 request_id=f"chaos-{run}-fetch")  # fmt: skip
        report.kinds[fetch_id] = "fetch_model"
        train_id = client.submit(
            "train_lora",
            {"base_model": "chaos-base", "dataset": "chaosset", "family": "sd1", "engine": "builtin",
             "config": {"output_name": f"chaos-{run}", "max_train_steps": 2, "resolution": 64, "network_dim": 4,
                        "network_alpha": 4, "train_batch_size": 2}},
            request_id=f"chaos-{run}-train",
        )  # fmt: skip
        report.kinds[train_id] = "train_lora"
        if stack.chaos is not None:  # however the dice fall, some writers die between write and publish
            stack.chaos.force_kills_before_publish(3)

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _collect(listener, arrivals, seen)
            # Read as an operator would (the table), so the harness adds no calls for faults to hit.
            report.jobs = {job_id: _job(stack, job_id) for job_id in report.kinds}
            if all(job.get("status") in TERMINAL for job in report.jobs.values()) and _announced(report, listener):
                break
            time.sleep(1)
    # Stored events out, then what a subscriber saw.
    _wait(lambda: _stored_events(stack) == 0, 60)
    time.sleep(2)
    _collect(listener, arrivals, seen)
    _measure(stack, report, listener, arrivals, seen)
    if stack.chaos is not None:
        faults = stack.chaos.report()
        report.injected, report.deaths = faults["injected"], faults["deaths"]
    report.seconds = time.monotonic() - started
    return report


def _measure(
    stack: LocalStack, report: BatchReport, listener: EventsListener, arrivals: dict[str, float], seen: Counter[str]
) -> None:
    terminal: dict[str, set[str]] = {}
    for event in listener.events:
        if event.get("job_id") not in report.kinds:
            continue
        written = datetime.fromisoformat(event["occurred_at"]).timestamp()
        # Keyed with the event's type and job, so a report says which kind of event was late.
        late_key = f"{event['type']} {event['job_id']} {event['event_id']}"
        report.lateness_s[late_key] = arrivals[event["event_id"]] - written
        if event["type"] in TERMINAL_EVENTS:
            terminal.setdefault(event["job_id"], set()).add(event["event_id"])
    report.terminal_events = Counter({job_id: len(terminal.get(job_id, set())) for job_id in report.kinds})
    report.duplicate_publications = sum(count - 1 for count in seen.values())
    jobs_table = stack.resource("dynamodb").Table(stack.outputs["JobsTableName"])
    for item in _scan(jobs_table):
        if str(item.get("request_id", "")).startswith("chaos-") or item["job_id"] in report.kinds:
            report.jobs_per_request[str(item.get("request_id"))] += 1
    report.stored_events_left = _stored_events(stack)
    s3 = stack.client("s3")
    uploads = s3.list_multipart_uploads(Bucket=stack.outputs["AssetsBucketName"]).get("Uploads", [])
    report.open_multipart_uploads = [u["Key"] for u in uploads]
    sqs = stack.client("sqs")
    # This stack's queues only: stacks in one process share moto's backends (and their queues).
    for url in sqs.list_queues(QueueNamePrefix=f"{stack.stack_name}-").get("QueueUrls", []):
        if "DLQ" in url or "DeadLetter" in url:
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            report.dead_letters[url.rsplit("/", 1)[-1]] = int(attributes["Attributes"]["ApproximateNumberOfMessages"])
    endpoint = stack.resource("dynamodb").Table(stack.outputs["EndpointsTableName"]).get_item(Key={"name": "chaos"})
    report.endpoint_in_flight = int(endpoint.get("Item", {}).get("in_flight", -1))
    for job_id, job in report.jobs.items():
        if report.kinds[job_id] == "txt2img" and job.get("status") == "SUCCEEDED":
            for uri in job["outputs"]["images"]:
                bucket, key = uri[5:].split("/", 1)
                if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0:
                    report.images_missing.append(uri)


def _collect(listener: EventsListener, arrivals: dict[str, float], seen: Counter[str]) -> None:
    before = len(listener.events)
    listener.drain()
    now = time.time()
    for event in listener.events[before:]:
        event_id = event.get("event_id") or uuid.uuid4().hex
        arrivals.setdefault(event_id, now)
        seen[event_id] += 1


def _announced(report: BatchReport, listener: EventsListener) -> bool:
    ended = {e["job_id"] for e in listener.events if e.get("type") in TERMINAL_EVENTS}
    return set(report.kinds) <= ended


def _job(stack: LocalStack, job_id: str) -> dict[str, Any]:
    table = stack.resource("dynamodb").Table(stack.outputs["JobsTableName"])
    return dict(table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item") or {})


def _stored_events(stack: LocalStack) -> int:
    total = 0
    for output in ("JobsTableName", "ModelsTableName", "DatasetsTableName"):
        table = stack.resource("dynamodb").Table(stack.outputs[output])
        total += sum(len(item.get("pending_events") or {}) for item in _scan(table))
    return total


def _model_status(stack: LocalStack, key: str) -> str | None:
    table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])
    for item in _scan(table):
        if item.get("s3_key") == key and not item.get("pending_events"):
            return str(item.get("status"))
    return None


def _scan(table: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {"ConsistentRead": True}
    while True:
        page = table.scan(**request)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _wait(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout_s:.0f} s")
        time.sleep(0.5)


def _retrying(call: Any, attempts: int = 5) -> Any:
    """What a user does when a synchronous call dies under them: run the command again."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    return None


def client_for(stack: LocalStack) -> Sdpipe:
    return Sdpipe(StackOutputs(stack.outputs))
