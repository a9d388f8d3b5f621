"""Publishing event envelopes on the events topic."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.contracts.events import Event


class EventPublisher:
    def __init__(self, topic_arn: str, aws: AwsClients = clients) -> None:
        self.topic_arn = topic_arn
        self._aws = aws

    def publish(self, event: Event) -> None:
        self.publish_raw(event.model_dump_json(), event.attributes())

    def publish_raw(self, body: str, attributes: dict[str, str]) -> None:
        sns: Any = self._aws.get("sns")
        sns.publish(
            TopicArn=self.topic_arn,
            Message=body,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
            },
        )
