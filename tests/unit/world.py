"""An in-process AWS world for the orchestrators: the stack's tables (from template.yaml), the
bucket and the events topic on moto, and fakes for what moto cannot play (Step Functions starts,
SageMaker, autoscaling, ECR digests). Each orchestrator is built from these the way its
``from_settings`` builds it from the real ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sdpipe.adapters.autoscaling import EndpointScaling, ScalingPlan
from sdpipe.adapters.clients import AwsClients
from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.generations_table import GenerationsTable
from sdpipe.adapters.images import ContainerImages
from sdpipe.adapters.inference_runtime import AsyncInference, Invocation
from sdpipe.adapters.jobs_table import JobsTable
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.sagemaker import SageMakerEndpoints, SageMakerTraining
from sdpipe.adapters.training_logs import TrainingLogs
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.workflows import DescribedEndpoint, DescribedTrainingJob
from sdpipe.errors import ImageNotFound
from sdpipe.logic.jobs import JobLedger
from tests.helpers import create_table_from_template

ACCOUNT = "123456789012"
NAMES = {
    "assets_bucket_name": "assets",
    "jobs_table_name": "jobs",
    "models_table_name": "models",
    "datasets_table_name": "datasets",
    "endpoints_table_name": "endpoints",
    "generations_table_name": "generations",
}
_TABLES = {
    "JobsTable": "jobs",
    "ModelsTable": "models",
    "DatasetsTable": "datasets",
    "EndpointsTable": "endpoints",
    "GenerationsTable": "generations",
}


def machine_arn(name: str) -> str:
    return f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{name}"


@dataclass
class World:
    aws: AwsClients
    topic_arn: str
    queue_url: str

    @classmethod
    def create(cls, aws: AwsClients) -> World:
        dynamodb = aws.get("dynamodb")
        for logical_id, name in _TABLES.items():
            create_table_from_template(dynamodb, logical_id, name)
        aws.get("s3").create_bucket(Bucket=NAMES["assets_bucket_name"])
        topic = aws.get("sns").create_topic(Name="events")["TopicArn"]
        sqs = aws.get("sqs")
        queue = sqs.create_queue(QueueName="events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        aws.get("sns").subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
        )
        return cls(aws, topic, queue)

    # ------------------------------------------------------------------ the real adapters
    def settings_values(self, **extra: Any) -> dict[str, Any]:
        return NAMES | {"events_topic_arn": self.topic_arn, "stack_name": "sdpipe"} | extra

    @property
    def publisher(self) -> EventPublisher:
        return EventPublisher(self.topic_arn, self.aws)

    @property
    def jobs(self) -> JobsTable:
        return JobsTable(NAMES["jobs_table_name"], NAMES["endpoints_table_name"], self.aws)

    @property
    def models(self) -> ModelsTable:
        return ModelsTable(NAMES["models_table_name"], self.aws)

    @property
    def datasets(self) -> DatasetsTable:
        return DatasetsTable(NAMES["datasets_table_name"], self.aws)

    @property
    def endpoints(self) -> EndpointsTable:
        return EndpointsTable(NAMES["endpoints_table_name"], self.aws)

    @property
    def generations(self) -> GenerationsTable:
        return GenerationsTable(NAMES["generations_table_name"], self.aws)

    @property
    def store(self) -> ObjectStore:
        return ObjectStore(NAMES["assets_bucket_name"], self.aws)

    def ledger(self) -> JobLedger:
        return JobLedger(self.jobs, self.publisher)

    # ------------------------------------------------------------------ what happened
    def events(self) -> list[dict[str, Any]]:
        """The events published since the last call, in order."""
        sqs = self.aws.get("sqs")
        found: list[dict[str, Any]] = []
        while messages := sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", []):
            found.extend(json.loads(m["Body"]) for m in messages)
            sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return found

    def event_types(self, job_id: str | None = None) -> list[str]:
        return [e["type"] for e in self.events() if job_id is None or e.get("job_id") == job_id]

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str:
        response = self.aws.get("s3").put_object(
            Bucket=NAMES["assets_bucket_name"], Key=key, Body=body, Metadata=metadata or {}
        )
        return str(response["ETag"]).strip('"')

    def get(self, key: str) -> bytes:
        return bytes(self.aws.get("s3").get_object(Bucket=NAMES["assets_bucket_name"], Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.aws.get("s3").list_objects_v2(Bucket=NAMES["assets_bucket_name"], Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


def envelope(action: str, params: dict[str, Any], request_id: str = "r-1", **extra: Any) -> str:
    return json.dumps(
        {"action": action, "request_id": request_id, "context": {"who": "test"}, "params": params} | extra
    )


# ---------------------------------------------------------------------- fakes
class FakeWorkflows(Workflows):
    """StartExecution named after the job: a second start with the same name returns the same ARN."""

    def __init__(self) -> None:
        self.started: dict[str, dict[str, Any]] = {}

    def start(self, state_machine_arn: str, name: str, payload: dict[str, Any]) -> str:
        self.started.setdefault(name, payload)
        return state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"


class FakeImages(ContainerImages):
    def __init__(self, missing: frozenset[str] = frozenset()) -> None:
        self.missing = missing

    def pinned(self, uri: str) -> str:
        if uri in self.missing:
            raise ImageNotFound(f"{uri} was never pushed")
        return uri.split(":", maxsplit=1)[0] + "@sha256:" + "a" * 64


@dataclass
class FakeEndpoints(SageMakerEndpoints):
    """SageMaker's endpoints as a dict: what was created, and what describe answers."""

    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def create_model(self, name: str, image: str, environment: dict[str, str], role_arn: str) -> None:
        self.calls.append(("create_model", name, image))

    def create_async_config(self, name: str, model: str, variant: dict[str, Any], async_config: dict[str, Any]) -> None:
        self.calls.append(("create_config", name, model))

    def create_endpoint(self, name: str, config: str) -> None:
        self.calls.append(("create_endpoint", name, config))
        self.endpoints[name] = {"EndpointStatus": "InService", "EndpointConfigName": config}

    def update_endpoint(self, name: str, config: str) -> None:
        self.calls.append(("update_endpoint", name, config))
        self.endpoints[name] = {"EndpointStatus": "InService", "EndpointConfigName": config}

    def describe(self, endpoint: str) -> DescribedEndpoint | None:
        found = self.endpoints.get(endpoint)
        return None if found is None else DescribedEndpoint.model_validate(found)

    def is_gone(self, endpoint: str) -> bool:
        return endpoint not in self.endpoints

    def delete_endpoint(self, endpoint: str) -> None:
        self.calls.append(("delete_endpoint", endpoint))
        self.endpoints.pop(endpoint, None)

    def delete_leftovers(self, config_name: str | None, model_name: str | None) -> None:
        self.calls.append(("delete_leftovers", str(config_name), str(model_name)))


