"""The OpenAPI document `make gen` writes: valid 3.1, one operation per annotated RPC, and the
transcoder's JSON mapping (checked against the wire by tests/test_web_schemathesis.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import annotations_pb2
from openapi_spec_validator import validate

from foretell._assets import asset_path
from foretell.composition import SERVICES


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(asset_path("gen/openapi/foretell.openapi.json").read_text())
    return loaded


def test_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_one_operation_per_annotated_rpc(document: dict[str, Any]) -> None:
    expected = {
        f"{definition.descriptor.name}_{method.name}"
        for definition in SERVICES.values()
        for method in definition.descriptor.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }
    operations = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
    }
    assert operations == expected


def test_json_mapping(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    plan = schemas["subscription.v1.Plan"]["properties"]
    assert plan["priceMinor"]["type"] == "string"  # int64
    assert plan["trialDays"]["type"] == "integer"  # int32
    assert plan["updateTime"]["format"] == "date-time"
    assert plan["model"]["readOnly"] is True
    assert schemas["common.v1.Resolution"]["enum"][1] == "RESOLUTION_1H"
    assert schemas["forecast.v1.Run"]["properties"]["duration"]["pattern"].endswith("s$")
    login = schemas["account.v1.LoginRequest"]
    assert login["required"] == ["email", "password"]


def test_security_follows_the_policy(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert paths["/v1/auth:login"]["post"]["security"] == []
    assert paths["/v1/models"]["get"]["security"] == [{"accessToken": []}, {"apiKey": []}]
    assert paths["/v1/users/me/apiKeys"]["post"]["security"] == [{"accessToken": []}]


def test_bindings(document: dict[str, Any]) -> None:
    update_plan = document["paths"]["/v1/models/{model}/plan"]["put"]
    assert [p["name"] for p in update_plan["parameters"]] == ["model"]
    body = update_plan["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/subscription.v1.Plan"}
    cancel = document["paths"]["/v1/subscriptions/{id}:cancel"]["post"]
    schema = cancel["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"immediately"}
    bars = document["paths"]["/v1/symbols/{symbol}/bars"]["get"]
    assert bars["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    error = bars["responses"]["default"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/google.rpc.Status"}
