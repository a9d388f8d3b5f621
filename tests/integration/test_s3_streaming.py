"""GetObject on the local endpoint streams from storage and still behaves like S3."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError


@pytest.fixture(scope="module")
def stored(sdpipe_stack):
    s3, bucket = sdpipe_stack.client("s3"), sdpipe_stack.outputs["AssetsBucketName"]
    body = os.urandom(3 * 1024 * 1024 + 17)
    etag = s3.put_object(
        Bucket=bucket,
        Key="jobs/streaming/blob.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"who": "me"},
    )["ETag"]
    return s3, bucket, "jobs/streaming/blob.bin", body, etag


@pytest.mark.parametrize(
    ("header", "lo", "hi"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=1048570-2097160", 1048570, 2097161),
        ("bytes=-10", -10, None),
        ("bytes=3145700-", 3145700, None),
    ],
)
def test_ranges(stored, header, lo, hi):
    s3, bucket, key, body, etag = stored
    response = s3.get_object(Bucket=bucket, Key=key, Range=header, IfMatch=etag)
    assert response["Body"].read() == body[lo:hi]
    assert response["ContentRange"].endswith(f"/{len(body)}")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 206


def test_whole_object_with_its_headers(stored):
    s3, bucket, key, body, etag = stored
    response = s3.get_object(Bucket=bucket, Key=key)
    assert response["Body"].read() == body
    assert (response["ETag"], response["ContentType"], response["Metadata"]) == (
        etag,
        "application/x-test",
        {"who": "me"},
    )


def test_conditions_and_errors_are_still_s3s(stored):
    s3, bucket, key, _body, _etag = stored
    with pytest.raises(ClientError) as failed:
        s3.get_object(Bucket=bucket, Key=key, IfMatch='"0000"', Range="bytes=0-9")
    assert failed.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key="jobs/streaming/nope.bin")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_download_file_uses_ranged_gets_and_gets_every_byte(stored, tmp_path):
    s3, bucket, key, body, _etag = stored
    target = tmp_path / "blob.bin"
    from boto3.s3.transfer import TransferConfig

    s3.download_file(
        bucket,
        key,
        str(target),
        Config=TransferConfig(multipart_threshold=1024 * 1024, multipart_chunksize=1024 * 1024),
    )
    assert target.read_bytes() == body


def test_the_body_is_streamed_not_copied_whole(stored, monkeypatch):
    from moto.s3.models import FakeKey

    s3, bucket, key, body, _etag = stored

    def no_whole_copies(self):
        raise AssertionError("moto copied the whole object")

    monkeypatch.setattr(FakeKey, "value", property(no_whole_copies))
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key=key, Range="bytes=5-9")["Body"].read() == body[5:10]
    # If-Match pins a version, with or without the quotes around the ETag.
    for etag in (_etag, _etag.strip('"')):
        assert s3.get_object(Bucket=bucket, Key=key, IfMatch=etag, Range="bytes=0-3")["Body"].read() == body[:4]


def test_an_unsatisfiable_range_is_refused_as_s3_does(stored):
    s3, bucket, key, body, _etag = stored
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={len(body) + 10}-")
    assert refused.value.response["Error"]["Code"] == "InvalidRange"


def test_multipart_objects_stream_whole_without_a_wrong_checksum(stored, tmp_path):
    s3, bucket, _key, _body, _etag = stored
    body = os.urandom(11 * 1024 * 1024)  # boto3 uploads it in 8 MiB parts
    source = tmp_path / "multi.bin"
    source.write_bytes(body)
    s3.upload_file(str(source), bucket, "jobs/streaming/multi.bin")
    etag = s3.head_object(Bucket=bucket, Key="jobs/streaming/multi.bin")["ETag"]
    assert etag.endswith('-2"')
    assert s3.get_object(Bucket=bucket, Key="jobs/streaming/multi.bin", IfMatch=etag)["Body"].read() == body
