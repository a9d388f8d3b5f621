"""SQS event source mappings, polled the way Lambda polls them.

- Batches of up to ``BatchSize`` messages, gathered for at most ``MaximumBatchingWindowInSeconds``.
- Messages stay invisible for the queue's visibility timeout while the function runs.
- Success deletes the batch; an error or timeout deletes nothing (the messages come back after
  the visibility timeout); with ``ReportBatchItemFailures`` only the reported ones stay, and a
  malformed report fails the whole batch, as in Lambda.
- After ``maxReceiveCount`` receives, SQS itself (moto) moves a message to the dead-letter queue.
- Polling uses the function's execution role, as Lambda does: the role needs ReceiveMessage,
  DeleteMessage and GetQueueAttributes on its queue (checked when the mapping is created).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sdpipe_local.lambda_runtime import LambdaRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SqsMappingSpec:
    function_name: str
    role_arn: str  # Lambda polls the queue with the function's execution role
    queue_arn: str
    queue_url: str
    batch_size: int = 10
    batching_window_s: float = 0.0
    report_batch_item_failures: bool = False
    max_concurrency: int = 2
    enabled: bool = True


def lambda_sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """Turn a ReceiveMessage message into the record shape Lambda gives handlers."""
    attributes = {k: str(v) for k, v in message.get("Attributes", {}).items()}
    message_attributes = {}
    for name, value in message.get("MessageAttributes", {}).items():
        message_attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType", "String"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsPoller:
    def __init__(self, spec: SqsMappingSpec, runtime: LambdaRuntime, sqs: Any, region: str) -> None:
        self.spec = spec
        self._runtime = runtime
        self._sqs = sqs
        self._region = region
        self._stop = threading.Event()
        self._slots = threading.Semaphore(spec.max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=spec.max_concurrency, thread_name_prefix="sqs-invoke")
        self._thread = threading.Thread(target=self._run, name=f"poll-{spec.function_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Stop receiving (a receive in progress ends within its 1 s wait); ``stop`` then waits."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _receive_batch(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.spec.batching_window_s
        while not self._stop.is_set() and len(messages) < self.spec.batch_size:
            response = self._sqs.receive_message(
                QueueUrl=self.spec.queue_url,
                MaxNumberOfMessages=min(10, self.spec.batch_size - len(messages)),
                WaitTimeSeconds=0 if messages else 1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = response.get("Messages", [])
            messages.extend(received)
            if not messages and not received:
                return []
            if not received or time.monotonic() >= deadline:
                break
        return messages

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._slots.acquire()
                if self._stop.is_set():
                    self._slots.release()
                    return
                messages = self._receive_batch()
                if not messages:
                    self._slots.release()
                    self._stop.wait(0.05)
                    continue
                self._executor.submit(self._invoke, messages)
            except Exception:  # keep polling through transient errors, as Lambda does
                self._slots.release()
                if not self._stop.is_set():
                    logger.exception("polling %s failed", self.spec.queue_url)
                    self._stop.wait(1)

    def _invoke(self, messages: list[dict[str, Any]]) -> None:
        try:
            event = {"Records": [lambda_sqs_record(m, self.spec.queue_arn, self._region) for m in messages]}
            result = self._runtime.invoke(self.spec.function_name, event)
            to_delete = self._successful(messages, result.payload) if result.ok else []
            if not result.ok:
                logger.info("%s failed on a batch of %d: %s", self.spec.function_name, len(messages), result.payload)
            if to_delete:
                self._sqs.delete_message_batch(
                    QueueUrl=self.spec.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(to_delete)],
                )
        except Exception:
            logger.exception("invoking %s failed", self.spec.function_name)
        finally:
            self._slots.release()

    def _successful(self, messages: list[dict[str, Any]], payload: Any) -> list[dict[str, Any]]:
        if not self.spec.report_batch_item_failures or not isinstance(payload, dict):
            return messages
        failures = payload.get("batchItemFailures")
        if not failures:
            return messages
        ids = {m["MessageId"] for m in messages}
        failed = set()
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or identifier not in ids:
                return []  # Lambda treats a malformed report as a failure of the whole batch
            failed.add(identifier)
        return [m for m in messages if m["MessageId"] not in failed]
