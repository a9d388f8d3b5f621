"""Model files on local disk: a size-bounded cache of S3 objects, keyed by sha256.

Checkpoints are gigabytes, so the container keeps the ones it used last on its disk and evicts
the least recently used when the cache would exceed its budget. Downloads go to a temporary name
and are renamed when complete, so a crash never leaves a truncated file that looks cached.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sdpipe.errors import SdpipeError


class ModelUnavailable(SdpipeError):
    code = "MODEL_NOT_FOUND"


class ModelStore:
    def __init__(self, cache_dir: Path, max_bytes: int, s3: Any = None) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
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
            size = int(self._client().head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["ContentLength"])
            self._make_room(size)
            partial = target.with_suffix(target.suffix + ".partial")
            self._client().download_file(parsed.netloc, parsed.path.lstrip("/"), str(partial))
            partial.rename(target)
            return target

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


def _local_path(uri: str) -> Path | None:
    """The path a ``file://`` URI or plain path names; None for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri) if parsed.scheme == "" else None
