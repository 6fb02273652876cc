"""Checks every request message gets before a handler sees it, whatever the service: one that
could not be parsed at all (invalid UTF-8 in a string, broken wire format) and text that no
store can hold (NUL characters) are refused with INVALID_ARGUMENT, naming no internals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from foretell.errors import FieldViolation, InvalidArgument, Violations

_UNPARSABLE_MESSAGE = "the request could not be parsed: it is not a valid message of this call"
_NUL = "\x00"


class Unparsable:
    """Stands in for a request message that did not parse (grpc would answer UNKNOWN with the
    parser's text otherwise)."""


UNPARSABLE = Unparsable()


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering UNPARSABLE instead of raising."""
    if deserializer is None:
        return None
    parse = deserializer

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - any parser failure is the client's bad bytes
            return UNPARSABLE

    return parse_or_mark


def _text_fields(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    """(field path, text) of every string in `message`, nested messages and maps included."""
    for field, value in message.ListFields():
        path = prefix + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                at = f"{path}[{key!r}]" if isinstance(key, str) and _NUL not in key else path
                if isinstance(key, str):
                    yield path, key
                if value_field.type == FieldDescriptor.TYPE_STRING:
                    yield at, item
                elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from _text_fields(item, at + ".")
        elif field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    yield f"{path}[{i}]", item
            else:
                yield path, value
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for i, item in enumerate(value):
                    yield from _text_fields(item, f"{path}[{i}].")
            else:
                yield from _text_fields(value, path + ".")


def check_request(request: object) -> None:
    """Raises InvalidArgument for a request that did not parse or holds a NUL character."""
    if isinstance(request, Unparsable):
        raise InvalidArgument(
            [FieldViolation("request", "not a valid message")], _UNPARSABLE_MESSAGE
        )
    if not isinstance(request, Message):
        return
    v = Violations()
    for path, text in _text_fields(request, ""):
        if _NUL in text:
            v.add(path, "must not contain NUL characters")
    v.raise_if_any()


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The messages of a client stream, each checked by `check_request` as it arrives."""
    async for request in requests:
        check_request(request)
        yield request
