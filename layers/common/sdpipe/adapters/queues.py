"""SQS messages a handler was given: bringing one back later than its visibility timeout says."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.clients import AwsClients, clients

# SQS's limit on a message's visibility timeout.
MAX_VISIBILITY_SECONDS = 12 * 3600


def queue_url(queue_arn: str) -> str:
    """The URL of a queue from its ARN (arn:aws:sqs:REGION:ACCOUNT:NAME), as SQS forms it."""
    _, partition, _, region, account, name = queue_arn.split(":", 5)
    domain = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{region}.{domain}/{account}/{name}"


class Redelivery:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    def after(self, queue_arn: str, receipt_handle: str, seconds: int) -> None:
        """Make the message visible again in ``seconds`` (instead of the queue's timeout)."""
        sqs: Any = self._aws.get("sqs")
        sqs.change_message_visibility(
            QueueUrl=queue_url(queue_arn),
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=min(MAX_VISIBILITY_SECONDS, max(0, seconds)),
        )
