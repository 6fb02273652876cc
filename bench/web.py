"""What the web app ships for its first route (the catalog), gzip-compressed as Envoy serves it:
the entry chunk, the catalog page's chunk and every chunk they import statically; and the
chart library, loaded only by the pages that draw charts. Reads the built app (`make web`).

    .venv/bin/python bench/web.py
"""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

DIST = Path(__file__).resolve().parents[1] / "web" / "dist"
# Static imports between chunks (`import{..}from"./x.js"`); the bundler quotes with " or `.
STATIC = re.compile(r'(?:from|import)\s*["`]\./([^"`]+\.js)["`]')
TARGET_KB = 200


def _closure(start: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += STATIC.findall((DIST / "assets" / name).read_text())
    return seen


def _gzip(names: set[str]) -> int:
    return sum(len(gzip.compress((DIST / "assets" / n).read_bytes(), 6)) for n in names)


def main() -> int:
    index = (DIST / "index.html").read_text()
    entry = re.findall(r'src="/assets/([^"]+\.js)"', index)
    entry_text = (DIST / "assets" / entry[0]).read_text()
    catalog = re.findall(r'import\(["`]\./(CatalogView-[^"`]+\.js)["`]\)', entry_text)
    first_route = _closure(entry + catalog[:1])
    charts = {p.name for p in (DIST / "assets").glob("lightweight-charts*.js")}
    css = sum(len(gzip.compress(p.read_bytes(), 6)) for p in (DIST / "assets").glob("index-*.css"))
    total = _gzip(first_route)
    print(f"first route (catalog): {len(first_route)} JS files, {total / 1024:.1f} KB gzip")
    print(f"  + entry CSS {css / 1024:.1f} KB gzip")
    print(f"chart library (lazy, model and playback pages): {_gzip(charts) / 1024:.1f} KB gzip")
    verdict = "met" if total / 1024 <= TARGET_KB else "NOT met"
    print(f"target: first-route JS <= {TARGET_KB} KB gzip: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
