"""deploy/update/delete_endpoint parameters: the rules a request is checked against before anything starts."""

import pytest
from pydantic import ValidationError

from sdpipe.contracts.endpoints import DeleteEndpointParams, DeployEndpointParams, UpdateEndpointParams


def test_deploy_defaults_and_a_full_request():
    params = DeployEndpointParams.model_validate(
        {"name": "my-endpoint", "instance_type": "ml.g5.2xlarge", "min_instances": 0, "max_instances": 4}
    )
    assert (params.max_concurrent_invocations, params.image_uri, params.environment) == (1, None, {})
    assert params.scaling.target_backlog_per_instance == 2.0 and params.scaling.scale_in_cooldown_seconds == 600


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "-bad"}, "'-bad' is not a valid endpoint name"),
        ({"name": "under_score"}, "is not a valid endpoint name"),
        ({"name": "x" * 41}, "is not a valid endpoint name"),
        ({"name": "a", "instance_type": "ml.m5.large"}, "'ml.m5.large' is not a GPU inference instance type"),
        ({"name": "a", "instance_type": "g5.xlarge"}, "is not a GPU inference instance type"),
        ({"name": "a", "min_instances": 3, "max_instances": 2}, "min_instances 3 is more than max_instances 2"),
        ({"name": "a", "max_instances": 0}, "greater than or equal to 1"),
        ({"name": "a", "max_concurrent_invocations": 100}, "less than or equal to 16"),
        ({"name": "a", "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_deploy_requests_name_the_rule(body, message):
    with pytest.raises(ValidationError) as failed:
        DeployEndpointParams.model_validate(body)
    assert message in str(failed.value)


def test_an_update_changes_only_what_it_names_and_is_checked_as_a_whole():
    current = {"name": "a", "instance_type": "ml.g5.xlarge", "min_instances": 1, "max_instances": 4, "in_flight": 2}
    merged = UpdateEndpointParams(name="a", max_instances=8).merged_with(current)
    assert (merged.instance_type, merged.min_instances, merged.max_instances) == ("ml.g5.xlarge", 1, 8)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        UpdateEndpointParams(name="a", max_instances=0).merged_with(current)
    with pytest.raises(ValidationError, match="min_instances 3 is more than max_instances 2"):
        UpdateEndpointParams(name="a", min_instances=3, max_instances=2).merged_with(current)
    with pytest.raises(ValidationError, match="not a GPU inference instance type"):
        UpdateEndpointParams(name="a", instance_type="ml.t3.medium")


def test_delete_needs_only_a_valid_name():
    assert DeleteEndpointParams(name="sd15").name == "sd15"
    with pytest.raises(ValidationError):
        DeleteEndpointParams(name="sd15", force=True)
