"""SSRF protections of model fetching: no request ever reaches a forbidden address."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe.adapters.http_source import HttpSource, system_resolver
from sdpipe.errors import ForbiddenAddress, SourceFailed, SourceMisbehaved, SourceRefused, UrlRejected
from sdpipe.logic.url_policy import IPAddress, UrlPolicy, forbidden_reason, literal_address
from sdpipe_local.file_server import FileServer

PUBLIC = ipaddress.ip_address("93.184.216.34")
NAMES: dict[str, list[str]] = {
    "localhost": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "internal.example": ["10.0.0.1"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
    "v6local.example": ["::1"],
    "nip.example": ["192.168.1.1"],
}


class Recorder:
    """Resolver and connector for tests: names from NAMES, every connection attempt recorded."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self.connected: list[IPAddress] = []
        self.rebind_calls = 0

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        if host == "rebind.example":  # public when checked, loopback when asked again
            self.rebind_calls += 1
            return [PUBLIC] if self.rebind_calls == 1 else [ipaddress.ip_address("127.0.0.1")]
        if host in NAMES:
            return [ipaddress.ip_address(a) for a in NAMES[host]]
        return system_resolver(host, port)

    def connect(self, address: IPAddress, port: int, timeout: float) -> socket.socket:
        self.connected.append(address)
        if forbidden_reason(address, self.policy) is None and address != PUBLIC:
            return socket.create_connection((str(address), port), timeout=timeout)
        raise OSError(f"test network: {address} unreachable")

    def forbidden_connections(self) -> list[IPAddress]:
        strict = UrlPolicy()
        return [a for a in self.connected if forbidden_reason(a, strict) is not None and a not in _allowed(self.policy)]


def _allowed(policy: UrlPolicy) -> list[IPAddress]:
    return [a for a in map(ipaddress.ip_address, ["127.0.0.1"]) if any(a in n for n in policy.allowed_networks)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    root = tmp_path_factory.mktemp("files")
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    with FileServer(root) as running:
        yield running


def forbidden_urls(port: int) -> list[str]:
    p = port
    return [
        f"http://127.0.0.1:{p}/files/model.safetensors",
        f"http://127.1:{p}/files/model.safetensors",
        f"http://127.0.1:{p}/files/model.safetensors",
        f"http://2130706433:{p}/files/model.safetensors",
        f"http://0x7f000001:{p}/files/model.safetensors",
        f"http://0x7f.0x0.0x0.0x1:{p}/files/model.safetensors",
        f"http://0177.0.0.1:{p}/files/model.safetensors",
        f"http://017700000001:{p}/files/model.safetensors",
        f"http://127.000.000.001:{p}/files/model.safetensors",
        f"http://localhost:{p}/files/model.safetensors",
        f"http://LOCALHOST.:{p}/files/model.safetensors",
        f"http://[::1]:{p}/files/model.safetensors",
        f"http://[0:0:0:0:0:0:0:1]:{p}/files/model.safetensors",
        f"http://[::ffff:127.0.0.1]:{p}/files/model.safetensors",
        f"http://[::ffff:7f00:1]:{p}/files/model.safetensors",
        f"http://[64:ff9b::127.0.0.1]:{p}/files/model.safetensors",
        f"http://[2002:7f00:1::]:{p}/files/model.safetensors",
        f"http://[::127.0.0.1]:{p}/files/model.safetensors",
        f"http://0.0.0.0:{p}/files/model.safetensors",
        f"http://0:{p}/files/model.safetensors",
        f"http://[::]:{p}/files/model.safetensors",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.170.2/v2/credentials",
        "http://2852039166/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/opc/v1/instance/",
        "http://10.0.0.1/model.safetensors",
        "http://10.255.255.255/model.safetensors",
        "http://172.16.0.1/model.safetensors",
        "http://172.31.255.254/model.safetensors",
        "http://192.168.0.1/model.safetensors",
        "http://100.64.0.1/model.safetensors",
        "http://198.18.0.1/model.safetensors",
        "http://192.0.2.1/model.safetensors",
        "http://224.0.0.1/model.safetensors",
        "http://239.255.255.250/model.safetensors",
        "http://240.0.0.1/model.safetensors",
        "http://255.255.255.255/model.safetensors",
        "http://[fe80::1]/model.safetensors",
        "http://[fe80::1%25eth0]/model.safetensors",
        "http://[fc00::1]/model.safetensors",
        "http://[fd12:3456::1]/model.safetensors",
        "http://[ff02::1]/model.safetensors",
        "http://[2001:db8::1]/model.safetensors",
        "http://[fec0::1]/model.safetensors",
        "http://internal.example/model.safetensors",
        "http://nip.example/model.safetensors",
        "http://v6local.example/model.safetensors",
        "http://mixed.example/model.safetensors",
        "file:///etc/passwd",
        f"ftp://127.0.0.1:{p}/model.safetensors",
        f"gopher://127.0.0.1:{p}/_GET",
        "dict://127.0.0.1:11211/stat",
        "http://user:pass@example.com/model.safetensors",
        f"http://example.com@127.0.0.1:{p}/files/model.safetensors",
        "//127.0.0.1/model.safetensors",
        "http:///model.safetensors",
        f"http://127.0.0.1:{p}/files/model.safetensors\r\nX-Injected: 1",
    ]


def test_ssrf_set_makes_zero_requests_to_forbidden_addresses(server: FileServer) -> None:
    policy = UrlPolicy()
    recorder = Recorder(policy)
    source = HttpSource(policy, timeout=2, resolver=recorder.resolve, connector=recorder.connect)
    urls = forbidden_urls(server.port)
    assert len(urls) >= 50
    for url in urls:
        with pytest.raises(UrlRejected) as caught:
            source.probe(url)
        assert caught.value.message, url
    assert server.total_hits() == 0
    assert recorder.connected == []


def test_redirects_to_forbidden_addresses_are_refused_before_connecting(server: FileServer) -> None:
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    recorder = Recorder(policy)
    source = HttpSource(policy, timeout=2, resolver=recorder.resolve, connector=recorder.connect)
    targets = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.0.0.1/x.safetensors",
        "http://metadata.google.internal/",
        f"http://[::1]:{server.port}/files/model.safetensors",  # only 127.0.0.1/32 is allowed
        "file:///etc/passwd",
    ]
    for target in targets:
        with pytest.raises(UrlRejected):
            source.probe(server.url(f"/redirect-to?url={target}"))
    assert recorder.forbidden_connections() == []
    assert all(str(a) == "127.0.0.1" for a in recorder.connected)


