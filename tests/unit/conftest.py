from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from sdpipe.adapters.clients import AwsClients
from sdpipe_local.dynamo_atomic import make_dynamodb_writes_atomic
from tests.unit.world import World


@pytest.fixture
def moto_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsClients]:
    """Real adapters' clients on in-process moto (no endpoint, no network)."""
    make_dynamodb_writes_atomic()  # as the local stack does: moto's conditional writes race otherwise
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield AwsClients()


@pytest.fixture
def world(moto_clients: AwsClients) -> World:
    """The stack's tables, bucket and events topic on in-process moto (``tests/unit/world.py``)."""
    return World.create(moto_clients)
