"""Page sizes and page tokens every List call shares (AIP-158). A token is opaque to clients:
JSON inside, sealed with an HMAC under a server key and bound to the call that issued it, so a
forged or altered token (or one of another call) is simply "invalid page token" and its
contents are never parsed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from foretell.errors import Violations

DEFAULT_PAGE, MAX_PAGE = 100, 1000
# Far above any token the platform hands out; longer ones are refused unread.
MAX_TOKEN = 1024
_TAG_BYTES = 16
_NOT_OURS = "not a token from a previous page"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


class PageTokens:
    """Seals cursors into page tokens and opens them, under one server key (every process of a
    site shares it, so any of them can serve the next page)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page-token key needs at least 16 bytes")
        self._key = key

    def _tag(self, call: str, body: bytes) -> bytes:
        mac = hmac.new(self._key, call.encode() + b"\0" + body, hashlib.sha256)
        return mac.digest()[:_TAG_BYTES]

    def seal(self, call: str, cursor: object) -> str:
        """The token for the page after `cursor`, valid only for `call`."""
        body = json.dumps(cursor, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._tag(call, body))}"

    def open(self, v: Violations, call: str, token: str) -> object:
        """The cursor in a page token `call` handed out; None for the first page, or with a
        violation when the token is not one of ours."""
        if not token:
            return None
        body = self._verified(call, token)
        if body is None:
            reject_token(v)
            return None
        # Ours, so well-formed: `seal` wrote it.
        return json.loads(body)

    def _verified(self, call: str, token: str) -> bytes | None:
        """The body of `token` when its tag is `call`'s under our key."""
        body_text, dot, tag_text = token.partition(".")
        if len(token) > MAX_TOKEN or not dot or not token.isascii():
            return None
        try:
            body, tag = _unb64(body_text), _unb64(tag_text)
        except (ValueError, binascii.Error):
            return None
        return body if hmac.compare_digest(tag, self._tag(call, body)) else None

    def keyset_token(self, call: str, scope: str, last: Keyset) -> str:
        # The filters ride in the token, so a token is refused under other filters instead of
        # silently paging through something else.
        return self.seal(call, [scope, last.when.isoformat(), str(last.id)])

    def keyset_page(self, v: Violations, call: str, scope: str, size: int, token: str) -> Page:
        """The page a request asks for; `scope` is its filters, which must not change between
        pages."""
        limit = page_size(v, size)
        raw = self.open(v, call, token)
        if raw is None:
            return Page(limit, None)
        if isinstance(raw, list) and len(raw) == 3:
            if raw[0] != scope:
                v.add("page_token", "a token of the same call with other filters: keep them")
                return Page(limit, None)
            try:
                when, row_id = datetime.fromisoformat(str(raw[1])), uuid.UUID(str(raw[2]))
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
