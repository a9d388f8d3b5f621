"""Client side of chunked uploads: parallel part PUTs, retries, resume, WebUI folder sync.

The file is read once, in order: each part goes through the sha256 (unless the caller knows it)
and out to S3, ``concurrency`` parts at once, so memory is that many parts plus the one being read.
An interrupted upload is resumed by running the same command again: the request id is derived
from the destination, the size and the file (its path and modification time, or its sha256 when
given), so ``create_upload`` finds the same upload and returns URLs only for the parts S3 does not
hold yet; the held ones are read for the hash and checked against their ETag, not sent again.
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

from sdpipe.contracts.jobs import REGISTERING, JobStatus
from sdpipe.contracts.models import ModelType
from sdpipe.contracts.uploads import PART_URL_BATCH
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


# As many parts in flight as the AWS CLI sends at once (its max_concurrent_requests); S3's parts
# are 8 MiB for files up to 78 GiB, so that is 80 MiB of memory.
DEFAULT_CONCURRENCY = 10


@dataclass
class Uploader:
    client: Sdpipe
    concurrency: int = DEFAULT_CONCURRENCY
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
        """Upload ``path`` (resuming an earlier attempt of the same file), then complete it.

        Without ``sha256`` the file is hashed while its parts go out (one read of the file) and
        the hash is named when the upload completes; registration verifies it either way."""
        stat = path.stat()
        size = stat.st_size
        try:
            filename = named_like_source(name, path.name) or path.name
        except ValueError as exc:
            raise ValidationFailed(f"--name: {exc}") from None
        sha256 = sha256.lower() if sha256 else None
        # The same file again (the same path, size and modification time, or the same sha256)
        # finds its interrupted upload; a file changed since starts a new one.
        identity = sha256 or f"{path.resolve()}|{stat.st_mtime_ns}"
        base = hashlib.sha256(f"{model_type.value}/{filename}\n{size}\n{identity}".encode()).hexdigest()[:32]
        for attempt in range(100):
            request_id = f"upload-{base}" + (f"-{attempt}" if attempt else "")
            request = {"operation": "create_upload", "type": model_type.value, "filename": filename, "size": size,
                       "request_id": request_id, "overwrite": overwrite}  # fmt: skip
            plan = self.client.invoke_api(UPLOADS_API, request | ({"sha256": sha256} if sha256 else {}))
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
        etags = {p["part_number"]: p["etag"] for p in plan["parts_done"]}
        if progress:
            progress(size - sum(p["end"] - p["start"] + 1 for p in plan["parts"]))
        digest = None if sha256 else hashlib.sha256()
        sent = self._send_parts(path, plan, etags, progress, digest)
        parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
        complete = {"operation": "complete_upload", "job_id": plan["job_id"], "parts": parts}
        done = self.client.invoke_api(UPLOADS_API, complete | ({"sha256": digest.hexdigest()} if digest else {}))
        return UploadResult(plan["job_id"], done["key"], done["status"], sent)

    def _send_parts(
        self,
        path: Path,
        plan: dict[str, Any],
        etags: dict[int, str],
        progress: Progress | None,
        digest: Any | None,
    ) -> int:
        """PUT the parts S3 does not hold, ``concurrency`` at once, reading the file once, in order;
        with ``digest``, every part goes through it (the held ones are read, checked against S3's
        ETag, and not sent). Memory: the parts in flight and the one being read."""
        missing = {p["part_number"]: p for p in plan["parts"]}
        urls = PartUrls(
            self.client, plan["job_id"], sorted(missing), {n: p["url"] for n, p in missing.items() if "url" in p}
        )
        sent = 0
        running: dict[Future[str], int] = {}

        def collect() -> None:  # at least one part's answer
            nonlocal sent
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                number = running.pop(future)
                etags[number] = future.result()
                length = missing[number]["end"] - missing[number]["start"] + 1
                sent += length
                if progress:
                    progress(length)

        part_size, size = int(plan["part_size"]), int(plan["size"])
        wanted = range(1, int(plan["part_count"]) + 1) if digest is not None else sorted(missing)
        try:
            with (
                path.open("rb") as source,
                urls,
                ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="part") as pool,
            ):
                try:
                    for number in wanted:
                        start = (number - 1) * part_size
                        source.seek(start)
                        body = source.read(min(part_size, size - start))  # buffered: all of it, or EOF
                        if digest is not None:
                            digest.update(body)  # hashlib lets the senders run meanwhile
                        if number not in missing:
                            if hashlib.md5(body, usedforsecurity=False).hexdigest() != etags[number].strip('"'):
                                raise SdpipeError(
                                    f"part {number} held by S3 differs from {path}: the file changed since the "
                                    f"interrupted upload (job {plan['job_id']}); abort it or upload under another name",
                                    code="UPLOAD_SOURCE_CHANGED",
                                )
                            continue
                        while len(running) >= self.concurrency:
                            collect()
                        url = urls.get(number)
                        running[pool.submit(self._send_part, body, number, url, urls)] = number
                        del body
                    while running:
                        collect()
                except BaseException:
                    for future in running:
                        future.cancel()
                    raise
        except KeyboardInterrupt:
            raise UploadInterrupted(
                f"interrupted after sending {sent} bytes; run the same command again to resume (job {plan['job_id']})"
            ) from None
        return sent

    def _send_part(self, body: bytes, number: int, url: str, urls: PartUrls) -> str:
        # No Content-MD5: the parts travel over TLS and registration checks the whole file's sha256
        # (hashing every part again here cost a tenth of the upload's time).
        headers = {"Content-Length": str(len(body))}
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(random.uniform(0, self.backoff_s * 2**attempt))  # noqa: S311 - jitter, not a secret
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
                url = urls.refresh(number)
                continue
            if response.status not in _RETRYABLE_STATUS and response.status != 400:
                break
        raise SdpipeError(f"part {number} failed after {self.attempts} attempts: {last}", code="UPLOAD_PART_FAILED")


class PartUrls:
    """Presigned URLs of the parts to send. The upload's plan holds the first ones; the rest are
    asked for a batch at a time, in the background, while the parts before them go out."""

    def __init__(self, client: Sdpipe, job_id: str, numbers: list[int], known: dict[int, str]) -> None:
        self._client, self._job_id = client, job_id
        self._order = {number: index for index, number in enumerate(numbers)}
        self._numbers = numbers
        self._urls = dict(known)
        self._lock = threading.Lock()
        self._asking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="part-urls")
        self._pending: Future[None] | None = None

    def __enter__(self) -> PartUrls:
        return self

    def __exit__(self, *_: object) -> None:
        self._asking.shutdown(wait=False, cancel_futures=True)

    def get(self, number: int) -> str:
        """The URL of ``number`` (asked for now if the batch holding it is not here), and the next
        batch asked for when fewer than half a batch of URLs are left ahead of it."""
        with self._lock:
            url, pending = self._urls.get(number), self._pending
        if url is None and pending is not None:
            pending.result()
            with self._lock:
                url = self._urls.get(number)
        if url is None:
            self._ask(self._batch_from(number))
            url = self._urls[number]
        self._ask_ahead(number)
        return url

    def refresh(self, number: int) -> str:
        """Fresh URLs from ``number`` on (its URL expired, and so have the ones after it)."""
        self._ask(self._batch_from(number))
        with self._lock:
            return self._urls[number]

    def _ask_ahead(self, number: int) -> None:
        position = self._order[number]
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return
            ahead = self._numbers[position + 1 : position + 1 + PART_URL_BATCH]
            unknown = [n for n in ahead if n not in self._urls]
            if not unknown or len(ahead) - len(unknown) >= PART_URL_BATCH // 2:
                return
            self._pending = self._asking.submit(self._ask, self._batch_from(unknown[0]))

    def _batch_from(self, number: int) -> list[int]:
        position = self._order[number]
        return self._numbers[position : position + PART_URL_BATCH]

    def _ask(self, numbers: list[int]) -> None:
        answer = self._client.invoke_api(
            UPLOADS_API, {"operation": "part_urls", "job_id": self._job_id, "part_numbers": numbers}
        )
        with self._lock:
            self._urls.update({u["part_number"]: u["url"] for u in answer["urls"]})


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
