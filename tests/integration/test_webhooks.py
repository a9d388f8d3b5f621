"""A webhook as the README subscribes one: an HTTP subscription on the events topic with a
message-body filter policy, the example receiver verifying each delivery's signature."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.stack import StackOutputs
from tests.helpers import wait_until
from tests.integration.helpers import pointed_at
from tests.unit.test_webhook_receiver import receiver


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(stack) -> Iterator[tuple[str, list[dict[str, Any]], list[str]]]:
    """The receiver on 127.0.0.1, trusting the local endpoint's certificates; its URL, the events
    it accepted, and the status of every delivery it answered."""
    events: list[dict[str, Any]] = []
    answered: list[str] = []
    verifier = receiver.SnsMessageVerifier(stack.outputs["EventsTopicArn"], certificate_endpoint=stack.endpoint_url)
    app = receiver.WebhookReceiver(verifier, events.append)

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        return app(environ, lambda status, headers: (answered.append(status), start_response(status, headers))[1])

    server: WSGIServer = make_server("127.0.0.1", 0, recording, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/sdpipe", events, answered
    finally:
        server.shutdown()
        server.server_close()


def test_a_filtered_webhook_gets_its_teams_finished_jobs_signed_and_a_dead_one_stalls_nothing(stack, webhook):
    url, events, answered = webhook
    sns = stack.client("sns")
    team = f"design-{uuid.uuid4().hex[:6]}"
    policy = {"type": ["job.succeeded", "job.failed"], "context": {"team": [team]}}
    subscription = sns.subscribe(
        TopicArn=stack.outputs["EventsTopicArn"],
        Protocol="http",
        Endpoint=url,
        Attributes={"FilterPolicyScope": "MessageBody", "FilterPolicy": json.dumps(policy)},
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    # A second webhook that is down: SNS delivers off the publish, so the pipeline does not notice.
    down = sns.subscribe(TopicArn=stack.outputs["EventsTopicArn"], Protocol="http", Endpoint="http://127.0.0.1:9/",
                         ReturnSubscriptionArn=True)["SubscriptionArn"]  # fmt: skip
    try:
        with pointed_at(stack):
            client = Sdpipe(StackOutputs(stack.outputs))
            bad = {"prompt": "a fox", "model": "no-such-model", "steps": 2}  # fails at intake: quick
            ours = client.submit("txt2img", bad, context={"team": team})
            theirs = client.submit("txt2img", bad, context={"team": "someone-else"})
            for job_id in (ours, theirs):
                with pytest.raises(JobFailed, match="MODEL_NOT_FOUND"):
                    client.wait(job_id, timeout_s=60)
        wait_until(lambda: events, 30, what="the webhook's delivery")
        stack.wait_idle()
    finally:
        sns.unsubscribe(SubscriptionArn=subscription)
        sns.unsubscribe(SubscriptionArn=down)
    assert [(e["type"], e["job_id"], e["context"]) for e in events] == [("job.failed", ours, {"team": team})]
    assert set(answered) == {"200 OK"}  # every delivery verified (signed by the local SNS, SHA256)
    assert events[0]["error"]["code"] and events[0]["event_id"]
