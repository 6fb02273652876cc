"""Webhook endpoints and their delivery log, in PostgreSQL. Only a subscription's own
subscriber sees or changes its endpoints: everyone else (admins included: an endpoint is the
subscriber's infrastructure) gets NOT_FOUND."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.auth.principal import Principal
from foretell.billing.machine import ENTITLED, LIVE, State
from foretell.db import Database
from foretell.db.models import (
    Forecast,
    Subscription,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from foretell.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from foretell.paging import Keyset, Page, after_keyset
from foretell.services.subscription._validate import EndpointInput
from foretell.webhooks import TEST, WEBHOOKS_CHANNEL, EndpointRefused, new_secret, resolve

MAX_ENDPOINTS = 5


async def _own(
    session: AsyncSession, principal: Principal, sub_id: uuid.UUID, *, lock: bool = False
) -> Subscription:
    sub = await session.get(Subscription, sub_id, with_for_update=lock)
    if sub is None or sub.subscriber_id != principal.user_id:
        raise NotFound(f"no subscription {str(sub_id)!r}")
    return sub


async def _own_endpoint(
    session: AsyncSession, principal: Principal, endpoint_id: uuid.UUID
) -> tuple[WebhookEndpoint, Subscription]:
    row = (
        await session.execute(
            select(WebhookEndpoint, Subscription)
            .join(Subscription, Subscription.id == WebhookEndpoint.subscription_id)
            .where(WebhookEndpoint.id == endpoint_id)
        )
    ).first()
    if row is None or row[1].subscriber_id != principal.user_id:
        raise NotFound(f"no webhook endpoint {str(endpoint_id)!r}")
    return row[0], row[1]


async def create_endpoint(
    db: Database, principal: Principal, given: EndpointInput, allow_private: bool, now: datetime
) -> tuple[WebhookEndpoint, str]:
    async with db.session() as session:
        await _own(session, principal, given.subscription_id)
    try:
        # Resolved now as well as before every delivery (foretell.webhooks).
        await resolve(given.target, allow_private=allow_private)
    except EndpointRefused as refused:
        raise InvalidArgument([FieldViolation("url", str(refused))]) from None
    secret = new_secret()
    async with db.session.begin() as session:
        sub = await _own(session, principal, given.subscription_id, lock=True)
        if State(sub.state) not in LIVE:
            raise FailedPrecondition(f"subscription {sub.id} has ended ({sub.state})")
        count = await session.scalar(
            select(func.count()).where(WebhookEndpoint.subscription_id == sub.id)
        )
        if (count or 0) >= MAX_ENDPOINTS:
            raise FailedPrecondition(
                f"subscription {sub.id} already has {MAX_ENDPOINTS} endpoints: delete one first"
            )
        endpoint = WebhookEndpoint(
            id=uuid.uuid4(), subscription_id=sub.id, url=given.target.url,
            description=given.description, secret=secret, created_at=now,
        )  # fmt: skip
        session.add(endpoint)
    return endpoint, secret


async def list_endpoints(
    db: Database, principal: Principal, sub_id: uuid.UUID
) -> list[WebhookEndpoint]:
    async with db.session() as session:
        await _own(session, principal, sub_id)
        found = await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.subscription_id == sub_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return list(found)


async def delete_endpoint(db: Database, principal: Principal, endpoint_id: uuid.UUID) -> None:
    async with db.session.begin() as session:
        await _own_endpoint(session, principal, endpoint_id)
        await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


async def send_test(
    db: Database, principal: Principal, endpoint_id: uuid.UUID, now: datetime
) -> WebhookDelivery:
    async with db.session.begin() as session:
        endpoint, sub = await _own_endpoint(session, principal, endpoint_id)
        if State(sub.state) not in ENTITLED:
            raise FailedPrecondition(
                f"subscription {sub.id} is {sub.state}: events are sent only while it is "
                "trialing, active or past due"
            )
        delivery = WebhookDelivery(
            id=uuid.uuid4(), endpoint_id=endpoint.id, forecast_id=None, event_type=TEST,
            state="pending", attempts=0, created_at=now, next_attempt_at=now, last_error="",
        )  # fmt: skip
        session.add(delivery)
        # Wakes the worker's dispatcher when this commits.
        await session.execute(_NOTIFY, {"channel": WEBHOOKS_CHANNEL, "payload": str(delivery.id)})
    return delivery


DeliveryRow = tuple[WebhookDelivery, list[WebhookAttempt], Forecast | None]


async def list_deliveries(
    db: Database,
    principal: Principal,
    sub_id: uuid.UUID,
    endpoint_id: uuid.UUID | None,
    page: Page,
) -> tuple[list[DeliveryRow], Keyset | None]:
    conditions: list[ColumnElement[bool]] = [WebhookEndpoint.subscription_id == sub_id]
    if endpoint_id is not None:
        conditions.append(WebhookDelivery.endpoint_id == endpoint_id)
    if page.after is not None:
        conditions.append(after_keyset(WebhookDelivery.created_at, WebhookDelivery.id, page.after))
    async with db.session() as session:
        await _own(session, principal, sub_id)
        rows = (
            await session.execute(
                select(WebhookDelivery, Forecast)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .outerjoin(Forecast, Forecast.id == WebhookDelivery.forecast_id)
                .where(*conditions)
                .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
                .limit(page.size + 1)
            )
        ).all()
        more, rows = len(rows) > page.size, rows[: page.size]
        attempts: dict[uuid.UUID, list[WebhookAttempt]] = defaultdict(list)
        for attempt in await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_([row[0].id for row in rows]))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        ):
            attempts[attempt.delivery_id].append(attempt)
    last = Keyset(rows[-1][0].created_at, rows[-1][0].id) if more else None
    return [(row[0], attempts[row[0].id], row[1]) for row in rows], last
