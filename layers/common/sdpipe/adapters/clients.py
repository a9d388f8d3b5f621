"""Lazy, cached, injectable boto3 clients.

Nothing creates a client at import time: the local stack (and moto in tests) must be up first, and
tests inject their own with ``clients.override``. Endpoints come from boto3's usual configuration,
so ``AWS_ENDPOINT_URL`` points every client at the local stack.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)


class AwsClients:
    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            with self._lock:
                client = self._clients.get(service)
                if client is None:
                    client = boto3.session.Session().client(service, config=_CONFIG)  # type: ignore[call-overload]
                    self._clients[service] = client
        return client

    def get_resource(self, service: str) -> Any:
        """A boto3 resource (DynamoDB's Table does the type marshalling for us)."""
        key = f"resource:{service}"
        resource = self._clients.get(key)
        if resource is None:
            with self._lock:
                resource = self._clients.get(key)
                if resource is None:
                    resource = boto3.session.Session().resource(service, config=_CONFIG)  # type: ignore[call-overload]
                    self._clients[key] = resource
        return resource

    def override(self, service: str, client: Any) -> None:
        with self._lock:
            self._clients[service] = client

    def reset(self) -> None:
        with self._lock:
            self._clients.clear()


clients = AwsClients()
