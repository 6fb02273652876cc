"""Billing: issuing invoices, recording payments and credit notes, and settling subscriptions,
that is firing the state machine's events whose time has come (trial end, due date, grace end,
period end) in the order they fell due.

Every function here but `settle_if_due` and `run_billing` (which open their own) works inside
the caller's transaction, on a subscription row the caller has locked (`locked_subscription`),
so the daily cron, a read that checks entitlement and an admin recording a payment never settle
one subscription twice at once. Invoices are unique per
(subscription, period start): issuing the same period again returns the issued invoice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, ScalarSelect, and_, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.billing import prorate
from foretell.billing._months import add_months
from foretell.billing.machine import LIVE, Event, State, fire
from foretell.billing.payments import Charge, PaymentProcessor
from foretell.db import Database
from foretell.db.models import CreditNote, Invoice, Payment, Plan, Subscription
from foretell.errors import FailedPrecondition, NotFound
from foretell.settings import Settings

# A subscription left unsettled for years still catches up in bounded work per call; the next
# call (or the next day's cron) goes on.
_MAX_STEPS = 64


@dataclass(frozen=True)
class Terms:
    due: timedelta
    grace: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Terms:
        return cls(
            timedelta(days=settings.billing_due_days), timedelta(days=settings.billing_grace_days)
        )


@dataclass(frozen=True)
class InvoiceStatus:
    invoice: Invoice
    credited_minor: int
    payment: Payment | None
    # Oldest first.
    credit_notes: tuple[CreditNote, ...] = ()

    @property
    def amount_due_minor(self) -> int:
        if self.payment is not None:
            return 0
        return max(self.invoice.amount_minor - self.credited_minor, 0)

    @property
    def state(self) -> str:
        if self.payment is not None:
            return "paid"
        return "open" if self.amount_due_minor > 0 else "void"


async def locked_subscription(session: AsyncSession, subscription_id: uuid.UUID) -> Subscription:
    sub = await session.scalar(
        select(Subscription).where(Subscription.id == subscription_id).with_for_update()
    )
    if sub is None:
        raise NotFound(f"no subscription {str(subscription_id)!r}")
    return sub


def _credited() -> ScalarSelect[int]:
    return (
        select(func.coalesce(func.sum(CreditNote.amount_minor), 0))
        .where(CreditNote.invoice_id == Invoice.id)
        .correlate(Invoice)
        .scalar_subquery()
    )


async def invoice_statuses(
    session: AsyncSession, *conditions: ColumnElement[bool], limit: int | None = None
) -> list[InvoiceStatus]:
    """Invoices matching `conditions` with their credits and payment, newest first, then by
    id: a total order, which ListInvoices pages through."""
    query = (
        select(Invoice, _credited(), Payment)
        .outerjoin(Payment, Payment.invoice_id == Invoice.id)
        .where(*conditions)
        .order_by(Invoice.issued_at.desc(), Invoice.id)
    )
    if limit is not None:
        query = query.limit(limit)
    rows = (await session.execute(query)).all()
    notes: dict[uuid.UUID, list[CreditNote]] = {}
    if any(row[1] for row in rows):
        credited = [row[0].id for row in rows if row[1]]
        for note in await session.scalars(
            select(CreditNote)
            .where(CreditNote.invoice_id.in_(credited))
            .order_by(CreditNote.issued_at, CreditNote.id)
        ):
            notes.setdefault(note.invoice_id, []).append(note)
    return [
        InvoiceStatus(row[0], int(row[1]), row[2], tuple(notes.get(row[0].id, ()))) for row in rows
    ]


def is_open() -> ColumnElement[bool]:
    """`InvoiceStatus.state == "open"` as SQL: unpaid, and not credited in full."""
    return and_(Payment.id.is_(None), Invoice.amount_minor > _credited())


async def _open_invoices(session: AsyncSession, sub: Subscription) -> list[InvoiceStatus]:
    return await invoice_statuses(session, Invoice.subscription_id == sub.id, is_open())


async def issue_invoice(
    session: AsyncSession,
    sub: Subscription,
    plan: Plan,
    processor: PaymentProcessor,
    at: datetime,
    terms: Terms,
) -> Invoice:
    """Invoices the subscription's current period at the plan's price now (a later price
    change never touches it). Idempotent per (subscription, period start)."""
    values = {
        "id": uuid.uuid4(),
        "subscription_id": sub.id,
        "model_id": sub.model_id,
        "subscriber_id": sub.subscriber_id,
        "amount_minor": plan.price_minor,
        "currency": plan.currency,
        "period_start": sub.period_start,
        "period_end": sub.period_end,
        "issued_at": at,
        "due_at": at + terms.due,
    }
    statement = (
        insert(Invoice)
        .values(**values)
        .on_conflict_do_nothing(constraint="invoices_subscription_period_key")
    )
    await session.execute(statement)
    invoice = await session.scalar(
        select(Invoice).where(
            Invoice.subscription_id == sub.id, Invoice.period_start == sub.period_start
        )
    )
    assert invoice is not None
    if invoice.id == values["id"] and invoice.amount_minor > 0:
        collected = await processor.charge(
            Charge(
                invoice.id,
                invoice.subscriber_id,
                invoice.amount_minor,
                invoice.currency,
                f"subscription {sub.id}, {invoice.period_start:%Y-%m-%d} to "
                f"{invoice.period_end:%Y-%m-%d}",
            )
        )
        if collected is not None:
            session.add(
                Payment(
                    id=uuid.uuid4(),
                    invoice_id=invoice.id,
                    amount_minor=invoice.amount_minor,
                    currency=invoice.currency,
                    processor=processor.name,
                    reference=collected.reference,
                    paid_at=at,
                )
            )
            await session.flush()
    return invoice


async def _plan(session: AsyncSession, sub: Subscription) -> Plan:
    plan = await session.get(Plan, sub.model_id)
    if plan is None:  # plans are never deleted while their model exists
        raise FailedPrecondition("the model has no plan")
    return plan


def set_period(sub: Subscription, anchor: datetime, index: int) -> None:
    sub.anchor, sub.period_index = anchor, index
    sub.period_start = add_months(anchor, index)
    sub.period_end = add_months(anchor, index + 1)


async def after_invoice(session: AsyncSession, sub: Subscription, at: datetime) -> None:
    """Fires INVOICE_PAID when the subscription's invoices are all settled again (an INCOMPLETE
    or PAST_DUE one becomes ACTIVE; an ACTIVE one records the payment)."""
    if State(sub.state) in (State.INCOMPLETE, State.ACTIVE, State.PAST_DUE) and not (
        await _open_invoices(session, sub)
    ):
        await fire(session, sub, Event.INVOICE_PAID, at)


async def _next(
    session: AsyncSession, sub: Subscription, terms: Terms
) -> tuple[datetime, Event] | None:
    """The subscription's next timed event and when it falls due, or None."""
    state = State(sub.state)
    candidates: list[tuple[datetime, int, Event]] = []
    if state in (State.INCOMPLETE, State.ACTIVE):
        opened = await _open_invoices(session, sub)
        if opened:
            due = min(s.invoice.due_at for s in opened)
            candidates.append((due, 0, Event.INVOICE_OVERDUE))
    if state is State.PAST_DUE and sub.past_due_since is not None:
        candidates.append((sub.past_due_since + terms.grace, 0, Event.GRACE_ENDED))
    if state in (State.TRIALING, State.ACTIVE, State.PAST_DUE):
        if sub.cancel_at_period_end:
            event = Event.ENDED_AT_PERIOD_END
        else:
            event = {
                State.TRIALING: Event.TRIAL_ENDED,
                State.ACTIVE: Event.RENEWED,
                State.PAST_DUE: Event.PERIOD_ENDED_UNPAID,
            }[state]
        candidates.append((sub.period_end, 1, event))
    if not candidates:
        return None
    # Chronological; at the same instant an overdue invoice counts before a period ends.
    at, _, event = min(candidates)
    return at, event


