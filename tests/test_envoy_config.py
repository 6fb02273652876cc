"""The Envoy config template: both topologies render and pass `envoy --mode validate` (the real
binary), and the safety-relevant pieces are where they belong."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from foretell.composition import SERVICES
from foretell.gateway import render_envoy_config, validate_envoy_config
from foretell.settings import Address, Settings

ONE_PROCESS = dict.fromkeys(SERVICES, Address("127.0.0.1", 50051))
ONE_PER_SERVICE = {name: Address("127.0.0.1", 50061 + i) for i, name in enumerate(SERVICES)}


def _validate(text: str, path: Path) -> None:
    path.write_text(text)
    validate_envoy_config(path)


def _routes(text: str) -> list[str]:
    """The text of each route entry: from one `- match:` to the next (or the clusters)."""
    routes_section = text.split("routes:", 1)[1].split("\n  clusters:", 1)[0]
    return ["- match:" + chunk for chunk in routes_section.split("- match:")[1:]]


def test_all_in_one_topology_is_valid(tmp_path: Path) -> None:
    text = render_envoy_config(Settings(), ONE_PROCESS)
    _validate(text, tmp_path / "envoy.yaml")
    # One process serves everything: one cluster, health-checked as a whole ("").
    assert len(re.findall(r"^    - name: ", text.split("\n  clusters:", 1)[1], re.M)) == 1
    assert 'service_name: ""' in text


def test_split_topology_is_valid(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings(), topology="split")
    text = render_envoy_config(settings, ONE_PER_SERVICE)
    _validate(text, tmp_path / "envoy.yaml")
    for definition in SERVICES.values():
        assert f'service_name: "{definition.full_name}"' in text


def test_ports_from_arguments_and_no_cors_origins_are_valid(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings(), cors_origins=())
    text = render_envoy_config(
        settings,
        {**ONE_PROCESS, "account": Address("localhost", 50052)},
        http_addr=Address("127.0.0.1", 0),
        admin_addr=Address("127.0.0.1", 0),
    )
    _validate(text, tmp_path / "envoy.yaml")
    assert "envoy.extensions.filters.http.cors.v3.CorsPolicy" not in text
    assert "type: STRICT_DNS" in text


def test_missing_upstream_is_named() -> None:
    upstreams = {name: a for name, a in ONE_PROCESS.items() if name != "forecast"}
    with pytest.raises(ValueError, match="forecast"):
        render_envoy_config(Settings(), upstreams)


def test_admin_must_be_on_loopback() -> None:
    everywhere = Address("0.0.0.0", 9901)  # noqa: S104 (the value under test)
    settings = dataclasses.replace(Settings(), envoy_admin_addr=everywhere)
    with pytest.raises(ValueError, match="loopback"):
        render_envoy_config(settings, ONE_PROCESS)


def test_admin_listens_on_loopback() -> None:
    text = render_envoy_config(Settings(), ONE_PROCESS)
    admin = text.split("\nadmin:\n", 1)[1].split("\n\n", 1)[0]
    assert 'address: "127.0.0.1"' in admin
    assert "port_value: 9901" in admin


def test_auth_routes_are_rate_limited_and_others_are_not() -> None:
    settings = dataclasses.replace(Settings(), auth_rate_limit_per_min=17)
    routes = _routes(render_envoy_config(settings, ONE_PROCESS))
    limited = [r for r in routes if "envoy.filters.http.local_ratelimit" in r]
    paths = {match.group(1) for r in limited if (match := re.search(r'path: "([^"]+)"', r))}
    assert len(paths) == len(limited)
    account = SERVICES["account"].full_name
    assert paths == {f"/{account}/{m}" for m in ("CreateUser", "Login", "Refresh")}
    (login,) = [r for r in limited if f'path: "/{account}/Login"' in r]
    assert "max_tokens: 17" in login
    assert "tokens_per_fill: 17" in login
    assert "fill_interval: 60s" in login
    # The filter does nothing unless both are on.
    assert re.search(r"filter_enabled:\s+runtime_key: \S+\s+default_value:\s+numerator: 100", login)
    assert re.search(
        r"filter_enforced:\s+runtime_key: \S+\s+default_value:\s+numerator: 100", login
    )
    assert "rate_limited_as_resource_exhausted: true" in login
