"""HTTP(S) downloads that only ever connect to addresses the URL policy allowed.

Each hop of a request (the URL, then every redirect target) is checked by ``url_policy``: the host
is resolved once, every address it resolves to is checked, and the connection is opened to that
checked address (TLS still verifies the certificate against the host name). Nothing resolves the
name a second time, so a DNS answer that changes between check and connect changes nothing.
Standard library only: this runs in Lambda.

Time is bounded per request, not only per socket read: each request has a total deadline (a
watchdog shuts its socket when it passes, so a server that trickles headers one byte at a time
cannot keep a fetch alive), and a body must keep up a minimum rate once a short grace period is
over (a slow drip fails as ``SourceFailed``, which the workflow retries, instead of running until
the function is killed).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

from sdpipe.errors import SourceFailed, SourceMisbehaved, SourceRefused, UrlRejected
from sdpipe.logic.url_policy import IPAddress, Target, UrlPolicy, check_addresses, check_url, literal_address

Resolver = Callable[[str, int], list[IPAddress]]
Connector = Callable[[IPAddress, int, float], socket.socket]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_READ_CHUNK = 1024 * 1024
DEFAULT_REQUEST_DEADLINE_SECONDS = 600.0
DEFAULT_MIN_BYTES_PER_SECOND = 64 * 1024
_RATE_GRACE_SECONDS = 10.0


class _Watchdog:
    """Shuts a request's connections when its deadline passes (a blocked read then returns).

    It holds connections, not sockets: TLS replaces the socket http.client connected with a new
    one, and a closed connection's socket is None, so nothing unrelated can be shut.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.fired = False
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            connections = list(self._connections)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed or never connected: nothing left to stop
        sock.shutdown(socket.SHUT_RDWR)


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` names (a literal in any spelling, or what DNS answers)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRejected(f"host {host!r} does not resolve: {exc.strerror}") from None
    found = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = literal_address(str(sockaddr[0]))
        if address is not None:
            found.append(address)
    return found


def direct_connector(address: IPAddress, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((str(address), port), timeout=timeout)


@dataclass
class Opened:
    """A response whose status is 200 or 206, with its body still to read."""

    url: str  # after redirects
    status: int
    headers: Message
    response: http.client.HTTPResponse
    connection: http.client.HTTPConnection
    watchdog: _Watchdog | None = None
    min_bytes_per_second: float = 0.0
    rate_grace_seconds: float = _RATE_GRACE_SECONDS

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.response.close()
        self.connection.close()

    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value and value.isdigit() else None

    def content_range(self) -> tuple[int, int, int | None] | None:
        match = _CONTENT_RANGE.match(self.headers.get("Content-Range", "").strip())
        if match is None:
            return None
        total = match.group(3)
        return int(match.group(1)), int(match.group(2)), int(total) if total != "*" else None

    def iter_chunks(self, limit: int, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        """The body in chunks; ``SourceMisbehaved`` as soon as it runs past ``limit`` bytes,
        ``SourceFailed`` when the request's deadline passes or the body drips slower than the
        minimum rate."""
        seen = 0
        started = time.monotonic()
        while True:
            try:
                # read1: what one receive brings, so the rate is checked while a slow body drips.
                chunk = self.response.read1(min(chunk_size, limit - seen + 1))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise self._failure(f"reading {_display(self.url)} failed after {seen} bytes: {exc}") from None
            if self.watchdog is not None and self.watchdog.fired:
                raise self._failure(f"reading {_display(self.url)} stopped after {seen} bytes")
            if not chunk:
                return
            seen += len(chunk)
            if seen > limit:
                raise SourceMisbehaved(f"{_display(self.url)} sent more than the {limit} bytes it announced")
            elapsed = time.monotonic() - started
            if elapsed > self.rate_grace_seconds and seen < self.min_bytes_per_second * elapsed:
                raise SourceFailed(
                    f"{_display(self.url)} sends {seen / elapsed:.0f} bytes/s, below the minimum of "
                    f"{self.min_bytes_per_second:.0f} bytes/s"
                )
            yield chunk

    def _failure(self, message: str) -> SourceFailed:
        if self.watchdog is not None and self.watchdog.fired:
            return SourceFailed(f"{message}: the request ran past its {self.watchdog.seconds:.0f}-second deadline")
        return SourceFailed(message)


@dataclass(frozen=True)
class Probe:
    url: str  # after redirects: where the parts are read from
    size: int | None
    filename: str | None
    ranges: bool


@dataclass
class HttpSource:
    policy: UrlPolicy
    timeout: float = 30.0
    resolver: Resolver = system_resolver
    connector: Connector = direct_connector
    # Sent to the origin of the URL as given only (scheme, host and port), never to another
    # origin a redirect leads to, not even another port or scheme of the same host.
    auth_header: tuple[str, str] | None = field(default=None, repr=False)
    user_agent: str = "sdpipe-fetch/1"
    # Each request (redirects included, body included) must end within this many seconds.
    deadline_seconds: float = DEFAULT_REQUEST_DEADLINE_SECONDS
    probe_deadline_seconds: float = 120.0
    min_bytes_per_second: float = DEFAULT_MIN_BYTES_PER_SECOND
    rate_grace_seconds: float = _RATE_GRACE_SECONDS

    def open(
        self, url: str, byte_range: tuple[int, int] | None = None, deadline_seconds: float | None = None
    ) -> Opened:
        """GET ``url`` (a range of it, inclusive), following checked redirects; 200/206 or an error."""
        first = check_url(url, self.policy)
        origin = (first.scheme, first.host, first.port)
        watchdog = _Watchdog(deadline_seconds if deadline_seconds is not None else self.deadline_seconds)
        try:
            return self._open(url, byte_range, origin, watchdog)
        except BaseException:
            watchdog.cancel()
            raise

    def _open(
        self, url: str, byte_range: tuple[int, int] | None, origin: tuple[str, str, int], watchdog: _Watchdog
    ) -> Opened:
        for _hop in range(self.policy.max_redirects + 1):
            target = check_url(url, self.policy)
            address = check_addresses(target.host, self.resolver(target.host, target.port), self.policy)
            headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
            if byte_range is not None:
                headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            if self.auth_header is not None and (target.scheme, target.host, target.port) == origin:
                headers[self.auth_header[0]] = self.auth_header[1]
            connection = self._connection(target, address, watchdog)
            try:
                connection.request("GET", target.path, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if watchdog.fired:
                    raise _late(url, watchdog) from None
                raise SourceFailed(f"{_display(url)}: {exc}") from None
            if watchdog.fired:  # a shut socket reads as the end of the headers: they are incomplete
                response.close()
                connection.close()
                raise _late(url, watchdog)
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                response.close()
                connection.close()
                if not location:
                    raise SourceMisbehaved(f"{_display(url)} redirected without a Location")
                url = urljoin(url, location)
                continue
            if response.status in (200, 206):
                return Opened(
                    url,
                    response.status,
                    response.msg,
                    response,
                    connection,
                    watchdog,
                    self.min_bytes_per_second,
                    self.rate_grace_seconds,
                )
            response.close()
            connection.close()
            message = f"{_display(url)} answered HTTP {response.status} {response.reason}"
            if response.status == 416 and byte_range is not None:
                raise SourceMisbehaved(
                    f"{message} to bytes {byte_range[0]}-{byte_range[1]}: the file is shorter than announced"
                )
            if response.status in (408, 429) or response.status >= 500:
                raise SourceFailed(message)
            raise SourceRefused(message)
        raise UrlRejected(f"more than {self.policy.max_redirects} redirects, last to {_display(url)}")

    def probe(self, url: str) -> Probe:
        """Size, file name and range support, from a one-byte ranged GET (HEAD is often refused)."""
        opened = self.open(url, byte_range=(0, 0), deadline_seconds=self.probe_deadline_seconds)
        try:
            if opened.status == 206:
                content_range = opened.content_range()
                if content_range is None or content_range[0] != 0:
                    raise SourceMisbehaved(
                        f"{_display(opened.url)} answered a range request without a valid Content-Range"
                    )
                size = content_range[2]
                ranges = size is not None
            else:
                size = opened.content_length()
                ranges = False
            return Probe(url=opened.url, size=size, filename=_filename(opened.headers, opened.url, url), ranges=ranges)
        finally:
            opened.close()

    def _connection(self, target: Target, address: IPAddress, watchdog: _Watchdog) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = http.client.HTTPSConnection(
                target.host, target.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(target.host, target.port, timeout=self.timeout)
        # http.client connects through this hook (TLS then wraps the socket with SNI and
        # certificate checks for target.host): pin it to the address that was checked.
        connector = self.connector

        def pinned(_address: tuple[str, int], timeout: float, _source: object = None) -> socket.socket:
            return connector(address, target.port, min(timeout, max(watchdog.remaining(), 0.001)))

        connection._create_connection = pinned  # type: ignore[attr-defined]
        watchdog.watch(connection)
        return connection


def _late(url: str, watchdog: _Watchdog) -> SourceFailed:
    return SourceFailed(f"{_display(url)} did not answer within the request's {watchdog.seconds:.0f}-second deadline")


def _display(url: str) -> str:
    """The URL without its query string (which often carries a signature or a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _filename(headers: Message, final_url: str, original_url: str) -> str | None:
    """From Content-Disposition (RFC 6266, ``filename*`` first), then the URLs' last path segment."""
    disposition = headers.get("Content-Disposition")
    if disposition:
        message = Message()
        message["Content-Disposition"] = disposition
        name = message.get_filename()
        if name:
            return PurePosixPath(name.replace("\\", "/")).name or None
    for url in (final_url, original_url):
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        if "." in name:
            return name
    return None