async def settle(
    session: AsyncSession,
    sub: Subscription,
    now: datetime,
    settings: Settings,
    processor: PaymentProcessor,
) -> int:
    """Fires every timed event of `sub` due by `now`, oldest first; returns how many."""
    terms = Terms.of(settings)
    fired = 0
    while fired < _MAX_STEPS and State(sub.state) in LIVE:
        upcoming = await _next(session, sub, terms)
        if upcoming is None or upcoming[0] > now:
            break
        at, event = upcoming
        if event is Event.INVOICE_OVERDUE:
            sub.past_due_since = at
        elif event in (Event.TRIAL_ENDED, Event.RENEWED):
            if event is Event.TRIAL_ENDED:
                set_period(sub, sub.period_end, 0)
            else:
                set_period(sub, sub.anchor, sub.period_index + 1)
            await issue_invoice(session, sub, await _plan(session, sub), processor, at, terms)
        await fire(session, sub, event, at)
        fired += 1
        if event in (Event.TRIAL_ENDED, Event.RENEWED):
            await after_invoice(session, sub, at)
    return fired


async def settle_if_due(
    db: Database, sub: Subscription, now: datetime, settings: Settings, processor: PaymentProcessor
) -> tuple[Subscription, int]:
    """`sub`, read without a lock, settled up to `now`, and the events fired. When nothing is
    due (nearly always) that is a read: no lock, no write. Otherwise the row is locked, read
    again and settled in its own transaction; whatever a concurrent settlement already fired
    is not fired twice."""
    if State(sub.state) not in LIVE:
        return sub, 0
    async with db.session() as session:
        upcoming = await _next(session, sub, Terms.of(settings))
    if upcoming is None or upcoming[0] > now:
        return sub, 0
    async with db.session.begin() as session:
        locked = await locked_subscription(session, sub.id)
        fired = await settle(session, locked, now, settings, processor)
    return locked, fired


