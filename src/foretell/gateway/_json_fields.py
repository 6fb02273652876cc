"""The Lua filter that refuses unknown fields in REST (JSON) bodies, with the tables it needs
read from the contracts: each HTTP rule with a body (method, path pattern, body message) and,
per message, its fields under both JSON and proto names (the transcoder accepts either)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from foretell._assets import asset_path

_SCRIPT = "envoy/unknown_fields.lua"
_VERBS = ("get", "put", "post", "delete", "patch")
# Messages the JSON mapping writes as something other than an object of their fields (a
# string, a number, free-form JSON): their values are not looked into.
_OPAQUE_PACKAGE = "google.protobuf"


def _lua(value: str) -> str:
    # A JSON string literal is a valid Lua string literal for these (ASCII, escapes \" \\).
    return json.dumps(value)


def _path_pattern(template: str) -> str:
    """A Lua pattern matching the paths of a `google.api.http` template."""
    out = []
    for part in re.split(r"(\{[^}]*\})", template):
        if part.startswith("{"):
            out.append("[^/]+")
        else:
            out.append(re.sub(r"([^A-Za-z0-9/])", r"%\1", part))
    return "^" + "".join(out) + "$"


def _rules(methods: Iterable[MethodDescriptor]) -> list[tuple[str, str, Descriptor]]:
    rules = []
    for method in methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        for binding in (rule, *rule.additional_bindings):
            verb = binding.WhichOneof("pattern")
            if verb not in _VERBS or not binding.body:
                continue
            message = method.input_type
            if binding.body != "*":
                field_type = message.fields_by_name[binding.body].message_type
                if field_type is None:
                    continue
                message = field_type
            template = getattr(binding, verb)
            rules.append((verb.upper(), _path_pattern(template), message))
    return rules


def _is_opaque(message: Descriptor) -> bool:
    return message.full_name.startswith(_OPAQUE_PACKAGE) or message.GetOptions().map_entry


def _messages(roots: Iterable[Descriptor]) -> dict[str, dict[str, str | bool]]:
    schema: dict[str, dict[str, str | bool]] = {}
    pending = list(roots)
    while pending:
        message = pending.pop()
        if message.full_name in schema:
            continue
        fields: dict[str, str | bool] = {}
        for field in message.fields:
            child = field.message_type
            kind: str | bool = True
            if field.type == FieldDescriptor.TYPE_MESSAGE and child and not _is_opaque(child):
                kind = child.full_name
                pending.append(child)
            fields[field.json_name] = fields[field.name] = kind
        schema[message.full_name] = fields
    return schema


def unknown_fields_filter(methods: Iterable[MethodDescriptor]) -> str:
    """The Lua source of the filter for the HTTP rules of `methods`."""
    rules = _rules(methods)
    schema = _messages(message for _, _, message in rules)
    lines = ["RULES = {"]
    lines += [f"  {{{_lua(verb)}, {_lua(p)}, {_lua(m.full_name)}}}," for verb, p, m in rules]
    lines += ["}", "MESSAGES = {"]
    for name, fields in sorted(schema.items()):
        entries = ", ".join(
            f"[{_lua(field)}] = {'true' if kind is True else _lua(str(kind))}"
            for field, kind in sorted(fields.items())
        )
        lines.append(f"  [{_lua(name)}] = {{{entries}}},")
    lines.append("}")
    return "\n".join(lines) + "\n" + asset_path(_SCRIPT).read_text()
