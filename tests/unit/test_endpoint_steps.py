"""The workflow steps' error contract: throttling becomes ``Throttled`` (retried by the ASL with
jitter), an IAM refusal ``AccessDenied`` (the job says which permission is missing); anything else
propagates for the workflow's Catch to record."""

from unittest.mock import ANY, MagicMock

import pytest
from botocore.exceptions import ClientError

from sdpipe.contracts.endpoints import EndpointRecord, EndpointStatus
from sdpipe.contracts.workflows import DescribedEndpoint, StepFailure
from sdpipe.errors import AccessDenied, Throttled
from sdpipe.logic.endpoint_drift import EndpointDrift
from sdpipe.logic.endpoint_records import EndpointRecords
from sdpipe.logic.endpoint_steps import EndpointSteps
from sdpipe.logic.workflows import failure_reason


def lifecycle_with(scaling: MagicMock) -> EndpointSteps:
    return EndpointSteps(MagicMock(), MagicMock(), MagicMock(), scaling, MagicMock())


def client_error(code: str, message: str = "slow down") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "RegisterScalableTarget")


def teardown() -> dict:
    state = {"sagemaker_name": "s-e", "name": "e", "job_id": "j-1", "action": "delete_endpoint", "poll_seconds": 5}
    return {"step": "teardown", "state": state}


def test_throttling_in_a_step_becomes_throttled():
    scaling = MagicMock()
    scaling.remove.side_effect = client_error("ThrottlingException")
    with pytest.raises(Throttled):
        lifecycle_with(scaling).step(teardown())


def test_an_iam_refusal_becomes_access_denied_with_awss_words():
    scaling = MagicMock()
    refusal = "User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: application-autoscaling:Foo"
    scaling.remove.side_effect = client_error("AccessDeniedException", refusal)
    with pytest.raises(AccessDenied) as raised:
        lifecycle_with(scaling).step(teardown())
    assert raised.value.code == "ACCESS_DENIED" and raised.value.message == refusal


def test_other_errors_propagate_unchanged():
    scaling = MagicMock()
    scaling.remove.side_effect = client_error("ValidationException")
    with pytest.raises(ClientError):
        lifecycle_with(scaling).step(teardown())
    with pytest.raises(ValueError, match="unknown endpoint step"):
        lifecycle_with(MagicMock()).step({"step": "dance", "state": {}})


def test_failure_reasons_read_the_lambda_error_message():
    cause = '{"errorMessage": "No capacity for ml.g5.xlarge", "errorType": "ClientError"}'
    assert failure_reason(StepFailure(Error="ClientError", Cause=cause)) == "ClientError: No capacity for ml.g5.xlarge"
    assert failure_reason(StepFailure(Error="SageMaker.EndpointFailed", Cause="endpoint is Failed: image pull")) == (
        "SageMaker.EndpointFailed: endpoint is Failed: image pull"
    )


def test_state_changes_out_of_order_or_after_deletion_change_nothing():
    endpoints = MagicMock()
    records = EndpointRecords(MagicMock(), endpoints, MagicMock(), 60)
    lifecycle = EndpointDrift(records, MagicMock(), "sdpipe")
    lifecycle.endpoints = endpoints  # type: ignore[attr-defined]
    record = EndpointRecord(name="e", sagemaker_name="sdpipe-e", status=EndpointStatus.IN_SERVICE, changed_at=2000)
    lifecycle.endpoints.get.return_value = record
    late = {"EndpointName": "sdpipe-e", "EndpointStatus": "FAILED", "LastModifiedTime": 1000}
    assert lifecycle.track(late) is None
    lifecycle.endpoints.get.return_value = record.model_copy(update={"status": EndpointStatus.DELETED, "changed_at": 0})
    assert lifecycle.track(late | {"LastModifiedTime": 3000}) is None
    assert lifecycle.track({"EndpointName": "other-stack-e", "EndpointStatus": "FAILED"}) is None
    lifecycle.endpoints.set_status.assert_not_called()
    # A newer change to a record no workflow holds is applied and announced.
    lifecycle.endpoints.get.return_value = record
    lifecycle.endpoints.set_status.return_value = True
    assert lifecycle.track(late | {"LastModifiedTime": 3000, "FailureReason": "instance retired"}) == "FAILED"
    lifecycle.endpoints.set_status.assert_called_once_with(
        "e", "FAILED", {"changed_at": 3000, "failure_reason": "instance retired"}, announcement=ANY
    )


def test_a_finished_deployment_records_when_sagemaker_last_changed_it_so_its_own_late_events_change_nothing():
    """The CREATING event of the deployment, redelivered after the workflow recorded IN_SERVICE
    (its consumer was killed), put the record back to CREATING: jobs then failed with
    NO_ENDPOINT_IN_SERVICE on a serving endpoint (the chaos test in CI)."""
    from datetime import UTC, datetime

    endpoints = MagicMock()
    records = EndpointRecords(MagicMock(), endpoints, MagicMock(), 60)
    ledger = MagicMock()
    ledger.get.return_value = None  # the job is not what this test is about
    steps = EndpointSteps(ledger, records, MagicMock(), MagicMock(), MagicMock())
    in_service_at = datetime(2026, 12, 3, 12, 7, 30, tzinfo=UTC)
    described = {"EndpointStatus": "InService", "EndpointConfigName": "c", "LastModifiedTime": in_service_at}
    state = {"sagemaker_name": "sdpipe-e", "name": "e", "job_id": "j-1", "action": "deploy_endpoint",
             "poll_seconds": 5, "config_name": "c", "model_name": "m",
             "described": DescribedEndpoint.model_validate(described).model_dump()}  # fmt: skip
    endpoints.get.return_value = None
    endpoints.finish_workflow.return_value = False  # what it records is the point, not the announcement
    steps.step({"step": "finish", "state": state})
    fields = endpoints.finish_workflow.call_args.args[3]
    assert fields["changed_at"] == int(in_service_at.timestamp() * 1000)

    record = EndpointRecord(name="e", sagemaker_name="sdpipe-e", status=EndpointStatus.IN_SERVICE,
                            changed_at=fields["changed_at"])  # fmt: skip
    endpoints.get.return_value = record
    creating = {"EndpointName": "sdpipe-e", "EndpointStatus": "CREATING",
                "LastModifiedTime": fields["changed_at"] - 90_000}  # fmt: skip
    assert EndpointDrift(records, MagicMock(), "sdpipe").track(creating) is None
    endpoints.set_status.assert_not_called()
