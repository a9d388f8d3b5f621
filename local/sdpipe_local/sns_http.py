"""SNS HTTP(S) subscriptions, delivered the way SNS delivers them.

moto signs each HTTP notification (SignatureVersion 2, a certificate of its own) but POSTs it
inside the ``Publish`` call, once: a slow or unreachable webhook would stall, or fail, the Lambda
that published the event, which SNS never does. Here the matching is still done at publish time
and the POST happens off it, with SNS's headers and its message attributes in the body, retried
a few times (AWS's default HTTP delivery policy retries three times, 20 s apart; locally 1, 2 and
4 s). The signing certificates, which SNS serves at ``https://sns.<region>.amazonaws.com/...pem``,
are served by the local endpoint at the same path (a receiver's certificate URL override points
there, see ``examples/webhook_receiver.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
RETRY_DELAYS_S = (1.0, 2.0, 4.0)
_CERTIFICATE_PATH = re.compile(r"^/(?P<name>SimpleNotificationService-[0-9a-f]+\.pem)$")
_deliveries = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sns-http")


def deliver_http_off_the_publish() -> None:
    """Patch moto's subscriptions (once; safe to call again) so HTTP(S) deliveries leave the
    publisher alone."""
    from moto.sns.models import Subscription

    original = Subscription.publish
    if getattr(original, "_sdpipe_http", False):
        return

    @functools.wraps(original)
    def publish(self: Any, message: str, message_id: str, subject: str | None = None,
                message_attributes: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        if self.protocol not in ("http", "https"):
            original(self, message, message_id, subject, message_attributes, **kwargs)
            return
        matcher = self._filter_policy_matcher
        if matcher is not None and not matcher.matches(message_attributes, message):
            return
        body = self.get_post_data(message, message_id, subject)
        if message_attributes:  # SNS includes them in the JSON (moto leaves them out)
            body["MessageAttributes"] = {
                name: {"Type": value.get("DataType", "String"), "Value": value.get("StringValue")}
                for name, value in message_attributes.items()
            }
        _deliveries.submit(_post, self.endpoint, body, self.arn)

    publish._sdpipe_http = True  # type: ignore[attr-defined]
    Subscription.publish = publish  # type: ignore[assignment]


def _post(endpoint: str, body: dict[str, Any], subscription_arn: str) -> None:
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": body["Type"],
        "x-amz-sns-message-id": body["MessageId"],
        "x-amz-sns-topic-arn": body["TopicArn"],
        "x-amz-sns-subscription-arn": subscription_arn,
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
    data = json.dumps(body).encode()
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
        time.sleep(delay)
        request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=15):
                return
        except urllib.error.HTTPError as answer:
            if answer.code < 500 and answer.code not in (408, 429):  # SNS does not retry a client error
                logger.warning("%s answered %s to SNS message %s", endpoint, answer.code, body["MessageId"])
                return
            outcome = f"HTTP {answer.code}"
        except OSError as exc:
            outcome = type(exc).__name__
        logger.info("delivery %d of SNS message %s to %s failed: %s", attempt + 1, body["MessageId"], endpoint, outcome)
    logger.warning("gave up delivering SNS message %s to %s", body["MessageId"], endpoint)


class SnsCertificates:
    """``GET /SimpleNotificationService-<id>.pem``: the certificate moto signed a delivery with,
    unauthenticated, as SNS serves them."""

    def __init__(self, app: Any, region: str) -> None:
        self._app = app
        self._region = region

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = _CERTIFICATE_PATH.match(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") != "GET" or not match:
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.sns.models import sns_backends

        pem = sns_backends[DEFAULT_ACCOUNT_ID][self._region]._message_public_keys.get(match.group("name"))
        if pem is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "application/x-pem-file"), ("Content-Length", str(len(pem)))])
        return [pem]
