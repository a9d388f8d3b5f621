"""The local S3 completes a multipart upload part by part, with what moto would have recorded."""

from __future__ import annotations

import json
import os

import pytest
from botocore.exceptions import ClientError

from sdpipe_local import s3_multipart

BUCKET = "sdpipe-test-assets"
MIB = 1024 * 1024


@pytest.fixture
def s3(moto_clients):
    s3_multipart.make_multipart_completion_streaming()
    client = moto_clients.get("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def upload(s3, key: str, parts: list[bytes], **create: str) -> tuple[str, list[dict[str, object]]]:
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key, Metadata={"job-id": "j-1"}, **create)["UploadId"]
    sent = []
    for number, body in enumerate(parts, start=1):
        algorithm = create.get("ChecksumAlgorithm")
        extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        answer = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body, **extra)
        checksum = {f"Checksum{algorithm}": answer[f"Checksum{algorithm}"]} if algorithm else {}
        sent.append({"PartNumber": number, "ETag": answer["ETag"], **checksum})
    return upload_id, sent


def described(s3, key: str) -> dict[str, object]:
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    wanted = ("ContentLength", "ETag", "Metadata", "ChecksumCRC32", "ChecksumCRC64NVME", "ChecksumType")
    return {name: head.get(name) for name in wanted}


@pytest.mark.parametrize("create", [{}, {"ChecksumAlgorithm": "CRC32"}], ids=["default checksum", "crc32 per part"])
def test_the_completed_object_is_the_one_moto_would_have_made(s3, monkeypatch, create):
    from moto.s3.models import S3Backend

    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(3 * MIB)]
    upload_id, sent = upload(s3, "streamed.bin", parts, **create)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="streamed.bin", UploadId=upload_id, MultipartUpload={"Parts": sent})
    monkeypatch.setattr(S3Backend, "complete_multipart_upload", s3_multipart.MOTO_COMPLETE["function"])
    upload_id, sent = upload(s3, "joined.bin", parts, **create)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="joined.bin", UploadId=upload_id, MultipartUpload={"Parts": sent})

    assert described(s3, "streamed.bin") == described(s3, "joined.bin")
    assert s3.get_object(Bucket=BUCKET, Key="streamed.bin")["Body"].read() == b"".join(parts)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_bad_part_lists_are_refused_as_s3_refuses_them_and_the_upload_stays_open(s3):
    upload_id, sent = upload(s3, "bad.bin", [os.urandom(5 * MIB), b"tail", b"end"])
    cases = {
        "InvalidPart": [{**sent[0], "ETag": '"' + "0" * 32 + '"'}],
        "EntityTooSmall": sent,  # the second part, not the last, is under 5 MiB
        "MalformedXML": [],
    }
    for code, listed in cases.items():
        with pytest.raises(ClientError) as refused:
            s3.complete_multipart_upload(Bucket=BUCKET, Key="bad.bin", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})  # fmt: skip
        assert refused.value.response["Error"]["Code"] == code
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]] == [upload_id]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="bad.bin")


def test_a_completed_upload_is_announced_once_as_s3_announces_it(s3, moto_clients):
    sqs = moto_clients.get("sqs")
    queue = sqs.create_queue(QueueName="created")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    upload_id, sent = upload(s3, "announced.bin", [os.urandom(5 * MIB), b"last"])
    s3.complete_multipart_upload(Bucket=BUCKET, Key="announced.bin", UploadId=upload_id,
                                 MultipartUpload={"Parts": sent})  # fmt: skip

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    events = [record["eventName"] for m in messages for record in json.loads(m["Body"]).get("Records", [])]
    assert events == ["ObjectCreated:CompleteMultipartUpload"]
