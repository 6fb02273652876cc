"""The docs cannot drift: the configuration page is the settings code's, every `FORETELL_*`
variable src/ reads is on it, and every relative link in the README and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foretell import _settings_doc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# Not preceded by a word character: `_FORETELL_MODULES` is a Python name, not a variable.
_VARIABLE = re.compile(r"(?<![A-Za-z0-9_])FORETELL_[A-Z0-9_]+")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(])*?\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def test_configuration_page_is_generated_from_settings() -> None:
    assert CONFIGURATION.read_text(encoding="utf-8") == _settings_doc.render(), (
        "docs/configuration.md is stale: run `make docs` and commit it"
    )


def _variables_in_src() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "src").rglob("*"):
        if path.is_file() and path.suffix in {".py", ".j2", ".toml", ".yaml"}:
            found.update(_VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_variable_src_reads_is_documented() -> None:
    page = CONFIGURATION.read_text(encoding="utf-8")
    documented = set(_VARIABLE.findall(page))
    missing = []
    for name in sorted(_variables_in_src()):
        # A name ending in "_" is a prefix (FORETELL_TEST_): some documented name must start so.
        if name.endswith("_"):
            ok = any(d.startswith(name) and d != name for d in documented)
        else:
            ok = name in documented
        if not ok:
            missing.append(name)
    assert not missing, f"read in src/ but not in docs/configuration.md: {missing}"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    for heading in _HEADING.findall(text):
        slug = anchor(heading)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def test_anchor_follows_github() -> None:
    assert anchor("Runs: the sandbox and the SDK") == "runs-the-sandbox-and-the-sdk"
    assert anchor("`FORETELL_*` settings") == "foretell_-settings"
    assert anchor("Hit rate, MAE & RMSE") == "hit-rate-mae--rmse"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.name not in index]
    assert not unlisted, f"docs/README.md does not link: {unlisted}"
