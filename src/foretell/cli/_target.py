"""Where Foretell is: the `--url` option and its normalised form, which keys stored credentials.

Client side only, like every module of the client (see `_client.py`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import click

from foretell.cli._exit import CliError, Exit

DEFAULT_URL = "localhost:8080"

url_option = click.option(
    "--url",
    envvar="FORETELL_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Foretell gateway: host:port, http://host:port or https://host (env FORETELL_URL).",
)


@dataclass(frozen=True)
class Target:
    """Where Foretell's gateway is. `url` is normalised and keys the stored credentials."""

    url: str
    address: str
    tls: bool


def parse_target(raw: str) -> Target:
    """Accepts `host:port`, `http://host[:port]` or `https://host[:port]`.

    A missing port means 8080 (Foretell's gateway) in plain text and 443 with TLS.
    """
    text = raw.strip()
    parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise CliError(
            f"bad Foretell URL {raw!r}: use host:port, http://host:port or https://host[:port]",
            Exit.USAGE,
        )
    tls = parts.scheme == "https"
    port = port or (443 if tls else 8080)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(url=f"{parts.scheme}://{host}:{port}", address=f"{host}:{port}", tls=tls)
