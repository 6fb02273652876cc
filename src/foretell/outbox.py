"""Delivery of the outbox: notices to account owners (e.g. "someone tried to sign up with your
address") that services write into the `outbox` table, sent by the worker over SMTP to the
server the operator names in FORETELL_SMTP_URL. Without one, notices wait in the table.

At least once: a notice is stamped sent after the server accepted it, so a crash in between
sends it again; rows are claimed with SKIP LOCKED, so two workers never send the same one."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from foretell.db import Database, OutboxMessage
from foretell.settings import Settings

_BATCH = 50
_TIMEOUT_S = 30


def _send(url: str, sender: str, recipient: str, subject: str, body: str) -> None:
    parts = urlsplit(url)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message.set_content(body)
    secure = parts.scheme == "smtps"
    client: smtplib.SMTP = (smtplib.SMTP_SSL if secure else smtplib.SMTP)(
        parts.hostname or "localhost", parts.port or (465 if secure else 25), timeout=_TIMEOUT_S
    )
    with client:
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message)


async def deliver(db: Database, settings: Settings, now: datetime) -> int:
    """Sends unsent notices (oldest first, a batch at a time); returns how many were sent."""
    if not settings.smtp_url:
        return 0
    sent = 0
    while True:
        async with db.session.begin() as session:
            batch = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.sent_at.is_(None))
                    .order_by(OutboxMessage.created_at, OutboxMessage.id)
                    .limit(_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for notice in batch:
                await asyncio.to_thread(
                    _send,
                    settings.smtp_url,
                    settings.smtp_from,
                    notice.recipient,
                    notice.subject,
                    notice.body,
                )
                notice.sent_at = now
                sent += 1
        if len(batch) < _BATCH:
            return sent
