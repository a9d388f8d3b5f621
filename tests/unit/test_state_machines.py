"""Every workflow handles every failure: each Task retries transient errors with jitter and catches
the rest (a Task without Catch fails the execution and leaves its job open until the sweeper), and
every error name the ASL matches is one something can actually raise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdpipe import errors

ROOT = Path(__file__).resolve().parents[2]
MACHINES = sorted((ROOT / "statemachines").glob("*.asl.json"))
# Step Functions' own error names (the "Error names" table of the Step Functions developer guide).
STATES_ERRORS = {
    "States.ALL", "States.DataLimitExceeded", "States.ExceedToleratedFailureThreshold", "States.HeartbeatTimeout",
    "States.Http.Socket", "States.IntrinsicFailure", "States.ItemReaderFailed", "States.NoChoiceMatched",
    "States.ParameterPathFailure", "States.Permissions", "States.ResultPathMatchFailure",
    "States.ResultWriterFailed", "States.Runtime", "States.TaskFailed", "States.Timeout", "States.BranchFailed",
    "States.QueryEvaluationError",
}  # fmt: skip
# What the Lambda service integration raises for Lambda's own failures (the guide's "Handling
# transient Lambda service exceptions" and the Lambda Invoke API's errors).
LAMBDA_ERRORS = {
    "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException", "Lambda.ClientExecutionTimeoutException", "Lambda.Unknown",
    # The errorType Lambda reports when the function's runtime process dies (killed, out of memory).
    "Runtime.ExitError",
}  # fmt: skip


def tasks(states: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        if state["Type"] == "Task":
            yield f"{path}{name}", state
        if state["Type"] == "Map":
            inner = state.get("ItemProcessor") or state.get("Iterator")
            yield from tasks(inner["States"], f"{path}{name}/")
        if state["Type"] == "Parallel":
            for index, branch in enumerate(state["Branches"]):
                yield from tasks(branch["States"], f"{path}{name}[{index}]/")


def error_names(states: dict[str, Any]) -> Iterator[str]:
    for _path, state in tasks(states):
        for rule in (*state.get("Retry", []), *state.get("Catch", [])):
            yield from rule["ErrorEquals"]
    for state in states.values():
        if state["Type"] in ("Map", "Parallel"):
            for rule in (*state.get("Retry", []), *state.get("Catch", [])):
                yield from rule["ErrorEquals"]


def definition(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_there_are_workflows():
    assert {p.name for p in MACHINES} >= {
        "deploy_endpoint.asl.json", "update_endpoint.asl.json", "delete_endpoint.asl.json",
        "fetch_model.asl.json", "train_lora.asl.json",
    }  # fmt: skip


@pytest.mark.parametrize("machine", MACHINES, ids=lambda p: p.name)
def test_every_task_retries_with_jitter_and_catches(machine):
    problems = []
    for path, state in tasks(definition(machine)["States"]):
        if not state.get("Retry"):
            problems.append(f"{path}: no Retry")
        elif any(rule.get("JitterStrategy") != "FULL" for rule in state["Retry"]):
            problems.append(f"{path}: a Retry without JitterStrategy FULL")
        catches = state.get("Catch") or []
        if not any("States.ALL" in rule["ErrorEquals"] for rule in catches):
            problems.append(f"{path}: no Catch for States.ALL")
    assert problems == []


@pytest.mark.parametrize("machine", MACHINES, ids=lambda p: p.name)
def test_every_matched_error_name_can_be_raised(machine):
    ours = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.SdpipeError)
    }
    unknown = sorted(set(error_names(definition(machine)["States"])) - ours - STATES_ERRORS - LAMBDA_ERRORS)
    assert unknown == [], f"ErrorEquals names that nothing raises: {unknown}"


def test_every_lambda_task_retries_transient_errors_with_the_shared_fragment():
    """One retry policy for Lambda's own failures and our Throttled, kept in step by ``make asl``."""
    from tools.asl import out_of_step, transient_retry

    assert out_of_step() == []
    for machine in MACHINES:
        for _path, state in tasks(definition(machine)["States"]):
            if state.get("Resource") == "arn:aws:states:::lambda:invoke":
                assert transient_retry() in state["Retry"]