@dataclass
class FakeScaling(EndpointScaling):
    configured: list[ScalingPlan] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def configure(self, plan: ScalingPlan) -> dict[str, str]:
        self.configured.append(plan)
        return {"target": plan.resource_id}

    def remove(self, sagemaker_name: str) -> None:
        self.removed.append(sagemaker_name)


@dataclass
class FakeTraining(SageMakerTraining):
    """Training jobs whose status the test sets."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)

    def create(self, request: dict[str, Any]) -> None:
        self.jobs.setdefault(
            request["TrainingJobName"],
            {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting", "request": request},
        )

    def describe(self, name: str) -> DescribedTrainingJob | None:
        found = self.jobs.get(name)
        return None if found is None else DescribedTrainingJob.model_validate(found)

    def stop(self, name: str) -> bool:
        self.stopped.append(name)
        return name in self.jobs


@dataclass
class FakeLogs(TrainingLogs):
    lines: list[str] = field(default_factory=list)

    def tail(self, training_job_name: str, lines: int = 20) -> list[str]:
        return self.lines[-lines:]


@dataclass
class FakeRuntime(AsyncInference):
    invoked: list[tuple[str, str, str]] = field(default_factory=list)
    error: Exception | None = None

    def invoke(self, endpoint_name: str, input_location: str, inference_id: str, ttl_seconds: int) -> Invocation:
        if self.error is not None:
            raise self.error
        self.invoked.append((endpoint_name, input_location, inference_id))
        return Invocation(inference_id, output_location=f"s3://assets/jobs/async-output/{inference_id}.out")


def add_model(world: World, name: str, sha256: str, *, kind: str = "checkpoint", family: str = "sd1",
              status: str = "ACTIVE", folder: str = "Stable-diffusion") -> dict[str, Any]:  # fmt: skip
    """A registered model as registration leaves it (the object itself is put too)."""
    key = f"models/{folder}/{name}.safetensors"
    etag = world.put(key, b"weights of " + name.encode())
    item = {
        "model_id": f"{kind}:{key}", "type": kind, "name": name, "filename": f"{name}.safetensors", "s3_key": key,
        "size": 11 + len(name), "etag": etag, "status": status, "family": family, "sha256": sha256,
        "hash_shard": sha256[:2], "short_hash": sha256[:10], "legacy_hash": sha256[-8:],
        "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    world.aws.get_resource("dynamodb").Table(NAMES["models_table_name"]).put_item(Item=item)
    return item


def add_dataset(world: World, name: str, *, status: str = "REGISTERED", images: int = 4) -> None:
    concept = {"folder": "10_cat", "concept": "cat", "repeats": 10, "images": images, "captions": images}
    item = {
        "name": name, "prefix": f"datasets/{name}/", "status": status, "concepts": [concept], "images": images,
        "captions": images, "steps_per_epoch_at_batch_1": images * 10, "marker_version": "v1", "pending_events": {},
        "registered_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    if status != "REGISTERED":
        item["error"] = {"code": "DATASET_EMPTY", "message": "no images"}
    world.aws.get_resource("dynamodb").Table(NAMES["datasets_table_name"]).put_item(Item=item)


def s3_event(key: str, event: str = "ObjectCreated:Put", bucket: str = "assets") -> dict[str, Any]:
    """The body S3 sends to a queue for one object (keys URL-encoded, as S3 sends them)."""
    from urllib.parse import quote_plus

    record = {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}}}
    return {"Records": [record]}
