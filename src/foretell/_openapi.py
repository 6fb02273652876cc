"""Writes the OpenAPI 3.1 document of the REST API from the descriptor set Envoy's transcoder
loads: the `google.api.http` annotations give the operations, and the schemas follow the
transcoder's proto3 JSON mapping (lowerCamelCase `json_name`s, 64-bit integers as strings, enums
by name, Timestamps as RFC 3339, Durations as "1.5s", fields at their default value left out of
responses, errors as `google.rpc.Status` with `Any` details). Who may call what (the security of
each operation) comes from the same policy table the services enforce.

No installable package does this without a Go binary (grpc-gateway's protoc-gen-openapiv2 writes
2.0 anyway), hence this module. Called by `foretell._gen`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2

from foretell.auth.policy import POLICY, Policy

_F = descriptor_pb2.FieldDescriptorProto
_Field = descriptor_pb2.FieldDescriptorProto
_Message = descriptor_pb2.DescriptorProto
_Paths = Iterator[tuple[tuple[int, ...], str]]
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_INT64 = {_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64}
_UINT64 = {_F.TYPE_UINT64, _F.TYPE_FIXED64}
_INT32 = {_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32}
_UINT32 = {_F.TYPE_UINT32, _F.TYPE_FIXED32}
# Well-known types have their own JSON form: a leaf, not an object.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 time in UTC, e.g. 2024-05-01T12:00:00Z.",
    },
    ".google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with an "s" suffix, e.g. "1.5s".',
    },
    ".google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated lowerCamelCase field paths, e.g. "title,description".',
    },
}
_STATUS = ".google.rpc.Status"
_ANY = ".google.protobuf.Any"
# Details the services attach to errors (foretell.runtime._status); the Any's "@type" tells.
_ERROR_DETAILS = (".google.rpc.ErrorInfo", ".google.rpc.BadRequest", ".google.rpc.RetryInfo")
_SECURITY_SCHEMES = {
    "accessToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from `POST /v1/auth:login` or `POST /v1/auth:refresh`.",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `POST /v1/users/me/apiKeys` (read operations only).",
    },
}


def _schema_name(full_name: str) -> str:
    """Component name of a message or enum: its full name without the leading dot and, for
    ours, without the `foretell.` prefix (`account.v1.User`)."""
    return full_name.lstrip(".").removeprefix("foretell.")


def _ref(full_name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{_schema_name(full_name)}"}


@dataclass
class _Comments:
    """Leading comments of every element, by full name (`.pkg.Message.field`)."""

    by_name: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, files: descriptor_pb2.FileDescriptorSet) -> _Comments:
        comments = cls()
        for file in files.file:
            names = dict(_element_paths(file))
            for location in file.source_code_info.location:
                name = names.get(tuple(location.path))
                text = location.leading_comments.strip()
                if name and text:
                    comments.by_name[name] = " ".join(
                        line.strip() for line in text.splitlines()
                    ).replace("  ", " ")
        return comments

    def get(self, name: str) -> str | None:
        return self.by_name.get(name)


def _element_paths(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source-info path, full name) of each message, field, enum, value, service, method."""
    prefix = f".{file.package}"

    def messages(
        items: Any, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, message in enumerate(items):
            name = f"{scope}.{message.name}"
            here = (*path, i)
            yield here, name
            for j, fld in enumerate(message.field):
                yield (*here, 2, j), f"{name}.{fld.name}"
            yield from messages(message.nested_type, (*here, 3), name)
            yield from enums(message.enum_type, (*here, 4), name)

    def enums(
        items: Any, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, enum in enumerate(items):
            name = f"{scope}.{enum.name}"
            yield (*path, i), name
            for j, value in enumerate(enum.value):
                yield (*path, i, 2, j), f"{name}.{value.name}"

    yield from messages(file.message_type, (4,), prefix)
    yield from enums(file.enum_type, (5,), prefix)
    for i, service in enumerate(file.service):
        yield (6, i), f"{prefix}.{service.name}"
        for j, method in enumerate(service.method):
            yield (6, i, 2, j), f"{prefix}.{service.name}.{method.name}"


class _Builder:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet, comments: _Comments) -> None:
        self.files = files
        self.comments = comments
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        for file in files.file:
            self._index(f".{file.package}", file.message_type, file.enum_type)
        self.schemas: dict[str, dict[str, Any]] = {}

    def _index(self, scope: str, messages: Any, enums: Any) -> None:
        for enum in enums:
            self.enums[f"{scope}.{enum.name}"] = enum
        for message in messages:
            name = f"{scope}.{message.name}"
            self.messages[name] = message
            self._index(name, message.nested_type, message.enum_type)

    # Schemas -------------------------------------------------------------------------------

    def _described(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        text = self.comments.get(name)
        return {**schema, "description": text} if text else schema

    def field_schema(self, fld: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        """The JSON schema of one value of the field (not the repetition)."""
        kind = fld.type
        if kind == _F.TYPE_MESSAGE:
            if fld.type_name in _WELL_KNOWN:
                return dict(_WELL_KNOWN[fld.type_name])
            self.message_schema(fld.type_name)
            return _ref(fld.type_name)
        if kind == _F.TYPE_ENUM:
            self.enum_schema(fld.type_name)
            return _ref(fld.type_name)
        if kind in _INT64:
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
        if kind in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "uint32", "minimum": 0}
        if kind == _F.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if kind == _F.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if kind == _F.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _F.TYPE_BYTES:
            return {"type": "string", "format": "byte", "contentEncoding": "base64"}
        return {"type": "string"}

    def _map_entry(
        self, fld: descriptor_pb2.FieldDescriptorProto
    ) -> descriptor_pb2.DescriptorProto | None:
        if fld.type != _F.TYPE_MESSAGE or fld.label != _F.LABEL_REPEATED:
            return None
        entry = self.messages.get(fld.type_name)
        return entry if entry is not None and entry.options.map_entry else None

    def property_schema(
        self, owner: str, fld: descriptor_pb2.FieldDescriptorProto
    ) -> dict[str, Any]:
        entry = self._map_entry(fld)
        if entry is not None:
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.field_schema(entry.field[1]),
            }
        elif fld.label == _F.LABEL_REPEATED:
            schema = {"type": "array", "items": self.field_schema(fld)}
        else:
            schema = self.field_schema(fld)
        behaviors = set(fld.options.Extensions[field_behavior_pb2.field_behavior])
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        text = self.comments.get(f"{owner}.{fld.name}")
        if text:
            # A $ref with siblings is fine in 3.1; the description is the field's own.
            schema["description"] = text
        return schema

    def object_schema(
        self, full_name: str, skip: frozenset[str] = frozenset(), *, requests: bool = False
    ) -> dict[str, Any]:
        message = self.messages[full_name]
        properties = {
            fld.json_name: self.property_schema(full_name, fld)
            for fld in message.field
            if fld.name not in skip
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        required = [
            fld.json_name
            for fld in message.field
            if fld.name not in skip
            and field_behavior_pb2.REQUIRED
            in fld.options.Extensions[field_behavior_pb2.field_behavior]
        ]
        if requests and required:
            schema["required"] = required
        return self._described(schema, full_name)

    def message_schema(self, full_name: str) -> None:
        name = _schema_name(full_name)
        if name in self.schemas:
            return
        if full_name == _ANY:
            self.schemas[name] = self._any_schema()
            return
        self.schemas[name] = {}  # placeholder: recursive messages refer to it
        self.schemas[name] = self.object_schema(full_name, requests=full_name.endswith("Request"))

    def _any_schema(self) -> dict[str, Any]:
        for detail in _ERROR_DETAILS:
            self.message_schema(detail)
        return {
            "type": "object",
            "description": "A message of any type, named by its `@type` URL, with that "
            "message's fields beside it. Error details are one of the types listed.",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": True,
            "anyOf": [
                {
                    "properties": {"@type": {"const": f"type.googleapis.com/{detail.lstrip('.')}"}},
                    "allOf": [_ref(detail)],
                }
                for detail in _ERROR_DETAILS
            ]
            + [{"type": "object"}],
        }

    def enum_schema(self, full_name: str) -> None:
        name = _schema_name(full_name)
        if name in self.schemas:
            return
        enum = self.enums[full_name]
        lines = [
            f"- `{value.name}`: {text}"
            for value in enum.value
            if (text := self.comments.get(f"{full_name}.{value.name}"))
        ]
        head = self.comments.get(full_name) or ""
        schema: dict[str, Any] = {"type": "string", "enum": [value.name for value in enum.value]}
        description = "\n\n".join(part for part in (head, "\n".join(lines)) if part)
        if description:
            schema["description"] = description
        self.schemas[name] = schema

    # Operations ----------------------------------------------------------------------------

    def query_parameters(
        self, full_name: str, skip: frozenset[str], prefix: str = "", depth: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Fields the transcoder reads from the query string: every field not bound by the path
        or the body; nested messages by dotted paths (well-known types are leaves)."""
        for fld in self.messages[full_name].field:
            if not prefix and fld.name in skip:
                continue
            name = f"{prefix}{fld.json_name}"
            nested = (
                fld.type == _F.TYPE_MESSAGE
                and fld.type_name not in _WELL_KNOWN
                and fld.label != _F.LABEL_REPEATED
            )
            if nested:
                if depth < 3:
                    yield from self.query_parameters(fld.type_name, skip, f"{name}.", depth + 1)
                continue
            if self._map_entry(fld) is not None:
                continue
            schema = self.property_schema(full_name, fld)
            description = schema.pop("description", None)
            schema.pop("readOnly", None)
            parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
            if fld.label == _F.LABEL_REPEATED:
                parameter["explode"] = True
            if description:
                parameter["description"] = description
            yield parameter

    def path_parameter(self, request: str, variable: str) -> dict[str, Any]:
        owner, fld = self._resolve(request, variable)
        schema = self.field_schema(fld)
        if schema.get("type") == "string" and "$ref" not in schema:
            # A path segment cannot be empty (the transcoder would not match the route).
            schema["minLength"] = 1
        parameter: dict[str, Any] = {
            "name": _parameter_name(variable),
            "in": "path",
            "required": True,
            "schema": schema,
        }
        text = self.comments.get(f"{owner}.{fld.name}")
        if text:
            parameter["description"] = text
        return parameter

    def _resolve(
        self, message: str, dotted: str
    ) -> tuple[str, descriptor_pb2.FieldDescriptorProto]:
        owner = message
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            fld = next(f for f in self.messages[owner].field if f.name == part)
            if i == len(parts) - 1:
                return owner, fld
            owner = fld.type_name
        raise AssertionError(dotted)

    def operation(
        self,
        package: str,
        service: descriptor_pb2.ServiceDescriptorProto,
        method: descriptor_pb2.MethodDescriptorProto,
    ) -> tuple[str, str, dict[str, Any]] | None:
        rule = method.options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in _HTTP_METHODS:
            return None
        template: str = getattr(rule, verb)
        variables = _path_variables(template)
        full_method = f".{package}.{service.name}.{method.name}"
        summary, description = _summary(self.comments.get(full_method) or method.name)
        operation: dict[str, Any] = {
            "operationId": f"{service.name}_{method.name}",
            "tags": [service.name],
            "summary": summary,
        }
        if description:
            operation["description"] = description
        top_level_path = frozenset(v.split(".")[0] for v in variables if "." not in v)
        parameters = [self.path_parameter(method.input_type, v) for v in variables]
        if rule.body == "*":
            body_schema = (
                self.object_schema(method.input_type, top_level_path, requests=True)
                if top_level_path
                else self._message_ref(method.input_type)
            )
        elif rule.body:
            _, body_field = self._resolve(method.input_type, rule.body)
            body_schema = self.field_schema(body_field)
            parameters += self.query_parameters(method.input_type, top_level_path | {rule.body})
        else:
            body_schema = None
            parameters += self.query_parameters(method.input_type, top_level_path)
        if parameters:
            operation["parameters"] = parameters
        if body_schema is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        response = self._message_ref(method.output_type)
        if method.server_streaming:
            # Over REST a server stream is one JSON array, an element per message.
            response = {"type": "array", "items": response}
            operation["x-server-streaming"] = True
        operation["responses"] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": response}},
            },
            "default": {
                "description": "An error: the gRPC status mapped to its HTTP code (400 "
                "INVALID_ARGUMENT and FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403 "
                "PERMISSION_DENIED, 404 NOT_FOUND, 409 ALREADY_EXISTS and ABORTED, 429 "
                "RESOURCE_EXHAUSTED, 503 UNAVAILABLE) with a `google.rpc.Status` body. A "
                "request the gateway cannot map to the RPC (an unknown query parameter or "
                "JSON field, a value of the wrong type) gets a 400 with a plain-text reason.",
                "content": {
                    "application/json": {"schema": self._message_ref(_STATUS)},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
        }
        operation["security"] = _security(POLICY.get(f"/{package}.{service.name}/{method.name}"))
        return _openapi_path(template), verb, operation

    def _message_ref(self, full_name: str) -> dict[str, Any]:
        self.message_schema(full_name)
        return _ref(full_name)


def _path_variables(template: str) -> list[str]:
    variables = []
    for piece in template.split("{")[1:]:
        variable = piece.split("}")[0]
        if "=" in variable:
            raise ValueError(f"{template}: path variables with patterns are not supported")
        variables.append(variable)
    return variables


def _parameter_name(variable: str) -> str:
    """A path variable's parameter name: `model.name` becomes `modelName` (tools fill paths
    with str.format-like templating, where a dot means an attribute)."""
    head, *rest = variable.split(".")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _openapi_path(template: str) -> str:
    for variable in _path_variables(template):
        template = template.replace(f"{{{variable}}}", f"{{{_parameter_name(variable)}}}")
    return template


def _summary(text: str) -> tuple[str, str]:
    first, _, _rest = text.partition(". ")
    summary = first.rstrip(".")
    return summary, text if text != summary and text != f"{summary}." else ""


def _security(policy: Policy | None) -> list[dict[str, list[str]]]:
    if policy is None:
        raise ValueError("an annotated RPC has no entry in foretell.auth.policy.POLICY")
    if policy.roles is None:
        return []
    schemes: list[dict[str, list[str]]] = [{"accessToken": []}]
    if policy.api_key:
        schemes.append({"apiKey": []})
    return schemes


def build_openapi(
    files: descriptor_pb2.FileDescriptorSet, commented: descriptor_pb2.FileDescriptorSet
) -> dict[str, Any]:
    """The OpenAPI document of every annotated RPC of the `foretell.*` services in `files`;
    `commented` is the same set with source info, for descriptions."""
    builder = _Builder(files, _Comments.of(commented))
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    for file in files.file:
        if not file.package.startswith("foretell."):
            continue
        for service in file.service:
            operations = [builder.operation(file.package, service, m) for m in service.method]
            annotated = [op for op in operations if op is not None]
            if not annotated:
                continue
            tag: dict[str, Any] = {"name": service.name}
            text = builder.comments.get(f".{file.package}.{service.name}")
            if text:
                tag["description"] = text
            tags.append(tag)
            for path, verb, operation in annotated:
                paths.setdefault(path, {})[verb] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Foretell REST API",
            "version": "v1",
            "description": "The REST face of Foretell's gRPC services, as Envoy's gRPC-JSON "
            "transcoder serves it: lowerCamelCase field names, 64-bit integers as strings, "
            "enums by name, times as RFC 3339 strings; fields at their default value (0, "
            '"", false, the first enum value, empty lists) are left out of responses. '
            "Errors are `google.rpc.Status` bodies. Generated from the protos by "
            "`make gen`.",
        },
        "servers": [{"url": "/"}],
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
