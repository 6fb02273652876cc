"""Server-side invoice commands for `foretell admin invoices`: the manual processor's
payments, credit notes, and the list an operator works from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.billing.payments import ManualProcessor, processor_for
from foretell.billing.settle import (
    InvoiceStatus,
    invoice_statuses,
    is_open,
    issue_credit_note,
    record_payment,
)
from foretell.clock import Clock, utc_now
from foretell.db import connected
from foretell.db.models import Invoice, Model, User
from foretell.errors import ForetellError
from foretell.settings import Settings


@dataclass(frozen=True)
class InvoiceLine:
    status: InvoiceStatus
    model: str
    subscriber_email: str


def _invoice_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an invoice id (a UUID)") from None


async def _lines(session: AsyncSession, statuses: list[InvoiceStatus]) -> list[InvoiceLine]:
    models = {s.invoice.model_id for s in statuses}
    users = {s.invoice.subscriber_id for s in statuses}
    names = {
        row[0]: row[1]
        for row in (
            await session.execute(select(Model.id, Model.name).where(Model.id.in_(models)))
        ).all()
    }
    emails = {
        row[0]: row[1]
        for row in (
            await session.execute(select(User.id, User.email).where(User.id.in_(users)))
        ).all()
    }
    return [
        InvoiceLine(s, names[s.invoice.model_id], emails[s.invoice.subscriber_id]) for s in statuses
    ]


async def list_invoices(settings: Settings, *, open_only: bool, limit: int) -> list[InvoiceLine]:
    async with connected(settings.database_url) as db, db.session() as session:
        conditions = [is_open()] if open_only else []
        return await _lines(session, await invoice_statuses(session, *conditions, limit=limit))


async def pay_invoice(
    settings: Settings, invoice_id: str, reference: str, clock: Clock = utc_now
) -> InvoiceLine:
    """Records the payment of an open invoice by hand (the manual processor). ValueError with a
    readable message when it cannot be."""
    return await _change(settings, invoice_id, clock(), reference=reference)


async def credit_invoice(
    settings: Settings, invoice_id: str, amount_minor: int, reason: str, clock: Clock = utc_now
) -> InvoiceLine:
    """Issues a credit note against an open invoice."""
    return await _change(settings, invoice_id, clock(), credit=(amount_minor, reason))


async def _change(
    settings: Settings,
    text: str,
    now: datetime,
    *,
    reference: str = "",
    credit: tuple[int, str] | None = None,
) -> InvoiceLine:
    invoice_id = _invoice_id(text)
    try:
        async with connected(settings.database_url) as db, db.session.begin() as session:
            if credit is None:
                await record_payment(
                    session,
                    invoice_id,
                    processor=ManualProcessor.name,
                    reference=reference or "marked paid by an admin",
                    now=now,
                    settings=settings,
                    charger=processor_for(settings),
                )
            else:
                await issue_credit_note(session, invoice_id, credit[0], credit[1], now)
            statuses = await invoice_statuses(session, Invoice.id == invoice_id)
            (line,) = await _lines(session, statuses)
            return line
    except ForetellError as error:
        raise ValueError(error.message) from None
