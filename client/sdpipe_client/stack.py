"""Find the stack's resource names: its CloudFormation outputs (AWS or the local stack)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpipe.adapters.clients import clients
from sdpipe.errors import ConfigurationError

LOCAL_STATE_FILE = Path(".sdpipe-local") / "stack.json"


@dataclass(frozen=True)
class StackOutputs:
    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        try:
            return self.values[key]
        except KeyError:
            raise ConfigurationError(f"the stack has no output {key!r}; is it up to date?") from None


def read_local_state(path: Path = LOCAL_STATE_FILE) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def stack_outputs(stack_name: str) -> StackOutputs:
    """Outputs of ``stack_name`` through CloudFormation (honours AWS_ENDPOINT_URL)."""
    cloudformation: Any = clients.get("cloudformation")
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:
        raise ConfigurationError(
            f"cannot read stack {stack_name!r}: {exc}. Deploy it (sam deploy --guided) or start the "
            "local stack (sdpipe local up) and export the AWS_ENDPOINT_URL it prints."
        ) from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return StackOutputs(outputs)
