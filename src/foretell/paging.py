"""Page sizes and page tokens every List call shares (AIP-158): tokens are opaque to clients,
plain JSON inside."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from foretell.errors import Violations

DEFAULT_PAGE, MAX_PAGE = 100, 1000
_NOT_OURS = "not a token from a previous page"


def encode_token(cursor: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def decode_token(v: Violations, token: str) -> object:
    """The cursor in a page token; None for the first page."""
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        reject_token(v)
        return None


def reject_token(v: Violations) -> None:
    """Records that the request's page token is not one this call handed out."""
    v.add("page_token", _NOT_OURS)


def page_size(v: Violations, size: int, default: int = DEFAULT_PAGE, most: int = MAX_PAGE) -> int:
    """The page size a request asks for, 0 meaning `default`; a call may set its own bounds."""
    if not 0 <= size <= most:
        v.add("page_size", f"0 to {most} (0 means {default})")
    return size or default


@dataclass(frozen=True)
class Keyset:
    """The last row of a page in a newest-first-then-id order: its time and its id."""

    when: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class Page:
    size: int
    after: Keyset | None


def keyset_token(call: str, scope: str, last: Keyset) -> str:
    # The call and its filters ride in the token, so a token is refused by another call or
    # under other filters instead of silently paging through something else.
    return encode_token([call, scope, last.when.isoformat(), str(last.id)])


def keyset_page(v: Violations, call: str, scope: str, size: int, token: str) -> Page:
    """The page a request asks for; `scope` is its filters, which must not change between
    pages."""
    limit = page_size(v, size)
    raw = decode_token(v, token)
    if raw is None:
        return Page(limit, None)
    if isinstance(raw, list) and len(raw) == 4 and raw[0] == call:
        if raw[1] != scope:
            v.add("page_token", "a token of the same call with other filters: keep them")
            return Page(limit, None)
        try:
            when, row_id = datetime.fromisoformat(str(raw[2])), uuid.UUID(str(raw[3]))
            if when.tzinfo is not None:
                return Page(limit, Keyset(when, row_id))
        except ValueError:
            pass
    reject_token(v)
    return Page(limit, None)


def after_keyset(
    when: InstrumentedAttribute[datetime], row_id: InstrumentedAttribute[uuid.UUID], last: Keyset
) -> ColumnElement[bool]:
    """Rows after `last` in the order (when DESC, id ASC)."""
    return or_(when < last.when, and_(when == last.when, row_id > last.id))
