"""Rules for the free text users send (titles, names), shared by every service's validation."""

from __future__ import annotations

from foretell.errors import Violations


def check_text(v: Violations, field: str, text: str, limit: int) -> str:
    """The text stripped; required, at most `limit` characters, no control characters."""
    text = text.strip()
    if not text:
        v.add(field, "required")
    elif len(text) > limit:
        v.add(field, f"at most {limit} characters")
    elif not text.isprintable():
        v.add(field, "must not contain control characters")
    return text
