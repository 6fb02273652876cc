"""Where a webhook may go: https URLs whose host resolves only to public addresses.

A subscriber's URL is checked when it is registered and again before every POST, and the POST
connects to the very address that was checked (never resolving the name a second time), so a
name that resolves to a public address at registration and to 127.0.0.1 later (DNS rebinding)
reaches nothing inside. FORETELL_WEBHOOKS_ALLOW_PRIVATE=on lifts the address rule and allows
plain http, for tests and closed networks."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
# How long a name may take to resolve. Bounded so a delivery stays within its lease (the POST's
# time limit and 30 s, foretell.webhooks._deliver.claim) however slow the subscriber's DNS is,
# and a registration does not hang on it.
RESOLVE_S = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointRefused(Exception):
    """The URL or the address it resolves to is not one the platform sends to; the message says
    why, for the subscriber."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    # The path and query, as sent on the request line.
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str, *, allow_private: bool) -> Target:
    """The URL's parts, or EndpointRefused when it is not an absolute http(s) URL we accept."""
    if len(url) > MAX_URL_CHARS:
        raise EndpointRefused(f"at most {MAX_URL_CHARS} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url) or not url.isascii():
        raise EndpointRefused("no spaces, control or non-ASCII characters (percent-encode them)")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced or invalid [IPv6] host
        raise EndpointRefused("not a valid URL (an IPv6 host goes between [ and ])") from None
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise EndpointRefused("an https:// URL" if not allow_private else "an http(s):// URL")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("no user name or password in the URL")
    if parts.fragment:
        raise EndpointRefused("no #fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointRefused("the port is not a number from 1 to 65535") from None
    host = (parts.hostname or "").rstrip(".")
    if not host or port == 0:
        raise EndpointRefused("a host name and a port from 1 to 65535")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, parts.scheme, host, port, path)


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, or 6to4's 2002::/16, which Python
        # counts global) is judged by the IPv4 address it reaches.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return _public(embedded)
        # fec0::/10, deprecated but still routed inside some networks; Python counts it global.
        if address.is_site_local:
            return False
    # is_global alone lets multicast through (224.0.0.0/4 is "global"), hence the others.
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_address(address: IPAddress, *, allow_private: bool) -> None:
    # The message does not name the address: what a name resolves to inside the platform's
    # network is not the subscriber's to learn.
    if not allow_private and not _public(address):
        raise EndpointRefused(
            "resolves to a loopback, private, link-local, multicast or reserved address: "
            "the platform sends webhooks to public addresses only"
        )


async def resolve(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to, every one of them checked: a name with any address the
    platform does not send to is refused as a whole (an attacker's name may list a public
    address first and a private one second)."""
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_S):
                infos = await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:  # before OSError, of which it is one
            raise EndpointRefused(
                f"the host {target.host!r} did not resolve within {RESOLVE_S:g} s"
            ) from None
        except (OSError, UnicodeError):
            raise EndpointRefused(f"the host {target.host!r} does not resolve") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise EndpointRefused(f"the host {target.host!r} does not resolve")
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return addresses
