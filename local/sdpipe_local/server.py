"""moto in server mode on 127.0.0.1, with Lambda's Invoke API served by the real handlers, and
IAM enforced in front of all of it (``sdpipe_local.iam``).

moto cannot run Lambda code without Docker, so requests to ``POST /2015-03-31/functions/<name>/
invocations`` for a function of the stack are answered by the local Lambda runtime instead. That
one change makes ``aws lambda invoke``, the CLI's direct invokes and Step Functions Lambda tasks
(moto's interpreter calls Invoke over HTTP) all run the same handler code.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from sdpipe_local.chaos import Chaos, ThrottlingMiddleware
from sdpipe_local.dynamo_atomic import make_dynamodb_writes_atomic
from sdpipe_local.iam import IamEnforcer, Principals, RequestChecks, secret_arn_lookup
from sdpipe_local.lambda_runtime import LambdaRuntime
from sdpipe_local.s3_multipart import make_multipart_completion_streaming
from sdpipe_local.s3_streaming import S3StreamingGetMiddleware, S3UploadPartMiddleware
from sdpipe_local.sagemaker import LocalSageMaker, SageMakerError
from sdpipe_local.sns_http import SnsCertificates, deliver_http_off_the_publish

logger = logging.getLogger(__name__)
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations/?$")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _RoutingCachedDispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves which host.

    moto works it out again for every request, under one lock: a listing of its own package
    folder (a stat of each of ~150 entries) and then its URL patterns, one regular expression
    after another. The answer for a host never changes, so each is worked out once."""

    def __init__(self, create_app: Callable[..., Any]) -> None:
        super().__init__(create_app)
        self._backend_of: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host not in self._backend_of:  # called under the dispatcher's lock
            self._backend_of[host] = super().get_backend_for_host(host)
        return self._backend_of[host]


class LambdaInvokeMiddleware:
    def __init__(self, app: Any, runtime: LambdaRuntime) -> None:
        self._app = app
        self._runtime = runtime

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = _INVOKE_PATH.match(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") == "POST" and match:
            name = unquote(match.group("name"))
            pool = self._runtime.resolve(name)
            if pool is not None:
                return self._invoke(name, environ, start_response)
        return self._app(environ, start_response)  # type: ignore[no-any-return]

    def _invoke(self, name: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            event = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError:
            return _respond(
                start_response, "400 Bad Request", {"Type": "User", "message": "Could not parse request body into json"}
            )
        invocation_type = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        if invocation_type == "DryRun":
            start_response("204 No Content", [("Content-Length", "0")])
            return [b""]
        if invocation_type == "Event":
            threading.Thread(target=self._runtime.invoke, args=(name, event), daemon=True).start()
            start_response("202 Accepted", [("Content-Length", "0")])
            return [b""]
        result = self._runtime.invoke(name, event)
        headers = [("X-Amz-Executed-Version", "$LATEST")]
        if result.function_error:
            headers.append(("X-Amz-Function-Error", result.function_error))
        return _respond(start_response, "200 OK", result.payload, headers)


def _respond(
    start_response: StartResponse, status: str, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Iterable[bytes]:
    data = json.dumps(payload).encode()
    # Every AWS response carries a request id; botocore (and moto's Step Functions interpreter,
    # which turns errors into ``SageMaker.<Code>``) reads it from this header.
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("x-amzn-RequestId", str(uuid.uuid4())),
            *(headers or []),
        ],
    )
    return [data]


_ASYNC_INVOKE_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/async-invocations/?$")


class SageMakerMiddleware:
    """SageMaker's endpoint APIs and InvokeEndpointAsync, answered by the local stand-in."""

    def __init__(self, app: Any, sagemaker: LocalSageMaker) -> None:
        self._app = app
        self._sagemaker = sagemaker

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        match = _ASYNC_INVOKE_PATH.match(environ.get("PATH_INFO", ""))
        try:
            if target.startswith("SageMaker.") and self._sagemaker.handles(target.split(".", 1)[1]):
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
                return _respond(start_response, "200 OK", self._sagemaker.call(target.split(".", 1)[1], body))
            if match:
                headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
                response_headers, payload = self._sagemaker.invoke_async(unquote(match.group("name")), headers)
                return _respond(start_response, "202 Accepted", payload, list(response_headers.items()))
        except SageMakerError as error:
            status = "400 Bad Request" if error.status == 400 else f"{error.status} Error"
            return _respond(
                start_response,
                status,
                {"__type": error.code, "message": error.message},
                [("x-amzn-ErrorType", error.code)],
            )
        return self._app(environ, start_response)  # type: ignore[no-any-return]


class LocalAwsServer:
    """The single endpoint every client of the local stack talks to."""

    def __init__(
        self,
        runtime: LambdaRuntime,
        sagemaker: LocalSageMaker,
        account: str,
        admin_keys: dict[str, str],
        *,
        port: int = 0,
        chaos: Chaos | None = None,
        caller_service: Callable[[str], str | None] | None = None,
        region: str = "us-east-1",
    ) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        make_dynamodb_writes_atomic()  # conditional writes as atomic as DynamoDB's
        deliver_http_off_the_publish()  # webhooks delivered as SNS delivers them
        make_multipart_completion_streaming()  # multipart uploads joined part by part, announced once
        self._hosts: set[str] = set()
        moto_app = _RoutingCachedDispatcher(create_backend_app)
        self.s3_parts = S3UploadPartMiddleware(S3StreamingGetMiddleware(moto_app, self._hosts))
        served: Any = LambdaInvokeMiddleware(SageMakerMiddleware(self.s3_parts, sagemaker), runtime)
        if chaos is not None:  # throttling is decided after IAM, as AWS authorises first
            served = ThrottlingMiddleware(served, chaos, caller_service or (lambda _key: None))
        # IAM is checked before anything answers, the Lambda and SageMaker APIs included.
        checks = RequestChecks(account, secret_arn_lookup(account), sagemaker.endpoint_config_name)
        self.iam = IamEnforcer(served, Principals(account, admin_keys), checks)
        app = SnsCertificates(self.iam, region)  # public, as SNS serves them
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self.port = int(self._server.server_address[1])
        self._hosts.update({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-aws", daemon=True)

    @property
    def serving(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