async def run_billing(
    db: Database, settings: Settings, now: datetime, processor: PaymentProcessor
) -> int:
    """Settles every live subscription (the daily cron); returns the events fired. Running it
    again at the same time fires nothing: each event moves the state or the period on, and
    invoices are unique per period."""
    async with db.session() as session:
        subs = list(
            await session.scalars(
                select(Subscription).where(Subscription.state.in_([s.value for s in LIVE]))
            )
        )
    fired = 0
    for sub in subs:
        # One transaction per subscription with something due: one stuck row never holds up
        # the rest, and the many with nothing due are not locked at all.
        fired += (await settle_if_due(db, sub, now, settings, processor))[1]
    return fired


async def record_payment(
    session: AsyncSession,
    invoice_id: uuid.UUID,
    *,
    processor: str,
    reference: str,
    now: datetime,
    settings: Settings,
    charger: PaymentProcessor,
) -> InvoiceStatus:
    """Records that an open invoice was paid in full (by an admin for the manual processor, or a
    processor's webhook). The subscription is settled up to `now` first: a payment arriving
    after it expired is recorded, and does not bring it back."""
    sub_id = await session.scalar(select(Invoice.subscription_id).where(Invoice.id == invoice_id))
    if sub_id is None:
        raise NotFound(f"no invoice {str(invoice_id)!r}")
    sub = await locked_subscription(session, sub_id)
    await settle(session, sub, now, settings, charger)
    (status,) = await invoice_statuses(session, Invoice.id == invoice_id)
    if status.state != "open":
        raise FailedPrecondition(f"invoice {invoice_id} is {status.state}: nothing to pay")
    session.add(
        Payment(
            id=uuid.uuid4(),
            invoice_id=invoice_id,
            amount_minor=status.amount_due_minor,
            currency=status.invoice.currency,
            processor=processor,
            reference=reference,
            paid_at=now,
        )
    )
    await session.flush()
    await after_invoice(session, sub, now)
    (paid,) = await invoice_statuses(session, Invoice.id == invoice_id)
    return paid


