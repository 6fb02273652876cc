"""How client commands print: the `--json` option, JSON documents, plain tables, and the short
forms of times and enum names that tables use.

Client side only, like every module of the client (see `_client.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import click
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout and nothing else."
)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as proto3 JSON (lowerCamelCase names), the same shape the REST API returns."""
    return json_format.MessageToDict(message)


def echo_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def short_time(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as tables show it: `2026-11-02 09:00Z`, or `-` when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%MZ")


def enum_label(name: str, prefix: str) -> str:
    """`ROLE_PROVIDER` -> `provider`: enum names as people say them."""
    return name.removeprefix(prefix).lower()
