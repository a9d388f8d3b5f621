"""Collect what the events topic publishes, through an SQS queue subscribed to it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol


class _StackLike(Protocol):
    def client(self, service: str) -> Any: ...


class EventsListener:
    def __init__(self, stack: _StackLike, topic_arn: str, filter_policy: dict[str, Any] | None = None) -> None:
        self._sqs = stack.client("sqs")
        name = f"events-listener-{uuid.uuid4().hex[:8]}"
        self.queue_url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        attributes = {"RawMessageDelivery": "true"}
        if filter_policy:
            attributes["FilterPolicy"] = json.dumps(filter_policy)
        stack.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes=attributes)
        self.events: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            messages = self._sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return self.events
            for message in messages:
                self.events.append(json.loads(message["Body"]))
                self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not done(self.drain()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.events
