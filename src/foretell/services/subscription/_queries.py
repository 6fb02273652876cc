"""Plans and subscriptions in PostgreSQL, with the access rules: a subscriber sees and changes
only their own subscriptions and invoices (others' are NOT_FOUND), an admin everyone's; only a
model's owner sets its plan."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.billing.machine import LIVE, Event, State, fire
from foretell.billing.payments import PaymentProcessor
from foretell.billing.settle import (
    InvoiceStatus,
    Terms,
    after_invoice,
    credit_unused_period,
    invoice_statuses,
    is_open,
    issue_credit_note,
    issue_invoice,
    locked_subscription,
    set_period,
    settle,
    settle_if_due,
)
from foretell.db import Database
from foretell.db.models import Invoice, Model, Plan, Subscription
from foretell.errors import FailedPrecondition, NotFound, PermissionDenied
from foretell.paging import Keyset, Page, after_keyset
from foretell.services.registry import get_view, owned_model
from foretell.services.subscription._validate import PlanInput
from foretell.settings import Settings


@dataclass(frozen=True)
class Named:
    """A model as its subscriptions and invoices show it: the name and the title."""

    name: str
    title: str


@dataclass(frozen=True)
class Billing:
    """What every billing operation needs besides the database."""

    settings: Settings
    processor: PaymentProcessor
    now: datetime


async def get_plan(db: Database, principal: Principal, name: str) -> tuple[str, Plan]:
    view = await get_view(db, name, principal)
    async with db.session() as session:
        plan = await session.get(Plan, view.model.id)
    if plan is None:
        raise NotFound(f"model {name!r} has no plan yet")
    return view.model.name, plan


async def update_plan(
    db: Database, principal: Principal, given: PlanInput, now: datetime
) -> tuple[str, Plan]:
    async with db.session.begin() as session:
        model = await owned_model(session, given.model, principal)
        values = {
            "price_minor": given.price_minor,
            "currency": given.currency,
            "trial_days": given.trial_days,
            "updated_at": now,
        }
        await session.execute(
            insert(Plan)
            .values(model_id=model.id, **values)
            .on_conflict_do_update(index_elements=[Plan.model_id], set_=values)
        )
        plan = await session.get(Plan, model.id, populate_existing=True)
    assert plan is not None
    return model.name, plan


async def _live(
    session: AsyncSession, subscriber: uuid.UUID, model: uuid.UUID
) -> Subscription | None:
    return await session.scalar(
        select(Subscription)
        .where(
            Subscription.subscriber_id == subscriber,
            Subscription.model_id == model,
            Subscription.state.in_([s.value for s in LIVE]),
        )
        .with_for_update()
    )


async def subscribe(
    db: Database, principal: Principal, name: str, billing: Billing
) -> tuple[Subscription, InvoiceStatus | None, Named]:
    view = await get_view(db, name, principal)
    model = view.model
    if model.owner_id == principal.user_id:
        raise PermissionDenied(f"model {name!r} is yours: its provider reads it without one")
    now = billing.now
    try:
        async with db.session.begin() as session:
            plan = await session.get(Plan, model.id)
            if plan is None:
                raise FailedPrecondition(f"model {name!r} has no plan yet: it cannot be sold")
            existing = await _live(session, principal.user_id, model.id)
            if existing is not None:
                await settle(session, existing, now, billing.settings, billing.processor)
                if State(existing.state) in LIVE:
                    raise FailedPrecondition(
                        f"you already subscribe to model {name!r} (subscription {existing.id})"
                    )
            trialed = await session.scalar(
                select(Subscription.id).where(
                    Subscription.subscriber_id == principal.user_id,
                    Subscription.model_id == model.id,
                    Subscription.trial_end.is_not(None),
                )
            )
            sub = Subscription(
                id=uuid.uuid4(),
                model_id=model.id,
                subscriber_id=principal.user_id,
                cancel_at_period_end=False,
                created_at=now,
                updated_at=now,
            )
            invoice = None
            if plan.trial_days and trialed is None:
                trial_end = now + timedelta(days=plan.trial_days)
                sub.trial_end = trial_end
                sub.anchor, sub.period_index = now, 0
                sub.period_start, sub.period_end = now, trial_end
                await fire(session, sub, Event.SUBSCRIBE_TRIAL, now)
            else:
                set_period(sub, now, 0)
                detail = "trial already used" if plan.trial_days else ""
                await fire(session, sub, Event.SUBSCRIBE, now, detail)
                issued = await issue_invoice(
                    session, sub, plan, billing.processor, now, Terms.of(billing.settings)
                )
                await after_invoice(session, sub, now)
                (invoice,) = await invoice_statuses(session, Invoice.id == issued.id)
    except IntegrityError:
        # Two Subscribe calls at once: the partial unique index let one through.
        raise FailedPrecondition(f"you already subscribe to model {name!r}") from None
    return sub, invoice, Named(model.name, model.title)


def _visible(principal: Principal) -> list[ColumnElement[bool]]:
    if principal.role == Role.ADMIN:
        return []
    return [Subscription.subscriber_id == principal.user_id]


async def list_subscriptions(
    db: Database, principal: Principal, model: str, page: Page, billing: Billing
) -> tuple[list[tuple[Subscription, Named]], Keyset | None]:
    """One page of subscriptions, newest first, and where the next page starts (None on the
    last). Only the page's live subscriptions are settled, so a call costs at most a page of
    settlements however many subscriptions there are."""
    order = (Subscription.created_at.desc(), Subscription.id)
    conditions = _visible(principal)
    if model:
        conditions.append(Model.name == model)
    if page.after is not None:
        conditions.append(after_keyset(Subscription.created_at, Subscription.id, page.after))
    selected = (
        select(Subscription, Model.name, Model.title)
        .join(Model, Model.id == Subscription.model_id)
        .where(*conditions)
        .order_by(*order)
        .limit(page.size + 1)
    )
    async with db.session() as session:
        rows = [(row[0], Named(row[1], row[2])) for row in (await session.execute(selected)).all()]
    more, rows = len(rows) > page.size, rows[: page.size]
    # Settle the page's live ones, so that what is listed is true now; only those with an
    # event due are locked and written. Settling never changes created_at or id: the page
    # stays the page.
    listed = [
        ((await settle_if_due(db, sub, billing.now, billing.settings, billing.processor))[0], name)
        for sub, name in rows
    ]
    last = Keyset(rows[-1][0].created_at, rows[-1][0].id) if more else None
    return listed, last


async def get_subscription(
    db: Database, principal: Principal, sub_id: uuid.UUID, billing: Billing
) -> tuple[Subscription, Named]:
    """One subscription the caller may see, settled if an event of it is due."""
    selected = (
        select(Subscription, Model.name, Model.title)
        .join(Model, Model.id == Subscription.model_id)
        .where(Subscription.id == sub_id, *_visible(principal))
    )
    async with db.session() as session:
        row = (await session.execute(selected)).one_or_none()
    if row is None:
        raise NotFound(f"no subscription {str(sub_id)!r}")
    sub, _changed = await settle_if_due(
        db, row[0], billing.now, billing.settings, billing.processor
    )
    return sub, Named(row[1], row[2])


async def _own(session: AsyncSession, principal: Principal, sub_id: uuid.UUID) -> Subscription:
    sub = await locked_subscription(session, sub_id)
    if principal.role != Role.ADMIN and sub.subscriber_id != principal.user_id:
        raise NotFound(f"no subscription {str(sub_id)!r}")
    return sub


async def _model_name(session: AsyncSession, sub: Subscription) -> Named:
    row = (
        await session.execute(select(Model.name, Model.title).where(Model.id == sub.model_id))
    ).one()
    return Named(row[0], row[1])


async def cancel(
    db: Database, principal: Principal, sub_id: uuid.UUID, immediately: bool, billing: Billing
) -> tuple[Subscription, Named]:
    now = billing.now
    async with db.session.begin() as session:
        sub = await _own(session, principal, sub_id)
        await settle(session, sub, now, billing.settings, billing.processor)
        was = State(sub.state)
        if was not in LIVE:
            raise FailedPrecondition(f"subscription {sub_id} has ended ({was.value})")
        await fire(session, sub, Event.CANCEL_NOW if immediately else Event.CANCEL, now)
        if was is State.INCOMPLETE:
            # Never paid, never readable: its first invoice is corrected to nothing.
            opened = await invoice_statuses(session, Invoice.subscription_id == sub.id, is_open())
            for status in opened:
                await issue_credit_note(
                    session,
                    status.invoice.id,
                    status.amount_due_minor,
                    "canceled before the first payment",
                    now,
                )
        if immediately:
            await credit_unused_period(session, sub, now, "canceled by the subscriber")
        return sub, await _model_name(session, sub)


async def resume(
    db: Database, principal: Principal, sub_id: uuid.UUID, billing: Billing
) -> tuple[Subscription, Named]:
    async with db.session.begin() as session:
        sub = await _own(session, principal, sub_id)
        await settle(session, sub, billing.now, billing.settings, billing.processor)
        await fire(session, sub, Event.RESUME, billing.now)
        return sub, await _model_name(session, sub)


async def list_invoices(
    db: Database, principal: Principal, sub_id: uuid.UUID | None, page: Page
) -> tuple[list[tuple[InvoiceStatus, Named]], Keyset | None]:
    """One page of invoices, newest first, and where the next page starts (None on the
    last)."""
    conditions: list[ColumnElement[bool]] = []
    if principal.role != Role.ADMIN:
        conditions.append(Invoice.subscriber_id == principal.user_id)
    if page.after is not None:
        conditions.append(after_keyset(Invoice.issued_at, Invoice.id, page.after))
    async with db.session() as session:
        if sub_id is not None:
            owner = await session.scalar(
                select(Subscription.subscriber_id).where(Subscription.id == sub_id)
            )
            if owner is None or (principal.role != Role.ADMIN and owner != principal.user_id):
                raise NotFound(f"no subscription {str(sub_id)!r}")
            conditions.append(Invoice.subscription_id == sub_id)
        statuses = await invoice_statuses(session, *conditions, limit=page.size + 1)
        more, statuses = len(statuses) > page.size, statuses[: page.size]
        names = {
            row[0]: Named(row[1], row[2])
            for row in (
                await session.execute(
                    select(Model.id, Model.name, Model.title).where(
                        Model.id.in_({s.invoice.model_id for s in statuses})
                    )
                )
            ).all()
        }
    last = statuses[-1].invoice if more else None
    return (
        [(s, names[s.invoice.model_id]) for s in statuses],
        Keyset(last.issued_at, last.id) if last else None,
    )