async def issue_credit_note(
    session: AsyncSession, invoice_id: uuid.UUID, amount_minor: int, reason: str, now: datetime
) -> InvoiceStatus:
    """Corrects an issued invoice by crediting part or all of what is still due; the invoice
    row itself never changes. Credited in full, it is void and no longer holds up the
    subscription."""
    statuses = await invoice_statuses(session, Invoice.id == invoice_id)
    if not statuses:
        raise NotFound(f"no invoice {str(invoice_id)!r}")
    sub = await locked_subscription(session, statuses[0].invoice.subscription_id)
    (status,) = await invoice_statuses(session, Invoice.id == invoice_id)
    if status.state != "open":
        raise FailedPrecondition(f"invoice {invoice_id} is {status.state}: nothing to credit")
    if not 0 < amount_minor <= status.amount_due_minor:
        raise FailedPrecondition(
            f"a credit must be between 1 and the {status.amount_due_minor} still due"
        )
    session.add(
        CreditNote(
            id=uuid.uuid4(),
            invoice_id=invoice_id,
            amount_minor=amount_minor,
            reason=reason,
            issued_at=now,
        )
    )
    await session.flush()
    await after_invoice(session, sub, now)
    (credited,) = await invoice_statuses(session, Invoice.id == invoice_id)
    return credited


async def credit_unused_period(
    session: AsyncSession, sub: Subscription, ended_at: datetime, reason: str
) -> CreditNote | None:
    """Credits the unused part of the subscription's current period, pro rata
    (`foretell.billing.prorate`), on that period's invoice: a refund owed when it was paid, less
    to pay when it is open. Nothing for a trial (no invoice) or a period already credited in
    full. Idempotent: an invoice gets at most one such credit (a unique index), so a retry
    returns None. Runs in the caller's transaction, after the subscription ended."""
    status = next(
        iter(
            await invoice_statuses(
                session,
                Invoice.subscription_id == sub.id,
                Invoice.period_start == sub.period_start,
            )
        ),
        None,
    )
    if status is None:
        return None
    invoice = status.invoice
    unused = prorate.unused_minor(
        invoice.amount_minor, invoice.period_start, invoice.period_end, ended_at
    )
    # Never more than what is left of the invoice after earlier credits.
    amount = min(unused, invoice.amount_minor - status.credited_minor)
    if amount <= 0:
        return None
    line = prorate.describe(invoice.period_start, invoice.period_end, ended_at)
    note_id = await session.scalar(
        insert(CreditNote)
        .values(
            id=uuid.uuid4(),
            invoice_id=invoice.id,
            amount_minor=amount,
            reason=f"{reason}: {line}",
            issued_at=ended_at,
            unused_from=min(max(ended_at, invoice.period_start), invoice.period_end),
        )
        .on_conflict_do_nothing(
            index_elements=["invoice_id"], index_where=CreditNote.unused_from.is_not(None)
        )
        .returning(CreditNote.id)
    )
    return None if note_id is None else await session.get(CreditNote, note_id)


async def end_for_access(
    session: AsyncSession, model_id: uuid.UUID, reason: str, now: datetime
) -> int:
    """Billing follows access: ends every live subscription to a model its subscribers may no
    longer read, with `reason` recorded for them, credits their open invoices in full and the
    unused part of a paid current period pro rata. Returns how many subscriptions ended. Runs
    in the caller's transaction."""
    subs = (
        await session.scalars(
            select(Subscription)
            .where(
                Subscription.model_id == model_id,
                Subscription.state.in_([s.value for s in LIVE]),
            )
            .order_by(Subscription.id)
            .with_for_update()
        )
    ).all()
    for sub in subs:
        await fire(session, sub, Event.ACCESS_ENDED, now, reason)
        for status in await _open_invoices(session, sub):
            await issue_credit_note(
                session, status.invoice.id, status.amount_due_minor, reason, now
            )
        await credit_unused_period(session, sub, now, reason)
    return len(subs)
