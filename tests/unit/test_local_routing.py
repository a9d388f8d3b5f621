"""The local stack's moto dispatcher routes each host as moto does, working each out once."""

from __future__ import annotations

import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from sdpipe_local.server import _RoutingCachedDispatcher

HOSTS = [
    "dynamodb.us-east-1.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "sqs.us-east-1.amazonaws.com",
    "sns.us-east-1.amazonaws.com",
    "runtime.sagemaker.us-east-1.amazonaws.com",
    "states.us-east-1.amazonaws.com",
    "moto_api",
    "s3",
    "unknown.example.org",
    None,
]


def test_each_host_goes_to_the_backend_moto_chooses_and_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = DomainDispatcherApplication(create_backend_app)
    cached = _RoutingCachedDispatcher(create_backend_app)
    expected = [moto.get_backend_for_host(host) for host in HOSTS]
    assert [cached.get_backend_for_host(host) for host in HOSTS] == expected
    assert expected[0] == "dynamodb" and expected[1] == "s3"

    def worked_out_again(self: object, host: str | None) -> None:
        raise AssertionError(f"{host} routed again")

    monkeypatch.setattr(DomainDispatcherApplication, "get_backend_for_host", worked_out_again)
    assert [cached.get_backend_for_host(host) for host in HOSTS] == expected
