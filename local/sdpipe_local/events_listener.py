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

    def drain(self, wait_s: int = 0) -> list[dict[str, Any]]:
        """Every event received so far. With ``wait_s``, first wait up to that many seconds for
        one (a long poll, which returns as soon as a message is there: polling with no wait in a
        loop would keep the local stack busy answering empty receives)."""
        wait = wait_s
        while True:
            messages = self._sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait
            ).get("Messages", [])
            if not messages:
                return self.events
            wait = 0
            self.events.extend(json.loads(message["Body"]) for message in messages)
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        events = self.drain()
        while not done(events) and (remaining := deadline - time.monotonic()) > 0:
            events = self.drain(wait_s=max(1, min(5, int(remaining))))
        return events
