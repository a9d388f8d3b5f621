"""Lazy, cached, injectable boto3 clients.

Nothing creates a client at import time: the local stack (and moto in tests) must be up first, and
tests inject their own with ``clients.override``. Endpoints come from boto3's usual configuration,
so ``AWS_ENDPOINT_URL`` points every client at the local stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
_SHARED: dict[str, Any] = {}  # the first session's loader, once there is one


def _session() -> boto3.session.Session:
    """A session of its own per client (creating clients from one session is not thread-safe),
    sharing one loader: each would otherwise read and parse the service's model files again."""
    session = boto3.session.Session()
    loader = _SHARED.setdefault("data_loader", session._session.get_component("data_loader"))
    session._session.register_component("data_loader", loader)
    return session


class AwsClients:
    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, service: str) -> Any:
        return self._cached(service, lambda: _session().client(service, config=_CONFIG))  # type: ignore[call-overload]

    def get_patient(self, service: str) -> Any:
        """A client that waits up to 15 minutes for an answer (S3 completing a multipart upload of
        many GiB answers late; AWS keeps the connection alive meanwhile, the local stack does not)."""
        config = _CONFIG.merge(Config(read_timeout=900))
        return self._cached(f"patient:{service}", lambda: _session().client(service, config=config))  # type: ignore[call-overload]

    def get_presigner(self, service: str) -> Any:
        """A client for presigned URLs, signed with SigV4: botocore presigns S3 URLs in us-east-1
        with SigV2 unless told otherwise, and S3 refuses SigV2 on buckets made since June 2020."""
        config = _CONFIG.merge(Config(signature_version="s3v4"))
        return self._cached(f"presigner:{service}", lambda: _session().client(service, config=config))  # type: ignore[call-overload]

    def get_resource(self, service: str) -> Any:
        """A boto3 resource (DynamoDB's Table does the type marshalling for us)."""
        return self._cached(f"resource:{service}", lambda: _session().resource(service, config=_CONFIG))  # type: ignore[call-overload]

    def _cached(self, key: str, create: Callable[[], Any]) -> Any:
        found = self._clients.get(key)
        if found is None:
            with self._lock:
                found = self._clients.get(key)
                if found is None:
                    found = self._clients[key] = create()
        return found

    def override(self, service: str, client: Any) -> None:
        with self._lock:
            self._clients[service] = client

    def reset(self) -> None:
        with self._lock:
            self._clients.clear()


clients = AwsClients()


# Error codes AWS APIs answer throttling with (S3's SlowDown included).
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)


# Error codes AWS APIs answer an IAM refusal with (SNS says AuthorizationError).
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "AuthorizationError"})


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_access_denied(exc: ClientError) -> bool:
    return error_code(exc) in ACCESS_DENIED_CODES


def denial_message(exc: ClientError) -> str:
    """AWS's message for a refusal ("User: ... is not authorized to perform: <action> on resource: ...")."""
    error = exc.response.get("Error", {})
    operation = getattr(exc, "operation_name", "")
    return str(error.get("Message") or f"{operation}: {error.get('Code')}")
