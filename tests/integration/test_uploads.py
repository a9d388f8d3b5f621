"""Chunked multipart uploads end to end on the local stack: plan, parts, resume, complete, checks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from botocore.exceptions import ClientError

from sdpipe.contracts.models import ModelType
from sdpipe.errors import SdpipeError
from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.stack import StackOutputs
from sdpipe_client.transfer import UPLOADS_API, Uploader, UploadInterrupted
from tests.helpers import wait_until
from tests.integration.helpers import big_lora, open_uploads

MIB = 1024 * 1024


@pytest.fixture
def client(aws_env, stack) -> Sdpipe:
    return Sdpipe(StackOutputs(stack.outputs))


@pytest.fixture
def lora_file(tmp_path: Path) -> Path:
    path = tmp_path / f"up-{uuid.uuid4().hex[:6]}.safetensors"
    path.write_bytes(big_lora(20))  # 3 parts of the 8 MiB minimum
    return path


def create(client: Sdpipe, path: Path, **extra) -> dict:
    request = {"operation": "create_upload", "type": "lora", "filename": path.name, "size": path.stat().st_size}
    return client.invoke_api(UPLOADS_API, request | extra)


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def put_part(part: dict, body: bytes) -> str:
    response = urllib3.request("PUT", part["url"], body=body, headers={"Content-MD5": content_md5(body)})
    assert response.status == 200, response.data
    return response.headers["ETag"].strip('"')


def test_upload_registers_the_model_with_its_source_and_hash(client, lora_file, stack):
    result = Uploader(client, concurrency=3).upload(lora_file, ModelType.LORA)
    assert result.key == f"models/Lora/{lora_file.name}"
    assert result.sent_bytes == lora_file.stat().st_size
    job = client.wait(result.job_id, timeout_s=60)
    model = job["outputs"]["model"]
    assert model["status"] == "ACTIVE" and model["source"] == "upload"
    assert model["sha256"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()
    assert job["action"] == "upload_model" and job["progress"]["bytes_done"] == lora_file.stat().st_size
    assert result.key not in open_uploads(stack)
    again = Uploader(client).upload(lora_file, ModelType.LORA)  # the same command again: nothing to send
    assert (again.job_id, again.status, again.sent_bytes) == (result.job_id, "SUCCEEDED", 0)


def test_an_interrupted_upload_resumes_sending_only_the_missing_parts(client, lora_file):
    body = lora_file.read_bytes()
    uploader = Uploader(client)
    sha = hashlib.sha256(body).hexdigest()
    # What the uploader would ask for, then "interrupted" after the first part.
    request_id = "upload-" + hashlib.sha256(f"lora/{lora_file.name}\n{len(body)}\n{sha}".encode()).hexdigest()[:32]
    plan = create(client, lora_file, sha256=sha, request_id=request_id)
    assert plan["part_count"] == 3 and plan["part_size"] == 8 * MIB and len(plan["parts"]) == 3
    first = plan["parts"][0]
    put_part(first, body[first["start"] : first["end"] + 1])
    resumed = client.invoke_api(UPLOADS_API, {"operation": "resume_upload", "job_id": plan["job_id"]})
    assert [p["part_number"] for p in resumed["parts"]] == [2, 3]
    assert [p["part_number"] for p in resumed["parts_done"]] == [1]
    result = uploader.upload(lora_file, ModelType.LORA, sha256=sha)
    assert result.job_id == plan["job_id"]
    assert result.sent_bytes == len(body) - 8 * MIB
    assert client.wait(result.job_id, timeout_s=60)["outputs"]["model"]["status"] == "ACTIVE"


def interrupted_after_the_first_part(client: Sdpipe, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload hashed while sending (no sha256 given), Ctrl-C'd once its first part is out."""
    original, sent = Uploader._send_part, []

    def first_only(self: Uploader, body: bytes, number: int, *args: object) -> str:
        sent.append(number)
        if len(sent) > 1:
            raise KeyboardInterrupt
        return original(self, body, number, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(Uploader, "_send_part", first_only)
        with pytest.raises(UploadInterrupted, match="run the same command again"):
            Uploader(client, concurrency=1).upload(path, ModelType.LORA)


def test_an_upload_hashed_while_sending_resumes_and_registration_verifies_the_hash(client, lora_file, monkeypatch):
    body = lora_file.read_bytes()
    interrupted_after_the_first_part(client, lora_file, monkeypatch)
    result = Uploader(client).upload(lora_file, ModelType.LORA)  # the same command again
    assert result.sent_bytes == len(body) - 8 * MIB  # part 1 was read for the hash, not sent
    job = client.wait(result.job_id, timeout_s=60)
    assert job["params"]["sha256"] == hashlib.sha256(body).hexdigest() == job["outputs"]["model"]["sha256"]


def test_a_file_changed_under_an_interrupted_upload_is_not_mixed_into_it(client, lora_file, monkeypatch, stack):
    interrupted_after_the_first_part(client, lora_file, monkeypatch)
    stat = lora_file.stat()
    with lora_file.open("r+b") as handle:  # changed in place, its modification time put back
        handle.seek(100)
        handle.write(b"\xff" * 16)
    os.utime(lora_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SdpipeError) as changed:
        Uploader(client).upload(lora_file, ModelType.LORA)
    assert changed.value.code == "UPLOAD_SOURCE_CHANGED" and "part 1 held by S3 differs" in changed.value.message


def test_a_hash_named_at_completion_is_verified_and_must_agree_with_the_created_one(client, lora_file, stack):
    body = lora_file.read_bytes()
    for named_at_create, code in ((None, "SHA256_MISMATCH"), ("cd" * 32, "VALIDATION_ERROR")):
        plan = create(client, lora_file, overwrite=True, **({"sha256": named_at_create} if named_at_create else {}))
        parts = [{"part_number": p["part_number"], "etag": put_part(p, body[p["start"] : p["end"] + 1])}
                 for p in plan["parts"]]  # fmt: skip
        complete = {"operation": "complete_upload", "job_id": plan["job_id"], "parts": parts, "sha256": "ab" * 32}
        if code == "VALIDATION_ERROR":
            with pytest.raises(SdpipeError) as refused:
                client.invoke_api(UPLOADS_API, complete)
            assert refused.value.code == code and "not the cdcd" in refused.value.message
            client.invoke_api(UPLOADS_API, {"operation": "abort_upload", "job_id": plan["job_id"]})
            continue
        client.invoke_api(UPLOADS_API, complete)
        with pytest.raises(JobFailed) as failed:
            client.wait(plan["job_id"], timeout_s=60)
        assert failed.value.code == code and "not the expected abab" in str(failed.value)


def test_complete_with_missing_or_wrong_parts_is_refused_and_the_upload_stays_open(client, lora_file, stack):
    body = lora_file.read_bytes()
    plan = create(client, lora_file)
    etags = {}
    for part in plan["parts"][:2]:
        etags[part["part_number"]] = put_part(part, body[part["start"] : part["end"] + 1])
    listed = [{"part_number": n, "etag": e} for n, e in etags.items()]
    with pytest.raises(SdpipeError) as missing:
        client.invoke_api(UPLOADS_API, {"operation": "complete_upload", "job_id": plan["job_id"], "parts": listed})
    assert missing.value.code == "UPLOAD_PARTS_INVALID" and "parts 3 were not listed" in missing.value.message
    wrong = [*listed, {"part_number": 3, "etag": "0" * 32}]
    with pytest.raises(SdpipeError) as not_held:
        client.invoke_api(UPLOADS_API, {"operation": "complete_upload", "job_id": plan["job_id"], "parts": wrong})
    assert "S3 does not hold parts 3" in not_held.value.message
    last = plan["parts"][2]
    put_part(last, body[last["start"] : last["end"] + 1][:-1])  # one byte short
    with pytest.raises(SdpipeError) as short:
        client.invoke_api(UPLOADS_API, {"operation": "complete_upload", "job_id": plan["job_id"], "parts": wrong})
    assert (
        f"part 3 is {last['end'] - last['start']} bytes, expected {last['end'] - last['start'] + 1}"
        in short.value.message
    )
    assert f"models/Lora/{lora_file.name}" in open_uploads(stack)
    aborted = client.invoke_api(UPLOADS_API, {"operation": "abort_upload", "job_id": plan["job_id"]})
    assert aborted["status"] == "CANCELLED"
    assert f"models/Lora/{lora_file.name}" not in open_uploads(stack)
    with pytest.raises(SdpipeError) as finished:
        client.invoke_api(UPLOADS_API, {"operation": "resume_upload", "job_id": plan["job_id"]})
    assert finished.value.code == "UPLOAD_FINISHED"


def test_a_sha256_mismatch_fails_the_job_and_leaves_nothing(client, lora_file, stack):
    result = Uploader(client).upload(lora_file, ModelType.LORA, sha256="ab" * 32)
    with pytest.raises(JobFailed) as failed:
        client.wait(result.job_id, timeout_s=60)
    assert failed.value.code == "SHA256_MISMATCH"
    assert "not the expected abab" in client.get_job(result.job_id)["error"]["message"]
    s3 = stack.client("s3")
    # Registration fails the job, then deletes the file, in the same invocation.
    bucket = stack.outputs["AssetsBucketName"]
    wait_until(lambda: not s3.list_objects_v2(Bucket=bucket, Prefix=result.key).get("KeyCount"), 10,
               what=f"{result.key} deleted")  # fmt: skip
    assert result.key not in open_uploads(stack)


@pytest.mark.parametrize(
    ("request_fields", "code", "words"),
    [
        ({"filename": "../escape.safetensors"}, "VALIDATION_ERROR", "'..'"),
        ({"filename": "notes.txt"}, "VALIDATION_ERROR", "extension '.txt'"),
        ({"size": 0}, "VALIDATION_ERROR", "size"),
        ({"type": "sampler"}, "VALIDATION_ERROR", "type"),
        ({"sha256": "xyz"}, "VALIDATION_ERROR", "sha256"),
    ],
)
def test_bad_create_requests_name_the_field(client, request_fields, code, words):
    request = {"operation": "create_upload", "type": "lora", "filename": "ok.safetensors", "size": 10} | request_fields
    with pytest.raises(SdpipeError) as refused:
        client.invoke_api(UPLOADS_API, request)
    assert refused.value.code == code and words in refused.value.message


def test_an_existing_model_is_not_overwritten_unless_asked(client, lora_file, stack):
    stack.client("s3").put_object(
        Bucket=stack.outputs["AssetsBucketName"], Key=f"models/Lora/{lora_file.name}", Body=b"x"
    )
    with pytest.raises(SdpipeError) as exists:
        create(client, lora_file)
    assert exists.value.code == "MODEL_EXISTS"
    assert create(client, lora_file, overwrite=True)["part_count"] == 3


def test_abandoned_uploads_are_aborted_and_timed_out_by_the_sweeper(client, lora_file, stack):
    plan = create(client, lora_file)
    jobs = stack.resource("dynamodb").Table(stack.outputs["JobsTableName"])
    jobs.update_item(
        Key={"job_id": plan["job_id"]},
        UpdateExpression="SET deadline = :d",
        ExpressionAttributeValues={":d": "2000-01-01"},
    )
    response = stack.client("lambda").invoke(FunctionName="SweepJobsFunction", Payload=b"{}")
    assert plan["job_id"] in json.loads(response["Payload"].read())["timed_out"]
    job = client.get_job(plan["job_id"])
    assert job["status"] == "TIMED_OUT" and "abandoned multipart upload was aborted" in job["error"]["message"]
    assert plan["key"] not in open_uploads(stack)


def test_s3_refuses_a_part_whose_checksum_does_not_match(client, lora_file, stack):
    plan = create(client, lora_file)
    part = plan["parts"][0]
    body = lora_file.read_bytes()[part["start"] : part["end"] + 1]
    corrupted = b"\x00" + body[1:]
    response = urllib3.request("PUT", part["url"], body=corrupted, headers={"Content-MD5": content_md5(body)})
    assert response.status == 400 and b"BadDigest" in response.data
    # The fetch workflow's parts carry botocore's CRC32 instead, which S3 checks the same way.
    upload_id = parse_qs(urlsplit(part["url"]).query)["uploadId"][0]
    crc32 = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as refused:
        stack.client("s3").upload_part(Bucket=stack.outputs["AssetsBucketName"], Key=plan["key"], UploadId=upload_id,
                                       PartNumber=1, Body=corrupted, ChecksumCRC32=crc32)  # fmt: skip
    assert refused.value.response["Error"]["Code"] == "BadDigest" and "CRC32" in str(refused.value)
    resumed = client.invoke_api(UPLOADS_API, {"operation": "resume_upload", "job_id": plan["job_id"]})
    assert resumed["parts_done"] == []  # nothing was stored
    client.invoke_api(UPLOADS_API, {"operation": "abort_upload", "job_id": plan["job_id"]})


def test_parts_that_s3_answers_with_503_are_retried(client, lora_file, stack):
    stack.server.s3_parts.fail_parts(2)
    result = Uploader(client, backoff_s=0.05).upload(lora_file, ModelType.LORA)
    assert client.wait(result.job_id, timeout_s=60)["status"] == "SUCCEEDED"


def test_part_urls_that_s3_refuses_are_asked_for_again(client, lora_file, monkeypatch):
    """An expired URL gets a fresh one from part_urls."""
    original, asked = client.invoke_api, []

    def invoke_api(name: str, request: dict) -> dict:
        asked.append(request["operation"])
        answer = original(name, request)
        if request["operation"] == "create_upload":
            for part in answer["parts"]:
                part["url"] = re.sub(r"X-Amz-Date=\d{8}", "X-Amz-Date=20200101", part["url"])
        return answer

    monkeypatch.setattr(client, "invoke_api", invoke_api)
    result = Uploader(client, concurrency=1, backoff_s=0.05).upload(lora_file, ModelType.LORA)
    assert asked == ["create_upload", "part_urls", "complete_upload"]  # one batch refreshed all three
    assert client.wait(result.job_id, timeout_s=60)["status"] == "SUCCEEDED"


def test_a_file_naming_a_job_it_does_not_belong_to_finishes_nothing(client, lora_file, stack):
    plan = create(client, lora_file)
    spoof = f"models/Lora/spoof-{uuid.uuid4().hex[:6]}.safetensors"
    stack.client("s3").put_object(
        Bucket=stack.outputs["AssetsBucketName"],
        Key=spoof,
        Body=big_lora(1),
        Metadata={"sdpipe-job-id": plan["job_id"], "sdpipe-source": "upload"},
    )
    table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])
    wait_until(lambda: [i for i in table.scan()["Items"] if i.get("s3_key") == spoof and i.get("status") == "ACTIVE"],
               30, what="the spoofed file registered")  # fmt: skip
    assert client.get_job(plan["job_id"])["status"] == "RUNNING"  # still waiting for its own parts
    client.invoke_api(UPLOADS_API, {"operation": "abort_upload", "job_id": plan["job_id"]})
