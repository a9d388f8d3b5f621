"""The workflow steps' error contract: throttling becomes ``Throttled`` (retried by the ASL with
jitter); anything else propagates for the workflow's Catch to record."""

from unittest.mock import MagicMock

import pytest
from botocore.exceptions import ClientError

from sdpipe.errors import Throttled
from sdpipe.logic.endpoint_lifecycle import EndpointLifecycle, _reason


def lifecycle_with(scaling: MagicMock) -> EndpointLifecycle:
    parts = {name: MagicMock() for name in ("ledger", "jobs", "endpoints", "workflows", "sagemaker", "publisher")}
    return EndpointLifecycle(scaling=scaling, settings=MagicMock(), **parts)


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "slow down"}}, "RegisterScalableTarget")


def teardown() -> dict:
    return {"step": "teardown", "workflow": {"sagemaker_name": "s-e", "name": "e", "job_id": "j-1"}}


def test_throttling_in_a_step_becomes_throttled():
    scaling = MagicMock()
    scaling.remove.side_effect = client_error("ThrottlingException")
    with pytest.raises(Throttled):
        lifecycle_with(scaling).step(teardown())


def test_other_errors_propagate_unchanged():
    scaling = MagicMock()
    scaling.remove.side_effect = client_error("AccessDeniedException")
    with pytest.raises(ClientError):
        lifecycle_with(scaling).step(teardown())
    with pytest.raises(ValueError, match="unknown workflow step"):
        lifecycle_with(MagicMock()).step({"step": "dance", "workflow": {}})


def test_failure_reasons_read_the_lambda_error_message():
    cause = '{"errorMessage": "No capacity for ml.g5.xlarge", "errorType": "ClientError"}'
    assert _reason({"Error": "ClientError", "Cause": cause}) == "ClientError: No capacity for ml.g5.xlarge"
    assert _reason({"Error": "SageMaker.EndpointFailed", "Cause": "endpoint is Failed: image pull"}) == (
        "SageMaker.EndpointFailed: endpoint is Failed: image pull"
    )
