"""examples/webhook_receiver.py: what it trusts, and what it refuses, signed as SNS signs."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "arn:aws:sns:us-east-1:123456789012:sdpipe-EventsTopic-X"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_receiver", ROOT / "examples" / "webhook_receiver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


receiver = _load()


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def signed(key: rsa.RSAPrivateKey, version: str = "2", **fields: Any) -> dict[str, Any]:
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": TOPIC,
        "Message": json.dumps({"type": "job.succeeded", "status": "SUCCEEDED", "event_id": "e-1", "job_id": "j-1"}),
        "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
    } | fields
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    text = receiver._string_to_sign(message["Type"], message)
    message["Signature"] = base64.b64encode(key.sign(text, padding.PKCS1v15(), algorithm)).decode()
    return message


class Site:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.fetched: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem if url.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"


def post(app: Any, message: dict[str, Any] | bytes) -> tuple[str, str]:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    answered: list[str] = []
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    chunks = app(environ, lambda status, headers: answered.append(status))
    return answered[0], b"".join(chunks).decode()


@pytest.fixture
def world(signer):
    key, pem = signer
    site = Site(pem)
    events: list[dict[str, Any]] = []
    app = receiver.WebhookReceiver(receiver.SnsMessageVerifier(TOPIC, fetch=site), events.append, fetch=site)
    return key, site, events, app


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_notification_is_handed_on_once_however_often_it_is_delivered(world, version):
    key, site, events, app = world
    message = signed(key, version)
    assert post(app, message)[0] == "200 OK"
    assert post(app, signed(key, version, MessageId="m-2"))[0] == "200 OK"  # SNS's retry: same event_id
    assert [e["job_id"] for e in events] == ["j-1"]
    assert site.fetched == [CERT_URL]  # the certificate is fetched once


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"TopicArn": "arn:aws:sns:us-east-1:666666666666:other"}, "not the one subscribed to"),
        ({"SigningCertURL": "https://evil.example.com/SimpleNotificationService-0123abcd.pem"}, "not an SNS URL"),
        ({"SigningCertURL": "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"}, "not an SNS"),
        ({"SigningCertURL": "https://sns.us-east-1.amazonaws.com/anything.pem"}, "not an SNS signing certificate"),
        ({"SignatureVersion": "3"}, "unknown SignatureVersion"),
        ({"Type": "Surprise"}, "unknown message type"),
    ],
)
def test_a_message_not_from_the_topic_or_not_from_sns_is_refused(world, change, words):
    key, _site, events, app = world
    status, text = post(app, signed(key) | change)
    assert status == "403 Forbidden" and words in text and events == []


def test_a_tampered_message_or_an_old_one_is_refused(world):
    key, _site, events, app = world
    tampered = signed(key) | {"Message": json.dumps({"type": "job.succeeded", "event_id": "e-9", "job_id": "j-9"})}
    assert post(app, tampered) == ("403 Forbidden", "the signature does not verify")
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    status, text = post(app, signed(key, Timestamp=old))
    assert status == "403 Forbidden" and "longer ago than" in text
    assert post(app, b"not json")[0] == "400 Bad Request"
    assert events == []


def test_a_subscription_is_confirmed_only_when_the_confirmation_verifies(world):
    key, site, _events, app = world
    url = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
    confirmation = {"Type": "SubscriptionConfirmation", "Token": "t", "SubscribeURL": url, "Message": "confirm"}
    forged = signed(key, **confirmation) | {"SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Other"}
    assert post(app, forged)[0] == "403 Forbidden" and url not in site.fetched
    assert post(app, signed(key, **confirmation)) == ("200 OK", "subscription confirmed")
    assert site.fetched[-1] == url


def test_an_event_whose_handler_fails_is_not_remembered(signer):
    key, pem = signer
    site, events = Site(pem), []

    def flaky(event: dict[str, Any]) -> None:
        if not events:
            events.append({})
            raise RuntimeError("database down")
        events.append(event)

    app = receiver.WebhookReceiver(receiver.SnsMessageVerifier(TOPIC, fetch=site), flaky, fetch=site)
    with pytest.raises(RuntimeError):  # the WSGI server answers 500: SNS delivers it again
        post(app, signed(key))
    assert post(app, signed(key))[0] == "200 OK" and events[-1]["job_id"] == "j-1"


def test_on_the_local_stack_certificates_come_from_the_local_endpoint(signer):
    key, pem = signer
    site = Site(pem)
    verifier = receiver.SnsMessageVerifier(TOPIC, certificate_endpoint="http://127.0.0.1:4566/", fetch=site)
    verifier.verify(signed(key))
    assert site.fetched == ["http://127.0.0.1:4566/SimpleNotificationService-0123abcd.pem"]
