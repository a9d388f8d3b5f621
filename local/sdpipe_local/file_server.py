"""A local HTTP file server that behaves like (and misbehaves like) model download sites.

Used by the demo, the fetch tests and the fetch benchmark. Paths:

- ``/files/<name>``: the file, with range support (206 + Content-Range), like a CDN.
- ``/norange/<name>``: the file, ignoring Range headers (200, whole body), like a plain server.
- ``/download/<name>``: 302 to ``/files/<name>`` with the name only in Content-Disposition,
  like a model site's download API.
- ``/redirect/<n>/<name>``: a chain of ``n`` redirects, then the file.
- ``/redirect-to?url=<url>``: 302 to any URL (a redirect to a forbidden address).
- ``/liar/<name>``: claims a size larger than it sends (Content-Range total and lengths lie).
- ``/reset/<name>``: sends half of every requested range, then drops the connection.

Every request is counted per path (``hits``) so tests can prove what was and was not fetched.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 1024 * 1024


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients drop connections on purpose (a probe reads only the headers): not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FileServer:
    def __init__(self, root: Path, *, delay_s: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.delay_s = delay_s  # per chunk sent: a slow server
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _QuietServer((host, port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="file-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"files": self})


class _Handler(BaseHTTPRequestHandler):
    """The routes of ``FileServer`` (``files`` is the server whose root and counters it uses)."""

    protocol_version = "HTTP/1.1"
    files: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        with self.files._lock:
            self.files.hits[parts.path] += 1
        segments = parts.path.strip("/").split("/")
        kind, rest = segments[0], segments[1:]
        if kind == "redirect-to":
            target = parse_qs(parts.query).get("url", [""])[0]
            return self._redirect(target)
        if kind == "download" and rest:
            return self._redirect(f"/files/{'/'.join(rest)}?sig=secret", disposition=rest[-1])
        if kind == "redirect" and len(rest) >= 2:
            remaining = int(rest[0])
            name = "/".join(rest[1:])
            return self._redirect(f"/redirect/{remaining - 1}/{name}" if remaining > 1 else f"/files/{name}")
        path = self.files.root / "/".join(rest)
        if kind not in ("files", "norange", "liar", "reset") or not rest or not path.is_file():
            return self._status(404, "Not Found")
        size = path.stat().st_size
        match = _RANGE.match(self.headers.get("Range", ""))
        if kind == "norange" or match is None:
            return self._send(path, 0, size - 1, size=size, status=200, kind=kind)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size:
            return self._status(416, "Range Not Satisfiable")
        return self._send(path, start, end, size=size, status=206, kind=kind)

    def _redirect(self, location: str, disposition: str | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        if disposition:
            self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(disposition)}")
        self.end_headers()

    def _status(self, code: int, reason: str) -> None:
        self.send_response(code, reason)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, path: Path, start: int, end: int, *, size: int, status: int, kind: str) -> None:
        length = end - start + 1
        announced_size, announced_length = size, length
        if kind == "liar":
            announced_size = size * 2
            announced_length = length if status == 206 else announced_size
        self.send_response(status)
        self.send_header("Content-Length", str(announced_length))
        self.send_header("Accept-Ranges", "none" if kind == "norange" else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{announced_size}")
        self.end_headers()
        to_send = length // 2 if kind == "reset" else length
        with path.open("rb") as handle:
            if not self.files.delay_s:  # in the kernel, as a CDN's server sends it (no GIL, no copies)
                with contextlib.suppress(OSError):
                    self.connection.sendfile(handle, offset=start, count=to_send)
                to_send = 0
            handle.seek(start)
            while to_send > 0:
                chunk = handle.read(min(_CHUNK, to_send))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
                to_send -= len(chunk)
                if self.files.delay_s:
                    time.sleep(self.files.delay_s)
        if kind == "reset":
            self.close_connection = True
            self.connection.shutdown(2)  # drop mid-body


def main() -> None:  # pragma: no cover - a convenience for trying fetch by hand
    root = Path(os.environ.get("SDPIPE_FILE_SERVER_ROOT", "."))
    with FileServer(root, port=int(os.environ.get("SDPIPE_FILE_SERVER_PORT", "8765"))) as server:
        print(f"serving {root} at {server.url('/files/')}", flush=True)
        while True:  # wakes twice a second, so a Ctrl-C delivered to another thread is still seen
            time.sleep(0.5)


if __name__ == "__main__":
    main()
