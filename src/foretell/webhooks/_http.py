"""One POST to a checked address: HTTP/1.1 over a connection this module opens to the IP
address given (TLS verified against the URL's host name), so what was checked is what is
reached. Redirects are not followed (a 3xx is a failed attempt)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

from foretell.webhooks._address import IPAddress, Target

USER_AGENT = "Foretell-Webhooks/1"


class SendFailed(Exception):
    """No HTTP status came back; the message says why, for the delivery log."""


def _request(target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"User-Agent: {USER_AGENT}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(
    target: Target, address: IPAddress, request: bytes, tls: ssl.SSLContext | None
) -> int:
    reader, writer = await asyncio.open_connection(
        str(address),
        target.port,
        ssl=tls,
        server_hostname=target.host if tls is not None else None,
    )
    try:
        writer.write(request)
        await writer.drain()
        # A status line longer than the reader's limit raises ValueError: not HTTP either.
        status_line = await reader.readline()
    except ValueError:
        raise SendFailed("the endpoint did not answer HTTP") from None
    finally:
        writer.close()
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise SendFailed("the endpoint did not answer HTTP")
    return int(parts[1])


async def post(
    target: Target,
    addresses: list[IPAddress],
    headers: Mapping[str, str],
    body: bytes,
    timeout_s: float,
    trust: ssl.SSLContext | None = None,
) -> int:
    """The status code the endpoint answered, trying each address in turn; SendFailed when
    none answered within `timeout_s` in all. https is verified against the URL's host name
    (not the address) with `trust`, by default the system's certificate authorities."""
    tls = (trust or ssl.create_default_context()) if target.scheme == "https" else None
    request = _request(target, headers, body)
    reason = "no address to connect to"
    try:
        async with asyncio.timeout(timeout_s):
            for address in addresses:
                try:
                    return await _exchange(target, address, request, tls)
                except ssl.SSLError as error:
                    reason = f"TLS failed: {error.reason or error}"
                except OSError as error:
                    reason = f"could not connect: {error.strerror or error}"
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    raise SendFailed(reason)
