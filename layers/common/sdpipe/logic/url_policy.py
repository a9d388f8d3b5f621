"""Which URLs and addresses a model fetch may connect to (the SSRF rules).

Pure checks, no I/O: the fetcher resolves a host once, checks every address it got here, and
connects only to an address that passed (so DNS rebinding between check and connect cannot
redirect it). Redirect targets go through the same checks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdpipe.errors import ForbiddenAddress, UrlRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never reachable, whatever a deployment allows: the instance-metadata services of the clouds.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
# Special-purpose ranges that ``ipaddress``' flags miss on some Python versions.
_EXTRA_FORBIDDEN = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/3",  # multicast, reserved, broadcast
        "64:ff9b:1::/48",  # local-use NAT64
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHIDs, ...)
        "2001:db8::/32",  # documentation
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: an operator picks any RFC 6052 prefix length inside it, so
# the IPv4 address can sit at any of the RFC 6052 positions (bits 48-63+72-87, 56-63+72-95,
# 72-103, 96-127); every one is checked.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_TEREDO = ipaddress.ip_network("2001::/32")
_HOST_LABEL_MAX = 63


@dataclass(frozen=True)
class UrlPolicy:
    allowed_schemes: frozenset[str] = frozenset({"https", "http"})
    # Explicit exemptions (the local stack's 127.0.0.1/32); metadata addresses are never exempt.
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_redirects: int = 5

    @classmethod
    def from_strings(cls, schemes: str, networks: str, max_redirects: int) -> UrlPolicy:
        """From comma-separated settings, e.g. ``"https,http"`` and ``"127.0.0.1/32"``."""
        try:
            allowed = tuple(ipaddress.ip_network(n.strip()) for n in networks.split(",") if n.strip())
        except ValueError as exc:
            raise ValueError(f"allowed fetch networks: {exc}") from None
        return cls(
            allowed_schemes=frozenset(s.strip().lower() for s in schemes.split(",") if s.strip()),
            allowed_networks=allowed,
            max_redirects=max_redirects,
        )


@dataclass(frozen=True)
class Target:
    """A URL that passed the syntactic checks: where to connect and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def check_url(url: str, policy: UrlPolicy) -> Target:
    """The parts of ``url`` if its form is acceptable; ``UrlRejected`` naming the problem otherwise."""
    if len(url) > 4096:
        raise UrlRejected("the URL is longer than 4096 characters")
    # Unicode has whitespace and separators beyond ASCII (U+0085, U+2028, U+3000, ...) that
    # resolvers and proxies split on; none belongs in a URL.
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c.isspace() or not c.isprintable() for c in url):
        raise UrlRejected("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRejected(f"the URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes))
        raise UrlRejected(f"scheme {scheme or '(none)'!r} is not allowed (allowed: {allowed})")
    if parts.username is not None or parts.password is not None:
        raise UrlRejected("credentials in the URL are not accepted; name a Secrets Manager secret in auth_secret")
    host = _ascii_host((parts.hostname or "").rstrip("."))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


def _ascii_host(host: str) -> str:
    """The host as DNS and TLS see it: an IP literal, or IDNA-encoded labels of 1-63 characters."""
    if not host:
        raise UrlRejected("the URL has no host")
    if literal_address(host) is not None:
        return host
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRejected(f"host {host[:300]!r} is not a valid domain name: {exc}") from None
    labels = encoded.split(".")
    if any(not label or len(label) > _HOST_LABEL_MAX for label in labels) or len(encoded) > 253:
        raise UrlRejected(f"host {host[:300]!r} is not a valid domain name (empty or over-long label)")
    return encoded.lower()


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling the C resolver accepts.

    ``127.1``, ``2130706433``, ``0x7f.0.0.1`` and ``0177.0.0.1`` all mean 127.0.0.1 to
    ``getaddrinfo``; they must mean it to the checks too.
    """
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    if all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address may carry, for each translation that could apply.

    IPv4-mapped and -compatible, 6to4, well-known and local-use NAT64 (every RFC 6052 layout),
    Teredo (server and de-obfuscated client) and ISATAP interface identifiers.
    """
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address in _LOCAL_NAT64:
        found.extend(ipaddress.IPv4Address(bits) for bits in _rfc6052_candidates(value))
    if address in _TEREDO and address.teredo is not None:
        found.extend(address.teredo)
    if (value >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP: ::0:5efe:a.b.c.d / ::200:5efe:a.b.c.d
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        found.append(ipaddress.IPv4Address(value))
    return list(dict.fromkeys(found))


def _rfc6052_candidates(value: int) -> list[int]:
    """The IPv4 bits at each RFC 6052 position (prefix /48, /56, /64, /96); bits 64-71 are the u octet."""
    bits = f"{value:0128b}"
    layouts = ((48, 64, 72, 88), (56, 64, 72, 96), (72, 104, 104, 104), (96, 128, 128, 128))
    return [int(bits[a:b] + bits[c:d], 2) for a, b, c, d in layouts]


def forbidden_reason(address: IPAddress, policy: UrlPolicy) -> str | None:
    """Why sdpipe must not connect to ``address``; None when it may."""
    if address in METADATA_ADDRESSES:
        return "a cloud instance-metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) IPv6 address"
        # Checked before the allow-list: an allowed IPv6 range must not be a tunnel to a
        # forbidden IPv4 address (a broad allow-list reaching 169.254.169.254 through NAT64).
        for embedded in embedded_ipv4(address):
            reason = forbidden_reason(embedded, policy)
            if reason:
                return f"an IPv6 address embedding {embedded}, {reason}"
    if any(address in network for network in policy.allowed_networks):
        return None
    for flag in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{flag}"):
            return f"a {flag.replace('_', '-')} address"
    if any(address.version == n.version and address in n for n in _EXTRA_FORBIDDEN):
        return "a special-purpose address"
    if not address.is_global:
        return "not a public address"
    return None


def check_addresses(host: str, addresses: Iterable[IPAddress], policy: UrlPolicy) -> IPAddress:
    """The address to connect to, if every address ``host`` resolved to is allowed.

    All of them are checked, not just the first: a name that resolves to one public and one
    private address is refused whatever order the resolver returns them in.
    """
    found = list(dict.fromkeys(addresses))
    if not found:
        raise UrlRejected(f"host {host!r} did not resolve to any address")
    for address in found:
        reason = forbidden_reason(address, policy)
        if reason:
            raise ForbiddenAddress(f"host {host!r} resolves to {address}, {reason}; sdpipe does not fetch from it")
    return found[0]
