"""Reading request envelopes and the extra-network syntax of prompts."""

from __future__ import annotations

import pytest

from sdpipe.contracts.inference import extra_networks, strip_extra_networks
from sdpipe.contracts.jobs import job_id_for
from sdpipe.errors import RequestNotJson
from sdpipe.logic.requests import parse_request


def test_job_id_is_derived_from_the_request_id():
    assert job_id_for("abc") == job_id_for("abc") != job_id_for("abd")
    assert job_id_for("abc").startswith("j-") and len(job_id_for("abc")) == 26


def test_a_valid_envelope_is_read_with_its_context():
    parsed = parse_request(
        '{"action": "txt2img", "request_id": "r-1", "context": {"a": 1}, "params": {}}', "txt2img", "m"
    )
    assert parsed.error is None and parsed.request_id == "r-1" and parsed.context == {"a": 1}


def test_the_message_id_is_the_default_request_id():
    assert parse_request('{"action": "txt2img"}', "txt2img", "msg-7").request_id == "msg-7"


@pytest.mark.parametrize(
    ("body", "attribute", "code", "fragment"),
    [
        ('{"action": "txt2img"}', "img2img", "VALIDATION_ERROR", "disagrees"),
        ('{"params": {}}', None, "UNKNOWN_ACTION", "no action"),
        ('{"action": "txt2img", "request_id": "bad id with spaces"}', "txt2img", "VALIDATION_ERROR", "request_id"),
        ('{"action": "txt2img", "params": []}', "txt2img", "VALIDATION_ERROR", "params"),
        ("[1, 2]", "txt2img", "VALIDATION_ERROR", "JSON object"),
        ('{"action": "txt2img", "surprise": 1}', "txt2img", "VALIDATION_ERROR", "surprise"),
    ],
)
def test_bad_envelopes_are_errors_that_name_the_field(body, attribute, code, fragment):
    parsed = parse_request(body, attribute, "m")
    assert parsed.error is not None and parsed.error.code == code and fragment in parsed.error.message


def test_only_a_body_that_is_not_json_is_refused():
    with pytest.raises(RequestNotJson):
        parse_request("not json {", "txt2img", "m")


def test_extra_networks_in_a_prompt():
    uses = extra_networks("a fox <lora:fox style:0.7>, snow <lyco:grain> <hypernet:old:0.3>")
    assert [(u.kind, u.name, u.weight) for u in uses] == [
        ("lora", "fox style", 0.7),
        ("lora", "grain", 1.0),
        ("hypernet", "old", 0.3),
    ]
    assert strip_extra_networks("a fox, <lora:x:1>, snow") == "a fox, snow"
    with pytest.raises(ValueError, match="not a number"):
        extra_networks("<lora:x:heavy>")


def test_a_claimed_delivery_looks_again_soon_then_less_often_and_never_after_the_claim():
    from sdpipe.lambda_support import recheck_after

    assert [recheck_after(receives, 905) for receives in range(1, 6)] == [5, 10, 20, 40, 80]
    assert recheck_after(3, 12) == 12  # the claim ends first: come back then, to take it over
    assert recheck_after(60, 905) == 905
    assert recheck_after(0, 905) == 5  # no receive count reported: the first look


def test_a_claimed_delivery_is_not_acknowledged_and_comes_back_by_its_receive_count(monkeypatch):
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sdpipe.adapters import queues
    from sdpipe.errors import WorkInProgress
    from sdpipe.lambda_support import come_back_soon

    later: list[tuple[str, str, int]] = []
    monkeypatch.setattr(queues.Redelivery, "after", lambda self, *args: later.append(args))
    message = {
        "receiptHandle": "handle-1",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
        "attributes": {"ApproximateReceiveCount": "2"},
        "body": "{}",
    }
    record = SQSRecord(message)

    def busy(_: SQSRecord) -> None:
        raise WorkInProgress("claimed by another delivery", retry_after_seconds=61)

    with pytest.raises(WorkInProgress):  # reported failed: the batch leaves it on the queue
        come_back_soon(record, busy)
    assert later == [("arn:aws:sqs:us-east-1:123456789012:work", "handle-1", 10)]


def test_a_delivery_that_fails_unexpectedly_comes_back_in_seconds_not_after_the_visibility_timeout(monkeypatch):
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sdpipe.adapters import queues
    from sdpipe.lambda_support import come_back_soon

    later: list[tuple[str, str, int]] = []
    monkeypatch.setattr(queues.Redelivery, "after", lambda self, *args: later.append(args))

    def throttled(_: SQSRecord) -> None:
        raise RuntimeError("SlowDown: Please reduce your request rate.")

    for receives in (1, 3, 12):
        record = SQSRecord({"receiptHandle": f"h{receives}", "eventSourceARN": "arn:aws:sqs:us-east-1:1:work",
                            "attributes": {"ApproximateReceiveCount": str(receives)}, "body": "{}"})  # fmt: skip
        with pytest.raises(RuntimeError, match="SlowDown"):  # still reported failed
            come_back_soon(record, throttled)
    assert [seconds for *_, seconds in later] == [5, 20, 300]  # backing off, at most 5 minutes


def test_a_delivery_comes_back_after_the_visibility_timeout_when_it_cannot_be_brought_back_sooner(monkeypatch):
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from sdpipe.adapters import queues
    from sdpipe.lambda_support import come_back_soon

    def unreachable(self: object, *args: object) -> None:
        raise ConnectionError("sqs unreachable")

    monkeypatch.setattr(queues.Redelivery, "after", unreachable)
    record = SQSRecord({"receiptHandle": "h", "eventSourceARN": "arn:aws:sqs:us-east-1:1:work", "body": "{}"})
    with pytest.raises(KeyError):  # the handler's own error, not the redelivery's
        come_back_soon(record, lambda _: {}["missing"])
