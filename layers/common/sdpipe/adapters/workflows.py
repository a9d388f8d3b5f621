"""Step Functions executions, started idempotently: named after the job, a second start is a no-op."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients


class Workflows:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    def start(self, state_machine_arn: str, name: str, payload: dict[str, Any]) -> str:
        """Start the execution ``name``; its ARN, also when a duplicate delivery started it first."""
        sfn: Any = self._aws.get("stepfunctions")
        try:
            return str(
                sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))[
                    "executionArn"
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
                raise
        return execution_arn(state_machine_arn, name)


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of the execution ``name`` of a state machine (executions are named by job id)."""
    machine = state_machine_arn.split(":stateMachine:", 1)
    return f"{machine[0]}:execution:{machine[1]}:{name}"
