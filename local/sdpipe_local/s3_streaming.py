"""S3 on the local endpoint where moto falls short: streamed GETs, checked UploadParts.

Streaming:
moto (5.2) answers every GetObject, ranged or not, by reading the whole object into memory and
copying it; a 7 GB checkpoint would cost the local stack 14 GB per read and a 1 MiB header read
would cost a full read. For plain GETs (no query string; an optional single byte range), this
middleware asks moto for the HEAD of the same request, so moto still decides status, headers,
conditional requests (If-Match...) and errors, then streams the body, or only the requested
range, from moto's stored buffer in fixed-size chunks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

StartResponse = Callable[..., Any]
_CHUNK = 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class S3StreamingGetMiddleware:
    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]], hosts: set[str]) -> None:
        self._app = app
        self._hosts = hosts  # path-style requests to the local endpoint only

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        target = self._target(environ)
        if target is None:
            return self._app(environ, start_response)
        bucket, key_name = target
        key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, key_name)
        if key is None:
            return self._app(environ, start_response)
        try:
            byte_range = _parse_range(environ.get("HTTP_RANGE"), key.size)
        except _NotOneSatisfiableRange:
            return self._app(environ, start_response)  # moto answers (416, or the whole object)
        head_status, head_headers = self._head(environ)
        if not head_status.startswith("200"):
            return self._app(environ, start_response)  # 304, 412, 403...: moto's own answer
        # Checksum headers are left out: moto's HEAD gives multipart objects a CRC that is not the
        # whole object's (clients would reject the body), and none describes a range.
        headers = [
            (k, v)
            for k, v in head_headers
            if k.lower() not in ("content-length", "content-range") and not k.lower().startswith("x-amz-checksum-")
        ]
        if byte_range is None:
            start, end, status = 0, key.size - 1, "200 OK"
        else:
            start, end = byte_range
            status = "206 Partial Content"
            headers.append(("Content-Range", f"bytes {start}-{end}/{key.size}"))
        headers.append(("Content-Length", str(max(0, end - start + 1))))
        start_response(status, headers)
        return _read(key, start, end)

    def _target(self, environ: dict[str, Any]) -> tuple[str, str] | None:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
            return None
        if environ.get("HTTP_HOST", "") not in self._hosts:
            return None
        if "s3" not in environ.get("HTTP_AUTHORIZATION", "").split("/")[3:4]:
            return None  # only requests signed for S3 (the credential scope names the service)
        path = environ.get("PATH_INFO", "")
        bucket, _, key_name = path.lstrip("/").partition("/")
        if not bucket or not key_name:
            return None
        return bucket, unquote(key_name)

    def _head(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        head_environ = {k: v for k, v in environ.items() if k != "HTTP_RANGE"}
        head_environ["REQUEST_METHOD"] = "HEAD"
        # moto's GET accepts If-Match with or without quotes (as S3 does); its HEAD only quoted.
        for header in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH"):
            value = head_environ.get(header)
            if value and not value.startswith(('"', "W/", "*")):
                head_environ[header] = f'"{value}"'

        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        body = self._app(head_environ, capture)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return captured["status"], list(captured["headers"])


class _NotOneSatisfiableRange(ValueError):
    pass


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of the one range asked for; None without a Range header."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or size == 0 or match.groups() == ("", ""):
        raise _NotOneSatisfiableRange(header)
    first, last = match.groups()
    if first == "":
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start > end:
        raise _NotOneSatisfiableRange(header)
    return start, end


def _read(key: Any, start: int, end: int) -> Iterator[bytes]:
    position = start
    while position <= end:
        with key.lock:  # moto's buffer has one file position, shared by every reader
            key._value_buffer.seek(position)
            chunk = key._value_buffer.read(min(_CHUNK, end - position + 1))
        if not chunk:
            return
        position += len(chunk)
        yield chunk


_BAD_DIGEST = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>BadDigest</Code>'
    b"<Message>The %s you specified did not match what we received.</Message></Error>"
)
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class S3UploadPartMiddleware:
    """UploadPart as S3 answers it where moto does not: a Content-MD5 or an x-amz-checksum-crc32
    that does not match the body is refused with BadDigest (moto stores the part anyway), and
    tests can make the next ``n`` part uploads fail with 503 SlowDown (``fail_parts``)."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self._app = app
        self._failures = 0
        self._lock = threading.Lock()

    def fail_parts(self, count: int) -> None:
        with self._lock:
            self._failures = count

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        if environ.get("REQUEST_METHOD") != "PUT" or "uploadId=" not in query or "partNumber=" not in query:
            return self._app(environ, start_response)
        with self._lock:
            failing = self._failures > 0
            self._failures -= 1 if failing else 0
        if failing:
            return _error(start_response, "503 Service Unavailable", _SLOW_DOWN)
        expected_md5, expected_crc32 = environ.get("HTTP_CONTENT_MD5"), environ.get("HTTP_X_AMZ_CHECKSUM_CRC32")
        chunked = "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "") or environ.get(
            "HTTP_X_AMZ_CONTENT_SHA256", ""
        ).startswith("STREAMING-")
        if not chunked:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            if expected_md5 and _b64(hashlib.md5(body, usedforsecurity=False).digest()) != expected_md5.strip():
                return _error(start_response, "400 Bad Request", _BAD_DIGEST % b"Content-MD5")
            if expected_crc32 and _b64(zlib.crc32(body).to_bytes(4, "big")) != expected_crc32.strip():
                return _error(start_response, "400 Bad Request", _BAD_DIGEST % b"CRC32")
            # Read here in one call, the body is handed to moto whole: werkzeug would otherwise
            # read it again 64 KiB at a time in Python, a fifth of the local S3's time per part.
            environ["wsgi.input"] = io.BytesIO(body)
            environ["wsgi.input_terminated"] = True
        return self._app(environ, start_response)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _error(start_response: StartResponse, status: str, body: bytes) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]
