"""URL fetching under attack: hosts that break IDNA, servers that drip, tunnels to the metadata
address, credentials that follow redirects. Every case ends in the project's own error, in time."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdpipe.adapters.http_source import HttpSource
from sdpipe.errors import ForbiddenAddress, SourceFailed, UrlRejected
from sdpipe.logic.url_policy import (
    METADATA_ADDRESSES,
    UrlPolicy,
    check_url,
    embedded_ipv4,
    forbidden_reason,
    literal_address,
)

LOCAL = UrlPolicy(allowed_schemes=frozenset({"http"}), allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
IPV6_ALLOWED = UrlPolicy(allowed_networks=(ipaddress.ip_network("::/0"),))
EVERYTHING = UrlPolicy(allowed_networks=(ipaddress.ip_network("::/0"), ipaddress.ip_network("0.0.0.0/0")))


@contextlib.contextmanager
def raw_server(handle: Callable[[socket.socket, bytes], None]) -> Iterator[int]:
    """A one-thread-per-connection TCP server on 127.0.0.1; ``handle`` gets the request head."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()

    def _handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            with contextlib.suppress(OSError):
                handle(conn, head)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def drip(data: bytes, every: float) -> Callable[[socket.socket, bytes], None]:
    def handle(conn: socket.socket, _head: bytes) -> None:
        for byte in data:
            conn.sendall(bytes([byte]))
            time.sleep(every)

    return handle


def test_a_server_trickling_its_headers_is_cut_off_at_the_request_deadline():
    headers = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
    with raw_server(drip(headers, 0.05)) as port:
        source = HttpSource(LOCAL, timeout=5, deadline_seconds=1.0)
        started = time.monotonic()
        with pytest.raises(SourceFailed, match="deadline"):
            source.open(f"http://127.0.0.1:{port}/model.safetensors")
        assert time.monotonic() - started < 3


def test_a_body_dripping_below_the_minimum_rate_fails():
    def handle(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"x")
            time.sleep(0.01)

    with raw_server(handle) as port:
        source = HttpSource(LOCAL, timeout=5, min_bytes_per_second=10_000, rate_grace_seconds=0.5)
        opened = source.open(f"http://127.0.0.1:{port}/model.safetensors")
        started = time.monotonic()
        with pytest.raises(SourceFailed, match="below the minimum"):
            for _chunk in opened.iter_chunks(limit=100_000):
                pass
        opened.close()
        assert time.monotonic() - started < 3


def test_a_body_that_outlives_the_deadline_fails_even_at_a_good_rate():
    def handle(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        while True:
            conn.sendall(b"x" * 65536)
            time.sleep(0.01)

    with raw_server(handle) as port:
        source = HttpSource(LOCAL, timeout=5, deadline_seconds=1.0)
        opened = source.open(f"http://127.0.0.1:{port}/model.safetensors")
        with pytest.raises(SourceFailed, match="deadline"):
            for _chunk in opened.iter_chunks(limit=100_000_000):
                pass
        opened.close()


@pytest.mark.parametrize("target", ["other-port", "other-scheme-port"])
def test_credentials_follow_only_an_identical_origin(target):
    seen: list[bytes] = []

    def final(conn: socket.socket, head: bytes) -> None:
        seen.append(head)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(final) as final_port:
        location = f"http://127.0.0.1:{final_port}/b"

        def redirect(conn: socket.socket, head: bytes) -> None:
            seen.append(head)
            conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())

        with raw_server(redirect) as first_port:
            source = HttpSource(LOCAL, timeout=5, auth_header=("Authorization", "Bearer secret"))
            opened = source.open(f"http://127.0.0.1:{first_port}/a")
            opened.close()
    assert b"Bearer secret" in seen[0]
    assert b"Bearer secret" not in seen[1]


def test_credentials_do_follow_a_redirect_within_the_origin():
    seen: list[bytes] = []

    def handle(conn: socket.socket, head: bytes) -> None:
        seen.append(head)
        if head.startswith(b"GET /a"):
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(handle) as port:
        source = HttpSource(LOCAL, timeout=5, auth_header=("Authorization", "Bearer secret"))
        source.open(f"http://127.0.0.1:{port}/a").close()
    assert all(b"Bearer secret" in head for head in seen) and len(seen) == 2


@pytest.mark.parametrize(
    "host",
    [
        "a..b.example",
        "x" * 64 + ".example",
        "ex\u2028ample.com",
        "ex\u0085ample.com",
        "ex\u3000ample.com",
        ".",
        "-" * 300,
    ],
)
def test_hosts_that_break_idna_are_refused_by_name(host):
    with pytest.raises(UrlRejected):
        check_url(f"https://{host}/model.safetensors", UrlPolicy())


def test_international_hosts_are_encoded_for_dns_and_tls():
    assert check_url("https://bücher.example/m.safetensors", UrlPolicy()).host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64, /96 layout
        "64:ff9b:1:a9fe:a9:fe00::",  # local-use NAT64, /48 layout (u octet skipped)
        "64:ff9b:1:00a9:00fe:a9fe::",  # /56 layout
        "64:ff9b:1:0:a9:fea9:fe00:0",  # /64 layout
        "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo client 169.254.169.254 (obfuscated)
        "2001:0:a9fe:a9fe::1",  # Teredo server 169.254.169.254
        "::5efe:a9fe:a9fe",  # ISATAP
        "::ffff:169.254.169.254",
        "2002:a9fe:a9fe::1",
        "64:ff9b::169.254.169.254",
    ],
)
def test_the_metadata_address_is_unreachable_through_any_ipv6_tunnel_even_when_all_is_allowed(address):
    reason = forbidden_reason(ipaddress.ip_address(address), EVERYTHING)
    assert reason is not None and "169.254.169.254" in reason


@settings(max_examples=500, deadline=None)
@given(url=st.text(max_size=200))
def test_any_string_is_a_target_or_url_rejected(url):
    try:
        target = check_url(url, UrlPolicy())
    except UrlRejected:
        return
    assert target.host.isascii() and target.host


@settings(max_examples=500, deadline=None)
@given(host=st.text(max_size=80))
def test_any_host_is_a_target_or_url_rejected(host):
    with contextlib.suppress(UrlRejected):
        check_url(f"https://{host}/m.safetensors", UrlPolicy())


@settings(max_examples=1000, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**128 - 1))
def test_an_allowed_ipv6_address_never_carries_a_forbidden_ipv4(value):
    address = ipaddress.IPv6Address(value)
    if forbidden_reason(address, IPV6_ALLOWED) is None:
        for embedded in embedded_ipv4(address):
            assert forbidden_reason(embedded, IPV6_ALLOWED) is None
    if forbidden_reason(address, EVERYTHING) is None:
        assert not set(embedded_ipv4(address)) & METADATA_ADDRESSES


@settings(max_examples=500, deadline=None)
@given(host=st.text(alphabet="0123456789abcdefxABCDEFX.:[]%", max_size=40))
def test_literal_addresses_parse_or_are_none_never_crash(host):
    literal_address(host)


def test_a_name_resolving_to_a_tunnel_is_refused():
    source = HttpSource(EVERYTHING, resolver=lambda host, port: [ipaddress.ip_address("64:ff9b:1::a9fe:a9fe")])
    with pytest.raises(ForbiddenAddress, match=r"169\.254\.169\.254"):
        source.open("https://tunnel.example/m.safetensors")
