"""fetch_model from the request to ``complete`` (or ``fail``), each step called as the FetchModel
workflow calls it, against a local file server and in-process moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe.adapters.multipart import MultipartUploads
from sdpipe.adapters.secrets import AuthSecrets
from sdpipe.contracts.jobs import JobStatus
from sdpipe.errors import (
    JobAlreadyFinished,
    ModelExists,
    SourceFailed,
    SourceMisbehaved,
    UrlRejected,
    ValidationFailed,
)
from sdpipe.logic.fetch import ModelFetcher, parts_key
from sdpipe.logic.url_policy import UrlPolicy
from sdpipe.settings import FetchSettings
from sdpipe_local.file_server import FileServer
from tests.helpers import kohya_lora, safetensors_bytes
from tests.unit.world import FakeWorkflows, World, envelope, machine_arn

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    root = tmp_path_factory.mktemp("site")
    # Two parts of the smallest part size (8 MiB) and a bit: a ranged copy in three calls.
    (root / "big.safetensors").write_bytes(safetensors_bytes(kohya_lora(), fill=b"\x07") + b"\0" * (17 * MIB))
    (root / "small.safetensors").write_bytes(safetensors_bytes(kohya_lora()))
    with FileServer(root) as running:
        yield running


def fetcher(world: World, **settings: object) -> ModelFetcher:
    values = world.settings_values(
        fetch_model_state_machine_arn=machine_arn("fetch"),
        fetch_allowed_networks="127.0.0.1/32",
        fetch_part_bytes=8 * MIB,
        fetch_min_bytes_per_second=0,
    )
    config = FetchSettings.model_validate(values | settings)
    return ModelFetcher(
        settings=config,
        ledger=world.ledger(),
        store=world.store,
        uploads=MultipartUploads(config.assets_bucket_name, world.aws),
        workflows=FakeWorkflows(),
        secrets=AuthSecrets(world.aws),
        policy=UrlPolicy.from_strings("http", "127.0.0.1/32", 5),
    )


def request(fetch: ModelFetcher, params: dict[str, object], request_id: str = "fetch-1") -> str:
    return fetch.handle_message(envelope("fetch_model", params, request_id), "fetch_model", "m-1")


def step(fetch: ModelFetcher, name: str, **state: object) -> dict[str, object]:
    return fetch.step({"step": name, "state": state})


def test_a_ranged_fetch_copies_every_part_and_hands_the_file_to_registration(world, server):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": server.url("/files/big.safetensors"), "type": "lora", "name": "big.safetensors"})
    assert fetch.ledger.require(job_id).status is JobStatus.RUNNING
    assert fetch.workflows.started[job_id] == {"job_id": job_id, "max_concurrency": 8}  # type: ignore[attr-defined]

    probe = step(fetch, "probe", job_id=job_id)
    assert probe["ranges"] is True and probe["parts_key"] == parts_key(job_id)
    parts = json.loads(world.get(parts_key(job_id)))
    assert [p["part"] for p in parts] == [1, 2, 3]
    for part in parts:
        step(fetch, "copy_part", job_id=job_id, **part)
    assert step(fetch, "complete", job_id=job_id) == {"key": "models/Lora/big.safetensors"}
    assert step(fetch, "complete", job_id=job_id) == {"key": "models/Lora/big.safetensors"}  # a retry is harmless

    job = fetch.ledger.require(job_id)
    size = (Path(server.root) / "big.safetensors").stat().st_size
    assert job.phase == "registering" and job.progress == {"bytes_total": size, "bytes_done": size}
    head = world.aws.get("s3").head_object(Bucket="assets", Key="models/Lora/big.safetensors")
    assert head["ContentLength"] == size and head["Metadata"]["sdpipe-job-id"] == job_id
    assert world.event_types(job_id)[:2] == ["job.accepted", "job.running"]


def test_a_server_without_ranges_is_streamed_in_one_step(world, server):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": server.url("/norange/small.safetensors"), "type": "lora"})
    assert step(fetch, "probe", job_id=job_id)["ranges"] is False
    assert step(fetch, "stream", job_id=job_id)["bytes"] == (Path(server.root) / "small.safetensors").stat().st_size
    step(fetch, "complete", job_id=job_id)
    assert world.keys("models/") == ["models/Lora/small.safetensors"]


def test_a_name_without_an_extension_keeps_the_sources_and_a_different_one_is_refused(world, server):
    fetch = fetcher(world)
    url = server.url("/files/small.safetensors")
    job_id = request(fetch, {"url": url, "type": "lora", "name": "styles/mine"})
    step(fetch, "probe", job_id=job_id)
    assert fetch.ledger.require(job_id).upload.key == "models/Lora/styles/mine.safetensors"  # type: ignore[union-attr]

    mismatched = request(fetch, {"url": url, "type": "lora", "name": "mine.ckpt"}, "fetch-2")
    with pytest.raises(ValidationFailed, match=r"params.name: 'mine.ckpt' ends in .ckpt but .* is a .safetensors file"):
        step(fetch, "probe", job_id=mismatched)
    open_uploads = world.aws.get("s3").list_multipart_uploads(Bucket="assets").get("Uploads", [])
    assert [u["Key"] for u in open_uploads] == ["models/Lora/styles/mine.safetensors"]  # the refused one opened none


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"url": "ftp://example.com/a.safetensors", "type": "lora"}, "URL_REJECTED", "params.url"),
        ({"url": "http://127.0.0.1/a", "type": "lora", "name": "../up.safetensors"}, "VALIDATION_ERROR", "params.name"),
        (
            {"url": "http://127.0.0.1/a", "type": "lora", "auth_secret": "other/token"},
            "VALIDATION_ERROR",
            "auth_secret",
        ),
        ({"url": "http://127.0.0.1/a", "type": "painting"}, "VALIDATION_ERROR", "params.type"),
    ],
)
def test_bad_requests_fail_with_the_field_named_and_start_nothing(world, params, code, named):
    fetch = fetcher(world)
    job = fetch.ledger.require(request(fetch, params, f"bad-{code}-{named}"))
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == code and named in job.error["message"]
    assert fetch.workflows.started == {}  # type: ignore[attr-defined]


def test_the_metadata_address_is_refused_when_the_fetch_connects(world):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": "http://169.254.169.254/latest/meta-data", "type": "lora", "name": "m.safetensors"})
    with pytest.raises(UrlRejected, match="metadata"):
        step(fetch, "probe", job_id=job_id)


def test_a_signed_url_is_kept_off_the_public_params(world):
    fetch = fetcher(world)
    job = fetch.ledger.require(request(fetch, {"url": "ftp://example.com/x?X-Amz-Signature=abc", "type": "lora"}))
    assert job.status is JobStatus.FAILED and job.params["url"] == "ftp://example.com/x"


def test_an_existing_file_is_not_replaced_without_overwrite(world, server):
    world.put("models/Lora/small.safetensors", b"already here")
    fetch = fetcher(world)
    job_id = request(fetch, {"url": server.url("/files/small.safetensors"), "type": "lora"})
    with pytest.raises(ModelExists):
        step(fetch, "probe", job_id=job_id)
    replacing = request(fetch, {"url": server.url("/files/small.safetensors"), "type": "lora", "overwrite": True}, "r2")
    assert step(fetch, "probe", job_id=replacing)["ranges"] is True


def test_a_lying_server_fails_the_part_and_the_fail_step_leaves_nothing(world, server):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": server.url("/liar/big.safetensors"), "type": "lora", "name": "liar.safetensors"})
    step(fetch, "probe", job_id=job_id)
    last = json.loads(world.get(parts_key(job_id)))[-1]  # beyond what the server really has
    with pytest.raises((SourceMisbehaved, SourceFailed)) as raised:
        step(fetch, "copy_part", job_id=job_id, **last)
    error = type(raised.value).__name__
    cause = json.dumps({"errorType": error, "errorMessage": raised.value.message})
    answer = step(fetch, "fail", job_id=job_id, failure={"Error": error, "Cause": cause})
    assert answer["failed"] is True and answer["error"]["code"] == raised.value.code  # type: ignore[index]
    assert world.keys("models/") == []
    assert world.aws.get("s3").list_multipart_uploads(Bucket="assets").get("Uploads", []) == []
    assert world.event_types(job_id)[-1] == "job.failed"


def test_a_step_timeout_is_named_as_such(world):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": "http://127.0.0.1:9/slow.safetensors", "type": "lora"})
    answer = step(fetch, "fail", job_id=job_id, failure={"Error": "States.Timeout", "Cause": ""})
    assert answer["error"]["code"] == "FETCH_TIMED_OUT"  # type: ignore[index]


def test_a_cancelled_fetch_stops_at_its_next_step(world, server):
    fetch = fetcher(world)
    job_id = request(fetch, {"url": server.url("/files/big.safetensors"), "type": "lora", "name": "c.safetensors"})
    step(fetch, "probe", job_id=job_id)
    job = fetch.ledger.require(job_id)
    fetch.ledger.move(job, JobStatus.CANCELLED, allowed_from=[JobStatus.RUNNING])
    with pytest.raises(JobAlreadyFinished):
        step(fetch, "copy_part", job_id=job_id, part=1, start=0, end=8 * MIB - 1)


def test_a_start_the_request_worker_did_not_record_is_recorded_by_the_first_step(world, server):
    fetch = fetcher(world)
    params = {"url": server.url("/files/small.safetensors"), "type": "lora"}
    job = fetch.ledger.create(job_id="j-orphan", request_id="orphan", action="fetch_model", status=JobStatus.ACCEPTED,
                              deadline_seconds=600, fields={"params": params})  # fmt: skip
    assert job is not None
    step(fetch, "probe", job_id="j-orphan")
    running = fetch.ledger.require("j-orphan")
    assert running.status is JobStatus.RUNNING and running.execution_arn is not None
    assert running.execution_arn.endswith(":execution:fetch:j-orphan")
