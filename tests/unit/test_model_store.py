"""The endpoint's model cache: a checkpoint comes down from S3 as parallel ranged GETs pinned to
the ETag its HEAD saw, lands whole under its sha256 or not at all, and is not fetched twice."""

from __future__ import annotations

import os

import boto3
import pytest
from moto import mock_aws

from sdpipe_inference.model_store import ModelStore, ModelUnavailable

MIB = 1 << 20


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="assets")
        yield client


class CountingS3:
    """The real (moto) client, with its ranged GETs counted; ``before_get`` runs before each."""

    def __init__(self, client, before_get=None) -> None:
        self.client, self.before_get, self.ranges = client, before_get, []

    def head_object(self, **kwargs):
        return self.client.head_object(**kwargs)

    def get_object(self, **kwargs):
        assert kwargs["IfMatch"].startswith('"')  # pinned to what the HEAD saw
        self.ranges.append(kwargs["Range"])
        if self.before_get is not None:
            self.before_get(len(self.ranges))
        return self.client.get_object(**kwargs)


def test_a_checkpoint_comes_down_in_parallel_ranges_whole_and_once(s3, tmp_path):
    data = os.urandom(5 * MIB + 123)
    s3.put_object(Bucket="assets", Key="models/Stable-diffusion/m.safetensors", Body=data)
    counting = CountingS3(s3)
    store = ModelStore(tmp_path / "cache", 1 << 30, s3=counting, part_bytes=MIB, concurrency=4)
    path = store.file("s3://assets/models/Stable-diffusion/m.safetensors", "ab" * 32, ".safetensors")
    assert path.read_bytes() == data and path.name == "ab" * 32 + ".safetensors"
    assert sorted(counting.ranges) == sorted(f"bytes={i * MIB}-{min((i + 1) * MIB, len(data)) - 1}" for i in range(6))
    assert store.file("s3://assets/models/Stable-diffusion/m.safetensors", "ab" * 32, ".safetensors") == path
    assert len(counting.ranges) == 6  # cached: no second download
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]


def test_an_object_replaced_half_way_fails_the_download_and_leaves_nothing_cached(s3, tmp_path):
    key = "models/Stable-diffusion/m.safetensors"
    s3.put_object(Bucket="assets", Key=key, Body=os.urandom(4 * MIB))

    def replace(calls: int) -> None:
        if calls == 3:
            s3.put_object(Bucket="assets", Key=key, Body=os.urandom(4 * MIB))

    store = ModelStore(tmp_path / "cache", 1 << 30, s3=CountingS3(s3, replace), part_bytes=MIB, concurrency=1)
    with pytest.raises(ModelUnavailable, match="replaced while it was being downloaded"):
        store.file(f"s3://assets/{key}", "cd" * 32, ".safetensors")
    assert list((tmp_path / "cache").iterdir()) == []
