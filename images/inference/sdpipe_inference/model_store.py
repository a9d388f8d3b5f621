"""Model files on local disk: a size-bounded cache of S3 objects, keyed by sha256.

Checkpoints are gigabytes, so the container keeps the ones it used last on its disk and evicts
the least recently used when the cache would exceed its budget. Downloads go to a temporary name
and are renamed when complete, so a crash never leaves a truncated file that looks cached.

A cold start is mostly this download, so a large object comes down as many ranged GETs at once
(``SDPIPE_S3_CONCURRENCY`` parts of ``SDPIPE_S3_PART_MIB`` in flight, where boto3's transfer
manager keeps ten of 8 MiB), each written at its offset, every one pinned to the ETag the HEAD
saw: an object replaced half-way fails the download instead of mixing two files. The written
pages are still in the page cache when the pipeline maps the file, so loading reads no disk.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sdpipe.errors import SdpipeError


class ModelUnavailable(SdpipeError):
    code = "MODEL_NOT_FOUND"


PART_BYTES = int(os.environ.get("SDPIPE_S3_PART_MIB", "16")) << 20
CONCURRENCY = int(os.environ.get("SDPIPE_S3_CONCURRENCY", "32"))


class ModelStore:
    def __init__(
        self,
        cache_dir: Path,
        max_bytes: int,
        s3: Any = None,
        part_bytes: int = PART_BYTES,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.part_bytes = part_bytes
        self.concurrency = concurrency
        self._s3 = s3
        self._lock = threading.Lock()
        cache_dir.mkdir(parents=True, exist_ok=True)

    def _client(self) -> Any:
        if self._s3 is None:
            from sdpipe.adapters.clients import clients

            self._s3 = clients.get("s3")
        return self._s3

    def file(self, uri: str, sha256: str, suffix: str = "") -> Path:
        """A local path for ``uri`` (``file://``, a plain path, or ``s3://``)."""
        parsed = urlparse(uri)
        local = _local_path(uri)
        if local is not None:
            if not local.is_file():
                raise ModelUnavailable(f"model file {local} does not exist")
            return local
        if parsed.scheme != "s3":
            raise ModelUnavailable(f"model URI scheme {parsed.scheme!r} is not supported (s3:// or a local path)")
        target = self.cache_dir / f"{sha256}{suffix}"
        with self._lock:
            if target.exists():
                os.utime(target)  # most recently used
                return target
            bucket, key = parsed.netloc, parsed.path.lstrip("/")
            head = self._client().head_object(Bucket=bucket, Key=key)
            size = int(head["ContentLength"])
            self._make_room(size)
            partial = target.with_suffix(target.suffix + ".partial")
            try:
                self._download(bucket, key, size, str(head["ETag"]), partial)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.rename(target)
            return target

    def _download(self, bucket: str, key: str, size: int, etag: str, partial: Path) -> None:
        """Ranged GETs in parallel, each written at its offset of a file of the object's size."""
        ranges = [(start, min(start + self.part_bytes, size) - 1) for start in range(0, size, self.part_bytes)]
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(descriptor, size)

            def fetch(byte_range: tuple[int, int]) -> None:
                first, last = byte_range
                body = self._get(bucket, key, f"bytes={first}-{last}", etag)
                offset = first
                while chunk := body.read(1 << 20):
                    offset += os.pwrite(descriptor, chunk, offset)
                if offset != last + 1:
                    raise ModelUnavailable(f"s3://{bucket}/{key} ended at byte {offset} of part {first}-{last}")

            with ThreadPoolExecutor(
                max_workers=max(1, min(self.concurrency, len(ranges))), thread_name_prefix="s3-get"
            ) as pool:
                for _ in pool.map(fetch, ranges):
                    pass
        finally:
            os.close(descriptor)

    def _get(self, bucket: str, key: str, byte_range: str, etag: str) -> Any:
        try:
            return self._client().get_object(Bucket=bucket, Key=key, Range=byte_range, IfMatch=etag)["Body"]
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412"):
                raise ModelUnavailable(
                    f"s3://{bucket}/{key} was replaced while it was being downloaded: send the request again"
                ) from None
            raise

    def read(self, uri: str, max_bytes: int) -> bytes:
        """A small object (an init image) whole, from S3 or a local path."""
        local = _local_path(uri)
        if local is not None:
            return local.read_bytes()[: max_bytes + 1]
        parsed = urlparse(uri)
        response = self._client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        if int(response["ContentLength"]) > max_bytes:
            raise ModelUnavailable(f"{uri} is larger than {max_bytes} bytes")
        return bytes(response["Body"].read())

    def folder(self, uri: str, key: str) -> Path:
        """A local folder for ``uri``: a local path, or an ``s3://`` prefix copied once."""
        parsed = urlparse(uri)
        local = _local_path(uri)
        if local is not None:
            if not local.is_dir():
                raise ModelUnavailable(f"config folder {local} does not exist")
            return local
        target = self.cache_dir / f"{key}.config"
        with self._lock:
            if target.exists():
                return target
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            prefix = parsed.path.lstrip("/").rstrip("/") + "/"
            paginator = self._client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=parsed.netloc, Prefix=prefix):
                for item in page.get("Contents", []):
                    local = partial / item["Key"][len(prefix) :]
                    local.parent.mkdir(parents=True, exist_ok=True)
                    self._client().download_file(parsed.netloc, item["Key"], str(local))
            if not partial.exists():
                raise ModelUnavailable(f"config folder {uri} is empty or missing")
            partial.rename(target)
            return target

    def _make_room(self, incoming: int) -> None:
        if incoming > self.max_bytes:
            raise ModelUnavailable(
                f"the model ({incoming} bytes) is larger than the whole cache ({self.max_bytes} bytes)"
            )
        files = sorted((p for p in self.cache_dir.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        while files and used + incoming > self.max_bytes:
            oldest = files.pop(0)
            used -= oldest.stat().st_size
            oldest.unlink()


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _local_path(uri: str) -> Path | None:
    """The path a ``file://`` URI or plain path names; None for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri) if parsed.scheme == "" else None
