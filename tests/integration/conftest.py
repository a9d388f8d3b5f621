from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sdpipe.adapters.clients import clients
from sdpipe_local.events_listener import EventsListener
from sdpipe_local.stack import LocalStack
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]

# The longest modules first: xdist (`--dist loadfile --no-loadscope-reorder`, as `make test` runs
# it) hands out a module at a time in collection order, and a long one handed out last keeps one
# worker busy while the others idle. Except the chaos module, which goes last, alone on its
# worker as far as possible: run beside the training module its stack took half as many more
# invocations, so more kills, and a fetch ran out of retries (a load-dependent failure).
LONGEST_FIRST = (
    "test_training", "test_endpoint_lifecycle", "test_inference_flow", "test_fetch", "test_real_checkpoints",
)  # fmt: skip
LAST = ("test_chaos",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    rank |= {name: len(LONGEST_FIRST) + 1 + place for place, name in enumerate(LAST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def stack(sdpipe_stack: LocalStack) -> LocalStack:
    return sdpipe_stack


@pytest.fixture
def aws_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 (and the sdpipe client) in this process at the local stack."""
    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)
    clients.reset()
    yield stack.environment()
    clients.reset()


@pytest.fixture
def listener(stack: LocalStack) -> EventsListener:
    return EventsListener(stack, stack.outputs["EventsTopicArn"])


class Models:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.bucket = stack.outputs["AssetsBucketName"]
        self.s3 = stack.client("s3")
        self.table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])

    def put(self, key: str, body: bytes) -> str:
        return self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)["ETag"].strip('"')

    def item(self, key: str) -> dict[str, Any] | None:
        items = [i for i in self.table.scan(ConsistentRead=True)["Items"] if i.get("s3_key") == key]
        return items[0] if items else None

    def wait(self, key: str, status: str | None = None, etag: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Wait until the key's item is settled (not PENDING, event published), optionally a given status/etag."""

        def settled() -> dict[str, Any] | None:
            item = self.item(key)
            done = item is not None and item.get("status", "PENDING") != "PENDING" and not item.get("pending_events")
            if done and (status is None or item["status"] == status) and (etag is None or item["etag"] == etag):
                return item
            return None

        return wait_until(settled, timeout, every=0.1, what=f"{key} settling (status={status}, etag={etag})")

    def queue_depths(self) -> tuple[int, int]:
        """Messages visible or in flight in the registration queue and in its DLQ."""
        sqs = self.stack.client("sqs")
        dlq = self.stack.outputs["RegisterModelDeadLetterQueueUrl"]
        queue = self.stack.outputs["RegisterModelQueueUrl"]
        counts = []
        for url in (queue, dlq):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            counts.append(
                int(attributes["ApproximateNumberOfMessages"])
                + int(attributes["ApproximateNumberOfMessagesNotVisible"])
            )
        return counts[0], counts[1]


@pytest.fixture
def models(stack: LocalStack) -> Models:
    return Models(stack)


@pytest.fixture
def revoke(stack: LocalStack):
    """``revoke(role, action)``: take an action out of one of the stack's roles for this test (the
    role's inline policies are put back after it), as a template missing a permission would."""
    iam = stack.client("iam")
    saved: list[tuple[str, str, str]] = []

    def take(role_logical_id: str, action: str) -> None:
        role = f"{stack.stack_name}-{role_logical_id}"
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            document = json.loads(document) if isinstance(document, str) else document
            statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
            kept = []
            for statement in statements:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if action not in actions:
                    kept.append(statement)
                elif len(actions) > 1:
                    kept.append(statement | {"Action": [a for a in actions if a != action]})
            if kept == statements:
                continue
            saved.append((role, name, json.dumps(document)))
            if kept:
                reduced = json.dumps(document | {"Statement": kept})
                iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=reduced)
            else:  # the action was all the policy granted
                iam.delete_role_policy(RoleName=role, PolicyName=name)
        assert saved, f"{role} grants no {action}"

    yield take
    for role, name, document in saved:
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=document)
