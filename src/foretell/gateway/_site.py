"""The files Envoy serves itself on the public listener: the built web app (`web/dist`), the
OpenAPI document and the API reference page, each as a route with a `direct_response` read from
its file when Envoy loads the config.

Why Envoy and not a file server: the app is a few dozen immutable files that change only with a
build, and `foretell up` renders the config at start; so there is no extra process to run, watch
and health-check, and the same listener, filters (compression) and headers apply to everything.
The cost is that Envoy holds the files in memory (a few MiB) and a rebuild needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Envoy refuses a direct_response body above the route config's limit (4 KiB by default). The
# API reference renderer is the largest file (~3.5 MiB).
MAX_BODY_BYTES = 16 * 1024 * 1024

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}
# Vite puts content-hashed names under assets/: a new build, a new name.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# lightweight-charts adds one fixed inline <style> for the TradingView attribution logo (which
# its licence asks us to keep): allowed by its hash, nothing else inline. A test recomputes it
# from the installed library.
CHART_LOGO_STYLE = "'sha256-3pRED1tOXas1FXFoPb9TGCjmYe9XQsmO9OV23khV2nY='"
# The app loads nothing from elsewhere: scripts and styles are its own files (no inline ones),
# API calls go to the same origin, charts draw on canvases.
APP_CSP = (
    f"default-src 'self'; script-src 'self'; style-src 'self' {CHART_LOGO_STYLE}; "
    "img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The API reference renderer injects its styles at run time: inline styles only there.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PREFIX = "docs/api/"


@dataclass(frozen=True)
class StaticRoute:
    path: str
    filename: str
    content_type: str
    cache_control: str
    csp: str


def _route(path: str, file: Path, cache_control: str, csp: str) -> StaticRoute:
    content_type = _CONTENT_TYPES.get(file.suffix, "application/octet-stream")
    return StaticRoute(path, str(file.resolve()), content_type, cache_control, csp)


def site_routes(web_root: Path | None, openapi: Path) -> tuple[list[StaticRoute], str | None]:
    """One exact route per file of the built app (plus `/openapi.json` and `/docs/api`), and
    the index.html every other GET falls back to (None when the app is not built)."""
    routes = [_route("/openapi.json", openapi, _REVALIDATE, APP_CSP)]
    if web_root is None or not (web_root / "index.html").is_file():
        return routes, None
    for file in sorted(p for p in web_root.rglob("*") if p.is_file()):
        relative = file.relative_to(web_root).as_posix()
        if file.stat().st_size > MAX_BODY_BYTES:
            raise ValueError(f"{file} is larger than Envoy's direct response limit")
        docs = relative.startswith(DOCS_PREFIX)
        csp = DOCS_CSP if docs else APP_CSP
        cache = _IMMUTABLE if relative.startswith("assets/") else _REVALIDATE
        if relative == f"{DOCS_PREFIX}index.html":
            routes.append(_route("/docs/api", file, cache, csp))
            routes.append(_route("/docs/api/", file, cache, csp))
        elif relative != "index.html":
            routes.append(_route(f"/{relative}", file, cache, csp))
    index = str((web_root / "index.html").resolve())
    return routes, index
