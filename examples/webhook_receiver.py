"""A webhook for sdpipe's events: an HTTP(S) endpoint subscribed to the events topic.

SNS signs every delivery and retries failed ones; this receiver checks what SNS's documentation
asks of one ("Verifying the signatures of Amazon SNS messages") before it trusts a message:

- the message is from the topic it subscribed to (``TopicArn``), and recent (``Timestamp``, so an
  old delivery cannot be replayed);
- the certificate comes over HTTPS from SNS itself (``https://sns.<region>.amazonaws.com/…pem``);
- the signature (RSA PKCS#1 v1.5 over SNS's canonical string; SHA1 for SignatureVersion 1, SHA256
  for 2, which the stack's events topic uses) verifies with that certificate, checked by the
  ``cryptography`` library;
- a subscription confirmation is confirmed (its ``SubscribeURL`` visited) only once verified.

sdpipe events are delivered at least once, each with a stable ``event_id``: the receiver hands
each event to ``on_event`` once. Run it (behind TLS, e.g. a load balancer or a tunnel)::

    SDPIPE_EVENTS_TOPIC_ARN=arn:aws:sns:…:sdpipe-EventsTopic-… python examples/webhook_receiver.py

On the local stack the certificates are served by the local endpoint: set
``SNS_CERTIFICATE_ENDPOINT`` to it (``$AWS_ENDPOINT_URL``). Needs ``cryptography``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import make_server

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Fetch = Callable[[str], bytes]

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_CERTIFICATE_PATH = re.compile(r"^/SimpleNotificationService-[0-9a-f]+\.pem$")
# What SNS signs, in this order, per message type.
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class InvalidSnsMessage(Exception):
    """Why a delivery is not trusted (the receiver answers 403)."""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


class SnsMessageVerifier:
    def __init__(
        self,
        topic_arn: str,
        *,
        certificate_endpoint: str | None = None,
        max_age: timedelta = timedelta(hours=1),
        fetch: Fetch = _get,
    ) -> None:
        self.topic_arn = topic_arn
        # The local stack only: its endpoint serves the certificates at SNS's paths.
        self.certificate_endpoint = certificate_endpoint.rstrip("/") if certificate_endpoint else None
        self.max_age = max_age
        self._fetch = fetch
        self._certificates: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def verify(self, message: dict[str, Any]) -> None:
        kind = message.get("Type")
        if kind not in _SIGNED_FIELDS:
            raise InvalidSnsMessage(f"unknown message type {kind!r}")
        if message.get("TopicArn") != self.topic_arn:
            raise InvalidSnsMessage(f"from topic {message.get('TopicArn')!r}, not the one subscribed to")
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise InvalidSnsMessage(f"unknown SignatureVersion {message.get('SignatureVersion')!r}")
        self._check_age(message.get("Timestamp"))
        key = self._public_key(self.sns_url(message.get("SigningCertURL")))
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            key.verify(signature, _string_to_sign(kind, message), padding.PKCS1v15(), algorithm())
        except (InvalidSignature, ValueError):
            raise InvalidSnsMessage("the signature does not verify") from None

    def sns_url(self, url: object) -> str:
        """``url`` if it is SNS's own (HTTPS, an SNS host); on the local stack, the same path on
        the local endpoint."""
        parts = urlsplit(str(url or ""))
        if parts.scheme != "https" or not _SNS_HOST.match(parts.hostname or ""):
            raise InvalidSnsMessage(f"{url!r} is not an SNS URL")
        if self.certificate_endpoint is None:
            return str(url)
        return f"{self.certificate_endpoint}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    def _check_age(self, timestamp: object) -> None:
        try:
            sent = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidSnsMessage(f"unreadable Timestamp {timestamp!r}") from None
        if sent.tzinfo is None or datetime.now(UTC) - sent > self.max_age:
            raise InvalidSnsMessage(f"sent at {timestamp}, longer ago than {self.max_age}")

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        if not _CERTIFICATE_PATH.match(urlsplit(url).path):
            raise InvalidSnsMessage(f"{url!r} is not an SNS signing certificate")
        with self._lock:
            cached = self._certificates.get(url)
        if cached is not None:
            return cached
        try:
            key = x509.load_pem_x509_certificate(self._fetch(url)).public_key()
        except Exception as exc:
            raise InvalidSnsMessage(f"cannot load the certificate {url}: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidSnsMessage(f"{url} does not hold an RSA key")
        with self._lock:
            self._certificates[url] = key
        return key


def _string_to_sign(kind: str, message: dict[str, Any]) -> bytes:
    lines = []
    for field in _SIGNED_FIELDS[kind]:
        if field == "Subject" and message.get("Subject") is None:
            continue  # signed only when the message has one
        if field not in message:
            raise InvalidSnsMessage(f"the message has no {field}")
        lines += [field, str(message[field])]
    return ("\n".join(lines) + "\n").encode()


class WebhookReceiver:
    """A WSGI app: verified sdpipe events go to ``on_event``, each ``event_id`` once."""

    def __init__(
        self,
        verifier: SnsMessageVerifier,
        on_event: Callable[[dict[str, Any]], None],
        *,
        fetch: Fetch = _get,
        remembered: int = 10_000,
    ) -> None:
        self.verifier = verifier
        self.on_event = on_event
        self._fetch = fetch
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, "405 Method Not Allowed", "POST only")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            message = json.loads(environ["wsgi.input"].read(min(length, 512 * 1024)))
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return _answer(start_response, "400 Bad Request", f"not an SNS message: {exc}")
        try:
            self.verifier.verify(message)
        except InvalidSnsMessage as exc:
            return _answer(start_response, "403 Forbidden", str(exc))
        if message["Type"] == "SubscriptionConfirmation":
            self._fetch(self.verifier.sns_url(message.get("SubscribeURL")))
            return _answer(start_response, "200 OK", "subscription confirmed")
        if message["Type"] == "Notification":
            event = json.loads(message["Message"])
            event_id = str(event.get("event_id") or message["MessageId"])
            with self._lock:
                seen = event_id in self._seen
            if not seen:
                self.on_event(event)  # should it raise, the answer is a 500 and SNS delivers it again
                self._remember(event_id)
        return _answer(start_response, "200 OK", "ok")

    def _remember(self, event_id: str) -> None:
        with self._lock:
            self._seen[event_id] = None
            if len(self._seen) > self._remembered:
                self._seen.popitem(last=False)


def _answer(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _print_event(event: dict[str, Any]) -> None:
    job = event.get("job_id") or (event.get("model") or {}).get("name") or ""
    print(event["type"], event.get("status"), job, json.dumps(event.get("context") or {}), flush=True)


if __name__ == "__main__":
    verifier = SnsMessageVerifier(
        os.environ["SDPIPE_EVENTS_TOPIC_ARN"], certificate_endpoint=os.environ.get("SNS_CERTIFICATE_ENDPOINT")
    )
    port = int(os.environ.get("PORT", "8080"))
    with make_server("0.0.0.0", port, WebhookReceiver(verifier, _print_event)) as server:  # noqa: S104
        print(f"listening on :{port}", file=sys.stderr)
        server.serve_forever()
