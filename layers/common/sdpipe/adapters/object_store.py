"""S3 access for reading model files: HEAD, ranged reads, streams pinned to one ETag."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients, error_code
from sdpipe.errors import ObjectChanged


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without the quotes S3 puts around it
    # User metadata (x-amz-meta-*, lower-case names): who wrote the object and what to check.
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    last_modified: str = field(default="", compare=False)  # ISO-8601, second precision

    @property
    def quoted_etag(self) -> str:
        """The entity tag as S3 sends it, for If-Match."""
        return f'"{self.etag}"'


class BucketAdapter:
    """An adapter on one bucket, with the S3 client it takes (lazily) from ``aws``."""

    def __init__(self, bucket: str, aws: AwsClients = clients) -> None:
        self.bucket = bucket
        self._aws = aws

    @property
    def _s3(self) -> Any:
        return self._aws.get("s3")


class ObjectStore(BucketAdapter):
    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=response["ETag"].strip('"'),
            metadata={k.lower(): v for k, v in (response.get("Metadata") or {}).items()},
            last_modified=_iso(response.get("LastModified")),
        )

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order (without user metadata)."""
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=_iso(item.get("LastModified")),
                )

    def delete_keys(self, keys: list[str]) -> int:
        """Delete ``keys`` (1,000 per request); how many were deleted."""
        deleted = 0
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise RuntimeError(f"could not delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
            deleted += len(batch)
        return deleted

    def delete_if_unchanged(self, info: ObjectInfo) -> bool:
        """Delete exactly the version ``info`` describes; False when the key now holds another.

        S3 has no conditional DELETE on ETag for every bucket, so this checks, then deletes: a
        write racing the gap is the only way to lose, and that writer's own event re-registers.
        """
        current = self.head(info.key)
        if current is None or current.etag != info.etag:
            return False
        self._s3.delete_object(Bucket=self.bucket, Key=info.key)
        return True

    def read_range(self, info: ObjectInfo, start: int, length: int) -> bytes:
        """Read ``length`` bytes at ``start`` of exactly the version ``info`` describes."""
        if length <= 0 or start >= info.size:
            return b""
        end = min(start + length, info.size) - 1
        try:
            response = self._s3.get_object(
                Bucket=self.bucket, Key=info.key, Range=f"bytes={start}-{end}", IfMatch=info.quoted_etag
            )
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise ObjectChanged(f"s3://{self.bucket}/{info.key} changed while being read") from exc
            raise
        return bytes(response["Body"].read())

    def iter_chunks(self, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        """Stream the whole object in chunks; memory stays at a few chunks whatever the size."""
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=info.key, IfMatch=info.quoted_etag)
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise ObjectChanged(f"s3://{self.bucket}/{info.key} changed while being read") from exc
            raise
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """A small object whole (request files, job results), in one request.

        ``FileNotFoundError`` when it does not exist, ``ValueError`` when over ``max_bytes``.
        """
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key} does not exist") from None
            raise
        body = response["Body"]
        size = int(response["ContentLength"])
        if size > max_bytes:
            body.close()
            raise ValueError(f"s3://{self.bucket}/{key} is {size} bytes, over the {max_bytes}-byte limit")
        return bytes(body.read())

    def put_bytes(self, key: str, body: bytes, content_type: str) -> str:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def upload_stream(self, key: str, source: Any, metadata: dict[str, str], content_type: str) -> None:
        """Upload a readable stream of unknown length (multipart as it grows; memory stays bounded)."""
        self._s3.upload_fileobj(
            _ForwardOnly(source), self.bucket, key, ExtraArgs={"Metadata": metadata, "ContentType": content_type}
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str | None:
        """The key of an ``s3://`` URI in this bucket; None for any other bucket or scheme."""
        prefix = f"s3://{self.bucket}/"
        return uri[len(prefix) :] if uri.startswith(prefix) and len(uri) > len(prefix) else None

    def open_ranged(self, info: ObjectInfo, block_size: int = 1024 * 1024) -> RangedReader:
        return RangedReader(self, info, block_size)


class _ForwardOnly:
    """Only ``read``: streams that claim to seek but cannot (a member of a streamed tar) are
    uploaded as the non-seekable streams they are."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return bytes(self._source.read(size))


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else ""


class RangedReader(io.RawIOBase):
    """A seekable, read-only file over ranged GETs (for zipfile's central directory walk)."""

    def __init__(self, store: ObjectStore, info: ObjectInfo, block_size: int) -> None:
        self._store = store
        self._info = info
        self._block_size = block_size
        self._position = 0
        self._block_start = 0
        self._block = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._info.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._info.size - self._position)
        if wanted <= 0:
            return 0
        offset = self._position - self._block_start
        if not (0 <= offset < len(self._block)):
            self._block_start = self._position
            self._block = self._store.read_range(self._info, self._position, max(wanted, self._block_size))
            offset = 0
        count = min(wanted, len(self._block) - offset)
        view[:count] = self._block[offset : offset + count]
        self._position += count
        return count
