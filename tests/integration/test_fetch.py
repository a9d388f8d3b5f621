"""fetch_model end to end: requests on the topic, the FetchModel workflow, registration, faults."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.stack import StackOutputs
from sdpipe_local.events_listener import EventsListener
from sdpipe_local.file_server import FileServer
from tests.helpers import wait_until
from tests.integration.helpers import big_lora, open_uploads

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileServer, Path]]:
    root = tmp_path_factory.mktemp("site")
    (root / "style.safetensors").write_bytes(big_lora(20, seed=5))  # 3 parts of 8 MiB
    (root / "small.safetensors").write_bytes(big_lora(1, seed=6))
    with (root / "huge.safetensors").open("wb") as handle:  # over the stack's 48 MiB test limit
        handle.truncate(50 * MIB)
    with FileServer(root) as server:
        yield server, root


@pytest.fixture
def client(aws_env, stack) -> Sdpipe:
    return Sdpipe(StackOutputs(stack.outputs))


def fetch(client: Sdpipe, url: str, **params) -> str:
    return client.submit("fetch_model", {"url": url, "type": "lora"} | params)


def failed(client: Sdpipe, job_id: str) -> dict:
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=90)
    return client.get_job(job_id)


def nothing_left(stack, name: str) -> bool:
    s3 = stack.client("s3")
    key = f"models/Lora/{name}"
    listed = s3.list_objects_v2(Bucket=stack.outputs["AssetsBucketName"], Prefix=key).get("KeyCount", 0)
    return listed == 0 and key not in open_uploads(stack)


def test_fetch_copies_ranges_in_parallel_and_registers_the_model(client, files, stack):
    server, root = files
    body = (root / "style.safetensors").read_bytes()
    name = f"fetched-{uuid.uuid4().hex[:6]}.safetensors"
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    job_id = fetch(
        client, server.url("/download/style.safetensors"), name=name, sha256=hashlib.sha256(body).hexdigest()
    )
    job = client.wait(job_id, timeout_s=90)
    model = job["outputs"]["model"]
    assert model["status"] == "ACTIVE" and model["source"] == "url" and model["s3_key"] == f"models/Lora/{name}"
    assert model["sha256"] == hashlib.sha256(body).hexdigest()
    assert job["progress"] == {"bytes_total": len(body), "bytes_done": len(body)}
    assert job["source"] == {"filename": "style.safetensors", "size": len(body), "ranges": True}
    assert "fetch_url" not in job  # it may carry a signature
    assert server.hits["/files/style.safetensors"] >= 4  # the probe, then 3 ranges
    events = [
        e
        for e in listener.wait_for(
            lambda got: any(e.get("job_id") == job_id and e["type"] == "job.succeeded" for e in got)
        )
        if e.get("job_id") == job_id
    ]
    types = [e["type"] for e in events]
    assert types[0] == "job.accepted" and types[-1] == "job.succeeded" and "job.progress" in types
    progress_times = [e["occurred_at"] for e in events if e["type"] == "job.progress"]
    assert len(progress_times) <= 3


def test_a_server_without_range_support_is_streamed(client, files):
    server, root = files
    job_id = fetch(
        client, server.url("/norange/style.safetensors"), name=f"streamed-{uuid.uuid4().hex[:6]}.safetensors"
    )
    job = client.wait(job_id, timeout_s=90)
    assert job["source"]["ranges"] is False
    assert job["outputs"]["model"]["sha256"] == hashlib.sha256((root / "style.safetensors").read_bytes()).hexdigest()


def test_the_file_name_comes_from_the_server_and_duplicates_change_nothing(client, files, stack):
    server, _ = files
    request_id = f"fetch-{uuid.uuid4().hex}"
    first = client.submit(
        "fetch_model",
        {"url": server.url("/files/small.safetensors"), "type": "lora", "overwrite": True},
        request_id=request_id,
    )
    second = client.submit(
        "fetch_model",
        {"url": server.url("/files/small.safetensors"), "type": "lora", "overwrite": True},
        request_id=request_id,
    )
    assert first == second
    job = client.wait(first, timeout_s=90)
    assert job["outputs"]["model"]["s3_key"] == "models/Lora/small.safetensors"
    executions = stack.client("stepfunctions").list_executions(
        stateMachineArn=stack.outputs["FetchModelStateMachineArn"]
    )["executions"]
    assert [e["name"] for e in executions].count(first) == 1


def test_a_wrong_sha256_fails_the_job_and_leaves_nothing(client, files, stack):
    server, _ = files
    name = f"wrong-{uuid.uuid4().hex[:6]}.safetensors"
    job = failed(client, fetch(client, server.url("/files/style.safetensors"), name=name, sha256="cd" * 32))
    assert job["error"]["code"] == "SHA256_MISMATCH"
    # The job fails first, then the rejected file goes (so a crash in between leaves the job to
    # be settled again by the redelivery, which still finds the file).
    wait_until(lambda: nothing_left(stack, name), 30, what=f"the rejected {name} being deleted")


@pytest.mark.parametrize(
    "case",
    [
        ("/redirect-to?url=http://169.254.169.254/latest/meta-data/", "FORBIDDEN_ADDRESS", "metadata"),
        ("/redirect-to?url=http://[::1]/x.safetensors", "FORBIDDEN_ADDRESS", "loopback"),
        ("/redirect-to?url=http://10.1.2.3/x.safetensors", "FORBIDDEN_ADDRESS", "private"),
        ("/redirect-to?url=file:///etc/passwd", "URL_REJECTED", "scheme 'file'"),
        ("/liar/style.safetensors", "SOURCE_MISBEHAVED", "bytes"),
        ("/reset/style.safetensors", "SOURCE_FAILED", "connection ended after"),
        ("/files/huge.safetensors", "FILE_TOO_LARGE", "over the 50331648-byte limit"),
        ("/files/missing.safetensors", "SOURCE_REFUSED", "404"),
    ],
)
def test_fetch_faults_end_in_a_clear_failed_job_with_nothing_orphaned(client, files, stack, case):
    path, code, words = case
    server, _ = files
    name = f"fault-{uuid.uuid4().hex[:6]}.safetensors"
    job = failed(client, fetch(client, server.url(path), name=name))
    assert job["error"]["code"] == code, job["error"]
    assert words in job["error"]["message"]
    assert nothing_left(stack, name)


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"url": "ftp://example.com/a.safetensors"}, "URL_REJECTED", "params.url: scheme 'ftp'"),
        ({"url": "https://user:pw@example.com/a.safetensors"}, "URL_REJECTED", "credentials"),
        ({"name": "../../etc/x.safetensors"}, "VALIDATION_ERROR", "params.name"),
        ({"name": "x.exe"}, "VALIDATION_ERROR", "extension '.exe'"),
        ({"auth_secret": "someone-elses-secret"}, "VALIDATION_ERROR", "params.auth_secret"),
        ({"type": "unknown"}, "VALIDATION_ERROR", "params.type"),
    ],
)
def test_bad_fetch_requests_fail_at_once_naming_the_field(client, params, code, words):
    job = failed(client, fetch(client, **({"url": "https://example.com/a.safetensors"} | params)))
    assert job["error"]["code"] == code and words in job["error"]["message"]


def test_an_auth_token_from_secrets_manager_is_sent_to_the_first_host_only(client, files, stack, tmp_path):
    server, _ = files
    stack.client("secretsmanager").create_secret(
        Name=f"{stack.stack_name}/civitai-{uuid.uuid4().hex[:6]}", SecretString="tok-123"
    )
    secrets = stack.client("secretsmanager").list_secrets()["SecretList"]
    secret = next(s["Name"] for s in secrets if s["Name"].startswith(f"{stack.stack_name}/civitai-"))
    name = f"authed-{uuid.uuid4().hex[:6]}.safetensors"
    job = client.wait(
        fetch(client, server.url("/download/small.safetensors"), name=name, auth_secret=secret), timeout_s=90
    )
    assert job["status"] == "SUCCEEDED"
    assert "tok-123" not in str(job)


def test_s3_503s_on_parts_are_retried_by_the_workflow(client, files, stack):
    server, _ = files
    stack.server.s3_parts.fail_parts(2)
    job_id = fetch(client, server.url("/files/style.safetensors"), name=f"slowdown-{uuid.uuid4().hex[:6]}.safetensors")
    assert client.wait(job_id, timeout_s=90)["status"] == "SUCCEEDED"


def test_a_slow_fetch_reports_progress_and_can_be_cancelled_leaving_nothing(client, files, stack):
    _, root = files
    name = f"slow-{uuid.uuid4().hex[:6]}.safetensors"
    # About 1 MiB/s per connection: each 8 MiB part takes seconds, so the cancel lands mid-copy.
    with FileServer(root, delay_s=1.0) as slow:
        job_id = fetch(client, slow.url("/files/style.safetensors"), name=name)
        wait_until(lambda: (client.find_job(job_id) or {}).get("progress", {}).get("bytes_done", 0), 60,
                   what="the fetch's first bytes")  # fmt: skip
        assert client.cancel_job(job_id)["status"] == "CANCELLED"
        sfn = stack.client("stepfunctions")
        arn = client.get_job(job_id)["execution_arn"]
        wait_until(lambda: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING", 60,
                   what="the fetch workflow ending")  # fmt: skip
    job = client.get_job(job_id)
    assert job["status"] == "CANCELLED" and 0 < job["progress"]["bytes_done"] < job["progress"]["bytes_total"]
    assert nothing_left(stack, name)
