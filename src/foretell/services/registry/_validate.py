"""Input rules for RegistryService requests, every violation reported at once."""

from __future__ import annotations

import re

from foretell import paging, resolutions
from foretell.errors import FieldViolation, InvalidArgument, Violations
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.symbols import SYMBOL
from foretell.text import check_text

NAME = re.compile(r"[a-z][a-z0-9-]{2,39}")
TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SYMBOLS, MAX_TAGS, MAX_DESCRIPTION, MAX_TITLE = 50, 20, 10_000, 120
MAX_HORIZON = 1000
MAX_CHUNK = 1024 * 1024
DEFAULT_PAGE, MAX_PAGE = 50, 100
UPDATABLE = frozenset({"title", "description", "tags", "visibility"})

VISIBILITIES = {pb.VISIBILITY_PRIVATE: "private", pb.VISIBILITY_PUBLIC: "public"}
VISIBILITY_ENUM = {text: value for value, text in VISIBILITIES.items()}


def model_name(v: Violations, field: str, name: str) -> str:
    if not name:
        v.add(field, "required")
    elif not NAME.fullmatch(name):
        v.add(
            field, "3 to 40 characters: lowercase letters, digits and '-', starting with a letter"
        )
    return name


def require_name(field: str, name: str) -> str:
    v = Violations()
    model_name(v, field, name)
    v.raise_if_any()
    return name


def _tags(v: Violations, field: str, tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        v.add(field, f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if not TAG.fullmatch(tag):
            v.add(f"{field}[{i}]", "1 to 32 characters: lowercase letters, digits and '-'")
    if len(set(tags)) != len(tags):
        v.add(field, "tags must be unique")
    return list(tags)


def _description(v: Violations, field: str, text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        v.add(field, f"at most {MAX_DESCRIPTION} characters")
    return text.strip()


def create_model(model: pb.Model) -> dict[str, object]:
    """The columns of a new model, or InvalidArgument."""
    v = Violations()
    name = model_name(v, "model.name", model.name)
    title = check_text(v, "model.title", model.title, MAX_TITLE)
    symbols = list(model.symbols)
    if not symbols:
        v.add("model.symbols", "at least one symbol")
    elif len(symbols) > MAX_SYMBOLS:
        v.add("model.symbols", f"at most {MAX_SYMBOLS} symbols")
    for i, symbol in enumerate(symbols):
        if not SYMBOL.fullmatch(symbol):
            v.add(f"model.symbols[{i}]", "1 to 32 characters: A-Z, 0-9, '.', '_', '-'")
    if len(set(symbols)) != len(symbols):
        v.add("model.symbols", "symbols must be unique")
    resolution = resolutions.BY_ENUM.get(model.resolution)
    if resolution is None:
        v.add("model.resolution", f"required: {resolutions.ENUM_RULE}")
    if not 1 <= model.horizon <= MAX_HORIZON:
        v.add("model.horizon", f"1 to {MAX_HORIZON} bars ahead")
    visibility = VISIBILITIES.get(model.visibility, "private")
    if model.visibility not in (pb.VISIBILITY_UNSPECIFIED, *VISIBILITIES):
        v.add("model.visibility", "VISIBILITY_PRIVATE or VISIBILITY_PUBLIC")
    fields: dict[str, object] = {
        "name": name,
        "title": title,
        "description": _description(v, "model.description", model.description),
        "symbols": symbols,
        "resolution": resolution,
        "horizon": model.horizon,
        "tags": _tags(v, "model.tags", list(model.tags)),
        "visibility": visibility,
    }
    v.raise_if_any()
    return fields


def update_model(request: pb.UpdateModelRequest) -> tuple[str, dict[str, object]]:
    """(name, the columns to change) or InvalidArgument."""
    v = Violations()
    name = model_name(v, "model.name", request.model.name)
    paths = list(request.update_mask.paths)
    changes: dict[str, object] = {}
    if not paths:
        v.add("update_mask", "name the fields to change: title, description, tags, visibility")
    for path in paths:
        if path not in UPDATABLE:
            v.add(
                "update_mask",
                f"{path!r} cannot be changed; changeable: {', '.join(sorted(UPDATABLE))}",
            )
    model = request.model
    if "title" in paths:
        changes["title"] = check_text(v, "model.title", model.title, MAX_TITLE)
    if "description" in paths:
        changes["description"] = _description(v, "model.description", model.description)
    if "tags" in paths:
        changes["tags"] = _tags(v, "model.tags", list(model.tags))
    if "visibility" in paths:
        if model.visibility not in VISIBILITIES:
            v.add("model.visibility", "VISIBILITY_PRIVATE or VISIBILITY_PUBLIC")
        changes["visibility"] = VISIBILITIES.get(model.visibility, "private")
    v.raise_if_any()
    return name, changes


def page_size(v: Violations, size: int) -> int:
    return paging.page_size(v, size, DEFAULT_PAGE, MAX_PAGE)


def version_ref(model: str, number: int) -> tuple[str, int]:
    v = Violations()
    model_name(v, "model", model)
    if number < 1:
        v.add("number", "a version number, 1 or more")
    v.raise_if_any()
    return model, number


def upload_header(header: pb.UploadHeader, max_bytes: int) -> None:
    v = Violations()
    model_name(v, "header.model", header.model)
    if header.size <= 0:
        v.add("header.size", "the bundle's size in bytes, more than 0")
    elif header.size > max_bytes:
        v.add("header.size", f"bundle of {header.size} bytes is over the limit of {max_bytes}")
    if not DIGEST.fullmatch(header.digest):
        v.add("header.digest", "'sha256:' followed by 64 lowercase hex digits")
    v.raise_if_any()


def bundle_problem(description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("bundle", description)])