def test_allowed_network_never_exempts_metadata_addresses() -> None:
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("169.254.0.0/16"),))
    assert forbidden_reason(ipaddress.ip_address("169.254.169.254"), policy) == "a cloud instance-metadata address"
    assert forbidden_reason(ipaddress.ip_address("169.254.1.1"), policy) is None


def test_dns_rebinding_cannot_move_the_connection() -> None:
    """The host is resolved once; the connection goes to the address that was checked."""
    policy = UrlPolicy()
    recorder = Recorder(policy)
    source = HttpSource(policy, timeout=2, resolver=recorder.resolve, connector=recorder.connect)
    with pytest.raises(SourceFailed):  # the public address is unreachable in tests
        source.probe("http://rebind.example/model.safetensors")
    assert recorder.rebind_calls == 1
    assert recorder.connected == [PUBLIC]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("example.com", None),
    ],
)
def test_literal_spellings(host: str, expected: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == expected


def test_allowed_fetch_follows_redirects_and_reads_name_size_and_ranges(server: FileServer) -> None:
    source = HttpSource(UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),)), timeout=5)
    probe = source.probe(server.url("/download/model.safetensors"))
    assert (probe.filename, probe.size, probe.ranges) == ("model.safetensors", 10240, True)
    assert "sig=secret" in probe.url
    plain = source.probe(server.url("/norange/model.safetensors"))
    assert (plain.size, plain.ranges) == (10240, False)
    with pytest.raises(UrlRejected, match="more than 5 redirects"):
        source.probe(server.url("/redirect/6/model.safetensors"))
    assert source.probe(server.url("/redirect/5/model.safetensors")).size == 10240
    with pytest.raises(SourceRefused, match="404"):
        source.probe(server.url("/files/missing.safetensors"))


def test_a_server_sending_more_than_it_announced_is_caught(server: FileServer, tmp_path: Path) -> None:
    source = HttpSource(UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),)), timeout=5)
    opened = source.open(server.url("/files/model.safetensors"), byte_range=(0, 2047))
    with pytest.raises(SourceMisbehaved):
        for _ in opened.iter_chunks(limit=1000):
            pass
    opened.close()


def test_scheme_policy_is_configurable() -> None:
    policy = UrlPolicy.from_strings("https", "", 3)
    with pytest.raises(UrlRejected, match="scheme 'http' is not allowed"):
        HttpSource(policy).probe("http://example.com/a.safetensors")
    with pytest.raises(ForbiddenAddress):
        HttpSource(policy).probe("https://[::1]/a.safetensors")
