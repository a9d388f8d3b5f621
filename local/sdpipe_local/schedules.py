"""EventBridge schedule rules, run like EventBridge runs them.

``rate(N minute|minutes|hour|hours|day|days)`` as in AWS; the local stack also accepts
``rate(N second|seconds)`` so a template parameter can make a sweeper tick quickly locally.
Lambda targets get EventBridge's "Scheduled Event"; SQS and SNS targets get it as the message.
``cron(...)`` schedules are not emulated (a warning says so).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sdpipe_local.lambda_runtime import LambdaRuntime

logger = logging.getLogger(__name__)
_RATE = re.compile(r"^rate\((\d+)\s+(second|seconds|minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class ScheduleSpec:
    rule_name: str
    rule_arn: str
    expression: str
    targets: list[dict[str, Any]]


def rate_seconds(expression: str) -> float | None:
    match = _RATE.match(expression.strip())
    if not match:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


class Scheduler:
    def __init__(
        self, specs: list[ScheduleSpec], runtime: LambdaRuntime, client: Any, region: str, account: str
    ) -> None:
        self._specs = specs
        self._runtime = runtime
        self._client = client
        self._region, self._account = region, account
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for spec in self._specs:
            interval = rate_seconds(spec.expression)
            if interval is None:
                logger.warning("schedule %s (%s) is not emulated locally", spec.rule_name, spec.expression)
                continue
            thread = threading.Thread(
                target=self._run, args=(spec, interval), name=f"schedule-{spec.rule_name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, spec: ScheduleSpec, interval: float) -> None:
        # EventBridge keeps its cadence whatever the target does: a slow or killed run does not
        # push the next one back, and runs may overlap. So each firing gets its own thread.
        due = time.monotonic() + interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            threading.Thread(target=self.fire, args=(spec,), name=f"fire-{spec.rule_name}", daemon=True).start()
            due += interval

    def fire(self, spec: ScheduleSpec) -> None:
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": self._account,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region,
            "resources": [spec.rule_arn],
            "detail": {},
        }
        for target in spec.targets:
            payload = json.loads(target["Input"]) if "Input" in target else event
            arn = str(target["Arn"])
            try:
                if ":lambda:" in arn:
                    result = self._runtime.invoke(arn, payload)  # asynchronous invoke: errors are logged
                    if not result.ok:
                        logger.warning("scheduled %s failed: %s", arn, result.payload)
                elif ":sqs:" in arn:
                    name = arn.rsplit(":", 1)[1]
                    url = self._client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
                    self._client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(payload))
                elif ":sns:" in arn:
                    self._client("sns").publish(TopicArn=arn, Message=json.dumps(payload))
                else:
                    logger.warning("schedule target %s is not emulated locally", arn)
            except Exception:
                logger.exception("schedule %s could not reach %s", spec.rule_name, arn)
