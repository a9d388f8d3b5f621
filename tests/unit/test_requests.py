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
