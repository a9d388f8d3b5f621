"""Client side of chunked uploads: parallel part PUTs, retries, resume, WebUI folder sync.

Memory is bounded by ``concurrency`` parts (each worker reads its own part from the file when it
starts it). An interrupted upload is resumed by running the same command again: the request id
is derived from the destination, the size and the sha256, so ``create_upload`` finds the same
upload and returns URLs only for the parts S3 does not hold yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from sdpipe.adapters.multipart import content_md5
from sdpipe.contracts.jobs import REGISTERING, JobStatus
from sdpipe.contracts.models import ModelType
from sdpipe.errors import SdpipeError, ValidationFailed
from sdpipe.layout import MODEL_EXTENSIONS, MODEL_FOLDERS, named_like_source
from sdpipe_client.client import Sdpipe

UPLOADS_API = "UploadsFunctionName"
HASH_CHUNK = 8 * 1024 * 1024
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
Progress = Callable[[int], None]


class UploadInterrupted(SdpipeError):
    code = "UPLOAD_INTERRUPTED"


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


@dataclass
class HashCache:
    """sha256 of local files by (path, size, mtime), so a second sync does not hash 50 GB again."""

    path: Path = field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdpipe" / "sha256.json"
        )
    )
    _entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def sha256(self, file: Path, progress: Progress | None = None) -> str:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = sha256_of(file, progress)
            self._save()
        elif progress:
            progress(stat.st_size)
        return found

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self._entries))
        except OSError:
            pass  # a cache: losing it only costs time


@dataclass
class UploadResult:
    job_id: str
    key: str
    status: str  # RUNNING while registration works, then the job's final status
    sent_bytes: int  # bytes PUT by this run (less than the size when resumed)
    job: dict[str, Any] | None = None


@dataclass
class Uploader:
    client: Sdpipe
    concurrency: int = 4
    attempts: int = 5  # per part
    backoff_s: float = 0.5
    _http: urllib3.PoolManager = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One connection per part in flight: a smaller pool makes urllib3 warn "Connection pool is
        # full" and open throwaway connections.
        self._http = urllib3.PoolManager(maxsize=max(1, self.concurrency), retries=False)

    def upload(
        self,
        path: Path,
        model_type: ModelType,
        *,
        name: str | None = None,
        sha256: str | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> UploadResult:
        """Upload ``path`` (resuming an earlier attempt of the same file), then complete it."""
        size = path.stat().st_size
        try:
            filename = named_like_source(name, path.name) or path.name
        except ValueError as exc:
            raise ValidationFailed(f"--name: {exc}") from None
        sha256 = (sha256 or sha256_of(path)).lower()
        base = hashlib.sha256(f"{model_type.value}/{filename}\n{size}\n{sha256}".encode()).hexdigest()[:32]
        for attempt in range(100):
            request_id = f"upload-{base}" + (f"-{attempt}" if attempt else "")
            plan = self.client.invoke_api(
                UPLOADS_API,
                {
                    "operation": "create_upload",
                    "type": model_type.value,
                    "filename": filename,
                    "size": size,
                    "sha256": sha256,
                    "request_id": request_id,
                    "overwrite": overwrite,
                },
            )
            status = plan["status"]
            if status == JobStatus.SUCCEEDED.value:
                if progress:
                    progress(size)
                return UploadResult(plan["job_id"], plan["key"], status, 0, plan)
            if status == JobStatus.RUNNING.value:
                break
            # That attempt ended (failed, aborted, timed out): start a fresh one.
        else:
            raise SdpipeError(f"{path}: too many earlier upload attempts")
        if plan.get("phase") == REGISTERING:
            if progress:
                progress(size)
            return UploadResult(plan["job_id"], plan["key"], status, 0)
        if progress:
            progress(size - sum(p["end"] - p["start"] + 1 for p in plan["parts"]))
        etags = {p["part_number"]: p["etag"] for p in plan["parts_done"]}
        sent = self._send_parts(path, plan, etags, progress)
        parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
        done = self.client.invoke_api(
            UPLOADS_API, {"operation": "complete_upload", "job_id": plan["job_id"], "parts": parts}
        )
        return UploadResult(plan["job_id"], done["key"], done["status"], sent)

    def _send_parts(self, path: Path, plan: dict[str, Any], etags: dict[int, str], progress: Progress | None) -> int:
        pending = list(plan["parts"])
        urls = {p["part_number"]: p["url"] for p in pending}
        urls_lock = threading.Lock()
        sent = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="part") as pool:
                running: dict[Future[str], dict[str, Any]] = {}
                queue = iter(pending)
                try:
                    while True:
                        while len(running) < self.concurrency and (part := next(queue, None)) is not None:
                            running[pool.submit(self._send_part, fd, part, urls, urls_lock, plan["job_id"])] = part
                        if not running:
                            break
                        finished, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            part = running.pop(future)
                            etags[part["part_number"]] = future.result()
                            length = part["end"] - part["start"] + 1
                            sent += length
                            if progress:
                                progress(length)
                except BaseException:
                    for future in running:
                        future.cancel()
                    raise
        except KeyboardInterrupt:
            raise UploadInterrupted(
                f"interrupted after sending {sent} bytes; run the same command again to resume (job {plan['job_id']})"
            ) from None
        finally:
            os.close(fd)
        return sent

    def _send_part(self, fd: int, part: dict[str, Any], urls: dict[int, str], lock: threading.Lock, job_id: str) -> str:
        number = part["part_number"]
        body = os.pread(fd, part["end"] - part["start"] + 1, part["start"])
        headers = {"Content-MD5": content_md5(body), "Content-Length": str(len(body))}
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(random.uniform(0, self.backoff_s * 2**attempt))  # noqa: S311 - jitter, not a secret
            with lock:
                url = urls[number]
            try:
                response = self._http.request(
                    "PUT", url, body=body, headers=headers, timeout=urllib3.Timeout(connect=10, read=300)
                )
            except urllib3.exceptions.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status == 200:
                return str(response.headers.get("ETag", "")).strip('"')
            last = f"HTTP {response.status}: {response.data[:300]!r}"
            if response.status == 403:  # the URL expired: ask for fresh ones
                fresh = self.client.invoke_api(UPLOADS_API, {"operation": "resume_upload", "job_id": job_id})
                with lock:
                    urls.update({p["part_number"]: p["url"] for p in fresh["parts"]})
                continue
            if response.status not in _RETRYABLE_STATUS and response.status != 400:
                break
        raise SdpipeError(f"part {number} failed after {self.attempts} attempts: {last}", code="UPLOAD_PART_FAILED")


@dataclass(frozen=True)
class LocalModel:
    path: Path
    type: ModelType
    relative_name: str  # under the type's folder, subfolders kept

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def webui_models(root: Path) -> Iterator[LocalModel]:
    """Model files of a WebUI ``models/`` folder (or of the WebUI folder that holds one)."""
    if not any((root / folder).is_dir() for folder in MODEL_FOLDERS) and (root / "models").is_dir():
        root = root / "models"
    for folder, model_type in sorted(MODEL_FOLDERS.items()):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS and not path.name.startswith("."):
                yield LocalModel(path, model_type, path.relative_to(base).as_posix())
