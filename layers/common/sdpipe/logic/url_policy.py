"""Which URLs and addresses a model fetch may connect to (the SSRF rules, DESIGN §7).

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
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


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
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
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
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRejected("the URL has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


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


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(int(address))
    return None


def forbidden_reason(address: IPAddress, policy: UrlPolicy) -> str | None:
    """Why sdpipe must not connect to ``address``; None when it may."""
    if address in METADATA_ADDRESSES:
        return "a cloud instance-metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) IPv6 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = forbidden_reason(embedded, policy)
            return f"an IPv6 address embedding {embedded}, {reason}" if reason else None
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
